"""The engine's indexing operations: index jobs, change-driven enqueueing, and the blue/green switch.

Used by the management commands, the REST API, the admin and the catalog_changed receiver, so each
operation has one implementation. Work is sent to the Celery tasks of workers/ by task name (ids only), so the
engine does not import the workers; the workers call back into this module (fail_job, bootstrap_activation).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Exists, OuterRef
from django.dispatch import receiver
from django.utils import timezone

from mmsearch.adapter import catalog_changed
from mmsearch.models import ActiveModel, EmbeddingFailure, ImageEmbedding, IndexJob, IndexOutbox, ProductTextEmbedding
from mmsearch.plugins import PluginError, alias_role, get_model, model_settings
from mmsearch.plugins.runtime import batches
from mmsearch.search import vectors

logger = logging.getLogger(__name__)

# Which item kinds each embedding role fills.
ROLE_KINDS = {"embedder": ("image", "product"), "text_embedder": ("product",)}
JOB_KINDS = {IndexJob.Kind.ALL: ("image", "product"), IndexJob.Kind.IMAGES: ("image",), IndexJob.Kind.PRODUCTS: ("product",)}


class JobError(ValueError):
    """A job or switch request that cannot be carried out; the message says why and what to do."""


class QueueUnavailable(JobError):
    """The broker refused the job's tasks (the job is marked failed)."""


def embedding_role(alias: str) -> str:
    """The alias's role, which must be one that stores vectors (embedder or text_embedder)."""
    try:
        role = alias_role(alias)
    except PluginError as exc:
        raise JobError(str(exc)) from exc
    if role not in ROLE_KINDS:
        raise JobError(f"alias {alias!r} has role {role!r}; only embedder and text_embedder aliases store vectors")
    return role


def index_aliases() -> list[str]:
    """Aliases kept current when the catalog changes (MMSEARCH_INDEX_ALIASES, else every embedding alias)."""
    configured = getattr(settings, "MMSEARCH_INDEX_ALIASES", None)
    if configured is not None:
        return list(configured)
    out = []
    for alias, conf in model_settings().items():
        if conf.get("ROLE", alias) in ROLE_KINDS:
            out.append(alias)
    return sorted(out)


# The Celery tasks (workers/tasks.py) that embed each item kind; routed to queues by CELERY_TASK_ROUTES.
TASKS = {"image": "workers.tasks.embed_images", "product": "workers.tasks.embed_products",
         "tag": "workers.tasks.tag_products", "caption": "workers.tasks.caption_products"}


def batch_size() -> int:
    """Items per forward pass and per write transaction (MMSEARCH_EMBED_BATCH_SIZE)."""
    return max(1, int(settings.MMSEARCH_EMBED_BATCH_SIZE))


def task_size() -> int:
    """Ids per task: several batches, so decoding overlaps the forward pass within a task."""
    return batch_size() * max(1, int(settings.MMSEARCH_EMBED_BATCHES_PER_TASK))


def fail_job(job_id: int | None, error: str) -> None:
    """Mark an unfinished job failed with `error`."""
    if job_id is None:
        return
    IndexJob.objects.filter(pk=job_id, status__in=[IndexJob.Status.QUEUED, IndexJob.Status.RUNNING]).update(
        status=IndexJob.Status.FAILED, error=error, finished_at=timezone.now()
    )


def enqueue(
    kind: str, alias: str, model_key: str, ids: Sequence[int], *, job_id: int | None = None, first_chunk: int = 0,
    force: bool = False, retry: bool = True,
) -> int:
    """Send `ids` as tasks of MMSEARCH_EMBED_BATCH_SIZE x MMSEARCH_EMBED_BATCHES_PER_TASK; returns tasks sent."""
    from mmsearch.celery import app

    sent = 0
    for offset, part in enumerate(batches(list(ids), task_size())):
        app.send_task(
            TASKS[kind], args=(alias, model_key, list(part)),
            kwargs={"job_id": job_id, "chunk": first_chunk + offset, "force": force},
            # Progress is read from the job's row, never from task results: no result-store subscription, which
            # would also tie this process to one Redis connection that an outage breaks for good.
            retry=retry, ignore_result=True,
        )
        sent += 1
    return sent


def enqueue_changed(product_ids: Iterable[int] = (), image_ids: Iterable[int] = ()) -> int:
    """Queue embedding of changed products and new images for every index alias; returns tasks sent."""
    product_ids, image_ids = sorted(set(product_ids)), sorted(set(image_ids))
    sent = 0
    for alias in index_aliases():
        kinds = ROLE_KINDS[embedding_role(alias)]
        model_key = get_model(alias).model_key
        if "image" in kinds and image_ids:
            # Fail fast (retry=False): a save must not wait on an absent broker.
            sent += enqueue("image", alias, model_key, image_ids, retry=False)
        if "product" in kinds and product_ids:
            sent += enqueue("product", alias, model_key, product_ids, retry=False)
    return sent


