"""The product page's question box: POST /p/<sku>/ask renders the answer (a fragment for the page's script,
a whole page without JavaScript). Throttled like the API (scope `ask`)."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import Throttled
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import TemplateHTMLRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from mmsearch.validation import BadText
from qa import service


@extend_schema(exclude=True)  # an HTML page, not part of the API
class AskPageView(APIView):
    renderer_classes = [TemplateHTMLRenderer]
    parser_classes = [FormParser, MultiPartParser]
    permission_classes = [AllowAny]
    authentication_classes: list = []  # anonymous shoppers; asking changes nothing but the log
    throttle_scope = "ask"

    def template(self, request) -> str:
        return "qa/_answer.html" if request.headers.get("X-Fragment") == "1" else "qa/answer_page.html"

    def post(self, request, sku: str):
        from catalog.models import Product

        product = Product.objects.filter(sku=sku, active=True).select_related("category").first()
        if product is None:
            raise Http404(f"no product with sku {sku!r}")
        context = {"product": product, "question": request.data.get("question", "")}
        if not service.enabled():
            context["error"] = "Question answering is not enabled on this shop."
            return Response(context, status=status.HTTP_503_SERVICE_UNAVAILABLE, template_name=self.template(request))
        try:
            question = service.clean_question(request.data.get("question"))
        except BadText as exc:
            context["error"] = f"Your {exc.name} {exc.problem}."
            return Response(context, status=status.HTTP_400_BAD_REQUEST, template_name=self.template(request))
        _, answer = service.ask(product, question)
        context.update(question=question, answer=service.answer_data(answer),
                       sureness=service.confidence_words(answer.confidence, answer.abstained))
        return Response(context, template_name=self.template(request))

    def handle_exception(self, exc):
        if isinstance(exc, Throttled):
            wait = f" Try again in {int(exc.wait) + 1} seconds." if exc.wait else ""
            return Response({"error": f"Too many questions at once.{wait}"}, status=status.HTTP_429_TOO_MANY_REQUESTS,
                            template_name=self.template(self.request))
        return super().handle_exception(exc)
