"""An answerer folder's file names and config reader, without torch (the plugin's constructor and the system
checks read them at start-up; mmsearch.training.qa.model writes the folder)."""

from __future__ import annotations

from pathlib import Path

from mmsearch.plugins.files import read_model_config

CONFIG_NAME = "answerer_config.json"
WEIGHTS_NAME = "answerer.safetensors"
CARD_NAME = "model_card.json"
FORMAT = "mmsearch-answerer"


def read_config(folder: str | Path) -> dict:
    """An answerer folder's config; FileNotFoundError / ValueError naming what is wrong and the fix."""
    return read_model_config(folder, CONFIG_NAME, WEIGHTS_NAME, FORMAT, "answerer")
