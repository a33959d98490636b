"""Keep vectors current: when the catalog says products/images changed, queue their embedding."""

from __future__ import annotations

import logging

from django.conf import settings
from django.dispatch import receiver

from catalog.changes import catalog_changed

logger = logging.getLogger(__name__)


@receiver(catalog_changed, dispatch_uid="workers.enqueue_on_change")
def enqueue_on_change(sender, product_ids=(), image_ids=(), **kwargs) -> None:
    """Queue embedding work for changed ids (after commit); never let a broker problem break a save."""
    if not getattr(settings, "MMSEARCH_AUTO_INDEX", True):
        return
    from workers.jobs import enqueue_changed

    try:
        enqueue_changed(product_ids=product_ids, image_ids=image_ids)
    except Exception:  # noqa: BLE001 - any failure here (broker down, plugin misconfigured) must not fail the save
        logger.warning(
            "could not queue embedding of %d products / %d images; `manage.py reindex` will pick them up",
            len(product_ids), len(image_ids), exc_info=True,
        )
