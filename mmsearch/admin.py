"""Admin for the engine: indexing jobs with their progress, and which model answers searches (with the switch)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils.html import format_html

from mmsearch.models import ActiveModel, EmbeddingFailure, IndexJob
from mmsearch.search import vectors


@admin.register(IndexJob)
class IndexJobAdmin(admin.ModelAdmin):
    list_display = ["id", "alias", "model_key", "kind", "status", "progress_bar", "done", "failed", "rate", "created_at"]
    list_filter = ["status", "alias", "kind"]
    search_fields = ["model_key", "alias"]
    readonly_fields = [f.name for f in IndexJob._meta.fields] + ["progress_bar", "rate"]
    actions = ["activate_model", "cancel_jobs"]

    def has_add_permission(self, request) -> bool:
        return False  # jobs start from `manage.py reindex` or POST /api/v1/index-jobs/

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="progress")
    def progress_bar(self, job: IndexJob) -> str:
        return format_html(
            '<progress value="{}" max="{}" style="width:8em"></progress> {}/{} ({}%)',
            job.done + job.failed, job.total or 1, job.done + job.failed, job.total, round(job.progress * 100),
        )

    @admin.display(description="items/s")
    def rate(self, job: IndexJob) -> str:
        return f"{job.items_per_second:.1f}" if job.items_per_second else "-"

    @admin.action(description="Switch search to the selected job's model (blue/green)")
    def activate_model(self, request, queryset):
        from mmsearch.indexing import JobError, activate

        jobs = list(queryset[:2])
        if len(jobs) != 1:
            self.message_user(request, "Select exactly one job: its alias's model will answer searches.", messages.ERROR)
            return
        job = jobs[0]
        try:
            result = activate(job.alias)
        except JobError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        if result.model_key != job.model_key:
            self.message_user(
                request, f"note: alias {job.alias} is now {result.model_key}, not the job's {job.model_key}", messages.WARNING
            )
        self.message_user(request, f"{result.slot}: {result.previous_key or '(none)'} -> {result.model_key}", messages.SUCCESS)

    @admin.action(description="Cancel the selected jobs")
    def cancel_jobs(self, request, queryset):
        from mmsearch.indexing import cancel_job

        cancelled = sum(cancel_job(job).status == IndexJob.Status.CANCELLED for job in queryset)
        self.message_user(request, f"{cancelled} job(s) cancelled")


@admin.register(ActiveModel)
class ActiveModelAdmin(admin.ModelAdmin):
    list_display = ["alias", "model_key", "dim", "coverage", "switched_at"]
    readonly_fields = ["alias", "model_key", "dim", "switched_at"]

    def has_add_permission(self, request) -> bool:
        return False  # switch with `manage.py activate_model` or the IndexJob admin action, which check coverage

    @admin.display(description="coverage")
    def coverage(self, obj: ActiveModel) -> str:
        return "; ".join(str(vectors.coverage(kind, obj.model_key)) for kind in vectors.TABLES)


@admin.register(EmbeddingFailure)
class EmbeddingFailureAdmin(admin.ModelAdmin):
    list_display = ["kind", "item_id", "model_key", "reason", "created_at"]
    list_filter = ["kind", "model_key"]
    readonly_fields = ["kind", "item_id", "model_key", "reason", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False
