"""An answerer folder's file names and config reader, without torch (the plugin's constructor and the system
checks read them at start-up; mmsearch.training.qa.model writes the folder)."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_NAME = "answerer_config.json"
WEIGHTS_NAME = "answerer.safetensors"
CARD_NAME = "model_card.json"
FORMAT = "mmsearch-answerer"


def read_config(folder: str | Path) -> dict:
    """An answerer folder's config; FileNotFoundError / ValueError naming what is wrong and the fix."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an answerer folder: {CONFIG_NAME} is missing "
                                "(train one with `manage.py train_answerer --out FOLDER`)")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} config (format {config.get('format')!r})")
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME} (an unfinished copy? retrain or copy it again)")
    return config
