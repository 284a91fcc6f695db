"""`restr-predict` bulk jobs: records, error records, --resume after kill -9, --shard, argument errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("torch")
mask_utils = pytest.importorskip("pycocotools.mask")

from conftest import jpeg_bytes, make_tiny_export, photo
from restr.runtime.bulk import RECORDS, RUN, SUMMARY, scan
from restr.runtime.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("tiny") / "export")


def _photos(folder: Path, n: int) -> Path:
    """n small photos of a few sizes, 000.png ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo(24 + (i % 4) * 8, 20 + (i % 3) * 6, seed=i).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _photos(tmp_path_factory.mktemp("photos"), 10)


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def read(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RECORDS).read_text(encoding="utf-8").splitlines()]


def canonical(records: list[dict]) -> list[str]:
    """The records without their timings (which differ from run to run), sorted: two runs that wrote
    the same records give the same list, a duplicate or a missing one shows."""
    return sorted(json.dumps({k: v for k, v in r.items() if k != "timings_ms"}, sort_keys=True) for r in records)


def decode(record: dict) -> np.ndarray:
    import warnings

    rle = {"size": record["mask"]["size"], "counts": record["mask"]["counts"].encode("utf-8")}
    with warnings.catch_warnings():  # pycocotools' decoder trips a numpy 2 DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def bulk(tiny, out: Path, *args, input=None):
    return run("--artifacts", tiny.folder, "--out", out, *args, input=input)


# -- records ----------------------------------------------------------------------------------------


def test_records_decode_to_single_image_masks(tiny, photos, tmp_path):
    """Every record's RLE mask is single-image restr-predict's mask for the same image and text;
    area, score and box agree; --png writes the same mask. Requests of one expression (batched across
    images) and of two (one image's features shared) both."""
    images = sorted(photos.iterdir())[:5]
    lines = [
        {"image": str(images[0]), "texts": ["the dog", "red car"], "id": "a"},
        {"image": str(images[1]), "texts": ["the man on the left"]},
        {"image": str(images[2]), "texts": ["the dog"]},
        {"image": images[3].name, "texts": "small tree"},  # relative to the file's folder; one string
        {"image": str(images[4]), "texts": ["the big cat on the bench", "a ball", "the dog"]},
    ]
    jobs = photos / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "bulk"
    done = bulk(tiny, out, "--requests", jobs, "--png")
    assert done.exit_code == 0, done.output
    records = read(out)
    assert [(rec["request"], rec["line"], rec["expression"]) for rec in records] == [
        (i, i + 1, k)
        for i, line in enumerate(lines)
        for k in range(len([line["texts"]] if isinstance(line["texts"], str) else line["texts"]))
    ]
    assert records[0]["id"] == "a" and "id" not in records[2]
    for i, line in enumerate(lines):
        texts = [line["texts"]] if isinstance(line["texts"], str) else line["texts"]
        single = tmp_path / f"single{i}"
        r = run("--artifacts", tiny.folder, "--image", images[i], *[a for t in texts for a in ("--text", t)], "--out", single)
        assert r.exit_code == 0, r.output
        expected = json.loads((single / "summary.json").read_text())["expressions"]
        got = [rec for rec in records if rec["request"] == i]
        assert [rec["text"] for rec in got] == texts and Path(got[0]["image"]) == images[i]
        for rec, e in zip(got, expected, strict=True):
            mask = np.asarray(Image.open(single / e["mask"])) == 255
            assert (rec["height"], rec["width"]) == mask.shape and rec["mask"]["size"] == list(mask.shape)
            np.testing.assert_array_equal(decode(rec), mask)
            np.testing.assert_array_equal(np.asarray(Image.open(out / rec["png"])) == 255, mask)
            assert (
                rec["area"] == e["area"] == mask.sum() and rec["score"] == e["score"] and rec["patch_score"] == e["patch_score"]
            )
            ys, xs = np.nonzero(mask)
            box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] if mask.any() else None
            assert rec["box"] == (None if box is None else [int(v) for v in box])
    assert any(rec["area"] > 0 for rec in records) and len({rec["png"] for rec in records}) == len(records)
    summary = json.loads((out / SUMMARY).read_text())
    assert (summary["requests"], summary["images"], summary["expressions"], summary["errors"]) == (5, 5, 8, 0)
    assert "images/s" in done.stdout and f"wrote {out / RECORDS}" in done.stdout
    assert "restr-predict 5/5 (100%)" in done.stderr and "img/s" in done.stderr  # the progress line off a terminal