def drain_outbox(limit: int = 10_000) -> int:
    """Queue the items the outbox holds (changes made while the broker was down); returns items sent.

    Rows are deleted only after their tasks were sent, so an outbox drained while the broker is still down
    keeps them; an item queued twice is embedded once (the tasks skip what is already current)."""
    rows = list(IndexOutbox.objects.order_by("id").values_list("id", "kind", "item_id")[:limit])
    if not rows:
        return 0
    ids = {"image": [i for _, k, i in rows if k == "image"], "product": [i for _, k, i in rows if k == "product"]}
    enqueue_changed(product_ids=ids["product"], image_ids=ids["image"])
    IndexOutbox.objects.filter(id__in=[pk for pk, _, _ in rows]).delete()
    logger.info("queued %d items the outbox held", len(rows))
    return len(rows)


def _remember(product_ids: Sequence[int], image_ids: Sequence[int]) -> None:
    IndexOutbox.objects.bulk_create(
        [IndexOutbox(kind="product", item_id=i) for i in product_ids]
        + [IndexOutbox(kind="image", item_id=i) for i in image_ids],
        ignore_conflicts=True,
    )


def _item_ids(kind: str, model_key: str, only_missing: bool) -> list[int]:
    model = vectors.catalog_model(kind)
    qs = model.objects.order_by("pk")
    if only_missing:
        emb = ImageEmbedding if kind == "image" else ProductTextEmbedding
        field = "image_id" if kind == "image" else "product_id"
        qs = qs.exclude(Exists(emb.objects.filter(model_key=model_key, **{field: OuterRef("pk")}))).exclude(
            Exists(EmbeddingFailure.objects.filter(kind=kind, model_key=model_key, item_id=OuterRef("pk")))
        )
    return list(qs.values_list("pk", flat=True))


def start_job(alias: str = "embedder", *, only_missing: bool = False, force: bool = False, kind: str | None = None) -> IndexJob:
    """Create an IndexJob for `alias` and queue its batches (ids only); returns the job."""
    if only_missing and force:
        raise JobError("only_missing and force contradict each other; use one")
    role = embedding_role(alias)
    kind = kind or (IndexJob.Kind.ALL if role == "embedder" else IndexJob.Kind.PRODUCTS)
    if kind not in JOB_KINDS:
        raise JobError(f"kind {kind!r} is not one of {', '.join(JOB_KINDS)}")
    kinds = [k for k in JOB_KINDS[kind] if k in ROLE_KINDS[role]]
    if not kinds:
        raise JobError(f"alias {alias!r} ({role}) does not embed {kind}")
    plugin = get_model(alias)
    model_key = plugin.model_key
    for k in kinds:
        vectors.ensure_index(k, model_key, plugin.dim)
    ids = {k: _item_ids(k, model_key, only_missing) for k in kinds}
    job = IndexJob.objects.create(
        alias=alias, model_key=model_key, kind=kind, only_missing=only_missing, force=force,
        total=sum(len(v) for v in ids.values()),
        batches=sum(math.ceil(len(ids[k]) / batch_size()) for k in kinds),
    )
    return _queue_job(job, [(k, ids[k]) for k in kinds])


JOB_NOUNS = {"tagger": "tag", "captioner": "caption"}


def _product_selection(alias: str, role: str, filters: dict[str, list[str]] | None,
                       skus: Sequence[str] | None) -> tuple[object, list[int]]:
    """The plugin for `alias` (which must have `role`) and the ids of the active products a product job covers:
    those matching filters and skus (all by default)."""
    from mmsearch.adapter import get_catalog
    from mmsearch.search.params import SearchError, check_filters

    try:
        found = alias_role(alias)
    except PluginError as exc:
        raise JobError(str(exc)) from exc
    if found != role:
        raise JobError(f"alias {alias!r} has role {found!r}; {JOB_NOUNS[role]} jobs need a {role} alias")
    try:
        filters = check_filters(filters or {})
    except SearchError as exc:
        raise JobError(str(exc)) from exc
    return get_model(alias), get_catalog().product_ids(filters, skus)


