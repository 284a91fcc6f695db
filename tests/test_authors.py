"""The authors' variant against the authors' equations, and their checkpoints and files read into it.

The reference below is numpy written from the authors' code (SouthFlame/restr at 371f102:
model/vit.py, model/glove_transformer.py, model/fusion_module.py, model/transformers/blocks.py,
model/transformers/utils.py, utils/torchutils.py, train_restr.py), not from restr's modules. Their
weights are built here in their exact state-dict layout, at small sizes, and read through
`restr.authors`; every stage must agree to float32 rounding.
"""

import functools
import math

import numpy as np
import pytest
import torch

from restr.authors import (
    AuthorsError,
    config_for,
    convert_state_dict,
    load_authors_checkpoint,
    read_glove_matrix,
    read_vocabulary,
)
from restr.config import AUTHORS, EncoderConfig, ReSTRConfig, get_config
from restr.modeling import ReSTR, restr_loss
from restr.runtime.transforms import AUTHORS_TRANSFORM, ImageTransform

D, DL, HEADS, P, GRID, T = 16, 8, 2, 4, 4, 20  # fusion/vision width, language width, heads, patch, grid, their n_l
K = int(math.log2(P))
WORDS = ["<pad>", "<go>", "<eos>", "<unk>", "red", "dog", "left", "the", "man", "big", "cat", "on"]  # their file layout
TOL = 1e-5  # float32 against the float64 reference

torch.set_num_threads(1)


def authors_config(shared=False) -> ReSTRConfig:
    return ReSTRConfig(
        name="tiny-authors",
        image_size=GRID * P,
        patch_size=P,
        vision=EncoderConfig(D, 2, HEADS, 4 * D, 0.1),
        language=EncoderConfig(DL, 2, HEADS, 4 * DL),
        max_words=T,
        fusion=EncoderConfig(D, 4, HEADS, 4 * D, 0.1),
        fusion_variant="cme-shared" if shared else "cme",
        **AUTHORS,
    )