def test_images_folder_glob_and_stdin(tiny, photos, tmp_path, monkeypatch):
    """A folder's image files sorted by name (not its subfolders, not other files), a glob's matches
    sorted with ** going down, and requests read from stdin relative to the working folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.png", "a.png", "c.jpg"):
        photo(30, 20, seed=len(name)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    _photos(folder / "sub", 2)
    r = bulk(tiny, tmp_path / "o1", "--images", folder, "--text", "the dog")
    assert r.exit_code == 0, r.output
    assert [rec["image"] for rec in read(tmp_path / "o1")] == [str(folder / n) for n in ("a.png", "b.png", "c.jpg")]
    r = bulk(tiny, tmp_path / "o2", "--images", f"{folder}/**/*.png", "--text", "the dog")
    assert r.exit_code == 0, r.output
    assert [rec["image"] for rec in read(tmp_path / "o2")] == [
        str(folder / n) for n in ("a.png", "b.png", "sub/000.png", "sub/001.png")
    ]
    monkeypatch.chdir(folder)
    r = bulk(
        tiny,
        tmp_path / "o3",
        "--requests",
        "-",
        input='{"image": "b.png", "texts": ["the dog"]}\n\n{"image": "a.png", "texts": ["red car"]}\n',
    )
    assert r.exit_code == 0, r.output
    assert [(rec["image"], rec["line"], rec["text"]) for rec in read(tmp_path / "o3")] == [
        ("b.png", 1, "the dog"),
        ("a.png", 3, "red car"),
    ]


def test_data_set_expressions_grouped_by_image(tiny, tmp_path):
    """--data: one request per image with every expression read about it, in the data set's order,
    each record carrying the sample's ids."""
    from restr.data import load_refer
    from restr.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path / "syn", sizes=(1, 1, 3))
    out = tmp_path / "o"
    r = bulk(tiny, out, "--data", f"{root}:test")
    assert r.exit_code == 0, r.output
    samples = load_refer(root, split="test")
    by_image: dict = {}
    for s in samples:
        by_image.setdefault(str(s.image_path), []).append(s)
    records = read(out)
    assert len(records) == len(samples) and len({rec["request"] for rec in records}) == len(by_image) == 3
    got = [(rec["image"], rec["text"], rec["sent_id"], rec["ref_id"]) for rec in records]
    assert got == [(image, s.text, s.sent_id, s.ref_id) for image, group in by_image.items() for s in group]


# -- bad input in the middle: error records, the run goes on --------------------------------------------


def test_bad_requests_are_error_records_and_the_run_goes_on(tiny, photos, tmp_path):
    good = sorted(photos.iterdir())[0]
    (tmp_path / "text.png").write_text("hello, not a picture")
    (tmp_path / "cut.jpg").write_bytes(jpeg_bytes()[:300])
    lines = [
        json.dumps({"image": str(good), "texts": ["the dog"]}),
        json.dumps({"image": "missing.png", "texts": ["the dog"]}),
        json.dumps({"image": "cut.jpg", "texts": ["the dog"]}),
        json.dumps({"image": "text.png", "texts": ["the dog"]}),
        '{"image": "a.png", "texts": ["the dog"]',
        "",
        json.dumps(["a.png", "the dog"]),
        json.dumps({"image": str(good)}),
        json.dumps({"image": str(good), "texts": ["the dog", " ... "]}),
        json.dumps({"image": str(good), "texts": ["red car"]}),
    ]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    r = bulk(tiny, out, "--requests", jobs)
    assert r.exit_code == 1, r.output
    records = read(out)
    errors = {rec["line"]: rec["error"] for rec in records if rec["error"] is not None}
    expected = {
        2: r"missing\.png: no such file",
        3: r"cut\.jpg: not a readable image",
        4: r"text\.png: not a readable image",
        5: r"line 5: not JSON",
        7: r"line 7: expected an object",
        8: r"line 8: 'texts' must be a list",
        9: r"expression 2 .* is empty",
    }
    assert sorted(errors) == sorted(expected)
    import re

    for line, pattern in expected.items():
        assert re.search(pattern, errors[line]), (line, errors[line])
    assert [(rec["line"], rec["text"]) for rec in records if rec["error"] is None] == [(1, "the dog"), (10, "red car")]
    assert [rec["request"] for rec in records] == list(range(9))  # the blank line is no request
    assert all(f"(line {line})" in r.stderr for line in expected)
    summary = json.loads((out / SUMMARY).read_text())
    assert (summary["requests"], summary["images"], summary["errors"]) == (9, 2, 7)


