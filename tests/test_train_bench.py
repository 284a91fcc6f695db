"""restr-bench --train: the MFU arithmetic against the MACs table, the choices, the JPEG data set
and its loader, the command on a CPU, and benchmarks/gpu_train.sh run small on a CPU."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from restr.benchmarks.cli import main as bench_main
from restr.benchmarks.train_bench import (
    choices_for,
    counting_value_reads,
    mfu,
    parse_choices,
    projection,
    training_flops,
    write_photo_refer,
)
from restr.config import get_config
from restr.train import TRAIN_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def test_mfu_is_six_forward_macs_per_image_over_the_peak():
    """restr-b16 at 480, batch 8: 6 x the MACs of restr.accounting (checked there against the
    formula and the paper) x 8 FLOPs a step; MFU, the projection and who bounds it, by hand."""
    from restr.accounting import analytic_macs

    cfg = get_config("restr-b16")
    macs, flops = training_flops(cfg, 8)
    assert macs == sum(analytic_macs(cfg, 480).values()) and 125.0e9 < macs < 126.0e9  # 2.4x the 52 GMACs at 320
    assert flops == 6 * macs * 8
    assert mfu(flops, 20.0, 750_000.0) == pytest.approx(flops / 0.020 / 750e12)
    assert mfu(flops, None, 750_000.0) is None and mfu(flops, 20.0, None) is None
    recipe = TRAIN_DEFAULTS["restr-b16"]
    fast_loader = projection(recipe, 20.0, {"images_per_s": 800.0}, 8)
    assert fast_loader["hours"] == pytest.approx(400_000 * 0.020 / 3600) and fast_loader["bound_by"] == "step"
    slow_loader = projection(recipe, 20.0, {"images_per_s": 200.0}, 8)  # 40 ms a batch
    assert slow_loader["hours"] == pytest.approx(400_000 * 0.040 / 3600) and slow_loader["bound_by"] == "loader"


def test_each_choice_changes_one_setting_of_the_trainers_default(monkeypatch):
    cpu = choices_for(torch.device("cpu"))
    assert [c.label for c in cpu] == ["default", "bf16 autocast", "fused AdamW", "math attention", "torch.compile"]
    assert (cpu[0].precision, cpu[0].fused_adamw, cpu[0].tf32, cpu[0].attention, cpu[0].compile) == (
        "fp32",
        False,
        False,
        "fused",
        False,
    )
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    gpu = choices_for(torch.device("cuda", 0))
    default = gpu[0]
    assert (default.precision, default.fused_adamw, default.tf32) == ("bf16", True, True)
    assert [c.label for c in gpu] == [
        "default",
        "fp32 (TF32)",
        "fp16 + loss scaler",
        "fp32 (no TF32)",
        "foreach AdamW",
        "math attention",
        "torch.compile",
    ]
    expected = {
        "fp32 (TF32)": {"precision"},
        "fp16 + loss scaler": {"precision"},
        "fp32 (no TF32)": {"precision", "tf32"},
        "foreach AdamW": {"fused_adamw"},
        "math attention": {"attention"},
        "torch.compile": {"compile"},
    }
    for c in gpu[1:]:
        assert {
            k for k in ("precision", "tf32", "fused_adamw", "attention", "compile") if getattr(c, k) != getattr(default, k)
        } == expected[c.label]
    assert (
        parse_choices("all") == parse_choices("")
        and parse_choices("none") == ()
        and parse_choices("compile,tf32") == ("compile", "tf32")
    )
    with pytest.raises(ValueError, match="unknown choice fp8"):
        parse_choices("precision,fp8")


def test_value_reads_are_counted():
    """The counter behind the no-host-sync checks sees every way a value reaches Python."""
    t = torch.ones(2)
    with counting_value_reads() as reads:
        t.sum().item(), t.tolist(), float(t[0]), int(t[0]), bool(t[0]), t.numpy()
        [0, 1][torch.tensor(1)]  # a tensor as a Python index: __index__
        t.add(1)  # computes, reads nothing
    assert {k: v for k, v in reads.items() if v} == {
        "item": 1,
        "tolist": 1,
        "__float__": 1,
        "__int__": 1,
        "__bool__": 1,
        "numpy": 1,
        "__index__": 1,
    }
    assert torch.ones(1).item() == 1.0  # the methods are back


def test_photo_data_set_is_real_jpegs_the_training_loader_reads(tmp_path):
    from restr.benchmarks.train_bench import loader_throughput
    from restr.data import build_dataset

    folder = write_photo_refer(tmp_path / "photos", images=8)
    jpegs = sorted((folder / "images").glob("*.jpg"))
    assert len(jpegs) == 8 and all(Image.open(p).format == "JPEG" and Image.open(p).size == (640, 480) for p in jpegs)
    assert 60_000 < jpegs[0].stat().st_size < 250_000  # a COCO photo's order of size, not a flat colour
    train = build_dataset(str(folder), "train", 64, None, (0.5,) * 3, (0.5,) * 3)
    assert len(train) == 6 * 2 * 2 and len(build_dataset(str(folder), "val", 64, train.vocab, (0.5,) * 3, (0.5,) * 3)) == 4
    item = train[0]
    assert item["image"].shape == (3, 64, 64) and 0 < float(item["mask"].mean()) < 1
    stamp = (folder / "images" / "photo_000000.jpg").stat().st_mtime_ns
    assert (
        write_photo_refer(folder, images=8) == folder and (folder / "images" / "photo_000000.jpg").stat().st_mtime_ns == stamp
    )  # kept
    r = loader_throughput(
        folder, get_config("restr-tiny").replace(image_size=64), batch=4, workers=1, device=torch.device("cpu"), batches=6
    )
    assert r["images_per_s"] > 0 and r["batches_timed"] == 6 and r["options"]["persistent_workers"] and r["samples"] == 24


def _bench(args):
    return CliRunner().invoke(bench_main, [str(a) for a in args], catch_exceptions=False)


def test_train_bench_on_the_cpu(tmp_path):
    """The whole report at a small size: every choice timed, MFU against the FP32 peak of the run,
    no host sync in the step, the fused attention kernel, the loader, the projection."""
    torch.set_num_threads(1)
    out = tmp_path / "train.json"
    r = _bench(
        [
            "--train",
            "--config",
            "restr-tiny",
            "--image-size",
            32,
            "--batch-size",
            4,
            "--device",
            "cpu",
            "--steps",
            5,
            "--warmup",
            1,
            "--choices",
            "precision,optimizer,attention",
            "--workers",
            1,
            "--gemm-size",
            64,
            "--threads",
            1,
            "--photos",
            tmp_path / "photos",
            "--no-progress",
            "--json",
            out,
        ]
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert [c["label"] for c in doc["choices"]] == ["default", "bf16 autocast", "fused AdamW", "math attention"]
    assert doc["flops_per_step"] == 6 * doc["forward_macs_per_image"] * 4 and doc["gemm"]["dtype"] == "float32"
    for c in doc["choices"]:
        assert c["ms_per_step"]["n"] == 1 and c["mfu"] == pytest.approx(
            doc["flops_per_step"] / (c["ms_per_step"]["median"] / 1000) / (doc["gemm"]["peak_gflops"] * 1e9)
        )
        assert c["images_per_s"] == pytest.approx(4000 / c["ms_per_step"]["median"])
        assert c["paired_of_default"] == pytest.approx(c["speedup_of_default"])  # one round: the same ratio
    assert doc["host_syncs"]["per_step"] == 0
    assert doc["attention_ops"] == {
        "_scaled_dot_product_flash_attention_for_cpu": 10,
        "_scaled_dot_product_flash_attention_for_cpu_backward": 10,
    }
    assert doc["loader"]["workers"] == 1 and doc["loader"]["images_per_s"] > 0 and (tmp_path / "photos" / "refs(unc).p").is_file()
    assert doc["projection"]["iterations"] == 3600 and doc["projection"]["hours"] > 0
    for text in ("MFU", "data loader alone", "projected: 3,600 iterations", "host synchronisations per step: 0"):
        assert text in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train", "--macs"], "--train runs alone"),
        (["--train", "--choices", "precision,fp8"], "unknown choice fp8"),
        (["--train", "--config", "restr-huge"], "unknown config"),
        (["--train", "--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_train_bench_refuses_bad_input_in_one_line(args, message):
    r = _bench(args)
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_train_bench_every_choice_at_restr_tiny_size():
    """`restr-bench --train` at restr-tiny's own size and batch on the CPU, torch.compile included."""
    r = _bench(["--train", "--config", "restr-tiny", "--device", "cpu", "--steps", 10, "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "torch.compile" in r.output and "projected: 3,600 iterations" in r.output


@pytest.mark.slow
def test_gpu_train_script_runs_small_on_a_cpu(tmp_path):
    """benchmarks/gpu_train.sh as a lent GPU runs it, at a small size on the CPU (make demo left out:
    it trains for a quarter of an hour on a CPU)."""
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "CONFIG": "restr-tiny",
        "SIZE": "32",
        "BATCH": "4",
        "STEPS": "5",
        "CHOICES": "precision,optimizer",
        "ITERATIONS": "6",
        "DEMO": "0",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_train.sh"), str(tmp_path / "gt")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "gt" / "summary.json").read_text())
    assert summary["bench"]["config"] == "restr-tiny" and summary["bench"]["host_syncs_per_step"] == 0
    assert summary["ddp"]["distributed"] == "gloo" and summary["ddp"]["max_abs_loss_difference"] == 0.0
    assert (
        summary["resume"]["max_abs_weight_difference"] < 1e-6 and summary["resume"]["same_steps"] and summary["ddp"]["same_steps"]
    )
    assert summary["trainer"]["ms_per_step"] > 0 and summary["trainer"]["runtime"]["precision"] == "fp32"
    assert "demo" not in summary
