"""`restr-bench --train`: the trainer's own step (`restr.train.TrainStep`) timed on a device, each
speed choice against the trainer's default, the data loader alone, and what they make of the
paper's recipe.

1. The data loader alone: `restr.train.loader_options`' DataLoader over a refer-layout data set of
   JPEG photos (COCO-like 640x480, written once by `write_photo_refer`), through the same
   `ReferDataset` as training (decode, letterbox, normalise, polygon masks). Images per second in
   steady state: the batches the workers had prefetched while starting are not counted.
2. The step: for each choice (the default the trainer takes on this device, then each speed choice
   changed alone: precision, TF32, fused AdamW, fused attention, torch.compile), a model with the
   same seeded random weights, its optimizer and a `TrainStep` on one fixed batch in (pinned) host
   memory, copied to the device every step as in training. Each choice is warmed up alone (its
   first step, torch.compile's compilation, is reported) and its peak memory read; then rounds of
   a few steps per choice, the choices interleaved, with one sample of the matrix-product peak per
   round (so machine load falls on all alike). Milliseconds per step are wall clock over a round,
   synchronised with the device at its ends: throughput as the trainer gets it, host overhead
   included.
3. Model FLOPs utilisation: 6 x forward MACs x batch / step time (forward 2 x MACs, backward
   twice that), MACs from `restr.accounting.count` (the count `restr-bench --macs` checks against
   the paper), as a share of the GEMM peak measured in the same run: BF16 (or FP16) products on a
   GPU, FP32 on a CPU. Only matrix products are counted, so the share is a lower bound of the
   arithmetic done.
4. Checks of the default step: the attention operators it calls (fused SDPA kernels, not the
   math fallback) and the host synchronisations it makes (none; CUDA's sync debug mode on a GPU;
   on a CPU the tensor methods that read values, in the default step with the GPU's fused AdamW).
5. The projected time of the config's recipe (restr-b16: the paper's 400,000 iterations):
   iterations x the slower of the step and the loader's time per batch; training steps only.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from restr.benchmarks.timing import ratio, summarize

CHOICES = ("precision", "tf32", "optimizer", "attention", "compile")
BENCH_VOCABULARY = 10_000  # word-embedding rows of the timed model (RefCOCO's vocabulary is of this order)
STEPS_PER_ROUND = 5
SYNC_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@dataclass(frozen=True)
class Choice:
    """How one timed step trains: what `restr-train` would do on the device, or one thing changed."""

    label: str
    precision: str  # bf16 / fp16 autocast, or fp32
    tf32: bool  # CUDA's FP32 matrix products on TF32 tensor cores
    fused_adamw: bool
    attention: str  # "fused": SDPA picks its fused kernels; "math": SDPA's unfused reference path
    compile: bool

    def describe(self) -> str:
        parts = [
            self.precision.upper() + (" autocast" if self.precision != "fp32" else "") + (" (TF32)" if self.tf32 else ""),
            "fused AdamW" if self.fused_adamw else "AdamW",
            f"{self.attention} attention",
        ]
        return ", ".join(parts + (["torch.compile"] if self.compile else []))


def choices_for(device, names=CHOICES) -> list[Choice]:
    """The trainer's default on `device` first, then one choice per name changed from it."""
    from restr.train import fused_adamw, resolve_precision

    cuda = device.type == "cuda"
    default = Choice(
        "default", resolve_precision("auto", device), tf32=cuda, fused_adamw=fused_adamw(device), attention="fused", compile=False
    )
    out = [default]
    for name in names:
        if name == "precision":
            if cuda:
                out.append(replace(default, label="fp32 (TF32)", precision="fp32"))
                if default.precision == "bf16":
                    out.append(replace(default, label="fp16 + loss scaler", precision="fp16"))
            else:
                out.append(replace(default, label="bf16 autocast", precision="bf16"))
        elif name == "tf32" and cuda:
            out.append(replace(default, label="fp32 (no TF32)", precision="fp32", tf32=False))
        elif name == "optimizer":
            out.append(
                replace(
                    default, label="foreach AdamW" if default.fused_adamw else "fused AdamW", fused_adamw=not default.fused_adamw
                )
            )
        elif name == "attention":
            out.append(replace(default, label="math attention", attention="math"))
        elif name == "compile":
            out.append(replace(default, label="torch.compile", compile=True))
    return out