def test_a_bad_image_in_a_folder_fails_alone(tiny, photos, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, src in enumerate(sorted(photos.iterdir())[:3]):
        (folder / f"{i}.png").write_bytes(src.read_bytes())
    (folder / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = bulk(tiny, tmp_path / "o", "--images", folder, "--text", "the dog", "--text", "red car")
    assert r.exit_code == 1, r.output
    records = read(tmp_path / "o")
    assert [(rec["request"], rec["error"] is None) for rec in records] == [(0, True), (0, True), (1, False), (2, True), (2, True)]
    assert records[2]["texts"] == ["the dog", "red car"] and "1.png" in records[2]["error"]


# -- argument errors: exit 2 before any work, nothing written -------------------------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        (["--images", "{photos}", "--text", "dog", "--shard", "3/2"], "--shard 3/2: K must be from 0 to N-1"),
        (["--images", "{photos}", "--text", "dog", "--shard", "1-4"], "--shard 1-4: expected K/N"),
        (["--images", "{photos}"], "--images asks every image the same expressions: give them with --text"),
        (["--images", "{photos}", "--text", " ? "], "expression 1 .* is empty"),
        (
            ["--image", "{photos}/000.png", "--images", "{photos}", "--text", "dog"],
            "give one of --image, --images, --requests and --data",
        ),
        (["--requests", "{tmp}/nope.jsonl"], "--requests .*nope.jsonl: no such file"),
        (["--requests", "{photos}"], "not a file"),
        (["--requests", "{tmp}/nope.jsonl", "--text", "dog"], "--text goes with --image or --images"),
        (["--image", "{photos}/000.png", "--text", "dog", "--png"], "--png: bulk options"),
        (["--images", "{photos}", "--text", "dog", "--resume", "--force"], "give one of --resume .* and --force"),
        (["--images", "{tmp}/empty", "--text", "dog"], "no image files there"),
        (["--images", "{photos}", "--text", "dog", "--split", "val"], "--split, --split-by and --image-root go with --data"),
        (["--images", "{photos}", "--text", "dog", "--overlay"], "--overlay, --sheet and --json are for --image"),
        (["--data", "{tmp}/nowhere:test"], "no such data set folder"),
        (["--images", "{photos}", "--text", "dog", "--workers", "-1"], "Invalid value for '--workers'"),
    ],
)
def test_argument_errors_exit_2_and_write_nothing(tiny, photos, tmp_path, args, message):
    import re

    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    r = bulk(tiny, out, *[a.format(photos=photos, tmp=tmp_path) for a in args])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("restr-predict: error:") and re.search(message, lines[0]), r.stderr
    assert not out.exists()


def test_a_previous_run_is_refused_without_force_or_resume(tiny, photos, tmp_path):
    out = tmp_path / "o"
    assert bulk(tiny, out, "--images", photos, "--text", "the dog", "--png").exit_code == 0
    before = (out / RECORDS).read_bytes()
    r = bulk(tiny, out, "--images", photos, "--text", "red car")
    assert r.exit_code == 2 and "holds files" in r.stderr and "--resume" in r.stderr
    r = bulk(tiny, out, "--images", photos, "--text", "red car", "--resume")
    assert r.exit_code == 2 and "other settings (png, source differ" in r.stderr
    assert (out / RECORDS).read_bytes() == before
    r = bulk(tiny, out, "--images", photos, "--text", "red car", "--force")
    assert r.exit_code == 0, r.output
    assert {rec["text"] for rec in read(out)} == {"red car"} and not (out / "masks").exists()  # the --png run's masks went
    assert json.loads((out / RUN).read_text())["source"]["texts"] == ["red car"]


# -- sharding -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tiny, photos, tmp_path_factory) -> Path:
    """A whole run of 10 images and two expressions each: the reference for the resume tests."""
    out = tmp_path_factory.mktemp("finished") / "o"
    r = bulk(tiny, out, "--images", photos, "--text", "the dog", "--text", "red car")
    assert r.exit_code == 0, r.output
    return out


def test_shards_are_disjoint_and_make_the_whole(tiny, photos, finished, tmp_path):
    parts = []
    for k in range(3):
        out = tmp_path / f"shard-{k}"
        r = bulk(tiny, out, "--images", photos, "--text", "the dog", "--text", "red car", "--shard", f"{k}/3")
        assert r.exit_code == 0, r.output
        parts.append(read(out))
        assert {rec["request"] for rec in parts[-1]} == {i for i in range(10) if i % 3 == k}
    assert canonical([rec for part in parts for rec in part]) == canonical(read(finished))
    r = bulk(tiny, tmp_path / "none", "--images", f"{photos}/00[01].png", "--text", "the dog", "--shard", "5/8")
    assert r.exit_code == 0 and (tmp_path / "none" / RECORDS).read_text() == ""  # a shard with nothing to do


