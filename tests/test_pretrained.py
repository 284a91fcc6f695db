"""Pretrained weights: small fake ViT checkpoints in the timm and AugReg layouts, and a tiny GloVe file."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from restr.config import EncoderConfig, get_config
from restr.modeling import ReSTR
from restr.modeling.vision_encoder import VisionEncoder, resize_pos_embed
from restr.pretrained import PretrainedError, init_word_embeddings, load_glove, load_vit_weights

torch.set_num_threads(1)

CFG = get_config("restr-tiny")  # vision: width 96, 4 layers, 4 heads, MLP 384, patch 8, grid 12 x 12
V = CFG.vision
GRID = CFG.grid


def reference_timm(grid: int = GRID, depth: int = V.depth, patch: int = CFG.patch_size, seed: int = 0) -> dict:
    """A timm-layout ViT state dict with random weights, a class token and a classifier head."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)
    d, m = V.width, V.mlp_width
    sd = {
        "cls_token": r(1, 1, d),
        "pos_embed": r(1, 1 + grid * grid, d),
        "patch_embed.proj.weight": r(d, 3, patch, patch),
        "patch_embed.proj.bias": r(d),
        "norm.weight": r(d),
        "norm.bias": r(d),
        "head.weight": r(10, d),
        "head.bias": r(10),
    }
    sd["pos_embed"][:, 0] = 100.0  # the class token's position: must never reach the model
    for i in range(depth):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": r(d),
            b + "norm1.bias": r(d),
            b + "attn.qkv.weight": r(3 * d, d) / math.sqrt(d),
            b + "attn.qkv.bias": r(3 * d),
            b + "attn.proj.weight": r(d, d) / math.sqrt(d),
            b + "attn.proj.bias": r(d),
            b + "norm2.weight": r(d),
            b + "norm2.bias": r(d),
            b + "mlp.fc1.weight": r(m, d) / math.sqrt(d),
            b + "mlp.fc1.bias": r(m),
            b + "mlp.fc2.weight": r(d, m) / math.sqrt(m),
            b + "mlp.fc2.bias": r(d),
        }
    return sd


