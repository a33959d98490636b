from django.contrib import admin
from django.utils import timezone

from qa.models import Question


@admin.register(Question)
class QuestionAdmin(admin.ModelAdmin):
    """The question log: what shoppers asked, what they were told and why; an admin corrects wrong answers
    (exported with `manage.py export_answers` as training questions for the next answerer)."""

    list_display = ["created_at", "product", "question", "answer", "confidence", "abstained", "kind",
                    "corrected_answer", "latency_ms"]
    list_filter = ["abstained", "kind", "model_key", ("corrected_answer", admin.EmptyFieldListFilter)]
    search_fields = ["question", "answer", "product__sku", "product__title"]
    readonly_fields = ["product", "question", "answer", "confidence", "abstained", "kind", "evidence", "model_key",
                       "latency_ms", "feature_cache_hit", "created_at", "corrected_by", "corrected_at"]
    fields = [*readonly_fields[:-2], "corrected_answer", "corrected_by", "corrected_at"]
    list_select_related = ["product"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False  # questions come from shoppers

    def save_model(self, request, obj, form, change):
        if "corrected_answer" in form.changed_data:
            obj.corrected_answer = obj.corrected_answer.strip()
            obj.corrected_by = request.user if obj.corrected_answer else None
            obj.corrected_at = timezone.now() if obj.corrected_answer else None
        super().save_model(request, obj, form, change)
