"""Training on a device (CUDA with mixed precision, or the CPU): speed, validation metrics, and whether the saved
model gives the same vectors on that device as on the CPU.

    .venv/bin/python bench/train_device.py --data ../shared/datasets/fashion/products.jsonl --device cuda \
        --arch effl0-128 --arch effl0-128-ft --epochs 4 --out /tmp/train-device --json bench/results/train_device.json

Each --arch is trained with the default preset of `manage.py train_embedder` (only the architecture, and
--epochs / --lr where given, replaced) by the same Trainer, into OUT/ARCH. Per run the JSON records the
training seconds, pairs per second, and the per-epoch validation metrics of the model card (held-out titles,
as in `make train`). Then the saved folder is loaded through the OpenClipEmbedder plugin on the device (its
default precision) and on the CPU (fp32), and the cosine between the two devices' vectors is reported for the
held-out products' images and titles (the training products' when none is held out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mmsearch.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def device_agreement(folder: Path, device: str, products, n: int = 256) -> dict:
    """Cosines between the vectors of the model on `device` (default precision) and on the CPU (fp32)."""
    import numpy as np

    from mmsearch.plugins.openclip import OpenClipEmbedder
    from mmsearch.plugins.runtime import resolve_dtype
    from mmsearch.training.data import open_rgb

    chosen = products[:n]
    images = [open_rgb(p.images[0]) for p in chosen]
    titles = [p.title for p in chosen]
    out = {"items": len(chosen)}
    on_device = OpenClipEmbedder(pretrained=str(folder), device=device)
    on_cpu = OpenClipEmbedder(pretrained=str(folder), device="cpu", precision="fp32")
    for kind, embed in (("images", lambda m: m.embed_images(images)), ("texts", lambda m: m.embed_texts(titles))):
        cos = np.sum(embed(on_device) * embed(on_cpu), axis=1)
        out[f"{kind}_min_cosine"] = round(float(cos.min()), 5)
        out[f"{kind}_mean_cosine"] = round(float(cos.mean()), 5)
    out["device_dtype"] = str(resolve_dtype(on_device.precision, device) or "float32").replace("torch.", "")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, help="products.jsonl (repeatable)")
    parser.add_argument("--photos", action="append", default=[], help="photos-<split>.jsonl of those products")
    parser.add_argument("--arch", action="append", required=True, help="architecture (repeatable)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--max-steps", type=int, help="stop each run after this many steps (smoke runs)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the trained models")
    parser.add_argument("--cache-dir", type=Path, help="decoded images / text features (default OUT/cache)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    from mmsearch.management.commands.train_embedder import PRESETS
    from mmsearch.training.model import ARCHS
    from mmsearch.plugins.runtime import resolve_device
    from mmsearch.training.trainer import TrainConfig, Trainer

    device = resolve_device(args.device)
    result = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": []}
    for arch in args.arch:
        preset = {**PRESETS["default"], "arch": arch}
        if not (arch in ARCHS and ARCHS[arch].vision_weights and ARCHS[arch].lock_trunk):
            preset["cached_views"] = 0  # only a locked pretrained trunk has features to cache
        for key in ("epochs", "lr"):
            if getattr(args, key) is not None:
                preset[key] = getattr(args, key)
        cfg = TrainConfig(data=[str(p) for p in args.data], photos=[str(p) for p in args.photos],
                          out=str(args.out / arch), device=device, max_steps=args.max_steps,
                          cache_dir=str(args.cache_dir or args.out / "cache"), **preset)
        trainer = Trainer(cfg, replace=True, progress=False)
        card = trainer.run()
        seconds = max(card["training"]["seconds"], 0.1)  # the card rounds to 0.1 s: a tiny run can read 0.0
        pairs = len(trainer.items) * cfg.epochs
        if args.max_steps is not None:
            pairs = min(pairs, args.max_steps * min(cfg.batch_size, len(trainer.items)))
        run = {"arch": arch, "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
               "pairs_per_epoch": len(trainer.items), "train_seconds": seconds,
               "pairs_per_second": round(pairs / seconds, 1),
               "trainable_parameters": sum(p.numel() for p in trainer.built.net.parameters() if p.requires_grad),
               "per_epoch": card["metrics"]["per_epoch"],
               "agreement": device_agreement(Path(cfg.out), device, trainer.val_products or trainer.train_products)}
        print(json.dumps(run), flush=True)
        result["runs"].append(run)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
