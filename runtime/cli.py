"""`restr-predict`: masks for one image and one or more expressions, from an export folder.

    restr-predict --artifacts runs/demo/export --image photo.jpg \\
        --text "the dog on the left" --text "the red car" --out runs/demo/predict --overlay

writes, per expression k (from 1), `<out>/<k>_<slug>.png` (the mask, 0/255 at the image's size),
with --overlay `<out>/<k>_<slug>_overlay.png`, and `<out>/summary.json` (per expression: text,
files, area, area_fraction, score, unknown words, truncation; timings). Everything is computed
before anything is written, and files are written to a temporary folder and moved into place, so
a failure leaves no partial output. Bad input: a one-line error on stderr and exit code 2.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import click
from PIL import Image

from restr.runtime.atomic import write_json
from restr.runtime.predictor import Prediction, Predictor, TextError, TextTruncatedWarning, as_rgb
from restr.runtime.tokenizer import split_words
from restr.runtime.trt_runner import TensorRTUnavailable
from restr.runtime.visualize import save_mask, save_overlay

PROG = "restr-predict"
EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """Any other bad command-line input (output path, options)."""


class OneLineErrorCommand(click.Command):
    """A click command whose usage errors are one line on stderr with exit code 2 (no usage block)."""

    def main(self, args=None, prog_name=None, **extra):
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"{PROG}: error: {e.format_message().rstrip('.')} (see --help)", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def slugify(text: str, max_len: int = 40) -> str:
    """'The dog, left!' -> 'the-dog-left': a file-name-safe short form of an expression."""
    slug = "-".join(split_words(text))
    slug = re.sub(r"[^a-z0-9_-]+", "", slug.encode("ascii", "ignore").decode().lower())
    return slug[:max_len].strip("-") or "expression"


def _fail(message: str) -> None:
    click.echo(f"{PROG}: error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.command(cls=OneLineErrorCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--artifacts", "artifacts", type=click.Path(path_type=Path), help="Export folder written by restr-export (holds manifest.json).")
@click.option("--server", "server", default=None, metavar="URL", help="Instead of --artifacts: ask a restr Triton server (restr-serve), e.g. http://127.0.0.1:8000 or grpc://127.0.0.1:8001.")
@click.option("--image", "image", required=True, type=click.Path(path_type=Path), help="Image file (any format Pillow reads; EXIF orientation is applied).")
@click.option("--text", "texts", required=True, multiple=True, help="Referring expression; repeat for several (they are batched against one image encoding).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output folder for the mask PNGs and summary.json (created if missing).")
@click.option("--overlay", is_flag=True, help="Also write <k>_<slug>_overlay.png: the image with the mask tinted.")
@click.option("--backend", type=click.Choice(["ort", "tensorrt"]), default="ort", show_default=True, help="ONNX Runtime graphs or native TensorRT engines.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True, help="FP32 graphs or the mixed-precision FP16 ones (engines are fp16).")
@click.option("--providers", default=None, help="ONNX Runtime providers, comma-separated: tensorrt, cuda, cpu, or auto. [default: cpu]")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=None, help="Mask threshold on the probability. [default: the manifest's, 0.5]")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the summary to FILE ('-' for stdout, which replaces the table).")
def main(artifacts: Path, server: str | None, image: Path, texts: tuple[str, ...], out: Path, overlay: bool, backend: str,
         precision: str, providers: str | None, threshold: float | None, json_path: Path | None) -> None:
    """Segment the object each --text refers to in --image with a restr export."""
    t_start = time.perf_counter()
    try:
        if out.exists() and not out.is_dir():
            raise InputError(f"{out}: exists and is not a folder")
        for i, t in enumerate(texts):
            if not split_words(t):
                raise TextError(f"expression {i + 1} ({t!r}) is empty: it has no words")
        t0 = time.perf_counter()
        if (artifacts is None) == (server is None):
            raise InputError("give one of --artifacts DIR and --server URL")
        if server is not None:  # same outputs, computed by the server
            from restr.runtime.client import RemotePredictor
            predictor, artifacts = RemotePredictor(server, threshold=threshold), server
        else:
            predictor = Predictor.from_artifacts(artifacts, backend=backend, precision=precision, providers=providers,
                                                 threshold=threshold, cache_size=1)
        load_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own size guard reports it
            rgb = as_rgb(image)  # decoded once: for the predictor and the overlay
        decode_ms = (time.perf_counter() - t0) * 1000
        emb = predictor.embed(rgb)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TextTruncatedWarning)  # reported below, one line each
            preds = predictor.predict_embedding(emb, list(texts))
    except (ValueError, TensorRTUnavailable) as e:  # ArtifactError, ImageError, TextError, bad providers, ServerError
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)

    for i, p in enumerate(preds, 1):
        if p.truncated:
            click.echo(f"warning: expression {i} has {len(split_words(p.text))} words; only the first {predictor.artifacts.max_words} were used", err=True)
        if p.unknown_words:
            click.echo(f"warning: expression {i}: words not in the vocabulary (read as <unk>): {', '.join(p.unknown_words)}", err=True)

    names = [f"{i}_{slugify(p.text)}" for i, p in enumerate(preds, 1)]
    summary = _summary(predictor, artifacts, image, emb, preds, names, overlay, load_ms, decode_ms, t_start)
    try:
        _write_outputs(out, preds, names, rgb if overlay else None, summary)
        if json_path is not None and str(json_path) != "-":
            _write_json_atomic(json_path, summary)
    except OSError as e:
        _fail(f"cannot write the outputs: {e}")
    if json_path is not None and str(json_path) == "-":
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_table(summary, out)


def _summary(predictor: Predictor, artifacts: Path, image: Path, emb, preds: list[Prediction], names: list[str],
             overlay: bool, load_ms: float, decode_ms: float, t_start: float) -> dict:
    h, w = emb.size
    k = len(preds)
    per_expr = [{n: v for n, v in p.timings.items() if n not in ("preprocess", "vision")} for p in preds]
    decode_keys = [n for n in per_expr[0] if n != "postprocess"]
    runners = {name: getattr(r, "providers", None) or type(r).__name__ for name, r in predictor.runners.items()}
    return {
        "artifacts": str(artifacts),
        "model": predictor.artifacts.model_name,
        "backend": "tensorrt" if any(type(r).__name__ == "TrtRunner" for r in predictor.runners.values()) else "ort",
        "runners": runners,
        "mode": predictor.mode,
        "image": {"path": str(image), "width": w, "height": h},
        "threshold": predictor.threshold,
        "expressions": [
            {
                "index": i,
                "text": p.text,
                "mask": f"{name}.png",
                "overlay": f"{name}_overlay.png" if overlay else None,
                "area": p.area,
                "area_fraction": round(p.area_fraction, 6),
                "score": round(p.score, 6),
                "patch_score": round(p.patch_score, 6),
                "unknown_words": p.unknown_words,
                "truncated": p.truncated,
                "timings_ms": {n: round(v, 3) for n, v in t.items()},
            }
            for i, (p, name, t) in enumerate(zip(preds, names, per_expr), 1)
        ],
        "timings_ms": {
            "load": round(load_ms, 3),
            "preprocess": round(decode_ms + emb.timings["preprocess"], 3),  # decode, EXIF, RGB, letterbox, normalise
            "vision": round(emb.timings["vision"], 3),
            "language_fusion_per_expression": round(sum(sum(t[n] for n in decode_keys) for t in per_expr) / k, 3),
            "postprocess_per_expression": round(sum(t["postprocess"] for t in per_expr) / k, 3),
            "total": round((time.perf_counter() - t_start) * 1000, 3),
        },
    }


def _write_outputs(out: Path, preds: list[Prediction], names: list[str], rgb, summary: dict) -> None:
    """Write everything into a temporary folder inside `out`, then move each file into place."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{PROG}-", dir=out))
    try:
        files = []
        for p, name in zip(preds, names):
            files.append(save_mask(tmp / f"{name}.png", p.mask).name)
            if rgb is not None:
                files.append(save_overlay(tmp / f"{name}_overlay.png", rgb, p.mask).name)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        files.append("summary.json")  # last: its presence means the rest is complete
        for f in files:
            os.replace(tmp / f, out / f)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def _write_json_atomic(path: Path, obj: dict) -> None:
    write_json(path, obj)


def _print_table(summary: dict, out: Path) -> None:
    img = summary["image"]
    exprs = summary["expressions"]
    click.echo(f"{summary['model']} ({summary['backend']}, {summary['mode']}) on {img['path']} ({img['width']}x{img['height']}), threshold {summary['threshold']:g}")
    width = min(48, max(10, *(len(e["text"]) for e in exprs)))
    click.echo(f"{'#':>3}  {'expression':<{width}}  {'area px':>10}  {'area':>6}  {'score':>5}  mask")
    for e in exprs:
        text = e["text"] if len(e["text"]) <= width else e["text"][: width - 3] + "..."
        click.echo(f"{e['index']:>3}  {text:<{width}}  {e['area']:>10,}  {e['area_fraction']:>6.1%}  {e['score']:>5.2f}  {out / e['mask']}")
    t = summary["timings_ms"]
    click.echo(
        f"timings (ms): load {t['load']:.1f}, preprocess {t['preprocess']:.1f}, vision {t['vision']:.1f}, "
        f"language+fusion {t['language_fusion_per_expression']:.1f} per expression, postprocess {t['postprocess_per_expression']:.1f} per expression"
    )
    click.echo(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
