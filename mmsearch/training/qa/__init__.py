"""The project's own product VQA model: question tokens cross-attend to the image trunk's spatial grid.

- questions: question/answer pairs generated from a catalog's attributes (many phrasings per type, yes/no
  balanced between true and false values, "A or B" choices), and the parser that reads a shopper's question
  into its type, attribute and candidate answers (no torch).
- model: the answer classifier (question tokens of the locked MiniLM trunk are the queries of cross-attention
  layers over the trunk grid; the fused question classifies over the answer vocabulary) and its saved folder.
- trainer: training over cached trunk grids and cached question tokens, resumable, temperature scaling and the
  abstention threshold fitted on a calibration split, a model card.
- evaluation: per question type accuracy, majority baseline, late fusion (the zero-shot tagger), coverage and
  answered accuracy at the threshold, ms per question.

torch is imported by model, trainer and evaluation: import those only from commands, plugins and workers.
"""
