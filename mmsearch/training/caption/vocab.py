"""The captioner's word vocabulary: the words of the brand-free training captions (no torch).

A word-level vocabulary built from the targets, rather than MiniLM's 30,522 WordPiece tokens: the product
captions use about 2,400 words at least three times, so the output layer is an eighth of the size (decoding on
a CPU is dominated by it), a word is one decoding step, and a brand that only ever appears as a brand never
enters the vocabulary, so the decoder cannot spell it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = 0, 1, 2, 3


@dataclass(frozen=True)
class Vocab:
    """Words by id (the specials first)."""

    words: tuple[str, ...]

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 3, exclude: Iterable[str] = ()) -> Vocab:
        """The words that occur at least `min_count` times, most frequent first (ties alphabetical)."""
        counts = Counter(w for caption in captions for w in caption)
        banned = set(exclude) | set(SPECIALS)
        kept = sorted((w for w, n in counts.items() if n >= min_count and w not in banned),
                      key=lambda w: (-counts[w], w))
        return cls(SPECIALS + tuple(kept))

    def __len__(self) -> int:
        return len(self.words)

    @property
    def ids(self) -> dict[str, int]:
        cached = self.__dict__.get("_ids")
        if cached is None:
            cached = {w: i for i, w in enumerate(self.words)}
            object.__setattr__(self, "_ids", cached)
        return cached

    def encode(self, caption: Sequence[str], max_len: int) -> list[int]:
        """BOS, the ids of the caption's known words (unknown ones left out), EOS; at most max_len ids."""
        ids = [self.ids[w] for w in caption if w in self.ids][: max_len - 2]
        return [BOS, *ids, EOS]

    def decode(self, ids: Iterable[int]) -> str:
        """The caption of a sequence of ids (up to the first EOS; specials left out)."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.words[i])
        return " ".join(out)
