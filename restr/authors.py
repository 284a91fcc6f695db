"""The authors' code (SouthFlame/restr at 371f102): their checkpoints and data files, read into
restr's `-authors` variant (`restr-b16-authors`, `restr-b16-shared-authors`; docs/paper-to-code.md).

Their training script saves `torch.save(model.state_dict())` of `model.restr.ReSTR`, whose three
children are `encoder_v` (`model.vit.VisionTransformer`), `encoder_l` (`model.glove_transformer.TR_GloVe`)
and `fusion_module` (`model.fusion_module.MM_fusion`, which holds the decoder too). Their names, ours:

    encoder_v.patch_embed.proj.{weight,bias}   (D, 3, P, P) conv    vision.patch_embed.proj.*  (D, 3*P*P)
    encoder_v.cls_token                        (1, 1, D)            vision.class_token
    encoder_v.pos_embed                        (1, 1 + N_v, D)      vision.class_pos_embed (row 0), vision.pos_embed (the grid)
    encoder_v.blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*   vision.encoder.blocks.{i}.*
    encoder_v.norm.*                                                vision.encoder.norm.*
    encoder_v.head.*                           ImageNet classifier  not used by their forward pass: ignored
    encoder_l.embedding.weight                 (V, 300) their ids   language.word_embed.weight, rows in restr's ids
    encoder_l.blocks.{i}.*                     post-norm layers     language.encoder.blocks.{i}.*
    encoder_l.proj_lang.*, encoder_l.lang_norm.*                    language.out_proj.*, language.out_norm.*
    fusion_module.proj_v.*, fusion_module.proj_l.*                  fusion.vision_proj.*, fusion.language_proj.*
    fusion_module.seed_emb                     (1, 1, D)            fusion.class_seed
    fusion_module.proj_patch, proj_cls         (D, D), x @ P        fusion.patch_proj, fusion.classifier_proj
    fusion_module.blocks_vl.{i}.*, blocks_ls.{i}.*                  fusion.visual_linguistic.blocks.{i}.*, fusion.linguistic_seed.blocks.{i}.*
    fusion_module.norm.*                                            fusion.linguistic_seed.norm.*
    fusion_module.decoder.{k}.up.1.weight      (C/2, C, 1, 1)       decoder.blocks.{k}.linear.weight (C/2, C)
    fusion_module.decoder.{K}.weight           (1, C, 1, 1)         decoder.head.weight

`--is_shared` checkpoints hold one layer per fusion stack (`restr-b16-shared-authors`).

Their vocabulary (`data/vocabulary_{Gref,referit}.txt`, one word a line, line number = id:
`<pad>`, `<go>`, `<eos>`, `<unk>`, words) becomes restr's (`<pad>`, `<unk>`, then the rest in file
order), and the embedding rows follow the words. Their GloVe matrix (`data/{Gref,referit}_emb.npy`,
row i = word i of the vocabulary) is read the same way (`read_glove_matrix`, and `restr-train
--glove data/Gref_emb.npy` through `restr.pretrained.load_glove`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from restr.checkpoint import Checkpoint, CheckpointError, load_weights, resize_model
from restr.config import ReSTRConfig, get_config
from restr.runtime.tokenizer import PAD, UNK, Vocabulary

SOURCE = "SouthFlame/restr"  # recorded in the checkpoint's meta
_LAYER = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
IGNORED = ("encoder_v.head.weight", "encoder_v.head.bias")  # their ViT's ImageNet head: never run


class AuthorsError(CheckpointError):
    """Files of the authors' code that do not fit: one line, meant for users."""


