"""MACs of each exported graph, from `restr.accounting.count` (the count `restr-bench --macs` checks
against the paper), and the achieved GFLOP/s they imply.

A graph's MACs are those of one image and one expression (all N_l word positions, as the graphs
compute them). FLOPs = 2 x MACs. Only matrix products are counted (docs/paper-to-code.md, "Decisions": MACs), so
normalisations, softmax, activations and resizing run "for free" in these figures: an achieved
GFLOP/s is a lower bound of the arithmetic the hardware really did.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=16)
def graph_macs(cfg) -> dict[str, int]:
    """{graph: MACs at batch 1} for end_to_end, vision, language, fusion_decoder, and per component.

    The projections to the fusion width D are split the way the graphs split them: the visual one
    belongs to the vision graph, the linguistic one to the language graph.
    """
    import torch

    from restr.accounting import count
    from restr.modeling import ReSTR

    with torch.device("meta"):  # shapes are all a count needs: no weights are allocated
        model = ReSTR(cfg, vocab_size=2)
    c = count(model, cfg.image_size)
    d = cfg.fusion.width
    vision_proj = cfg.num_patches * cfg.vision.width * d
    language_proj = cfg.max_words * cfg.language.width * d
    return {
        "end_to_end": c.total_macs,
        "vision": c.macs["vision"] + vision_proj,
        "language": c.macs["language"] + language_proj,
        "fusion_decoder": c.macs["fusion"] + c.macs["decoder"],
        **{f"component.{k}": v for k, v in c.macs.items()},
    }


def achieved_gflops(macs: int | None, ms: float | None, batch: int = 1) -> float | None:
    """2 x MACs x batch / time: GFLOP/s of matrix-product work done (None if either is unknown)."""
    if not macs or not ms:
        return None
    return 2.0 * macs * batch / (ms / 1000.0) / 1e9
