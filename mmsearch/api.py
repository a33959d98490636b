"""REST endpoints for jobs (staff only): start a job, list jobs, read one job's progress, cancel it.

    POST /api/v1/index-jobs/            {"alias": "embedder", "only_missing": false, "force": false, "kind": "all"}
    POST /api/v1/index-jobs/            {"alias": "tagger", "kind": "tags", "filters": {"category": ["Apparel"]},
                                         "skus": [...], "only_missing": true}    suggest tags
    POST /api/v1/index-jobs/            {"alias": "captioner", "kind": "captions", "filters": ..., "skus": ...}
                                                                                  caption products' main images
    GET  /api/v1/index-jobs/            newest first
    GET  /api/v1/index-jobs/{id}/       progress, counters, timings, error
    POST /api/v1/index-jobs/{id}/cancel
"""

from __future__ import annotations

from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from mmsearch.models import IndexJob


class IndexJobSerializer(serializers.ModelSerializer):
    progress = serializers.FloatField(read_only=True)
    elapsed_seconds = serializers.FloatField(read_only=True, allow_null=True)
    items_per_second = serializers.FloatField(read_only=True, allow_null=True)
    eta_seconds = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = IndexJob
        fields = [
            "id", "alias", "model_key", "kind", "only_missing", "force", "status", "total", "done", "skipped",
            "failed", "progress", "batches", "decode_seconds", "forward_seconds", "write_seconds",
            "elapsed_seconds", "items_per_second", "eta_seconds", "error", "created_at", "started_at", "finished_at",
        ]
        read_only_fields = fields


class StartJobSerializer(serializers.Serializer):
    alias = serializers.CharField(required=False, max_length=100, help_text="default embedder (tag jobs: tagger, caption jobs: captioner)")
    only_missing = serializers.BooleanField(required=False, help_text="default false (tag and caption jobs: true)")
    force = serializers.BooleanField(default=False)
    kind = serializers.ChoiceField(choices=IndexJob.Kind.choices, required=False)
    # Tag and caption jobs: which products (default all active ones), as the search filters name them.
    filters = serializers.DictField(child=serializers.ListField(child=serializers.CharField(max_length=500), max_length=100),
                                    required=False)
    skus = serializers.ListField(child=serializers.CharField(max_length=128), required=False, max_length=100_000)


class BrokerUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The task queue is unavailable."


class IndexJobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Bulk embedding jobs: progress for staff, and a way to start and cancel them."""

    queryset = IndexJob.objects.order_by("-id")
    serializer_class = IndexJobSerializer
    permission_classes = [IsAdminUser]
    filterset_fields = ["status", "alias"]

    def get_serializer_class(self):
        return StartJobSerializer if self.action == "create" else IndexJobSerializer

    def create(self, request, *args, **kwargs):
        """Start a job: embed the catalog for `alias`, or suggest tags (kind=tags) or captions (kind=captions) for
        the chosen products."""
        from mmsearch.indexing import JobError, QueueUnavailable, start_caption_job, start_job, start_tag_job

        product_jobs = {IndexJob.Kind.TAGS: ("tagger", start_tag_job), IndexJob.Kind.CAPTIONS: ("captioner", start_caption_job)}

        params = StartJobSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = dict(params.validated_data)
        try:
            if data.get("kind") in product_jobs:
                default_alias, start = product_jobs[data["kind"]]
                if data.get("force"):
                    raise JobError("force is for embedding jobs; a tag or caption job skips only what this model "
                                   "did already")
                job = start(data.get("alias", default_alias), filters=data.get("filters"), skus=data.get("skus"),
                            only_missing=data.get("only_missing", True))
            else:
                if {"filters", "skus"} & set(data):
                    raise JobError("filters and skus choose the products of a tag job (kind=tags) or a caption job "
                                   "(kind=captions) only")
                data.setdefault("alias", "embedder")
                job = start_job(**data)
        except QueueUnavailable as exc:
            raise BrokerUnavailable(str(exc)) from exc
        except JobError as exc:
            raise ValidationError(str(exc)) from exc
        return Response(IndexJobSerializer(job).data, status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel a queued or running job; its remaining tasks return without work."""
        from mmsearch.indexing import cancel_job

        return Response(IndexJobSerializer(cancel_job(self.get_object())).data)


router = SimpleRouter()
router.trailing_slash = "/?"  # like the catalog API: with or without the slash (the constructor only takes a bool)
router.register("index-jobs", IndexJobViewSet, basename="indexjob")
urlpatterns = router.urls
