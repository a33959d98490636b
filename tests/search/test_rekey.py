"""manage.py rekey_model: vectors stored under a model's earlier key move to its current key, nothing re-embedded."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from PIL import Image

from mmsearch import plugins
from mmsearch.models import ActiveModel, ImageEmbedding
from mmsearch.plugins.hashing import HashingEmbedder
from mmsearch.search import vectors
from mmsearch.search.engine import search
from mmsearch.search.params import SearchQuery
from tests.conftest import make_image
from tests.search.conftest import COLOURS, MODELS


class RenamedHashing(HashingEmbedder):
    """The hashing model under a new naming scheme: same vectors, new key, the old key listed as legacy."""

    def __init__(self, dim: int = 64, seed: int = 0):
        super().__init__(dim, seed)
        self.legacy_model_keys = (self.model_key,)
        self.model_key = f"hashing-v2:{dim}:{seed}"


def _index_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", [name])
        return cursor.fetchone()[0] == 1


@pytest.mark.django_db(transaction=True)  # CREATE INDEX after the shop's writes
def test_rekey_moves_vectors_slot_and_index(shop, settings):
    old = "hashing:64:0"
    count = ImageEmbedding.objects.filter(model_key=old).count()
    settings.MMSEARCH_MODELS = {**MODELS, "embedder": {"BACKEND": "tests.search.test_rekey.RenamedHashing",
                                                       "OPTIONS": {"dim": 64, "seed": 0}}}
    plugins.reset()
    with pytest.raises(CommandError, match="stored under the earlier key hashing:64:0: run `manage.py rekey_model embedder`"):
        call_command("activate_model", "embedder", stdout=io.StringIO())

    out = io.StringIO()
    call_command("rekey_model", "embedder", stdout=out)
    assert f"hashing:64:0 -> embedder: {count} image vectors, 0 product vectors re-keyed" in out.getvalue()
    assert ImageEmbedding.objects.filter(model_key="hashing-v2:64:0").count() == count
    assert not ImageEmbedding.objects.filter(model_key=old).exists()
    assert ActiveModel.objects.get(alias="embedder").model_key == "hashing-v2:64:0"
    assert _index_exists(vectors.index_name("image", "hashing-v2:64:0"))
    assert not _index_exists(vectors.index_name("image", old))

    photo = Image.open(io.BytesIO(make_image(size=(32, 32), color=COLOURS["red"]))).convert("RGB")
    result = search(SearchQuery(image=photo))
    assert result.hits and result.hits[0].model_key == "hashing-v2:64:0"
    with pytest.raises(CommandError, match="nothing to re-key"):
        call_command("rekey_model", "embedder", stdout=io.StringIO())
