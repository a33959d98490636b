"""Schemathesis against the project's own OpenAPI schema (/api/v1/schema/), through the Django WSGI app (no
network): generated GET requests to every endpoint and staff POSTs to the catalog endpoints must never get a
5xx, and every documented response must match its schema. Examples are few and fixed (derandomized), to stay
well under a minute; MMSEARCH_SCHEMATHESIS_EXAMPLES=300 (and MMSEARCH_SCHEMATHESIS_MODES=positive) explores
further, with shrinking."""

from __future__ import annotations

import os
from decimal import Decimal

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import response_schema_conformance

SETTINGS = settings(
    max_examples=int(os.environ.get("MMSEARCH_SCHEMATHESIS_EXAMPLES", 8)),
    deadline=None,
    derandomize=True,  # the same requests every run: a failure here is reproducible, not a flake
    database=None,
    phases=[Phase.explicit, Phase.generate] + ([Phase.shrink] if os.environ.get("MMSEARCH_SCHEMATHESIS_EXAMPLES") else []),
    suppress_health_check=list(HealthCheck),
)
# Staff POSTs that write only catalog rows. index-jobs would queue work on the broker; auth/token and
# search/image are covered by their own tests.
STAFF_POSTS = r"^/api/v1/(products|categories|tag-groups|tags|product-tags)/$"


@pytest.fixture
def wsgi_in_test_transaction(db):
    """Keep the test's connection open across WSGI requests (as Django's test client does): the handler would
    close it at the end of each request, and the test's transaction with it."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def stocked(wsgi_in_test_transaction):
    """A small catalog behind the API, so reads and writes meet real rows."""
    from catalog.models import Category, Product, ProductTag, Tag, TagGroup

    tees = Category.objects.get_or_create_path("Apparel/Tees")
    tee = Product.objects.create(sku="tee", title="Red tee", category=tees, price=Decimal("5.00"),
                                 attributes={"colour": "Red"})
    Product.objects.create(sku="cap", title="Blue cap", price=Decimal("9.99"))
    tag = Tag.objects.create(group=TagGroup.objects.create(name="Pattern"), name="Plain")
    ProductTag.objects.create(product=tee, tag=tag)


@pytest.fixture
def staff_headers(db, django_user_model):
    from rest_framework.authtoken.models import Token

    user = django_user_model.objects.create_user("schemathesis", password="pw", is_staff=True)
    return {"Authorization": f"Token {Token.objects.create(user=user).key}"}


def _load_schema():
    # Loaded at collection (schemathesis.pytest.from_fixture does not work with pytest 9): serving the schema
    # reads no database rows.
    from mmsearch.wsgi import application

    loaded = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", application)
    modes = os.environ.get("MMSEARCH_SCHEMATHESIS_MODES", "positive,negative").split(",")
    loaded.config.generation.update(modes=modes, allow_x00=True)
    return loaded


schema = _load_schema()


def call_and_check(case, headers):
    """No 5xx, except search's deliberate 503 while no embedding model is active (the test database has none);
    a documented status must match its response schema."""
    response = case.call(headers=headers)
    if response.status_code == 503 and case.path.startswith("/api/v1/search"):
        assert "not available" in response.json()["detail"], response.text
        return
    assert response.status_code < 500, f"{case.method} {case.formatted_path} {case.query}: {response.text[:500]}"
    case.validate_response(response, checks=[response_schema_conformance])


@schema.include(method="GET").parametrize()
@SETTINGS
def test_get_endpoints(case, stocked, staff_headers):
    call_and_check(case, staff_headers)


@schema.include(method="POST", path_regex=STAFF_POSTS).parametrize()
@SETTINGS
def test_staff_posts(case, stocked, staff_headers):
    call_and_check(case, staff_headers)
