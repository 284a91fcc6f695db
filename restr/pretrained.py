"""Pretrained weights from local files: an ImageNet-21k ViT for the vision encoder, GloVe for words.

Nothing here downloads anything; the files are read by their key names with torch, numpy and
safetensors (timm is not a dependency).

ViT checkpoints, two layouts (`load_vit_weights`):

* timm state dicts (`.pth` / `.bin` / `.pt` via `torch.load(weights_only=True)`, `.safetensors`):
  `patch_embed.proj.weight` (D, 3, P, P) conv kernel, `pos_embed` (1, 1 + N, D) class token first,
  `cls_token`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`, `norm.*`. These are
  our names, under `encoder.`; the conv kernel flattened in (C, P_h, P_w) order is our linear patch
  projection.
* Google AugReg / vit_jax `.npz` (what the authors used, `vit_base_patch16_384`): Flax kernels are
  (in, out) and attention kernels keep heads apart:
      embedding/kernel                 (P, P, C, D) HWIO -> (D, C, P, P) -> (D, C*P*P)
      MHDPA/{query,key,value}/kernel   (D, H, D_h)  -> (D, H*D_h)^T, stacked q, k, v -> qkv (3D, D)
      MHDPA/{query,key,value}/bias     (H, D_h)     -> (H*D_h,), stacked -> (3D,)
      MHDPA/out/kernel                 (H, D_h, D)  -> (H*D_h, D)^T = (D, D)
      MlpBlock/Dense_{0,1}/kernel      (in, out)    -> transposed
      LayerNorm scale / bias           -> weight / bias
  big_vision's own numbering (`MultiHeadDotProductAttention_0`, `MlpBlock_0`, `LayerNorm_1`) is read
  too, as are the `opt/target/` and `params/` prefixes of training checkpoints.

In both layouts the class token is dropped (ReSTR has none; the authors' variant, whose ViT keeps it,
loads it and its position), the classifier head is ignored, and the position embedding is resized bicubically from the checkpoint's grid (24 x 24 for the 384 AugReg model)
to the model's grid. Anything else that does not fit raises `PretrainedError`, one line naming it.

GloVe (`load_glove`, `init_word_embeddings`): plain-text `word v_1 ... v_D` lines, read streaming,
keeping only the words the vocabulary needs.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from restr.modeling.vision_encoder import VisionEncoder, resize_pos_embed
from restr.runtime.tokenizer import Vocabulary

log = logging.getLogger(__name__)


class PretrainedError(ValueError):
    """A pretrained-weights file that does not fit the model: one line, meant for users."""


# --------------------------------------------------------------------------------------------------
# ViT
# --------------------------------------------------------------------------------------------------

# Checkpoint entries that are deliberately not loaded: class / register tokens and classifier heads.
_TIMM_IGNORED_PREFIXES = ("cls_token", "reg_token", "dist_token", "head.", "head_dist.", "fc_norm.", "pre_logits.", "attn_pool.")
_NPZ_IGNORED_PREFIXES = ("cls", "head/", "pre_logits/", "MAPHead_0/")


@dataclass
class ViTLoadReport:
    """What `load_vit_weights` did."""

    path: str
    layout: str  # "timm" or "augreg-npz"
    loaded: list[str]  # vision-encoder parameter names written (all of them)
    ignored: list[str]  # checkpoint keys deliberately left out (class token, classifier head, ...)
    dropped_tokens: int  # prefix tokens (class token) removed from the position embedding
    grid_from: tuple[int, int]  # checkpoint position grid
    grid_to: tuple[int, int]  # model position grid

    def summary(self) -> str:
        resize = f"resized {self.grid_from[0]}x{self.grid_from[1]} -> {self.grid_to[0]}x{self.grid_to[1]}"
        if self.grid_from == self.grid_to:
            resize = f"{self.grid_to[0]}x{self.grid_to[1]}, not resized"
        return (
            f"{self.path}: loaded {len(self.loaded)} vision tensors ({self.layout} layout); position "
            f"embedding {resize}; {self.dropped_tokens} class token(s) dropped; {len(self.ignored)} "
            f"checkpoint entries ignored"
        )

    __str__ = summary


class _Source:
    """Checkpoint tensors by name; remembers what was read so leftovers can be reported."""

    def __init__(self, tensors: dict[str, torch.Tensor], prefix: str):
        self.tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        self.outside = sorted(k for k in tensors if not k.startswith(prefix))
        self.prefix = prefix
        self.used: set[str] = set()
        self.missing: list[str] = []

    def take(self, *keys: str) -> list[torch.Tensor] | None:
        """The named tensors, or None (and the absent names recorded) if any is missing."""
        absent = [k for k in keys if k not in self.tensors]
        self.missing += [self.prefix + k for k in absent]
        self.used.update(k for k in keys if k in self.tensors)
        return None if absent else [self.tensors[k] for k in keys]

    def leftovers(self, ignored_prefixes: tuple[str, ...]) -> tuple[list[str], list[str]]:
        """(unexpected, ignored) checkpoint keys: those not read, split by the ignore list."""
        rest = sorted(k for k in self.tensors if k not in self.used)
        ignored = [k for k in rest if k.startswith(ignored_prefixes)]
        unexpected = [k for k in rest if not k.startswith(ignored_prefixes)]
        return [self.prefix + k for k in unexpected], [self.prefix + k for k in ignored] + self.outside


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every array in a .npz / .safetensors / torch file as float32 tensors, by name."""
    if not path.is_file():
        raise PretrainedError(f"{path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                raw = {k: torch.from_numpy(np.asarray(npz[k])) for k in npz.files}
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PretrainedError(f"{path}: not a readable weights file ({first[:200]})") from None
    # Training checkpoints wrap the state dict.
    while isinstance(raw, dict) and len(raw) and not any(isinstance(v, torch.Tensor) for v in raw.values()):
        inner = next((raw[k] for k in ("state_dict", "model", "module", "params") if isinstance(raw.get(k), dict)), None)
        if inner is None:
            break
        raw = inner
    if not isinstance(raw, dict):
        raise PretrainedError(f"{path}: holds a {type(raw).__name__}, not a state dict")
    return {k: v.float() for k, v in raw.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


def _find_prefix(tensors: dict[str, torch.Tensor], anchor: str) -> str | None:
    """The prefix under which `anchor` is stored ('' for a bare state dict), or None if absent."""
    hits = sorted((k[: -len(anchor)] for k in tensors if k.endswith(anchor)), key=len)
    return hits[0] if hits else None


def _split_prefix_tokens(pos: torch.Tensor, n_prefix: int, path: Path) -> tuple[torch.Tensor, int, tuple[int, int]]:
    """(1, T, D) checkpoint position embedding -> (1, N, D) grid part, tokens dropped, (h, w) grid."""
    total = pos.shape[1]
    for drop in dict.fromkeys((n_prefix, 0)):  # some timm models keep no position for the class token
        side = math.isqrt(total - drop)
        if side * side == total - drop:
            return pos[:, drop:], drop, (side, side)
    raise PretrainedError(f"{path}: position embedding of {total} tokens is not a square grid (+ {n_prefix} class token)")


def _convert_timm(src: _Source, depth: int) -> tuple[dict[str, torch.Tensor], int]:
    """timm names -> ours. Returns (state, class tokens stored in the checkpoint)."""
    out = {}
    if (w := src.take("patch_embed.proj.weight")) is not None:
        out["patch_embed.proj.weight"] = w[0].flatten(1)  # (D, C, P, P) -> (D, C*P*P)
    if (b := src.take("patch_embed.proj.bias")) is not None:
        out["patch_embed.proj.bias"] = b[0]
    if (p := src.take("pos_embed")) is not None:
        out["pos_embed"] = p[0]
    names = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    for i in range(depth):
        for name in names:
            for kind in ("weight", "bias"):
                if (t := src.take(f"blocks.{i}.{name}.{kind}")) is not None:
                    out[f"encoder.blocks.{i}.{name}.{kind}"] = t[0]
    for kind in ("weight", "bias"):
        if (t := src.take(f"norm.{kind}")) is not None:
            out[f"encoder.norm.{kind}"] = t[0]
    n_prefix = sum(src.tensors[k].shape[1] for k in ("cls_token", "reg_token", "dist_token") if k in src.tensors)
    return out, n_prefix


def _convert_npz(src: _Source, depth: int) -> tuple[dict[str, torch.Tensor], int, int | None]:
    """AugReg / vit_jax / big_vision names -> ours. Returns (state, class tokens, checkpoint heads)."""
    out = {}
    if (w := src.take("embedding/kernel")) is not None:
        out["patch_embed.proj.weight"] = w[0].permute(3, 2, 0, 1).flatten(1)  # (P,P,C,D) -> (D, C*P*P)
    if (b := src.take("embedding/bias")) is not None:
        out["patch_embed.proj.bias"] = b[0]
    pos_key = "Transformer/posembed_input/pos_embedding"
    if pos_key not in src.tensors and "pos_embedding" in src.tensors:  # big_vision
        pos_key = "pos_embedding"
    if (p := src.take(pos_key)) is not None:
        out["pos_embed"] = p[0]
    # vit_jax numbers the sub-modules of a block 0..3 in order; big_vision restarts per type.
    big_vision = "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in src.tensors
    ln1, ln2, mha, mlp = (
        ("LayerNorm_0", "LayerNorm_1", "MultiHeadDotProductAttention_0", "MlpBlock_0")
        if big_vision
        else ("LayerNorm_0", "LayerNorm_2", "MultiHeadDotProductAttention_1", "MlpBlock_3")
    )
    heads = None
    for i in range(depth):
        blk, ours = f"Transformer/encoderblock_{i}/", f"encoder.blocks.{i}."
        for jax_name, name in ((ln1, "norm1"), (ln2, "norm2")):
            if (t := src.take(f"{blk}{jax_name}/scale", f"{blk}{jax_name}/bias")) is not None:
                out[ours + f"{name}.weight"], out[ours + f"{name}.bias"] = t
        qkv = [f"{blk}{mha}/{n}/{kind}" for n in ("query", "key", "value") for kind in ("kernel", "bias")]
        if (t := src.take(*qkv)) is not None:
            kernels, biases = t[0::2], t[1::2]  # (D, H, D_h) and (H, D_h) each
            heads = kernels[0].shape[1] if kernels[0].ndim == 3 else heads
            out[ours + "attn.qkv.weight"] = torch.cat([k.flatten(1).T for k in kernels])  # (3D, D)
            out[ours + "attn.qkv.bias"] = torch.cat([b.reshape(-1) for b in biases])  # (3D,)
        if (t := src.take(f"{blk}{mha}/out/kernel", f"{blk}{mha}/out/bias")) is not None:
            out[ours + "attn.proj.weight"] = t[0].flatten(0, 1).T  # (H, D_h, D) -> (D, H*D_h)
            out[ours + "attn.proj.bias"] = t[1]
        for r in range(2):
            if (t := src.take(f"{blk}{mlp}/Dense_{r}/kernel", f"{blk}{mlp}/Dense_{r}/bias")) is not None:
                out[ours + f"mlp.fc{r + 1}.weight"], out[ours + f"mlp.fc{r + 1}.bias"] = t[0].T, t[1]
    if (t := src.take("Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias")) is not None:
        out["encoder.norm.weight"], out["encoder.norm.bias"] = t
    n_prefix = src.tensors["cls"].shape[1] if "cls" in src.tensors else 0
    return out, n_prefix, heads


def _list(label: str, keys: list[str], limit: int = 6) -> str:
    more = f" ... (+{len(keys) - limit})" if len(keys) > limit else ""
    return f"{label} ({len(keys)}): {', '.join(keys[:limit])}{more}"


def load_vit_weights(model: nn.Module, path: str | Path) -> ViTLoadReport:
    """Load a pretrained ViT into `model.vision` (a `ReSTR`) or into a `VisionEncoder` itself.

    `path`: a timm state dict (.pth / .bin / .pt / .safetensors, optionally wrapped in `state_dict` or
    `model`) or an AugReg / vit_jax / big_vision `.npz`. The checkpoint must have the model's width,
    depth, MLP width, patch size (and, for .npz, head count); its position grid (1 + h*w tokens, class
    token first) is resized bicubically to the model's grid and the class token dropped (kept, with its
    position, by a model with `vision_class_token`, as timm's loader did for the authors).

    Raises `PretrainedError` (one line: missing, unexpected and wrong-shape keys) on any mismatch,
    without touching the model. Returns a `ViTLoadReport`.
    """
    path = Path(path)
    vision = model if isinstance(model, VisionEncoder) else getattr(model, "vision", None)
    if not isinstance(vision, VisionEncoder):
        raise TypeError(f"expected a ReSTR or a VisionEncoder, got {type(model).__name__}")
    own = vision.state_dict()
    depth = len(vision.encoder.blocks)
    tensors = _read_tensors(path)

    if (prefix := _find_prefix(tensors, "embedding/kernel")) is not None:
        layout, ignore = "augreg-npz", _NPZ_IGNORED_PREFIXES
        src = _Source(tensors, prefix)
        state, n_prefix, heads = _convert_npz(src, depth)
    elif (prefix := _find_prefix(tensors, "patch_embed.proj.weight")) is not None:
        layout, ignore, heads = "timm", _TIMM_IGNORED_PREFIXES, None
        src = _Source(tensors, prefix)
        state, n_prefix = _convert_timm(src, depth)
    else:
        raise PretrainedError(
            f"{path}: not a ViT checkpoint in timm or AugReg layout (no 'patch_embed.proj.weight' or 'embedding/kernel' key)"
        )

    grid_from = grid_to = vision.grid
    dropped = 0
    if "pos_embed" in state:
        full = state["pos_embed"]
        grid_part, dropped, grid_from = _split_prefix_tokens(full, n_prefix, path)
        if grid_part.shape[-1] == own["pos_embed"].shape[-1]:  # else reported as a wrong shape below
            grid_part = resize_pos_embed(grid_part, grid_from, grid_to)
        state["pos_embed"] = grid_part
        if vision.class_token is not None and dropped == 1:  # the authors' ViT keeps the class token, with its position
            if (cls := src.take("cls" if layout == "augreg-npz" else "cls_token")) is not None:
                state["class_token"], state["class_pos_embed"], dropped = cls[0], full[:, :1], 0

    unexpected, ignored = src.leftovers(ignore)
    missing = src.missing or sorted(k for k in own if k not in state)  # checkpoint names when known
    wrong = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    hints = []
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.shape[1] != own["patch_embed.proj.weight"].shape[1]:
        p = math.isqrt(w.shape[1] // 3)
        hints.append(f"checkpoint patches are {p}x{p}, the model's {vision.patch_size}x{vision.patch_size}")
    b = state.get("patch_embed.proj.bias")
    if b is not None and b.shape[0] != vision.pos_embed.shape[-1]:
        hints.append(f"checkpoint width is {b.shape[0]}, the model's {vision.pos_embed.shape[-1]}")
    ckpt_depth = len({m.group(1) for k in src.tensors if (m := re.match(r"(?:blocks\.|Transformer/encoderblock_)(\d+)", k))})
    if ckpt_depth != depth:
        hints.append(f"checkpoint has {ckpt_depth} layers, the model {depth}")
    model_heads = vision.encoder.blocks[0].attn.heads
    if heads is not None and heads != model_heads:
        hints.append(f"checkpoint has {heads} heads, the model {model_heads}")
    if missing or unexpected or wrong or hints:
        found = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        parts = [_list(label, keys) for label, keys in found if keys]
        raise PretrainedError(f"{path}: {layout} ViT does not fit the vision encoder: " + "; ".join(hints + parts))

    vision.load_state_dict(state, strict=True)
    report = ViTLoadReport(str(path), layout, sorted(state), ignored, dropped, tuple(grid_from), tuple(grid_to))
    log.info("%s", report.summary())
    return report


# --------------------------------------------------------------------------------------------------
# GloVe
# --------------------------------------------------------------------------------------------------


@dataclass
class GloveEmbeddings:
    """`load_glove`'s result; unpacks as `vocab, vectors = load_glove(...)`."""

    vocab: Vocabulary
    vectors: np.ndarray  # (len(vocab), dim) float32, row i is vocab.itos[i]
    missing: list[str] = field(default_factory=list)  # needed words GloVe does not have (random rows)

    def __iter__(self):
        return iter((self.vocab, self.vectors))

    @property
    def found(self) -> int:
        """Words (besides <pad> and <unk>) whose row came from GloVe."""
        return len(self.vocab) - 2 - len(self.missing)


def _open_text(path: Path):
    """A text stream over a .txt, .txt.gz or single-file .zip; lines split on '\\n' only."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="\n")
    if path.suffix == ".zip":
        archive = zipfile.ZipFile(path)
        members = [n for n in archive.namelist() if n.endswith(".txt")]
        if len(members) != 1:
            raise PretrainedError(f"{path}: expected one .txt inside the zip, found {len(members)}")
        return io.TextIOWrapper(archive.open(members[0]), encoding="utf-8", errors="replace", newline="\n")
    return open(path, encoding="utf-8", errors="replace", newline="\n")


def load_glove(
    path: str | Path,
    words: list[str],
    dim: int = 300,
    *,
    seed: int = 0,
    missing_std: float = 0.1,
    progress: bool = False,
) -> GloveEmbeddings:
    """Word vectors for `words` from a GloVe text file (`glove.*.txt`, also `.txt.gz` or `.zip`), or
    from the authors' GloVe matrix (`data/<name>_emb.npy`, read with the `vocabulary_<name>.txt`
    beside it: `restr.authors.read_glove_matrix`).

    The text file is streamed and only needed words are parsed; reading stops once all are found (GloVe
    files are sorted by frequency). Words containing spaces (the 840B file has some) are read as all
    fields but the last `dim`. Matching is exact: the tokenizer lower-cases, so cased files (840B) are
    looked up with lower-case words. The first occurrence of a word wins.

    Returns `GloveEmbeddings(vocab, vectors, missing)`: the vocabulary is `<pad>`, `<unk>`, then
    `words` in the given order (duplicates dropped); `vectors` is (len(vocab), dim) float32 with
        row 0 `<pad>`: zeros,
        row 1 `<unk>`: the mean of the vectors loaded for `words` (zeros if none was found; the
                       authors' matrix: its own `<unk>` row),
        a word GloVe lacks: N(0, missing_std^2) drawn from `seed`, and listed in `missing`.
    Raises `PretrainedError` if the file's vectors are not `dim`-dimensional or a line is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: no such GloVe file")
    vocab = Vocabulary(list(words))
    wanted = {w: i for i, w in enumerate(vocab.itos) if i >= 2}
    vectors = np.zeros((len(vocab), dim), dtype=np.float32)
    found = np.zeros(len(vocab), dtype=bool)
    if path.suffix == ".npy":
        vectors[vocab.unk_id] = _read_authors_matrix(path, wanted, vectors, found, dim)
    else:
        _read_glove_text(path, wanted, vectors, found, dim, progress)
        hit = found.copy()
        hit[:2] = False
        if hit.any():
            vectors[vocab.unk_id] = vectors[hit].mean(axis=0)
    missing = [w for w, i in wanted.items() if not found[i]]
    if missing:
        rng = np.random.default_rng(seed)
        rows = [wanted[w] for w in missing]
        vectors[rows] = rng.normal(0.0, missing_std, size=(len(rows), dim)).astype(np.float32)
        log.warning(
            "%s: %d of %d words not in GloVe (random vectors): %s%s",
            path,
            len(missing),
            len(wanted),
            ", ".join(missing[:10]),
            " ..." if len(missing) > 10 else "",
        )
    return GloveEmbeddings(vocab, vectors, missing)


def _read_glove_text(
    path: Path, wanted: dict[str, int], vectors: np.ndarray, found: np.ndarray, dim: int, progress: bool
) -> None:
    """Fill `vectors[wanted[word]]` (and `found`) from a GloVe text file, streaming."""
    spaced = any(" " in w for w in wanted)
    left = len(wanted)
    with _open_text(path) as f:
        for lineno, line in enumerate(tqdm(f, desc=f"GloVe {path.name}", unit=" words", disable=not progress), 1):
            line = line.rstrip("\r\n")
            if lineno == 1:
                head = line.split(" ")
                if len(head) == 2 and all(h.isdigit() for h in head):  # word2vec-style "count dim" header
                    if int(head[1]) != dim:
                        raise PretrainedError(f"{path}: vectors are {head[1]}-dimensional, expected dim={dim}")
                    continue
                if len(head) - 1 != dim:
                    raise PretrainedError(f"{path}: vectors are {len(head) - 1}-dimensional, expected dim={dim}")
            if not left:
                break
            # Cheap test first: most lines hold words we do not need.
            first = line[: line.find(" ")]
            if not spaced and first not in wanted:
                continue
            parts = line.rstrip(" ").split(" ")
            if len(parts) <= dim:
                raise PretrainedError(f"{path}:{lineno}: {len(parts) - 1} values, expected dim={dim} (truncated file?)")
            i = wanted.get(" ".join(parts[:-dim]))
            if i is None or found[i]:
                continue
            try:
                vectors[i] = np.asarray(parts[-dim:], dtype=np.float32)
            except ValueError:
                raise PretrainedError(f"{path}:{lineno}: not a number among the {dim} values") from None
            found[i] = True
            left -= 1


def _read_authors_matrix(path: Path, wanted: dict[str, int], vectors: np.ndarray, found: np.ndarray, dim: int) -> np.ndarray:
    """Fill `vectors[wanted[word]]` (and `found`) from the authors' `<name>_emb.npy`; returns their `<unk>` row."""
    from restr.authors import AuthorsError, read_glove_matrix

    try:
        theirs, matrix = read_glove_matrix(path)
    except AuthorsError as e:
        raise PretrainedError(str(e)) from None
    if matrix.shape[1] != dim:
        raise PretrainedError(f"{path}: vectors are {matrix.shape[1]}-dimensional, expected dim={dim}")
    for word, i in wanted.items():
        if (j := theirs.stoi.get(word)) is not None:
            vectors[i], found[i] = matrix[j], True
    return matrix[theirs.unk_id]


def init_word_embeddings(model: nn.Module, vectors) -> None:
    """Copy `vectors` (V, D) (numpy or torch) into `model.language.word_embed`; trainability unchanged.

    V must be the model's vocabulary size and D its language width (300 for GloVe-300 in restr-b16).
    """
    embed = model.language.word_embed
    vectors = torch.as_tensor(vectors)
    if tuple(vectors.shape) != tuple(embed.weight.shape):
        raise PretrainedError(
            f"word vectors {tuple(vectors.shape)} do not fit model.language.word_embed {tuple(embed.weight.shape)} "
            "(vocabulary size, language width): build the model with vocab_size=len(vocab) and a language width of dim"
        )
    with torch.no_grad():
        embed.weight.copy_(vectors.to(embed.weight.dtype))
