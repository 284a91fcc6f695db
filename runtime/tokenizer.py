"""The one tokenizer used in training and deployment (torch-free).

Lower-case, split on non-word characters, drop empty tokens and a trailing period, truncate to
`max_words`, map unknown words to `<unk>`, pad with `<pad>`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PAD, UNK = "<pad>", "<unk>"
_SPLIT = re.compile(r"[^\w]+")


# Words that name nothing by themselves: an expression whose every other word is unknown to the
# model gives it nothing to go on (Prediction.no_known_words).
FUNCTION_WORDS = frozenset(
    "a an the this that these those of to in on at by for with from and or but is are be it its one ones "
    "which who whose what there here thing things object objects some any his her their my your our".split()
)


def split_words(text: str) -> list[str]:
    """'The dog, left of the bench.' -> ['the', 'dog', 'left', 'of', 'the', 'bench']."""
    text = text.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    return [w for w in _SPLIT.split(text) if w]


@dataclass
class Encoded:
    """A batch of expressions as model inputs."""

    words: np.ndarray  # (B, N_l) int64 ids
    pad_mask: np.ndarray  # (B, N_l) bool, True = padding
    unknown: list[list[str]] = field(default_factory=list)  # per expression, words mapped to <unk>
    truncated: list[bool] = field(default_factory=list)  # per expression, longer than N_l words


class Vocabulary:
    """Word <-> id. Id 0 is `<pad>`, id 1 is `<unk>`."""

    def __init__(self, words: list[str]):
        words = [w for w in words if w not in (PAD, UNK)]
        self.itos = [PAD, UNK, *dict.fromkeys(words)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    @classmethod
    def build(cls, texts, min_count: int = 1) -> "Vocabulary":
        """Vocabulary of the words seen in `texts` at least `min_count` times, most frequent first."""
        counts: dict[str, int] = {}
        for t in texts:
            for w in split_words(t):
                counts[w] = counts.get(w, 0) + 1
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept)

    def save(self, path: str | Path) -> None:
        """One word a line, ids in line order."""
        Path(path).write_text("\n".join(self.itos) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        itos = Path(path).read_text(encoding="utf-8").splitlines()
        if itos[:2] != [PAD, UNK]:
            raise ValueError(f"{path}: not a restr vocabulary (must start with {PAD} and {UNK})")
        return cls(itos[2:])

    def encode(self, texts: list[str] | str, max_words: int = 20) -> Encoded:
        """Expressions -> ids (B, max_words) and padding mask (B, max_words)."""
        if isinstance(texts, str):
            texts = [texts]
        ids = np.zeros((len(texts), max_words), dtype=np.int64)
        unknown, truncated = [], []
        for i, text in enumerate(texts):
            words = split_words(text)
            truncated.append(len(words) > max_words)
            words = words[:max_words]
            row = [self.stoi.get(w, self.unk_id) for w in words]
            unknown.append([w for w in words if w not in self.stoi])
            ids[i, : len(row)] = row
        return Encoded(words=ids, pad_mask=ids == self.pad_id, unknown=unknown, truncated=truncated)