# -- resume ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cut", ["a torn line", "a request cut short", "a request boundary", "zeros after a power cut", "nothing written", "the end"]
)
def test_resume_after_any_cut_writes_each_record_once(tiny, photos, finished, tmp_path, cut):
    """A records file stopped anywhere (a torn last line, a request with only some of its lines, a
    zero-filled tail) continues to exactly the whole run's records."""
    data = (finished / RECORDS).read_bytes()
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]  # line ends: requests have two lines each
    kept, whole = {
        "a torn line": (data[: ends[6] + 40], 3),
        "a request cut short": (data[: ends[6]], 3),
        "a request boundary": (data[: ends[7]], 4),
        "zeros after a power cut": (data[: ends[7]] + bytes(len(data)), 4),
        "nothing written": (b"", 0),
        "the end": (data, 10),
    }[cut]
    out = tmp_path / "o"
    out.mkdir()
    (out / RUN).write_bytes((finished / RUN).read_bytes())
    (out / RECORDS).write_bytes(kept)
    r = bulk(tiny, out, "--images", photos, "--text", "the dog", "--text", "red car", "--resume")
    assert r.exit_code == 0, r.output
    assert canonical(read(out)) == canonical(read(finished))
    assert json.loads((out / SUMMARY).read_text())["resumed_after"] == whole
    assert scan(out / RECORDS).end == (out / RECORDS).stat().st_size


def test_resume_refuses_another_input(tiny, photos, finished, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / RUN).write_bytes((finished / RUN).read_bytes())
    (out / RECORDS).write_bytes(b"".join((finished / RECORDS).read_bytes().splitlines(keepends=True)[:8]))
    (photos / "001.png").rename(photos / "999.png")  # the listing shifts: request 3 is now another image
    try:
        r = bulk(tiny, out, "--images", photos, "--text", "the dog", "--text", "red car", "--resume")
    finally:
        (photos / "999.png").rename(photos / "001.png")
    assert r.exit_code == 2 and "the input is not the one the run read" in r.stderr, r.output
    assert len(read(out)) == 8


@pytest.mark.parametrize(
    "error,code,shown",
    [
        (
            RuntimeError("CUDA error: an illegal memory access was encountered"),
            2,
            "RuntimeError: CUDA error: an illegal memory access",
        ),
        (AttributeError("'NoneType' object has no attribute 'run'"), 3, r"internal error \(AttributeError: .*please report it"),
    ],
)
def test_a_runtime_failure_mid_run_keeps_whole_records_and_resume_finishes(
    tiny, photos, finished, tmp_path, monkeypatch, error, code, shown
):
    """The runtime failing after some requests (CUDA, ONNX Runtime) is exit 2, a bug exit 3: one
    error line, the records written so far whole; --resume then finishes the run."""
    import re

    from restr.runtime.predictor import Predictor

    real = Predictor.predict_many

    def failing(self, requests, **kw):
        for n, result in enumerate(real(self, requests, **kw)):
            if n == 3:
                raise error
            yield result

    monkeypatch.setattr(Predictor, "predict_many", failing)
    out = tmp_path / "o"
    args = ("--images", photos, "--text", "the dog", "--text", "red car")
    r = bulk(tiny, out, *args)
    assert r.exit_code == code and isinstance(r.exception, SystemExit), r.output
    assert re.search(shown, r.stderr.strip().splitlines()[-1]) and r.stderr.strip().splitlines()[-1].startswith(
        "restr-predict: error:"
    )
    assert (
        sorted({rec["request"] for rec in read(out)}) == [0, 1, 2] and scan(out / RECORDS).end == (out / RECORDS).stat().st_size
    )
    monkeypatch.setattr(Predictor, "predict_many", real)
    assert bulk(tiny, out, *args, "--resume").exit_code == 0
    assert canonical(read(out)) == canonical(read(finished))


def test_a_second_run_in_the_same_folder_is_refused(tiny, photos, tmp_path):
    """Two processes appending to one records file would interleave: the second is refused."""
    import fcntl

    out = tmp_path / "o"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running restr-predict holds
        r = bulk(tiny, out, "--images", photos, "--text", "the dog", "--resume")
    finally:
        os.close(fd)
    assert r.exit_code == 2 and "another restr-predict is writing there" in r.stderr, r.output
    assert not (out / RECORDS).exists()