def parse_choices(text: str) -> tuple[str, ...]:
    """'all', 'none' or names from CHOICES separated by commas; ValueError names the unknown ones."""
    if text.strip() in ("all", ""):
        return CHOICES
    if text.strip() == "none":
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in CHOICES]
    if unknown:
        raise ValueError(f"unknown choice {', '.join(unknown)}; known: {', '.join(CHOICES)}, all, none")
    return names


# -- the data set of JPEG photos ------------------------------------------------------------------

_COLOURS = ("red", "blue", "green", "white", "black", "yellow")
_THINGS = ("car", "dog", "man", "woman", "umbrella", "chair", "bus", "cup")
_PLACES = ("on the left", "on the right", "in front", "in the back", "near the middle", "at the top")


def _photo(rng: np.random.Generator, width: int, height: int):
    """A photo-like RGB image: a smooth random colour field with sensor-like noise, which JPEG
    compresses to ~120 KB at 640x480 and quality 90, about a COCO photo's size."""
    from PIL import Image

    low = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noisy = field + rng.normal(0, 12, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _polygon(rng: np.random.Generator, width: int, height: int) -> list[float]:
    """A simple (star-shaped) polygon of 10 vertices, as a COCO segmentation's flat x, y list."""
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    r = rng.uniform(0.1, 0.3) * min(width, height)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 10))
    radii = r * rng.uniform(0.5, 1.0, 10)
    xs = np.clip(cx + radii * np.cos(angles), 0, width - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, height - 1)
    return [round(float(v), 1) for xy in zip(xs, ys) for v in xy]