def their_shapes(shared=False) -> dict[str, tuple]:
    """`model.state_dict()` of their ReSTR at these sizes: names and shapes read off their modules
    (ReSTR.encoder_v = VisionTransformer, .encoder_l = TR_GloVe, .fusion_module = MM_fusion)."""
    shapes = {}

    def layer(prefix, w):  # blocks.Block / blocks.LangBlock: norm1, attn.{qkv,proj}, norm2, mlp.{fc1,fc2}; d_ff = 4 w
        for name, shape in (
            ("norm1", (w,)),
            ("attn.qkv", (3 * w, w)),
            ("attn.proj", (w, w)),
            ("norm2", (w,)),
            ("mlp.fc1", (4 * w, w)),
            ("mlp.fc2", (w, 4 * w)),
        ):
            shapes[f"{prefix}.{name}.weight"], shapes[f"{prefix}.{name}.bias"] = shape, shape[:1]

    shapes.update(
        {
            "encoder_v.cls_token": (1, 1, D),
            "encoder_v.pos_embed": (1, 1 + GRID * GRID, D),
            "encoder_v.patch_embed.proj.weight": (D, 3, P, P),
            "encoder_v.patch_embed.proj.bias": (D,),
        }
    )
    for i in range(2):
        layer(f"encoder_v.blocks.{i}", D)
    shapes.update(
        {
            "encoder_v.norm.weight": (D,),
            "encoder_v.norm.bias": (D,),
            "encoder_v.head.weight": (1000, D),
            "encoder_v.head.bias": (1000,),
            "encoder_l.embedding.weight": (len(WORDS), DL),
        }
    )
    for i in range(2):
        layer(f"encoder_l.blocks.{i}", DL)
    shapes.update(
        {
            "encoder_l.proj_lang.weight": (D, DL),
            "encoder_l.proj_lang.bias": (D,),
            "encoder_l.lang_norm.weight": (D,),
            "encoder_l.lang_norm.bias": (D,),
            "fusion_module.proj_v.weight": (D, D),
            "fusion_module.proj_v.bias": (D,),
            "fusion_module.proj_l.weight": (D, D),
            "fusion_module.proj_l.bias": (D,),
            "fusion_module.seed_emb": (1, 1, D),
            "fusion_module.proj_patch": (D, D),
            "fusion_module.proj_cls": (D, D),
        }
    )
    for i in range(1 if shared else 2):  # --is_shared builds one layer per stack and runs it twice
        layer(f"fusion_module.blocks_vl.{i}", D)
        layer(f"fusion_module.blocks_ls.{i}", D)
    shapes.update({"fusion_module.norm.weight": (D,), "fusion_module.norm.bias": (D,)})
    for i in range(K):  # uplinearBlock(2D / 2^i, D / 2^i): Upsample, Conv2d 1x1 without bias, LeakyReLU
        shapes[f"fusion_module.decoder.{i}.up.1.weight"] = (D // 2**i, 2 * D // 2**i, 1, 1)
    shapes[f"fusion_module.decoder.{K}.weight"] = (1, D // 2 ** (K - 1), 1, 1)
    return shapes


def their_state_dict(shared=False, seed=0) -> dict[str, torch.Tensor]:
    """Values of moderate size: every stage stays O(1), where float32 rounds to ~1e-6 (the raw patch
    logit gates the decoder's features, so its rounding reaches the pixel logits: P_patch and P_cls
    are halved to keep the logits near 1). The patch embedding, class token and position grid are
    1e-3 small: the first LayerNorm then sees a variance near its epsilon, so 1e-5 and 1e-6 give
    visibly different functions."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in their_shapes(shared).items():
        n = rng.standard_normal(shape)
        if name.startswith(("encoder_v.patch_embed.proj.weight", "encoder_v.cls_token", "encoder_v.pos_embed")):
            n = 1e-3 * n
        elif name in ("fusion_module.proj_patch", "fusion_module.proj_cls"):
            n = 0.5 * n / math.sqrt(D)
        elif len(shape) > 1 and name != "encoder_l.embedding.weight":
            n = n / math.sqrt(np.prod(shape[1:]))
        elif name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            n = 1 + 0.1 * n
        elif len(shape) == 1:
            n = 0.1 * n
        out[name] = torch.from_numpy(n.astype(np.float32))
    return out


# ---------------------------------------------------------------- the authors' equations, in numpy


def ln(x, sd, name, eps=1e-5):  # nn.LayerNorm's default epsilon, everywhere in their code
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def linear(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def msa(x, sd, name):  # blocks.Attention: qkv, heads, softmax(q k^T * d_h^-1/2) v, proj; no mask
    b, n, c = x.shape
    q, k, v = linear(x, sd, f"{name}.qkv").reshape(b, n, 3, HEADS, c // HEADS).transpose(2, 0, 3, 1, 4)
    a = q @ k.swapaxes(-1, -2) * (c // HEADS) ** -0.5
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    return linear((a @ v).transpose(0, 2, 1, 3).reshape(b, n, c), sd, f"{name}.proj")


def mlp(x, sd, name):  # fc1, exact GELU, fc2
    h = linear(x, sd, f"{name}.fc1")
    return linear(0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2))), sd, f"{name}.fc2")


def block(x, sd, name):  # blocks.Block: pre-norm
    x = x + msa(ln(x, sd, f"{name}.norm1"), sd, f"{name}.attn")
    return x + mlp(ln(x, sd, f"{name}.norm2"), sd, f"{name}.mlp")


def lang_block(x, sd, name):  # blocks.LangBlock: post-norm
    x = ln(x + msa(x, sd, f"{name}.attn"), sd, f"{name}.norm1")
    return ln(x + mlp(x, sd, f"{name}.mlp"), sd, f"{name}.norm2")


def interpolation(n_in, n_out, align_corners):
    """(n_out, n_in) matrix of 1-D linear interpolation, as F.interpolate's bilinear mode."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = i * (n_in - 1) / (n_out - 1) if align_corners else max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1, w = min(i0 + 1, n_in - 1), src - i0
        m[i, i0] += 1 - w
        m[i, i1] += w
    return m


def vision(image, sd):  # VisionTransformer.forward(im, return_features=True), then MM_fusion drops the class token
    b, c, h, w = image.shape
    g = (h // P, w // P)
    patches = image.reshape(b, c, g[0], P, g[1], P).transpose(0, 2, 4, 1, 3, 5).reshape(b, g[0] * g[1], c * P * P)
    x = patches @ sd["encoder_v.patch_embed.proj.weight"].reshape(D, -1).T + sd["encoder_v.patch_embed.proj.bias"]
    x = np.concatenate([np.repeat(sd["encoder_v.cls_token"], b, 0), x], 1)
    pos = sd["encoder_v.pos_embed"]
    if g != (GRID, GRID):  # utils.resize_pos_embed: the grid bilinearly (align_corners False), the class token's kept
        grid = pos[0, 1:].reshape(GRID, GRID, D)
        grid = np.einsum("ia,abd,jb->ijd", interpolation(GRID, g[0], False), grid, interpolation(GRID, g[1], False))
        pos = np.concatenate([pos[:, :1], grid.reshape(1, -1, D)], 1)
    x = x + pos
    for i in range(2):
        x = block(x, sd, f"encoder_v.blocks.{i}")
    return ln(x, sd, "encoder_v.norm")[:, 1:]


def language(ids, sd):  # TR_GloVe.forward: embedding + sinusoid, post-norm layers, proj_lang, lang_norm
    pe = np.zeros((T, DL))
    div = np.exp(np.arange(0, DL, 2) * -(math.log(10000.0) / DL))
    pe[:, 0::2], pe[:, 1::2] = np.sin(np.arange(T)[:, None] * div), np.cos(np.arange(T)[:, None] * div)
    x = sd["encoder_l.embedding.weight"][ids] + pe
    for i in range(2):
        x = lang_block(x, sd, f"encoder_l.blocks.{i}")
    return ln(linear(x, sd, "encoder_l.proj_lang"), sd, "encoder_l.lang_norm")


def l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def authors_forward(image, ids, sd, shared=False) -> dict[str, np.ndarray]:
    """ReSTR.forward of their code, stage by stage (float64). ids: (B, 20) front-padded, 0 = <pad>."""
    zv, zl = vision(image, sd), language(ids, sd)
    x_v = linear(l2(zv), sd, "fusion_module.proj_v")
    x_l = linear(l2(zl), sd, "fusion_module.proj_l")
    x_l[ids == 0] = 0  # padding zeroed after the projection, then attended
    layers = (0, 0) if shared else (0, 1)
    x = np.concatenate([x_v, x_l], 1)
    for i in layers:
        x = block(x, sd, f"fusion_module.blocks_vl.{i}")
    patches, x_l = x[:, :-T], x[:, -T:]  # no LayerNorm here
    x = np.concatenate([x_l, np.repeat(sd["fusion_module.seed_emb"], len(ids), 0)], 1)
    for i in layers:
        x = block(x, sd, f"fusion_module.blocks_ls.{i}")
    x = ln(x, sd, "fusion_module.norm")
    patches, cls = patches @ sd["fusion_module.proj_patch"], x[:, -1:] @ sd["fusion_module.proj_cls"]
    patch = np.einsum("bpd,bwd->bpw", patches, cls)  # no 1/sqrt(D)
    y = np.concatenate([x_v, patch * patches], 2)  # the raw logit gates the features
    g = (image.shape[2] // P, image.shape[3] // P)
    y = y.transpose(0, 2, 1).reshape(len(ids), -1, *g)
    for i in range(K):  # x2 bilinear (align_corners True), 1x1 conv without bias, LeakyReLU(0.01)
        y = np.einsum(
            "ia,ncab,jb->ncij",
            interpolation(y.shape[2], 2 * y.shape[2], True),
            y,
            interpolation(y.shape[3], 2 * y.shape[3], True),
        )
        y = np.einsum("oc,bchw->bohw", sd[f"fusion_module.decoder.{i}.up.1.weight"][:, :, 0, 0], y)
        y = np.where(y > 0, y, 0.01 * y)
    pixel = np.einsum("oc,bchw->bohw", sd[f"fusion_module.decoder.{K}.weight"][:, :, 0, 0], y)
    return {
        "vision": zv,
        "language": zl,
        "fusion z_v'": patches,
        "fusion e_s'": cls,
        "patch logits": patch[..., 0],
        "pixel logits": pixel,
    }


def bce(x, y):  # BCEWithLogitsLoss, mean
    return float(np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))))


def authors_loss(pixel, patch, gt) -> float:  # train_restr.py: Patch_label_gen (pixel sum > 0.8), alpha_loc 0.1
    b, _, h, w = gt.shape
    labels = gt.reshape(b, h // P, P, w // P, P).sum((2, 4)).reshape(b, -1) > 0.8
    return bce(pixel, gt) + 0.1 * bce(patch, labels.astype(np.float64))


# ---------------------------------------------------------------- inputs and restr's side

# 3 words; 1; 22 (truncated to 20), with "of", which neither vocabulary has (<unk>)
SENTENCES = ["the red dog", "man", "the big cat on the man left of the red dog on the left big cat the man dog red big cat"]


def their_ids(sentence: str) -> list[int]:  # their preprocess_sentence: ids, front-padded with <pad> = 0 to 20
    ids = [WORDS.index(w) if w in WORDS else WORDS.index("<unk>") for w in sentence.split()][:T]
    return [0] * (T - len(ids)) + ids


def sample(size=GRID * P, seed=1):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((len(SENTENCES), 3, size, size))
    gt = (rng.random((len(SENTENCES), 1, size, size)) > 0.85).astype(np.float64)  # partly covered patches: the label rules differ
    return image, gt


def stages(model: ReSTR, vocab, image, gt) -> dict[str, np.ndarray]:
    """restr's model at the same stages; the language features moved to the authors' front-padded slots."""
    enc = vocab.encode(SENTENCES, T)
    words, pad = torch.from_numpy(enc.words), torch.from_numpy(enc.pad_mask)
    x = torch.from_numpy(image).float()
    with torch.no_grad():
        out = {"vision": model.vision(x), "language": model.language(words, pad)}
        out["fusion z_v'"], out["fusion e_s'"] = model.fusion(model.encode_image(x), model.encode_text(words, pad), pad)
        out["pixel logits"], out["patch logits"] = model(x, words, pad)
        cfg = model.cfg
        out["loss"] = restr_loss(
            out["pixel logits"],
            out["patch logits"],
            torch.from_numpy(gt).float(),
            P,
            cfg.patch_threshold,
            cfg.patch_loss_weight,
            cfg.patch_label_rule,
        )["loss"]
    out = {k: v.double().numpy() for k, v in out.items()}
    n = (~enc.pad_mask).sum(1)
    out["language"] = np.stack([np.roll(row, T - k, 0) for row, k in zip(out["language"], n)])
    return out


@functools.lru_cache(maxsize=2)
def reference(shared=False) -> dict[str, np.ndarray]:
    """The authors' stages on `sample()`, and the pixel logits and vision features at another input size."""
    sd = {k: v.double().numpy() for k, v in their_state_dict(shared).items()}
    ids = np.array([their_ids(s) for s in SENTENCES])
    image, gt = sample()
    ref = authors_forward(image, ids, sd, shared)
    ref["loss"] = authors_loss(ref["pixel logits"], ref["patch logits"], gt)
    bigger = authors_forward(sample(size=(GRID + 2) * P, seed=2)[0], ids, sd, shared)  # the position grid is resized
    ref["vision, another input size"], ref["pixel logits, another input size"] = bigger["vision"], bigger["pixel logits"]
    return ref


def differences(model, vocab, shared=False) -> dict[str, float]:
    """max |restr - the authors' equations| per stage."""
    image, gt = sample()
    ours = stages(model, vocab, image, gt)
    enc = vocab.encode(SENTENCES, T)
    x = torch.from_numpy(sample(size=(GRID + 2) * P, seed=2)[0]).float()
    with torch.no_grad():
        ours["vision, another input size"] = model.vision(x).double().numpy()
        ours["pixel logits, another input size"] = (
            model(x, torch.from_numpy(enc.words), torch.from_numpy(enc.pad_mask))[0].double().numpy()
        )
    ref = reference(shared)
    return {k: float(np.abs(ours[k] - ref[k]).max()) if ours[k].shape == np.shape(ref[k]) else math.inf for k in ref}


def load(tmp_path, shared=False, cfg=None):
    torch.save(their_state_dict(shared), tmp_path / "their.pth")
    (tmp_path / "vocabulary_Gref.txt").write_text("\n".join(WORDS) + "\n")
    return load_authors_checkpoint(tmp_path / "their.pth", tmp_path / "vocabulary_Gref.txt", config=cfg or authors_config(shared))


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("shared", [False, True], ids=["cme", "cme-shared"])
def test_authors_variant_computes_their_equations(tmp_path, shared):
    ck = load(tmp_path, shared)
    diffs = differences(ck.model, ck.vocab, shared)
    assert max(diffs.values()) <= TOL, diffs


# Each switch set back to restr's choice (where the weights still fit; new tensors keep their
# initial values) makes the model another function: the reference above would catch it, by ten
# times its tolerance at least.
FUNCTION_SWITCHES = [
    "vision_class_token",
    "layer_norm_eps",
    "language_norm",
    "language_output",
    "padding",
    "fusion_vl_norm",
    "patch_projections",
    "patch_logit_scale",
    "decoder_gate",
    "patch_label_rule",
    "pos_embed_resize",
]


@pytest.mark.parametrize("switch", FUNCTION_SWITCHES)
def test_each_switch_is_pinned_by_the_reference(tmp_path, switch):
    ck = load(tmp_path)
    restr_choice = ReSTRConfig.__dataclass_fields__[switch].default
    assert AUTHORS[switch] != restr_choice
    torch.manual_seed(0)
    model = ReSTR(ck.config.replace(**{switch: restr_choice}), len(ck.vocab)).eval()
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in ck.model.state_dict().items() if k in own and own[k].shape == v.shape}, strict=False)
    diffs = differences(model, ck.vocab)
    assert max(diffs.values()) > 10 * TOL, diffs


