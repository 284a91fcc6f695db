"""Evaluation (docs/paper-to-code.md, evaluation protocol) and the `restr-eval` command.

Predictions are made on the letterboxed square, mapped back onto each original image with the
inverse letterbox, thresholded at 0.5 and compared with the ground truth at its own resolution.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
import warnings

import click
import torch
from torch.utils.data import DataLoader, Subset

from restr.cli_common import one_line_errors, pick_device
from restr.metrics import SegmentationMetrics, agreement, difference, format_comparison, format_table, intersection_union
from restr.runtime.cli_common import OneLineErrorCommand, Progress, UsageError, check_writable_file, runtime_options
from restr.runtime.errors import first_line
from restr.runtime.transforms import ImageTransform

MAX_EXPRESSIONS = 256  # expressions the runtime takes in one call about one image (Predictor.max_expressions)


@torch.no_grad()
def checkpoint_masks(model, dataset, indices, device="cpu", batch_size: int = 32, threshold: float = 0.5, workers: int = 0):
    """The PyTorch model's masks at each image's original size: one list of (index, mask) per batch,
    the samples of `indices` in that order."""
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=workers)
    for batch in loader:
        pixel_logits, _ = model(batch["image"].to(device), batch["words"].to(device), batch["pad_mask"].to(device))
        probs = torch.sigmoid(pixel_logits.float())[:, 0].cpu().numpy()
        yield [(i, dataset.letterbox(i).invert_mask(prob, threshold)) for prob, i in zip(probs, batch["index"].tolist())]


def evaluate(
    model,
    dataset,
    device="cpu",
    batch_size: int = 32,
    threshold: float = 0.5,
    workers: int = 0,
    limit: int | None = None,
    progress: bool = True,
    indices=None,
) -> SegmentationMetrics:
    """Score `model` on `dataset` (a restr.data.ReferDataset). Returns the metrics accumulator.

    `indices` restricts the samples (e.g. one rank's share); `limit` takes the first n.
    """
    model.eval()
    if indices is None:
        indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    metrics = SegmentationMetrics(dataset.length_groups)
    bar = Progress(math.ceil(len(indices) / batch_size), "evaluate", enabled=progress, unit="batch")
    for batch in checkpoint_masks(model, dataset, indices, device, batch_size, threshold, workers):
        for i, pred in batch:
            metrics.update(pred, dataset.ground_truth(i), dataset.num_words(i))
        bar.update(1)
    bar.close()
    return metrics


# -- the deployed model: an export folder through the runtime, or a served one ---------------------------


def predict_images(predictor, requests):
    """One ImageResult per (image, texts) request, in order: `predictor.predict_many` where the runtime
    has it, else one `predict_image(image, texts, probs=False)` per request (a served model's client)."""
    from restr.runtime.predictor import ImageResult

    many = getattr(predictor, "predict_many", None)
    if many is not None:
        yield from many(requests, probs=False)
        return
    for k, (image, texts) in enumerate(requests):
        try:
            preds = predictor.predict_image(image, texts, probs=False)
        except Exception as e:  # as predict_many: the error in the result, the caller decides
            yield ImageResult(k, image, texts, [], e)
        else:
            yield ImageResult(k, image, texts, preds, None, preds[0].mask.shape if preds else None)


class Served:
    """A model behind a restr server (`RemotePredictor`) through the one call evaluation makes. The image
    goes as its file's bytes, which the server decodes as it decodes any client's."""

    def __init__(self, url: str, threshold: float | None = None):
        from restr.runtime.client import RemotePredictor

        self.remote = RemotePredictor(url, threshold=threshold)
        self.url = self.remote.client.url

    def predict_image(self, image, texts, probs=False):
        return self.remote.predict_embedding(self.remote.embed(image), texts)

    def close(self) -> None:
        self.remote.close()


def runtime_masks(predictor, dataset, groups: list[list[int]]):
    """The deployed model's masks, one (index, mask) per sample, in the order of `groups`: each image
    goes to the runtime as its file path, with every expression read about it."""
    requests = [(dataset.image_path(g[0]), [dataset.text(i) for i in g]) for g in groups]
    for group, result in zip(groups, predict_images(predictor, requests), strict=True):
        if result.error is not None:
            raise UsageError(f"{result.image}: the runtime failed on it: {first_line(result.error)}")
        yield from zip(group, (p.mask for p in result.predictions), strict=True)


def score(dataset, streams, total: int, progress: bool = True) -> tuple[list[SegmentationMetrics], SegmentationMetrics]:
    """Score streams of (index, mask) about the same samples, each in its own order (the checkpoint's
    in index order, the runtime's image by image), against the ground truth, read once per sample when
    every stream has answered about it; an answer that comes first waits in memory. Returns an
    accumulator per stream (samples added in index order, as `evaluate` adds them) and, for two
    streams, one of the first's masks against the second's."""
    counts: list[dict] = [{} for _ in streams]
    waiting: list[dict] = [{} for _ in streams]
    pairs = SegmentationMetrics()
    bar = Progress(total, "evaluate", enabled=progress, unit="sample")
    for answers in itertools.zip_longest(*streams):
        for side, answer in enumerate(answers):
            if answer is None:
                continue
            i, mask = answer
            waiting[side][i] = mask
            if not all(i in w for w in waiting):
                continue
            masks = [w.pop(i) for w in waiting]
            gt = dataset.ground_truth(i)
            for c, mask in zip(counts, masks):
                if mask.shape != gt.shape:
                    raise UsageError(
                        f"{dataset.image_path(i)}: the mask is {mask.shape[1]}x{mask.shape[0]} pixels, the ground "
                        f"truth {gt.shape[1]}x{gt.shape[0]} (the runtime reads the image at another size than the annotations)"
                    )
                c[i] = intersection_union(mask, gt)
            if len(masks) == 2:
                pairs.update(*masks)
            bar.update(1)
    bar.close()
    if any(waiting):
        raise RuntimeError(f"the models answered about different samples ({sum(map(len, waiting))} left unpaired)")
    metrics = []
    for c in counts:
        m = SegmentationMetrics(dataset.length_groups)
        for i in sorted(c):
            m.add(*c[i], dataset.num_words(i))
        metrics.append(m)
    return metrics, pairs


def timed(stream, clock: list[float]):
    """`stream` as it is, the seconds spent producing its items added to clock[0]."""
    stream = iter(stream)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(stream)
        except StopIteration:
            return
        finally:
            clock[0] += time.perf_counter() - t0
        yield item


RUNTIME_OPTIONS = ("backend", "precision", "providers")


@click.command(
    "restr-eval", cls=OneLineErrorCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.option(
    "--ckpt",
    default=None,
    type=click.Path(dir_okay=False),
    help="Checkpoint written by restr-train; with --artifacts or --server, the reference they are compared with.",
)
@click.option(
    "--from",
    "ckpt_from",
    type=click.Choice(["restr", "authors"]),
    default="restr",
    show_default=True,
    help="What --ckpt holds: a restr checkpoint, or a state dict of the authors' train_restr.py (read into restr-b16-authors).",
)
@click.option(
    "--vocab",
    "authors_vocab",
    default=None,
    type=click.Path(exists=True),
    help="With --from authors: their data/vocabulary_*.txt, or their data/ folder.",
)
@click.option(
    "--artifacts",
    default=None,
    type=click.Path(file_okay=False),
    help="Export folder written by restr-export: score the model as the runtime runs it (its vocabulary, its pre- and post-processing graphs).",
)
@click.option(
    "--server",
    default=None,
    metavar="URL",
    help="Instead of --artifacts: score the model a restr server serves (restr-serve), e.g. http://127.0.0.1:8000 or grpc://127.0.0.1:8001.",
)
@runtime_options("With --artifacts: ")
@click.option(
    "--max-drop",
    type=click.FloatRange(min=0),
    default=None,
    metavar="DROP",
    help="With --ckpt and --artifacts/--server: exit 1 when the artifacts' overall IoU is below the checkpoint's "
    "by more than DROP, a fraction as every IoU here (0.005: half a point).",
)
@click.option("--data", required=True, help="'synthetic:test', or a refer-layout folder as PATH[:split].")
@click.option("--split", default=None, help="Split to score when --data names none (e.g. val, testA).")
@click.option("--split-by", default=None, help="refer annotation set, e.g. unc, umd, google (refs(<split-by>).p).")
@click.option(
    "--image-root", default=None, type=click.Path(file_okay=False), help="Folder of the images (default: beside the annotations)."
)
@click.option("--shuffle-text", is_flag=True, help="Control: each sample reads another object's expression of the same image.")
@click.option(
    "--batch-size",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Samples per forward pass of the checkpoint; changes speed and memory, not the scores.",
)
@click.option(
    "--threshold",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="A pixel is in the predicted mask when its probability exceeds this (the paper's 0.5).",
)
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Score only the first N samples.")
@click.option("--device", default="auto", show_default=True, help="The checkpoint's device: cpu, cuda, cuda:1 or auto.")
@click.option(
    "--workers", default=0, show_default=True, type=click.IntRange(min=0), help="DataLoader worker processes (the checkpoint's)."
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the scores as JSON to this file.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
def main(
    ckpt,
    ckpt_from,
    authors_vocab,
    artifacts,
    server,
    backend,
    precision,
    providers,
    max_drop,
    data,
    split,
    split_by,
    image_root,
    shuffle_text,
    batch_size,
    threshold,
    limit,
    device,
    workers,
    json_path,
    no_progress,
):
    """Score a checkpoint, or the model as deployed (an export folder through the runtime, or a
    served model), or both on the same samples: overall (cumulative) IoU, mean IoU,
    precision@0.5..0.9 and IoU by expression length (the paper's Table 2), with masks compared at
    each image's original size. IoU is a fraction (0.735).

    \b
    restr-eval --ckpt runs/demo/model.pt --data synthetic:test --json eval.json
    restr-eval --ckpt model.pt --data /data/refcoco --split val --split-by unc --image-root /data/coco/train2014
    restr-eval --artifacts runs/demo/export --precision fp16 --data synthetic:test
    restr-eval --ckpt runs/demo/model.pt --artifacts runs/demo/export --data synthetic:test --max-drop 0.002

    With --ckpt and --artifacts (or --server) both models score the same samples; the table shows
    each metric for both and the difference, and how alike their masks are expression by
    expression (mask IoU between the two). The deploy gate, --max-drop DROP, fails when the
    artifacts' overall IoU is below the checkpoint's by more than DROP.

    Exit codes: 0 done, 1 the artifacts dropped more than --max-drop (everything is still printed
    and written), 2 bad input (nothing written).
    """
    with one_line_errors("restr-eval"):
        check_options(click.get_current_context(), ckpt, artifacts, server, max_drop)
        if json_path:
            check_writable_file(json_path, "--json")  # before the evaluation, not after it
        if (ckpt_from != "restr" or authors_vocab) and ckpt is None:
            raise UsageError("--from and --vocab say what --ckpt holds: give --ckpt FILE")
        source = (ckpt_from, authors_vocab)
        common = dict(data=data, split=split, shuffle_text=shuffle_text, threshold=threshold)
        read = dict(
            split_by=split_by, image_root=image_root, shuffle_text=shuffle_text, progress=not no_progress and sys.stderr.isatty()
        )
        if artifacts is None and server is None:
            evaluate_checkpoint(
                ckpt, source, data, split, read, common, batch_size, threshold, limit, device, workers, json_path, no_progress
            )
            return
        runtime = open_runtime(artifacts, server, backend, precision, providers, threshold)
        try:
            what = describe_runtime(runtime, artifacts, backend, precision)
            gate = evaluate_deployed(
                runtime,
                what,
                ckpt,
                source,
                data,
                split,
                read,
                common,
                batch_size,
                threshold,
                limit,
                device,
                workers,
                json_path,
                no_progress,
                max_drop,
            )
        finally:
            if isinstance(runtime, Served):  # its connection, closed in the thread that made it
                runtime.close()
        if not gate:
            sys.exit(1)


def check_options(ctx, ckpt, artifacts, server, max_drop) -> None:
    """The combinations of options that cannot work, refused before anything is read."""
    if ckpt is None and artifacts is None and server is None:
        raise UsageError("give --ckpt FILE, --artifacts DIR or --server URL (--ckpt with one of the others compares them)")
    if artifacts is not None and server is not None:
        raise UsageError("give one of --artifacts DIR and --server URL")
    given = [f"--{name}" for name in RUNTIME_OPTIONS if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if given and artifacts is None:
        raise UsageError(
            f"{', '.join(given)}: only for an export folder"
            + ("; a server runs its model as restr-serve was told" if server else " (--artifacts DIR)")
        )
    if max_drop is not None:
        if ckpt is None or (artifacts is None and server is None):
            raise UsageError(
                "--max-drop compares the artifacts with the checkpoint they came from: give --ckpt FILE and --artifacts DIR (or --server URL)"
            )
        if max_drop >= 1:
            raise UsageError(
                f"--max-drop {max_drop:g}: IoU is a fraction (0.735, not 73.5), so 0.01 is one point; give a drop below 1"
            )


def evaluate_checkpoint(
    ckpt, source, data, split, read, common, batch_size, threshold, limit, device, workers, json_path, no_progress
) -> None:
    """`restr-eval --ckpt` alone."""
    dev = pick_device(device)
    ck, ds = load_checkpoint_and_data(ckpt, source, data, split, read)
    t0 = time.perf_counter()
    metrics = evaluate(ck.model.to(dev), ds, dev, batch_size, threshold, workers, limit, progress=not no_progress)
    result = checkpoint_block(metrics, ckpt, ck, common, time.perf_counter() - t0)
    title = f"{ck.config.name} on {data}" + (" (shuffled-text control)" if common["shuffle_text"] else "")
    click.echo(title)
    click.echo(format_table(result))
    if json_path:
        _write_json(json_path, result)


def load_checkpoint_and_data(ckpt, source: tuple, data, split, read):
    """The checkpoint (`source`: (what --ckpt holds, the authors' vocabulary)) and the data set read
    with its vocabulary and sizes."""
    from restr.checkpoint import load_checkpoint_from
    from restr.data import build_dataset

    ck = load_checkpoint_from(ckpt, *source)
    cfg = ck.config
    ds = build_dataset(
        data,
        split,
        cfg.image_size,
        ck.vocab,
        cfg.image_mean,
        cfg.image_std,
        cfg.max_words,
        **read,
        transform=cfg.image_transform,
        tokenizer=cfg.tokenizer,
    )
    if len(ds) == 0:
        raise UsageError(f"{data}: nothing to score")
    return ck, ds


def checkpoint_block(metrics: SegmentationMetrics, ckpt, ck, common: dict, seconds: float) -> dict:
    """The scores of a checkpoint: `restr-eval --ckpt`'s JSON (its keys are a stable interface)."""
    return {**metrics.result(), "checkpoint": str(ckpt), "config": ck.config.name, **common, "seconds": round(seconds, 2)}


def open_runtime(artifacts, server, backend, precision, providers, threshold):
    """The deployed model: a Predictor on the export folder, or the Served model; what cannot be
    used (folder, manifest, precision, provider, engine, server) is a UsageError, before any work."""
    from restr.runtime.predictor import Predictor
    from restr.runtime.runners import choose_providers
    from restr.runtime.trt_runner import TensorRTUnavailable

    try:
        if server is not None:
            return Served(server, threshold)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a provider this onnxruntime lacks: the score would be another's
            choose_providers(providers)
        return Predictor.from_artifacts(
            artifacts, backend=backend, precision=precision, providers=providers, threshold=threshold, cache_size=2
        )
    except RuntimeWarning as w:
        raise UsageError(f"--providers {providers}: {str(w).removesuffix('; skipped')}") from None
    except (ValueError, TensorRTUnavailable) as e:  # ArtifactError, ServerError, a bad URL or provider, no TensorRT
        raise UsageError(first_line(e)) from None
    except (RuntimeError, OSError) as e:  # ONNX Runtime, CUDA, disk
        raise UsageError(f"{type(e).__name__}: {first_line(e)}") from None


def describe_runtime(runtime, artifacts, backend: str, precision: str) -> dict:
    """The fields that name what was scored: artifacts, backend, precision, providers; or server."""
    if isinstance(runtime, Served):
        return {"server": runtime.url}
    first = next(iter(runtime.runners.values()))
    return {
        "artifacts": str(artifacts),
        "backend": backend,
        "precision": "fp16" if backend == "tensorrt" and precision == "fp32" else precision,
        "providers": list(getattr(first, "providers", None) or [getattr(first, "backend", type(first).__name__)]),
    }


def exported_from(runtime) -> dict:
    """The deployed model's `checkpoint` and `config` fields: what its manifest names (a server's are unknown)."""
    if isinstance(runtime, Served):
        return {"checkpoint": None, "config": None}
    model = runtime.artifacts.manifest.get("model") or {}
    return {"checkpoint": (model.get("checkpoint") or {}).get("file"), "config": runtime.artifacts.model_name}


def read_data_as_deployed(runtime, data, split, read):
    """The data set read with the export's vocabulary and sizes. The runtime takes only the image paths,
    expressions, masks and word counts from it; a server tokenizes with its own vocabulary, so for one
    the data set's is built from the expressions, and words are counted up to the server's N_l (20,
    every restr config's, where it does not say)."""
    from restr.data import build_dataset

    if isinstance(runtime, Served):
        max_words = getattr(runtime.remote.artifacts, "max_words", None) or 20  # what the server says, where it says it
        ds = build_dataset(data, split, image_size=1, vocab=None, mean=(0.5,) * 3, std=(0.5,) * 3, max_words=max_words, **read)
    else:
        art = runtime.artifacts
        ds = build_dataset(
            data,
            split,
            art.image_size,
            art.vocabulary(),
            art.mean,
            art.std,
            art.max_words,
            **read,
            transform=ImageTransform.of_manifest(art.manifest),
        )
    if len(ds) == 0:
        raise UsageError(f"{data}: nothing to score")
    return ds


def warn_if_exported_from_another(runtime, ckpt) -> None:
    from restr.runtime.artifacts import sha256_file

    if isinstance(runtime, Served):
        return
    source = (runtime.artifacts.manifest.get("model") or {}).get("checkpoint") or {}
    if source.get("sha256") != sha256_file(ckpt):
        click.echo(
            f"warning: {runtime.artifacts.root} was not exported from {ckpt} (its manifest names "
            f"{source.get('file') or 'random weights'}): the difference measures more than the export",
            err=True,
        )


def evaluate_deployed(
    runtime,
    what: dict,
    ckpt,
    source,
    data,
    split,
    read,
    common,
    batch_size,
    threshold,
    limit,
    device,
    workers,
    json_path,
    no_progress,
    max_drop,
) -> bool:
    """Score the deployed model, and the checkpoint on the same samples when given; print, write, and
    return whether the deploy gate (--max-drop) passed (True without one)."""
    from restr.runtime.predictor import TextTruncatedWarning

    ck = None
    if ckpt is not None:
        dev = pick_device(device)
        ck, ds = load_checkpoint_and_data(ckpt, source, data, split, read)
        warn_if_exported_from_another(runtime, ckpt)
    else:
        ds = read_data_as_deployed(runtime, data, split, read)
    n = len(ds) if limit is None else min(limit, len(ds))
    groups = ds.groups_by_image(range(n), MAX_EXPRESSIONS)
    clocks = [[0.0], [0.0]]  # seconds: the deployed model's, the checkpoint's
    streams = [timed(runtime_masks(runtime, ds, groups), clocks[0])]
    if ck is not None:  # in index order, batched as restr-eval --ckpt batches it: the same masks
        batches = checkpoint_masks(ck.model.to(dev).eval(), ds, range(n), dev, batch_size, threshold, workers)
        streams.insert(0, timed(itertools.chain.from_iterable(batches), clocks[1]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TextTruncatedWarning)  # the checkpoint reads the first N_l words silently too
            metrics, pairs = score(ds, streams, n, progress=not no_progress)
    except (RuntimeError, OSError) as e:  # ONNX Runtime, CUDA, TensorRT, the server, disk: one line
        raise UsageError(f"{type(e).__name__}: {first_line(e)}") from None

    deployed = {**metrics[-1].result(), **exported_from(runtime), **common, "seconds": round(clocks[0][0], 2), **what}
    name = (
        f"server {what['server']}"
        if "server" in what
        else f"export {what['artifacts']} ({what['backend']}, {what['precision']}, {', '.join(what['providers'])})"
    )
    control = " (shuffled-text control)" if common["shuffle_text"] else ""
    if ck is None:
        click.echo(f"{deployed['config'] or 'the served model'}, {name}, on {data}{control}")
        click.echo(format_table(deployed))
        if json_path:
            _write_json(json_path, deployed)
        return True
    reference = checkpoint_block(metrics[0], ckpt, ck, common, clocks[1][0])
    agree = agreement(pairs)
    drop = reference["overall_iou"] - deployed["overall_iou"]
    passed = max_drop is None or round(drop, 12) <= max_drop
    out = {
        "checkpoint": reference,
        "artifacts": deployed,
        "difference": difference(reference, deployed),
        "agreement": agree,
        "max_drop": max_drop,
        "passed": passed if max_drop is not None else None,
    }
    click.echo(f"{ck.config.name} on {data}{control}: checkpoint {ckpt} against {name}")
    click.echo(format_comparison(reference, deployed, agree, names=("checkpoint", "server" if "server" in what else "artifacts")))
    if json_path:
        _write_json(json_path, out)
    if max_drop is not None:
        if passed:
            click.echo(f"deploy gate passed: overall IoU {-drop:+.4f} against the checkpoint, within --max-drop {max_drop:g}")
        else:
            click.echo(
                f"restr-eval: deploy gate failed: the artifacts' overall IoU {deployed['overall_iou']:.4f} is {drop:.4f} below "
                f"the checkpoint's {reference['overall_iou']:.4f}, more than --max-drop {max_drop:g}",
                err=True,
            )
    return passed


def _write_json(path, obj) -> None:
    from restr.runtime.atomic import write_json

    write_json(path, obj)
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