def _start(tiny, folder: Path, out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "restr.runtime.cli",
            "--artifacts",
            str(tiny.folder),
            "--images",
            str(folder),
            "--text",
            "the dog",
            "--out",
            str(out),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop_after(proc: subprocess.Popen, records: Path, lines: int, sig: int) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= lines:
            os.kill(proc.pid, sig)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), (proc.returncode, err)
    return err


MANY = 200


@pytest.fixture(scope="module")
def many(tiny, tmp_path_factory) -> tuple[Path, list[dict]]:
    """MANY small photos, and the records of a run over them that was never stopped."""
    folder = _photos(tmp_path_factory.mktemp("many"), MANY)
    whole = tmp_path_factory.mktemp("whole") / "o"
    r = bulk(tiny, whole, "--images", folder, "--text", "the dog")
    assert r.exit_code == 0, r.output
    return folder, read(whole)


def test_sigterm_then_kill_9_then_resume_gives_the_uninterrupted_run(tiny, many, tmp_path):
    """Real processes stopped mid-run, with SIGTERM (exit 143, records whole) then, resumed, with
    SIGKILL; a last --resume gives exactly the records of a run that was never stopped (none twice,
    none missing), and keeps what the stopped runs wrote."""
    folder, whole = many
    out = tmp_path / "o"
    err = _stop_after(_start(tiny, folder, out), out / RECORDS, 20, signal.SIGTERM)
    assert err.strip().splitlines()[-1] == "restr-predict: error: stopped by SIGTERM" and "--resume continues" in err
    done = scan(out / RECORDS)
    assert done.end == (out / RECORDS).stat().st_size and 20 <= done.requests < MANY  # whole requests, nothing torn
    after_term = read(out)
    _stop_after(_start(tiny, folder, out, "--resume"), out / RECORDS, done.requests + 20, signal.SIGKILL)
    killed = scan(out / RECORDS)
    assert not (out / SUMMARY).exists() and done.requests + 20 <= killed.requests < MANY  # stopped mid-run again
    r = bulk(tiny, out, "--images", folder, "--text", "the dog", "--resume")
    assert r.exit_code == 0, r.output
    assert f"resumed: {killed.requests:,} requests were done before" in r.stdout
    records = read(out)
    assert canonical(records) == canonical(whole)
    assert [rec["request"] for rec in records] == list(range(MANY))
    assert records[: len(after_term)] == after_term


# -- a server, and the help ------------------------------------------------------------------------------


def test_server_gives_the_same_records(tiny, photos, tmp_path, monkeypatch):
    """--server: requests answered one by one through RemotePredictor (here a stand-in answering
    with the local predictor), same records as --artifacts; a bad image fails alone."""
    import restr.runtime.client as client
    from restr.runtime.predictor import Predictor

    local = Predictor.from_artifacts(tiny.folder)

    class Served:
        model_name, providers = "restr at the server", ["triton"]

    class Remote:
        mode, threshold = "server", None

        def __init__(self, url, threshold=None, **_):
            self.runners, self.artifacts = {"server": Served()}, Served()

        def embed(self, rgb):
            return client.RemoteEmbedding(rgb)

        def predict_embedding(self, emb, texts):
            self.threshold = local.threshold
            return local.predict_image(emb.rgb, texts, probs=False)

        def close(self):
            pass

    monkeypatch.setattr(client, "RemotePredictor", Remote)
    folder = tmp_path / "in"
    folder.mkdir()
    for src in sorted(photos.iterdir())[:3]:
        (folder / src.name).write_bytes(src.read_bytes())
    texts = ("--text", "the dog", "--text", "red car")
    assert bulk(tiny, tmp_path / "local", "--images", folder, *texts).exit_code == 0
    r = run("--server", "http://127.0.0.1:9", "--images", folder, *texts, "--out", tmp_path / "served")
    assert r.exit_code == 0, r.output
    assert canonical(read(tmp_path / "served")) == canonical(read(tmp_path / "local"))
    (folder / "001.png").write_text("broken")
    r = run("--server", "http://127.0.0.1:9", "--images", folder, *texts, "--out", tmp_path / "served", "--force")
    assert r.exit_code == 1 and [rec["error"] is None for rec in read(tmp_path / "served")] == [True, True, False, True, True]


def test_help_explains_the_bulk_options():
    r = run("--help")
    assert r.exit_code == 0
    for option in ("--images", "--requests", "--data", "--split-by", "--image-root", "--png", "--resume", "--shard", "--workers"):
        assert option in r.output
    assert "predictions.jsonl" in r.output and "--shard $K/8" in r.output and "Exit codes: 0 done; 1 (bulk)" in r.output