def test_training_only_switches_keep_the_function():
    cfg = authors_config()
    assert not ReSTR(cfg, 12).decoder.head.bias and all(b.linear.bias is None for b in ReSTR(cfg, 12).decoder.blocks)

    def rates(c):
        return [
            b.drop_path.p if hasattr(b.drop_path, "p") else 0.0
            for s in ("visual_linguistic", "linguistic_seed")
            for b in getattr(ReSTR(c, 12).fusion, s).blocks
        ]

    assert rates(cfg) == [0.0, 0.1, 0.0, 0.1]  # torch.linspace(0, 0.1, 2) per stack
    assert rates(cfg.replace(fusion_variant="cme-shared")) == [0.0, 0.0]  # linspace(0, 0.1, 1) = [0]
    assert rates(cfg.replace(fusion_drop_path="joint")) == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])


def test_their_layout_maps_key_by_key(tmp_path):
    ck = load(tmp_path)
    theirs = their_state_dict()
    state = ck.model.state_dict()
    torch.testing.assert_close(state["vision.class_pos_embed"], theirs["encoder_v.pos_embed"][:, :1])
    torch.testing.assert_close(state["vision.pos_embed"], theirs["encoder_v.pos_embed"][:, 1:])
    torch.testing.assert_close(state["decoder.blocks.1.linear.weight"], theirs["fusion_module.decoder.1.up.1.weight"][:, :, 0, 0])
    # restr's vocabulary: <pad>, <unk>, then their file order; each word keeps its row
    assert ck.vocab.itos[:5] == ["<pad>", "<unk>", "<go>", "<eos>", "red"]
    for word in ("<pad>", "<unk>", "dog", "on"):
        torch.testing.assert_close(
            state["language.word_embed.weight"][ck.vocab.stoi[word]], theirs["encoder_l.embedding.weight"][WORDS.index(word)]
        )
    assert ck.config.image_size == GRID * P and ck.meta["source"] == "SouthFlame/restr"


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda sd: sd.pop("encoder_l.lang_norm.bias"), "missing: encoder_l.lang_norm.bias (1)"),
        (lambda sd: sd.__setitem__("fusion_module.extra", torch.zeros(1)), "unexpected: fusion_module.extra (1)"),
        (
            lambda sd: sd.__setitem__("module.encoder_v.cls_token", sd.pop("encoder_v.cls_token")),
            "missing: encoder_v.cls_token (1); unexpected: module.encoder_v.cls_token (1)",
        ),
    ],
)
def test_a_key_that_does_not_fit_is_named_in_one_line(tmp_path, change, named):
    sd = their_state_dict()
    change(sd)
    torch.save(sd, tmp_path / "their.pth")
    (tmp_path / "vocabulary_Gref.txt").write_text("\n".join(WORDS) + "\n")
    with pytest.raises(AuthorsError) as e:
        load_authors_checkpoint(tmp_path / "their.pth", tmp_path, config=authors_config())
    assert named in str(e.value) and "\n" not in str(e.value)


