"""Parameters and MACs per component, counted by PyTorch's FLOP counter and by formula.

MACs count the multiply-accumulates of matrix products: linear layers (the patch embedding is one),
attention's Q K^T and A V, and eq. 9's inner product. Normalisations, activations, softmax and
resizing are not counted (docs/paper-to-code.md, "Decisions": MACs). Parameter counts leave out the word-embedding table,
whose size depends on the vocabulary; it is reported on its own.

`torch.utils.flop_counter` has no formula for the CPU attention kernel
(`_scaled_dot_product_flash_attention_for_cpu`), so one is registered here from the library's own
`sdpa_flop_count`; `analytic_macs` is the independent check of the whole count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils import flop_counter

from restr.config import ReSTRConfig
from restr.modeling import ReSTR

COMPONENTS = ("vision", "language", "projections", "fusion", "decoder")

# module-name prefix (as FlopCounterMode and named_parameters spell it) -> component
_PREFIXES = {
    "vision": "vision",
    "language.encoder": "language",
    "language.out_proj": "language",  # the authors variant's Linear + LayerNorm after the language layers
    "language.out_norm": "language",
    "fusion.vision_proj": "projections",
    "fusion.language_proj": "projections",
    "fusion.class_seed": "fusion",
    "fusion.visual_linguistic": "fusion",
    "fusion.linguistic_seed": "fusion",
    "fusion.joint": "fusion",
    "fusion.patch_proj": "decoder",  # the authors' P_patch and P_cls, beside eq. 9
    "fusion.classifier_proj": "decoder",
    "decoder": "decoder",
}
FUSION_LAYERS = ("fusion.visual_linguistic", "fusion.linguistic_seed", "fusion.joint")


@dataclass
class Counts:
    params: dict[str, int]  # component -> parameters (word embeddings apart)
    macs: dict[str, int]  # component -> MACs for one image and one expression
    word_embedding_params: int
    fusion_layer_params: int  # the fusion encoder's transformer layers alone (Table 3b's scope)
    fusion_layer_macs: int

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())


def _component(name: str) -> str | None:
    for prefix, comp in _PREFIXES.items():
        if name == prefix or name.startswith(prefix + "."):
            return comp
    return None


def _cpu_sdpa_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def count_params(model: ReSTR) -> tuple[dict[str, int], int, int]:
    """(params per component, word-embedding params, fusion transformer-layer params)."""
    params = dict.fromkeys(COMPONENTS, 0)
    fusion_layers = 0
    for name, p in model.named_parameters():
        if name.startswith("language.word_embed"):
            continue
        comp = _component(name)
        if comp is None:
            raise RuntimeError(f"parameter {name} belongs to no component")
        params[comp] += p.numel()
        if name.startswith(FUSION_LAYERS):
            fusion_layers += p.numel()
    return params, model.language.word_embed.weight.numel(), fusion_layers


@torch.no_grad()
def count(model: ReSTR, image_size: int | None = None, num_words: int | None = None) -> Counts:
    """Count params and MACs of one forward pass (batch 1, `num_words` real words, default N_l)."""
    cfg = model.cfg
    s = image_size or cfg.image_size
    n_l = cfg.max_words
    device = next(model.parameters()).device  # a model on the meta device is counted without computing
    words = torch.full((1, n_l), 1, dtype=torch.long, device=device)  # <unk>: exists in every vocabulary
    pad = torch.zeros(1, n_l, dtype=torch.bool, device=device)
    if num_words is not None:
        pad[:, num_words:] = True
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}
    counter = flop_counter.FlopCounterMode(display=False, depth=None, custom_mapping=mapping)
    was_training = model.training
    model.eval()
    with counter:
        model(torch.zeros(1, 3, s, s, device=device), words, pad)
    model.train(was_training)

    per_module = {name.removeprefix("ReSTR").lstrip("."): sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    macs = dict.fromkeys(COMPONENTS, 0)
    # Leaf-most attribution: a module's count includes its children, so use the shortest matching prefix.
    for prefix, comp in _PREFIXES.items():
        macs[comp] += per_module.get(prefix, 0) // 2
    total = per_module.get("Global", 0) // 2
    # Eq. 9 runs in ReSTR.decode outside any sub-module: it belongs to the prediction head.
    macs["decoder"] += total - sum(macs.values())
    params, word_params, fusion_params = count_params(model)
    fusion_macs = sum(per_module.get(p, 0) for p in FUSION_LAYERS) // 2
    return Counts(params, macs, word_params, fusion_params, fusion_macs)


def analytic_macs(cfg: ReSTRConfig, image_size: int | None = None) -> dict[str, int]:
    """MACs per component from the architecture's formula (batch 1, all N_l word positions)."""
    s = image_size or cfg.image_size
    p = cfg.patch_size
    n_v, n_l = (s // p) ** 2, cfg.max_words

    def layers(n: int, width: int, mlp: int, depth: int) -> int:
        linear = n * (width * 3 * width + width * width + 2 * width * mlp)
        attention = 2 * n * n * width  # Q K^T and A V over all heads
        return depth * (linear + attention)

    v, lang, f = cfg.vision, cfg.language, cfg.fusion
    d = f.width
    n_tok = n_v + int(cfg.vision_class_token)  # the authors' ViT carries a class token
    half = f.depth // 2
    if cfg.fusion_variant == "vme":
        fusion = layers(n_v + n_l + 1, d, f.mlp_width, f.depth)
    else:
        fusion = layers(n_v + n_l, d, f.mlp_width, half) + layers(n_l + 1, d, f.mlp_width, f.depth - half)
    decoder, width, side = 0, 2 * d, s // p
    while side < s:
        side *= 2
        at = side // 2 if cfg.decoder_linear_first else side  # the grid the block's linear runs on
        decoder += at * at * width * (width // 2)
        width //= 2
    decoder += s * s * width + n_v * d  # final linear to 1 channel; eq. 9
    if cfg.patch_projections:
        decoder += n_v * d * d + d * d  # z_v' P_patch, e_s' P_cls
    authors_output = cfg.language_output == "authors"  # Linear(D_l, D) in the language encoder, then D x D
    return {
        "vision": n_v * 3 * p * p * v.width + layers(n_tok, v.width, v.mlp_width, v.depth),
        "language": layers(n_l, lang.width, lang.mlp_width, lang.depth) + (n_l * lang.width * d if authors_output else 0),
        "projections": n_v * v.width * d + n_l * (d if authors_output else lang.width) * d,
        "fusion": fusion,
        "decoder": decoder,
    }
