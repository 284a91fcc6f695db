"""`restr-predict`'s bulk jobs: many images in one process, streamed, written as JSON lines.

    restr-predict --artifacts runs/demo/export --images photos/ --text "the dog" --out pred
    restr-predict --artifacts runs/demo/export --requests jobs.jsonl --out pred --shard 3/8 --resume
    restr-predict --artifacts runs/demo/export --data synthetic:test --out pred --png

Three inputs, each a sequence of requests (one image and its expressions), numbered from 0:
`--images DIR_OR_GLOB` with `--text` (a folder's image files, not its subfolders, sorted by name; or
a glob's matches, sorted, `**` going down folders), `--requests FILE.jsonl` (one `{"image": path,
"texts": [...]}` a line, paths relative to the file's folder; `-` reads stdin), `--data SPEC` (a
data set's images with the expressions read about each, as restr-eval reads it).

The requests go through `Predictor.predict_many` (images read ahead by worker threads, batched in
the image graph), and each request's records are appended to `OUT/predictions.jsonl` in one write:
a record per expression (the mask as COCO RLE) or one error record for a request that failed (an
unreadable image, a malformed line, an empty expression), and the run goes on. `OUT/run.json`
holds the run's settings, `OUT/summary.json` is written when the input is done.

`--resume` continues a run that was stopped (Ctrl-C, SIGTERM, kill -9, a crash): the records file is
read to its last whole request, a torn tail is cut off, and the requests done are skipped.
`--shard K/N` keeps request i when i mod N == K, so N processes split the input and their records
files concatenate to the whole run's.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np

from restr.runtime.atomic import remove_stale_staging, write_json
from restr.runtime.cli import _remove_previous_outputs, check_texts, slugify  # cli imports bulk lazily: no cycle
from restr.runtime.cli_common import Progress, UsageError, check_writable_dir
from restr.runtime.errors import first_line
from restr.runtime.predictor import REQUEST_ERRORS, ImageResult, as_rgb
from restr.runtime.visualize import save_mask

RECORDS, SUMMARY, RUN, MASKS = "predictions.jsonl", "summary.json", "run.json", "masks"
EXIT_SOME_FAILED = 1  # the run went through its input, and some requests failed (error records)
MAX_EXPRESSIONS = 256  # a data set image's expressions go to the runtime in groups of at most this many
ERRORS_SHOWN = 10  # error records also said on stderr, the first this many


@dataclass
class Request:
    """One image and its expressions; `error` set when its input could not be read (a bad line)."""

    index: int  # position in the whole input (before sharding), from 0
    image: str | None
    texts: list[str]
    line: int | None = None  # --requests: the line number, from 1
    id: object = None  # --requests: the line's "id", passed through to its records
    error: str | None = None
    samples: list[dict] | None = None  # --data: each expression's ids in the data set

    def name(self, error: str) -> str:
        """'request 3 (line 4)', with the image unless the error names it."""
        where = f"request {self.index}" + (f" (line {self.line})" if self.line is not None else "")
        return where + (f", {self.image}" if self.image and self.image not in error else "")


# -- inputs --------------------------------------------------------------------------------------------


class ImageFiles:
    """--images: a folder's image files (by extension, not its subfolders) sorted by name, or a
    glob's files sorted by path (code-point order: the same listing on every machine)."""

    kind = "images"

    def __init__(self, spec: str, texts: list[str], out: Path):
        self.spec, self.texts = spec, texts
        if Path(spec).is_dir():
            from PIL import Image

            readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
            names = sorted(
                e.name
                for e in os.scandir(spec)
                if not e.name.startswith(".") and e.is_file() and os.path.splitext(e.name)[1].lower() in readable
            )
            paths = [os.path.join(spec, n) for n in names]
        else:
            paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        inside = os.path.abspath(out) + os.sep  # a glob over the output folder must not pick up --png masks
        self.paths = [p for p in paths if not os.path.abspath(p).startswith(inside)]
        if not self.paths:
            raise UsageError(
                f"--images {spec}: no image files there (a folder's own files are read, not its "
                f"subfolders': give a glob such as '{os.path.join(spec, '**', '*.jpg')}' to go down)"
            )

    def settings(self) -> dict:
        return {"images": os.path.abspath(self.spec), "texts": self.texts}

    def count(self, most: int) -> int:
        return len(self.paths)

    def requests(self, most: int) -> Iterator[Request]:
        for i, path in enumerate(self.paths):
            yield Request(i, path, list(self.texts))