def _start_product_job(plugin, alias: str, kind: str, task: str, ids: list[int], only_missing: bool) -> IndexJob:
    job = IndexJob.objects.create(
        alias=alias, model_key=plugin.model_key, kind=kind, only_missing=only_missing,
        total=len(ids), batches=math.ceil(len(ids) / batch_size()),
    )
    return _queue_job(job, [(task, ids)])


def start_tag_job(alias: str = "tagger", *, filters: dict[str, list[str]] | None = None,
                  skus: Sequence[str] | None = None, only_missing: bool = True) -> IndexJob:
    """A job that has `alias` (a tagger) suggest tags for the active products matching filters / skus (all by
    default), on the `tag` queue; with only_missing, products already tagged by this model for every group of
    the vocabulary are skipped, so a rerun does only what is left."""
    from mmsearch.adapter import get_catalog

    plugin, ids = _product_selection(alias, "tagger", filters, skus)
    catalog = get_catalog()
    vocabulary = catalog.vocabulary()
    if not vocabulary:
        raise JobError("the tag vocabulary is empty: create groups and tags in the admin, or from the catalog's "
                       "attributes with `manage.py create_vocabulary`")
    if only_missing and ids:
        keys = [plugin.group_key(group) for group in vocabulary]
        done = set().union(*(catalog.tagged_products(part, keys) for part in batches(ids, 5000)))
        ids = [i for i in ids if i not in done]
    return _start_product_job(plugin, alias, IndexJob.Kind.TAGS, "tag", ids, only_missing)


def start_caption_job(alias: str = "captioner", *, filters: dict[str, list[str]] | None = None,
                      skus: Sequence[str] | None = None, only_missing: bool = True) -> IndexJob:
    """A job that has `alias` (a captioner) caption the main image of the active products matching filters /
    skus (all by default), on the `caption` queue. With only_missing, products this model (model_key) captioned
    already are skipped: after a cancel, or a worker lost mid-job, the same call resumes with what is left."""
    from mmsearch.adapter import get_catalog

    if alias not in model_settings() and alias == "captioner":
        raise JobError(
            f"no captioner is configured: no trained captioner at {getattr(settings, 'MMSEARCH_CAPTIONER_PATH', '?')} "
            "(train one with `manage.py train_captioner --data products.jsonl --out models/captioner`, or set "
            "MMSEARCH_CAPTIONER_PATH to its folder)"
        )
    plugin, ids = _product_selection(alias, "captioner", filters, skus)
    if only_missing and ids:
        catalog = get_catalog()
        done = set().union(*(catalog.captioned_products(part, plugin.model_key) for part in batches(ids, 5000)))
        ids = [i for i in ids if i not in done]
    return _start_product_job(plugin, alias, IndexJob.Kind.CAPTIONS, "caption", ids, only_missing)


def _queue_job(job: IndexJob, work: list[tuple[str, list[int]]]) -> IndexJob:
    """Send a new job's tasks (chunk numbers unique within the job: they key its batch ledger)."""
    if job.total == 0:
        now = timezone.now()
        IndexJob.objects.filter(pk=job.pk).update(status=IndexJob.Status.DONE, started_at=now, finished_at=now)
        job.refresh_from_db()
        return job
    first = 0
    try:
        for kind, ids in work:
            enqueue(kind, job.alias, job.model_key, ids, job_id=job.pk, first_chunk=first, force=job.force)
            first += math.ceil(len(ids) / task_size())
    except Exception as exc:
        fail_job(job.pk, f"could not queue the job's tasks: {exc}")
        raise QueueUnavailable(f"could not queue job {job.pk} ({exc.__class__.__name__}: {exc}); is the broker running?") from exc
    job.refresh_from_db()
    return job


def cancel_job(job: IndexJob) -> IndexJob:
    """Stop a queued or running job: its remaining tasks return without work."""
    IndexJob.objects.filter(pk=job.pk, status__in=[IndexJob.Status.QUEUED, IndexJob.Status.RUNNING]).update(
        status=IndexJob.Status.CANCELLED, finished_at=timezone.now()
    )
    job.refresh_from_db()
    return job


# --- blue/green ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Activation:
    slot: str
    alias: str
    model_key: str
    previous_key: str | None
    coverage: list[vectors.Coverage]


