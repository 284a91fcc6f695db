"""Language encoder (section 3.1): word embeddings + sinusoidal position + transformers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


def front_padded_positions(pad_mask: torch.Tensor) -> torch.Tensor:
    """(B, N) bool, True = padding -> (B, N) int64: each token's position had the padding been put
    in front, as the authors' tokenizer does: the k-th word at N - n_words + k, the j-th padding at j.
    Without key masks attention is blind to the tokens' order, so giving the positions is the same
    as moving the words (and needs no shape arithmetic in an exported graph)."""
    n = int(pad_mask.shape[1])
    pad = pad_mask.to(torch.int64)
    word = 1 - pad
    word_rank = torch.cumsum(word, 1) - 1
    pad_rank = torch.cumsum(pad, 1) - 1
    return torch.where(pad_mask, pad_rank, word_rank + (n - word.sum(1, keepdim=True)))


class LanguageEncoder(nn.Module):
    """z_l = Transformers(x^l + e_pos; theta_l). Padding words are masked out of attention.

    The authors' switches (`ReSTRConfig`): `post_norm` layers without a final LN; `output_width`, a
    Linear(D_l, output_width) + LN after the layers; `front_padding`, positions as if the padding
    came first and no key masks.
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        vocab_size: int,
        max_words: int,
        freeze_embeddings: bool = False,
        eps: float = 1e-6,
        post_norm: bool = False,
        output_width: int | None = None,
        front_padding: bool = False,
    ):
        super().__init__()
        self.word_embed = nn.Embedding(vocab_size, cfg.width)
        self.word_embed.weight.requires_grad_(not freeze_embeddings)
        self.register_buffer("pos_encoding", sinusoidal_position_encoding(max_words, cfg.width), persistent=False)
        self.encoder = Transformers(cfg, eps=eps, post_norm=post_norm, final_norm=not post_norm)
        self.front_padding = front_padding
        if output_width is not None:
            self.out_proj = nn.Linear(cfg.width, output_width)
            self.out_norm = nn.LayerNorm(output_width, eps=eps)
        else:
            self.out_proj = self.out_norm = None

    def forward(self, words: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """words: (B, N_l) int64 ids; pad_mask: (B, N_l) bool, True = padding. Returns z_l: (B, N_l, D_l)
        (D with `output_width`)."""
        n = int(words.shape[1])  # a Python int: a constant Slice in an exported graph, not shape arithmetic
        if self.front_padding:
            z = self.word_embed(words) + F.embedding(front_padded_positions(pad_mask), self.pos_encoding[:n])
            z = self.encoder(z)  # the authors attend to the padding
        else:
            z = self.encoder(self.word_embed(words) + self.pos_encoding[:n], key_mask(pad_mask))
        return z if self.out_proj is None else self.out_norm(self.out_proj(z))