class RequestLines:
    """--requests: one JSON object a line, {"image": path, "texts": [...], "id": optional}; blank
    lines are skipped, every other line is a request (a malformed one fails alone)."""

    kind = "requests"

    def __init__(self, path: str):
        self.path = path
        if path != "-":
            if not os.path.exists(path):
                raise UsageError(f"--requests {path}: no such file")
            if not os.path.isfile(path):
                raise UsageError(f"--requests {path}: not a file")
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise UsageError(f"--requests {path}: cannot be read ({e.strerror or e})") from None
        self.base = "" if path == "-" else os.path.dirname(path)

    def settings(self) -> dict:
        return {"requests": "-" if self.path == "-" else os.path.abspath(self.path)}

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        stream = sys.stdin.buffer if self.path == "-" else open(self.path, "rb")
        try:
            for number, raw in enumerate(stream, 1):
                if raw.strip():
                    yield number, raw
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()

    def count(self, most: int) -> int | None:
        return None if self.path == "-" else sum(1 for _ in self._lines())

    def requests(self, most: int) -> Iterator[Request]:
        for index, (number, raw) in enumerate(self._lines()):
            yield self._parse(Request(index, None, [], line=number), raw)

    def _parse(self, req: Request, raw: bytes) -> Request:
        try:
            obj = json.loads(raw)
        except ValueError as e:  # UnicodeDecodeError included
            req.error = f"line {req.line}: not JSON ({e})"
            return req
        if not isinstance(obj, dict):
            req.error = f'line {req.line}: expected an object such as {{"image": "photo.jpg", "texts": ["the dog"]}}'
            return req
        req.id = obj.get("id")
        image, texts = obj.get("image"), obj.get("texts")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(image, str) or not image:
            req.error = f"line {req.line}: 'image' must be a file path"
        elif not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            req.error = f"line {req.line}: 'texts' must be a list of expressions"
        if isinstance(image, str) and image:
            req.image = os.path.join(self.base, image)  # relative to the file's folder (an absolute path stays)
        if req.error is None:
            req.texts = texts
        return req