def activate(alias: str, *, as_role: str | None = None, force: bool = False) -> Activation:
    """Make alias's model answer searches for `as_role` (default: its role) in one step.

    Refuses when some catalog items have neither a vector nor a recorded failure for that model, unless
    force; builds the HNSW index first so the first query after the switch is fast.
    """
    role = embedding_role(alias)
    slot = as_role or role
    if slot in ROLE_KINDS and slot != role:
        raise JobError(f"alias {alias!r} is a {role}; it cannot answer for {slot!r}")
    plugin = get_model(alias)
    key, dim = plugin.model_key, plugin.dim
    cover = [vectors.coverage(k, key) for k in ROLE_KINDS[role]]
    incomplete = [c for c in cover if not c.complete]
    if incomplete and not force:
        legacy = stored_legacy_keys(alias)
        hint = (
            f"its vectors are stored under the earlier key {legacy[0]}: run `manage.py rekey_model {alias}`"
            if legacy else
            f"run `manage.py reindex --alias {alias} --only-missing --wait`, or pass --force to switch anyway"
        )
        raise JobError(f"{key} is not fully indexed ({'; '.join(map(str, cover))}); {hint}")
    for k in ROLE_KINDS[role]:
        vectors.ensure_index(k, key, dim)
    previous = vectors.active_model(slot)
    vectors.activate(slot, key, dim)
    logger.info("search slot %s switched from %s to %s", slot, previous.model_key if previous else None, key)
    return Activation(slot, alias, key, previous.model_key if previous else None, cover)


def stored_legacy_keys(alias: str) -> list[str]:
    """Keys under which vectors of alias's model are stored from before model keys named content, not place."""
    stored = vectors.stored_keys()
    return [key for key in getattr(get_model(alias), "legacy_model_keys", ()) if key in stored]


def rekey(alias: str) -> dict[str, dict[str, int]]:
    """Move the vectors stored under alias's legacy keys to its current model_key; {old key: rows per kind}."""
    embedding_role(alias)
    plugin = get_model(alias)
    legacy = stored_legacy_keys(alias)
    if not legacy:
        raise JobError(f"no vectors of {alias!r} are stored under an earlier key; nothing to re-key ({plugin.model_key})")
    if plugin.model_key in vectors.stored_keys():
        raise JobError(
            f"vectors are stored under both {plugin.model_key} and {', '.join(legacy)}; drop one "
            "(manage.py drop_model KEY) before re-keying"
        )
    return {old: vectors.rename_model_key(old, plugin.model_key, plugin.dim) for old in legacy}


def drop(model_key: str) -> dict[str, int]:
    """Delete a model_key's vectors, failures and indexes; refuses while a search slot uses it."""
    users = list(ActiveModel.objects.filter(model_key=model_key).values_list("alias", flat=True))
    if users:
        raise JobError(
            f"{model_key} is active for {', '.join(users)}; activate another model first (manage.py activate_model)"
        )
    if model_key not in vectors.stored_keys() and not EmbeddingFailure.objects.filter(model_key=model_key).exists():
        raise JobError(f"no vectors are stored for {model_key!r}; stored keys: {', '.join(vectors.stored_keys()) or 'none'}")
    return vectors.delete_model_key(model_key)


def bootstrap_activation(alias: str) -> None:
    """Make the role's own alias (e.g. `embedder`) active once it covers the catalog, if nothing is active yet.

    Only the first model of a slot activates itself (a fresh install then searches without a manual step);
    every later switch is an explicit blue/green `activate_model`.
    """
    try:
        if alias != alias_role(alias) or ActiveModel.objects.filter(alias=alias).exists():
            return
        with transaction.atomic():  # a savepoint: a lost race or refusal leaves the caller's transaction usable
            result = activate(alias)
        logger.info("activated %s for %s: %s", result.model_key, alias, "; ".join(map(str, result.coverage)))
    except JobError:
        return  # not fully indexed yet
    except DatabaseError:
        logger.info("activation of %s skipped (another worker is activating it)", alias, exc_info=True)


@receiver(catalog_changed, dispatch_uid="mmsearch.indexing.enqueue_on_change")
def enqueue_on_change(sender, product_ids=(), image_ids=(), **kwargs) -> None:
    """Queue embedding work for changed ids (after commit); never let a broker problem break a save: what
    cannot be sent waits in the outbox (IndexOutbox) until the broker is back."""
    if not getattr(settings, "MMSEARCH_AUTO_INDEX", True):
        return
    try:
        enqueue_changed(product_ids=product_ids, image_ids=image_ids)
    except Exception:  # noqa: BLE001 - any failure here (broker down, plugin misconfigured) must not fail the save
        logger.warning(
            "could not queue embedding of %d products / %d images; they wait in the index outbox",
            len(product_ids), len(image_ids), exc_info=True,
        )
        try:
            _remember(list(product_ids), list(image_ids))
        except DatabaseError:
            logger.error("the index outbox is unreachable too; `manage.py reindex` will pick the items up",
                         exc_info=True)
        return
    if IndexOutbox.objects.exists():  # the broker is back: send what waited
        drain_outbox()