def test_their_vocabulary_and_glove_matrix(tmp_path):
    # a repeated word (their dict keeps the last line), an empty line and a form feed, as vocabulary_Gref.txt has
    (tmp_path / "vocabulary_Gref.txt").write_text("\n".join(WORDS + ["dog", "", "a\x0cb", "cow"]) + "\n")
    vocab, rows = read_vocabulary(tmp_path / "vocabulary_Gref.txt")
    assert rows[:4] == [0, 3, 1, 2] and rows[vocab.stoi["dog"]] == len(WORDS) and rows[vocab.stoi["cow"]] == len(WORDS) + 3
    assert "" not in vocab.stoi and "a\x0cb" not in vocab.stoi
    matrix = np.arange(len(WORDS) + 4, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    np.save(tmp_path / "Gref_emb.npy", matrix)
    vocab2, vectors = read_glove_matrix(tmp_path / "Gref_emb.npy")
    assert vocab2 == vocab and vectors[vocab.stoi["<unk>"], 0] == 3 and vectors[vocab.stoi["dog"], 0] == len(WORDS)
    (tmp_path / "bad.txt").write_text("<unk>\n<pad>\n")
    with pytest.raises(AuthorsError, match="line 1 must be <pad>"):
        read_vocabulary(tmp_path / "bad.txt")


def test_config_from_the_weights():
    sd = their_state_dict(shared=True)
    cfg = config_for(sd)
    assert cfg.name == "restr-b16-shared-authors" and cfg.image_size == GRID * 16
    assert config_for(their_state_dict()).name == "restr-b16-authors"
    assert get_config("restr-b16-authors").replace(name="x") == get_config("restr-b16").replace(name="x", **AUTHORS)
    with pytest.raises(ValueError, match="not an authors variant"):
        convert_state_dict(sd, get_config("restr-b16"), list(range(len(WORDS))))


# ---------------------------------------------------------------- restr-export --from authors, and the hosts


def run_export(args) -> tuple[int, str]:
    from restr.export.cli import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0), ""
    return 0, ""


