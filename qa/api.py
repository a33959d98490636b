"""POST /api/v1/products/<sku>/ask: a shopper's question about one product."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authentication import TokenAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mmsearch.validation import BadText
from qa import service

_ANSWER = inline_serializer("Answer", {
    "answer": serializers.CharField(help_text='the answer, or "I don\'t know" when abstained'),
    "confidence": serializers.FloatField(help_text="calibrated probability that the answer is right"),
    "abstained": serializers.BooleanField(), "kind": serializers.CharField(help_text="the question's type"),
    "evidence": inline_serializer("AnswerEvidence", {
        "source": serializers.ChoiceField(["image", "attribute", "description", "price", "brand", "title"]),
        "text": serializers.CharField(), "key": serializers.CharField(required=False),
        "value": serializers.CharField(required=False), "confidence": serializers.FloatField(required=False)},
        many=True),
    "model_key": serializers.CharField()})


class AskView(APIView):
    # Public like search: no session (so no CSRF), throttled per client under the `ask` scope.
    permission_classes = [AllowAny]
    authentication_classes = [TokenAuthentication]
    parser_classes = [JSONParser]
    throttle_scope = "ask"

    @extend_schema(request=inline_serializer("Ask", {"question": serializers.CharField(max_length=300)}),
                   responses={200: _ANSWER, 400: dict, 404: dict, 503: dict})
    def post(self, request: Request, sku: str) -> Response:
        """Answer a question about the product from its data and its image; "I don't know" when not sure."""
        from catalog.models import Product

        product = Product.objects.filter(sku=sku, active=True).select_related("category").first()
        if product is None:
            return Response({"detail": f"no product with sku {sku!r}"}, status=status.HTTP_404_NOT_FOUND)
        if not isinstance(request.data, dict):
            return Response({"detail": 'send a JSON object {"question": "..."}'}, status=status.HTTP_400_BAD_REQUEST)
        extra = sorted(set(request.data) - {"question"})
        if extra:
            return Response({"detail": f"unknown field(s) {', '.join(extra)}; send only 'question'"},
                            status=status.HTTP_400_BAD_REQUEST)
        if "question" not in request.data:
            return Response({"detail": "question: is required"}, status=status.HTTP_400_BAD_REQUEST)
        try:
            question = service.clean_question(request.data["question"])
        except BadText as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        if not service.enabled():
            return Response({"detail": "question answering is not configured (MMSEARCH_MODELS has no 'answerer')"},
                            status=status.HTTP_503_SERVICE_UNAVAILABLE)
        _, answer = service.ask(product, question)
        return Response(service.answer_data(answer))
