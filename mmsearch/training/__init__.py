"""Training and evaluation of the product image-text embedder (no model hub needed).

- data: catalogs and photo files in the interchange format, held-out splits, decoded-image caches.
- model: open_clip model configs (small ConvNet + locked MiniLM text tower), saving as a `local-dir:` folder.
- trainer: the CLIP objective (symmetric InfoNCE, learnable temperature) with resumable checkpoints.
- metrics / evaluation: retrieval, zero-shot and photo-search metrics for any Embedder plugin.

torch and open_clip are imported by these modules, so import them only from commands and workers.
"""
