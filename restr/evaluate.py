"""Evaluation (docs/paper-to-code.md, evaluation protocol) and the `restr-eval` command.

Predictions are made on the letterboxed square, mapped back onto each original image with the
inverse letterbox, thresholded at 0.5 and compared with the ground truth at its own resolution.
"""
from __future__ import annotations

import sys
import time

import click
import torch
from torch.utils.data import DataLoader

from restr.cli_common import OneLineErrorCommand, Progress, UsageError, check_writable_file, one_line_errors, pick_device
from restr.metrics import SegmentationMetrics, format_table


@torch.no_grad()
def evaluate(
    model, dataset, device="cpu", batch_size: int = 32, threshold: float = 0.5, workers: int = 0,
    limit: int | None = None, progress: bool = True, indices=None,
) -> SegmentationMetrics:
    """Score `model` on `dataset` (a restr.data.ReferDataset). Returns the metrics accumulator.

    `indices` restricts the samples (e.g. one rank's share); `limit` takes the first n.
    """
    from torch.utils.data import Subset

    model.eval()
    if indices is None:
        indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=workers)
    metrics = SegmentationMetrics(dataset.length_groups)
    bar = Progress(len(loader), "evaluate", enabled=progress, unit="batch")
    for batch in loader:
        pixel_logits, _ = model(batch["image"].to(device), batch["words"].to(device), batch["pad_mask"].to(device))
        probs = torch.sigmoid(pixel_logits.float())[:, 0].cpu().numpy()
        for prob, i in zip(probs, batch["index"].tolist()):
            pred = dataset.letterbox(i).invert(prob) > threshold
            metrics.update(pred, dataset.ground_truth(i), dataset.num_words(i))
        bar.update(1)
    bar.close()
    return metrics


@click.command("restr-eval", cls=OneLineErrorCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--ckpt", required=True, type=click.Path(dir_okay=False), help="Checkpoint written by restr-train.")
@click.option("--data", required=True, help="'synthetic:test', or a refer-layout folder as PATH[:split].")
@click.option("--split", default=None, help="Split to score when --data names none (e.g. val, testA).")
@click.option("--split-by", default=None, help="refer annotation set, e.g. unc, umd, google (refs(<split-by>).p).")
@click.option("--image-root", default=None, type=click.Path(file_okay=False), help="Folder of the images (default: beside the annotations).")
@click.option("--shuffle-text", is_flag=True, help="Control: each sample reads another object's expression of the same image.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Samples per forward pass; changes speed and memory, not the scores.")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="A pixel is in the predicted mask when its probability exceeds this (the paper's 0.5).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Score only the first N samples.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="DataLoader worker processes.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the scores as JSON to this file.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
def main(ckpt, data, split, split_by, image_root, shuffle_text, batch_size, threshold, limit, device, workers, json_path, no_progress):
    """Score a checkpoint: overall (cumulative) IoU, mean IoU, precision@0.5..0.9 and IoU by
    expression length (the paper's Table 2), with masks compared at each image's original size.

    \b
    restr-eval --ckpt runs/demo/model.pt --data synthetic:test --json eval.json
    restr-eval --ckpt model.pt --data /data/refcoco --split val --split-by unc --image-root /data/coco/train2014

    Exit codes: 0 done, 2 bad input (nothing written).
    """
    with one_line_errors("restr-eval"):
        from restr.benchmarks.report import write_json
        from restr.checkpoint import load_checkpoint
        from restr.data import build_dataset

        if json_path:
            check_writable_file(json_path, "--json")  # before the evaluation, not after it
        dev = pick_device(device)
        ck = load_checkpoint(ckpt)
        cfg = ck.config
        ds = build_dataset(data, split, cfg.image_size, ck.vocab, cfg.image_mean, cfg.image_std, cfg.max_words,
                           split_by=split_by, image_root=image_root, shuffle_text=shuffle_text,
                           progress=not no_progress and sys.stderr.isatty())
        if len(ds) == 0:
            raise UsageError(f"{data}: nothing to score")
        t0 = time.perf_counter()
        metrics = evaluate(ck.model.to(dev), ds, dev, batch_size, threshold, workers, limit, progress=not no_progress)
        result = metrics.result()
        result.update(checkpoint=str(ckpt), config=cfg.name, data=data, split=split, shuffle_text=shuffle_text,
                      threshold=threshold, seconds=round(time.perf_counter() - t0, 2))
        title = f"{cfg.name} on {data}" + (" (shuffled-text control)" if shuffle_text else "")
        click.echo(title)
        click.echo(format_table(result))
        if json_path:
            write_json(json_path, result)
            click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    main()
