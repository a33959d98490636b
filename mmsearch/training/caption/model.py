"""The caption decoder: a small Transformer that writes a caption while attending to the trunk's feature grid.

Written after nanoGPT's model.py: the hyper-parameters in one dataclass saved with the weights, causal
self-attention, an MLP, a Block, and the decoding methods. The difference is a cross-attention in every block:
the caption so far attends to itself (causally), then to the image's grid tokens, then goes through the MLP.

    grid (B, 16, 1280) ─ LayerNorm ─ Linear ─ + position + MLP(cell colours (B, 16, 6)) ─► memory (B, 16, n_embd)
    caption ids ─ wte + wpe ─► [ self-attention (causal) ─ cross-attention (memory) ─ MLP ] x n_layer ─ ln_f ─ lm_head

Training is teacher forcing (`forward` with targets: next-word cross-entropy); decoding is `greedy`,
`beam_search` or `sample` (nucleus, top_p), each its own method. Token embeddings and the output layer share
their weights (as in nanoGPT).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

from mmsearch.training.caption.vocab import BOS, EOS, PAD, UNK


@dataclass
class CaptionConfig:
    vocab_size: int
    block_size: int = 18  # longest caption in ids, BOS and EOS included
    grid_tokens: int = 16  # H * W of the trunk's grid (4 x 4 for EfficientNet-Lite0 at 128 px)
    grid_dim: int = 1280  # channels of the grid
    # Pixel colour statistics of each grid cell appended to its token (6: mean and standard deviation of R, G, B,
    # data.cell_colours; 0: none). The trunk's ImageNet features keep little absolute colour, the pixels all of it.
    colour_dim: int = 0
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.1
    bias: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, config: CaptionConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class CrossAttention(nn.Module):
    """The caption's positions attend to every grid token (no mask)."""

    def __init__(self, config: CaptionConfig):
        super().__init__()
        self.q = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.kv = nn.Linear(config.n_embd, 2 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        S = memory.size(1)
        h = self.n_head
        q = self.q(x).view(B, T, h, C // h).transpose(1, 2)
        k, v = self.kv(memory).split(self.n_embd, dim=2)
        k, v = (t.view(B, S, h, C // h).transpose(1, 2) for t in (k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class MLP(nn.Module):
    def __init__(self, config: CaptionConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: CaptionConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.cross = CrossAttention(config)
        self.ln_3 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.cross(self.ln_2(x), memory)
        return x + self.mlp(self.ln_3(x))


class GridEncoder(nn.Module):
    """The trunk's grid tokens in the decoder's width, each with its position on the grid and (colour_dim > 0)
    its cell's pixel colour statistics."""

    def __init__(self, config: CaptionConfig):
        super().__init__()
        self.grid_dim = config.grid_dim
        self.ln = nn.LayerNorm(config.grid_dim, bias=config.bias)
        self.proj = nn.Linear(config.grid_dim, config.n_embd, bias=config.bias)
        self.pos = nn.Parameter(torch.zeros(config.grid_tokens, config.n_embd))
        self.colour = (nn.Sequential(nn.Linear(config.colour_dim, 64), nn.GELU(), nn.Linear(64, config.n_embd))
                       if config.colour_dim else None)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.ln(grid[..., :self.grid_dim])) + self.pos
        if self.colour is not None:
            x = x + self.colour(grid[..., self.grid_dim:])
        return self.drop(x)


class Captioner(nn.Module):
    """Grid encoder + caption decoder."""

    def __init__(self, config: CaptionConfig):
        super().__init__()
        self.config = config
        self.encoder = GridEncoder(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of the residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(3 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, grids: torch.Tensor) -> torch.Tensor:
        """Grid tokens (B, grid_tokens, grid_dim + colour_dim) -> the memory the decoder attends to
        (B, grid_tokens, n_embd)."""
        return self.encoder(grids)

    def forward(self, memory: torch.Tensor, idx: torch.Tensor, targets: torch.Tensor | None = None,
                label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of idx (B, T); with targets (B, T, PAD = ignored) also the mean loss."""
        T = idx.size(1)
        assert T <= self.config.block_size, f"{T} ids, block size {self.config.block_size}"
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x, memory)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                                   ignore_index=PAD, label_smoothing=label_smoothing)
        return logits, loss

    def _next_logprobs(self, memory: torch.Tensor, idx: torch.Tensor, banned: torch.Tensor, last: bool = False
                       ) -> torch.Tensor:
        """Log-probabilities of the next id; never a banned id, never EOS first, only EOS at the `last` step."""
        logits, _ = self(memory, idx)
        logits = logits[:, -1, :].float()
        logits[:, banned] = float("-inf")
        if idx.size(1) == 1:
            logits[:, EOS] = float("-inf")  # at least one word
        if last:
            logits[:, torch.arange(logits.size(1), device=logits.device) != EOS] = float("-inf")
        return F.log_softmax(logits, dim=-1)

    def _banned(self, extra: torch.Tensor | None, device) -> torch.Tensor:
        base = torch.tensor([PAD, BOS, UNK], device=device)
        return base if extra is None else torch.cat([base, extra.to(device)])

    @torch.no_grad()
    def greedy(self, memory: torch.Tensor, max_len: int | None = None, banned: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The most likely next word at every step; (ids (B, <= max_len) with BOS first, mean log-prob per word)."""
        return self.beam_search(memory, beam_size=1, max_len=max_len, banned=banned, length_penalty=1.0)

    @torch.no_grad()
    def beam_search(self, memory: torch.Tensor, beam_size: int = 3, max_len: int | None = None,
                    banned: torch.Tensor | None = None, length_penalty: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Beam search; returns the best finished caption per image (ids (B, T), BOS first, EOS/PAD after)
        and its score: the summed log-probability over (words + 1) ** length_penalty (1.0 = per word)."""
        max_len = min(max_len or self.config.block_size, self.config.block_size)
        B, K, device = memory.size(0), beam_size, memory.device
        banned = self._banned(banned, device)
        mem = memory.repeat_interleave(K, dim=0)
        seqs = torch.full((B * K, 1), BOS, dtype=torch.long, device=device)
        scores = torch.zeros(B, K, device=device)
        scores[:, 1:] = float("-inf")  # all beams start as the same empty caption: expand only the first
        done = torch.zeros(B * K, dtype=torch.bool, device=device)
        for step in range(max_len - 1):
            logp = self._next_logprobs(mem, seqs, banned, last=step == max_len - 2)  # (B*K, V)
            # A finished caption only extends by PAD, at no cost.
            logp[done] = float("-inf")
            logp[done, PAD] = 0.0
            V = logp.size(1)
            total = (scores.view(B * K, 1) + logp).view(B, K * V)
            top, where = total.topk(K, dim=1)
            beam, word = where // V, where % V
            rows = (torch.arange(B, device=device)[:, None] * K + beam).view(-1)
            seqs = torch.cat([seqs[rows], word.view(-1, 1)], dim=1)
            done = done[rows] | (word.view(-1) == EOS)
            scores = top
            if bool(done.all()):
                break
        # Close the captions still open at max_len, then rank by length-normalised score.
        lengths = ((seqs != PAD) & (seqs != BOS) & (seqs != EOS)).sum(1).float()
        normed = scores.view(-1) / (lengths + 1).pow(length_penalty)
        best = normed.view(B, K).argmax(1)
        pick = torch.arange(B, device=device) * K + best
        return seqs[pick], normed[pick]

    @torch.no_grad()
    def sample(self, memory: torch.Tensor, top_p: float = 0.9, temperature: float = 1.0, max_len: int | None = None,
               banned: torch.Tensor | None = None, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nucleus sampling: each word drawn from the smallest set of words whose probability reaches top_p
        (after dividing the logits by temperature); (ids, mean log-prob per word)."""
        max_len = min(max_len or self.config.block_size, self.config.block_size)
        B, device = memory.size(0), memory.device
        banned = self._banned(banned, device)
        seqs = torch.full((B, 1), BOS, dtype=torch.long, device=device)
        total = torch.zeros(B, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        for step in range(max_len - 1):
            logp = self._next_logprobs(memory, seqs, banned, last=step == max_len - 2)
            probs = F.softmax(logp / max(temperature, 1e-6), dim=-1)
            sorted_p, order = probs.sort(dim=-1, descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # words past the nucleus
            sorted_p = sorted_p.masked_fill(outside, 0.0)
            pick = torch.multinomial(sorted_p.cpu(), 1, generator=generator).to(device)
            word = order.gather(1, pick).squeeze(1)
            word = torch.where(done, torch.full_like(word, PAD), word)
            total = total + torch.where(done, torch.zeros_like(total), logp.gather(1, word.clamp(min=0)[:, None])[:, 0])
            seqs = torch.cat([seqs, word[:, None]], dim=1)
            done = done | (word == EOS)
            if bool(done.all()):
                break
        lengths = ((seqs != PAD) & (seqs != BOS) & (seqs != EOS)).sum(1).float()
        return seqs, total / (lengths + 1)


# --- the saved folder (caption/folder.py describes it) ------------------------------------------------------------
def save_captioner(folder, model: Captioner, trunk: nn.Module, spec: dict, vocab, card: dict) -> dict:
    """Write config, weights and card into `folder`; returns the card (with the weights' sha256)."""
    from mmsearch.training.caption.folder import CARD_NAME, CONFIG_NAME, FORMAT, WEIGHTS_NAME
    from mmsearch.training.model import save_head_folder

    tensors = {f"trunk.{k}": v for k, v in trunk.state_dict().items()}
    tensors.update({f"decoder.{k}": v for k, v in model.state_dict().items() if k != "lm_head.weight"})
    config = {"format": FORMAT, "version": 1, "decoder": asdict(model.config), "trunk": spec,
              "vocab": list(vocab.words)}
    return save_head_folder(folder, tensors, WEIGHTS_NAME, CONFIG_NAME, config, CARD_NAME, card)


def load_captioner(folder, device: str = "cpu"):
    """(trunk, captioner, vocab, config) of a saved folder, in eval mode on `device`."""
    from mmsearch.training.caption.folder import WEIGHTS_NAME, read_config
    from mmsearch.training.caption.vocab import Vocab
    from mmsearch.training.model import load_head_folder

    folder = Path(folder)
    config = read_config(folder)
    trunk, state = load_head_folder(folder, config, WEIGHTS_NAME)
    model = Captioner(CaptionConfig(**config["decoder"]))
    decoder = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    missing, unexpected = model.load_state_dict(decoder, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"{folder / WEIGHTS_NAME} does not fit its config: missing {missing}, unexpected {unexpected}")
    return trunk.to(device).eval(), model.to(device).eval(), Vocab(tuple(config["vocab"])), config
