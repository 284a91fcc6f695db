"""The model against the paper's equations (docs/paper-to-code.md, "Equations" and "Decisions")."""

import math

import pytest
import torch
import torch.nn.functional as F

from restr.config import CONFIGS, get_config
from restr.modeling import ReSTR, patch_labels, restr_loss
from restr.modeling.transformer import TransformerLayer

VARIANTS = ["cme", "cme-shared", "vme", "ime"]


def tiny(variant="cme", **kw):
    return get_config("restr-tiny").replace(fusion_variant=variant, **kw)


def lively(model):
    """Weights large enough that every path visibly moves the output (the default init is near 0)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() > 1:
                p.copy_(noise / p.shape[-1] ** 0.5)
            else:  # LayerNorm gains stay near 1, biases near 0
                p.add_(0.1 * noise)
    return model.eval()


def inputs(b, size, vocab=30, n_words=(3, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, *size, generator=g) if isinstance(size, tuple) else torch.randn(b, 3, size, size, generator=g)
    words = torch.randint(2, vocab, (b, 20), generator=g)
    pad = torch.ones(b, 20, dtype=torch.bool)
    for i in range(b):
        pad[i, : n_words[i % len(n_words)]] = False
    words[pad] = 0
    return image, words, pad


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [96, 64, (48, 80)])
def test_output_shapes(variant, size):
    torch.manual_seed(0)
    model = ReSTR(tiny(variant), vocab_size=30).eval()
    image, words, pad = inputs(2, size)
    with torch.no_grad():
        pixel, patch = model(image, words, pad)
    h, w = image.shape[-2:]
    assert pixel.shape == (2, 1, h, w)
    assert patch.shape == (2, (h // 8) * (w // 8))
    assert torch.isfinite(pixel).all() and torch.isfinite(patch).all()


def test_restr_b16_shapes_at_small_input():
    torch.manual_seed(0)
    model = ReSTR(get_config("restr-b16"), vocab_size=10).eval()
    image, words, pad = inputs(1, 64, vocab=10)
    with torch.no_grad():
        pixel, patch = model(image, words, pad)
    assert pixel.shape == (1, 1, 64, 64) and patch.shape == (1, 16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_words_do_not_change_the_output(variant):
    model = lively(ReSTR(tiny(variant), vocab_size=30))
    image, words, pad = inputs(2, 96)
    other = words.clone()
    other[pad] = torch.randint(2, 30, (int(pad.sum()),))  # garbage where padding is
    with torch.no_grad():
        a, pa = model(image, words, pad)
        b, pb = model(image, other, pad)
        c, pc = model(image, other, torch.zeros_like(pad))  # the same words attended: must differ
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(pa, pb, rtol=0, atol=1e-5)
    assert (pa - pc).abs().max() > 1e-2 and (a - c).abs().max() > 1e-4


def classifier(model, image, words, pad):
    v, l = model.encode_image(image), model.encode_text(words, pad)
    return model.fusion(v, l, pad)[1]


@pytest.mark.parametrize("variant,depends", [("ime", False), ("cme", True), ("cme-shared", True), ("vme", True)])
def test_adaptive_classifier_sees_the_image_only_through_the_words(variant, depends):
    model = lively(ReSTR(tiny(variant), vocab_size=30))
    img1, words, pad = inputs(2, 96, seed=1)
    img2, _, _ = inputs(2, 96, seed=2)
    with torch.no_grad():
        e1, e2 = classifier(model, img1, words, pad), classifier(model, img2, words, pad)
    assert e1.shape == (2, 1, model.cfg.fusion.width)
    diff = (e1 - e2).abs().max().item()
    assert (diff > 1e-2) if depends else (diff == 0.0)


def test_shared_variant_has_two_layers_fewer():
    full = sum(p.numel() for p in ReSTR(tiny("cme"), 30).parameters())
    shared = sum(p.numel() for p in ReSTR(tiny("cme-shared"), 30).parameters())
    f = tiny().fusion
    layer = sum(p.numel() for p in TransformerLayer(f.width, f.heads, f.mlp_width).parameters())
    assert full - shared == 2 * layer


def test_shared_variant_reuses_one_layer():
    model = ReSTR(tiny("cme-shared"), 30)
    assert len(model.fusion.visual_linguistic.blocks) == 1 and model.fusion.visual_linguistic.depth == 2
    assert len(model.fusion.linguistic_seed.blocks) == 1 and model.fusion.linguistic_seed.depth == 2


def test_patch_prediction_is_eq9():
    from restr.modeling.decoder import patch_logits

    z = torch.randn(2, 5, 16)
    e = torch.randn(2, 1, 16)
    expected = torch.einsum("bnd,bd->bn", z, e[:, 0]) / 4.0
    torch.testing.assert_close(patch_logits(z, e), expected)


def test_patch_labels_follow_tau():
    mask = torch.zeros(1, 1, 16, 16)
    mask[0, 0, :8, :8] = 1  # patch 0 full
    mask[0, 0, :8, 8 : 8 + 6] = 1  # patch 1: 48 of 64 pixels = 0.75
    mask[0, 0, 8:, :7] = 1  # patch 2: 56 of 64 = 0.875
    assert patch_labels(mask, 8, tau=0.8).tolist() == [[1.0, 0.0, 1.0, 0.0]]
    assert patch_labels(mask, 8, tau=0.7).tolist() == [[1.0, 1.0, 1.0, 0.0]]
    assert patch_labels(mask, 8, tau=0.875).tolist() == [[1.0, 0.0, 0.0, 0.0]]  # strictly greater


def test_loss_equals_hand_computation():
    g = torch.Generator().manual_seed(0)
    pixel = torch.randn(2, 1, 16, 16, generator=g)
    patch = torch.randn(2, 4, generator=g)
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.3).float()
    out = restr_loss(pixel, patch, mask, patch_size=8, tau=0.8, lam=0.1)

    def bce(logit, y):
        p = 1 / (1 + math.exp(-logit))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    labels = [
        [float(mask[b, 0, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8].mean() > 0.8) for r in range(2) for c in range(2)]
        for b in range(2)
    ]
    patch_bce = sum(bce(patch[b, i].item(), labels[b][i]) for b in range(2) for i in range(4)) / 8
    pixel_bce = sum(bce(l, y) for l, y in zip(pixel.flatten().tolist(), mask.flatten().tolist())) / pixel.numel()
    assert out["patch_loss"].item() == pytest.approx(patch_bce, rel=1e-5)
    assert out["pixel_loss"].item() == pytest.approx(pixel_bce, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.1 * patch_bce + pixel_bce, rel=1e-5)


def test_decoder_upsamples_then_halves_channels():
    model = ReSTR(get_config("restr-b16").replace(image_size=64), 10)
    widths = [(b.linear.in_features, b.linear.out_features) for b in model.decoder.blocks]
    assert widths == [(1536, 768), (768, 384), (384, 192), (192, 96)]
    assert model.decoder.head.in_features == 96 and model.decoder.head.out_features == 1


def test_linear_first_decoder_is_the_same_function_at_a_quarter_of_the_macs():
    from restr.accounting import analytic_macs, count

    cfg = tiny(decoder_linear_first=False)
    paper, fast = ReSTR(cfg, 30), ReSTR(cfg.replace(decoder_linear_first=True), 30)
    fast.load_state_dict(lively(paper).state_dict())
    image, words, pad = inputs(2, cfg.image_size)
    with torch.no_grad():
        for a, b in zip(paper.eval()(image, words, pad), fast.eval()(image, words, pad)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    head = cfg.image_size**2 * paper.decoder.head.in_features + cfg.num_patches * cfg.fusion.width
    for model in (paper, fast):
        counted = count(model, cfg.image_size)
        assert counted.macs == analytic_macs(model.cfg)
    blocks = [analytic_macs(m.cfg)["decoder"] - head for m in (paper, fast)]
    assert blocks[1] * 4 == blocks[0]


def test_masked_features_are_eq10():
    """The decoder consumes [v, z_v' * sigmoid(y_p)]: zeroing y_p's sigmoid must zero z_v's half."""
    torch.manual_seed(0)
    model = ReSTR(tiny(), 30).eval()
    dec = model.decoder
    v, z = torch.randn(1, 144, 96), torch.randn(1, 144, 96)
    with torch.no_grad():
        out_neg = dec(v, z, torch.full((1, 144), -1e4), (12, 12))
        out_zero_z = dec(v, torch.zeros_like(z), torch.zeros(1, 144), (12, 12))
    torch.testing.assert_close(out_neg, out_zero_z, rtol=0, atol=1e-5)


def test_language_mlp_width_follows_the_parameter_count():
    cfg = get_config("restr-b16")
    assert cfg.language.mlp_width == 1200 and cfg.language.heads == 12 and cfg.language.width == 300
    assert cfg.vision.width == 768 and cfg.vision.depth == 12 and cfg.fusion.depth == 4


def test_named_configs_and_validation():
    assert {"restr-b16", "restr-b16-shared", "restr-b16-vme", "restr-b16-ime", "restr-tiny"} <= set(CONFIGS)
    assert [get_config(n).fusion_variant for n in ("restr-b16", "restr-b16-shared", "restr-b16-vme", "restr-b16-ime")] == VARIANTS
    with pytest.raises(ValueError, match="divisible"):
        get_config("restr-b16").replace(image_size=100)
    with pytest.raises(KeyError, match="known"):
        get_config("restr-nope")
    cfg = get_config("restr-tiny")
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_layer_norms_are_real_layer_norms():
    """TensorRT keeps LayerNorm in FP32 only when it sees one: every norm is an nn.LayerNorm."""
    model = ReSTR(tiny(), 30)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    # 2 per layer + 1 per stack: vision 4 layers, language 2, fusion 4 (in two stacks)
    assert len(norms) == (2 * 4 + 1) + (2 * 2 + 1) + (2 * 4 + 2)


def test_other_input_size_interpolates_position_embedding():
    torch.manual_seed(0)
    model = ReSTR(tiny(), 30).eval()
    image, words, pad = inputs(1, 96)
    small = F.interpolate(image, size=(64, 64))
    with torch.no_grad():
        pixel, _ = model(small, words, pad)
    assert pixel.shape == (1, 1, 64, 64)


def test_fusion_inputs_start_at_unit_scale():
    # The projections read unit-norm tokens; at std 0.02 the fusion inputs were ~0.02 and drowned.
    cfg = get_config("restr-tiny")
    torch.manual_seed(0)
    m = ReSTR(cfg, 30)
    with torch.no_grad():
        v = m.encode_image(torch.randn(2, 3, cfg.image_size, cfg.image_size))
        l = m.encode_text(torch.randint(2, 30, (2, 5)), torch.zeros(2, 5, dtype=torch.bool))
    assert 0.8 < float(v.std()) < 1.2 and 0.8 < float(l.std()) < 1.2


def test_sincos_position_code_is_fixed():
    cfg = tiny(vision_pos_embed="sincos")
    model = ReSTR(cfg, 30)
    from restr.modeling.vision_encoder import sincos_2d
    from restr.train import TrainConfig, build_optimizer

    torch.testing.assert_close(model.vision.pos_embed[0], sincos_2d((cfg.grid, cfg.grid), cfg.vision.width))
    image, words, pad = inputs(2, cfg.image_size)
    model(image, words, pad)[0].sum().backward()
    assert model.vision.pos_embed.grad is None
    optimised = {id(p) for g in build_optimizer(model, TrainConfig(10, 2, 1e-3)).param_groups for p in g["params"]}
    assert id(model.vision.pos_embed) not in optimised and id(model.vision.patch_embed.proj.weight) in optimised
    assert ReSTR(tiny(vision_pos_embed="learned"), 30).vision.pos_embed.requires_grad
    with pytest.raises(ValueError, match="vision_pos_embed"):
        tiny(vision_pos_embed="rope")


@pytest.mark.parametrize("name", ["restr-b16-authors", "restr-b16-shared-authors"])
def test_authors_variant_is_counted_in_every_component(name):
    """Their class token, language output layers and patch projections: each parameter belongs to a
    component, and the counted MACs equal the formula's (restr-bench --config restr-b16-authors)."""
    from restr.accounting import analytic_macs, count

    cfg = get_config(name)
    with torch.device("meta"):
        model = ReSTR(cfg, 100)
    counted = count(model, cfg.image_size)
    assert counted.macs == analytic_macs(cfg)
    assert analytic_macs(cfg)["decoder"] > analytic_macs(get_config("restr-b16"))["decoder"]  # P_patch, P_cls
