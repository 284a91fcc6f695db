"""Parameters and MACs of ReSTR against the paper's Tables 3b and 5 (README, "The paper's efficiency numbers")."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from restr.accounting import COMPONENTS, count
from restr.config import get_config
from restr.modeling import ReSTR

# (table, our row name, config, image size, paper params, paper MACs); Table 3b counts the fusion
# encoder's transformer layers only, Table 5 the whole model.
PAPER_ROWS = [
    ("3b", "VME", "restr-b16-vme", 480, 28.35e6, 31.36e9),
    ("3b", "IME", "restr-b16-ime", 480, 28.35e6, 15.96e9),
    ("3b", "CME", "restr-b16", 480, 28.35e6, 15.96e9),
    ("3b", "CME-shared", "restr-b16-shared", 480, 14.18e6, 15.96e9),
    ("5", "ReSTR-CME", "restr-b16", 320, 122.87e6, 52.29e9),
    ("5", "ReSTR-CME-shared", "restr-b16-shared", 320, 108.70e6, 52.29e9),
]
# Table 5's peers, as the paper reports them (params, MACs), for the comparison table.
PEERS = {"BRINet": (241.18e6, 367.63e9), "LSCM": (127.91e6, 130.45e9), "CMPC": (118.66e6, 126.66e9), "ACM": (232.78e6, 124.68e9)}
TOLERANCE = 0.01


@dataclass
class MacsRow:
    table: str
    name: str
    config: str
    image_size: int
    params: int
    macs: int
    paper_params: float
    paper_macs: float
    params_diff_pct: float
    macs_diff_pct: float
    scope: str
    components: dict  # component -> {"params", "macs"}; whole-model rows only
    word_embedding_params_per_word: int  # D_l: the lookup table adds this per vocabulary word, never in `params`


def paper_comparison(progress=None) -> list[MacsRow]:
    """Count every paper row; models are built with random weights (counts do not depend on them)."""
    rows, cache = [], {}
    for table, name, config, size, paper_p, paper_m in PAPER_ROWS:
        key = (config, size)
        if key not in cache:
            cfg = get_config(config).replace(image_size=size)
            with torch.device("meta"):  # shapes are all a count needs: no weights are allocated
                model = ReSTR(cfg, vocab_size=2)
            cache[key] = count(model, size)
        c = cache[key]
        fusion_only = table == "3b"
        params = c.fusion_layer_params if fusion_only else c.total_params
        macs = c.fusion_layer_macs if fusion_only else c.total_macs
        rows.append(
            MacsRow(
                table=table,
                name=name,
                config=config,
                image_size=size,
                params=params,
                macs=macs,
                paper_params=paper_p,
                paper_macs=paper_m,
                params_diff_pct=100 * (params / paper_p - 1),
                macs_diff_pct=100 * (macs / paper_m - 1),
                scope="fusion encoder transformer layers" if fusion_only else "whole model (word embeddings apart)",
                components={} if fusion_only else {k: {"params": c.params[k], "macs": c.macs[k]} for k in COMPONENTS},
                word_embedding_params_per_word=get_config(config).language.width,
            )
        )
        if progress:
            progress(rows[-1])
    return rows


def rows_as_json(rows: list[MacsRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def format_comparison(rows: list[MacsRow]) -> str:
    """The human table: ours beside the paper's, with the difference in %, and Table 5's peers."""
    from restr.tables import format_table

    body = [
        [
            r.name,
            r.table,
            r.image_size,
            f"{r.params / 1e6:.2f}M",
            f"{r.paper_params / 1e6:.2f}M",
            f"{r.params_diff_pct:+.2f}%",
            f"{r.macs / 1e9:.2f}G",
            f"{r.paper_macs / 1e9:.2f}G",
            f"{r.macs_diff_pct:+.2f}%",
        ]
        for r in rows
    ]
    for peer, (p, m) in PEERS.items():
        body.append([f"{peer} (paper)", "5", "", None, f"{p / 1e6:.2f}M", None, None, f"{m / 1e9:.2f}G", None])
    text = format_table(
        ["model", "table", "input", "params", "paper", "diff", "MACs", "paper", "diff"],
        body,
        title="ReSTR efficiency vs the paper (Table 3b: fusion encoder layers only; Table 5: whole model)",
    )
    whole = [r for r in rows if r.components]
    if whole:
        r = whole[0]
        comp = [[k, f"{v['params'] / 1e6:.2f}M", f"{v['macs'] / 1e9:.3f}G"] for k, v in r.components.items()]
        per_word = r.word_embedding_params_per_word
        comp.append(
            [f"word embeddings, not counted ({per_word} per word: 12k words = {12_000 * per_word / 1e6:.1f}M)", None, None]
        )
        text += "\n\n" + format_table(
            ["component", "params", "MACs"], comp, title=f"{r.name} at {r.image_size}x{r.image_size} by component"
        )
    bad = [r.name for r in rows if abs(r.params_diff_pct) > 100 * TOLERANCE or abs(r.macs_diff_pct) > 100 * TOLERANCE]
    text += "\n\n" + (
        f"outside the {TOLERANCE:.0%} tolerance: {', '.join(bad)}" if bad else f"every row is within {TOLERANCE:.0%} of the paper"
    )
    return text