def timm_to_npz(sd: dict, heads: int = V.heads, big_vision: bool = False, prefix: str = "") -> dict:
    """The same weights as Flax would store them (AugReg / vit_jax names, or big_vision's numbering)."""
    n = lambda t: t.numpy().copy()
    d = sd["norm.weight"].shape[0]
    ln1, ln2, mha, mlp = (
        ("LayerNorm_0", "LayerNorm_1", "MultiHeadDotProductAttention_0", "MlpBlock_0")
        if big_vision
        else ("LayerNorm_0", "LayerNorm_2", "MultiHeadDotProductAttention_1", "MlpBlock_3")
    )
    out = {
        "embedding/kernel": n(sd["patch_embed.proj.weight"].permute(2, 3, 1, 0)),  # (D,C,P,P) -> HWIO
        "embedding/bias": n(sd["patch_embed.proj.bias"]),
        "cls": n(sd["cls_token"]),
        "Transformer/posembed_input/pos_embedding": n(sd["pos_embed"]),
        "Transformer/encoder_norm/scale": n(sd["norm.weight"]),
        "Transformer/encoder_norm/bias": n(sd["norm.bias"]),
        "head/kernel": n(sd["head.weight"].T),
        "head/bias": n(sd["head.bias"]),
    }
    depth = sum(1 for k in sd if k.endswith("attn.qkv.weight"))
    for i in range(depth):
        b, j = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        out[j + f"{ln1}/scale"], out[j + f"{ln1}/bias"] = n(sd[b + "norm1.weight"]), n(sd[b + "norm1.bias"])
        out[j + f"{ln2}/scale"], out[j + f"{ln2}/bias"] = n(sd[b + "norm2.weight"]), n(sd[b + "norm2.bias"])
        for name, w, bias in zip(("query", "key", "value"), sd[b + "attn.qkv.weight"].chunk(3), sd[b + "attn.qkv.bias"].chunk(3)):
            out[j + f"{mha}/{name}/kernel"] = n(w.T.reshape(d, heads, d // heads))
            out[j + f"{mha}/{name}/bias"] = n(bias.reshape(heads, d // heads))
        out[j + f"{mha}/out/kernel"] = n(sd[b + "attn.proj.weight"].T.reshape(heads, d // heads, d))
        out[j + f"{mha}/out/bias"] = n(sd[b + "attn.proj.bias"])
        for r, name in enumerate(("fc1", "fc2")):
            out[j + f"{mlp}/Dense_{r}/kernel"] = n(sd[b + f"mlp.{name}.weight"].T)
            out[j + f"{mlp}/Dense_{r}/bias"] = n(sd[b + f"mlp.{name}.bias"])
    return {prefix + k: v for k, v in out.items()}


def expected_vision_state(sd: dict, model_grid: int = GRID) -> dict:
    """What our vision encoder should hold after loading `sd` (class token dropped, grid resized)."""
    ckpt_grid = math.isqrt(sd["pos_embed"].shape[1] - 1)
    out = {
        "patch_embed.proj.weight": sd["patch_embed.proj.weight"].flatten(1),
        "patch_embed.proj.bias": sd["patch_embed.proj.bias"],
        "pos_embed": resize_pos_embed(sd["pos_embed"][:, 1:], (ckpt_grid,) * 2, (model_grid,) * 2),
    }
    for k, v in sd.items():
        if k.startswith("blocks.") or k.startswith("norm."):
            out["encoder." + k] = v
    return out


@pytest.fixture(scope="module")
def model() -> ReSTR:
    torch.manual_seed(0)
    return ReSTR(CFG, vocab_size=10)


def assert_vision_equals(vision: VisionEncoder, expected: dict) -> None:
    state = vision.state_dict()
    assert set(state) == set(expected)
    for k, v in expected.items():
        assert torch.equal(state[k], v), k


# ---- timm layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pth", "state_dict", "model", "safetensors"])
def test_timm_layout_loads_exactly(model, tmp_path, form):
    sd = reference_timm()
    path = tmp_path / ("vit.safetensors" if form == "safetensors" else "vit.pth")
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        extra = {"fc_norm.weight": torch.ones(V.width), "pre_logits.fc.weight": torch.ones(2, 2)}
        torch.save(sd if form == "pth" else {form: sd | extra, "epoch": 3}, path)

    report = load_vit_weights(model, path)

    assert_vision_equals(model.vision, expected_vision_state(sd))
    assert not (model.vision.pos_embed == 100.0).any()  # class-token row dropped, not loaded
    assert report.layout == "timm" and report.dropped_tokens == 1
    assert report.grid_from == report.grid_to == (GRID, GRID)
    assert set(report.loaded) == set(model.vision.state_dict())
    assert {"cls_token", "head.weight", "head.bias"} <= set(report.ignored)
    assert "loaded" in str(report)


def test_loads_into_vision_encoder_directly(tmp_path):
    sd = reference_timm()
    torch.save(sd, tmp_path / "vit.pth")
    vision = VisionEncoder(V, CFG.image_size, CFG.patch_size)
    load_vit_weights(vision, tmp_path / "vit.pth")
    assert_vision_equals(vision, expected_vision_state(sd))


# ---- AugReg npz layout -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["vit_jax", "opt_target_prefix", "big_vision"])
def test_npz_equals_timm_conversion(model, tmp_path, variant):
    sd = reference_timm(seed=1)
    arrays = timm_to_npz(sd, big_vision=variant == "big_vision", prefix="opt/target/" if variant == "opt_target_prefix" else "")
    np.savez(tmp_path / "vit.npz", **arrays)

    report = load_vit_weights(model, tmp_path / "vit.npz")

    assert report.layout == "augreg-npz" and report.dropped_tokens == 1
    assert_vision_equals(model.vision, expected_vision_state(sd))  # same as the timm-layout load


def test_npz_block_matches_hand_computed_forward(model, tmp_path):
    """Patch embedding and a whole layer computed from the raw Flax arrays equal our modules."""
    arrays = timm_to_npz(reference_timm(seed=2))
    np.savez(tmp_path / "vit.npz", **arrays)
    load_vit_weights(model, tmp_path / "vit.npz")
    w = {k: torch.from_numpy(v).double() for k, v in arrays.items()}
    g = torch.Generator().manual_seed(3)
    p, d, h = CFG.patch_size, V.width, V.heads

    # Patch embedding: a stride-P convolution with the HWIO kernel, written out patch by patch.
    image = torch.randn(1, 3, 2 * p, 3 * p, generator=g).double()
    patches = image[0].reshape(3, 2, p, 3, p).permute(1, 3, 2, 4, 0)  # (gh, gw, P_h, P_w, C)
    by_hand = torch.einsum("abhwc,hwcd->abd", patches, w["embedding/kernel"]).reshape(6, d) + w["embedding/bias"]
    ours = model.vision.patch_embed.double()(image)[0]
    model.vision.patch_embed.float()
    torch.testing.assert_close(ours, by_hand, rtol=1e-10, atol=1e-10)

    # One encoder layer: pre-norm attention with per-head Flax kernels, then the MLP.
    x = torch.randn(7, d, generator=g).double()
    j = "Transformer/encoderblock_0/"
    mha = j + "MultiHeadDotProductAttention_1/"
    ln = lambda z, n: F.layer_norm(z, (d,), w[j + n + "/scale"], w[j + n + "/bias"], eps=1e-6)
    y = ln(x, "LayerNorm_0")
    q, k, v = (torch.einsum("nd,dhk->nhk", y, w[mha + f"{n}/kernel"]) + w[mha + f"{n}/bias"] for n in ("query", "key", "value"))
    attn = torch.softmax(torch.einsum("nhk,mhk->hnm", q, k) / math.sqrt(d // h), dim=-1)
    o = torch.einsum("hnm,mhk->nhk", attn, v)
    attn_out = torch.einsum("nhk,hkd->nd", o, w[mha + "out/kernel"]) + w[mha + "out/bias"]
    x1 = x + attn_out
    hidden = F.gelu(ln(x1, "LayerNorm_2") @ w[j + "MlpBlock_3/Dense_0/kernel"] + w[j + "MlpBlock_3/Dense_0/bias"])
    x2 = x1 + hidden @ w[j + "MlpBlock_3/Dense_1/kernel"] + w[j + "MlpBlock_3/Dense_1/bias"]

    block = model.vision.encoder.blocks[0].double()
    try:
        with torch.no_grad():
            ours_attn = block.attn(block.norm1(x[None]))[0]
            ours_block = block(x[None])[0]
    finally:
        block.float()
    torch.testing.assert_close(ours_attn, attn_out, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours_block, x2, rtol=1e-9, atol=1e-9)


# ---- position embedding, class token -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pth", "npz"])
def test_pos_embed_resized_from_another_grid(model, tmp_path, fmt):
    sd = reference_timm(grid=5, seed=4)  # like the 24 x 24 grid of the 384 AugReg model into a 30 x 30 one
    if fmt == "pth":
        torch.save(sd, tmp_path / "vit.pth")
    else:
        np.savez(tmp_path / "vit.npz", **timm_to_npz(sd))

    report = load_vit_weights(model, tmp_path / f"vit.{fmt}")

    assert report.grid_from == (5, 5) and report.grid_to == (GRID, GRID)
    expected = resize_pos_embed(sd["pos_embed"][:, 1:], (5, 5), (GRID, GRID))
    assert model.vision.pos_embed.shape == (1, GRID * GRID, V.width)
    assert torch.equal(model.vision.pos_embed.data, expected)
    assert model.vision.pos_embed.abs().max() < 50  # the class token's 100s did not leak into the grid


@pytest.mark.parametrize("fmt", ["pth", "npz"])
def test_class_token_kept_by_the_authors_variant(tmp_path, fmt):
    """Their ViT runs the class token: it and its position (the 100s row) load, the grid as usual."""
    sd = reference_timm(seed=5)
    if fmt == "pth":
        torch.save(sd, tmp_path / "vit.pth")
    else:
        np.savez(tmp_path / "vit.npz", **timm_to_npz(sd))
    vision = VisionEncoder(V, CFG.image_size, CFG.patch_size, class_token=True)

    report = load_vit_weights(vision, tmp_path / f"vit.{fmt}")

    assert_vision_equals(
        vision, expected_vision_state(sd) | {"class_token": sd["cls_token"], "class_pos_embed": sd["pos_embed"][:, :1]}
    )
    assert report.dropped_tokens == 0 and not any(k.startswith("cls") for k in report.ignored)
    del sd["cls_token"]  # a ViT without one: no class token to load
    sd["pos_embed"] = sd["pos_embed"][:, 1:]
    torch.save(sd, tmp_path / "nocls.pth")
    with pytest.raises(PretrainedError, match=r"missing \(2\): class_pos_embed, class_token"):
        load_vit_weights(vision, tmp_path / "nocls.pth")


# ---- errors ------------------------------------------------------------------------------------------


def _error(model, path) -> str:
    before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    with pytest.raises(PretrainedError) as e:
        load_vit_weights(model, path)
    msg = str(e.value)
    assert "\n" not in msg
    after = model.vision.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed load must leave the model alone"
    return msg


def test_missing_and_unexpected_keys_are_named(model, tmp_path):
    sd = reference_timm()
    del sd["blocks.1.attn.qkv.bias"]
    sd["blocks.2.ls1.gamma"] = torch.ones(V.width)  # layer scale: an architecture we do not have
    torch.save(sd, tmp_path / "vit.pth")
    msg = _error(model, tmp_path / "vit.pth")
    assert "missing (1): blocks.1.attn.qkv.bias" in msg
    assert "unexpected (1): blocks.2.ls1.gamma" in msg


def test_npz_missing_key_named_in_checkpoint_terms(model, tmp_path):
    arrays = timm_to_npz(reference_timm())
    del arrays["Transformer/encoderblock_3/MlpBlock_3/Dense_1/kernel"]
    np.savez(tmp_path / "vit.npz", **arrays)
    assert "Transformer/encoderblock_3/MlpBlock_3/Dense_1/kernel" in _error(model, tmp_path / "vit.npz")


def test_wrong_depth_patch_and_heads(model, tmp_path):
    torch.save(reference_timm(depth=V.depth + 2), tmp_path / "deep.pth")
    msg = _error(model, tmp_path / "deep.pth")
    assert f"blocks.{V.depth}.attn.qkv.weight" in msg and "unexpected" in msg
    assert f"checkpoint has {V.depth + 2} layers, the model {V.depth}" in msg

    torch.save(reference_timm(patch=16, grid=6), tmp_path / "p16.pth")
    msg = _error(model, tmp_path / "p16.pth")
    assert "patches are 16x16" in msg and "patch_embed.proj.weight (96, 768) vs model (96, 192)" in msg

    np.savez(tmp_path / "heads.npz", **timm_to_npz(reference_timm(), heads=2))
    assert f"checkpoint has 2 heads, the model {V.heads}" in _error(model, tmp_path / "heads.npz")


def test_foreign_and_unreadable_files(model, tmp_path):
    torch.save({"conv1.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pth")
    assert "not a ViT checkpoint" in _error(model, tmp_path / "resnet.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    assert "not a readable weights file" in _error(model, tmp_path / "junk.pth")
    assert "no such file" in _error(model, tmp_path / "absent.npz")


# ---- GloVe -------------------------------------------------------------------------------------------

GLOVE = {  # word -> 4-d vector, in file order
    "the": [0.1, 0.2, 0.3, 0.4],
    ",": [1.0, 1.0, 1.0, 1.0],
    "dog": [-1.5, 2.0, 0.0, 3.25],
    "at & t": [7.0, 7.0, 7.0, 7.0],  # the 840B file has words with spaces
    "left": [0.5, -0.5, 0.25, -0.25],
    "the ": [9.0, 9.0, 9.0, 9.0],
}


def write_glove(path, entries=GLOVE, tail: str = "") -> None:
    lines = [f"{w} {' '.join(repr(x) for x in v)}" for w, v in entries.items()]
    text = "\n".join(lines) + "\n" + tail
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("name", ["glove.tiny.4d.txt", "glove.tiny.4d.txt.gz"])
def test_glove_found_missing_pad_unk(tmp_path, name):
    write_glove(tmp_path / name)
    res = load_glove(tmp_path / name, ["dog", "left", "zebra", "the", "dog", "at & t"], dim=4)
    vocab, vectors = res

    assert vocab.itos == ["<pad>", "<unk>", "dog", "left", "zebra", "the", "at & t"]
    assert vectors.shape == (7, 4) and vectors.dtype == np.float32
    for w in ("dog", "left", "the", "at & t"):
        np.testing.assert_array_equal(vectors[vocab.stoi[w]], np.float32(GLOVE[w]))
    np.testing.assert_array_equal(vectors[0], 0)
    found = np.float32([GLOVE[w] for w in ("dog", "left", "the", "at & t")])
    np.testing.assert_allclose(vectors[1], found.mean(axis=0), rtol=1e-6)
    assert res.missing == ["zebra"] and res.found == 4
    zebra = vectors[vocab.stoi["zebra"]]
    assert 0 < np.abs(zebra).max() < 1  # small random vector
    again = load_glove(tmp_path / name, ["dog", "left", "zebra", "the", "dog", "at & t"], dim=4)
    np.testing.assert_array_equal(again.vectors, vectors)  # seeded


def test_glove_stops_once_all_found(tmp_path):
    write_glove(tmp_path / "g.txt", tail="broken line\n")
    vocab, vectors = load_glove(tmp_path / "g.txt", ["the", "dog"], dim=4)
    np.testing.assert_array_equal(vectors[vocab.stoi["dog"]], np.float32(GLOVE["dog"]))
    with pytest.raises(PretrainedError, match=r"g.txt:7: 1 values, expected dim=4"):
        load_glove(tmp_path / "g.txt", ["the", "broken"], dim=4)


def test_glove_dim_mismatch(tmp_path):
    write_glove(tmp_path / "g.txt")
    with pytest.raises(PretrainedError, match="4-dimensional, expected dim=300"):
        load_glove(tmp_path / "g.txt", ["dog"])


def test_glove_from_the_authors_matrix(tmp_path):
    """Their data/<name>_emb.npy, row i = line i of the vocabulary_<name>.txt beside it."""
    (tmp_path / "vocabulary_Gref.txt").write_text("<pad>\n<go>\n<eos>\n<unk>\nred\ndog\n")
    np.save(tmp_path / "Gref_emb.npy", np.arange(6, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32))
    res = load_glove(tmp_path / "Gref_emb.npy", ["dog", "cat", "red"], dim=4)
    rows = {w: float(res.vectors[res.vocab.stoi[w], 0]) for w in ("<pad>", "<unk>", "red", "dog")}
    assert rows == {"<pad>": 0.0, "<unk>": 3.0, "red": 4.0, "dog": 5.0} and res.missing == ["cat"]
    with pytest.raises(PretrainedError, match="4-dimensional, expected dim=300"):
        load_glove(tmp_path / "Gref_emb.npy", ["dog"])


def test_init_word_embeddings(tmp_path):
    write_glove(tmp_path / "g.txt")
    vocab, vectors = load_glove(tmp_path / "g.txt", ["dog", "cat"], dim=4)
    cfg = CFG.replace(language=EncoderConfig(width=4, depth=1, heads=2, mlp_width=8))
    m = ReSTR(cfg, vocab_size=len(vocab))
    init_word_embeddings(m, vectors)
    assert torch.equal(m.language.word_embed.weight.data, torch.from_numpy(vectors))
    assert m.language.word_embed.weight.requires_grad  # fine-tuned by default

    with pytest.raises(PretrainedError, match=r"word vectors \(3, 4\) do not fit model.language.word_embed \(4, 4\)"):
        init_word_embeddings(m, vectors[:3])