def key_map(cfg: ReSTRConfig) -> dict[str, str]:
    """{restr state-dict name: the authors' name} for every tensor of a `cfg` model (an `-authors` config)."""
    if not (cfg.vision_class_token and cfg.language_output == "authors" and cfg.patch_projections and not cfg.decoder_bias):
        raise ValueError(f"{cfg.name} is not an authors variant: the authors' weights need its switches (restr-b16-authors)")
    if cfg.fusion_variant not in ("cme", "cme-shared"):
        raise ValueError(f"the authors' training script builds CME and CME-shared only, not {cfg.fusion_variant}")
    m = {
        "vision.patch_embed.proj.weight": "encoder_v.patch_embed.proj.weight",
        "vision.patch_embed.proj.bias": "encoder_v.patch_embed.proj.bias",
        "vision.class_token": "encoder_v.cls_token",
        "vision.class_pos_embed": "encoder_v.pos_embed",
        "vision.pos_embed": "encoder_v.pos_embed",
        "language.word_embed.weight": "encoder_l.embedding.weight",
        "fusion.class_seed": "fusion_module.seed_emb",
        "fusion.patch_proj": "fusion_module.proj_patch",
        "fusion.classifier_proj": "fusion_module.proj_cls",
    }
    shared = cfg.fusion_variant == "cme-shared"
    stacks = (
        ("vision.encoder", "encoder_v.blocks", cfg.vision.depth, "encoder_v.norm"),
        ("language.encoder", "encoder_l.blocks", cfg.language.depth, None),
        ("fusion.visual_linguistic", "fusion_module.blocks_vl", 1 if shared else cfg.fusion.depth // 2, None),
        (
            "fusion.linguistic_seed",
            "fusion_module.blocks_ls",
            1 if shared else cfg.fusion.depth - cfg.fusion.depth // 2,
            "fusion_module.norm",
        ),
    )
    pairs = [
        ("language.out_proj", "encoder_l.proj_lang"),
        ("language.out_norm", "encoder_l.lang_norm"),
        ("fusion.vision_proj", "fusion_module.proj_v"),
        ("fusion.language_proj", "fusion_module.proj_l"),
    ]
    for ours, theirs, depth, norm in stacks:
        pairs += [(f"{ours}.blocks.{i}.{name}", f"{theirs}.{i}.{name}") for i in range(depth) for name in _LAYER]
        if norm:
            pairs.append((f"{ours}.norm", norm))
    for ours, theirs in pairs:
        m[f"{ours}.weight"], m[f"{ours}.bias"] = f"{theirs}.weight", f"{theirs}.bias"
    k = int(np.log2(cfg.patch_size))
    for i in range(k):
        m[f"decoder.blocks.{i}.linear.weight"] = f"fusion_module.decoder.{i}.up.1.weight"
    m["decoder.head.weight"] = f"fusion_module.decoder.{k}.weight"
    return m


def _list(label: str, keys: list[str], limit: int = 4) -> str:
    return f"{label}: {', '.join(keys[:limit])}{' ...' if len(keys) > limit else ''} ({len(keys)})"


def convert_state_dict(theirs: dict, cfg: ReSTRConfig, rows: list[int], source: str = "state dict") -> dict[str, torch.Tensor]:
    """The authors' state dict -> restr's for a `cfg` model. `rows[i]`: the authors' id of restr word i
    (`read_vocabulary`). Raises AuthorsError, one line naming every missing or unexpected key (and
    wrong shapes are left to `load_weights`)."""
    names = key_map(cfg)
    expected = set(names.values())
    missing = sorted(expected - set(theirs))
    unexpected = sorted(set(theirs) - expected - set(IGNORED))
    if missing or unexpected:
        parts = [_list(label, keys) for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise AuthorsError(f"{source}: not a state dict of the authors' {cfg.name} (their train_restr.py): " + "; ".join(parts))
    out = {}
    for ours, name in names.items():
        t = theirs[name].detach().to("cpu", torch.float32)
        if ours == "vision.class_pos_embed":
            t = t[:, :1]
        elif ours == "vision.pos_embed":
            t = t[:, 1:]
        elif ours == "vision.patch_embed.proj.weight" or (ours.startswith("decoder.") and t.dim() == 4):
            t = t.flatten(1)  # conv kernels: (D, C, P, P) in (C, P_h, P_w) order; 1x1 convs (out, in, 1, 1)
        elif ours == "language.word_embed.weight":
            if max(rows) >= t.shape[0]:
                raise AuthorsError(
                    f"{source}: {name} has {t.shape[0]} rows, the vocabulary {max(rows) + 1} words: not its vocabulary"
                )
            t = t[torch.as_tensor(rows)]
        out[ours] = t.contiguous()
    return out


def read_vocabulary(path: str | Path) -> tuple[Vocabulary, list[int]]:
    """Their `vocabulary_*.txt` -> (restr's Vocabulary, rows): rows[i] is the authors' id of restr id i.

    Their tokenizer looks words up in `{words[n]: n}` (the last of a repeated line wins) and pads
    with id 0, which their fusion module treats as padding: `<pad>` must be line 1 and `<unk>` there.
    The vocabulary splits expressions as theirs does (`tokenizer="authors"`: punctuation kept as tokens).
    """
    path = Path(path)
    if not path.is_file():
        raise AuthorsError(f"{path}: no such vocabulary file (the authors' data/vocabulary_*.txt)")
    with open(path, encoding="utf-8") as f:  # as their load_vocab_dict_from_file
        words = [w.strip() for w in f.readlines()]
    if not words or words[0] != PAD or UNK not in words:
        raise AuthorsError(f"{path}: not the authors' vocabulary layout (line 1 must be {PAD} and {UNK} must be a line)")
    ids = {w: n for n, w in enumerate(words)}
    # Empty lines (vocabulary_Gref.txt has five) name no token of either tokenizer, and a word that
    # Python's splitlines would cut could not be one line of vocab.txt: both are left out.
    vocab = Vocabulary([w for w in words if w and w.splitlines() == [w]], tokenizer="authors")
    return vocab, [ids[w] for w in vocab.itos]


def find_vocabulary(path: str | Path, rows: int) -> Path:
    """`path` itself, or in a folder (their `data/`) the `vocabulary_*.txt` with `rows` lines."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = sorted(p for p in path.glob("vocabulary_*.txt") if len(p.read_text(encoding="utf-8").splitlines()) == rows)
    if len(found) != 1:
        raise AuthorsError(
            f"{path}: {len(found)} vocabulary_*.txt files of {rows} words (the checkpoint's embedding rows); give the file"
        )
    return found[0]


def read_glove_matrix(npy: str | Path, vocabulary: str | Path | None = None) -> tuple[Vocabulary, np.ndarray]:
    """Their GloVe matrix (`data/{Gref,referit}_emb.npy`) with its vocabulary (default: the
    `vocabulary_{Gref,referit}.txt` beside it) -> (restr's Vocabulary, (V, 300) float32 vectors in restr's ids)."""
    npy = Path(npy)
    if vocabulary is None:
        match = re.fullmatch(r"(.+)_emb\.npy", npy.name)
        if match is None:
            raise AuthorsError(f"{npy}: not the authors' <name>_emb.npy; give its vocabulary file too")
        vocabulary = npy.with_name(f"vocabulary_{match.group(1)}.txt")
    vocab, rows = read_vocabulary(vocabulary)
    try:
        matrix = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise AuthorsError(f"{npy}: not a readable .npy ({(str(e).splitlines() or [''])[0][:120]})") from None
    if matrix.ndim != 2 or matrix.shape[0] <= max(rows):
        raise AuthorsError(f"{npy}: shape {matrix.shape} does not fit {vocabulary} ({max(rows) + 1} words)")
    return vocab, np.asarray(matrix, np.float32)[rows]


def config_for(theirs: dict, base: ReSTRConfig | None = None) -> ReSTRConfig:
    """The `-authors` config of a state dict: `restr-b16-authors`, or `-shared-` when each fusion
    stack holds one layer (--is_shared), at the image size its position grid was trained for."""
    shared = "fusion_module.blocks_vl.1.norm1.weight" not in theirs
    if base is None:
        base = get_config("restr-b16-shared-authors" if shared else "restr-b16-authors")
    pos = theirs.get("encoder_v.pos_embed")
    if pos is None or pos.dim() != 3:
        return base
    side = int(round((pos.shape[1] - 1) ** 0.5))
    if side * side != pos.shape[1] - 1:
        raise AuthorsError(f"encoder_v.pos_embed has {pos.shape[1]} tokens: not 1 + a square grid")
    return base.replace(image_size=side * base.patch_size)


def read_state_dict(path: str | Path) -> dict:
    """A `torch.save(model.state_dict())` file, read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise AuthorsError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # foreign files fail in many ways
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AuthorsError(f"{path}: not a readable PyTorch state dict ({first[:120]})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AuthorsError(f"{path}: not a state dict (their train_restr.py saves model.state_dict())")
    return obj


def load_authors_checkpoint(
    path: str | Path, vocabulary: str | Path, image_size: int | None = None, config: ReSTRConfig | None = None
) -> Checkpoint:
    """A checkpoint of the authors' training script as a restr Checkpoint of the `-authors` variant.

    `vocabulary`: their `vocabulary_*.txt`, or their `data/` folder (the file whose size matches the
    checkpoint's embedding is taken). `config`: the `-authors` config to fill (default: from the
    weights, `config_for`); `image_size` resizes the position grid as their forward pass does.
    Raises AuthorsError (a CheckpointError), one line, before anything is written anywhere.
    """
    theirs = read_state_dict(path)
    cfg = config_for(theirs, config)
    emb = theirs.get("encoder_l.embedding.weight")
    vocab_path = find_vocabulary(vocabulary, int(emb.shape[0]) if emb is not None else -1)
    vocab, rows = read_vocabulary(vocab_path)
    vocab.tokenizer = cfg.tokenizer  # theirs, unless a config given says otherwise
    from restr.modeling import ReSTR

    try:
        key_map(cfg)
    except ValueError as e:
        raise AuthorsError(f"{path}: {e}") from None
    state = convert_state_dict(theirs, cfg, rows, source=str(path))
    model = ReSTR(cfg, len(vocab))
    load_weights(model, state, source=str(path))
    if image_size is not None and image_size != cfg.image_size:
        model = resize_model(model, image_size)
        cfg = model.cfg
    meta = {"source": SOURCE, "authors_checkpoint": str(path), "authors_vocabulary": str(vocab_path)}
    return Checkpoint(model.eval(), cfg, vocab, meta, None)


def main(argv=None) -> None:
    """`python -m restr.authors --ckpt THEIR.pth --vocab data/ --out model.pt`: their checkpoint as a
    restr checkpoint file, which every restr command reads (restr-eval --ckpt model.pt, ...)."""
    import click

    from restr.checkpoint import save_checkpoint
    from restr.cli_common import one_line_errors
    from restr.runtime.cli_common import OneLineErrorCommand, UsageError

    @click.command("python -m restr.authors", cls=OneLineErrorCommand, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option(
        "--ckpt", required=True, type=click.Path(dir_okay=False), help="A state dict saved by the authors' train_restr.py."
    )
    @click.option("--vocab", required=True, type=click.Path(), help="Their data/vocabulary_*.txt, or their data/ folder.")
    @click.option("--out", required=True, type=click.Path(dir_okay=False), help="The restr checkpoint to write (must not exist).")
    @click.option("--image-size", type=int, default=None, help="Input side to resize the position grid to (default: theirs).")
    def convert(ckpt, vocab, out, image_size):
        """Write the authors' checkpoint as a restr checkpoint of restr-b16-authors (or -shared-authors).
        Exit codes: 0 done, 2 bad input (nothing written)."""
        with one_line_errors("restr.authors"):
            if Path(out).exists():
                raise UsageError(f"{out}: exists; choose another --out")
            ck = load_authors_checkpoint(ckpt, vocab, image_size)  # a CheckpointError is one line, exit 2
            save_checkpoint(out, ck.model, ck.vocab, ck.meta)
            click.echo(f"wrote {out} ({ck.config.name}, {len(ck.vocab)} words, input {ck.config.image_size})")

    convert.main(args=argv, prog_name="python -m restr.authors")


if __name__ == "__main__":
    main()
