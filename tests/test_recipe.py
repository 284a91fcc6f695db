"""Where a user could silently get another run than the paper's (issue 14, items 14-16)."""

import dataclasses

import pytest
import torch

from restr.config import get_config
from restr.modeling import ReSTR
from restr.modeling.drop_path import DropPath
from restr.train import TRAIN_DEFAULTS, UsageError, check_pretrained, per_process_batch


def small_b16(**kw):
    """restr-b16's recipe fields at a width that builds in milliseconds."""
    b16 = get_config("restr-b16")
    shrink = dict(width=48, heads=4, mlp_width=96)
    return b16.replace(
        image_size=32,
        vision=dataclasses.replace(b16.vision, depth=3, **shrink),
        language=dataclasses.replace(b16.language, width=24, depth=1, heads=2, mlp_width=48),
        fusion=dataclasses.replace(b16.fusion, **shrink),
        **kw,
    )


def forward(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, model.cfg.image_size, model.cfg.image_size, generator=g)
    words = torch.randint(2, 30, (2, 20), generator=g)
    pad = torch.zeros(2, 20, dtype=torch.bool)
    pad[:, 5:] = True
    return model(image, words, pad)[0]


def rates(stack):
    return [b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0 for b in stack.blocks]


def test_b16_follows_the_authors_where_the_paper_is_silent():
    b16 = get_config("restr-b16")
    assert b16.vision.drop_path == 0.1 and b16.fusion.drop_path == 0.1 and b16.language.drop_path == 0.0
    assert TRAIN_DEFAULTS["restr-b16"].grad_clip == 0.0  # the authors do not clip
    for name in ("restr-b16-shared", "restr-b16-vme", "restr-b16-ime"):
        assert (
            get_config(name).vision.drop_path == b16.vision.drop_path
            and get_config(name).fusion_projection_std == b16.fusion_projection_std
        )
    torch.manual_seed(0)
    model = ReSTR(small_b16(), 30)
    w = torch.cat([model.fusion.vision_proj.weight.detach().flatten(), model.fusion.language_proj.weight.detach().flatten()])
    assert float(w.std()) == pytest.approx(b16.fusion_projection_std, rel=0.1)
    # one ramp from 0 to the maximum over each stack; the fusion encoder's two halves share one ramp
    v = rates(model.vision.encoder)
    assert v[0] == 0.0 and v[-1] == pytest.approx(b16.vision.drop_path) and v == sorted(v)
    f = rates(model.fusion.visual_linguistic) + rates(model.fusion.linguistic_seed)
    assert f[0] == 0.0 and f[-1] == pytest.approx(b16.fusion.drop_path) and f == sorted(f) and len(set(f)) == len(f)
    assert set(rates(model.language.encoder)) == {0.0}


def test_drop_path_acts_in_training_only():
    torch.manual_seed(0)
    model = ReSTR(small_b16(), 30)
    model.train()
    torch.manual_seed(1)
    a = forward(model)
    torch.manual_seed(2)
    b = forward(model)
    assert not torch.allclose(a, b)  # some sample lost a branch in one of the two passes
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(forward(model), forward(model))


def test_tiny_keeps_its_measured_choices():
    tiny = get_config("restr-tiny")
    assert tiny.vision.drop_path == tiny.fusion.drop_path == 0.0 and TRAIN_DEFAULTS["restr-tiny"].grad_clip > 0
    torch.manual_seed(0)
    model = ReSTR(tiny, 30).train()
    assert not any(isinstance(m, DropPath) for m in model.modules())  # nothing random in a training pass
    torch.testing.assert_close(forward(model, 0), forward(model, 0))
    assert float(model.fusion.vision_proj.weight.detach().std()) == pytest.approx(tiny.fusion_projection_std, rel=0.1)
    with pytest.raises(ValueError, match="drop_path"):
        dataclasses.replace(tiny.vision, drop_path=1.0)


def test_old_checkpoint_configs_load_with_the_old_behaviour():
    from restr.config import ReSTRConfig

    d = get_config("restr-tiny").to_dict()
    for key in ("vision", "language", "fusion"):
        d[key].pop("drop_path")
    d.pop("fusion_projection_std")
    assert ReSTRConfig.from_dict(d) == get_config("restr-tiny")


def test_batch_size_is_global_and_must_divide():
    assert per_process_batch(8, 1) == 8 and per_process_batch(64, 8) == 8
    with pytest.raises(UsageError, match=r"--batch-size 10 .* 4 processes: use 8 or 12"):
        per_process_batch(10, 4)
    with pytest.raises(UsageError, match="use 4"):
        per_process_batch(3, 4)


def test_b16_refuses_random_weights_unless_told():
    b16 = TRAIN_DEFAULTS["restr-b16"]
    with pytest.raises(UsageError, match="--pretrained-vit and --glove.*--from-scratch"):
        check_pretrained(b16, "restr-b16", None, None, from_scratch=False)
    with pytest.raises(UsageError, match="give --glove"):
        check_pretrained(b16, "restr-b16", "vit.npz", None, from_scratch=False)
    check_pretrained(b16, "restr-b16", None, None, from_scratch=True)
    check_pretrained(b16, "restr-b16", "vit.npz", "glove.txt", from_scratch=False)
    check_pretrained(TRAIN_DEFAULTS["restr-tiny"], "restr-tiny", None, None, from_scratch=False)
