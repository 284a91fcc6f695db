"""Training (section 4.1) and the `restr-train` command: a short DETR-style loop.

AdamW, linear warm-up over the first 10% of iterations, then polynomial decay (power 0.9) to 0,
stepped per iteration; gradient clipping; bf16 autocast on GPU. Multi-GPU / multi-node through
`torchrun` (DDP, a sharded sampler, rank 0 writes). Checkpoints are atomic and resume exactly: the
schedule, optimizer, RNG and the position in the epoch's sample order are all restored.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import click
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from restr.checkpoint import CheckpointError, read_checkpoint_dict, save_checkpoint
from restr.cli_common import UsageError, one_line_errors, pick_device
from restr.config import ReSTRConfig, get_config
from restr.modeling import ReSTR, restr_loss


@dataclass(frozen=True)
class TrainConfig:
    iterations: int
    batch_size: int  # per process
    lr: float
    vision_lr_scale: float = 1.0  # the authors train a pretrained ViT at 0.1x
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.1
    poly_power: float = 0.9
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    val_every: int = 1000
    val_limit: int = 500  # samples scored at each validation
    ckpt_every: int = 1000
    log_every: int = 20
    seed: int = 0


# Section 4.1's recipe for the paper's model; a from-scratch recipe for the small CPU model.
TRAIN_DEFAULTS = {
    "restr-b16": TrainConfig(iterations=400_000, batch_size=8, lr=1e-5, vision_lr_scale=0.1, val_every=10_000, ckpt_every=5_000),
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


def build_optimizer(model: ReSTR, tc: TrainConfig) -> torch.optim.AdamW:
    vision = [p for n, p in model.named_parameters() if n.startswith("vision.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("vision.") and p.requires_grad]
    groups = [{"params": vision, "lr": tc.lr * tc.vision_lr_scale}, {"params": rest, "lr": tc.lr}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)


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
        for key in ("config", "data", "train"):
            old, new = saved.get(key), run.get(key)
            if old != new:
                if isinstance(old, dict) and isinstance(new, dict):
                    diff = ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
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


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank), initialising the process group under torchrun."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, 0
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def train(
    cfg: ReSTRConfig, tc: TrainConfig, data: str, out: str | Path, device: str = "auto", resume: bool = False,
    workers: int = 2, split_by=None, image_root=None, pretrained_vit=None, glove=None, progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train and return the path of the final checkpoint (`out/model.pt`).

    `stop_after` ends this process after that many iterations with `last.pt` written, for
    time-sliced jobs: `--resume` continues exactly where it stopped.
    """
    from restr.data import build_dataset

    rank, world, local_rank = _distributed()
    dev = pick_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    folder = RunFolder(Path(out))
    run = _jsonable({"config": cfg.to_dict(), "data": data, "train": dataclasses.asdict(tc)})
    state = folder.check(run, resume)

    # Data: the vocabulary comes from the training split (or the checkpoint being resumed).
    vocab = None
    if state is not None:
        from restr.runtime.tokenizer import Vocabulary

        vocab = Vocabulary(state["vocab"][2:])
    train_ds = build_dataset(data, "train", cfg.image_size, vocab, cfg.image_mean, cfg.image_std, cfg.max_words,
                             split_by=split_by, image_root=image_root, progress=progress and rank == 0)
    vocab = train_ds.vocab
    val_ds = build_dataset(data, "val", cfg.image_size, vocab, cfg.image_mean, cfg.image_std, cfg.max_words,
                           split_by=split_by, image_root=image_root)

    torch.manual_seed(tc.seed)
    model = ReSTR(cfg, len(vocab))
    if state is None:
        _load_pretrained(model, vocab, pretrained_vit, glove, log=(rank == 0))
    model.to(dev)
    optimizer = build_optimizer(model, tc)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        ts = state["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        step = int(ts["step"])
        torch.set_rng_state(ts["rng"])
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if rank == 0:
        folder.out.mkdir(parents=True, exist_ok=True)
        if state is None:
            folder.run_json.write_text(json.dumps({**run, "vocab_size": len(vocab), "world_size": world}, indent=2))
    if step >= tc.iterations:
        if rank == 0:
            print(f"{folder.out}: run already finished at iteration {step}")
        return folder.model

    sampler = EpochSampler(len(train_ds), tc.batch_size, tc.seed, rank, world)
    use_amp = dev.type == "cuda"
    meta = {"data": data, "split_by": split_by, "image_root": str(image_root) if image_root else None}
    bar = tqdm(total=tc.iterations, initial=step, desc="train", unit="it", disable=not (progress and rank == 0), dynamic_ncols=True)
    t_start, last_val = time.time(), None
    stop_at = tc.iterations if stop_after is None else min(tc.iterations, step + stop_after)
    while step < stop_at:
        epoch, start = divmod(step, sampler.batches_per_epoch)
        sampler.set_position(epoch, start)
        loader = DataLoader(train_ds, batch_size=tc.batch_size, sampler=sampler, num_workers=workers,
                            drop_last=True, persistent_workers=False, pin_memory=dev.type == "cuda")
        ddp.train()
        for batch in loader:
            for g, base in zip(optimizer.param_groups, (tc.lr * tc.vision_lr_scale, tc.lr)):
                g["lr"] = base * lr_factor(step, tc)
            image, mask = batch["image"].to(dev, non_blocking=True), batch["mask"].to(dev, non_blocking=True)
            words, pad = batch["words"].to(dev), batch["pad_mask"].to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                pixel_logits, patch_logit = ddp(image, words, pad)
            losses = restr_loss(pixel_logits.float(), patch_logit.float(), mask, cfg.patch_size, cfg.patch_threshold, cfg.patch_loss_weight)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip > 0 else None
            optimizer.step()
            step += 1
            if rank == 0:
                bar.update(1)
                if step % tc.log_every == 0 or step == tc.iterations:
                    rec = {"step": step, "lr": optimizer.param_groups[1]["lr"], "time": round(time.time() - t_start, 2),
                           **{k: round(v.item(), 5) for k, v in losses.items()}}
                    if grad_norm is not None:
                        rec["grad_norm"] = round(float(grad_norm), 4)
                    folder.log(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", **({"val_iou": f"{last_val:.3f}"} if last_val is not None else {}))
            if step % tc.val_every == 0 or step == tc.iterations:
                last_val = _validate(model, val_ds, dev, tc, rank, world, folder, step)
                ddp.train()
            if rank == 0 and (step % tc.ckpt_every == 0 or step in (tc.iterations, stop_at)):
                train_state = {"optimizer": optimizer.state_dict(), "step": step, "rng": torch.get_rng_state()}
                save_checkpoint(folder.last, model, vocab, {**meta, "step": step}, train_state)
            if step >= stop_at:
                break
    bar.close()
    if step < tc.iterations:
        if rank == 0:
            print(f"stopped at iteration {step} of {tc.iterations}; continue with --resume")
        _finish_distributed(world)
        return folder.last
    if rank == 0:
        meta.update(step=step, train_seconds=round(time.time() - t_start, 1), val_overall_iou=last_val)
        save_checkpoint(folder.model, model, vocab, meta)
    _finish_distributed(world)
    return folder.model


def _finish_distributed(world: int) -> None:
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _validate(model, val_ds, dev, tc, rank, world, folder, step) -> float:
    """Overall IoU on (the first val_limit samples of) the val split, sharded over ranks."""
    from restr.evaluate import evaluate

    n = min(tc.val_limit, len(val_ds))
    metrics = evaluate(model, val_ds, dev, batch_size=tc.batch_size, indices=range(rank, n, world), progress=False)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, metrics.state())
        for s in gathered[1:] if rank == 0 else []:
            metrics.merge(type(metrics)(val_ds.length_groups).load_state(s))
    result = metrics.result()
    if rank == 0:
        folder.log({"step": step, "split": "val", "n": result["n"], "overall_iou": result["overall_iou"], "mean_iou": result["mean_iou"]})
    return result["overall_iou"]


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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_name", default="restr-tiny", show_default=True, help="Model config: restr-b16, restr-b16-shared, restr-b16-vme, restr-b16-ime, restr-tiny.")
@click.option("--data", default="synthetic", show_default=True, help="'synthetic' (built in) or a refer-layout folder (refs(<split-by>).p + instances.json).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder: model.pt, last.pt, metrics.jsonl, run.json.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (same config, data and schedule).")
@click.option("--split-by", default=None, help="refer annotation set (unc, unc+, umd, google, berkeley).")
@click.option("--image-root", default=None, type=click.Path(file_okay=False), help="Images folder (e.g. COCO train2014).")
@click.option("--pretrained-vit", default=None, type=click.Path(dir_okay=False, exists=True), help="ImageNet-21k ViT-B/16 weights (timm .pth/.safetensors or AugReg .npz).")
@click.option("--glove", default=None, type=click.Path(dir_okay=False, exists=True), help="GloVe vectors (glove.*.txt) for the word embeddings.")
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Total iterations (default: the config's recipe).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size per process.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Initial learning rate.")
@click.option("--val-every", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0), help="DataLoader worker processes.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="CPU threads for torch (default: torch's choice).")
@click.option("--stop-after", default=None, type=click.IntRange(min=1), help="Stop after N iterations of this process (resume later with --resume).")
def main(config_name, data, out, resume, split_by, image_root, pretrained_vit, glove, iterations, batch_size, lr, val_every, seed, device, workers, threads, stop_after):
    """Train ReSTR. Defaults follow the paper for restr-b16 (AdamW, LR 1e-5, warm-up 10%, poly 0.9,
    batch 8, 400k iterations) and a from-scratch recipe for restr-tiny.

    \b
    restr-train --config restr-tiny --data synthetic --out runs/demo
    torchrun --nproc-per-node 8 -m restr.train --config restr-b16 --data /data/refcoco --split-by unc \\
        --image-root /data/coco/train2014 --pretrained-vit vit_base_patch16_384.npz --glove glove.840B.300d.txt --out runs/b16
    """
    with one_line_errors("restr-train"):
        try:
            cfg = get_config(config_name)
        except KeyError as e:
            raise UsageError(str(e.args[0])) from None
        tc = train_defaults(config_name)
        overrides = {k: v for k, v in dict(iterations=iterations, batch_size=batch_size, lr=lr, val_every=val_every, seed=seed).items() if v is not None}
        tc = dataclasses.replace(tc, **overrides)
        if threads:
            torch.set_num_threads(threads)
        path = train(cfg, tc, data, out, device, resume, workers, split_by, image_root, pretrained_vit, glove, stop_after=stop_after)
        if int(os.environ.get("RANK", "0")) == 0:
            click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
