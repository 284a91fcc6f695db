"""Language encoder (section 3.1): word embeddings + sinusoidal position + transformers."""
from __future__ import annotations

import math

import torch
from torch import nn

from restr.config import EncoderConfig
from restr.modeling.attention import key_mask
from restr.modeling.transformer import Transformers


def sinusoidal_position_encoding(length: int, width: int) -> torch.Tensor:
    """(length, width) fixed encoding of Vaswani et al.; odd widths are handled by truncation."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    pe = torch.zeros(length, width + (width % 2))
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe[:, :width]


class LanguageEncoder(nn.Module):
    """z_l = Transformers(x^l + e_pos; theta_l). Padding words are masked out of attention."""

    def __init__(self, cfg: EncoderConfig, vocab_size: int, max_words: int, freeze_embeddings: bool = False):
        super().__init__()
        self.word_embed = nn.Embedding(vocab_size, cfg.width)
        self.word_embed.weight.requires_grad_(not freeze_embeddings)
        self.register_buffer("pos_encoding", sinusoidal_position_encoding(max_words, cfg.width), persistent=False)
        self.encoder = Transformers(cfg)

    def forward(self, words: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """words: (B, N_l) int64 ids; pad_mask: (B, N_l) bool, True = padding. Returns z_l: (B, N_l, D_l)."""
        n = int(words.shape[1])  # a Python int: a constant Slice in an exported graph, not shape arithmetic
        z = self.word_embed(words) + self.pos_encoding[:n]
        return self.encoder(z, key_mask(pad_mask))
