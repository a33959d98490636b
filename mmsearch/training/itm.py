"""An image-text matching (ITM) head: BLIP's filter in miniature, a binary "does this text describe this image"
classifier over the embedder's image trunk grid and a sentence vector of the text.

    image ─► locked EfficientNet-Lite0 trunk (the embedder's and captioner's) ─► grid 4 x 4 x 1280 + cell colours
          ─► LayerNorm + Linear (+ colour MLP, + position) ─► 16 image tokens ───────────────┐ keys, values
    text ─► all-MiniLM-L6-v2 sentence vector (384) ─► Linear ─► text token ─► 2 x [cross-attention ─ MLP] ─► logit

Unlike the embedding's cosine (late fusion of two pooled vectors), the text token attends to every cell of the
image, so "red" can be checked against the cells that hold the product. Keys and values come from the image
alone, so a batch's hard negatives reuse its images' keys and values (cheap enough to train on 2 CPU cores). Trained with BLIP's hard in-batch
negatives: for each pair of a batch, one text and one image of another product are drawn from the batch with
probability rising with the similarity of the two titles (softmax over sentence-vector cosines / temperature;
products with the same title are never negatives), so negatives are mostly near misses.

The folder (`save_head`): itm_config.json (the ITMConfig, the trunk spec, the text encoder's model_key),
itm.pt (the head's state dict), model_card.json. The trunk comes from the package weights (`build_trunk`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmsearch.training import data as D

CONFIG_NAME = "itm_config.json"
WEIGHTS_NAME = "itm.pt"
FORMAT = "mmsearch-itm"
DEFAULT_TRUNK = "effl0-128"


@dataclass
class ITMConfig:
    tokens: int = 16
    grid_dim: int = 1280
    colour_dim: int = 6
    text_dim: int = 384
    width: int = 256
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1


class CrossBlock(nn.Module):
    """The text token attends to the image tokens (keys and values from the image only), then an MLP."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln_q, self.ln_kv, self.ln_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.kv, self.proj = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width),
                                 nn.Dropout(dropout))

    def keys_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, w = tokens.shape
        k, v = self.kv(self.ln_kv(tokens)).view(n, t, 2, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, _, w = x.shape
        q = self.q(self.ln_q(x)).view(n, 1, self.heads, w // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(n, 1, w))
        return x + self.mlp(self.ln_mlp(x))


class MatchHead(nn.Module):
    """Logit of "the text matches the image" from (N, tokens, grid_dim + colour_dim) grids and (N, text_dim).

    The image side (tokens, keys, values) depends on the image only, so `forward(grids, texts, image_index)`
    scores texts[i] against grids[image_index[i]] with one image pass per distinct image: a batch and its hard
    negatives cost about one image pass."""

    def __init__(self, cfg: ITMConfig):
        super().__init__()
        self.cfg = cfg
        self.grid_in = nn.Sequential(nn.LayerNorm(cfg.grid_dim), nn.Linear(cfg.grid_dim, cfg.width))
        self.colour_in = (nn.Sequential(nn.Linear(cfg.colour_dim, 64), nn.GELU(), nn.Linear(64, cfg.width))
                          if cfg.colour_dim else None)
        self.position = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.width))
        self.text_in = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, cfg.width))
        self.blocks = nn.ModuleList(CrossBlock(cfg.width, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, 1)

    def forward(self, grids: torch.Tensor, texts: torch.Tensor, image_index: torch.Tensor | None = None) -> torch.Tensor:
        g = self.grid_in(grids[..., :self.cfg.grid_dim])
        if self.colour_in is not None:
            g = g + self.colour_in(grids[..., self.cfg.grid_dim:self.cfg.grid_dim + self.cfg.colour_dim])
        g = g + self.position
        x = self.text_in(texts)[:, None]
        for block in self.blocks:
            k, v = block.keys_values(g)
            if image_index is not None:
                k, v = k[image_index], v[image_index]
            x = block(x, k, v)
        return self.out(self.norm(x[:, 0]))[:, 0]


# --- inputs ----------------------------------------------------------------------------------------------------
def product_grids(products: Sequence[D.Product], cache_dir: Path | None, *, colour_dim: int = 6,
                  trunk_arch: str = DEFAULT_TRUNK, progress: bool = True) -> tuple[np.ndarray, dict]:
    """The grid of each product's first image (fp16, cached per trunk and file like the captioner's), and the
    trunk spec."""
    from mmsearch.training.caption.folder import trunk_spec
    from mmsearch.training.caption.trainer import cached_grids
    from mmsearch.training.model import ARCHS, build_trunk
    from mmsearch.training.trainer import module_identity

    arch = ARCHS[trunk_arch]
    trunk = build_trunk(arch)
    spec = trunk_spec(arch, module_identity(trunk))
    grids = cached_grids(trunk, spec, [p.images[0] for p in products], cache_dir, "cpu", progress, colour_dim)
    return grids, spec


def text_vectors(text_embedder, texts: Sequence[str], batch: int = 256) -> np.ndarray:
    """Sentence vectors of texts (the `text_embedder` plugin), float32."""
    return np.concatenate([np.asarray(text_embedder.embed_texts(list(texts[s:s + batch])), np.float32)
                           for s in range(0, len(texts), batch)]) if texts else np.zeros((0, 384), np.float32)


# --- training --------------------------------------------------------------------------------------------------
def hard_negatives(texts: torch.Tensor, same: torch.Tensor, temperature: float, gen: torch.Generator) -> torch.Tensor:
    """For each row of a batch, another row drawn with probability softmax(cosine of the texts / temperature);
    rows in `same` (same title, and the row itself) are never drawn."""
    sims = texts @ texts.T / temperature
    sims = sims.masked_fill(same, float("-inf"))
    alone = torch.isinf(sims).all(dim=1)
    sims[alone] = 0.0  # a batch where every other row shares the title: any row (rare; one weak negative)
    return torch.multinomial(F.softmax(sims, dim=1), 1, generator=gen)[:, 0]


def train_head(grids: np.ndarray, texts: np.ndarray, titles: Sequence[str], *, cfg: ITMConfig | None = None,
               epochs: int = 4, batch_size: int = 128, lr: float = 5e-4, temperature: float = 0.05, seed: int = 0,
               log: Callable[[str], None] = print, progress: bool = True) -> tuple[MatchHead, list[dict]]:
    """Train a MatchHead on matched pairs (grids[i], texts[i]) and hard in-batch negatives (binary cross-entropy:
    each positive against one negative text for its image and one negative image for its text)."""
    from mmsearch.training.trainer import progress_bar

    cfg = cfg or ITMConfig(tokens=grids.shape[1], colour_dim=grids.shape[2] - 1280, text_dim=texts.shape[1])
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MatchHead(cfg)
    g_all = torch.from_numpy(np.asarray(grids))
    t_all = F.normalize(torch.from_numpy(np.asarray(texts, np.float32)), dim=-1)
    keys = {}
    title_id = torch.tensor([keys.setdefault(D.title_key(t), len(keys)) for t in titles])
    n = len(t_all)
    steps = epochs * max(1, n // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        t0, total, correct, seen = time.time(), 0.0, 0, 0
        perm = torch.randperm(n, generator=gen)
        batches = [perm[s:s + batch_size] for s in range(0, n - batch_size + 1, batch_size)] or [perm]
        for idx in progress_bar(batches, desc=f"itm epoch {epoch}", enabled=progress):
            g, t = g_all[idx].float(), t_all[idx]
            same = title_id[idx][:, None] == title_id[idx][None, :]
            neg_t = hard_negatives(t, same, temperature, gen)
            neg_i = hard_negatives(t, same, temperature, gen)
            b = len(idx)
            own = torch.arange(b)
            logits = model(g, torch.cat([t, t[neg_t], t]), torch.cat([own, own, neg_i]))
            target = torch.cat([torch.ones(b), torch.zeros(2 * b)])
            weight = torch.cat([torch.ones(b), torch.full((2 * b,), 0.5)])  # positives and negatives weigh the same
            loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum") / (2 * b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched.last_epoch < steps:
                sched.step()
            total += float(loss.detach()) * b
            correct += int(((logits > 0).float() == target).sum())
            seen += b
        history.append({"epoch": epoch, "loss": total / max(seen, 1), "train_accuracy": correct / max(3 * seen, 1),
                        "seconds": round(time.time() - t0, 1)})
        log(f"itm epoch {epoch}: loss {history[-1]['loss']:.4f}, accuracy {history[-1]['train_accuracy']:.3f} "
            f"({history[-1]['seconds']} s)")
    model.eval()
    return model, history


@torch.no_grad()
def head_scores(model: MatchHead, grids: np.ndarray, texts: np.ndarray, batch: int = 512) -> np.ndarray:
    """The head's logit for each pair (grids[i], texts[i]) (higher = better match)."""
    model.eval()
    t_all = F.normalize(torch.from_numpy(np.asarray(texts, np.float32)), dim=-1)
    out = [model(torch.from_numpy(np.asarray(grids[s:s + batch])).float(), t_all[s:s + batch])
           for s in range(0, len(t_all), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


# --- the folder ------------------------------------------------------------------------------------------------
def save_head(folder: Path, model: MatchHead, trunk: dict, text_model_key: str, card: dict) -> str:
    """Write the folder; returns the head's model_key ("itm:local:<sha256 prefix of weights and config>")."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "version": 1, "head": asdict(model.cfg), "trunk": trunk,
              "text_model_key": text_model_key}
    torch.save(model.state_dict(), folder / WEIGHTS_NAME)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    h = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes() + (folder / CONFIG_NAME).read_bytes()).hexdigest()
    key = f"itm:local:{h[:16]}"
    (folder / "model_card.json").write_text(json.dumps({"model_key": key, **card}, indent=2))
    return key


def load_head(folder: Path) -> tuple[MatchHead, dict]:
    """A saved head and its config; FileNotFoundError / ValueError name what is wrong."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder} is not an ITM head folder ({CONFIG_NAME} and {WEIGHTS_NAME}; "
                                "train one with `manage.py train_matcher`)")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} config")
    model = MatchHead(ITMConfig(**config["head"]))
    model.load_state_dict(torch.load(folder / WEIGHTS_NAME, map_location="cpu", weights_only=True))
    model.eval()
    return model, config