def small_b16_authors(monkeypatch) -> None:
    """restr-b16-authors at this test's small sizes: the config restr-export reads their weights into."""
    from restr.config import CONFIGS

    monkeypatch.setitem(CONFIGS, "restr-b16-authors", authors_config())


def test_export_refuses_a_key_that_does_not_fit_and_writes_nothing(tmp_path, capsys, monkeypatch):
    small_b16_authors(monkeypatch)
    sd = their_state_dict()
    sd["fusion_module.proj_extra"] = sd.pop("fusion_module.proj_cls")
    torch.save(sd, tmp_path / "their.pth")
    (tmp_path / "vocabulary_Gref.txt").write_text("\n".join(WORDS) + "\n")
    code, _ = run_export(
        ["--ckpt", str(tmp_path / "their.pth"), "--from", "authors", "--vocab", str(tmp_path), "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "out").exists()
    assert err.count("\n") == 1 and "missing: fusion_module.proj_cls (1); unexpected: fusion_module.proj_extra (1)" in err


@pytest.fixture(scope="module")
def authors_export(tmp_path_factory):
    """Their small state dict exported through restr-export --from authors (FP32 and FP16, verified)."""
    tmp = tmp_path_factory.mktemp("authors")
    torch.save(their_state_dict(), tmp / "their.pth")
    (tmp / "vocabulary_Gref.txt").write_text("\n".join(WORDS) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        small_b16_authors(mp)
        code, _ = run_export(
            [
                "--ckpt",
                str(tmp / "their.pth"),
                "--from",
                "authors",
                "--vocab",
                str(tmp / "vocabulary_Gref.txt"),
                "--out",
                str(tmp / "export"),
                "--no-progress",
                "--no-engine",
                "--threads",
                "1",
            ]
        )
    assert code == 0
    return tmp / "export"


def test_exported_graphs_compute_their_equations(authors_export):
    import onnxruntime as ort

    sd = {k: v.double().numpy() for k, v in their_state_dict().items()}
    image, _ = sample()
    ref = authors_forward(image, np.array([their_ids(s) for s in SENTENCES]), sd)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))
    from restr.runtime.tokenizer import Vocabulary

    enc = Vocabulary.load(authors_export / "vocab.txt").encode(SENTENCES, T)
    feeds = {"image": image.astype(np.float32), "words": enc.words, "pad_mask": enc.pad_mask}

    def run(name, **f):
        return ort.InferenceSession(str(authors_export / f"{name}.onnx"), providers=["CPUExecutionProvider"]).run(None, f)

    for precision, tol in (("", TOL), ("_fp16", 5e-3)):
        pixel, patch = run(f"end_to_end{precision}", **feeds)
        (v,) = run(f"vision{precision}", image=feeds["image"][:1])
        (l,) = run(f"language{precision}", words=enc.words, pad_mask=enc.pad_mask)
        split_pixel, _ = run(f"fusion_decoder{precision}", visual_features=v, linguistic_features=l, pad_mask=enc.pad_mask)
        assert np.abs(pixel - sigmoid(ref["pixel logits"])).max() <= tol
        assert np.abs(patch - sigmoid(ref["patch logits"])).max() <= tol
        assert np.abs(split_pixel[0] - sigmoid(ref["pixel logits"][0])).max() <= tol  # one image's features shared
    manifest = __import__("json").loads((authors_export / "manifest.json").read_text())
    assert manifest["model"]["config"]["padding"] == "front" and manifest["verification"]["passed"]
    assert manifest["model"]["checkpoint"]["meta"]["source"] == "SouthFlame/restr"
    # their pipeline: the processing graphs compute their evaluation transform (tests/test_authors_pipeline.py)
    assert manifest["letterbox"] == {"align": "centre", "fill": "mean", "antialias": False} and manifest["mask_from"] == "logits"
    assert manifest["vocab"]["tokenizer"] == "authors" and manifest["verification"]["processing"]["passed"]
    assert ImageTransform.of_manifest(manifest) == AUTHORS_TRANSFORM == authors_config().image_transform


def cpp_build():
    import os
    from pathlib import Path

    build = Path(os.environ.get("RESTR_CPP_BUILD", Path(__file__).parents[1] / "build" / "cpp"))
    if not (build / "tools" / "restr-predict-cpp").exists():
        pytest.skip("the C++ host is not built (make cpp-build)")
    return build


def test_python_and_cpp_hosts_run_the_authors_export(authors_export, tmp_path):
    """Both hosts run the export's graphs, their centred transform included: the same masks on a
    landscape, a portrait and a photo smaller than the input (16 x 16 here)."""
    import json
    import shutil
    import subprocess
    import sys

    from PIL import Image

    from restr.runtime import Predictor
    from restr.runtime.cpp.cpp_host import CppHost

    Image.fromarray((np.random.default_rng(3).random((30, 50, 3)) * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    args = [
        "--artifacts",
        str(authors_export),
        "--image",
        str(tmp_path / "photo.png"),
        "--text",
        SENTENCES[0],
        "--text",
        SENTENCES[2],
    ]
    py = subprocess.run(
        [sys.executable, "-m", "restr.runtime.cli", *args, "--out", str(tmp_path / "py")], capture_output=True, text=True
    )
    assert py.returncode == 0, py.stderr
    summary = __import__("json").loads((tmp_path / "py" / "summary.json").read_text())
    assert summary["model"] == "tiny-authors" and len(summary["expressions"]) == 2
    build = cpp_build()
    cpp = subprocess.run(
        [str(build / "tools" / "restr-predict-cpp"), *args, "--out", str(tmp_path / "cpp"), "--threads", "1"],
        capture_output=True,
        text=True,
    )
    assert cpp.returncode == 0, cpp.stderr
    ours = __import__("json").loads((tmp_path / "cpp" / "summary.json").read_text())
    for a, b in zip(summary["expressions"], ours["expressions"]):
        assert a["area"] == b["area"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "py" / a["mask"])), np.asarray(Image.open(tmp_path / "cpp" / b["mask"]))
        )
    # random weights give probabilities within 1e-4 of each other: a threshold amid them makes masks
    # that follow the photo's geometry (each host reads it from the manifest)
    folder = tmp_path / "export"
    shutil.copytree(authors_export, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for h, w in ((30, 50), (51, 29), (9, 13)):
        rgb = (np.random.default_rng(h).random((h, w, 3)) * 255).astype(np.uint8)
        manifest["threshold"] = float(
            np.median(
                Predictor.from_artifacts(authors_export, threads=1, cache_size=0).predict_image(rgb, SENTENCES[:1])[0].probs
            )
        )
        (folder / "manifest.json").write_text(json.dumps(manifest))
        want = Predictor.from_artifacts(folder, threads=1, cache_size=0).predict_image(rgb, SENTENCES)
        host = CppHost(build / "librestr_runtime.so", folder, threads=1)
        got, _ = host.predict(rgb, SENTENCES)
        host.close()
        assert 0 < want[0].area < h * w
        for g, p in zip(got, want):
            assert np.array_equal(g["mask"], p.mask) and np.abs(g["probs"] - p.probs).max() <= 1e-5
            assert g["area"] == p.area and abs(g["score"] - p.score) <= 1e-5


def test_train_starts_from_their_checkpoint(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from restr.checkpoint import load_checkpoint
    from restr.data import make_synthetic
    from restr.train import main

    data = make_synthetic(tmp_path / "synthetic", seed=0, sizes={"train": 8, "val": 2, "test": 2})
    ck = load(tmp_path)
    small_b16_authors(monkeypatch)
    r = CliRunner().invoke(
        main,
        [
            "--init",
            str(tmp_path / "their.pth"),
            "--from",
            "authors",
            "--vocab",
            str(tmp_path),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--iterations",
            "2",
            "--batch-size",
            "2",
            "--lr",
            "1e-5",
            "--val-every",
            "2",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    trained = load_checkpoint(tmp_path / "run" / "model.pt")
    assert trained.config == ck.config and trained.vocab == ck.vocab and trained.meta["init"]["source"] == "SouthFlame/restr"
    moved = max(float((a - b).abs().max()) for a, b in zip(trained.model.state_dict().values(), ck.model.state_dict().values()))
    assert 0 < moved < 1e-3  # two steps at LR 1e-5 from their weights (a random start is O(1) away)
    r = CliRunner().invoke(
        main, ["--init", str(tmp_path / "their.pth"), "--from", "authors", "--data", str(data), "--out", str(tmp_path / "r2")]
    )
    assert r.exit_code == 2 and "hold no vocabulary" in r.stderr and not (tmp_path / "r2").exists()


def test_converted_checkpoint_evaluates(tmp_path, monkeypatch, capsys):
    """python -m restr.authors writes their checkpoint as a restr one, which restr-eval scores as is."""
    import json
    import subprocess
    import sys

    from restr.authors import main
    from restr.checkpoint import load_checkpoint
    from restr.data import make_synthetic

    torch.save(their_state_dict(), tmp_path / "their.pth")
    (tmp_path / "vocabulary_Gref.txt").write_text("\n".join(WORDS) + "\n")
    small_b16_authors(monkeypatch)
    with pytest.raises(SystemExit) as e:
        main(["--ckpt", str(tmp_path / "their.pth"), "--vocab", str(tmp_path), "--out", str(tmp_path / "model.pt")])
    assert e.value.code == 0
    ck = load_checkpoint(tmp_path / "model.pt")
    assert ck.config == authors_config() and ck.meta["source"] == "SouthFlame/restr"
    assert max(differences(ck.model, ck.vocab).values()) <= TOL
    with pytest.raises(SystemExit) as e:  # never over an existing file
        main(["--ckpt", str(tmp_path / "their.pth"), "--vocab", str(tmp_path), "--out", str(tmp_path / "model.pt")])
    assert e.value.code == 2 and "exists" in capsys.readouterr().err
    data = make_synthetic(tmp_path / "synthetic", seed=0, sizes={"train": 4, "val": 2, "test": 4})
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "restr.evaluate",
            "--ckpt",
            str(tmp_path / "model.pt"),
            "--data",
            f"{data}:test",
            "--json",
            str(tmp_path / "eval.json"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    converted = json.loads((tmp_path / "eval.json").read_text())
    assert converted["n"] > 0
    # restr-eval reads their state dict itself with --from authors: the same scores
    from click.testing import CliRunner

    from restr.evaluate import main as restr_eval

    res = CliRunner().invoke(
        restr_eval,
        [
            "--ckpt",
            str(tmp_path / "their.pth"),
            "--from",
            "authors",
            "--vocab",
            str(tmp_path),
            "--data",
            f"{data}:test",
            "--json",
            str(tmp_path / "direct.json"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    direct = json.loads((tmp_path / "direct.json").read_text())
    assert {k: direct[k] for k in ("n", "overall_iou", "mean_iou")} == {k: converted[k] for k in ("n", "overall_iou", "mean_iou")}
    res = CliRunner().invoke(restr_eval, ["--ckpt", str(tmp_path / "their.pth"), "--from", "authors", "--data", f"{data}:test"])
    assert res.exit_code == 2 and "hold no vocabulary" in res.output