def write_photo_refer(folder: str | Path, images: int = 64, size: tuple[int, int] = (640, 480), seed: int = 0) -> Path:
    """A refer-layout data set of JPEG photos (`refs(unc).p`, `instances.json`, `images/*.jpg`):
    `images` photos of `size` (width, height), two objects each (polygons), two expressions per
    object; splits train / val / testA by image, 6:1:1 (at least one image each). Kept when
    `folder` already holds one of the same request (`bench.json`)."""
    folder = Path(folder)
    request = {"images": images, "size": list(size), "seed": seed}
    marker = folder / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == request:
        return folder
    rng = np.random.default_rng(seed)
    width, height = size
    (folder / "images").mkdir(parents=True, exist_ok=True)
    n_val = n_test = max(1, images // 8)
    image_rows, anns, refs = [], [], []
    for i in range(images):
        split = "val" if i < n_val else "testA" if i < n_val + n_test else "train"
        name = f"photo_{i:06d}.jpg"
        _photo(rng, width, height).save(folder / "images" / name, quality=90)
        image_rows.append({"id": i + 1, "file_name": name, "height": height, "width": width})
        for k in range(2):
            ann_id = 10 * (i + 1) + k
            anns.append({"id": ann_id, "image_id": i + 1, "segmentation": [_polygon(rng, width, height)], "category_id": 1})
            texts = [f"the {rng.choice(_COLOURS)} {rng.choice(_THINGS)} {rng.choice(_PLACES)}" for _ in range(2)]
            sentences = [{"sent": t, "raw": t, "tokens": t.split(), "sent_id": 2 * ann_id + j} for j, t in enumerate(texts)]
            refs.append(
                {
                    "ref_id": ann_id,
                    "ann_id": ann_id,
                    "image_id": i + 1,
                    "split": split,
                    "sentences": sentences,
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "category_id": 1,
                    "file_name": name,
                }
            )
    instances = {
        "images": image_rows,
        "annotations": anns,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }
    (folder / "instances.json").write_text(json.dumps(instances))
    with open(folder / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    marker.write_text(json.dumps(request))
    return folder


def loader_throughput(folder: str | Path, cfg, batch: int, workers: int, device, batches: int = 50) -> dict:
    """Images per second of the training DataLoader (`loader_options`) alone over `folder`'s train
    split, in steady state: `batches` batches timed after the workers' first prefetched ones."""
    import torch
    from torch.utils.data import DataLoader

    from restr.data import build_dataset
    from restr.train import loader_options

    ds = build_dataset(str(folder), "train", cfg.image_size, None, cfg.image_mean, cfg.image_std, cfg.max_words)
    options = loader_options(device, workers)
    skip = workers * options.get("prefetch_factor", 1) + 1  # ready before the clock starts: not steady state
    total = (skip + batches) * batch
    g = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(len(ds), generator=g) for _ in range(-(-total // len(ds)))])[:total].tolist()
    loader = DataLoader(ds, batch_size=batch, sampler=order, **options)
    t0 = time.perf_counter()
    arrivals = []
    for _ in loader:
        arrivals.append(time.perf_counter())
    del loader
    timed = arrivals[skip - 1 :]
    seconds = timed[-1] - timed[0]
    return {
        "images_per_s": (len(timed) - 1) * batch / seconds,
        "batches_timed": len(timed) - 1,
        "batch": batch,
        "first_batch_s": arrivals[0] - t0,
        "workers": workers,
        "samples": len(ds),
        "options": options,
        "photos": str(folder),
    }


# -- the timed steps --------------------------------------------------------------------------------


def make_batch(cfg, batch: int, vocab_size: int, pin: bool, seed: int = 0) -> dict:
    """A training batch as the DataLoader gives one: normalised images, expressions of 2-10 words
    (the rest padding), rectangular binary masks; in pinned memory for a GPU."""
    import torch

    g = torch.Generator().manual_seed(seed)
    s, n = cfg.image_size, cfg.max_words
    lengths = torch.randint(2, 11, (batch,), generator=g)
    pad = torch.arange(n)[None, :] >= lengths[:, None]
    mask = torch.zeros(batch, 1, s, s)
    for i in range(batch):
        y0, x0 = torch.randint(0, s // 2, (2,), generator=g).tolist()
        h, w = torch.randint(s // 8, s // 2, (2,), generator=g).tolist()
        mask[i, 0, y0 : y0 + h, x0 : x0 + w] = 1.0
    out = {
        "image": torch.randn(batch, 3, s, s, generator=g),
        "words": torch.randint(2, vocab_size, (batch, n), generator=g),
        "pad_mask": pad,
        "mask": mask,
    }
    return {k: v.pin_memory() for k, v in out.items()} if pin else out


class TimedChoice:
    """One choice's model, optimizer and TrainStep, and its timings."""

    def __init__(self, choice: Choice, cfg, tc, device, vocab_size: int, batch: dict):
        import torch

        from restr.benchmarks.environment import rss_mb
        from restr.modeling import ReSTR
        from restr.train import TrainStep, build_optimizer

        self.choice, self.device, self.batch, self.torch = choice, device, batch, torch
        self._base = torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_mb()  # before its model exists
        torch.manual_seed(0)
        model = ReSTR(cfg, vocab_size).to(device).train()
        optimizer = build_optimizer(model, tc, fused=choice.fused_adamw)
        self.step_fn = TrainStep(
            torch.compile(model) if choice.compile else model, model, optimizer, tc, device, choice.precision
        )
        self.step_index = int(tc.warmup_fraction * tc.iterations)  # the schedule's peak LR
        self.round_ms: list[float] = []
        self.first_step_s = None
        self.peak_memory_mb = None

    @contextlib.contextmanager
    def settings(self):
        """Its TF32 switch and attention backend around its steps."""
        torch = self.torch
        cuda = self.device.type == "cuda"
        previous = torch.backends.cuda.matmul.allow_tf32
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = self.choice.tf32
        try:
            if self.choice.attention == "math":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel(SDPBackend.MATH):
                    yield
            else:
                yield
        finally:
            if cuda:
                torch.backends.cuda.matmul.allow_tf32 = previous

    def steps(self, n: int) -> float:
        """Run n steps; milliseconds per step, wall clock between device synchronisations."""
        sync = self.torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        with self.settings():
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                self.step_fn(self.batch, self.step_index)
            sync()
        return (time.perf_counter() - t0) * 1000.0 / n

    def warm_up(self, n: int) -> None:
        """The first step (compilation, allocator growth) timed apart, then n - 1 more; the peak
        memory this choice's model, optimizer and step take (GPU: allocated tensors; CPU: the growth
        of the process's resident set)."""
        from restr.benchmarks.environment import peak_rss_mb, reset_peak_rss

        torch = self.torch
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()
        self.first_step_s = self.steps(1) / 1000.0
        if n > 1:
            self.steps(n - 1)
        if cuda:
            self.peak_memory_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self.peak_memory_mb = peak_rss_mb() - self._base


@contextlib.contextmanager
def counting_value_reads():
    """Counts calls of the tensor methods that hand a value to Python (`.item()`, `.tolist()`,
    `float(t)`, `if t:` ...): each is a wait for the device when the tensor lives on a GPU.
    Yields a dict {method: calls}."""
    import torch

    counts = dict.fromkeys(SYNC_METHODS, 0)
    originals = {m: getattr(torch.Tensor, m) for m in SYNC_METHODS}

    def counting(name, original):
        def method(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return method

    for m, original in originals.items():
        setattr(torch.Tensor, m, counting(m, original))
    try:
        yield counts
    finally:
        for m, original in originals.items():
            setattr(torch.Tensor, m, original)


def host_syncs(timed: TimedChoice, steps: int = 2) -> dict:
    """Host synchronisations per step of a warmed-up choice: on a GPU what CUDA's sync debug mode
    reports (every synchronising call, Python's or the library's); on a CPU the value reads
    (`counting_value_reads`), which would be the waits on a GPU: there `timed` must use fused AdamW,
    as on a GPU, since the for-loop AdamW reads its step counters, which are CPU tensors on a GPU too."""
    import warnings

    torch = timed.torch
    if timed.device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                timed.steps(steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        found = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
        return {"method": "torch.cuda.set_sync_debug_mode", "per_step": len(found) / steps, "examples": found[:3]}
    with counting_value_reads() as counts:
        timed.steps(steps)
    return {
        "method": f"tensor value reads ({', '.join(SYNC_METHODS)}), {timed.choice.describe()}",
        "per_step": sum(counts.values()) / steps,
        "examples": [m for m, n in counts.items() if n],
    }


def attention_ops(timed: TimedChoice) -> dict[str, int]:
    """The attention operators one step of `timed` calls (forward and backward): the fused kernels
    SDPA picked (flash, memory-efficient, cuDNN; on a CPU its flash kernel) or its math fallback."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if "scaled_dot_product" in name or name in ("_softmax", "_softmax_backward_data"):
                self.counts[name] += 1
            return func(*args, **(kwargs or {}))

    with Ops() as ops:
        timed.steps(1)
    return dict(ops.counts)


def training_flops(cfg, batch: int) -> tuple[int, float]:
    """(forward MACs per image, FLOPs of one training step): 6 x MACs x batch."""
    from restr.benchmarks.flops import graph_macs

    macs = graph_macs(cfg)["end_to_end"]
    return macs, 6.0 * macs * batch


def mfu(step_flops: float, ms: float | None, peak_gflops: float | None) -> float | None:
    """Model FLOPs utilisation: the step's FLOPs per second over the peak's."""
    if not ms or not peak_gflops:
        return None
    return step_flops / (ms / 1000.0) / (peak_gflops * 1e9)


def projection(tc, step_ms: float, loader: dict | None, batch: int) -> dict:
    """Hours of the recipe's iterations at the slower of the step and the loader."""
    loader_ms = batch / loader["images_per_s"] * 1000.0 if loader else None
    bound = max(step_ms, loader_ms or 0.0)
    return {
        "iterations": tc.iterations,
        "step_ms": step_ms,
        "loader_ms_per_batch": loader_ms,
        "bound_by": "loader" if loader_ms and loader_ms > step_ms else "step",
        "hours": tc.iterations * bound / 3.6e6,
    }


def training_gemm_peak(torch, dtype):
    """The GPU's matrix-product peak in the training precision: benchmarks/gpu.py's GpuGemmPeak
    (cuBLAS products of 4096 and 8192 squares between CUDA events) with BF16 matrices where training
    autocasts to BF16."""
    from restr.benchmarks.gpu import GpuGemmPeak

    peak = GpuGemmPeak(torch)
    if dtype != torch.float16:
        peak.mats = {n: [m.to(dtype) for m in pair] for n, pair in peak.mats.items()}
        peak.samples = {n: [] for n in peak.SIZES}
        for _ in range(3):
            peak.sample()
    fp16_result = peak.result
    peak.result = lambda: {**fp16_result(), "dtype": str(dtype).removeprefix("torch.")}
    return peak


@dataclass
class TrainBenchOptions:
    config: str = "restr-b16"
    image_size: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    steps: int = 30  # timed steps per choice
    warmup: int = 3
    choices: tuple[str, ...] = CHOICES
    workers: int | None = None  # the loader's; None: the trainer's default for the device
    loader_batches: int = 50  # timed batches of the loader, at least 10 per worker
    photos: str | None = None  # the JPEG data set's folder (written there if absent); None: a temporary one
    photo_count: int = 64
    threads: int = 1
    gemm_size: int = 1024  # CPU peak: n of the n x n FP32 products (n/2, n, 2n)


def run_train_bench(o: TrainBenchOptions, log=print) -> dict:
    """Every measurement of `restr-bench --train`, as one JSON-ready dict."""
    import torch

    from restr.benchmarks.environment import environment
    from restr.benchmarks.peak import GemmPeak, load_warning
    from restr.cli_common import pick_device
    from restr.config import get_config
    from restr.train import default_workers, train_defaults

    device = pick_device(o.device)
    torch.set_num_threads(o.threads)
    cfg = get_config(o.config)
    if o.image_size and o.image_size != cfg.image_size:
        cfg = cfg.replace(image_size=o.image_size)
    tc = train_defaults(o.config)
    batch = o.batch_size or tc.batch_size
    workers = default_workers(device) if o.workers is None else o.workers
    env = environment(o.threads)
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    macs, step_flops = training_flops(cfg, batch)
    doc = {
        "kind": "train",
        "config": o.config,
        "image_size": cfg.image_size,
        "batch": batch,
        "device": device.type,
        "environment": env,
        "forward_macs_per_image": macs,
        "flops_per_step": step_flops,
        "options": asdict(o),
    }

    log(f"loader: {o.photo_count} JPEG photos, {workers} workers")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_photo_refer(o.photos or Path(tmp) / "photos", images=o.photo_count)
        doc["loader"] = loader_throughput(folder, cfg, batch, workers, device, max(o.loader_batches, 10 * workers))

    cuda = device.type == "cuda"
    choices = choices_for(device, o.choices)
    default = choices[0]
    if cuda:
        peak = training_gemm_peak(torch, {"bf16": torch.bfloat16}.get(default.precision, torch.float16))
    else:
        peak = GemmPeak(o.gemm_size, o.threads)
        peak.warmup(1)
    data = make_batch(cfg, batch, BENCH_VOCABULARY, pin=cuda)
    timed = []
    for c in choices:
        log(f"building and warming up: {c.label} ({c.describe()})")
        t = TimedChoice(c, cfg, tc, device, BENCH_VOCABULARY, data)
        t.warm_up(max(1, o.warmup))
        timed.append(t)
    if cuda:
        doc["host_syncs"] = host_syncs(timed[0])
    else:  # the default's step with the GPU's optimizer (host_syncs says why)
        check = TimedChoice(replace(default, label="sync check", fused_adamw=True), cfg, tc, device, BENCH_VOCABULARY, data)
        check.warm_up(1)
        doc["host_syncs"] = host_syncs(check)
        del check
    doc["attention_ops"] = attention_ops(timed[0])
    rounds = max(1, -(-o.steps // STEPS_PER_ROUND))
    for r in range(rounds):
        log(f"round {r + 1} of {rounds}")
        for t in timed:
            t.round_ms.append(t.steps(STEPS_PER_ROUND))
        peak.sample()
    gemm = peak.result()
    peak_gflops = gemm["peak_gflops"]
    doc["gemm"] = gemm
    rows = []
    base_ms = summarize(timed[0].round_ms)["median"]
    for t in timed:
        ms = summarize(t.round_ms)
        rows.append(
            {
                "label": t.choice.label,
                "choice": asdict(t.choice),
                "describe": t.choice.describe(),
                "ms_per_step": ms,
                "images_per_s": batch * 1000.0 / ms["median"],
                "peak_memory_mb": t.peak_memory_mb,
                "first_step_s": t.first_step_s,
                "mfu": mfu(step_flops, ms["median"], peak_gflops),
                "speedup_of_default": ratio(ms["median"], base_ms),
                "paired_of_default": float(np.median([a / b for a, b in zip(t.round_ms, timed[0].round_ms)])),
            }
        )
    doc["choices"] = rows
    doc["projection"] = projection(tc, base_ms, doc["loader"], batch)
    doc["loader"]["ratio_to_model"] = ratio(doc["loader"]["images_per_s"], rows[0]["images_per_s"])
    env["loadavg_end"] = list(os.getloadavg())
    if not cuda:
        env["load_warning"] = load_warning(env["loadavg_start"][0], env["loadavg_end"][0], o.threads, env["available_cpus"])
    return doc


def format_train_report(doc: dict) -> str:
    """The tables and lines of `restr-bench --train` for people."""
    from restr.benchmarks.peak import PEAK_NOT_REACHED, share
    from restr.tables import format_table

    env, gemm, loader, proj = doc["environment"], doc["gemm"], doc["loader"], doc["projection"]
    where = env.get("gpu") or f"CPU {env['cpu']['model']} ({env['available_cpus']} CPUs, {env['threads']} threads)"
    lines = [
        f"restr-bench --train: {doc['config']} at {doc['image_size']}x{doc['image_size']}, batch {doc['batch']}, on {where}",
        "versions: "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + (f", CUDA {env['cuda']}" if env.get("cuda") else ""),
        f"load average {env['loadavg_start'][0]:.2f} at start, {env['loadavg_end'][0]:.2f} at end",
        f"forward {doc['forward_macs_per_image'] / 1e9:.2f} GMACs per image -> {doc['flops_per_step'] / 1e12:.3f} TFLOP per step "
        "(6 x MACs x batch: forward 2, backward 4)",
        f"matrix-product peak of this run: {gemm['dtype']} GEMM, {gemm['peak_gflops'] / 1000:.2f} TFLOP/s "
        f"({gemm.get('peak_backend') or gemm.get('library')}; fastest sample between the rounds)",
    ]
    if env.get("load_warning"):
        lines.append(env["load_warning"])
    rows = []
    for r in doc["choices"]:
        ms = r["ms_per_step"]
        rows.append(
            [
                r["label"],
                r["describe"],
                f"{ms['median']:.1f}",
                f"{ms['min']:.1f}-{ms['max']:.1f}",
                f"{r['images_per_s']:.1f}",
                None if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}",
                share(r["mfu"]),
                f"{r['speedup_of_default']:.2f}",
                f"{r['paired_of_default']:.2f}",
                f"{r['first_step_s']:.1f}",
            ]
        )
    memory = "GPU MiB" if doc["device"] == "cuda" else "RSS +MiB"
    text = (
        "\n".join(lines)
        + "\n\n"
        + format_table(
            ["choice", "settings", "ms/step", "min-max", "images/s", memory, "MFU", "x default", "paired", "first s"],
            rows,
            title=f"training step (restr.train.TrainStep; median over {doc['choices'][0]['ms_per_step']['n']} rounds of {STEPS_PER_ROUND} steps, "
            "choices interleaved; MFU = 6 x MACs x batch / step time / the GEMM peak; x default = time over the default's; "
            "paired = the median over rounds of that ratio within each round; "
            "first s = the first step, compilation included)",
        )
    )
    if any((r["mfu"] or 0) > 1 for r in doc["choices"]):
        text += "\n" + PEAK_NOT_REACHED
    syncs, ops = doc["host_syncs"], doc["attention_ops"]
    text += (
        f"\n\nhost synchronisations per step: {syncs['per_step']:g} ({syncs['method']})"
        f"\nattention operators in one step of the default: " + (", ".join(f"{k} {v}" for k, v in sorted(ops.items())) or "none")
    )
    text += (
        f"\n\ndata loader alone: {loader['images_per_s']:.0f} images/s ({loader['workers']} workers, {loader['samples']} samples of "
        f"640x480 JPEG photos in the refer layout, letterboxed to {doc['image_size']}; first batch after {loader['first_batch_s']:.1f} s)"
        f" = {loader['ratio_to_model']:.2f}x the default step's {doc['choices'][0]['images_per_s']:.0f} images/s"
    )
    text += (
        f"\nprojected: {proj['iterations']:,} iterations of {doc['config']}'s recipe x {max(proj['step_ms'], proj['loader_ms_per_batch'] or 0):.1f} ms "
        f"({proj['bound_by']}-bound) = {proj['hours']:.2f} hours of training steps (validation and checkpoints not included)"
    )
    return text
