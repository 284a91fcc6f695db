"""Training loop, schedule, exact resume, torchrun/gloo, and restr-eval as users run them."""

import json
import os
import subprocess
import sys

import pytest
import torch

from restr.checkpoint import load_checkpoint
from restr.config import get_config
from restr.train import EpochSampler, TrainConfig, lr_factor, train

SMALL = {"train": 24, "val": 4, "test": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from restr.data import make_synthetic

    return str(make_synthetic(tmp_path_factory.mktemp("data") / "synthetic", seed=0, sizes=SMALL))


def small_cfg():
    # restr-tiny's structure at a smaller input, to keep CI fast
    return get_config("restr-tiny").replace(image_size=32)


def tc(**kw):
    base = dict(iterations=6, batch_size=4, lr=1e-3, val_every=3, val_limit=4, ckpt_every=3, log_every=1)
    return TrainConfig(**{**base, **kw})


def test_schedule_warms_up_then_decays_polynomially():
    t = TrainConfig(iterations=100, batch_size=1, lr=1.0)
    assert lr_factor(0, t) == 0.0 and lr_factor(5, t) == pytest.approx(0.5) and lr_factor(10, t) == pytest.approx(1.0)
    assert lr_factor(55, t) == pytest.approx(0.5**0.9)
    assert lr_factor(100, t) == 0.0


def test_sampler_resumes_at_the_same_sample():
    full = EpochSampler(50, 4, seed=3)
    full.set_position(2, 0)
    order = list(full)
    part = EpochSampler(50, 4, seed=3)
    part.set_position(2, 5)
    assert list(part) == order[20:]
    ranks = [EpochSampler(50, 4, seed=3, rank=r, world=2) for r in (0, 1)]
    for r in ranks:
        r.set_position(2, 0)
    a, b = (set(r) for r in ranks)
    assert not a & b and len(a) == len(b) == 24


def test_train_writes_checkpoints_and_log(tmp_path, data):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    path = train(small_cfg(), tc(warmup_fraction=0.5), data, out, device="cpu", workers=0, progress=False)
    assert path == out / "model.pt"
    ck = load_checkpoint(path)
    assert ck.config.image_size == 32 and ck.meta["step"] == 6 and ck.meta["data"] == data
    obj = torch.load(path, weights_only=True)  # loads under weights_only
    assert set(obj) >= {"format", "config", "vocab", "model", "meta"}
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if r.get("split") == "val"] == [3, 6]
    lrs = [r["lr"] for r in records if "loss" in r]
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1e-3 * 2 / 3) and lrs[3] == pytest.approx(1e-3)  # warm-up over 3
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_resume_continues_exactly(tmp_path, data):
    torch.set_num_threads(1)
    whole = train(small_cfg(), tc(), data, tmp_path / "a", device="cpu", workers=0, progress=False)
    train(small_cfg(), tc(), data, tmp_path / "b", device="cpu", workers=0, progress=False, stop_after=4)
    assert not (tmp_path / "b" / "model.pt").exists()
    resumed = train(small_cfg(), tc(), data, tmp_path / "b", device="cpu", workers=0, progress=False, resume=True)
    a, b = load_checkpoint(whole).model.state_dict(), load_checkpoint(resumed).model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_resume_accepts_a_run_json_written_before_new_fields(tmp_path, data):
    """`make demo` resumes runs/demo: a run.json without fields added since must not read as another run."""
    torch.set_num_threads(1)
    out = tmp_path / "b"
    train(small_cfg(), tc(), data, out, device="cpu", workers=0, progress=False, stop_after=3)
    run = json.loads((out / "run.json").read_text())
    for key in ("vision", "language", "fusion"):
        del run["config"][key]["drop_path"]
    del run["config"]["fusion_projection_std"], run["train"]["expects_pretrained"]
    (out / "run.json").write_text(json.dumps(run))
    assert train(small_cfg(), tc(), data, out, device="cpu", workers=0, progress=False, resume=True) == out / "model.pt"
    with pytest.raises(Exception, match="different run"):
        train(small_cfg(), tc(lr=2e-3), data, out, device="cpu", workers=0, progress=False, resume=True)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_cli_refuses_a_folder_holding_another_run(tmp_path, data):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    r = run_cli("-m", "restr.train", "--config", "restr-tiny", "--data", data, "--out", str(out), "--iterations", "2")
    assert r.returncode == 2 and "holds a run already" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("-m", "restr.train", "--config", "restr-tiny", "--data", data, "--out", str(out), "--resume", "--iterations", "2")
    assert r.returncode == 2 and "different run" in r.stderr


