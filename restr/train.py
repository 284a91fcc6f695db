"""Training (section 4.1) and the `restr-train` command: a short DETR-style loop.

AdamW, linear warm-up over the first 10% of iterations, then polynomial decay (power 0.9) to 0,
stepped per iteration; optional gradient clipping. Multi-GPU / multi-node through `torchrun` (DDP
over NCCL, a sharded sampler, rank 0 writes): the batch size is the global one, split across the
processes, so the recipe's batch and LR hold at any process count. Checkpoints are atomic and
resume exactly: the schedule, optimizer, loss scale, RNGs and the position in the epoch's sample
order are all restored.

On a GPU (`restr-bench --train` times each of these against the others):
- BF16 autocast where the GPU computes BF16 (FP16 with a loss scaler otherwise), TF32 for the
  matrix products left in FP32; `--precision` chooses;
- fused AdamW (one kernel updates every parameter);
- attention through `F.scaled_dot_product_attention` (flash or memory-efficient kernels);
- `--compile`: torch.compile of the model;
- a DataLoader with persistent worker processes (every CPU of the process but one), batches
  prefetched into pinned memory and copied without blocking;
- a step that never waits for the device (`TrainStep`): the losses are read at log intervals only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from restr.checkpoint import (
    CHECKPOINT_SOURCES,
    Checkpoint,
    CheckpointError,
    load_checkpoint_from,
    read_checkpoint_dict,
    save_checkpoint,
)
from restr.cli_common import one_line_errors, pick_device
from restr.config import ReSTRConfig, get_config
from restr.modeling import ReSTR, restr_loss
from restr.runtime.cli_common import OneLineErrorCommand, Progress, UsageError, check_writable_dir

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MAX_WORKERS = 16  # DataLoader workers a GPU process takes by default, at most
GPU_PREFETCH = 4  # batches each worker prepares ahead on a GPU (DataLoader's default, 2, on a CPU)


@dataclass(frozen=True)
class TrainConfig:
    iterations: int
    batch_size: int  # global: split across the processes under torchrun
    lr: float
    vision_lr_scale: float = 1.0  # the authors train a pretrained ViT at 0.1x
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.1
    poly_power: float = 0.9
    grad_clip: float = 1.0  # max gradient norm; 0 disables (the authors' code does not clip)
    val_every: int = 1000
    val_limit: int = 500  # samples scored at each validation
    ckpt_every: int = 1000
    log_every: int = 20
    seed: int = 0
    # The recipe fine-tunes ImageNet ViT and GloVe weights: refuse to start without them unless the
    # user says --from-scratch (a from-scratch restr-b16 is another, much weaker, model).
    expects_pretrained: bool = False


# Section 4.1's recipe for the paper's model (no clipping, as the authors' code); a from-scratch
# recipe for the small CPU model, which keeps the clipping at 1.0 its demo runs were measured with.
TRAIN_DEFAULTS = {
    "restr-b16": TrainConfig(
        iterations=400_000,
        batch_size=8,
        lr=1e-5,
        vision_lr_scale=0.1,
        grad_clip=0.0,
        val_every=10_000,
        ckpt_every=5_000,
        expects_pretrained=True,
    ),
    # 10.9 min in `make demo` on two CPU cores (0.157 s a step alone, plus data and validation).
    # Val overall IoU (300 samples, two runs) was 0.62-0.66 at iteration 1800 and 0.70-0.72 at 3600:
    # position words and shapes come late.
    "restr-tiny": TrainConfig(iterations=3600, batch_size=32, lr=1e-3, val_every=600, val_limit=300, ckpt_every=600),
}


def train_defaults(config_name: str) -> TrainConfig:
    return TRAIN_DEFAULTS.get(config_name, TRAIN_DEFAULTS["restr-b16"] if "b16" in config_name else TRAIN_DEFAULTS["restr-tiny"])


def lr_factor(step: int, tc: TrainConfig) -> float:
    """Multiplier of the initial LR at iteration `step`: linear warm-up from 0, then (1 - t)^0.9 to 0."""
    warmup = int(tc.warmup_fraction * tc.iterations)
    if step < warmup:
        return step / warmup
    t = (step - warmup) / max(1, tc.iterations - warmup)
    return max(0.0, 1.0 - t) ** tc.poly_power


class EpochSampler(Sampler):
    """A seeded permutation per epoch, sharded over ranks, that can start part-way (exact resume)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.batches_per_epoch = n // (world * batch_size)
        if self.batches_per_epoch == 0:
            raise UsageError(f"the training split has {n} samples: fewer than one batch of {batch_size} per process")
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g)[self.rank :: self.world]
        order = order[: self.batches_per_epoch * self.batch_size]
        return iter(order[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def build_optimizer(model: ReSTR, tc: TrainConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW with the ViT's parameters in their own group (its LR scale); `fused`: PyTorch's fused
    implementation (`fused_adamw`), else its default."""
    vision = [p for n, p in model.named_parameters() if n.startswith("vision.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("vision.") and p.requires_grad]
    groups = [{"params": vision, "lr": tc.lr * tc.vision_lr_scale}, {"params": rest, "lr": tc.lr}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay, fused=True if fused else None)


def fused_adamw(device: torch.device) -> bool:
    """Fused AdamW on a GPU: one kernel reads each parameter, gradient and moment once, where the
    default (multi-tensor) implementation makes several passes. On a CPU the default for-loop one,
    which the demo's recipe was measured with."""
    return device.type == "cuda"


def resolve_precision(precision: str, device: torch.device) -> str:
    """The arithmetic of a run: "bf16" or "fp16" autocast, or "fp32".

    auto: BF16 on a GPU that computes it natively (Ampere and later), FP16 with a loss scaler on an
    older one; FP32 on a CPU (the demo's recipe was measured in FP32; bf16 autocasts there too).
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if precision == "fp16":
            raise UsageError("--precision fp16 trains with a loss scaler, on a GPU only: on a CPU choose bf16 or fp32")
        return "fp32" if precision == "auto" else precision
    with torch.cuda.device(device):
        try:
            native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # a torch without the argument reports native support only
            native_bf16 = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not native_bf16:
        raise UsageError(
            f"--precision bf16: {torch.cuda.get_device_name(device)} has no BF16 arithmetic; choose fp16 (with a loss scaler) or fp32"
        )
    if precision == "auto":
        return "bf16" if native_bf16 else "fp16"
    return precision


def allow_tf32(device: torch.device) -> None:
    """On a GPU, FP32 matrix products (those autocast leaves in FP32, or all of them under
    --precision fp32) run on TF32 tensor cores. CUDA's switches only: a CPU's matmuls are unchanged."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def default_workers(device: torch.device) -> int:
    """DataLoader worker processes when --workers is not given. On a GPU every CPU this process may
    use but one (shared between torchrun's processes on the node), at most MAX_WORKERS: decoding and
    letterboxing 480x480 JPEG photos costs ~10-15 ms of a core each, and restr-b16's step consumes
    hundreds of images a second. On a CPU 2: the training step needs the cores."""
    if device.type != "cuda":
        return 2
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_WORKERS, per_process - 1))


def loader_options(device: torch.device, workers: int) -> dict:
    """The training DataLoader's settings beside its data set, batch and sampler: whole batches only;
    worker processes kept for the whole run (not restarted each epoch), each preparing batches
    ahead; on a GPU the batches land in pinned host memory, so `TrainStep`'s copies do not block."""
    options = {"num_workers": workers, "drop_last": True, "pin_memory": device.type == "cuda"}
    if workers:
        options.update(persistent_workers=True, prefetch_factor=GPU_PREFETCH if device.type == "cuda" else 2)
    return options


class TrainStep:
    """One training iteration, as `train` runs it and `restr-bench --train` times it: the batch to
    the device (non-blocking), the forward pass under autocast, the loss (eq. 12) in FP32, the
    backward pass (scaled under FP16), gradient clipping, the AdamW step at the schedule's LR.

    It only enqueues work: nothing in it waits for the device (no `.item()`, no Python branch on a
    tensor's value; under FP16 the fused AdamW skips an overflowed step on the device, where
    `GradScaler.step` with the default AdamW would read the overflow flag), so on a GPU the host runs
    ahead of the kernels. The returned losses (and `grad_norm` when clipping) stay on the device:
    `read_losses` fetches them, at log intervals.
    """

    def __init__(
        self,
        forward,
        model: ReSTR,
        optimizer: torch.optim.Optimizer,
        tc: TrainConfig,
        device: torch.device,
        precision: str = "fp32",
    ):
        self.forward = forward  # the model, its DDP wrapper, or either compiled
        self.cfg, self.tc, self.device, self.optimizer = model.cfg, tc, device, optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.amp = AMP_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.base_lrs = (tc.lr * tc.vision_lr_scale, tc.lr)  # build_optimizer's two groups

    def __call__(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """Train on `batch` (a DataLoader batch) at iteration `step` (0-based: its LR)."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * lr_factor(step, self.tc)
        image, words, pad, mask = (batch[k].to(self.device, non_blocking=True) for k in ("image", "words", "pad_mask", "mask"))
        amp = torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext()
        with amp:
            pixel_logits, patch_logit = self.forward(image, words, pad)
        cfg = self.cfg
        losses = restr_loss(
            pixel_logits.float(),
            patch_logit.float(),
            mask,
            cfg.patch_size,
            cfg.patch_threshold,
            cfg.patch_loss_weight,
            cfg.patch_label_rule,
        )
        self.optimizer.zero_grad(set_to_none=True)
        (losses["loss"] if self.scaler is None else self.scaler.scale(losses["loss"])).backward()
        if self.tc.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            losses["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, self.tc.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return losses


def read_losses(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """A step's losses as floats, in one copy from the device: the one wait for it a log step makes."""
    values = torch.stack([v.detach().float().reshape(()) for v in losses.values()]).tolist()
    return dict(zip(losses, values))


class RunFolder:
    """The output folder of one run: run.json (what was asked), last.pt, model.pt, metrics.jsonl."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.run_json, self.last, self.model = self.out / "run.json", self.out / "last.pt", self.out / "model.pt"
        self.metrics = self.out / "metrics.jsonl"
        self._tensorboard = None

    def holds_run(self) -> bool:
        return self.run_json.exists() or self.last.exists() or self.model.exists()

    def check(self, run: dict, resume: bool) -> dict | None:
        """Refuse a folder holding another run; with resume, the saved training state (or None)."""
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"{self.out}: exists and is not a folder")
        if not self.holds_run():
            return None
        if not resume:
            raise UsageError(f"{self.out}: holds a run already; pass --resume to continue it, or choose another --out")
        try:
            saved = json.loads(self.run_json.read_text())
        except (OSError, json.JSONDecodeError):
            raise UsageError(f"{self.out}: holds files of a run but no readable run.json; choose another --out") from None
        saved = _with_defaults(saved)
        for key in ("config", "data", "train"):
            old, new = saved.get(key), run.get(key)
            if old != new:
                if isinstance(old, dict) and isinstance(new, dict):
                    diff = ", ".join(
                        f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
                    )
                else:
                    diff = f"{old} -> {new}"
                raise UsageError(f"{self.out}: --resume asks for a different run ({key} differs: {diff})")
        if not self.last.exists():
            return None
        try:
            return read_checkpoint_dict(self.last)
        except CheckpointError as e:
            raise UsageError(f"cannot resume: {e}") from None

    def log(self, record: dict) -> None:
        """One JSON line per record; TensorBoard scalars too when `tensorboard` is installed."""
        with self.metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional: the JSON lines hold everything
                self._tensorboard = False
            else:
                self._tensorboard = SummaryWriter(str(self.out / "tensorboard"))
        if self._tensorboard:
            prefix = record.get("split", "train")
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(f"{prefix}/{key}", value, record["step"])


def _with_defaults(saved: dict) -> dict:
    """A run.json of an older version with the fields added since at their defaults (which keep the
    old behaviour), so that --resume compares like with like."""
    saved = dict(saved)
    try:
        if isinstance(saved.get("config"), dict):
            saved["config"] = _jsonable(ReSTRConfig.from_dict(saved["config"]).to_dict())
        if isinstance(saved.get("train"), dict):
            saved["train"] = _jsonable(dataclasses.asdict(TrainConfig(**saved["train"])))
    except (TypeError, ValueError):
        pass  # reported as a difference below
    return saved


def world_size() -> int:
    """Processes of this job (torchrun's WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def per_process_batch(batch_size: int, world: int) -> int:
    """The global batch split across `world` processes; a one-line error when it does not divide."""
    if batch_size % world:
        lower, upper = batch_size // world * world, -(-batch_size // world) * world
        hint = f"{lower} or {upper}" if lower else f"{upper}"
        raise UsageError(
            f"--batch-size {batch_size} is the global batch and does not split evenly across {world} processes: use {hint}"
        )
    return batch_size // world


def check_pretrained(tc: TrainConfig, config_name: str, pretrained_vit, glove, from_scratch: bool) -> None:
    """Refuse to train a model whose recipe fine-tunes pretrained weights from random ones, unless asked."""
    missing = [opt for opt, value in (("--pretrained-vit", pretrained_vit), ("--glove", glove)) if not value]
    if tc.expects_pretrained and missing and not from_scratch:
        raise UsageError(
            f"{config_name}'s recipe fine-tunes ImageNet ViT-B/16 and GloVe weights: give {' and '.join(missing)}, "
            "or pass --from-scratch to train from random weights anyway (a much weaker model)"
        )


def _distributed(dev: torch.device) -> tuple[int, int, int]:
    """(rank, world size, local rank). Under torchrun, even with one process, the process group is
    started (NCCL on a GPU, gloo on a CPU) and the model is trained through DDP."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def train(
    cfg: ReSTRConfig,
    tc: TrainConfig,
    data: str,
    out: str | Path,
    device: str = "auto",
    resume: bool = False,
    workers: int | None = None,
    split_by=None,
    image_root=None,
    pretrained_vit=None,
    glove=None,
    progress: bool = True,
    stop_after: int | None = None,
    from_scratch: bool = False,
    init: Checkpoint | None = None,
    precision: str = "auto",
    compile: bool = False,
) -> Path:
    """Train and return the path of the final checkpoint (`out/model.pt`).

    `init`: start from these weights and their vocabulary (`load_checkpoint_from`: a restr checkpoint
    or the authors'), instead of pretrained ViT / GloVe files or random ones; `cfg` must be its config.

    `tc.batch_size` is the global batch: under torchrun each of the N processes takes 1/N of it.
    `stop_after` ends this process after that many iterations with `last.pt` written, for
    time-sliced jobs: `--resume` continues exactly where it stopped. `progress`: a bar on a
    terminal, plain lines otherwise (restr.runtime.cli_common.Progress); validation results are lines.
    `workers`: DataLoader worker processes (None: `default_workers`); `precision`: `resolve_precision`'s;
    `compile`: torch.compile the model for the training steps (validation runs it eagerly).
    """
    from restr.data import build_dataset

    proc_batch = per_process_batch(tc.batch_size, world_size())  # before the process group: every rank fails alike
    check_writable_dir(out, "--out")
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    rank, world, local_rank = _distributed(dev)
    if dev.type == "cuda" and dist.is_initialized():
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    allow_tf32(dev)
    workers = default_workers(dev) if workers is None else workers
    folder = RunFolder(Path(out))
    run = _jsonable({"config": cfg.to_dict(), "data": data, "train": dataclasses.asdict(tc)})
    state = folder.check(run, resume)
    if init is not None and init.config != cfg:
        raise UsageError(f"--init holds a {init.config.name} model, not {cfg.name}")
    if state is None and init is None:
        check_pretrained(tc, cfg.name, pretrained_vit, glove, from_scratch)

    # Data: the vocabulary comes from the training split (or the checkpoint being resumed or started from).
    vocab = None if init is None else init.vocab
    if state is not None:
        from restr.runtime.tokenizer import Vocabulary

        vocab = Vocabulary(state["vocab"][2:], cfg.tokenizer)
    train_ds = build_dataset(
        data,
        "train",
        cfg.image_size,
        vocab,
        cfg.image_mean,
        cfg.image_std,
        cfg.max_words,
        split_by=split_by,
        image_root=image_root,
        transform=cfg.image_transform,
        tokenizer=cfg.tokenizer,
        progress=progress and rank == 0 and sys.stderr.isatty(),
    )
    vocab = train_ds.vocab
    val_ds = build_dataset(
        data,
        "val",
        cfg.image_size,
        vocab,
        cfg.image_mean,
        cfg.image_std,
        cfg.max_words,
        split_by=split_by,
        image_root=image_root,
        transform=cfg.image_transform,
    )

    torch.manual_seed(tc.seed)
    model = ReSTR(cfg, len(vocab))
    if state is None and init is not None:
        model.load_state_dict(init.model.state_dict())
    elif state is None:
        _load_pretrained(model, vocab, pretrained_vit, glove, log=(rank == 0))
    model.to(dev)
    fused = fused_adamw(dev)
    optimizer = build_optimizer(model, tc, fused=fused)
    ddp = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if dist.is_initialized()
        else model
    )
    train_step = TrainStep(torch.compile(ddp) if compile else ddp, model, optimizer, tc, dev, precision)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        ts = state["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        step = int(ts["step"])
        torch.set_rng_state(ts["rng"])
        if dev.type == "cuda" and "cuda_rng" in ts:
            torch.cuda.set_rng_state(ts["cuda_rng"], dev)
        if train_step.scaler is not None and "scaler" in ts:
            train_step.scaler.load_state_dict(ts["scaler"])
    runtime = {
        "device": str(dev),
        "precision": precision,
        "fused_adamw": fused,
        "compile": compile,
        "workers": workers,
        "distributed": dist.get_backend() if dist.is_initialized() else None,
    }
    if rank == 0:
        folder.out.mkdir(parents=True, exist_ok=True)
        if state is None:
            folder.run_json.write_text(
                json.dumps(
                    {
                        **run,
                        "vocab_size": len(vocab),
                        "world_size": world,
                        "batch_per_process": proc_batch,
                        "from_scratch": not (pretrained_vit or glove or init),
                        "init": _init_meta(init),
                        "runtime": runtime,
                    },
                    indent=2,
                )
            )
    if step >= tc.iterations:
        if rank == 0:
            print(f"{folder.out}: run already finished at iteration {step}")
        _finish_distributed()
        return folder.model

    sampler = EpochSampler(len(train_ds), proc_batch, tc.seed, rank, world)
    loader = DataLoader(train_ds, batch_size=proc_batch, sampler=sampler, **loader_options(dev, workers))
    meta = {
        "data": data,
        "split_by": split_by,
        "image_root": str(image_root) if image_root else None,
        "pretrained_vit": str(pretrained_vit) if pretrained_vit else None,
        "glove": str(glove) if glove else None,
        "from_scratch": not (pretrained_vit or glove or init),
        "init": _init_meta(init),
    }
    if rank == 0:
        print(
            f"{cfg.name}: {tc.iterations} iterations from {step}, batch {tc.batch_size}"
            f" ({proc_batch} per process x {world} processes), LR {tc.lr:g} (vision {tc.lr * tc.vision_lr_scale:g}),"
            f" grad clip {tc.grad_clip:g}, {_start_from(init, pretrained_vit, glove)}; {_describe(runtime)}; log {folder.metrics}",
            file=sys.stderr,
            flush=True,
        )
    bar = Progress(tc.iterations, "train", initial=step, enabled=progress and rank == 0)
    t_start, last_val = time.time(), None
    stop_at = tc.iterations if stop_after is None else min(tc.iterations, step + stop_after)
    while step < stop_at:
        sampler.set_position(*divmod(step, sampler.batches_per_epoch))  # read when the loader starts the epoch
        ddp.train()
        for batch in loader:
            losses = train_step(batch, step)
            step += 1
            if rank == 0:
                shown = {}
                if step % tc.log_every == 0 or step == tc.iterations:
                    values = read_losses(losses)
                    rec = {
                        "step": step,
                        "lr": optimizer.param_groups[1]["lr"],
                        "time": round(time.time() - t_start, 2),
                        **{k: round(v, 4 if k == "grad_norm" else 5) for k, v in values.items()},
                    }
                    folder.log(rec)
                    shown = {"loss": f"{rec['loss']:.4f}", "lr": f"{rec['lr']:.2e}"}
                bar.update(1, **shown)
            if step % tc.val_every == 0 or step == tc.iterations:
                last_val, result = _validate(model, val_ds, dev, proc_batch, tc, rank, world, folder, step)
                if rank == 0:
                    bar.write(
                        f"val step {step}: overall IoU {result['overall_iou']:.4f}, mean IoU {result['mean_iou']:.4f} (n={result['n']})"
                    )
                ddp.train()
            if rank == 0 and (step % tc.ckpt_every == 0 or step in (tc.iterations, stop_at)):
                save_checkpoint(folder.last, model, vocab, {**meta, "step": step}, _train_state(optimizer, train_step, step, dev))
            if step >= stop_at:
                break
    bar.close()
    del loader  # its worker processes end here
    if step < tc.iterations:
        if rank == 0:
            print(f"stopped at iteration {step} of {tc.iterations}; continue with --resume")
        _finish_distributed()
        return folder.last
    if rank == 0:
        meta.update(step=step, train_seconds=round(time.time() - t_start, 1), val_overall_iou=last_val, precision=precision)
        save_checkpoint(folder.model, model, vocab, meta)
    _finish_distributed()
    return folder.model


def _train_state(optimizer, train_step: TrainStep, step: int, dev: torch.device) -> dict:
    """What --resume needs beside the weights: optimizer, iteration, RNGs (the device's too: drop-path
    draws there) and the FP16 loss scale."""
    state = {"optimizer": optimizer.state_dict(), "step": step, "rng": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(dev)
    if train_step.scaler is not None:
        state["scaler"] = train_step.scaler.state_dict()
    return state


def _describe(runtime: dict) -> str:
    precision = {"bf16": "BF16 autocast", "fp16": "FP16 autocast with loss scaling", "fp32": "FP32"}[runtime["precision"]]
    parts = [
        f"{runtime['device']}",
        precision,
        "fused AdamW" if runtime["fused_adamw"] else "AdamW",
        f"{runtime['workers']} loader workers",
    ]
    return ", ".join(parts + (["torch.compile"] if runtime["compile"] else []))


def _finish_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _validate(model, val_ds, dev, batch, tc, rank, world, folder, step) -> tuple[float, dict]:
    """Overall IoU on (the first val_limit samples of) the val split, sharded over ranks."""
    from restr.evaluate import evaluate

    n = min(tc.val_limit, len(val_ds))
    metrics = evaluate(model, val_ds, dev, batch_size=batch, indices=range(rank, n, world), progress=False)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, metrics.state())
        for s in gathered[1:] if rank == 0 else []:
            metrics.merge(type(metrics)(val_ds.length_groups).load_state(s))
    result = metrics.result()
    if rank == 0:
        folder.log(
            {"step": step, "split": "val", "n": result["n"], "overall_iou": result["overall_iou"], "mean_iou": result["mean_iou"]}
        )
    return result["overall_iou"], result


def _init_meta(init: Checkpoint | None) -> dict | None:
    """What --init started the run from (the checkpoint's own meta, which names its file)."""
    return None if init is None else _jsonable(init.meta)


def _start_from(init: Checkpoint | None, pretrained_vit, glove) -> str:
    if init is not None:
        return f"weights of {init.meta.get('authors_checkpoint') or init.meta.get('init_checkpoint') or 'the --init checkpoint'}"
    return "pretrained ViT/GloVe" if pretrained_vit or glove else "random initial weights"


def _load_pretrained(model, vocab, pretrained_vit, glove, log: bool) -> None:
    if pretrained_vit:
        from restr.pretrained import load_vit_weights

        report = load_vit_weights(model, pretrained_vit)
        if log:
            print(report)
    if glove:
        from restr.pretrained import init_word_embeddings, load_glove

        emb = load_glove(glove, vocab.itos[2:], dim=model.cfg.language.width)
        if emb.vocab != vocab:
            raise UsageError("GloVe vocabulary does not match the data set's")
        init_word_embeddings(model, emb.vectors)
        if log:
            print(f"GloVe: {emb.found} of {len(vocab) - 2} words found in {glove}")


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))


@click.command(
    "restr-train", cls=OneLineErrorCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.option(
    "--config",
    "config_name",
    default="restr-tiny",
    show_default=True,
    help="Model config: restr-b16, restr-b16-shared, restr-b16-vme, restr-b16-ime, restr-b16-authors, restr-b16-shared-authors, restr-tiny.",
)
@click.option(
    "--data",
    default="synthetic",
    show_default=True,
    help="'synthetic' (built in, cached in ~/.cache/restr or $RESTR_CACHE) or a refer-layout folder (refs(<split-by>).p + instances.json).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder: model.pt, last.pt, metrics.jsonl (one JSON line per log step: the file to watch), run.json.",
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (same config, data and schedule)."
)
@click.option("--split-by", default=None, help="refer annotation set (unc, unc+, umd, google, berkeley).")
@click.option("--image-root", default=None, type=click.Path(file_okay=False), help="Images folder (e.g. COCO train2014).")
@click.option(
    "--pretrained-vit",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="ImageNet-21k ViT-B/16 weights (timm .pth/.safetensors or AugReg .npz).",
)
@click.option(
    "--glove",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="GloVe vectors (glove.*.txt) for the word embeddings.",
)
@click.option(
    "--from-scratch",
    is_flag=True,
    help="Train restr-b16 from random weights without --pretrained-vit/--glove (refused otherwise: its recipe fine-tunes them).",
)
@click.option(
    "--init",
    "init_path",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="Start from these weights, their config and vocabulary: a restr checkpoint, or with --from authors a state dict saved by the authors' train_restr.py.",
)
@click.option(
    "--from",
    "init_from",
    type=click.Choice(CHECKPOINT_SOURCES),
    default="restr",
    show_default=True,
    help="What --init holds (authors: read into restr-b16-authors or -shared-authors).",
)
@click.option(
    "--vocab",
    "init_vocab",
    default=None,
    type=click.Path(exists=True),
    help="With --init ... --from authors: their data/vocabulary_*.txt, or their data/ folder.",
)
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Total iterations (default: the config's recipe).")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Global batch size (default: the config's recipe, 8 for restr-b16); under torchrun each of N processes takes 1/N of it, so it must divide by N.",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Initial learning rate (default: the config's recipe; it goes with the global batch).",
)
@click.option(
    "--val-every",
    type=click.IntRange(min=1),
    default=None,
    help="Score the val split (its first samples) every N iterations and log the overall IoU (default: the recipe's).",
)
@click.option("--seed", type=int, default=None, help="Seed of the initial weights and of the sample order (default 0).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=0),
    help="DataLoader worker processes (default: on a GPU every CPU of the process but one, at most 16; on a CPU 2). "
    "`make demo` passes 1 to leave the second of two CPU cores to the training step.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="auto: BF16 autocast on a GPU that has BF16 (FP16 with a loss scaler otherwise), FP32 on a CPU; "
    "bf16 autocasts on a CPU too.",
)
@click.option(
    "--compile",
    "compile_model",
    is_flag=True,
    help="torch.compile the model for the training steps (minutes to compile; restr-bench --train measures whether it pays).",
)
@click.option("--threads", default=None, type=click.IntRange(min=1), help="CPU threads for torch (default: torch's choice).")
@click.option(
    "--stop-after",
    default=None,
    type=click.IntRange(min=1),
    help="Stop after N iterations of this process (resume later with --resume).",
)
@click.option(
    "--no-progress",
    is_flag=True,
    help="No progress bar or progress lines (validation results and the start line are still printed).",
)
def main(
    config_name,
    data,
    out,
    resume,
    split_by,
    image_root,
    pretrained_vit,
    glove,
    from_scratch,
    init_path,
    init_from,
    init_vocab,
    iterations,
    batch_size,
    lr,
    val_every,
    seed,
    device,
    workers,
    precision,
    compile_model,
    threads,
    stop_after,
    no_progress,
):
    """Train ReSTR. Defaults follow the paper for restr-b16 (AdamW, LR 1e-5, warm-up 10%, poly 0.9,
    batch 8, 400k iterations) and a from-scratch recipe for restr-tiny. On a terminal a progress
    bar; written to a file, a plain progress line every 30 s ($RESTR_PROGRESS_INTERVAL) and one
    line per validation; every number also goes to OUT/metrics.jsonl. On a GPU: BF16 autocast,
    TF32, fused AdamW, fused attention kernels, a pinned-memory loader of persistent workers;
    `restr-bench --train` times each choice.

    \b
    restr-train --config restr-tiny --data synthetic --out runs/demo
    torchrun --nproc-per-node 8 -m restr.train --config restr-b16 --data /data/refcoco --split-by unc \\
        --image-root /data/coco/train2014 --pretrained-vit vit_base_patch16_384.npz --glove glove.840B.300d.txt --out runs/b16
    restr-train --init Gref_400000.pth --from authors --vocab data/vocabulary_Gref.txt --data /data/refcocog --split-by google \\
        --image-root /data/coco/train2014 --out runs/authors      (their checkpoint, as restr-b16-authors)

    Exit codes: 0 done, 2 bad input (nothing written).
    """
    with one_line_errors("restr-train"):
        init = None
        if init_path is not None or init_from != "restr" or init_vocab is not None:
            init = _read_init(init_path, init_from, init_vocab, config_name, pretrained_vit or glove)
            config_name = init.config.name
        try:
            cfg = init.config if init is not None else get_config(config_name)
        except KeyError as e:
            raise UsageError(str(e.args[0])) from None
        tc = train_defaults(config_name)
        overrides = {
            k: v
            for k, v in dict(iterations=iterations, batch_size=batch_size, lr=lr, val_every=val_every, seed=seed).items()
            if v is not None
        }
        tc = dataclasses.replace(tc, **overrides)
        if threads:
            torch.set_num_threads(threads)
        path = train(
            cfg,
            tc,
            data,
            out,
            device,
            resume,
            workers,
            split_by,
            image_root,
            pretrained_vit,
            glove,
            stop_after=stop_after,
            progress=not no_progress,
            from_scratch=from_scratch,
            init=init,
            precision=precision,
            compile=compile_model,
        )
        if int(os.environ.get("RANK", "0")) == 0:
            click.echo(f"wrote {path}")


def _read_init(path, source: str, vocab, config_name: str, pretrained) -> Checkpoint:
    """--init FILE [--from authors --vocab V]: the checkpoint to start from; its config is the run's."""
    if path is None:
        raise UsageError("--from and --vocab go with --init FILE")
    if pretrained:
        raise UsageError("--init gives every weight: no --pretrained-vit or --glove with it")
    try:
        init = load_checkpoint_from(path, source, vocab)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    explicit = click.get_current_context().get_parameter_source("config_name") != click.core.ParameterSource.DEFAULT
    if explicit and config_name != init.config.name:
        raise UsageError(f"--init {path} holds a {init.config.name} model, not --config {config_name}")
    if source == "restr":
        init.meta = {**init.meta, "init_checkpoint": str(path)}
    return init


if __name__ == "__main__":
    main()
