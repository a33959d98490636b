"""The catalog's one outgoing hook: 'these products/images changed' (mmsearch.adapter.catalog_changed).

Catalog code sends it (after saves, imports and bulk edits); the engine listens and queues the embedding work.
Receivers get ids only, and the signal is sent after the surrounding transaction commits.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from mmsearch.adapter import catalog_changed


def notify_changed(product_ids: Iterable[int] = (), image_ids: Iterable[int] = ()) -> None:
    """Tell listeners, once the current transaction commits, that these rows were created or changed."""
    products, images = sorted(set(product_ids)), sorted(set(image_ids))
    if not (products or images):
        return
    transaction.on_commit(
        lambda: catalog_changed.send(sender="catalog", product_ids=products, image_ids=images), robust=True
    )
