"""Checkpoints: weights, config and vocabulary in one file, written atomically.

Layout (a plain dict, loadable with `torch.load(weights_only=True)`):
    format: "restr-checkpoint", format_version: 1,
    config: ReSTRConfig as a dict, vocab: list of words (id order),
    model: state dict, meta: free-form JSON-like dict (data set, step, metrics),
    train_state: optional optimizer / scheduler / step for resuming.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from restr.config import ReSTRConfig
from restr.modeling import ReSTR
from restr.runtime.atomic import atomic_write
from restr.runtime.tokenizer import Vocabulary

FORMAT = "restr-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable restr checkpoint: one line, meant for users."""


@dataclass
class Checkpoint:
    model: ReSTR
    config: ReSTRConfig
    vocab: Vocabulary
    meta: dict
    train_state: dict | None


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename: never half a file."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def save_checkpoint(path, model: ReSTR, vocab: Vocabulary, meta: dict | None = None, train_state: dict | None = None) -> None:
    """Write model weights, config and vocabulary (and optionally the training state) atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "vocab": list(vocab.itos),
        "model": state,
        "meta": meta or {},
    }
    if train_state is not None:
        obj["train_state"] = train_state
    atomic_torch_save(obj, path)


def read_checkpoint_dict(path) -> dict:
    """The raw checkpoint dict, with one-line errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with path.open("rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..), older versions a pickle (0x80); anything else (an image,
    # a text file) would only give the unpickler's cryptic complaint.
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):
        raise CheckpointError(f"{path}: not a readable checkpoint: not a PyTorch file (restr-train writes model.pt and last.pt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign file can fail in many ways (RuntimeError, EOFError, KeyError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint: a truncated or foreign PyTorch file ({first[:120]})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a restr checkpoint (no '{FORMAT}' format marker)")
    if obj.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {obj.get('format_version')} is not supported (expected {FORMAT_VERSION})"
        )
    return obj


def load_checkpoint(path, image_size: int | None = None) -> Checkpoint:
    """Model (eval mode, CPU), config, vocabulary and metadata from a checkpoint file.

    `image_size` rebuilds the model for another input size (the position grid is resized).
    """
    obj = read_checkpoint_dict(path)
    try:
        cfg = ReSTRConfig.from_dict(obj["config"])
        vocab = Vocabulary(list(obj["vocab"])[2:], cfg.tokenizer)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: checkpoint config or vocabulary is invalid ({e})") from None
    model = ReSTR(cfg, len(vocab))
    load_weights(model, obj["model"], source=str(path))
    if image_size is not None and image_size != cfg.image_size:
        model = resize_model(model, image_size)
        cfg = model.cfg
    return Checkpoint(model.eval(), cfg, vocab, dict(obj.get("meta", {})), obj.get("train_state"))


CHECKPOINT_SOURCES = ("restr", "authors")  # what a --ckpt / --init file holds (--from)


def load_checkpoint_from(path, source: str = "restr", vocab=None, image_size: int | None = None) -> Checkpoint:
    """`load_checkpoint`, or with `source="authors"` a state dict saved by the authors' train_restr.py
    (SouthFlame/restr), read with their vocabulary `vocab` (their vocabulary_*.txt or data/ folder)
    into the `-authors` variant (`restr.authors.load_authors_checkpoint`). One-line CheckpointError."""
    if source not in CHECKPOINT_SOURCES:
        raise CheckpointError(f"unknown checkpoint source {source!r}; known: {', '.join(CHECKPOINT_SOURCES)}")
    if source == "authors":
        if vocab is None:
            raise CheckpointError(
                f"{path}: the authors' checkpoints hold no vocabulary: give theirs (--vocab data/vocabulary_*.txt)"
            )
        from restr.authors import load_authors_checkpoint

        return load_authors_checkpoint(path, vocab, image_size)
    if vocab is not None:
        raise CheckpointError("--vocab goes with --from authors (a restr checkpoint holds its vocabulary)")
    return load_checkpoint(path, image_size)


def load_weights(model: ReSTR, state: dict, source: str) -> None:
    """Strict load with a one-line error naming what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})")
        raise CheckpointError(f"{source}: weights do not fit the config {model.cfg.name!r}: " + "; ".join(parts))
    model.load_state_dict(state)


def resize_model(model: ReSTR, image_size: int) -> ReSTR:
    """A copy of `model` for square inputs of `image_size` (the position grid resized as the config
    says: bicubically, or bilinearly for the authors' variant; a class token's position is kept)."""
    from restr.modeling.vision_encoder import resize_pos_embed

    cfg = model.cfg.replace(image_size=image_size)  # validates divisibility
    new = ReSTR(cfg, model.vocab_size)
    state = dict(model.state_dict())
    g = cfg.grid
    state["vision.pos_embed"] = resize_pos_embed(state["vision.pos_embed"], model.vision.grid, (g, g), cfg.pos_embed_resize)
    new.load_state_dict(state)
    return new.eval()
