"""`restr-predict`: masks for one image and one or more expressions, from an export folder.

    restr-predict --artifacts runs/demo/export --image photo.jpg \\
        --text "the dog on the left" --text "the red car" --out runs/demo/predict --overlay

writes, per expression k (from 1), `<out>/<k>_<slug>.png` (the mask, 0/255 at the image's size),
with --overlay `<out>/<k>_<slug>_overlay.png`, with --sheet `<out>/sheet.png` (every overlay,
captioned), and `<out>/summary.json` (per expression: text, files, area, area_fraction, score,
unknown words, no_known_words, truncation; timings). Everything is computed before anything is
written, and files are written to a staging folder inside --out and moved into place, so a failure
leaves no partial output; SIGTERM and SIGHUP remove the staging folder as Ctrl-C does, and one that a
killed run left (kill -9, or the C++ CLI aborted) is removed by the next run. A folder holding other files is refused unless --force (which replaces a previous
run's outputs whole). Failures are one line on stderr: exit code 2 for bad input and for runtime
failures (ONNX Runtime, CUDA, TensorRT, disk), 3 for an internal error (a bug: please report it).

Bulk jobs (`--images`, `--requests`, `--data` in place of `--image`) are `restr.runtime.bulk`: many
images in one process, written to `<out>/predictions.jsonl`, with --resume and --shard.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
import time
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import click
import numpy as np
from PIL import Image

from restr.runtime.artifacts import ArtifactError
from restr.runtime.atomic import remove_stale_staging, staging_dir, write_json
from restr.runtime.cli_common import (
    EXIT_BAD_INPUT,
    OneLineErrorCommand,
    UsageError,
    check_writable_dir,
    check_writable_file,
    exit_code,
    runtime_options,
    signals_deferred,
    signals_interrupt,
)
from restr.runtime.errors import first_line
from restr.runtime.predictor import Prediction, Predictor, TextError, TextTruncatedWarning, as_rgb
from restr.runtime.tokenizer import split_words
from restr.runtime.trt_runner import TensorRTUnavailable
from restr.runtime.visualize import contact_sheet, save_atomic, save_mask, save_overlay

PROG = "restr-predict"
EXIT_INTERNAL = 3  # a bug in restr: the message names the exception
SCORE_LEGEND = (
    "score: mean probability inside the mask, how sure the model is of the pixels it chose "
    "(not whether it chose the right object)"
)


class InputError(ValueError):
    """Any other bad command-line input (output path, options)."""


def slugify(text: str, max_len: int = 40) -> str:
    """'The dog, left!' -> 'the-dog-left', 'Café naïve' -> 'cafe-naive': a file-name-safe short
    form of an expression (accents dropped from their letters, other non-ASCII left out)."""
    slug = "-".join(split_words(text))
    plain = "".join(c for c in unicodedata.normalize("NFKD", slug) if not unicodedata.combining(c))
    slug = re.sub(r"[^a-z0-9_-]+", "", plain.encode("ascii", "ignore").decode().lower())
    slug = re.sub(r"-{2,}", "-", slug)  # a word left out entirely leaves no empty place
    return slug[:max_len].strip("-") or "expression"


URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def check_not_url(value, option: str) -> None:
    """A URL given as a file: say that restr reads local files only (a Path had made 'https:/host/x.jpg')."""
    if value is not None and URL.match(str(value)) and not Path(value).exists():
        shown = re.sub(r"^([^:]+):/(?!/)", r"\1://", str(value))  # as typed, before a path's normalisation
        raise InputError(f"{option} {shown}: looks like a URL; restr-predict reads local files only (download it first)")


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    click.echo(f"{PROG}: error: {message}", err=True)
    sys.exit(code)


@click.command(PROG, cls=OneLineErrorCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--artifacts", "artifacts", type=click.Path(), help="Export folder written by restr-export (holds manifest.json).")
@click.option(
    "--server",
    "server",
    default=None,
    metavar="URL",
    help="Instead of --artifacts: ask a restr Triton server (restr-serve), e.g. http://127.0.0.1:8000 or grpc://127.0.0.1:8001.",
)
@click.option(
    "--image", "image", type=click.Path(path_type=Path), help="Image file (any format Pillow reads; EXIF orientation is applied)."
)
@click.option(
    "--text",
    "texts",
    multiple=True,
    help="Referring expression; repeat for several (they are batched against one image encoding). With --images: asked of every image.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    help="Output folder for the mask PNGs and summary.json, or a bulk job's predictions.jsonl (created if missing; must be empty unless --force or --resume).",
)
@click.option(
    "--overlay",
    is_flag=True,
    help="Also write <k>_<slug>_overlay.png: the object as it is, the rest of the image dimmed and greyed, a white contour around the mask.",
)
@click.option("--sheet", is_flag=True, help="Also write sheet.png: every expression's overlay side by side, captioned.")
@click.option(
    "--force",
    is_flag=True,
    help="Write into a folder that holds files: a previous run's outputs (its summary.json lists them; a bulk job's predictions.jsonl, run.json, masks/) are removed first.",
)
@click.option("--list-words", is_flag=True, help="Print the words the model knows (its vocabulary), one a line, and exit.")
@runtime_options()
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Mask threshold on the probability. [default: the manifest's, 0.5]",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the summary to FILE ('-' for stdout, which replaces the table).",
)
@click.option(
    "--images",
    "images",
    default=None,
    metavar="DIR_OR_GLOB",
    help="Bulk: every image file in a folder (not its subfolders; sorted by name), or a glob's files, sorted ('photos/**/*.jpg' goes down folders; quote it), each asked every --text.",
)
@click.option(
    "--requests",
    "requests",
    default=None,
    metavar="FILE.jsonl",
    help='Bulk: one request a line, {"image": "a.jpg", "texts": ["the dog", ...], "id": optional}; paths relative to the file\'s folder; - reads stdin.',
)
@click.option(
    "--data",
    "data",
    default=None,
    metavar="SPEC",
    help="Bulk: a data set's images, each with the expressions read about it: synthetic:test, or a refer-layout folder PATH[:split] (as restr-eval).",
)
@click.option("--split", default=None, help="With --data: the split when SPEC names none (e.g. val, testA).")
@click.option(
    "--split-by", default=None, help="With --data: the refer annotation set, e.g. unc, umd, google (refs(<split-by>).p)."
)
@click.option(
    "--image-root",
    default=None,
    type=click.Path(file_okay=False),
    help="With --data: the folder of the images (default: beside the annotations).",
)
@click.option(
    "--png",
    is_flag=True,
    help="Bulk: also write each mask as a 0/255 PNG, masks/NNNN/<request>-<expression>-<slug>.png (a folder per 1000 requests), named in its record.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Bulk: continue the run in --out (stopped by Ctrl-C, SIGTERM, kill -9 or a crash) where its records end; starts one if there is none.",
)
@click.option(
    "--shard",
    default=None,
    metavar="K/N",
    help="Bulk: do only the requests i with i mod N == K (K from 0 to N-1), e.g. --shard $SLURM_ARRAY_TASK_ID/8.",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=None,
    help="Bulk: threads reading and preparing the next images while the model runs. [default: 2]",
)
def main(
    artifacts: Path | None,
    server: str | None,
    image: Path | None,
    texts: tuple[str, ...],
    out: Path | None,
    overlay: bool,
    sheet: bool,
    force: bool,
    list_words: bool,
    backend: str,
    precision: str,
    providers: str | None,
    threshold: float | None,
    json_path: Path | None,
    **bulk_options,
) -> int | None:
    """Segment the object each --text refers to in --image with a restr export; or, in bulk, every
    image of --images, --requests or --data.

    \b
    Examples:
      restr-predict --artifacts runs/demo/export --image photo.jpg \\
          --text "the small red circle" --text "the square left of the green triangle" --out pred --overlay --sheet
      restr-predict --artifacts runs/demo/export --list-words      what the model can read

    A model knows only the words of its training data: the demo model (runs/demo) knows about 20
    words of synthetic shapes, colours and positions, and answers "the cat" on a photo with a guess.
    An expression none of whose content words the model knows gets a warning (and
    "no_known_words": true in summary.json). The table's score is the mean probability inside the
    mask: how sure the model is of the pixels it chose, not whether it chose the right object.

    \b
    Bulk jobs: many images in one process, images read ahead and batched:
      restr-predict --artifacts runs/demo/export --images photos/ --text "the red circle" --out bulk
      restr-predict --artifacts runs/demo/export --images 'photos/**/*.png' --text "the dog" --text "the cat" --out bulk --png
      restr-predict --artifacts runs/demo/export --requests jobs.jsonl --out bulk --resume
      restr-predict --artifacts runs/demo/export --data synthetic:test --out bulk
      restr-predict --artifacts runs/demo/export --images photos/ --text "the dog" --out bulk-$K --shard $K/8 --resume

    A bulk job writes OUT/predictions.jsonl, a line per image and expression: request (its number in
    the input, from 0), line (--requests) and id (the line's, if any), image, width, height,
    expression (from 0), expressions (how many the request has), text, mask (COCO RLE: size [H, W],
    counts), box ([x, y, w, h], null for an empty mask), area, area_fraction, score, patch_score,
    unknown_words, no_known_words, truncated, timings_ms, png (--png), image_id/ref_id/ann_id/sent_id
    (--data), error (null). A request that fails (an unreadable image, a malformed line, an empty
    expression) is one record with its texts and the error, and the run goes on. Then
    OUT/summary.json and a table: requests, images, expressions, errors, images per second.
    Each request's records are written whole, so --resume after Ctrl-C, SIGTERM, kill -9 or a crash
    writes each record exactly once; with --shard K/N, N processes (a Slurm array, a Kubernetes
    Indexed Job), each with its own --out, write records that concatenate to the whole run's.

    Exit codes: 0 done; 1 (bulk) done, and some requests failed: error records; 2 bad input, or the
    runtime failed (ONNX Runtime, CUDA, TensorRT, disk); 3 internal error (a bug). Every failure is
    one line on stderr; a single image's writes nothing, a bulk job's keeps the whole records written.
    """
    try:
        if artifacts == "":  # a Path would make it "." (the working folder), a confusing "no manifest.json"
            raise ArtifactError(
                "folder is an empty string: give the path of an export folder (one restr-export wrote, holding manifest.json)"
            )
        artifacts = None if artifacts is None else Path(artifacts)
        if (artifacts is None) == (server is None):
            raise InputError("give one of --artifacts DIR and --server URL")
        if list_words:
            _list_words(artifacts, server)
            return None
        with (
            signals_interrupt()
        ):  # SIGTERM/SIGHUP unwind as Ctrl-C does: the staging folder goes, a bulk job's records stay whole
            if _bulk_input(image, bulk_options):
                if json_path is not None or overlay or sheet:
                    raise InputError(
                        "--overlay, --sheet and --json are for --image; a bulk job writes predictions.jsonl (and with --png the masks)"
                    )
                return _bulk(artifacts, server, texts, out, force, backend, precision, providers, threshold, **bulk_options)
            _predict(
                artifacts, server, image, texts, out, overlay, sheet, force, backend, precision, providers, threshold, json_path
            )
            return None
    except SystemExit:
        raise
    except KeyboardInterrupt as e:
        _fail("interrupted" if exit_code(e) == 130 else f"stopped by {e}", exit_code(e))
    except (
        ValueError,
        UsageError,
        TensorRTUnavailable,
    ) as e:  # ArtifactError, ImageError, TextError, bad providers or paths, no TensorRT
        _fail(first_line(e))
    except (RuntimeError, OSError, MemoryError) as e:  # ONNX Runtime, CUDA, TensorRT, disk
        _fail(f"{type(e).__name__}: {first_line(e)}")
    except Exception as e:  # a bug: still one line, with the exception's name to report
        _fail(f"internal error ({type(e).__name__}: {first_line(e)}); please report it", EXIT_INTERNAL)


BULK_INPUTS = ("images", "requests", "data")


def _bulk_input(image: Path | None, options: dict) -> bool:
    """Whether the command is a bulk job; refuses a mix of inputs, and bulk options without one."""
    given = [f"--{name}" for name in BULK_INPUTS if options[name] is not None]
    if len(given) + (image is not None) > 1:
        raise InputError(
            f"give one of --image, --images, --requests and --data (got {' and '.join((['--image'] if image else []) + given)})"
        )
    if not given:
        extra = [f"--{name.replace('_', '-')}" for name, value in options.items() if value not in (None, False)]
        if extra:
            raise InputError(f"{', '.join(extra)}: bulk options; give --images, --requests or --data with them")
    return bool(given)


def _bulk(
    artifacts,
    server,
    texts,
    out,
    force,
    backend,
    precision,
    providers,
    threshold,
    images,
    requests,
    data,
    split,
    split_by,
    image_root,
    png,
    resume,
    shard,
    workers,
) -> int:
    from restr.runtime import bulk

    if out is None:
        raise InputError("Missing option '--out' (the folder for predictions.jsonl)")
    if images is not None and not texts:
        raise InputError("--images asks every image the same expressions: give them with --text")
    if images is None and texts:
        carried = "--requests lines carry their texts" if requests else "--data reads the data set's expressions"
        raise InputError(f"--text goes with --image or --images; {carried}")
    if data is None and (split or split_by or image_root):
        raise InputError("--split, --split-by and --image-root go with --data")
    k_n = bulk.parse_shard(shard)
    check_not_url(images, "--images")
    if images is not None:
        check_texts(texts)
        source = bulk.ImageFiles(images, list(texts), out)
    elif requests is not None:
        source = bulk.RequestLines(requests)
    else:
        source = bulk.DataSet(data, split, split_by, image_root)
    model = {
        "artifacts": server if server is not None else str(artifacts.absolute()),
        "backend": backend,
        "precision": precision,
        "providers": providers,
        "threshold": threshold,
    }
    job = bulk.plan(out, source, k_n, png, resume, force, 2 if workers is None else workers, model)
    predictor, load_s = _load_predictor(artifacts, server, backend, precision, providers, threshold, cache_size=4)
    try:
        return bulk.run(job, predictor, _describe(predictor, artifacts if server is None else server), load_s)
    finally:
        if server is not None:  # its connection, closed in this thread (tritonclient's gevent pool needs that)
            predictor.close()


def check_texts(texts) -> None:
    """Refuse no expression, or one without words (TextError), before any work."""
    if not texts:
        raise TextError("no expression given")
    for i, t in enumerate(texts):
        if any("\udc80" <= c <= "\udcff" for c in t):  # bytes that were not UTF-8, as Python's argv keeps them
            raise TextError(f"expression {i + 1} is not valid UTF-8")
        if not split_words(t):
            raise TextError(f"expression {i + 1} ({t!r}) is empty: it has no words")


def _load_predictor(artifacts, server, backend, precision, providers, threshold, cache_size: int, release_memory: bool = False):
    """The local predictor, or the server's stand-in (--server); and the seconds loading took."""
    t0 = time.perf_counter()
    if server is not None:  # same outputs, computed by the server
        from restr.runtime.client import RemotePredictor

        return RemotePredictor(server, threshold=threshold), time.perf_counter() - t0
    with warnings.catch_warnings(record=True) as caught:  # a provider this build lacks: one line, as the others
        warnings.simplefilter("always", RuntimeWarning)
        predictor = Predictor.from_artifacts(
            artifacts,
            backend=backend,
            precision=precision,
            providers=providers,
            threshold=threshold,
            cache_size=cache_size,
            release_memory=release_memory,
        )
    said = set()
    for w in caught:
        if not issubclass(w.category, RuntimeWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif str(w.message) not in said:  # once, not once per runner
            said.add(str(w.message))
            click.echo(f"warning: {w.message}", err=True)
    return predictor, time.perf_counter() - t0


def _list_words(artifacts: Path | None, server: str | None = None) -> None:
    """The model's words, from the export folder or from the server's model configuration."""
    if server is not None:
        from restr.runtime.client import RemotePredictor

        remote = RemotePredictor(server)
        try:
            vocab = remote.artifacts.vocabulary()
        finally:
            remote.close()  # in this thread (tritonclient's gevent pool needs that)
    else:
        from restr.runtime.artifacts import Artifacts

        vocab = Artifacts.open(artifacts).vocabulary()
    click.echo("\n".join(vocab.itos[2:]))


def _check_outputs(out: Path, force: bool, json_path: Path | None) -> None:
    """Before any work: the folder must be writable, and empty unless --force (the staging folders
    that killed runs left there are removed first: they are no one's files)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    check_writable_dir(out, "--out")
    if out.is_dir():
        remove_stale_staging(out)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(
            f"--out {out}: the folder holds files (a previous run's?); pass --force to replace restr-predict's outputs there, or choose another folder"
        )
    if json_path is not None and str(json_path) != "-":
        check_writable_file(json_path, "--json")


def _predict(
    artifacts, server, image, texts, out, overlay, sheet, force, backend, precision, providers, threshold, json_path
) -> None:
    t_start = time.perf_counter()
    missing = [name for name, value in (("--image", image), ("--text", texts), ("--out", out)) if not value]
    if missing:
        raise InputError(
            f"Missing option{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} (or give --list-words)"
        )
    check_not_url(image, "--image")
    _check_outputs(out, force, json_path)
    check_texts(texts)
    # one photo: nothing to cache (no hash of its pixels), and its photo-sized buffers given back
    predictor, load_s = _load_predictor(
        artifacts, server, backend, precision, providers, threshold, cache_size=0, release_memory=True
    )
    if server is not None:
        artifacts = server
    load_ms = load_s * 1000
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own size guard reports it
            rgb = as_rgb(image)  # decoded once: for the predictor and the overlay
        decode_ms = (time.perf_counter() - t0) * 1000
        # locally: an RGB array is taken as it is (no second EXIF pass or copy), and only masks, scores
        # and areas come back (no photo-sized probabilities); a server's answer has no probabilities
        local = server is None
        emb = predictor.embed(np.asarray(rgb) if local else rgb)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TextTruncatedWarning)  # reported below, one line each
            preds = predictor.predict_embedding(emb, list(texts), **({"probs": False} if local else {}))
    finally:
        if server is not None:  # its connection, closed in this thread (tritonclient's gevent pool needs that)
            predictor.close()

    for i, p in enumerate(preds, 1):
        if p.truncated:
            click.echo(
                f"warning: expression {i} has {len(split_words(p.text))} words; only the first {predictor.artifacts.max_words} were used",
                err=True,
            )
        if p.unknown_words:
            click.echo(
                f"warning: expression {i}: words not in the vocabulary (read as <unk>): {', '.join(p.unknown_words)}", err=True
            )
        if p.no_known_words:
            click.echo(
                f"warning: expression {i} ({p.text!r}): the model knows none of its content words, so its mask is a guess "
                f"(--list-words prints the words it knows)",
                err=True,
            )

    names = [f"{i}_{slugify(p.text)}" for i, p in enumerate(preds, 1)]
    summary = _summary(predictor, artifacts, image, emb, preds, names, overlay, load_ms, decode_ms, t_start)
    summary["sheet"] = "sheet.png" if sheet else None
    _write_outputs(out, preds, names, rgb if overlay or sheet else None, summary, overlay, sheet)
    if json_path is not None and str(json_path) != "-":
        _write_json_atomic(json_path, summary)
    if json_path is not None and str(json_path) == "-":
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_table(summary, out)


def _summary(
    predictor: Predictor,
    artifacts: Path,
    image: Path,
    emb,
    preds: list[Prediction],
    names: list[str],
    overlay: bool,
    load_ms: float,
    decode_ms: float,
    t_start: float,
) -> dict:
    h, w = emb.size
    k = len(preds)
    per_expr = [{n: v for n, v in p.timings.items() if n not in ("preprocess", "vision")} for p in preds]
    decode_keys = [n for n in per_expr[0] if n != "postprocess"]
    return {
        **_describe(predictor, artifacts),
        "image": {"path": str(image), "width": w, "height": h},
        "threshold": predictor.threshold,
        "expressions": [
            {
                "index": i,
                "text": p.text,
                "mask": f"{name}.png",
                "overlay": f"{name}_overlay.png" if overlay else None,
                **p.figures(t),
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
            **({"server_round_trip": round(emb.timings["request"], 3)} if "request" in emb.timings else {}),
        },
    }


def _describe(predictor, artifacts) -> dict:
    """What ran: the export (or server), its model, backend, runners and mode."""
    return {
        "artifacts": str(artifacts),
        "model": predictor.artifacts.model_name,
        "backend": "tensorrt" if any(getattr(r, "backend", None) == "tensorrt" for r in predictor.runners.values()) else "ort",
        "runners": {name: getattr(r, "providers", None) or type(r).__name__ for name, r in predictor.runners.items()},
        "graphs": {
            name: getattr(r, "name", None) for name, r in predictor.runners.items()
        },  # e.g. vision_int8: the precision that ran
        "mode": predictor.mode,
    }


def _write_outputs(out: Path, preds: list[Prediction], names: list[str], rgb, summary: dict, overlay: bool, sheet: bool) -> None:
    """Write everything into a temporary folder inside `out`, remove a previous run's outputs (only
    --force lets a non-empty folder through), then move each file into place."""
    created = not out.exists()
    tmp, committed = None, False
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = staging_dir(out, PROG)
        jobs = []
        for p, name in zip(preds, names):
            jobs.append(functools.partial(save_mask, tmp / f"{name}.png", p.mask))
            if overlay:
                jobs.append(functools.partial(save_overlay, tmp / f"{name}_overlay.png", rgb, p.mask))
        # zlib and numpy release the GIL: a large photo's PNGs are encoded side by side, one per core
        pool, futures = ThreadPoolExecutor(min(len(jobs), os.cpu_count() or 1)), []
        try:
            with signals_deferred():  # a signal inside submit could leave a job running unseen
                futures = [pool.submit(job) for job in jobs]
            files = [f.result().name for f in futures]
        finally:  # stopped mid-write: no PNG is still being written when the staging folder goes
            with signals_deferred():
                for f in futures:
                    f.cancel()
                wait(futures)
                pool.shutdown()
        if sheet:
            # the score first: a long expression is cut at the tile's second line, never the score
            captions = [
                f"{i}. score {p.score:.2f}{', no known words' if p.no_known_words else ''}: {p.text}"
                for i, p in enumerate(preds, 1)
            ]
            files.append(save_atomic(contact_sheet(rgb, [p.mask for p in preds], captions), tmp / "sheet.png").name)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        with signals_deferred():  # the previous outputs go and the new ones arrive whole, or not at all
            _remove_previous_outputs(out)
            files.append("summary.json")  # last: its presence means the rest is complete
            for f in files:
                os.replace(tmp / f, out / f)
            shutil.rmtree(tmp, ignore_errors=True)
            committed = True  # a signal held back until here arrives after the outputs are whole
    except BaseException:
        if not committed:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if created:
                shutil.rmtree(out, ignore_errors=True)
        raise


def _remove_previous_outputs(out: Path) -> None:
    """The files an earlier restr-predict run listed in out/summary.json (and that summary): nothing else."""
    old = out / "summary.json"
    try:
        summary = json.loads(old.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    listed = summary.get("expressions") if isinstance(summary, dict) else None
    if not isinstance(listed, list):  # a bulk job's summary counts expressions and lists no files
        listed, summary = [], {}
    names = [summary.get("sheet")] + [e.get(k) for e in listed if isinstance(e, dict) for k in ("mask", "overlay")]
    old.unlink()  # first: a folder with masks and no summary.json is visibly incomplete
    for name in names:
        if isinstance(name, str) and name and Path(name).name == name:  # a bare file name, nothing outside out/
            (out / name).unlink(missing_ok=True)


def _write_json_atomic(path: Path, obj: dict) -> None:
    write_json(path, obj)


def _print_table(summary: dict, out: Path) -> None:
    img = summary["image"]
    exprs = summary["expressions"]
    click.echo(
        f"{summary['model']} ({summary['backend']}, {summary['mode']}) on {img['path']} ({img['width']}x{img['height']}), threshold {summary['threshold']:g}"
    )
    width = min(48, max(10, *(len(e["text"]) for e in exprs)))
    click.echo(f"{'#':>3}  {'expression':<{width}}  {'area px':>10}  {'area':>6}  {'score':>5}  mask")
    for e in exprs:
        text = e["text"] if len(e["text"]) <= width else e["text"][: width - 3] + "..."
        flag = "  (no known words: a guess)" if e.get("no_known_words") else ""
        click.echo(
            f"{e['index']:>3}  {text:<{width}}  {e['area']:>10,}  {e['area_fraction']:>6.1%}  {e['score']:>5.2f}  {out / e['mask']}{flag}"
        )
    click.echo(SCORE_LEGEND)
    t = summary["timings_ms"]
    click.echo(
        f"timings (ms): load {t['load']:.1f}, preprocess {t['preprocess']:.1f}, vision {t['vision']:.1f}, "
        f"language+fusion {t['language_fusion_per_expression']:.1f} per expression, postprocess {t['postprocess_per_expression']:.1f} per expression"
        + (f"; the server's answer took {t['server_round_trip']:.1f} in all" if "server_round_trip" in t else "")
    )
    click.echo(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