class DataSet:
    """--data: a data set's images (in first-seen order) with the expressions read about each, read
    as restr-eval reads it (`build_dataset`, which needs the training extra)."""

    kind = "data"

    def __init__(self, spec: str, split: str | None, split_by: str | None, image_root: str | None):
        try:
            from restr.data import build_dataset
        except ImportError as e:
            raise UsageError(f"--data reads data sets with the training extra ({e}): pip install 'restr[torch]'") from None
        self.spec, self.split, self.split_by, self.image_root = spec, split, split_by, image_root
        self.ds = build_dataset(
            spec,
            split,
            image_size=1,
            vocab=None,
            mean=(0.5,) * 3,
            std=(0.5,) * 3,
            split_by=split_by,
            image_root=image_root,
            progress=True,
        )
        self.groups = self.ds.groups_by_image()

    def settings(self) -> dict:
        return {
            "data": self.spec,
            "split": self.split,
            "split_by": self.split_by,
            "image_root": None if self.image_root is None else os.path.abspath(self.image_root),
        }

    def count(self, most: int) -> int:
        return sum(-(-len(g) // most) for g in self.groups)

    def requests(self, most: int) -> Iterator[Request]:
        parts = (g[k : k + most] for g in self.groups for k in range(0, len(g), most))
        for index, part in enumerate(parts):
            ids = [self.ds.samples[i] for i in part]
            yield Request(
                index,
                str(self.ds.image_path(part[0])),
                [self.ds.text(i) for i in part],
                samples=[{"image_id": s.image_id, "ref_id": s.ref_id, "ann_id": s.ann_id, "sent_id": s.sent_id} for s in ids],
            )


def parse_shard(text: str | None) -> tuple[int, int]:
    """'K/N' -> (K, N), 0 <= K < N; None -> (0, 1)."""
    if text is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise UsageError(f"--shard {text}: expected K/N, e.g. 0/4 (shard K of N, K from 0 to N-1)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or k >= n:
        raise UsageError(f"--shard {text}: K must be from 0 to N-1 (and N at least 1)")
    return k, n


# -- the job ------------------------------------------------------------------------------------------


@dataclass
class Job:
    out: Path
    source: object  # ImageFiles | RequestLines | DataSet
    shard: tuple[int, int]
    png: bool
    resume: bool
    force: bool
    workers: int
    settings: dict  # what run.json holds; --resume needs the same


def plan(out: Path, source, shard: tuple[int, int], png: bool, resume: bool, force: bool, workers: int, model: dict) -> Job:
    """Every check that needs no model, before any work: the output folder, and on --resume that
    the previous run had the same input and settings."""
    if resume and force:
        raise UsageError("give one of --resume (continue the run in --out) and --force (start it again)")
    try:
        import pycocotools.mask  # noqa: F401  (the records' RLE masks)
    except ImportError as e:
        raise UsageError(f"bulk jobs write masks as COCO RLE with pycocotools ({e}): pip install pycocotools") from None
    check_writable_dir(out, "--out")
    settings = {"source": {"kind": source.kind, **source.settings()}, "shard": list(shard), "png": png, **model}
    if out.is_dir():
        remove_stale_staging(out)
        previous = _read_json(out / RUN)
        if resume and previous is not None and previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise UsageError(
                f"--resume: the run in {out} had other settings ({', '.join(changed)} differ, see {out / RUN}); "
                f"give the same ones, or --force to start again"
            )
        if not (resume and previous is not None) and not force and any(out.iterdir()):
            raise UsageError(
                f"--out {out}: the folder holds files (a previous run's?); pass --resume to continue a bulk "
                f"run there, --force to replace restr-predict's outputs there, or choose another folder"
            )
    return Job(out, source, shard, png, resume, force, workers, settings)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass
class Counts:
    """What a run's records say so far: requests, images read, expression records, failed requests."""

    requests: int = 0
    images: int = 0
    expressions: int = 0
    errors: int = 0
    no_known_words: int = 0
    truncated: int = 0
    empty_masks: int = 0

    def add(self, records: list[dict]) -> None:
        self.requests += 1
        if records[0].get("error") is not None:
            self.errors += 1
            return
        self.images += 1
        for r in records:
            self.expressions += 1
            self.no_known_words += bool(r["no_known_words"])
            self.truncated += bool(r["truncated"])
            self.empty_masks += r["area"] == 0


@dataclass
class Done:
    """The whole requests a records file holds: they end at byte `end`, the last is `last`."""

    end: int = 0
    requests: int = 0
    last: int = -1
    last_image: str | None = None
    counts: Counts = field(default_factory=Counts)


def scan(path: Path) -> Done:
    """Read a records file up to its last whole request: every line whole JSON, each request's
    records all there (`expressions` of them, or its one error record), request numbers rising.
    What follows (a torn line, a request cut short) is not counted."""
    done = Done()
    if not path.exists():
        return done
    pos, current = 0, []
    with open(path, "rb") as f:
        for line in f:
            pos += len(line)
            try:
                rec = json.loads(line) if line.endswith(b"\n") else None
                index = rec["request"]
                whole = 1 if rec.get("error") is not None else rec["expressions"]
                ok = (
                    isinstance(index, int)
                    and index > done.last
                    and (rec.get("expression", 0) == len(current))
                    and (not current or current[0]["request"] == index)
                )
            except (ValueError, TypeError, KeyError):
                break
            if not ok:
                break
            current.append(rec)
            if len(current) == whole:
                done.counts.add(current)
                done.end, done.requests, done.last, done.last_image = pos, done.requests + 1, index, rec.get("image")
                current = []
    return done


class RecordFile:
    """predictions.jsonl, open for appending whole requests: each request's lines go in one write
    straight to the file (no buffer to lose), and a write cut short is taken back."""

    def __init__(self, path: Path, end: int):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        os.ftruncate(self.fd, end)  # a torn tail, or a request cut short, goes
        os.lseek(self.fd, end, os.SEEK_SET)
        self.end = end

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except BaseException:  # Ctrl-C or SIGTERM in the middle, a full disk: the request is whole or absent
            os.ftruncate(self.fd, self.end)
            os.lseek(self.fd, self.end, os.SEEK_SET)
            raise
        self.end += len(data)

    def close(self) -> None:
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)


@contextlib.contextmanager
def _locked(out: Path):
    """One run at a time in a folder: a second one is refused, not interleaved."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"--out {out}: another restr-predict is writing there") from None
        yield
    finally:
        os.close(fd)


def remove_outputs(out: Path) -> None:
    """A previous bulk run's files in `out` (--force): its records, settings, summary and masks/."""
    for name in (SUMMARY, RUN, RECORDS):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / MASKS, ignore_errors=True)


# -- records ------------------------------------------------------------------------------------------


def records(req: Request, result: ImageResult, out: Path | None) -> list[dict]:
    """A request's records: one per expression, or one error record. With `out`, each mask is also
    written as a 0/255 PNG under out/masks/ and named in its record."""
    from pycocotools import mask as mask_utils

    head = {
        "request": req.index,
        **({"line": req.line} if req.line is not None else {}),
        **({"id": req.id} if req.id is not None else {}),
        "image": req.image,
    }
    error = req.error or (None if result.error is None else first_line(result.error))
    if error is not None:
        return [{**head, "texts": req.texts, "error": error}]
    h, w = result.size
    recs = []
    for k, p in enumerate(result.predictions):
        rle = mask_utils.encode(np.asfortranarray(p.mask[:, :, None], dtype=np.uint8))[0]  # one at a time: no (H, W, K) copy
        box = mask_utils.toBbox(rle)
        rec = {
            **head,
            "width": w,
            "height": h,
            "expression": k,
            "expressions": len(result.predictions),
            "text": p.text,
            **(req.samples[k] if req.samples else {}),
            "mask": {"size": [h, w], "counts": rle["counts"].decode("utf-8")},
            "box": [int(round(v)) for v in box] if p.area else None,
            **p.figures(),
            "error": None,
        }
        if out is not None:
            rec["png"] = _save_png(out, req, k, p)
        recs.append(rec)
    return recs


def _save_png(out: Path, req: Request, k: int, p) -> str:
    """masks/<request // 1000>/<request>-<expression>-<slug>.png: request numbers are the whole
    input's, so the masks of every shard and every resumed part can share one folder."""
    name = f"{MASKS}/{req.index // 1000:04d}/{req.index:07d}-{k}-{slugify(p.text)}.png"
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    save_mask(out / name, p.mask)  # whole (written aside and renamed) before its record names it
    return name


def _lines(recs: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in recs).encode("utf-8")


# -- the run ------------------------------------------------------------------------------------------


class _Progress(Progress):
    """Progress with an unknown total (requests read from stdin): the count and rate, no ETA."""

    def _line(self, now: float) -> None:
        if self.total != float("inf"):
            return super()._line(now)
        rate = (self.n - self._n0) / max(now - self._t0, 1e-9)
        print(f"{self.desc} {self.n} {rate:.2f} {self.unit}/s", file=self.stream, flush=True)


def run(job: Job, predictor, describe: dict, load_s: float) -> int:
    """Predict every request of the job's shard not done yet; returns the exit code (0, or 1 when
    some requests failed). Raises KeyboardInterrupt (Ctrl-C, SIGTERM) with the records whole."""
    out, (k, n) = job.out, job.shard
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if job.force:
            _remove_previous_outputs(out)  # a single-image run's files there
            remove_outputs(out)
        resuming = job.resume and (out / RUN).exists()
        done = scan(out / RECORDS) if resuming else Done()
        (out / SUMMARY).unlink(missing_ok=True)  # the run is not finished until it is written again
        if not resuming:
            (out / RECORDS).unlink(missing_ok=True)
            write_json(out / RUN, job.settings)
        most = getattr(predictor, "max_expressions", MAX_EXPRESSIONS)
        total = job.source.count(most)
        progress = _Progress(
            float("inf") if total is None else len(range(k, total, n)), "restr-predict", initial=done.requests, unit="img"
        )
        counts, shown, t0 = done.counts, 0, time.perf_counter()
        pending: deque[Request] = deque()
        writer = RecordFile(out / RECORDS, done.end)
        try:
            many = predictor.predict_many if hasattr(predictor, "predict_many") else _remote_many(predictor)
            requests = _todo(job.source.requests(most), k, n, done, pending)
            with contextlib.closing(many(requests, probs=False, workers=job.workers)) as results:
                for expected, result in enumerate(results):
                    req = pending.popleft()
                    if result.index != expected:
                        raise RuntimeError(f"predict_many answered request {result.index} in place of {expected}")
                    recs = records(req, result, out if job.png else None)
                    writer.append(_lines(recs))
                    counts.add(recs)
                    error = recs[0]["error"]
                    if error is not None:
                        shown += 1
                        if shown <= ERRORS_SHOWN:
                            progress.write(f"error: {req.name(error)}: {error}")
                        elif shown == ERRORS_SHOWN + 1:
                            progress.write(f"(further errors only in {out / RECORDS})")
                    progress.update(1)
        except (KeyboardInterrupt, RuntimeError, OSError, MemoryError):  # Ctrl-C, SIGTERM, the runtime or the disk failed
            progress.close()
            click.echo(f"stopped with {counts.requests} requests written whole to {out / RECORDS}; --resume continues", err=True)
            raise
        finally:
            progress.close()
            writer.close()
        wall = time.perf_counter() - t0
        this_run = counts.requests - done.requests
        summary = {
            **describe,
            "threshold": predictor.threshold,
            "source": job.settings["source"],
            "shard": {"index": k, "count": n},
            "predictions": RECORDS,
            "masks": MASKS if job.png else None,
            **asdict(counts),
            "resumed_after": done.requests if resuming else None,
            "timings_s": {
                "load": round(load_s, 3),
                "wall": round(wall, 3),
                "images_per_s": round(this_run / wall, 3) if wall > 0 else None,
            },
        }
        write_json(out / SUMMARY, summary)
    _print_table(summary, out, this_run)
    return EXIT_SOME_FAILED if counts.errors else 0


def _todo(requests: Iterator[Request], k: int, n: int, done: Done, pending: deque) -> Iterator[tuple]:
    """The shard's requests not done yet, as (image, texts) for predict_many, each also queued in
    `pending` for its records. A bad line goes as an image that cannot be read (None): its result
    comes back in its place with an error, which the line's own replaces. On --resume the requests
    skipped must be the ones the records hold (as many, the last one the same image)."""
    skipped, checked = 0, done.requests == 0
    for req in requests:
        if req.index % n != k:
            continue
        if req.index <= done.last:
            skipped += 1
            if req.index == done.last and req.image != done.last_image:
                raise _changed(f"request {req.index} was {done.last_image}, is now {req.image}")
            continue
        if not checked:
            _check_skipped(skipped, done)
            checked = True
        pending.append(req)
        yield (None, []) if req.error is not None else (req.image, req.texts)
    if not checked:
        _check_skipped(skipped, done)


def _check_skipped(skipped: int, done: Done) -> None:
    if skipped != done.requests:
        raise _changed(f"it has {skipped} requests up to request {done.last}, the records {done.requests}")


def _changed(what: str) -> UsageError:
    return UsageError(f"--resume: the input is not the one the run read ({what}); give the same input, or --force to start again")


def _remote_many(predictor):
    """predict_many for a server (`--server`): one request after another. Images and expressions are
    checked here, so an error from the server (unreachable, stopping) stops the run (--resume goes on)
    rather than failing every request after it."""

    def many(requests, **_):
        for index, (image, texts) in enumerate(requests):
            result = ImageResult(index, image, list(texts), [])
            try:
                rgb = as_rgb(image)
                check_texts(texts)
            except REQUEST_ERRORS as e:
                result.error = e
                yield result
                continue
            result.size = (rgb.height, rgb.width)
            result.predictions = predictor.predict_embedding(predictor.embed(rgb), list(texts))
            yield result

    return many


def _print_table(summary: dict, out: Path, this_run: int) -> None:
    shard = summary["shard"]
    t = summary["timings_s"]
    threshold = "the server's" if summary["threshold"] is None else f"{summary['threshold']:g}"
    click.echo(
        f"{summary['model']} ({summary['backend']}, {summary['mode']}), threshold {threshold}"
        + (f", shard {shard['index']}/{shard['count']}" if shard["count"] > 1 else "")
    )
    cols = ("requests", "images", "expressions", "errors", "no known words", "images/s", "wall")
    rate = "-" if t["images_per_s"] is None else f"{t['images_per_s']:.1f}"
    values = (
        f"{summary['requests']:,}",
        f"{summary['images']:,}",
        f"{summary['expressions']:,}",
        f"{summary['errors']:,}",
        f"{summary['no_known_words']:,}",
        rate,
        f"{t['wall']:.1f} s",
    )
    widths = [max(len(c), len(v)) for c, v in zip(cols, values)]
    click.echo("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    click.echo("  ".join(v.rjust(w) for v, w in zip(values, widths)))
    if summary["resumed_after"] is not None:
        click.echo(f"resumed: {summary['resumed_after']:,} requests were done before, {this_run:,} now")
    click.echo(f"wrote {out / RECORDS} and {out / SUMMARY}")
