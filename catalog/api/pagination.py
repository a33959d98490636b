from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination


class Pagination(PageNumberPagination):
    """?page=N&page_size=M (at most max_page_size); an over-large page_size is an error, not silently cut."""

    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            raise ValidationError({"page_size": f"must be a whole number, not {raw!r}"})
        if not 1 <= size <= self.max_page_size:
            raise ValidationError({"page_size": f"must be between 1 and {self.max_page_size}"})
        return size
