r"""The one tokenizer used in training and deployment (torch-free), in two modes.

restr's (the default): lower-case, split on non-word characters, drop empty tokens and a trailing
period, truncate to `max_words`, map unknown words to `<unk>`, pad with `<pad>`.

The authors' (SouthFlame/restr at 371f102, utils/text_processing.py `sentence2vocab_indices`): split
on `(\W+)` keeping the runs of non-word characters as tokens, as they are (a run with a space in it
keeps the space: `", "`), drop the tokens that are only whitespace, lower-case each, drop a last
token that is exactly "."; "man's shirt" is `man ' s shirt`, where restr has `man s shirt`. Then as
restr: truncate, `<unk>`, pad (at the end: their front padding is the model's `padding="front"`).
An expression with no token at all gives no words (their code raises IndexError on it).

A `Vocabulary` carries its mode (`tokenizer`), which the export records as the manifest's
`vocab.tokenizer`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PAD, UNK = "<pad>", "<unk>"
TOKENIZERS = ("restr", "authors")
_SPLIT = re.compile(r"[^\w]+")
_AUTHORS_SPLIT = re.compile(r"(\W+)")


# Words that name nothing by themselves: an expression whose every other word is unknown to the
# model gives it nothing to go on (Prediction.no_known_words).
FUNCTION_WORDS = frozenset(
    "a an the this that these those of to in on at by for with from and or but is are be it its one ones "
    "which who whose what there here thing things object objects some any his her their my your our".split()
)


def split_words(text: str, tokenizer: str = "restr") -> list[str]:
    """'The dog, left of the bench.' -> ['the', 'dog', 'left', 'of', 'the', 'bench'];
    with tokenizer="authors" -> ['the', 'dog', ', ', 'left', 'of', 'the', 'bench']."""
    if tokenizer == "authors":  # split first, then lower-case: 'İ' stays in its word
        words = [w.lower() for w in _AUTHORS_SPLIT.split(text.strip()) if w.strip()]
        return words[:-1] if words and words[-1] == "." else words
    if tokenizer != "restr":
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
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
    """Word <-> id. Id 0 is `<pad>`, id 1 is `<unk>`. `tokenizer`: how `encode` splits expressions
    (`split_words`), "restr" or "authors"."""

    def __init__(self, words: list[str], tokenizer: str = "restr"):
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        words = [w for w in words if w not in (PAD, UNK)]
        self.itos = [PAD, UNK, *dict.fromkeys(words)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.tokenizer = tokenizer

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other) -> bool:
        """The same words at the same ids (the id layout the embedding rows follow), whatever the tokenizer."""
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def split(self, text: str) -> list[str]:
        """The words `encode` reads in `text` (before truncation)."""
        return split_words(text, self.tokenizer)

    @classmethod
    def build(cls, texts, min_count: int = 1, tokenizer: str = "restr") -> Vocabulary:
        """Vocabulary of the words seen in `texts` at least `min_count` times, most frequent first."""
        counts: dict[str, int] = {}
        for t in texts:
            for w in split_words(t, tokenizer):
                counts[w] = counts.get(w, 0) + 1
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept, tokenizer)

    def save(self, path: str | Path) -> None:
        """One word a line, ids in line order."""
        Path(path).write_text("\n".join(self.itos) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, tokenizer: str = "restr") -> Vocabulary:
        """vocab.txt; `tokenizer`: the export manifest's `vocab.tokenizer`."""
        itos = Path(path).read_text(encoding="utf-8").splitlines()
        if itos[:2] != [PAD, UNK]:
            raise ValueError(f"{path}: not a restr vocabulary (must start with {PAD} and {UNK})")
        return cls(itos[2:], tokenizer)

    def encode(self, texts: list[str] | str, max_words: int = 20) -> Encoded:
        """Expressions -> ids (B, max_words) and padding mask (B, max_words)."""
        if isinstance(texts, str):
            texts = [texts]
        ids = np.zeros((len(texts), max_words), dtype=np.int64)
        unknown, truncated = [], []
        for i, text in enumerate(texts):
            words = self.split(text)
            truncated.append(len(words) > max_words)
            words = words[:max_words]
            row = [self.stoi.get(w, self.unk_id) for w in words]
            unknown.append([w for w in words if w not in self.stoi])
            ids[i, : len(row)] = row
        return Encoded(words=ids, pad_mask=ids == self.pad_id, unknown=unknown, truncated=truncated)
