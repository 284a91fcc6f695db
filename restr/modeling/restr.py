"""ReSTR: the whole data path, image + words -> mask, in one place.

    z_v   = VisionEncoder(image)                       eq. 6       (B, N_v, D_v)
    z_l   = LanguageEncoder(words, pad)                section 3.1 (B, N_l, D_l)
    v, l  = Linear(L2norm(z_v)), Linear(L2norm(z_l))   section 3.2 (B, N, D)
    z_v', e_s' = FusionEncoder(v, l, pad)              eq. 7-8
    y_p   = z_v' e_s'^T / sqrt(D)                      eq. 9  (logits, B x N_v)
    Y_m   = CoarseToFineDecoder([v, z_v' * sigma(y_p)])  eq. 10 (logits, B x 1 x H x W)

The three stages are also exposed on their own (`encode_image`, `encode_text`, `decode`): the export
writes them as separate graphs so a service encodes an image once and asks many expressions.

The `-authors` configs turn the switches where the authors' code computes another function
(docs/paper-to-code.md): a class token in the ViT, LN epsilon 1e-5, post-norm language layers with
Linear + LN after them, front-padded positions without key masks, no LN after eq. 7, P_patch and
P_cls before an unscaled eq. 9, the raw logit as eq. 10's gate, eq. 11's label on the pixel sum.
"""

from __future__ import annotations

import torch
from torch import nn

from restr.config import ReSTRConfig
from restr.modeling.decoder import CoarseToFineDecoder, patch_logits
from restr.modeling.fusion import FusionEncoder
from restr.modeling.language_encoder import LanguageEncoder
from restr.modeling.vision_encoder import VisionEncoder


class ReSTR(nn.Module):
    def __init__(self, cfg: ReSTRConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        eps, authors_output = cfg.layer_norm_eps, cfg.language_output == "authors"
        self.vision = VisionEncoder(
            cfg.vision, cfg.image_size, cfg.patch_size, cfg.vision_pos_embed, cfg.vision_class_token, eps, cfg.pos_embed_resize
        )
        self.language = LanguageEncoder(
            cfg.language,
            vocab_size,
            cfg.max_words,
            cfg.freeze_word_embeddings,
            eps,
            post_norm=cfg.language_norm == "post",
            output_width=cfg.fusion.width if authors_output else None,
            front_padding=cfg.padding == "front",
        )
        self.fusion = FusionEncoder(
            cfg.fusion,
            cfg.vision.width,
            cfg.fusion.width if authors_output else cfg.language.width,
            cfg.fusion_variant,
            eps,
            mask_padding=cfg.padding == "masked",
            zero_padding=cfg.padding == "front",
            vl_norm=cfg.fusion_vl_norm,
            patch_projections=cfg.patch_projections,
            drop_path_ramp=cfg.fusion_drop_path,
        )
        self.decoder = CoarseToFineDecoder(
            cfg.fusion.width,
            cfg.patch_size,
            cfg.decoder_activation_slope,
            cfg.decoder_linear_first,
            cfg.decoder_gate,
            cfg.decoder_bias,
        )
        for encoder in (self.vision, self.language, self.fusion):
            encoder.apply(_init_transformer)
        for proj in (self.fusion.vision_proj, self.fusion.language_proj):
            _init_projection(proj, cfg.fusion_projection_std)
        self.decoder.apply(lambda m: _init_decoder(m, cfg.decoder_activation_slope, cfg.decoder_init))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """image: (B, 3, H, W) normalised -> projected visual features v: (B, N_v, D)."""
        return self.fusion.project_visual(self.vision(image))

    def encode_text(self, words: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """words, pad_mask: (B, N_l) -> projected linguistic features l: (B, N_l, D)."""
        return self.fusion.project_linguistic(self.language(words, pad_mask))

    def decode(
        self, v: torch.Tensor, l: torch.Tensor, pad_mask: torch.Tensor, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion (eq. 7-8), patch prediction (eq. 9) and decoder (eq. 10).

        v: (B, N_v, D) or (1, N_v, D) shared by the B expressions; l: (B, N_l, D); pad_mask: (B, N_l). Returns pixel logits (B, 1, P*h, P*w) and
        patch logits (B, N_v).
        """
        z_v_fused, classifier = self.fusion(v, l, pad_mask)
        y_p = patch_logits(z_v_fused, classifier, self.cfg.patch_logit_scale)
        return self.decoder(v, z_v_fused, y_p, grid), y_p

    def forward(self, image: torch.Tensor, words: torch.Tensor, pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image: (B, 3, H, W) normalised, H and W divisible by P; words: (B, N_l) int64;
        pad_mask: (B, N_l) bool, True = padding.

        Returns pixel logits (B, 1, H, W) and patch logits (B, N_v); sigmoid gives probabilities.
        """
        p = self.cfg.patch_size
        grid = (int(image.shape[-2]) // p, int(image.shape[-1]) // p)
        return self.decode(self.encode_image(image), self.encode_text(words, pad_mask), pad_mask, grid)


def _init_transformer(m: nn.Module) -> None:
    # timm's ViT initialisation: truncated-normal linear weights, zero biases. LayerNorm before
    # every layer keeps activations at scale, so small weights are safe here.
    # Word embeddings keep PyTorch's N(0, 1): at std 0.02 the sinusoidal position code (amplitude 1)
    # would drown the words' identity, and a model trained from scratch learns grounding very slowly.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _init_projection(m: nn.Linear, std: float) -> None:
    # The fusion projections see L2-normalised tokens (norm 1): std-1 weights give v and l elements of
    # unit scale, like the LayerNorm'd streams the fusion layers expect. At std 0.02 the inputs start
    # ~50x smaller than what each fusion layer adds to them and the words and patches are drowned:
    # the tiny demo model's (then 64x64) val overall IoU was 0.46 at 0.02 and 0.51-0.61 at 1.0 (single
    # runs), so restr-tiny keeps 1.0. restr-b16 follows the authors' truncated normal at 0.02: its
    # +-2 cut-off is 100 standard deviations out, so a plain normal draws the same weights.
    nn.init.normal_(m.weight, std=std)
    nn.init.zeros_(m.bias)


def _init_decoder(m: nn.Module, slope: float, kind: str = "he") -> None:
    # The decoder is a plain stack of linear + LeakyReLU with no normalisation: std-0.02 weights
    # would shrink the signal ~5x per block and stall training, so He initialisation keeps its scale.
    # "xavier": the authors' Xavier-uniform 1x1 convolutions (the same fans as these linears).
    if isinstance(m, nn.Linear):
        if kind == "xavier":
            nn.init.xavier_uniform_(m.weight)
        else:
            nn.init.kaiming_normal_(m.weight, a=slope, nonlinearity="leaky_relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
