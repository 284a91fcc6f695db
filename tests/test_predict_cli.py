"""`restr-predict`: outputs, summary, and one-line errors with exit code 2 and no partial files."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("torch")

from conftest import jpeg_bytes, make_tiny_export, photo
from restr.runtime.cli import main, slugify


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("tiny") / "export")


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    photo(72, 48, seed=1).save(path)
    return path


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _png_header(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR of the given size and no pixel data (Pillow reads the size lazily)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_writes_masks_overlays_and_summary(tiny, image, tmp_path):
    out = tmp_path / "pred"
    r = run(
        "--artifacts",
        tiny.folder,
        "--image",
        image,
        "--text",
        "the dog on the left",
        "--text",
        "Red car!",
        "--out",
        out,
        "--overlay",
    )
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "1_the-dog-on-the-left.png",
        "1_the-dog-on-the-left_overlay.png",
        "2_red-car.png",
        "2_red-car_overlay.png",
        "summary.json",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["image"] == {"path": str(image), "width": 72, "height": 48}
    assert summary["mode"] == "split" and summary["threshold"] == 0.5
    for e in summary["expressions"]:
        mask = np.asarray(Image.open(out / e["mask"]))
        assert mask.shape == (48, 72)
        assert e["area"] == int((mask == 255).sum())
        assert e["area_fraction"] == pytest.approx(e["area"] / (48 * 72), abs=1e-6)
        assert 0.0 <= e["score"] <= 1.0 and e["unknown_words"] == [] and e["truncated"] is False
        assert Image.open(out / e["overlay"]).size == (72, 48)
    assert set(summary["timings_ms"]) == {
        "load",
        "preprocess",
        "vision",
        "language_fusion_per_expression",
        "postprocess_per_expression",
        "total",
    }
    assert "the dog on the left" in r.stdout and "summary.json" in r.stdout  # the table


def test_json_to_stdout_and_threshold(tiny, image, tmp_path):
    r = run(
        "--artifacts",
        tiny.folder,
        "--image",
        image,
        "--text",
        "the dog",
        "--out",
        tmp_path / "o",
        "--json",
        "-",
        "--threshold",
        "0.999",
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["threshold"] == 0.999 and summary["expressions"][0]["area"] == 0


def test_long_text_warns_and_unknown_words_reported(tiny, image, tmp_path):
    long = " ".join(["the big dog"] * 8)
    r = run("--artifacts", tiny.folder, "--image", image, "--text", long, "--text", "a zebra", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "expression 1 has 24 words; only the first 20 were used" in r.stderr
    assert "expression 2: words not in the vocabulary (read as <unk>): a, zebra" in r.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["expressions"][0]["truncated"] is True
    assert summary["expressions"][1]["unknown_words"] == ["a", "zebra"]


def _bad_folder(tiny, tmp_path, change) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(tiny.folder, folder)
    change(folder)
    return folder


def _set_version(folder: Path) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))


def _corrupt_graph(folder: Path) -> None:
    data = bytearray((folder / "fusion_decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "fusion_decoder.onnx").write_bytes(bytes(data))


BAD_IMAGES = {
    "not an image": (lambda p: p.write_text("hello, not a picture"), "not a readable image"),
    "truncated": (lambda p: p.write_bytes(jpeg_bytes()[:300]), "not a readable image"),
    "zero size": (lambda p: p.write_bytes(_png_header(0, 10)), "zero size|not a readable image"),
    "huge": (lambda p: p.write_bytes(_png_header(10_000, 9_000)), "larger than the 64,000,000 allowed"),
    "bomb": (lambda p: p.write_bytes(_png_header(40_000, 40_000)), "not a readable image .*exceeds limit"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_one_line_exit_2_no_output(tiny, tmp_path, case):
    write, message = BAD_IMAGES[case]
    path = tmp_path / ("bad.jpg" if case == "truncated" else "bad.png")
    write(path)
    out = tmp_path / "out"
    r = run("--artifacts", tiny.folder, "--image", path, "--text", "the dog", "--out", out)
    _assert_clean_failure(r, out, message)


@pytest.mark.parametrize(
    "case,change,message",
    [
        ("no manifest", lambda f: (f / "manifest.json").unlink(), "no manifest.json"),
        ("unknown version", _set_version, "format_version 99 is not supported"),
        ("checksum", _corrupt_graph, "fusion_decoder.onnx: sha256 .* does not match"),
        ("missing graph", lambda f: (f / "language.onnx").unlink(), "language.onnx: file named by the manifest is missing"),
    ],
)
def test_bad_artifacts_one_line_exit_2_no_output(tiny, image, tmp_path, case, change, message):
    folder = _bad_folder(tiny, tmp_path, change)
    out = tmp_path / "out"
    r = run("--artifacts", folder, "--image", image, "--text", "the dog", "--out", out)
    _assert_clean_failure(r, out, message)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--text", ""], "expression 1 .* is empty"),
        (["--text", "the dog", "--text", " ... "], "expression 2 .* is empty"),
        (["--text", "dog", "--image", "missing.png"], "no such file"),
        (["--text", "dog", "--backend", "onnx"], "Invalid value for '--backend'"),
        (["--text", "dog", "--threshold", "1.5"], "Invalid value for '--threshold'"),
        (["--text", "dog", "--providers", "tpu"], "unknown ONNX Runtime provider"),
        (["--text", "dog", "--backend", "tensorrt", "--precision", "fp16"], "no 'vision_fp16' TensorRT engine"),
        ([], "Missing option '--text'"),
    ],
)
def test_bad_options_one_line_exit_2(tiny, image, tmp_path, args, message):
    out = tmp_path / "out"
    base = ["--artifacts", tiny.folder, "--image", image, "--out", out]
    if "--image" in args:
        base = ["--artifacts", tiny.folder, "--out", out]
        args = [a if a != "missing.png" else str(tmp_path / "missing.png") for a in args]
    r = run(*base, *args)
    _assert_clean_failure(r, out, message)


def test_out_is_a_file(tiny, image, tmp_path):
    out = tmp_path / "taken"
    out.write_text("x")
    r = run("--artifacts", tiny.folder, "--image", image, "--text", "dog", "--out", out)
    assert r.exit_code == 2 and "exists and is not a folder" in r.stderr
    assert out.read_text() == "x"


def test_failure_in_existing_out_leaves_it_untouched(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    r = run("--artifacts", tiny.folder, "--image", bad, "--text", "dog", "--out", out)
    assert r.exit_code == 2
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_real_process_exit_code_and_no_traceback(tiny, tmp_path):
    """The console entry point in a real process: exit status 2 and exactly one line on stderr."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cmd = [
        sys.executable,
        "-c",
        "from restr.runtime.cli import main; main()",
        "--artifacts",
        str(tiny.folder),
        "--image",
        str(bad),
        "--text",
        "dog",
        "--out",
        str(tmp_path / "o"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("restr-predict: error:") and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_help_explains():
    r = run("--help")
    assert r.exit_code == 0
    for option in ("--artifacts", "--image", "--text", "--out", "--overlay", "--backend", "--precision", "--threshold", "--json"):
        assert option in r.output


def test_slugify():
    assert slugify("The dog, left of the bench.") == "the-dog-left-of-the-bench"
    assert slugify("!!!") == "expression"
    assert len(slugify("word " * 40)) <= 40
    assert slugify("Café naïve") == "cafe-naive" and slugify("the 狗 dog") == "the-dog"


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--image", "https://example.com/dog.jpg"],
            "--image https://example.com/dog.jpg: looks like a URL; restr-predict reads local files only",
        ),
        (
            ["--out", "/proc/restr-forbidden"],
            "--out /proc/restr-forbidden: cannot write in /proc (the file system there takes no new files)",
        ),
    ],
)
def test_urls_and_unwritable_places_are_named(tiny, image, tmp_path, args, message):
    base = {"--image": str(image), "--out": str(tmp_path / "o")}
    base.update(dict(zip(args[::2], args[1::2])))
    r = run("--artifacts", tiny.folder, "--text", "the dog", *[a for kv in base.items() for a in kv])
    assert r.exit_code == 2 and r.stderr.strip().startswith(f"restr-predict: error: {message}") and r.stderr.count("\n") == 1


