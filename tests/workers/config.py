"""MMSEARCH_MODELS shared by the test process and the worker subprocesses it starts (same model_keys)."""

TEST_MODELS = {
    "embedder": {"BACKEND": "mmsearch.plugins.hashing.HashingEmbedder", "OPTIONS": {"dim": 64, "seed": 0}},
    # The green side of a blue/green swap: another model for the same role.
    "embedder_v2": {"ROLE": "embedder", "BACKEND": "mmsearch.plugins.hashing.HashingEmbedder", "OPTIONS": {"dim": 32, "seed": 1}},
    "slow": {"ROLE": "embedder", "BACKEND": "tests.workers.plugins.SlowEmbedder", "OPTIONS": {"dim": 16, "delay": 0.8}},
    "tagger": {"BACKEND": "mmsearch.plugins.zeroshot.ZeroShotTagger", "OPTIONS": {"embedder": "embedder", "calibration": None}},
    "slow_tagger": {"ROLE": "tagger", "BACKEND": "tests.workers.plugins.SlowTagger",
                    "OPTIONS": {"embedder": "embedder", "calibration": None, "delay": 0.3}},
}


def captioner_models(path: str) -> dict:
    """TEST_MODELS plus a captioner trained by the test (a folder of train_captioner), a slow twin of it, and the
    real MiniLM text embedder (the hashing embedder's word hashes are no text model)."""
    return {
        **TEST_MODELS,
        "text_embedder": {"BACKEND": "mmsearch.plugins.sentence.SentenceEmbedder", "OPTIONS": {}},
        "captioner": {"BACKEND": "mmsearch.plugins.captioner.TrunkCaptioner",
                      "OPTIONS": {"path": path, "beam_size": 2, "device": "cpu", "batch_size": 8}},
        "slow_captioner": {"ROLE": "captioner", "BACKEND": "tests.workers.plugins.SlowCaptioner",
                           "OPTIONS": {"path": path, "beam_size": 1, "device": "cpu", "delay": 0.4}},
    }