def test_cli_missing_data_folder(tmp_path):
    r = run_cli("-m", "restr.train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_torchrun_gloo_two_processes(tmp_path, data):
    """--batch-size is the global batch: two processes take half each, and say so at the start."""
    out = tmp_path / "ddp"
    code = (
        "import torch; torch.set_num_threads(1);"
        "from restr.train import train, TrainConfig; from restr.config import get_config;"
        f"train(get_config('restr-tiny').replace(image_size=32), TrainConfig(iterations=4, batch_size=4, lr=1e-3, val_every=2, val_limit=4, ckpt_every=2, log_every=1),"
        f" {data!r}, {str(out)!r}, device='cpu', workers=0, progress=False)"
    )
    script = tmp_path / "job.py"
    script.write_text(code)
    r = run_cli("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517", str(script))
    assert r.returncode == 0, r.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["train"]["batch_size"] == 4 and run["world_size"] == 2 and run["batch_per_process"] == 2
    assert r.stderr.count("batch 4 (2 per process x 2 processes), LR 0.001") == 1  # rank 0 alone prints
    ck = load_checkpoint(out / "model.pt")
    assert ck.meta["step"] == 4
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]  # rank 0 alone writes
    val = [r for r in records if r.get("split") == "val"]
    assert val and all(r["n"] == 4 for r in val)  # both ranks' shares gathered


def test_torchrun_refuses_a_batch_that_does_not_split(tmp_path, data, monkeypatch):
    """Checked from torchrun's environment before the process group starts, so every rank fails alike."""
    from click.testing import CliRunner

    from restr.train import main

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = CliRunner().invoke(main, ["--data", data, "--out", str(tmp_path / "run"), "--batch-size", "3", "--iterations", "2"])
    assert r.exit_code == 2
    assert (
        r.stderr
        == "restr-train: error: --batch-size 3 is the global batch and does not split evenly across 2 processes: use 2 or 4\n"
    )
    assert not (tmp_path / "run").exists()