def _assert_clean_failure(r, out: Path, message: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert isinstance(r.exception, SystemExit), r.exception  # not an uncaught exception
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("restr-predict: error:")
    import re

    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in r.output
    assert not out.exists() or not any(out.iterdir())


# -- issue 13 and 14: runtime failures, reused folders, known words, overlays --------------------------------


@pytest.mark.parametrize(
    "error,code,shown",
    [
        (
            RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be reported later"),
            2,
            "RuntimeError: CUDA error: an illegal memory access was encountered",
        ),
        (OSError(28, "No space left on device"), 2, "No space left on device"),
        (MemoryError(), 2, "MemoryError"),
        (
            AttributeError("'NoneType' object has no attribute 'execute_async_v3'"),
            3,
            r"internal error \(AttributeError: .*please report it",
        ),
    ],
)
def test_every_runtime_failure_is_one_line(tiny, image, tmp_path, monkeypatch, error, code, shown):
    """A CUDA/TensorRT/ONNX Runtime failure is exit 2, a bug exit 3: one line either way, nothing written."""
    from restr.runtime.predictor import Predictor

    def boom(self, *a, **k):
        raise error

    monkeypatch.setattr(Predictor, "predict_embedding", boom)
    out = tmp_path / "out"
    r = run("--artifacts", tiny.folder, "--image", image, "--text", "the dog", "--out", out)
    assert r.exit_code == code and isinstance(r.exception, SystemExit), r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("restr-predict: error:"), r.stderr
    import re

    assert re.search(shown, lines[0]), lines[0]
    assert not out.exists()


def test_reused_out_is_refused_then_replaced_whole_with_force(tiny, image, tmp_path):
    out = tmp_path / "pred"
    assert (
        run(
            "--artifacts", tiny.folder, "--image", image, "--text", "the dog", "--text", "the red car", "--out", out, "--overlay"
        ).exit_code
        == 0
    )
    (out / "notes.txt").write_text("mine")
    r = run("--artifacts", tiny.folder, "--image", image, "--text", "the cat", "--out", out)
    assert r.exit_code == 2 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("--artifacts", tiny.folder, "--image", image, "--text", "the cat", "--out", out, "--force")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["1_the-cat.png", "notes.txt", "summary.json"]  # the user's file stays
    assert [e["text"] for e in json.loads((out / "summary.json").read_text())["expressions"]] == ["the cat"]


def test_list_words_prints_the_vocabulary(tiny):
    r = run("--artifacts", tiny.folder, "--list-words")
    assert r.exit_code == 0, r.output
    assert r.stdout.split() == tiny.vocab.itos[2:]


def test_no_known_word_is_flagged(tiny, image, tmp_path):
    from restr.runtime.predictor import Predictor

    assert "zebra" not in tiny.vocab.stoi and "dog" in tiny.vocab.stoi and "the" in tiny.vocab.stoi
    preds = Predictor.from_artifacts(tiny.folder, threads=1).predict_image(
        str(image), ["the zebra", "the dog", "a zebra next to the dog", "The ZEBRA."]
    )
    assert [p.no_known_words for p in preds] == [True, False, False, True]
    out = tmp_path / "o"
    r = run("--artifacts", tiny.folder, "--image", image, "--text", "the zebra", "--text", "the dog", "--out", out)
    assert r.exit_code == 0, r.output
    assert (
        "expression 1 ('the zebra'): the model knows none of its content words" in r.stderr and "expression 2 (" not in r.stderr
    )
    summary = json.loads((out / "summary.json").read_text())
    assert [e["no_known_words"] for e in summary["expressions"]] == [True, False]
    assert "no known words" in r.stdout and "score: mean probability inside the mask" in r.stdout


def test_sheet_has_a_tile_per_expression(tiny, image, tmp_path):
    out = tmp_path / "o"
    r = run(
        "--artifacts",
        tiny.folder,
        "--image",
        image,
        "--text",
        "the dog",
        "--text",
        "the red car",
        "--text",
        "a hat",
        "--out",
        out,
        "--sheet",
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sheet"] == "sheet.png"
    sheet = Image.open(out / "sheet.png")
    assert sheet.width > 3 * 72 and sheet.height > 48  # three tiles side by side, with captions below
    assert len(np.unique(np.asarray(sheet.convert("L"))[-45:-10])) > 1  # caption text under the tiles


def test_overlay_keeps_the_region_and_dims_the_rest():
    """The object keeps its own colour (a tint made the green circle magenta and the red one grey-blue);
    the rest of the image loses half its brightness and half its colour, past a white contour
    (tests/test_large_photos.py holds the whole rule)."""
    from restr.runtime.visualize import overlay

    for colour in [(255, 0, 0), (255, 120, 0), (0, 200, 255), (40, 200, 40)]:
        rgb = np.zeros((20, 20, 3), np.uint8)
        rgb[:] = colour
        mask = np.zeros((20, 20), bool)
        mask[5:15, 5:15] = True
        out = np.asarray(overlay(rgb, mask)).astype(int)
        assert (out[5:15, 5:15] == colour).all(), colour
        assert (out[3:5, 5:15] == 255).all() and (out[15:17, 5:15] == 255).all()  # the contour, 2 pixels
        y = (19595 * colour[0] + 38470 * colour[1] + 7471 * colour[2] + 32768) >> 16  # luma
        assert (out[0, 0] == [(c + y) >> 2 for c in colour]).all(), (colour, out[0, 0])  # half as bright, half as coloured


def test_overlay_takes_a_path_with_exif_rotation(tmp_path):
    from restr.runtime.visualize import save_overlay

    im = photo(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: 30 wide, 40 high
    path = tmp_path / "phone.jpg"
    im.save(path, exif=exif)
    mask = np.zeros((40, 30), bool)
    mask[10:20, 5:15] = True
    with pytest.raises(ValueError, match="image is 40x30, mask is 30x40"):
        save_overlay(tmp_path / "a.png", Image.open(path), mask)  # what users tried first
    written = save_overlay(tmp_path / "b.png", str(path), mask)
    assert Image.open(written).size == (30, 40)


# -- staging folders: SIGTERM mid-write, and what a killed run left --------------------------------


def test_sigterm_while_writing_leaves_nothing(tiny, tmp_path):
    """SIGTERM while the outputs are being staged: the staging folder and the --out folder the run
    made are removed, exit 143 with one line."""
    import os
    import signal
    import time

    big = tmp_path / "big.png"
    photo(2400, 1800, seed=2).save(big)
    out = tmp_path / "new" / "pred"
    texts = [a for t in ("the dog", "red car", "the man", "small tree", "ball", "the cat") for a in ("--text", t)]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "restr.runtime.cli",
            "--artifacts",
            str(tiny.folder),
            "--image",
            str(big),
            *texts,
            "--out",
            str(out),
            "--overlay",
            "--sheet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and any(p.name.startswith(".restr-predict-") for p in out.iterdir()):
            os.kill(proc.pid, signal.SIGTERM)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip() == "restr-predict: error: stopped by SIGTERM"
    assert not out.exists() and list((tmp_path / "new").iterdir()) == [], sorted(p.name for p in out.rglob("*"))


def test_staging_left_by_a_killed_run_is_removed_by_the_next(tiny, image, tmp_path):
    """A staging folder whose process is gone (kill -9, an abort; Python's or the C++ CLI's) is no
    one's file: the next run removes it and is not refused; a live run's is left alone and counts."""
    import os

    out = tmp_path / "pred"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    for name in (f".restr-predict-{dead.stdout.strip()}-ab12_x", f".restr-predict-cpp-{dead.stdout.strip()}-Zx81Qa"):
        (out / name).mkdir(parents=True)
        (out / name / "1_the-dog.png").write_bytes(b"partial")
    r = run("--artifacts", tiny.folder, "--image", image, "--text", "the dog", "--out", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["1_the-dog.png", "summary.json"]
    live = out / f".restr-predict-{os.getppid()}-ab12_x"  # this test's parent: alive
    live.mkdir()
    r = run("--artifacts", tiny.folder, "--image", image, "--text", "the dog", "--out", tmp_path / "other")
    assert r.exit_code == 0
    (out / "1_the-dog.png").unlink()
    (out / "summary.json").unlink()
    r = run("--artifacts", tiny.folder, "--image", image, "--text", "the dog", "--out", out)
    assert r.exit_code == 2 and "holds files" in r.stderr and live.is_dir()


def test_a_signal_while_outputs_move_into_place_waits_for_them(tiny, image, tmp_path, monkeypatch):
    """SIGTERM in the middle of the commit (a previous run's outputs removed, the new ones moved in)
    is held until the new outputs are whole: never a folder with half a run and no summary."""
    import os
    import signal

    import restr.runtime.cli as cli

    out = tmp_path / "pred"
    assert (
        run("--artifacts", tiny.folder, "--image", image, "--text", "the dog", "--text", "red car", "--out", out).exit_code == 0
    )
    replace, calls = os.replace, []

    def replace_then_signal(a, b):
        if Path(b).parent == out:  # a move into --out: the commit
            calls.append(b)
            if len(calls) == 1:
                os.kill(os.getpid(), signal.SIGTERM)
        replace(a, b)

    monkeypatch.setattr(cli.os, "replace", replace_then_signal)
    r = run("--artifacts", tiny.folder, "--image", image, "--text", "the cat", "--text", "ball", "--out", out, "--force")
    assert r.exit_code == 128 + signal.SIGTERM and len(calls) == 3
    assert sorted(p.name for p in out.iterdir()) == ["1_the-cat.png", "2_ball.png", "summary.json"]
    assert [e["text"] for e in json.loads((out / "summary.json").read_text())["expressions"]] == ["the cat", "ball"]


def test_an_empty_folder_and_bytes_that_are_not_utf8_are_named(tiny, image, tmp_path):
    """The words the C++ CLI uses: an empty --artifacts string, and an expression of invalid UTF-8
    (argv bytes Python keeps as surrogates), each one line and exit 2."""
    import os

    r = run("--artifacts", "", "--image", image, "--text", "the dog", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "folder is an empty string: give the path of an export folder" in r.stderr
    bad = os.fsdecode(b"the d\xffog")
    r = run("--artifacts", tiny.folder, "--image", image, "--text", "the cat", "--text", bad, "--out", tmp_path / "o")
    assert r.exit_code == 2 and r.stderr.strip() == "restr-predict: error: expression 2 is not valid UTF-8"
    assert not (tmp_path / "o").exists()
