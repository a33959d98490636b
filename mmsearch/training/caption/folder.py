"""The captioner's saved folder, read without torch (so `manage.py check` can validate a configured folder).

    captioner_config.json   {"format": "mmsearch-captioner", "version": 1, "decoder": CaptionConfig fields,
                             "trunk": trunk_spec(...), "vocab": [words by id]}
    captioner.safetensors   the trunk's state dict under "trunk." and the decoder's under "decoder." (the output
                            layer is tied to the token embedding, so "decoder.lm_head.weight" is not stored)
    model_card.json         architecture, data, hyper-parameters, per-epoch metrics, sha256 of the weights
    heldout.jsonl           the held-out products (training's validation split)
"""

from __future__ import annotations

from pathlib import Path

from mmsearch.plugins.files import read_model_config

CONFIG_NAME = "captioner_config.json"
WEIGHTS_NAME = "captioner.safetensors"
CARD_NAME = "model_card.json"
FORMAT = "mmsearch-captioner"


def trunk_spec(arch, identity: str) -> dict:
    """What a folder records about its trunk: how to build it, its input, and the identity of its weights (the
    key of the grid caches, so a worker can tell whether another head's grid is this captioner's)."""
    return {"arch": arch.name, "timm_model_name": arch.vision["timm_model_name"],
            "timm_pool": arch.vision.get("timm_pool", "avg"), "weights": arch.vision_weights,
            "image_size": arch.image_size, "mean": list(arch.mean), "std": list(arch.std), "resize_mode": "squash",
            "interpolation": "bicubic", "identity": identity}


def read_config(folder: str | Path) -> dict:
    """A captioner folder's config; FileNotFoundError / ValueError naming what is wrong and the fix."""
    return read_model_config(folder, CONFIG_NAME, WEIGHTS_NAME, FORMAT, "captioner")