def test_b16_without_pretrained_weights_is_refused(tmp_path):
    from click.testing import CliRunner

    from restr.train import main

    r = CliRunner().invoke(main, ["--config", "restr-b16", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "--from-scratch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_progress_written_to_a_file_is_plain_lines(tmp_path, data, capsys, monkeypatch):
    """Not a terminal: a progress line per interval and a line per validation, never carriage returns."""
    torch.set_num_threads(1)
    monkeypatch.setenv("RESTR_PROGRESS_INTERVAL", "0")
    path = train(small_cfg(), tc(), data, tmp_path / "run", device="cpu", workers=0, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and path.exists()
    lines = err.splitlines()
    progress = [l for l in lines if l.startswith("train ")]
    assert [l.split()[1] for l in progress] == [f"{i}/6" for i in range(1, 7)]
    assert "loss=" in progress[-1] and "it/s" in progress[-1]
    val = [l for l in lines if l.startswith("val step ")]
    assert [l.split(":")[0] for l in val] == ["val step 3", "val step 6"] and all(
        "overall IoU" in l and "mean IoU" in l for l in val
    )
    capsys.readouterr()
    train(small_cfg(), tc(), data, tmp_path / "quiet", device="cpu", workers=0, progress=False)
    err = capsys.readouterr().err
    assert not [l for l in err.splitlines() if l.startswith("train ")] and err.count("val step") == 2


def test_eval_cli_json_and_control(tmp_path, data):
    torch.set_num_threads(1)
    ckpt = train(small_cfg(), tc(iterations=2, val_every=2), data, tmp_path / "run", device="cpu", workers=0, progress=False)
    out = tmp_path / "eval.json"
    r = run_cli("-m", "restr.evaluate", "--ckpt", str(ckpt), "--data", f"{data}:test", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert set(res) >= {"overall_iou", "mean_iou", "precision_at", "by_length", "n"}
    assert set(res["precision_at"]) == {"0.5", "0.6", "0.7", "0.8", "0.9"}
    assert "overall IoU" in r.stdout and "mean IoU" in r.stdout
    r = run_cli(
        "-m",
        "restr.evaluate",
        "--ckpt",
        str(ckpt),
        "--data",
        f"{data}:test",
        "--shuffle-text",
        "--json",
        str(tmp_path / "s.json"),
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s.json").read_text())["shuffle_text"] is True


def test_eval_cli_errors(tmp_path, data):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run_cli("-m", "restr.evaluate", "--ckpt", str(bad), "--data", f"{data}:test", "--json", str(tmp_path / "e.json"))
    assert r.returncode == 2 and "not a readable checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "e.json").exists()
    assert "not a PyTorch file" in r.stderr


def test_tensorboard_scalars_when_installed(tmp_path, monkeypatch):
    """tensorboard is optional: with it, every logged number also becomes a scalar."""
    import types

    from restr.train import RunFolder

    calls = []

    class FakeWriter:
        def __init__(self, logdir):
            calls.append(("dir", logdir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    folder = RunFolder(tmp_path)
    folder.log({"step": 5, "loss": 0.5, "lr": 1e-3})
    folder.log({"step": 10, "split": "val", "overall_iou": 0.25, "n": 4})
    assert calls == [
        ("dir", str(tmp_path / "tensorboard")),
        ("train/loss", 0.5, 5),
        ("train/lr", 1e-3, 5),
        ("val/overall_iou", 0.25, 10),
        ("val/n", 4, 10),
    ]


def test_kill_9_never_leaves_half_a_checkpoint(tmp_path, data):
    """Checkpoints are written to a temporary name and renamed: a SIGKILL mid-write leaves the old one."""
    import signal
    import time

    out = tmp_path / "run"
    code = (
        "import torch; torch.set_num_threads(1);"
        "from restr.train import train, TrainConfig; from restr.config import get_config;"
        "train(get_config('restr-tiny').replace(image_size=32), TrainConfig(iterations=10000, batch_size=2, lr=1e-3,"
        f" val_every=10**6, ckpt_every=1, log_every=1), {data!r}, {str(out)!r}, device='cpu', workers=0, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.7)  # checkpoints are being rewritten every iteration now
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ck = load_checkpoint(out / "last.pt")  # whole, whatever moment the kill hit
    assert ck.meta["step"] >= 1 and ck.train_state["step"] == ck.meta["step"]


# --- the GPU-speed choices, checked where a CPU can --------------------------------------------------


def test_precision_optimizer_and_loader_follow_the_device(monkeypatch):
    """auto: BF16 on a GPU with BF16, FP16 (with a loss scaler) on one without, FP32 on a CPU;
    fused AdamW and a pinned, persistent, prefetching loader on a GPU only."""
    import contextlib

    from restr.train import UsageError, build_optimizer, default_workers, fused_adamw, loader_options, resolve_precision

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UsageError, match="fp16 .* GPU only"):
        resolve_precision("fp16", cpu)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla V100")
    for native, auto in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(
            torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n and not including_emulation
        )
        assert resolve_precision("auto", gpu) == auto and resolve_precision("fp32", gpu) == "fp32"
    with pytest.raises(UsageError, match="Tesla V100 has no BF16"):
        resolve_precision("bf16", gpu)

    assert fused_adamw(gpu) and not fused_adamw(cpu)
    model = torch.nn.Linear(2, 2)
    assert build_optimizer(model, tc(), fused=True).defaults["fused"] is True
    assert not build_optimizer(model, tc()).defaults["fused"]

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_workers(cpu) == 2 and default_workers(gpu) == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's processes on this node share its CPUs
    assert default_workers(gpu) == 3
    assert loader_options(gpu, 3) == {
        "num_workers": 3,
        "drop_last": True,
        "pin_memory": True,
        "persistent_workers": True,
        "prefetch_factor": 4,
    }
    assert loader_options(cpu, 0) == {"num_workers": 0, "drop_last": True, "pin_memory": False}


def _step_setup(precision="fp32", fused=True, grad_clip=1.0):
    from restr.benchmarks.train_bench import make_batch
    from restr.modeling import ReSTR
    from restr.train import TrainStep, build_optimizer

    torch.manual_seed(0)
    cfg = small_cfg()
    model = ReSTR(cfg, 40).train()
    t = tc(grad_clip=grad_clip)
    step = TrainStep(model, model, build_optimizer(model, t, fused=fused), t, torch.device("cpu"), precision)
    return model, step, make_batch(cfg, 4, 40, pin=False)


def test_bf16_autocast_trains_on_the_cpu():
    """--precision bf16: the matrix products run in BF16, the weights, the loss and the update stay FP32."""
    torch.set_num_threads(1)
    model, step, batch = _step_setup("bf16")
    seen = set()
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.add(o.dtype)) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = [step(batch, 3 + i) for i in range(3)]
    for h in hooks:
        h.remove()
    assert seen == {torch.bfloat16}
    assert all(v.dtype == torch.float32 for v in losses[-1].values()) and all(torch.isfinite(v) for v in losses[-1].values())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.equal(before["fusion.vision_proj.weight"], model.state_dict()["fusion.vision_proj.weight"])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_step_never_waits_for_the_device(precision):
    """No value of a tensor reaches Python inside a step (each would be a host sync on a GPU), with
    clipping and the FP16 loss scaler too; reading the losses at a log step is one read."""
    from restr.benchmarks.train_bench import counting_value_reads
    from restr.train import read_losses

    torch.set_num_threads(1)
    _, step, batch = _step_setup(precision)
    step(batch, 3)
    with counting_value_reads() as reads:
        losses = [step(batch, 4 + i) for i in range(2)][-1]
    assert sum(reads.values()) == 0, reads
    with counting_value_reads() as reads:
        values = read_losses(losses)
    assert sum(reads.values()) == 1 and set(values) == {"loss", "patch_loss", "pixel_loss", "grad_norm"}
    if precision == "fp16":  # the scaler's own overflow check without a fused optimizer: a read per step
        _, step, batch = _step_setup(precision, fused=False)
        with counting_value_reads() as reads:
            step(batch, 3)
        assert reads["item"] > 0


def test_training_attention_runs_the_fused_sdpa_kernel():
    """Training attends through F.scaled_dot_product_attention's fused kernel (the CPU's flash kernel
    here; flash or memory-efficient on a GPU), forward and backward, never a softmax of its own."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    from restr.modeling.transformer import Attention

    class Ops(TorchDispatchMode):
        calls = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    torch.set_num_threads(1)
    model, step, batch = _step_setup("bf16")
    with Ops() as ops:
        step(batch, 3)
    layers = sum(isinstance(m, Attention) for m in model.modules())
    assert ops.calls["_scaled_dot_product_flash_attention_for_cpu"] == layers == 10
    assert ops.calls["_scaled_dot_product_flash_attention_for_cpu_backward"] == layers
    assert ops.calls["_softmax"] == 0


@pytest.fixture(scope="module")
def few_data(tmp_path_factory):
    """A training split of a few batches: runs cross epochs in a few iterations."""
    from restr.data import make_synthetic

    return str(make_synthetic(tmp_path_factory.mktemp("few") / "synthetic", seed=0, sizes={"train": 2, "val": 1, "test": 1}))


def test_loader_workers_persist_across_epochs_and_resume_exactly(tmp_path, few_data):
    """Worker processes kept across epochs and prefetching give the samples of the in-process
    loader, epoch after epoch, and a run stopped mid-epoch resumes onto the same weights."""
    from restr.data import build_dataset
    from restr.train import EpochSampler

    torch.set_num_threads(1)
    per_epoch = EpochSampler(len(build_dataset(few_data, "train", 32, None, (0.5,) * 3, (0.5,) * 3)), 4, 0).batches_per_epoch
    t = tc(iterations=2 * per_epoch + 2, val_every=100, ckpt_every=100)  # into a third epoch
    whole = train(small_cfg(), t, few_data, tmp_path / "a", device="cpu", workers=0, progress=False)
    train(small_cfg(), t, few_data, tmp_path / "b", device="cpu", workers=2, progress=False, stop_after=per_epoch + 1)
    resumed = train(small_cfg(), t, few_data, tmp_path / "b", device="cpu", workers=2, progress=False, resume=True)
    a, b = load_checkpoint(whole).model.state_dict(), load_checkpoint(resumed).model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_torchrun_with_one_process_trains_through_ddp_with_the_same_losses(tmp_path, data):
    """torchrun --nproc-per-node 1 starts the process group (gloo here, NCCL on a GPU) and trains
    through DDP: the loss curve is the one of the run without torchrun."""
    torch.set_num_threads(1)
    plain = train(small_cfg(), tc(iterations=4), data, tmp_path / "plain", device="cpu", workers=0, progress=False)
    script = tmp_path / "job.py"
    script.write_text(
        "import torch; torch.set_num_threads(1);"
        "from restr.train import train, TrainConfig; from restr.config import get_config;"
        "train(get_config('restr-tiny').replace(image_size=32), TrainConfig(iterations=4, batch_size=4, lr=1e-3, val_every=3, val_limit=4,"
        f" ckpt_every=3, log_every=1), {data!r}, {str(tmp_path / 'ddp')!r}, device='cpu', workers=0, progress=False)"
    )
    r = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", str(script))
    assert r.returncode == 0, r.stderr[-2000:]
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["world_size"] == 1 and run["runtime"]["distributed"] == "gloo"
    assert json.loads((plain.parent / "run.json").read_text())["runtime"]["distributed"] is None

    def losses(folder):
        return [
            (r["step"], r["loss"]) for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "loss" in r
        ]

    assert losses(tmp_path / "ddp") == losses(plain.parent) and len(losses(plain.parent)) == 4
