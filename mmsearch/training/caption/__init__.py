"""The project's own captioner: a small Transformer decoder over the image trunk's spatial feature grid.

- targets: what a caption says (brand-free text from a product's title and attributes), the brand rule, and
  the mentions of gender / colour / article type that evaluation counts (no torch).
- vocab: the word vocabulary built from the training captions (no torch).
- model: the decoder (nanoGPT-style: a config dataclass saved with the weights, causal self-attention,
  cross-attention to the grid, greedy / beam / nucleus decoding).
- trainer: teacher-forced training over cached trunk grids, resumable, with a model card.
- metrics / evaluation: BLEU-4, CIDEr-D, ROUGE-L (pycocoevalcap's scorers), mentions, brand hallucination,
  and the nearest-neighbour and tag-template baselines.

torch is imported by model, trainer and evaluation: import those only from commands, plugins and workers.
"""
