"""Zero-shot image tagger over any configured embedder (role `tagger`), with calibrated confidence.

    MMSEARCH_MODELS["tagger"] = {"BACKEND": "mmsearch.plugins.zeroshot.ZeroShotTagger",
                                 "OPTIONS": {"embedder": "embedder"}}

For every tag of a group the tagger embeds its prompts — each of the group's templates ("{group}: {tag}",
"a photo of a {tag} product", "{tag}") filled with the tag's name and each synonym — and takes the mean of
the unit wording vectors as the tag's vector (the math of training/evaluation.value_prompts). An image is
scored against every tag of a group at once: probabilities = softmax(LOGIT_SCALE x cosine), one softmax per
group, so whatever embedder is configured tags with no code change.

A calibration file (`tagger.json` + `tagger.npz`, written by `manage.py calibrate_tagger`, found beside a
local model folder by default) adds per group, for the exact VocabGroup version it was fitted on:
- a temperature T (temperature scaling, Guo et al. 2017): probabilities = softmax(logits / T);
- optionally a few-shot adapter: a linear probe W (tags x dim) and bias b over the image vectors, initialised
  from the prompt vectors (W = prompts, b = 0 is exactly the zero-shot tagger), so logits = LOGIT_SCALE x
  image @ W.T + b;
- optionally a neighbour cache (Tip-Adapter, Zhang et al. 2022): the image vectors of labelled catalog products
  (keys) and each one's tag; an image's neighbour votes are sum_k exp(-beta (1 - cos(image, key_k))) per tag,
  and the logits become log softmax(logits) + alpha x log(votes / sum of votes + NEIGHBOUR_EPS);
- the auto-accept threshold: the lowest calibrated score at which a group's top tag reached the target
  precision on held-out labelled data, with the coverage it gave.
A file fitted with `flip` (test-time augmentation) scores each image by the mean of its own and its mirror
image's unit vectors (`flip_average`), renormalised, so the tagger embeds the mirror images too.
A group the file does not know (or knows at another version) is scored zero-shot and reported uncalibrated.

The constructor only validates options; the embedder is built, the calibration read and prompts embedded on
first use. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch.plugins.base import DEFAULT_TAG_TEMPLATES, TagScore, TagSuggestions, VocabGroup, VocabTag
from mmsearch.plugins.runtime import CheapConstructor, unit_rows

logger = logging.getLogger(__name__)

# Logits are LOGIT_SCALE x cosine, as CLIP's capped logit scale and as `evaluate` has always scored zero-shot.
LOGIT_SCALE = 100.0
CALIBRATION_NAME = "tagger.json"  # beside the model: tagger.json + tagger.npz (adapter weights)
CALIBRATION_FORMAT = 1
# Attributes with more distinct values than this are identifiers, not a vocabulary (as the vocabulary command).
MAX_GROUP_VALUES = 200


# ---- prompts ---------------------------------------------------------------------------------------------------
def fill_template(template: str, group_name: str, word: str) -> str:
    """One wording: "{group}" is the group's name, "{tag}" the tag's name or a synonym (plain replacement, so a
    brace in a tag's name is harmless)."""
    return template.replace("{group}", group_name).replace("{tag}", word)


def prompt_texts(group: VocabGroup) -> list[list[str]]:
    """Per tag (in group order): every template x (name, *synonyms) wording, name first, template order kept.
    A wording repeated (a synonym equal to the name) counts once."""
    out = []
    for tag in group.tags:
        words = dict.fromkeys(w for w in (tag.name, *tag.synonyms) if w)
        out.append(list(dict.fromkeys(fill_template(t, group.name, w) for w in words for t in group.templates)))
    return out


def prompt_vectors(embedder, group: VocabGroup) -> np.ndarray:
    """(len(group.tags), dim) unit rows: each tag's vector is the mean of its unit-length wording vectors,
    normalised (the same math as training/evaluation.value_prompts)."""
    texts = prompt_texts(group)
    flat = [t for words in texts for t in words]
    if not flat:
        return np.zeros((0, embedder.dim), np.float32)
    emb = unit_rows(np.asarray(embedder.embed_texts(flat), dtype=np.float32))
    out = np.empty((len(texts), emb.shape[1]), np.float32)
    start = 0
    for j, words in enumerate(texts):
        out[j] = emb[start:start + len(words)].mean(axis=0)
        start += len(words)
    return unit_rows(out)


def mirrored(images: Sequence) -> list:
    """The images flipped left to right (test-time augmentation: a product photo's mirror is the same product)."""
    from PIL import Image

    return [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]


def flip_average(vectors: np.ndarray, mirror_vectors: np.ndarray) -> np.ndarray:
    """The unit mean of each image's unit vector and its mirror image's: what a `flip` calibration scores."""
    return unit_rows(unit_rows(np.asarray(vectors, np.float32)) + unit_rows(np.asarray(mirror_vectors, np.float32)))


# ---- a vocabulary from a catalog's attributes ----------------------------------------------------------------
def tag_slug(value: str) -> str:
    """The slug of a tag made from an attribute value: django's slugify, or the value lower-cased when
    slugify leaves nothing (a value of only non-ASCII letters or punctuation)."""
    from django.utils.text import slugify

    return slugify(value) or value.lower()


def group_slug(key: str) -> str:
    """The slug of a group made from an attribute key (the key itself for ordinary keys: 'article_type')."""
    from django.utils.text import slugify

    return slugify(key) or key


def _attributes(product: Any) -> Mapping:
    attrs = getattr(product, "attributes", product)
    return attrs if isinstance(attrs, Mapping) else {}


def attribute_value(product: Any, key: str) -> str | None:
    """A product's value of attribute `key` as a tag would name it, or None (missing, empty, not a scalar)."""
    value = _attributes(product).get(key)
    if value in (None, "") or isinstance(value, (dict, list, tuple, set)):
        return None
    return str(value)


def vocabulary_from_products(products: Iterable[Any], keys: Sequence[str],
                             max_values: int = MAX_GROUP_VALUES) -> list[VocabGroup]:
    """One VocabGroup per attribute key with 2..max_values distinct values, as the vocabulary command creates it.

    `products` are objects with an `attributes` mapping (training.data.Product, catalog.models.Product) or the
    attribute mappings themselves. Group: slug = the key (slugified), name = the key with "_" as spaces,
    templates = DEFAULT_TAG_TEMPLATES. Tags: one per distinct value (str(value); None and "" skipped), slug =
    tag_slug(value), ordered by slug. Values whose slugs collide ("Navy Blue", "Navy-Blue", "navy blue") are
    merged into one tag: named by the first spelling in sorted order, the other spellings its synonyms (sorted),
    so every spelling is both a prompt wording and a label of that tag. Deterministic: the same values give the
    same groups and versions whatever the order of the products.
    """
    keys = list(dict.fromkeys(keys))
    values: dict[str, set[str]] = {k: set() for k in keys}
    for product in products:
        for key in keys:
            value = attribute_value(product, key)
            if value is not None:
                values[key].add(value)
    groups = []
    for key in keys:
        distinct = sorted(values[key])
        if not 2 <= len(distinct) <= max_values:
            continue
        by_slug: dict[str, list[str]] = {}
        for value in distinct:
            by_slug.setdefault(tag_slug(value), []).append(value)
        tags = tuple(VocabTag(slug, spellings[0], tuple(spellings[1:])) for slug, spellings in sorted(by_slug.items()))
        if len(tags) >= 2:
            groups.append(VocabGroup(group_slug(key), key.replace("_", " "), tags, DEFAULT_TAG_TEMPLATES))
    return groups


def label_index(group: VocabGroup) -> dict[str, int]:
    """{slug: tag index} for every tag's slug and the slugs of its name and synonyms: how a labelled product's
    value maps to a tag (by tag_slug(value), so every spelling merged into a tag maps to it)."""
    index = {tag.slug: j for j, tag in enumerate(group.tags)}
    for j, tag in enumerate(group.tags):
        for word in (tag.name, *tag.synonyms):
            index.setdefault(tag_slug(word), j)
    return index


def labels_for(group: VocabGroup, values: Sequence[str | None]) -> np.ndarray:
    """Tag index per value (-1: no value, -2: a value no tag of the group names)."""
    index = label_index(group)
    out = np.full(len(values), -1, dtype=np.int64)
    for i, value in enumerate(values):
        if value is not None:
            out[i] = index.get(tag_slug(value), -2)
    return out


# ---- scores ----------------------------------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def zero_shot_logits(vectors: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """LOGIT_SCALE x cosine of unit image rows against unit prompt rows."""
    return LOGIT_SCALE * (np.asarray(vectors, np.float32) @ np.asarray(prompts, np.float32).T).astype(np.float64)


def adapter_logits(vectors: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """LOGIT_SCALE x image @ W.T + b (W = prompts, b = 0 gives zero_shot_logits)."""
    return zero_shot_logits(vectors, weight) + np.asarray(bias, np.float64)[None, :]


NEIGHBOUR_EPS = 1e-6  # floor of a tag's neighbour share (inside the log), so no vote never means -inf
NEIGHBOUR_CHUNK = 1024  # images scored against the keys at a time


@dataclass(frozen=True)
class Neighbours:
    """A group's neighbour cache: unit key vectors (keys x dim, shared between groups), each key's tag index
    (-1: the key has no tag of this group), and the sharpness beta and weight alpha chosen for the group."""

    keys: np.ndarray
    labels: np.ndarray
    beta: float
    alpha: float

    @cached_property
    def _voters(self) -> tuple[np.ndarray, np.ndarray]:
        """The keys that vote (labelled >= 0) and their labels, selected once per instance."""
        keep = self.labels >= 0
        return np.ascontiguousarray(self.keys[keep], np.float32), self.labels[keep]

    def votes(self, vectors: np.ndarray, tags: int) -> np.ndarray:
        """(n, tags) share of each tag in sum_k exp(-beta (1 - cos(image, key_k))) over the labelled keys."""
        keys, labels = self._voters
        onehot = np.zeros((len(keys), tags), np.float32)
        onehot[np.arange(len(keys)), labels] = 1.0
        x = np.asarray(vectors, np.float32)
        votes = np.empty((len(x), tags))
        for start in range(0, len(x), NEIGHBOUR_CHUNK):  # bounded memory: chunk x keys affinities at a time
            sim = x[start:start + NEIGHBOUR_CHUNK] @ keys.T
            votes[start:start + NEIGHBOUR_CHUNK] = np.exp(-self.beta * (1.0 - sim)) @ onehot
        return votes / np.maximum(votes.sum(axis=1, keepdims=True), 1e-300)

    def logits(self, vectors: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """log softmax(logits) + alpha x log(neighbour share + NEIGHBOUR_EPS)."""
        z = np.asarray(logits, np.float64)
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return log_p + self.alpha * np.log(self.votes(vectors, z.shape[1]) + NEIGHBOUR_EPS)


@dataclass(frozen=True)
class OperatingPoint:
    target: float
    threshold: float | None
    precision: float | None
    coverage: float


@dataclass(frozen=True)
class GroupCalibration:
    """What the calibration file says about one group, for the one VocabGroup version it was fitted on."""

    slug: str
    version: str
    group: VocabGroup  # the group as fitted (its tags in order: the rows of the adapter)
    temperature: float
    weight: np.ndarray | None  # adapter (tags x dim) or None: zero-shot
    bias: np.ndarray | None
    target_precision: float
    threshold: float | None
    precision: float | None
    coverage: float
    operating_points: tuple[OperatingPoint, ...] = ()
    neighbours: Neighbours | None = None

    @property
    def adapted(self) -> bool:
        """Scored by more than the prompts: a linear adapter, a neighbour cache or both."""
        return self.weight is not None or self.neighbours is not None

    @property
    def needs_prompts(self) -> bool:
        return self.weight is None

    def logits(self, vectors: np.ndarray, prompts: np.ndarray | None) -> np.ndarray:
        """Uncalibrated logits: the adapter's when there is one, else zero-shot against `prompts`; then the
        neighbour cache's votes when the group has one."""
        if self.weight is not None:
            out = adapter_logits(vectors, self.weight, self.bias)
        elif prompts is None:
            raise ValueError(f"group {self.slug!r} has no adapter: its prompt vectors are needed")
        else:
            out = zero_shot_logits(vectors, prompts)
        return self.neighbours.logits(vectors, out) if self.neighbours is not None else out

    def probabilities(self, vectors: np.ndarray, prompts: np.ndarray | None) -> np.ndarray:
        """Calibrated probabilities: softmax(logits / temperature)."""
        return softmax(self.logits(vectors, prompts) / self.temperature)

    def threshold_for(self, target: float) -> float | None:
        """The auto-accept threshold at precision >= target: the file's own target, else the stored operating
        point with the smallest target at or above it (never a laxer one); None when none reached it."""
        if abs(target - self.target_precision) < 1e-9:
            return self.threshold
        above = [p for p in self.operating_points if p.target >= target - 1e-9]
        return min(above, key=lambda p: p.target).threshold if above else None


class CalibrationError(ValueError):
    """A calibration file cannot be used; the message names the file and the reason (one line)."""


def array_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of arrays (the adapter file's content, not its zip bytes)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def group_from_json(entry: Mapping) -> VocabGroup:
    """The VocabGroup a calibration entry was fitted on (slug, name, templates, tags [[slug, name, synonyms]])."""
    return VocabGroup(
        str(entry["slug"]), str(entry["name"]),
        tuple(VocabTag(str(s), str(n), tuple(str(x) for x in syn)) for s, n, syn in entry["tags"]),
        tuple(str(t) for t in entry["templates"]),
    )


def group_to_json(group: VocabGroup) -> dict:
    return {"slug": group.slug, "name": group.name, "version": group.version, "templates": list(group.templates),
            "tags": [[t.slug, t.name, list(t.synonyms)] for t in group.tags]}


@dataclass(frozen=True)
class TaggerCalibration:
    """A parsed calibration file (tagger.json + its adapters .npz)."""

    path: Path
    version: str
    embedder_model_key: str
    groups: dict[str, GroupCalibration]
    meta: dict

    @property
    def flip(self) -> bool:
        """Fitted on flip-averaged image vectors (flip_average): the tagger must score those."""
        return self.meta.get("flip") is True

    @classmethod
    def load(cls, path: str | Path) -> TaggerCalibration:
        """Read and check a calibration file; CalibrationError (one line) when it is unusable."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CalibrationError(f"{path}: no such calibration file") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{path}: not a readable calibration file ({str(exc).splitlines()[0]})") from exc
        if not isinstance(raw, dict) or raw.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(f"{path}: not a tagger calibration file of format {CALIBRATION_FORMAT}")
        if not isinstance(raw.get("flip", False), bool):
            raise CalibrationError(f"{path}: 'flip' must be true or false, not {raw.get('flip')!r}")
        arrays: dict[str, np.ndarray] = {}
        adapters = raw.get("adapters")
        try:
            if adapters:
                with np.load(path.parent / adapters["file"], allow_pickle=False) as npz:
                    arrays = {k: np.asarray(npz[k]) for k in npz.files}
                if array_digest(arrays) != adapters["sha256"]:
                    raise CalibrationError(f"{path}: {adapters['file']} does not hold the adapters this file was "
                                           "written with (sha256 differs)")
            groups = {}
            keys_of: dict[str, np.ndarray] = {}
            for slug, entry in raw["groups"].items():
                group = group_from_json(entry)
                if group.version != entry["version"]:
                    raise CalibrationError(f"{path}: group {slug!r} is recorded at version {entry['version']} but "
                                           f"its tags give {group.version}")
                adapter = entry.get("adapter")
                weight = bias = None
                if adapter:
                    weight = arrays[adapter["weight"]].astype(np.float32)
                    bias = arrays[adapter["bias"]].astype(np.float64)
                    if weight.shape[0] != len(group.tags) or bias.shape != (len(group.tags),):
                        raise CalibrationError(
                            f"{path}: the adapter of {slug!r} does not fit its {len(group.tags)} tags")
                neighbours = None
                cache = entry.get("neighbours")
                if cache:
                    if cache["keys"] not in keys_of:  # one float32 copy of keys that several groups share
                        keys_of[cache["keys"]] = arrays[cache["keys"]].astype(np.float32)
                    keys, labels = keys_of[cache["keys"]], arrays[cache["labels"]].astype(np.int64)
                    if labels.shape != (len(keys),) or labels.max(initial=-1) >= len(group.tags):
                        raise CalibrationError(
                            f"{path}: the neighbour cache of {slug!r} does not fit its keys and tags")
                    neighbours = Neighbours(keys, labels, float(cache["beta"]), float(cache["alpha"]))
                points = tuple(OperatingPoint(float(p["target"]), p["threshold"], p["precision"], float(p["coverage"]))
                               for p in entry.get("operating_points", ()))
                temperature = float(entry["temperature"])
                if not temperature > 0:
                    raise CalibrationError(f"{path}: group {slug!r} has temperature {temperature}")
                groups[slug] = GroupCalibration(
                    slug, entry["version"], group, temperature, weight, bias, float(entry["target_precision"]),
                    entry.get("threshold"), entry.get("precision"), float(entry.get("coverage") or 0.0), points,
                    neighbours)
            return cls(path, str(raw["version"]), str(raw["embedder_model_key"]), groups, raw)
        except CalibrationError:
            raise
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise CalibrationError(f"{path}: malformed calibration file ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else exc!r})") from exc

    def for_group(self, group: VocabGroup) -> GroupCalibration | None:
        """This group's calibration when it was fitted on exactly this version of it."""
        cal = self.groups.get(group.slug)
        return cal if cal is not None and cal.version == group.version else None


def calibration_beside(embedder) -> Path | None:
    """tagger.json in the embedder's local model folder (OpenClipEmbedder with a folder source), if any."""
    source = getattr(embedder, "source", None)
    if getattr(source, "kind", None) == "folder":
        path = Path(source.ref) / CALIBRATION_NAME
        if path.is_file():
            return path
    return None


def load_matching(path: Path, embedder_model_key: str, *, strict: bool) -> TaggerCalibration | None:
    """The calibration at `path` when it was fitted for this embedder; a logged warning (or, with strict, the
    CalibrationError of a broken file) otherwise."""
    try:
        cal = TaggerCalibration.load(path)
    except CalibrationError as exc:
        if strict:
            raise
        logger.warning("tagger calibration ignored: %s", exc)
        return None
    if cal.embedder_model_key != embedder_model_key:
        logger.warning("tagger calibration %s ignored: it was fitted for the embedder %s, not %s", path,
                       cal.embedder_model_key, embedder_model_key)
        return None
    return cal


# ---- the plugin --------------------------------------------------------------------------------------------------
class ZeroShotTagger(CheapConstructor):
    """Tags images with a vocabulary through a composed embedder alias; calibrated where a calibration file
    covers the group (see the module docstring)."""

    def __init__(self, embedder: str = "embedder", calibration: str | None = "auto", top_k: int = 3,
                 target_precision: float = 0.95):
        if not isinstance(embedder, str) or not embedder:
            raise ValueError(f"embedder={embedder!r} must name an embedder alias of MMSEARCH_MODELS")
        from mmsearch.plugins import alias_role, model_settings
        from mmsearch.plugins.registry import PluginError

        if embedder not in model_settings():
            raise ValueError(f"embedder={embedder!r} is not an alias of MMSEARCH_MODELS "
                             f"(configured: {', '.join(sorted(model_settings())) or 'none'})")
        try:
            role = alias_role(embedder)
        except PluginError as exc:
            raise ValueError(f"embedder={embedder!r}: {exc.message}") from exc
        if role != "embedder":
            raise ValueError(
                f"embedder={embedder!r} is a {role} alias; the tagger needs an embedder (images and texts)")
        if calibration is not None and (not isinstance(calibration, str) or not calibration):
            raise ValueError(f"calibration={calibration!r} must be 'auto', None or the path of a {CALIBRATION_NAME}")
        if calibration not in (None, "auto") and not Path(calibration).expanduser().is_file():
            raise FileNotFoundError(f"calibration={calibration!r}: no such file")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k={top_k!r} must be a positive integer")
        if isinstance(target_precision, bool) or not isinstance(target_precision, (int, float)) \
                or not 0 < target_precision < 1:
            raise ValueError(f"target_precision={target_precision!r} must be a number between 0 and 1")
        self.embedder = embedder
        self.calibration = calibration
        self.top_k = top_k
        self.target_precision = float(target_precision)
        self._lock = threading.RLock()
        self._embedder: Any = None
        self._calibration: TaggerCalibration | None = None
        self._calibration_read = False
        self._prompts: dict[tuple[str, str, str], np.ndarray] = {}

    # --- identity ---------------------------------------------------------------------------------------------
    @property
    def embedder_model(self):
        """The composed embedder instance: the process-wide one of the alias, fetched on first use and kept (the
        handler builds a fresh tagger whenever it builds a fresh embedder)."""
        if self._embedder is None:
            from mmsearch.plugins import get_model

            with self._lock:
                if self._embedder is None:
                    self._embedder = get_model(self.embedder)
        return self._embedder

    @property
    def embedder_model_key(self) -> str:
        """The embedder's model_key: stored image vectors of this key are what score_vectors scores."""
        return self.embedder_model.model_key

    @property
    def model_key(self) -> str:
        cal = self.loaded_calibration
        return f"zeroshot:{self.embedder_model_key}:{cal.version if cal else 'uncalibrated'}"

    def group_key(self, group: VocabGroup) -> str:
        """What a stored suggestion of this group records: model_key + ':slug@version'."""
        return f"{self.model_key}:{group.slug}@{group.version}"

    @property
    def calibration_path(self) -> Path | None:
        if self.calibration is None:
            return None
        if self.calibration == "auto":
            return calibration_beside(self.embedder_model)
        return Path(self.calibration).expanduser()

    @property
    def loaded_calibration(self) -> TaggerCalibration | None:
        """The calibration in use (read once): None without one, or when it was fitted for another embedder."""
        if not self._calibration_read:
            with self._lock:
                if not self._calibration_read:
                    path = self.calibration_path
                    self._calibration = (load_matching(path, self.embedder_model_key,
                                                       strict=self.calibration != "auto") if path else None)
                    self._calibration_read = True
        return self._calibration

    # --- scoring ----------------------------------------------------------------------------------------------
    def prompts(self, group: VocabGroup) -> np.ndarray:
        """The group's prompt vectors, embedded once per (embedder key, group slug, group version)."""
        key = (self.embedder_model_key, group.slug, group.version)
        cached = self._prompts.get(key)
        if cached is None:
            cached = prompt_vectors(self.embedder_model, group)
            with self._lock:
                self._prompts[key] = cached
        return cached

    def group_calibration(self, group: VocabGroup) -> GroupCalibration | None:
        cal = self.loaded_calibration
        return cal.for_group(group) if cal else None

    @property
    def flip(self) -> bool:
        """Whether the calibration in use scores flip-averaged image vectors (see image_vectors)."""
        cal = self.loaded_calibration
        return cal is not None and cal.flip

    def image_vectors(self, images: Sequence, vectors: np.ndarray | None = None) -> np.ndarray:
        """The unit vectors score_vectors expects for these decoded images: the embedder's (`vectors` when they
        are already at hand, e.g. stored by the embed pipeline), averaged with their mirror images' when the
        calibration was fitted so (flip)."""
        emb = self.embedder_model
        plain = emb.embed_images(images) if vectors is None else vectors
        if not self.flip:
            return unit_rows(np.asarray(plain, np.float32))
        return flip_average(plain, emb.embed_images(mirrored(images)))

    def score_vectors(self, vectors: np.ndarray, group: VocabGroup) -> tuple[np.ndarray, bool]:
        """(n, len(group.tags)) probabilities of unit image vectors (image_vectors), one softmax per group; the
        adapter and temperature are used when the calibration has this group at this version (then True)."""
        x = unit_rows(np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1))
        if not group.tags:
            return np.zeros((len(x), 0)), False
        cal = self.group_calibration(group)
        if cal is None:
            return softmax(zero_shot_logits(x, self.prompts(group))), False
        for name, array in (("adapter", cal.weight), ("neighbour cache", getattr(cal.neighbours, "keys", None))):
            if array is not None and array.shape[1] != x.shape[1]:
                raise ValueError(
                    f"group {group.slug!r}: the {name} expects {array.shape[1]}-d vectors, got {x.shape[1]}")
        return cal.probabilities(x, self.prompts(group) if cal.needs_prompts else None), True

    def threshold(self, group: VocabGroup) -> float | None:
        """The auto-accept threshold of this group at this version (accept the group's top tag when its score is
        at least this), at this tagger's target_precision; None when not calibrated or never reached."""
        cal = self.group_calibration(group)
        return cal.threshold_for(self.target_precision) if cal else None

    def tag(self, images: Sequence, vocabulary: Sequence[VocabGroup]) -> list[TagSuggestions]:
        """Embed the images with the embedder, then the top_k tags of every group per image."""
        if not len(images):
            return []
        vectors = self.image_vectors(images)
        per_image: list[list[TagScore]] = [[] for _ in range(len(images))]
        for group in vocabulary:
            if not group.tags:
                continue
            probs, calibrated = self.score_vectors(vectors, group)
            for i, row in enumerate(probs):
                for j in np.argsort(-row, kind="stable")[: self.top_k]:
                    per_image[i].append(TagScore(group.slug, group.tags[j].slug, float(row[j]), calibrated))
        key = self.model_key
        return [TagSuggestions(tags, key) for tags in per_image]

    def describe(self) -> dict:
        """For `manage.py plugins` (no weights loaded)."""
        try:
            path = self.calibration_path
        except Exception as exc:  # the embedder alias itself is broken: its own entry reports it
            return {"embedder": self.embedder, "calibration": f"unknown ({exc})"}
        return {"embedder": self.embedder, "calibration": str(path) if path else "none (uncalibrated)"}

    def __repr__(self) -> str:
        return f"ZeroShotTagger(embedder={self.embedder!r}, calibration={self.calibration!r})"
