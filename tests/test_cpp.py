"""The C++ host (runtime/cpp) against the Python runtime on the same export: identical masks,
probabilities and scores within 1e-5 (one ONNX Runtime thread each), restr-predict-cpp's outputs
and summary.json against restr-predict's, and the same one-line errors for bad input.

The build is `make cpp-build`'s (RESTR_CPP_BUILD names another); without it the fixture runs that
target once per session, and the tests are skipped only where cmake or g++ is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")  # the export is made by restr-export's pipeline

from conftest import make_tiny_export, photo
from restr.runtime import Predictor
from restr.runtime.cpp.cpp_host import CppHost

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5
TEXTS = [
    "the red dog",
    "Zebra, qux.",
    "the man on the left",
    "a",
    "the " * 25 + "big tree",
    "Blue CAR!",
    "the small ball on the right",
]


@pytest.fixture(scope="session")
def build() -> Path:
    if os.environ.get("RESTR_CPP_BUILD"):
        return Path(os.environ["RESTR_CPP_BUILD"])
    if not (shutil.which("cmake") and shutil.which("g++")):
        pytest.skip("cmake and g++ are needed to build the C++ host (runtime/cpp)")
    subprocess.run(["make", "-s", "cpp-build", f"PYTHON={sys.executable}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return ROOT / "build" / "cpp"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_export(tmp_path_factory.mktemp("cpp") / "export").folder


@pytest.mark.filterwarnings("ignore::restr.runtime.predictor.TextTruncatedWarning")
@pytest.mark.parametrize("size", [(80, 56), (640, 480), (1, 1), (37, 300), (300, 37)])
def test_library_matches_the_python_predictor(build, tiny, size):
    rgb = np.asarray(photo(*size, seed=sum(size)))
    want = Predictor.from_artifacts(tiny, threads=1, cache_size=0).predict_image(rgb, TEXTS)
    host = CppHost(build / "librestr_runtime.so", tiny, threads=1)
    got, _ = host.predict(rgb, TEXTS)  # 7 expressions: two chunks of the export's max_batch 4
    host.close()
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert np.array_equal(g["mask"], w.mask), w.text
        assert np.abs(g["probs"] - w.probs).max() <= ATOL
        assert g["area"] == w.area
        assert abs(g["score"] - w.score) <= ATOL and abs(g["patch_score"] - w.patch_score) <= ATOL
        assert (g["unknown_words"], g["no_known_words"], g["truncated"]) == (w.unknown_words, w.no_known_words, w.truncated)
    assert got[4]["truncated"] and got[1]["no_known_words"] and got[1]["unknown_words"] == ["zebra", "qux"]


@pytest.mark.filterwarnings("ignore::restr.runtime.predictor.TextTruncatedWarning")
def test_end_to_end_export_matches_the_python_predictor(build, tiny, tmp_path):
    """An export without the split graphs runs its end-to-end graph, in both hosts alike."""
    folder = tmp_path / "e2e"
    shutil.copytree(tiny, folder)
    m = json.loads((folder / "manifest.json").read_text())
    for stage in ("vision", "language", "fusion_decoder"):
        del m["graphs"][stage]
    (folder / "manifest.json").write_text(json.dumps(m))
    rgb = np.asarray(photo(90, 70, seed=9))
    predictor = Predictor.from_artifacts(folder, threads=1, cache_size=0)
    assert predictor.mode == "end_to_end"
    want = predictor.predict_image(rgb, TEXTS)
    host = CppHost(build / "librestr_runtime.so", folder, threads=1)
    got, timings = host.predict(rgb, TEXTS)
    host.close()
    assert timings["vision"] == 0 and timings["language"] == 0
    for g, w in zip(got, want):
        assert np.array_equal(g["mask"], w.mask) and np.abs(g["probs"] - w.probs).max() <= ATOL
        assert abs(g["score"] - w.score) <= ATOL and g["area"] == w.area


def _tiny_export(folder: Path, seed: int = 0, precisions: tuple[str, ...] = ("fp32",)) -> Path:
    """The test export (`make_tiny_export`'s) with weights of another `seed` or more precisions
    (INT8 calibrated on a few synthetic samples)."""
    import torch

    from conftest import WORDS, make_tiny_model
    from restr.export.pipeline import ExportOptions, Source, export_artifacts
    from restr.runtime import Vocabulary

    torch.set_num_threads(1)
    vocab = Vocabulary(WORDS)
    export_artifacts(
        Source(make_tiny_model(vocab, seed=seed), vocab, {}, None, False),
        folder,
        ExportOptions(
            max_batch=4,
            precisions=precisions,
            engine=False,
            verify=False,
            progress=False,
            threads=1,
            **({"calibration": "synthetic", "calibration_size": 8} if "int8" in precisions else {}),
        ),
        log=lambda _: None,
    )
    return folder


@pytest.mark.filterwarnings("ignore::restr.runtime.predictor.TextTruncatedWarning")
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_int8_graphs_match_the_python_predictor(build, tmp_path, precision):
    folder = _tiny_export(tmp_path / precision, precisions=("fp32", precision))
    rgb = np.asarray(photo(100, 60, seed=4))
    want = Predictor.from_artifacts(folder, precision=precision, threads=1, cache_size=0).predict_image(rgb, TEXTS)
    fp32 = Predictor.from_artifacts(folder, threads=1, cache_size=0).predict_image(rgb, TEXTS)
    assert any(np.abs(w.probs - f.probs).max() > 1e-6 for w, f in zip(want, fp32))  # the other graphs did run
    host = CppHost(build / "librestr_runtime.so", folder, threads=1, precision=precision)
    got, _ = host.predict(rgb, TEXTS)
    host.close()
    for g, w in zip(got, want):
        assert np.array_equal(g["mask"], w.mask) and np.abs(g["probs"] - w.probs).max() <= ATOL
        assert abs(g["score"] - w.score) <= ATOL
    image = tmp_path / "photo.png"
    Image.fromarray(rgb).save(image)
    r = _run(
        [
            str(build / "tools" / "restr-predict-cpp"),
            "--artifacts",
            str(folder),
            "--image",
            str(image),
            "--text",
            "the red dog",
            "--precision",
            precision,
            "--out",
            str(tmp_path / "out"),
            "--json",
            "-",
            "--threads",
            "1",
        ]
    )
    assert r.returncode == 0 and json.loads(r.stdout)["graphs"] == {
        g: f"{g}_{precision}" for g in ("vision", "language", "fusion_decoder")
    }, r.stderr


def test_library_refuses_an_embedding_from_another_export(build, tiny, tmp_path):
    """Two exports of one architecture with other weights: an image embedded by one and asked about
    with the other is refused in restr.runtime's words (it gave a wrong mask and RESTR_OK); a second
    predictor of the same export takes the embedding."""
    import ctypes

    from restr.runtime.predictor import EmbeddingError

    other = _tiny_export(tmp_path / "other", seed=1)
    rgb = np.ascontiguousarray(photo(80, 56, seed=1))
    h, w = rgb.shape[:2]
    ours, theirs, same = (CppHost(build / "librestr_runtime.so", folder, threads=1) for folder in (tiny, other, tiny))
    lib = ours.lib
    embeddings = []

    def ask(predictor: CppHost, by: CppHost) -> tuple[int, str]:
        """restr_predict on `predictor` with an image embedded by `by`: the status and last error."""
        emb, res = ctypes.c_void_p(), ctypes.c_void_p()
        by._ok(
            lib.restr_embed(
                by.p,
                rgb.ctypes.data_as(ctypes.c_void_p),
                ctypes.c_int64(h),
                ctypes.c_int64(w),
                ctypes.c_int64(3 * w),
                ctypes.byref(emb),
            )
        )
        embeddings.append(emb)
        status = lib.restr_predict(
            predictor.p, emb, (ctypes.c_char_p * 1)(b"the red dog"), ctypes.c_size_t(1), ctypes.c_float(-1), 0, ctypes.byref(res)
        )
        lib.restr_result_free(res)
        return status, lib.restr_last_error().decode() if status else ""

    try:
        refused, taken = ask(ours, by=theirs), ask(ours, by=same)
    finally:
        for emb in embeddings:
            lib.restr_embedding_free(emb)
        for host in (ours, theirs, same):
            host.close()
    with pytest.raises(EmbeddingError) as python:
        Predictor.from_artifacts(tiny, threads=1).predict_embedding(
            Predictor.from_artifacts(other, threads=1).embed(rgb), "the red dog"
        )
    sha = {f: json.loads((f / "manifest.json").read_text())["graphs"]["vision"]["sha256"][:12] for f in (tiny, other)}
    assert (
        refused
        == (
            1,
            f"this image embedding was made by another export (its vision graph has sha256 {sha[other]}..., "
            f"this predictor's {sha[tiny]}...): embed the image again with this predictor",
        )
        == (1, str(python.value))
    )
    assert taken == (0, "")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _restr_predict(args: list[str], out: Path, *more: str) -> subprocess.CompletedProcess:
    """The Python CLI, restr-predict, with `args`, writing to `out`."""
    return _run([sys.executable, "-m", "restr.runtime.cli", *args, "--out", str(out), *more])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _keys(obj):
    """The shape of a summary: its keys, recursively (values differ: timings, paths)."""
    if isinstance(obj, dict):
        return {k: _keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_keys(v) for v in obj]
    return None


def test_cli_writes_what_restr_predict_writes(build, tiny, tmp_path):
    image = tmp_path / "photo.png"
    photo(120, 90, seed=5).save(image)
    texts = [*TEXTS, "a—b İstanbul naïve 狗 x²"]  # slugs from the tokenizer's words, accents dropped (NFKD), no double dash
    # paths as users type them (a trailing slash, a '.'): both summaries name them as pathlib does
    args = [
        "--artifacts",
        f"{tiny}/",
        "--image",
        f"{image.parent}/./{image.name}",
        *[a for t in texts for a in ("--text", t)],
        "--overlay",
        "--sheet",
        "--threshold",
        "0.53",
    ]
    cpp = _run([str(build / "tools" / "restr-predict-cpp"), *args, "--out", str(tmp_path / "cpp"), "--threads", "1"])
    py = _restr_predict(args, tmp_path / "py")
    assert cpp.returncode == 0 and py.returncode == 0, (cpp.stderr, py.stderr)
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("cpp", "py"))
    assert _keys(a) == _keys(b)
    assert sorted(p.name for p in (tmp_path / "cpp").iterdir()) == sorted(p.name for p in (tmp_path / "py").iterdir())
    for x, y in zip(a["expressions"], b["expressions"]):
        for key in ("text", "mask", "overlay", "area", "area_fraction", "unknown_words", "no_known_words", "truncated"):
            assert x[key] == y[key], key
        assert abs(x["score"] - y["score"]) <= ATOL
        for f in (x["mask"], x["overlay"]):
            assert np.array_equal(np.asarray(Image.open(tmp_path / "cpp" / f)), np.asarray(Image.open(tmp_path / "py" / f))), f
    assert (a["model"], a["mode"], a["graphs"], a["image"]["width"], a["threshold"]) == (
        b["model"],
        b["mode"],
        b["graphs"],
        b["image"]["width"],
        b["threshold"],
    )
    assert (a["artifacts"], a["image"]["path"]) == (b["artifacts"], b["image"]["path"]) == (str(tiny), str(image))
    assert cpp.stderr == py.stderr  # the same warnings: truncation, unknown words, no known words
    # the same table, line for line (widths in code points, a long expression cut, 1,234 areas); not the timings
    table = {
        d: [
            line.replace(str(tmp_path / d), "OUT") for line in r.stdout.splitlines() if not line.startswith("timings (ms): load ")
        ]
        for d, r in (("cpp", cpp), ("py", py))
    }
    assert table["cpp"] == table["py"] and len(table["py"]) == len(texts) + 4, (cpp.stdout, py.stdout)
    assert a["expressions"][-1]["mask"] == "8_a-b-i-stanbul-naive-x2.png"
    assert a["sheet"] == b["sheet"] == "sheet.png"  # its layout is restr-predict's; the caption font is not
    assert Image.open(tmp_path / "cpp" / "sheet.png").size == Image.open(tmp_path / "py" / "sheet.png").size


@pytest.mark.parametrize("sig, out_exists", [(signal.SIGTERM, False), (signal.SIGHUP, True)])
def test_cli_ended_by_a_signal_leaves_nothing_half_written(build, tiny, tmp_path, sig, out_exists):
    """A signal while the outputs are being written (the staging folder holds a file): the CLI removes
    its staging folder, and --out if it made it, then dies of the signal."""
    image, out = tmp_path / "big.png", tmp_path / "out"
    photo(1600, 1200, seed=2).save(image, compress_level=1)
    if out_exists:
        out.mkdir()
    texts = [a for k in range(4) for a in ("--text", f"the red dog {k}")]
    run = subprocess.Popen(
        [
            str(build / "tools" / "restr-predict-cpp"),
            "--artifacts",
            str(tiny),
            "--image",
            str(image),
            *texts,
            "--overlay",
            "--sheet",
            "--out",
            str(out),
            "--threads",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def writing() -> bool:  # a staging folder holds a file
        try:
            return any(os.listdir(d) for d in out.glob(".restr-predict-cpp-*"))
        except OSError:
            return False

    while run.poll() is None and not writing():
        time.sleep(0.002)
    run.send_signal(sig)
    assert run.wait(timeout=60) == -sig, "the run ended before its outputs were written"
    assert (out.is_dir() and not any(out.iterdir())) if out_exists else not out.exists()


# Photo sizes for --sheet: the four where Debian's stb_image_resize 0.97 aborted the CLI (its weights
# for a pixel summed past 1.1), more of the reductions where it asserted (a sum past 1.1 or below 0.9),
# upscales, a side of one pixel, long thin photos and sizes it scaled without fault.
SHEET_SIZES = [
    (451, 300),
    (333, 500),
    (276, 376),
    (349, 441),
    (138, 482),
    (436, 482),
    (480, 223),
    (472, 334),
    (488, 38),
    (101, 371),
    (56, 445),
    (1, 1),
    (1, 700),
    (700, 1),
    (320, 320),
    (320, 240),
    (100, 60),
    (7, 3),
    (641, 479),
    (1000, 750),
    (1200, 37),
]


def test_sheet_of_any_photo_size_tiles_as_restr_predicts_does(build, tiny, tmp_path):
    """--sheet and --overlay on photos of every shape: exit 0, sheet.png has restr-predict's size and
    exactly its tiles (the overlay rule at the tile's size on the photo and the masks scaled as
    Pillow's BILINEAR resize, in Pillow's pass order: columns first where the height shrinks by more
    than twice as many pixels as the width), and the overlays are restr-predict's (the contour 2 to 4
    pixels wide). The threshold is each photo's median probability, so that masks have edges; the
    captions' font differs."""
    from restr.runtime.visualize import contact_sheet, overlay

    texts = ["the red dog", "the man on the left"]
    host = CppHost(build / "librestr_runtime.so", tiny, threads=1)
    for w, h in SHEET_SIZES:
        image, out = tmp_path / f"{w}x{h}.png", tmp_path / f"{w}x{h}"
        photo(w, h, seed=w + h).save(image)
        threshold = float(np.median(host.predict(np.asarray(Image.open(image)), texts[:1])[0][0]["probs"]))
        r = _run(
            [
                str(build / "tools" / "restr-predict-cpp"),
                "--artifacts",
                str(tiny),
                "--image",
                str(image),
                "--text",
                texts[0],
                "--text",
                texts[1],
                "--sheet",
                "--overlay",
                "--threshold",
                repr(threshold),
                "--out",
                str(out),
                "--threads",
                "1",
            ]
        )
        assert r.returncode == 0, (w, h, r.stderr)
        got = np.asarray(Image.open(out / "sheet.png").convert("RGB"))
        names = [f"{k}_{slug}" for k, slug in ((1, "the-red-dog"), (2, "the-man-on-the-left"))]
        masks = [np.asarray(Image.open(out / f"{name}.png")) > 0 for name in names]
        assert w * h == 1 or 0 < masks[0].sum() < w * h, (w, h)
        for name, mask in zip(names, masks):
            assert np.array_equal(np.asarray(Image.open(out / f"{name}_overlay.png")), np.asarray(overlay(image, mask))), (
                w,
                h,
                name,
            )
        want = np.asarray(contact_sheet(Image.open(image), masks, ["", ""]))
        assert got.shape == want.shape, (w, h)
        scale = 320 / max(w, h)
        tw, th = max(1, round(w * scale)), max(1, round(h * scale))
        for x in (8, 8 + tw + 8):
            tile = (slice(8, 8 + th), slice(x, x + tw))
            assert np.array_equal(got[tile], want[tile]), (w, h, x)
    host.close()


def _both_clis_same_pixels(build: Path, tiny: Path, image: Path, tmp_path: Path) -> dict:
    """Both CLIs on `image` with --overlay: exit 0 and identical mask and overlay PNGs (the overlay shows
    the decoded photo's own pixels outside the mask); the C++ summary."""
    args = ["--artifacts", str(tiny), "--image", str(image), "--text", "the red car", "--overlay"]
    cpp = _run([str(build / "tools" / "restr-predict-cpp"), *args, "--out", str(tmp_path / "cpp"), "--threads", "1"])
    py = _restr_predict(args, tmp_path / "py")
    assert cpp.returncode == 0 and py.returncode == 0, (cpp.stderr, py.stderr)
    for f in ("1_the-red-car.png", "1_the-red-car_overlay.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "cpp" / f)), np.asarray(Image.open(tmp_path / "py" / f))), f
    return json.loads((tmp_path / "cpp" / "summary.json").read_text())


def _decodes_as_pillow(build: Path, tiny: Path, image: Path, out: Path) -> np.ndarray:
    """restr-predict-cpp on `image` with --overlay: its overlay equals restr-predict's overlay function
    on restr-predict's decoding of the file (Pillow, EXIF orientation applied) and the C++ mask. Faster
    than a second CLI run, for tests of many files. Returns the mask."""
    from restr.runtime.visualize import overlay

    r = _run(
        [
            str(build / "tools" / "restr-predict-cpp"),
            "--artifacts",
            str(tiny),
            "--image",
            str(image),
            "--text",
            "the red car",
            "--overlay",
            "--out",
            str(out),
            "--threads",
            "1",
        ]
    )
    assert r.returncode == 0, (image.name, r.stderr)
    mask = np.asarray(Image.open(out / "1_the-red-car.png")) > 0
    assert np.array_equal(np.asarray(Image.open(out / "1_the-red-car_overlay.png")), np.asarray(overlay(image, mask))), image.name
    return mask


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_with_exif_orientation_decodes_as_pillow_does(build, tiny, tmp_path, orientation):
    """libjpeg-turbo's decoding and the EXIF orientation: the overlays (the photo's own pixels outside
    the mask) come out identical to restr-predict's."""
    image = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo(70, 50, seed=orientation).save(image, quality=90, exif=exif)
    size = _both_clis_same_pixels(build, tiny, image, tmp_path)["image"]
    assert (size["width"], size["height"]) == ((50, 70) if orientation >= 5 else (70, 50))


def test_damaged_jpeg_refused_or_read_as_pillow_does(build, tiny, tmp_path):
    """A JPEG cut short (half of it, or only its end marker) is refused as Pillow refuses it, in one line;
    libjpeg alone pads it with grey and went on. Stray bytes before a marker, which libjpeg and Pillow
    pass over, give restr-predict's pixels and no warning line."""
    image = tmp_path / "photo.jpg"
    photo(120, 90, seed=4).save(image, quality=90)
    data = image.read_bytes()
    cli = str(build / "tools" / "restr-predict-cpp")
    cut = data.index(b"\xff\xda")  # start of scan
    cases = {"half.jpg": data[: len(data) // 2], "no_end.jpg": data[:-2], "stray.jpg": data[:cut] + b"\x12\x34" + data[cut:]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        args = ["--artifacts", str(tiny), "--image", str(tmp_path / name), "--text", "the red car", "--overlay"]
        cpp = _run([cli, *args, "--out", str(tmp_path / f"cpp_{name}"), "--threads", "1"])
        py = _restr_predict(args, tmp_path / f"py_{name}")
        assert cpp.returncode == py.returncode == (0 if name == "stray.jpg" else 2), (name, cpp.stderr, py.stderr)
        if name == "stray.jpg":
            assert cpp.stderr == "" and py.stderr == ""
            f = "1_the-red-car_overlay.png"
            assert np.array_equal(
                np.asarray(Image.open(tmp_path / f"cpp_{name}" / f)), np.asarray(Image.open(tmp_path / f"py_{name}" / f))
            )
        else:
            assert (
                cpp.stderr == f"restr-predict-cpp: error: {tmp_path / name}: not a readable image (image file is truncated)\n"
            ), cpp.stderr
            assert "(image file is truncated (" in py.stderr


@pytest.mark.parametrize("orientation", [1, 6])
def test_cmyk_jpeg_decodes_as_pillow_does(build, tiny, tmp_path, orientation):
    """A CMYK JPEG (print workflows, stock photos): Pillow reads it in Adobe's inverted polarity and
    converts with its own rounding; the C++ CLI used to refuse it. Overlays identical to restr-predict's."""
    image = tmp_path / "print.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    ink = np.random.default_rng(orientation).integers(0, 256, (50, 70, 4), dtype=np.uint8)
    Image.fromarray(ink, "CMYK").save(image, quality=90, exif=exif)
    assert Image.open(image).mode == "CMYK"
    _both_clis_same_pixels(build, tiny, image, tmp_path)


@pytest.mark.parametrize("kind", ["png", "flat png"])
def test_16_bit_greyscale_decodes_as_restr_predict_does(build, tiny, tmp_path, kind):
    """16-bit greyscale is stretched onto 0..255 from its darkest to its brightest pixel, as
    restr.runtime.transforms.to_rgb does (stb alone keeps the high byte: a dark medical or depth image
    came out black)."""
    rng = np.random.default_rng(3)
    grey = np.full((40, 60), 1234, np.uint16) if kind == "flat png" else rng.integers(300, 2900, (40, 60)).astype(np.uint16)
    image = tmp_path / "scan.png"
    Image.fromarray(grey).save(image)
    assert Image.open(image).mode.startswith("I")  # really 16 bits a pixel
    _both_clis_same_pixels(build, tiny, image, tmp_path)


def _pnm(magic: str, maxval: int | None, samples: np.ndarray) -> bytes:
    """A PBM/PGM/PPM file: header with a comment, then plain (ASCII) or raw samples."""
    h, w = samples.shape[:2]
    head = f"{magic}\n# made by the tests\n{w} {h}\n" + ("" if maxval is None else f"{maxval}\n")
    if magic in ("P1", "P2", "P3"):
        return head.encode() + " ".join(map(str, samples.ravel())).encode() + b"\n"
    if magic == "P4":
        return head.encode() + np.packbits(samples.astype(np.uint8), axis=1).tobytes()
    return head.encode() + samples.astype(">u2" if maxval > 255 else "u1").tobytes()


# Pillow's cases: bitmaps; maxval 255 as is; other maxvals up to 255 scaled (6: halves, rounded to even);
# greyscale above 255 Pillow's mode I (65535 read raw), stretched by to_rgb; colour above 255 scaled to 255.
PNM_CASES = [
    ("P1", None),
    ("P4", None),
    ("P2", 6),
    ("P5", 6),
    ("P5", 100),
    ("P5", 1000),
    ("P5", 65535),
    ("P2", 1000),
    ("P3", 100),
    ("P6", 255),
    ("P6", 1000),
]


def test_pnm_decodes_as_restr_predict_does(build, tiny, tmp_path):
    """PBM, PGM and PPM, plain and raw, every maxval Pillow treats in its own way (libnetpbm reads them,
    the CLI scales them as Pillow): the C++ CLI's overlay is the Python overlay of restr-predict's
    decoding of the file (stb read 16-bit PGM in the wrong byte order, scaled no maxval, refused ASCII);
    a raw sample above its maxval clamped, as Pillow does (libnetpbm refuses it). A truncated raw
    raster, or a plain one holding more than numbers: one line, exit 2, as restr-predict."""
    rng = np.random.default_rng(5)
    cli = str(build / "tools" / "restr-predict-cpp")
    for magic, maxval in PNM_CASES + [("P5", "over")]:
        top = 1 if maxval is None else 100 if maxval == "over" else maxval
        shape = (30, 40, 3) if magic in ("P3", "P6") else (30, 40)
        image = tmp_path / f"{magic}_{maxval}.pnm"
        samples = rng.integers(0, top + 1, shape)
        if maxval == "over":
            samples[::3] = 200
        image.write_bytes(_pnm(magic, top if maxval == "over" else maxval, samples))
        _decodes_as_pillow(build, tiny, image, tmp_path / image.stem)
    bad = {
        "short.pgm": _pnm("P5", 255, np.zeros((4, 6)))[:-5],
        "junk.ppm": _pnm("P3", 255, np.zeros((4, 6, 3))).replace(b"0 0 0", b"0 0\x7f0", 1),
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        args = ["--artifacts", str(tiny), "--image", str(tmp_path / name), "--text", "the red car"]
        r = _run([cli, *args, "--out", str(tmp_path / "bad")])
        py = _restr_predict(args, tmp_path / "bad")
        assert (
            r.returncode == py.returncode == 2 and r.stderr.count("\n") == 1 and f"{name}: not a readable image (" in r.stderr
        ), (r.stderr, py.stderr)
        assert not (tmp_path / "bad").exists()


def test_webp_decodes_as_restr_predict_does(build, tiny, tmp_path):
    """WebP (lossy, lossless, with alpha, an EXIF orientation, an animation's first frame), read as
    Pillow reads it (libwebp's animation decoder): the C++ CLI's overlay is the Python overlay of
    restr-predict's decoding of the file. The C++ CLI used to refuse WebP. A damaged file: one line, exit 2."""
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
    rgba = np.dstack([rgb, (yy * 5).astype(np.uint8)])
    turned = Image.Exif()
    turned[0x0112] = 6
    cases = {
        "lossy.webp": (rgb, {"quality": 60}),
        "lossless.webp": (rgb, {"lossless": True}),
        "alpha.webp": (rgba, {}),
        "turned.webp": (rgb, {"exif": turned}),
        "animated.webp": (rgba, {"save_all": True, "append_images": [Image.fromarray(255 - rgb)]}),
    }
    cli = str(build / "tools" / "restr-predict-cpp")
    for name, (pixels, options) in cases.items():
        image = tmp_path / name
        Image.fromarray(pixels).save(image, **options)
        mask = _decodes_as_pillow(build, tiny, image, tmp_path / image.stem)
        assert mask.shape == ((64, 48) if name == "turned.webp" else (48, 64)), name
    damaged = tmp_path / "damaged.webp"
    damaged.write_bytes((tmp_path / "lossy.webp").read_bytes()[:40])
    r = _run([cli, "--artifacts", str(tiny), "--image", str(damaged), "--text", "the red car", "--out", str(tmp_path / "bad")])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "damaged.webp: not a readable image (" in r.stderr, r.stderr
    assert not (tmp_path / "bad").exists()


def _tiff_cases(folder: Path) -> dict[str, tuple[int, int]]:
    """TIFFs in the layouts Pillow reads its own way -> their (height, width) once turned: Pillow's
    compressions and modes, and (tifffile) what Pillow does not write: alpha stored premultiplied or
    unspecified, 16-bit RGB and CMYK, MinIsWhite, signed and float samples in either byte order,
    separate planes, tiles, short strips, a 16-bit colour map, a second page, BigTIFF."""
    import tifffile

    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
    alpha = ((xx * 7 + yy * 3) % 256).astype(np.uint8)
    rgba = np.dstack([rgb, alpha])
    grey = rgb[..., 1]
    im = Image.fromarray(rgb)
    for compression in ("raw", "tiff_lzw", "tiff_adobe_deflate", "packbits", "jpeg"):  # jpeg: YCbCr, libtiff's RGB
        im.save(folder / f"rgb_{compression}.tif", compression=compression)
    im.convert("1").save(folder / "bits_group4.tif", compression="group4")
    for mode, pixels in {
        "L": grey,
        "LA": np.dstack([grey, alpha]),
        "RGBA": rgba,
        "P": None,
        "CMYK": None,
        "I;16": grey.astype(np.uint16) * 250 + 9,
        "I": None,
        "F": None,
    }.items():
        (im.convert(mode) if pixels is None else Image.fromarray(pixels, mode if mode != "I;16" else None)).save(
            folder / f"pil_{mode.replace(';', '')}.tif", compression="tiff_lzw"
        )
    turned = Image.Exif()
    turned[0x0112] = 6
    im.save(folder / "turned_tag.tif", exif=turned)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>'
    premultiplied = np.dstack([(rgb.astype(np.uint32) * alpha[..., None] // 255).astype(np.uint8), alpha])
    write = {
        "rgba_straight": (rgba, {"extrasamples": ["unassalpha"]}),
        "rgba_premultiplied": (premultiplied, {"extrasamples": ["assocalpha"]}),
        "rgbx": (rgba, {"extrasamples": ["unspecified"]}),
        "rgb16": (rgb.astype(np.uint16) * 257 + yy[..., None].astype(np.uint16), {}),
        "rgb16_big": (rgb.astype(np.uint16) * 257 + xx[..., None].astype(np.uint16), {"byteorder": ">"}),
        "rgba16_premultiplied": (premultiplied.astype(np.uint16) * 257, {"extrasamples": ["assocalpha"]}),
        "planes": (np.moveaxis(rgba, 2, 0).copy(), {"planarconfig": "separate", "extrasamples": ["unassalpha"]}),
        "tiles": (rgb, {"tile": (16, 32), "compression": "zlib"}),
        "tiled_planes": (np.moveaxis(rgb, 2, 0).copy(), {"planarconfig": "separate", "tile": (32, 16)}),
        "strips_of_5": (rgb, {"rowsperstrip": 5}),
        "white": (grey, {"photometric": "miniswhite"}),
        "white_bits": (grey > 100, {"photometric": "miniswhite"}),
        "white16": (grey.astype(np.uint16) * 200, {"photometric": "miniswhite"}),
        "signed8": (grey.astype(np.int8), {"photometric": "minisblack"}),
        "signed16_big": (grey.astype(np.int16) * 100 - 9000, {"photometric": "minisblack", "byteorder": ">"}),
        "unsigned32": (grey.astype(np.uint32) * 16_000_000, {"photometric": "minisblack"}),
        "float_big": (grey.astype(np.float32) / 7, {"photometric": "minisblack", "byteorder": ">"}),
        "grey_x": (np.dstack([grey, alpha]), {"photometric": "minisblack", "extrasamples": ["unspecified"]}),
        "cmyk16": (np.dstack([rgb, alpha]).astype(np.uint16) * 257, {"photometric": "separated"}),
        "cmyk_x": (np.dstack([rgba, grey]), {"photometric": "separated", "extrasamples": ["unspecified"]}),
        "colour_map": (
            grey,
            {"photometric": "palette", "colormap": (np.arange(768).reshape(3, 256) * 85 % 65536).astype(np.uint16)},
        ),
        "turned_xmp": (rgb, {"extratags": [(700, 1, len(xmp), xmp, False)]}),
        "turned_big": (rgb, {"extratags": [(274, 3, 1, 3, False)], "byteorder": ">"}),
        "two_pages": (np.stack([rgb, 255 - rgb]), {}),
        "big_tiff": (rgb, {"bigtiff": True}),
        "float_nan": (np.where(xx == 5, np.nan, grey).astype(np.float32), {"photometric": "minisblack"}),  # all black
        "turned_long": (rgb, {"extratags": [(274, 4, 1, 6, False)]}),  # the tag's type as Pillow reads it, not libtiff
        "turned_rational": (rgb, {"extratags": [(274, 5, 1, (6, 1), False)]}),
        "unknown_orientation_and_xmp": (rgb, {"extratags": [(274, 3, 1, 9, False), (700, 1, len(xmp), xmp, False)]}),
    }
    for name, (pixels, options) in write.items():
        options.setdefault("photometric", "rgb")
        tifffile.imwrite(folder / f"{name}.tif", pixels, **options)
    turned = ("turned_tag", "turned_xmp", "turned_long", "turned_rational")
    return {f.name: ((64, 48) if f.stem in turned else (48, 64)) for f in folder.glob("*.tif")}


def _tiff_by_hand(tags: dict[int, tuple[int, list]], blocks: list[bytes], offsets: int, counts: int) -> bytes:
    """A little-endian TIFF written entry by entry, for layouts tifffile refuses to write: `tags` maps a
    tag to (type: 3 SHORT or 4 LONG, values); `blocks` (strips or tiles) come first, their offsets and
    sizes go in tags `offsets` and `counts`."""
    tags = {
        **tags,
        offsets: (4, [8 + sum(map(len, blocks[:i])) for i in range(len(blocks))]),
        counts: (4, [len(b) for b in blocks]),
    }
    body = b"".join(blocks) + b"\0" * (sum(map(len, blocks)) % 2)
    ifd_at = 8 + len(body)
    spill_at, spill, entries = ifd_at + 2 + 12 * len(tags) + 4, b"", b""
    for tag, (kind, values) in sorted(tags.items()):
        raw = struct.pack(f"<{len(values)}{'H' if kind == 3 else 'I'}", *values)
        if len(raw) > 4:
            raw, spill = struct.pack("<I", spill_at + len(spill)), spill + raw
        entries += struct.pack("<HHI", tag, kind, len(values)) + raw.ljust(4, b"\0")
    return b"II*\0" + struct.pack("<I", ifd_at) + body + struct.pack("<H", len(tags)) + entries + b"\0" * 4 + spill


def test_tiff_decodes_as_restr_predict_does(build, tiny, tmp_path):
    """TIFF through libtiff, in every layout of _tiff_cases: the C++ CLI's overlay is the Python overlay
    of restr-predict's decoding of the file (the C++ CLI used to refuse TIFF). A layout Pillow cannot
    convert (grey with premultiplied alpha) and a file cut short: refused by both in one line."""
    import tifffile

    (tmp_path / "tiff").mkdir()
    cases = _tiff_cases(tmp_path / "tiff")
    assert len(cases) >= 35
    for name, shape in sorted(cases.items()):
        assert _decodes_as_pillow(build, tiny, tmp_path / "tiff" / name, tmp_path / name).shape == shape, name
    # By hand: 1- and 2-bit samples in tiles whose width is no multiple of 8 pixels (their bits start
    # mid-byte), and strips the file lacks (Pillow leaves them black; libtiff hands zero offsets)
    rng = np.random.default_rng(5)
    hand = {}
    for bits, tw in ((1, 3), (2, 12)):
        v = rng.integers(0, 2**bits, (6, 13))
        tiles = []
        for y in range(0, 6, 4):
            for x in range(0, 13, tw):
                t = np.zeros((4, tw), int)
                part = v[y : y + 4, x : x + tw]
                t[: part.shape[0], : part.shape[1]] = part
                tiles.append(
                    b"".join(np.packbits(np.unpackbits(r.astype(np.uint8)[:, None], axis=1)[:, 8 - bits :]).tobytes() for r in t)
                )
        hand[f"tiles_{bits}bit.tif"] = _tiff_by_hand(
            {256: (4, [13]), 257: (4, [6]), 258: (3, [bits]), 262: (3, [1]), 322: (4, [tw]), 323: (4, [4])},
            tiles,
            offsets=324,
            counts=325,
        )
    hand["missing_strips.tif"] = _tiff_by_hand(
        {256: (4, [16]), 257: (4, [8]), 258: (3, [8]), 262: (3, [1]), 278: (4, [2])},
        [bytes(range(40, 72))],
        offsets=273,
        counts=279,
    )  # 1 strip of the 4
    for name, data in hand.items():
        (tmp_path / name).write_bytes(data)
        _decodes_as_pillow(build, tiny, tmp_path / name, tmp_path / f"out_{name}")
    yy, xx = np.mgrid[0:48, 0:64]
    tifffile.imwrite(
        tmp_path / "grey_premultiplied.tif",
        np.dstack([xx, yy]).astype(np.uint8),
        photometric="minisblack",
        extrasamples=["assocalpha"],
    )
    (tmp_path / "cut.tif").write_bytes((tmp_path / "tiff" / "rgb_raw.tif").read_bytes()[:4000])
    cli = str(build / "tools" / "restr-predict-cpp")
    for name in ("grey_premultiplied.tif", "cut.tif"):
        args = ["--artifacts", str(tiny), "--image", str(tmp_path / name), "--text", "the red car"]
        cpp = _run([cli, *args, "--out", str(tmp_path / "cpp")])
        py = _restr_predict(args, tmp_path / "py")
        assert cpp.returncode == py.returncode == 2, (name, cpp.stderr, py.stderr)
        assert cpp.stderr.count("\n") == 1 and f"{name}: not a readable image (" in cpp.stderr, cpp.stderr


def _bmp(rgba: np.ndarray, bits: int, compression: int, masks: tuple[int, ...] = (), header: int = 40) -> bytes:
    """A bottom-up BMP written field by field (Pillow writes neither 16-bit nor bit-field files)."""
    h, w = rgba.shape[:2]
    if bits == 32:
        pixels = rgba[::-1][..., [2, 1, 0, 3]].tobytes()
    else:  # 16: each channel's high bits into the mask's place (5-5-5 without masks)
        place = masks or (0x7C00, 0x3E0, 0x1F)
        v = sum(
            (rgba[..., c].astype(np.uint32) >> (8 - bin(m).count("1"))) << (m & -m).bit_length() - 1 for c, m in enumerate(place)
        )
        pixels = v[::-1].astype("<u2").tobytes()
    info = struct.pack("<IiiHHIIiiII", header, w, h, 1, bits, compression, len(pixels), 2835, 2835, 0, 0)
    info += struct.pack(f"<{len(masks)}I", *masks) + bytes(max(0, header - 40 - 4 * len(masks)))
    offset = 14 + len(info)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + pixels


def _short_palette_bmp() -> bytes:
    """An 8-bit BMP with a 4-colour palette whose pixels also use indices 4..9 (past its end)."""
    h, w = 20, 32
    indices = (np.arange(h * w).reshape(h, w) % 10).astype(np.uint8)
    palette = bytes([0, 0, 255, 0, 0, 255, 0, 0, 255, 0, 0, 0, 90, 90, 90, 0])
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 0, h * w, 2835, 2835, 4, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + h * w, 0, 0, offset) + info + palette + indices[::-1].tobytes()


def _interlaced_png(rgb: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG (Pillow writes none): each pass's rows, filter 0."""
    h, w = rgb.shape[:2]
    raw = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = rgb[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.tobytes() for row in sub)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1))
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def test_bmp_gif_tga_and_png_modes_decode_as_restr_predict_does(build, tiny, tmp_path):
    """stb_image's formats in the modes where it could part from Pillow: a 32-bit BMP's reserved byte
    (Pillow ignores it, stb took it for alpha), 16-bit BMPs (Pillow truncates v * 255 / 31, stb repeats
    bits), bit fields with alpha, palettes with transparency, RLE TGA, PNG grey+alpha, 1-bit and
    Adam7-interlaced (its zlib stream checked to its last row, as Pillow reads it), a BMP palette
    shorter than its indices (black past its end to Pillow; stb read entries it never wrote). The C++
    CLI's overlay is the Python overlay of restr-predict's decoding of each file."""
    yy, xx = np.mgrid[0:48, 0:64]
    rgba = np.dstack([xx * 4, yy * 5, (xx + yy) * 2, yy * 5]).astype(np.uint8)
    im = Image.fromarray(rgba[..., :3])
    files = {
        "reserved.bmp": _bmp(rgba, 32, 0),
        "reserved_v5.bmp": _bmp(rgba, 32, 0, header=124),
        "alpha.bmp": _bmp(rgba, 32, 3, (0xFF0000, 0xFF00, 0xFF, 0xFF000000), header=108),
        "555.bmp": _bmp(rgba, 16, 0),
        "565.bmp": _bmp(rgba, 16, 3, (0xF800, 0x7E0, 0x1F)),
        "interlaced.png": _interlaced_png(rgba[:45, :61, :3].copy()),
        "short_palette.bmp": _short_palette_bmp(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    im.convert("P").save(tmp_path / "palette.bmp")
    im.convert("P").save(tmp_path / "clear.gif", transparency=3)
    im.save(tmp_path / "rle.tga", compression="tga_rle")
    Image.fromarray(rgba).save(tmp_path / "alpha.tga")
    im.convert("LA").save(tmp_path / "grey_alpha.png")
    im.convert("P").save(tmp_path / "clear.png", transparency=5)
    im.convert("1").save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "reserved.bmp").mode == "RGB" and Image.open(tmp_path / "alpha.bmp").mode == "RGBA"
    for image in sorted(p for p in tmp_path.iterdir() if p.is_file()):
        _decodes_as_pillow(build, tiny, image, tmp_path / f"out_{image.name}")


def test_damaged_files_refused_as_restr_predict_does(build, tiny, tmp_path):
    """Damaged files that stb_image or libnetpbm read and Pillow refuses, refused by the C++ CLI too, in
    one line with Pillow's words: BMP, TGA and GIF cut short (stb read zeros past the end), BMP bit
    fields outside Pillow's layouts or a palette of over 256 colours, a PNG chunk with a wrong CRC or a broken zlib stream (stb checks
    neither), junk in a PNM header. Found by running both CLIs on randomly damaged files."""
    yy, xx = np.mgrid[0:48, 0:64]
    rgba = np.dstack([xx * 4, yy * 5, (xx + yy) * 2, yy * 5]).astype(np.uint8)
    im = Image.fromarray(rgba[..., :3])
    whole = {"rgb.bmp": None, "555.bmp": _bmp(rgba, 16, 0), "rgb.tga": None, "rle.tga": None, "clear.gif": None}
    im.save(tmp_path / "rgb.bmp")
    im.save(tmp_path / "rgb.tga")
    im.save(tmp_path / "rle.tga", compression="tga_rle")
    im.convert("P").save(tmp_path / "clear.gif", transparency=3)
    im.save(tmp_path / "rgb.png")
    png = (tmp_path / "rgb.png").read_bytes()
    idat = png.index(b"IDAT") + 4
    im.convert("P").save(tmp_path / "palette.bmp")
    palette_bmp = (tmp_path / "palette.bmp").read_bytes()
    files = {
        "odd_fields.bmp": _bmp(rgba, 32, 3, (0x3FF00000, 0xFFC00, 0x3FF, 0), header=108),
        "many_colours.bmp": palette_bmp[:46] + struct.pack("<I", 300) + palette_bmp[50:],
        "bad_crc.png": png[:20] + bytes([png[20] ^ 1]) + png[21:],  # IHDR's width, its CRC unchanged
        "bad_data.png": png[: idat + 40] + bytes([png[idat + 40] ^ 0x55]) + png[idat + 41 :],  # stb checks no zlib stream
        "junk_header.ppm": b"P6\n64 4\x8a8\n255\n" + bytes(64 * 48 * 3),
    }
    for name, data in whole.items():
        data = data or (tmp_path / name).read_bytes()
        for share in (0.5, 0.97):
            files[f"cut{int(share * 100)}_{name}"] = data[: int(len(data) * share)]
    cli = str(build / "tools" / "restr-predict-cpp")
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        args = ["--artifacts", str(tiny), "--image", str(tmp_path / name), "--text", "the red car"]
        cpp = _run([cli, *args, "--out", str(tmp_path / "cpp")])
        py = _restr_predict(args, tmp_path / "py")
        assert cpp.returncode == py.returncode == 2, (name, cpp.stderr, py.stderr)
        assert cpp.stderr.count("\n") == 1 and not (tmp_path / "cpp").exists(), cpp.stderr
        words = {
            "odd_fields.bmp": "Unsupported BMP bitfields layout",
            "many_colours.bmp": "invalid palette size",
            "bad_crc.png": "broken PNG file (bad header checksum in b'IHDR')",
            "bad_data.png": "broken data stream when reading image file",
        }.get(name, "image file is truncated")
        if name == "junk_header.ppm":  # Python's int() refuses the token; libnetpbm read "4" and went on
            assert (
                "(a PNM header holds something other than decimal numbers)" in cpp.stderr
                and "invalid literal for int()" in py.stderr
            )
        elif name == "bad_crc.png":  # Pillow's checksum error becomes "cannot identify image file" in Image.open
            assert f"({words})" in cpp.stderr and "(cannot identify image file " in py.stderr
        else:
            assert f"{name}: not a readable image ({words}" in cpp.stderr and f"({words}" in py.stderr, (
                name,
                cpp.stderr,
                py.stderr,
            )


def _os2_bmp(indices: np.ndarray, bits: int, palette: list[tuple[int, int, int]]) -> bytes:
    """An OS/2 (12-byte header) palette BMP: 3-byte BGR entries, rows bottom-up, padded to 4 bytes."""
    h, w = indices.shape
    rows = np.packbits(indices.astype(np.uint8)[::-1], axis=1) if bits == 1 else indices.astype(np.uint8)[::-1]
    stride = (w * bits + 31) // 32 * 4
    pixels = b"".join(r.tobytes().ljust(stride, b"\0") for r in rows)
    pal = b"".join(bytes([b, g, r]) for r, g, b in palette)
    offset = 14 + 12 + len(pal)
    return (
        b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + struct.pack("<IHHHH", 12, w, h, 1, bits) + pal + pixels
    )


def test_edge_files_read_or_refused_as_restr_predict_does(build, tiny, tmp_path):
    """Files at the edges a review and the differential fuzz found, each read (same pixels) or refused
    (exit 2) by both CLIs: a JPEG without its end marker (Pillow stops at the last row), plain PNM
    without a final newline or with junk after its last number, OS/2 and grey-ramp BMP palettes
    (stb read entries it never wrote), a BMP without its last row's padding, a GIF without its data
    terminator, a right-to-left TGA, a TGA run past the last pixel, XMP orientation in JPEG, PNG and
    WebP, and a 68-byte PNG claiming 2^31 rows (refused before anything is allocated)."""
    from PIL import PngImagePlugin

    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
    im = Image.fromarray(rgb)
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    files = {}
    im.save(tmp_path / "g.jpg", quality=90)
    files["no_end.jpg"] = (tmp_path / "g.jpg").read_bytes()[:-2], 0
    files["no_newline.pgm"] = b"P2\n4 2\n255\n1 2 3 4 5 6 7 8", 0
    files["junk_after.ppm"] = b"P3\n2 1\n255\n10 20 30 40 50 60\nJUNK\n", 0
    indices = (np.arange(48 * 64).reshape(48, 64) % 7).astype(np.uint8)
    files["os2_8.bmp"] = _os2_bmp(indices, 8, [(40 * i, 255 - 30 * i, 90) for i in range(7)]), 0
    files["os2_1.bmp"] = _os2_bmp(indices % 2, 1, [(10, 20, 30), (200, 210, 220)]), 0
    grey = _short_palette_bmp()
    files["grey_ramp.bmp"] = grey[:54] + bytes(v for i in range(4) for v in (i, i, i, 0)) + grey[70:], 0
    im.crop((0, 0, 63, 48)).save(tmp_path / "w63.bmp")
    files["no_padding.bmp"] = (tmp_path / "w63.bmp").read_bytes()[:-3], 0
    im.convert("P").save(tmp_path / "g.gif")
    files["no_terminator.gif"] = (tmp_path / "g.gif").read_bytes()[:-2], 0
    im.save(tmp_path / "g.tga")
    tga = bytearray((tmp_path / "g.tga").read_bytes())
    tga[17] |= 0x10
    files["right_to_left.tga"] = bytes(tga), 0
    files["overrun.tga"] = bytes([0, 0, 10]) + bytes(9) + struct.pack("<HHBB", 2, 1, 24, 0) + bytes([0x82, 9, 8, 7]), 2
    im.save(tmp_path / "x.jpg", xmp=xmp)
    files["xmp.jpg"] = (tmp_path / "x.jpg").read_bytes(), 0
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    im.save(tmp_path / "x.png", pnginfo=info)
    files["xmp.png"] = (tmp_path / "x.png").read_bytes(), 0
    im.save(tmp_path / "x.webp", xmp=xmp)
    files["xmp.webp"] = (tmp_path / "x.webp").read_bytes(), 0
    ihdr = struct.pack(">IIBBBBB", 1, 2**31, 1, 0, 0, 0, 0)
    files["huge.png"] = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0\0" * 4))
        + _png_chunk(b"IEND", b""),
        2,
    )
    cli = str(build / "tools" / "restr-predict-cpp")
    for name, (data, code) in files.items():
        image = tmp_path / name
        image.write_bytes(data)
        args = ["--artifacts", str(tiny), "--image", str(image), "--text", "the red car", "--overlay"]
        cpp = _run(["prlimit", "--as=3000000000", cli, *args, "--out", str(tmp_path / f"cpp_{name}"), "--threads", "1"])
        py = _restr_predict(args, tmp_path / f"py_{name}")
        assert cpp.returncode == py.returncode == code, (name, cpp.stderr, py.stderr)
        if code == 0:
            f = "1_the-red-car_overlay.png"
            a, b = (np.asarray(Image.open(tmp_path / f"{d}_{name}" / f)) for d in ("cpp", "py"))
            assert a.shape == b.shape and np.array_equal(a, b), name
            if name.startswith("xmp"):
                assert a.shape[:2] == (64, 48), name  # turned by the XMP orientation
        else:
            assert cpp.stderr.count("\n") == 1, cpp.stderr


def _chunk_after_image_data(png: bytes, kind: bytes) -> bytes:
    """The PNG with its `kind` chunk moved after the image data (just before IEND)."""
    chunks, at = [], 8
    while at < len(png):
        n = struct.unpack(">I", png[at : at + 4])[0]
        chunks.append(png[at : at + 12 + n])
        at += 12 + n
    moved = [c for c in chunks if c[4:8] == kind]
    rest = [c for c in chunks if c[4:8] != kind]
    return png[:8] + b"".join(rest[:-1] + moved + rest[-1:])


def test_png_read_as_far_as_pillow_reads(build, tiny, tmp_path):
    """Pillow reads a PNG up to its image data's last row: a file cut right after the image data (no
    checksum, no IEND) or with a damaged chunk after it is read, by both CLIs (stb refused both); a
    zlib stream with garbage where Pillow still reads is refused by both, in Pillow's words (stb
    checked no stream). Found by the differential fuzz (runtime/cpp/scripts/fuzz-decoders.py)."""
    from restr.runtime.visualize import overlay

    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "whole.png")
    png = (tmp_path / "whole.png").read_bytes()
    iend = png.rindex(b"IEND")
    raw = b"".join(b"\0" + row.tobytes() for row in rgb)
    z = zlib.compressobj()
    garbage = (
        png[:33] + _png_chunk(b"IDAT", z.compress(raw) + z.flush(zlib.Z_FULL_FLUSH) + b"\xff" * 6) + _png_chunk(b"IEND", b"")
    )
    cases = {
        "cut.png": (png[: iend - 8], 0),
        "odd_end.png": (png[:iend] + b"IEN\x8d" + png[iend + 4 :], 0),
        "garbage.png": (garbage, 2),
    }
    cli = str(build / "tools" / "restr-predict-cpp")
    for name, (data, code) in cases.items():
        image, out = tmp_path / name, tmp_path / f"out_{name}"
        image.write_bytes(data)
        args = ["--artifacts", str(tiny), "--image", str(image), "--text", "the red car"]
        r = _run([cli, *args, "--overlay", "--out", str(out), "--threads", "1"])
        py = _restr_predict(args, tmp_path / f"py_{name}")
        assert r.returncode == py.returncode == code, (name, r.stderr, py.stderr)
        if code == 0:
            assert np.array_equal(
                np.asarray(Image.open(out / "1_the-red-car_overlay.png")),
                np.asarray(overlay(image, np.asarray(Image.open(out / "1_the-red-car.png")) > 0)),
            ), name
        else:
            assert r.stderr.endswith("(broken data stream when reading image file)\n") and "(broken data stream" in py.stderr, (
                r.stderr
            )


def test_png_exif_orientation_applied_as_restr_predict_does(build, tiny, tmp_path):
    """A PNG's eXIf chunk turns the image as Pillow's exif_transpose does, before or after the image
    data and on the 16-bit path too (the C++ CLI read EXIF from JPEG only)."""
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "turned.png", exif=exif)
    (tmp_path / "late.png").write_bytes(_chunk_after_image_data((tmp_path / "turned.png").read_bytes(), b"eXIf"))
    exif[0x0112] = 8
    Image.fromarray((xx * 700 + yy * 90).astype(np.uint16)).save(tmp_path / "deep.png", exif=exif)
    for name in ("turned.png", "late.png", "deep.png"):
        assert _decodes_as_pillow(build, tiny, tmp_path / name, tmp_path / f"out_{name}").shape == (64, 48), name


def _huge_png(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims w x h pixels (the pixels are never read)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(bytes(data))


def _tampered(tiny: Path, tmp: Path) -> Path:
    d = tmp / "tampered"
    shutil.copytree(tiny, d)
    with open(d / "vision.onnx", "ab") as f:
        f.write(b"x")
    return d


def _invalid(tiny: Path, tmp: Path) -> Path:
    d = tmp / "invalid"
    shutil.copytree(tiny, d)
    m = json.loads((d / "manifest.json").read_text())
    m["num_patches"] = 99
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def _corrupt(tiny: Path, tmp: Path) -> Path:
    d = tmp / "corrupt"
    shutil.copytree(tiny, d)
    (d / "language.onnx").write_bytes(b"not a graph")
    m = json.loads((d / "manifest.json").read_text())
    import hashlib

    m["graphs"]["language"]["sha256"] = hashlib.sha256(b"not a graph").hexdigest()
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def _resized(tiny: Path, tmp: Path) -> Path:
    """The manifest edited to another image size, consistent with itself; the graphs (and their
    checksums) untouched, so their own shapes disagree with it."""
    d = tmp / "resized"
    shutil.copytree(tiny, d)
    m = json.loads((d / "manifest.json").read_text())
    s0, n0, p = m["image_size"], m["num_patches"], m["patch_size"]
    s1 = s0 + p
    n1 = (s1 // p) ** 2
    m["image_size"], m["num_patches"] = s1, n1
    for g in m["graphs"].values():
        for t in g["inputs"] + g["outputs"]:
            t["shape"] = [s1 if x == s0 else n1 if x == n0 else x for x in t["shape"]]
    (d / "manifest.json").write_text(json.dumps(m))
    return d


@pytest.mark.parametrize(
    "case",
    [
        "missing folder",
        "missing folder, trailing slash",
        "tampered graph",
        "tampered vocabulary",
        "corrupt graph",
        "invalid manifest",
        "resized manifest",
        "empty text",
        "quoted empty text",
        "huge image",
        "huge webp",
        "huge pgm",
        "missing image",
    ],
)
def test_bad_input_is_one_line_and_exit_2_as_in_python(build, tiny, tmp_path, case):
    image = tmp_path / "photo.png"
    photo(64, 48).save(image)
    folder, text = tiny, "the dog"
    if case == "missing folder":
        folder = tmp_path / "nowhere"
    elif case == "missing folder, trailing slash":
        folder = f"{tmp_path}/nowhere/"
    elif case == "tampered graph":
        folder = _tampered(tiny, tmp_path)
    elif case == "tampered vocabulary":
        folder = tmp_path / "vocab"
        shutil.copytree(tiny, folder)
        with open(folder / "vocab.txt", "a") as f:
            f.write("zebra\n")
    elif case == "corrupt graph":
        folder = _corrupt(tiny, tmp_path)
    elif case == "invalid manifest":
        folder = _invalid(tiny, tmp_path)
    elif case == "resized manifest":
        folder = _resized(tiny, tmp_path)
    elif case == "empty text":
        text = " ?! "
    elif case == "quoted empty text":  # repr's quotes and escapes, as Python writes them
        text = " '?'\t! "
    elif case == "huge image":
        _huge_png(image, 9000, 9000)
    elif case == "huge webp":  # an animation's canvas, larger than its frames (the C++ CLI checks it before allocating it)
        image = tmp_path / "photo.webp"
        photo(64, 48).save(image, save_all=True, append_images=[photo(64, 48, seed=1)])
        data = bytearray(image.read_bytes())
        assert data[12:16] == b"VP8X"
        data[24:30] = (8100 - 1).to_bytes(3, "little") + (8000 - 1).to_bytes(3, "little")
        image.write_bytes(bytes(data))
    elif case == "huge pgm":
        image = tmp_path / "photo.pgm"
        image.write_bytes(b"P5\n9000 9000\n255\n" + bytes(64))
    else:
        image = tmp_path / "nothing.png"
    args = ["--artifacts", str(folder), "--image", str(image), "--text", text]
    cpp = _run([str(build / "tools" / "restr-predict-cpp"), *args, "--out", str(tmp_path / "cpp")])
    py = _restr_predict(args, tmp_path / "py")
    assert (cpp.returncode, py.returncode) == (2, 2)
    assert len(cpp.stderr.splitlines()) == 1, cpp.stderr
    cpp_msg = cpp.stderr.strip().removeprefix("restr-predict-cpp: error: ")
    py_msg = py.stderr.strip().removeprefix("restr-predict: error: ")
    if case == "corrupt graph":  # ONNX Runtime's own words follow; the sentence before them is the same
        cpp_msg, py_msg = cpp_msg.split(" (")[0], py_msg.split(" (")[0]
    assert cpp_msg == py_msg
    assert not (tmp_path / "cpp").exists()


def test_slips_read_as_restr_predict_words_them(build, tiny, tmp_path):
    """A URL for --image, an --out or --json on /proc, a misspelt option: the same line from both CLIs,
    exit code 2, nothing written. The C++ CLI said "https://example.com/dog.jpg: no such file",
    "filesystem error: cannot create directories: No such file or directory [/proc/forbidden]" and
    "No such option: --overlya", with no suggestion."""
    image = tmp_path / "photo.png"
    photo(64, 48).save(image)
    out = tmp_path / "out"
    base = ["--artifacts", str(tiny), "--text", "the dog"]
    cases = {
        "url": ["--image", "https://example.com/dog.jpg", "--out", str(out)],
        "proc": ["--image", str(image), "--out", "/proc/forbidden"],
        "json": ["--image", str(image), "--out", str(out), "--json", "/proc/forbidden.json"],
    }
    for option in ("--overlya", "--forc", "--zzz"):  # click's suggestions: two, one, none
        cases[option] = ["--image", str(image), "--out", str(out), option]
    lines = {}
    for name, args in cases.items():
        cpp = _run([str(build / "tools" / "restr-predict-cpp"), *base, *args])
        py = _run([sys.executable, "-m", "restr.runtime.cli", *base, *args])
        assert (cpp.returncode, py.returncode) == (2, 2) and not out.exists(), (name, cpp.stderr, py.stderr)
        assert cpp.stderr.replace("restr-predict-cpp: ", "restr-predict: ", 1) == py.stderr and cpp.stderr.count("\n") == 1, (
            name,
            cpp.stderr,
            py.stderr,
        )
        lines[name] = cpp.stderr.strip().removeprefix("restr-predict-cpp: error: ")
    assert (
        lines["url"]
        == "--image https://example.com/dog.jpg: looks like a URL; restr-predict reads local files only (download it first)"
    )
    assert lines["proc"] == "--out /proc/forbidden: cannot write in /proc (the file system there takes no new files)"
    assert lines["--overlya"] == "No such option '--overlya'. (did you mean one of: '--overlay', '--providers'?) (see --help)"
    assert lines["--forc"] == "No such option '--forc'; did you mean '--force'? (see --help)"


def test_warnings_quote_expressions_as_restr_predict_does(build, tiny, tmp_path):
    """The no-known-words warning quotes the expression as Python's repr: double quotes around one
    holding an apostrophe, escapes for a tab."""
    image = tmp_path / "photo.png"
    photo(64, 48).save(image)
    args = [
        "--artifacts",
        str(tiny),
        "--image",
        str(image),
        "--text",
        "qux's zebra",
        "--text",
        'a "blorp"\tthing',
        "--text",
        "the dog",
    ]
    cpp = _run([str(build / "tools" / "restr-predict-cpp"), *args, "--out", str(tmp_path / "cpp"), "--threads", "1"])
    py = _restr_predict(args, tmp_path / "py")
    assert cpp.returncode == 0 and py.returncode == 0, (cpp.stderr, py.stderr)
    assert '("qux\'s zebra")' in py.stderr
    assert cpp.stderr == py.stderr


@pytest.mark.parametrize("apart", [False, True])
def test_overhead_benchmark_runs_and_accounts_every_millisecond(build, tiny, apart):
    """Interleaved in one process (the CPU's way) and with the C++ host in a process of its own (CUDA's)."""
    import onnxruntime

    from restr.benchmarks.cpp_overhead import run

    res = run(str(tiny), str(build / "librestr_runtime.so"), threads=1, rounds=2, queries=5, apart=apart)
    assert res["cpp_total_ms"]["n"] == res["python_total_ms"]["n"] == 2 and res["interleaved"] is not apart
    assert Path(res["onnxruntime"]["library"]).parent == Path(onnxruntime.__file__).parent / "capi"  # the Python runtime's build
    assert res["parity"]["masks_identical"] and res["parity"]["score_max_abs_diff"] < 1e-5
    # the Run calls are inside the host's total, and the host's own share is positive and small
    assert 0 < res["cpp_overhead_ms"]["min"] and res["cpp_ort_ms"]["max"] < res["cpp_total_ms"]["max"]
    assert res["cpp_overhead_share"]["median"] < 0.5


@pytest.mark.parametrize("providers", ["cuda", " CPU,cuda "])
def test_cli_without_cuda_warns_and_runs_on_the_cpu_as_restr_predict_does(build, tiny, tmp_path, providers):
    """`--providers cuda` (alone or in restr-predict's comma list) on an ONNX Runtime without CUDA: one
    warning line, the CPU, exit 0 (the C++ CLI used to stop with exit 2, and took no list). The same
    line from both CLIs, and the same masks."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: no fallback to see")
    image = tmp_path / "photo.png"
    photo(64, 48, seed=2).save(image)
    args = ["--artifacts", str(tiny), "--image", str(image), "--text", "the red dog", "--providers", providers]
    cpp = _run([str(build / "tools" / "restr-predict-cpp"), *args, "--out", str(tmp_path / "cpp"), "--threads", "1"])
    py = _restr_predict(args, tmp_path / "py")
    assert cpp.returncode == 0 and py.returncode == 0, (cpp.stderr, py.stderr)
    assert cpp.stderr == py.stderr
    assert (
        cpp.stderr.startswith("warning: CUDAExecutionProvider is not available in this onnxruntime build (has: ")
        and cpp.stderr.count("\n") == 1
    )
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("cpp", "py"))
    assert a["runners"] == b["runners"] and set(a["runners"]["vision"]) == {"CPUExecutionProvider"}
    mask = a["expressions"][0]["mask"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cpp" / mask)), np.asarray(Image.open(tmp_path / "py" / mask)))


def test_cli_providers_list_as_restr_predict(build, tiny, tmp_path):
    """restr-predict's --providers forms: an unknown name is the same one-line error (exit 2, nothing
    written); tensorrt, which this host never runs, is a warning and the run goes on."""
    image = tmp_path / "photo.png"
    photo(64, 48, seed=2).save(image)
    args = ["--artifacts", str(tiny), "--image", str(image), "--text", "the red dog"]
    cli = str(build / "tools" / "restr-predict-cpp")
    for bad in ("cpu,foo", "cudaa"):
        cpp = _run([cli, *args, "--out", str(tmp_path / "cpp"), "--providers", bad])
        py = _restr_predict(args, tmp_path / "py", "--providers", bad)
        assert (cpp.returncode, py.returncode) == (2, 2) and not (tmp_path / "cpp").exists()
        assert cpp.stderr.replace("restr-predict-cpp", "restr-predict") == py.stderr and py.stderr.count("\n") == 1, (
            cpp.stderr,
            py.stderr,
        )
    cpp = _run([cli, *args, "--out", str(tmp_path / "cpp"), "--providers", "tensorrt,cpu", "--threads", "1"])
    assert cpp.returncode == 0 and cpp.stderr == (
        "warning: TensorrtExecutionProvider is not run by the C++ host (it runs CUDAExecutionProvider and "
        "CPUExecutionProvider); skipped\n"
    ), cpp.stderr
    assert json.loads((tmp_path / "cpp" / "summary.json").read_text())["runners"]["vision"] == ["CPUExecutionProvider"]


def _other_release(tmp_path: Path, get_api_returns: str) -> Path:
    """A folder with a libonnxruntime.so.1 of another release: OrtGetApiBase carries that release's
    symbol version (VERS_1.16.3), as the wheels' libraries do, and its GetApi returns `get_api_returns`."""
    if not shutil.which("cc"):
        pytest.skip("no C compiler")
    src, script = tmp_path / "old_ort.c", tmp_path / "old_ort.map"
    src.write_text(
        "#include <stddef.h>\n"
        "typedef struct { const void *(*GetApi)(unsigned); const char *(*GetVersionString)(void); } Base;\n"
        f"static const void *get_api(unsigned v) {{ (void)v; return {get_api_returns}; }}\n"
        'static const char *version(void) { return "1.16.3"; }\n'
        "static const Base base = {get_api, version};\n"
        "const Base *OrtGetApiBase(void) { return &base; }\n"
    )
    script.write_text("VERS_1.16.3 { global: OrtGetApiBase; local: *; };\n")
    subprocess.run(
        [
            "cc",
            "-shared",
            "-fPIC",
            "-Wl,-soname,libonnxruntime.so.1",
            f"-Wl,--version-script={script}",
            "-o",
            str(tmp_path / "libonnxruntime.so.1"),
            str(src),
        ],
        check=True,
    )
    return tmp_path


def test_any_onnx_runtime_release_loads_and_an_old_one_is_a_status_not_a_crash(build, tiny, tmp_path):
    """The library, the CLI and a program on the installed static library all refer to OrtGetApiBase
    without the symbol version of the wheel they were built beside (VERS_1.32.0): linked to the
    wheel itself, the CLI would not even start with onnxruntime-gpu 1.31.1 ("version VERS_1.32.0 not
    found", seen on an H200). Here they load a libonnxruntime.so.1 of another release, and since that
    one's GetApi refuses the headers' API version (it is older), each says so in one line."""
    lib = next(build.glob("librestr_runtime.so.*"))
    assert "[libonnxruntime.so.1]" in _run(["readelf", "-d", str(lib)]).stdout
    old = _other_release(tmp_path, "NULL")
    env = {**os.environ, "LD_LIBRARY_PATH": str(old)}
    code = (
        "import ctypes\n"
        f"lib = ctypes.CDLL({str(build / 'librestr_runtime.so')!r})\n"
        "lib.restr_last_error.restype = ctypes.c_char_p\n"
        "p = ctypes.c_void_p()\n"
        f"s = lib.restr_predictor_open({str(tiny)!r}.encode(), None, ctypes.byref(p))\n"
        "print(s, lib.restr_last_error().decode())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.startswith("5 ") and "1.16.3" in r.stdout and "too old" in r.stdout, r.stdout
    image = tmp_path / "photo.png"
    photo(32, 24, seed=1).save(image)
    r = subprocess.run(
        [
            str(build / "tools" / "restr-predict-cpp"),
            "--artifacts",
            str(tiny),
            "--image",
            str(image),
            "--text",
            "a dog",
            "--out",
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "(1.16.3) is too old" in r.stderr, (r.returncode, r.stderr)
    # the benchmarks' way to run the library on a given build (the Python runtime's), RUNPATH notwithstanding
    code = (
        "from restr.runtime.cpp.cpp_host import CppHost, CppHostError\n"
        f"try: CppHost({str(lib)!r}, {str(tiny)!r}, onnxruntime={str(old / 'libonnxruntime.so.1')!r})\n"
        "except CppHostError as e: print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith("status 5: ") and "(1.16.3) is too old" in r.stdout, (r.stdout, r.stderr)
    static_example = build / "tests" / "examples-scratch" / "build" / "embed_c_static"  # CTest's "examples" builds it
    if static_example.exists():
        r = subprocess.run([str(static_example), str(tiny)], env=env, capture_output=True, text=True, timeout=60)
        assert "version" not in r.stderr and "too old" in r.stdout + r.stderr, (r.returncode, r.stdout, r.stderr)


def test_binary_package_runs_on_its_own_libraries(build, tiny, tmp_path):
    """make cpp-dist's tarball: every library the CLI and the shared library load, beyond glibc and
    libstdc++, comes from the package itself (ICU through its own $ORIGIN), and the unpacked CLI
    writes the build tree CLI's masks."""
    if not shutil.which("patchelf"):
        pytest.skip("patchelf is needed (make cpp-apt installs it)")
    r = _run(["sh", str(ROOT / "runtime" / "cpp" / "scripts" / "make-dist.sh"), str(build), str(tmp_path / "dist")])
    assert r.returncode == 0, r.stderr
    tarball = Path(r.stdout.strip())
    assert tarball.name.startswith("restr_runtime-") and tarball.name.endswith(".tar.gz")
    subprocess.run(["tar", "-C", str(tmp_path), "-xzf", str(tarball)], check=True)
    root = tmp_path / tarball.name[: -len(".tar.gz")]
    base = ("linux-vdso", "ld-linux", "libc.", "libm.", "libdl.", "librt.", "libpthread.", "libstdc++", "libgcc_s")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    for exe in (root / "bin" / "restr-predict-cpp", next((root / "lib").glob("librestr_runtime.so.*.*.*"))):
        ldd = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, env=env, check=True).stdout
        rows = [line.split() for line in ldd.splitlines() if "=>" in line]
        outside = [r[0] for r in rows if not r[0].startswith(base) and not Path(r[2]).resolve().is_relative_to(root.resolve())]
        assert not outside and any(r[0].startswith("libicudata") for r in rows), (exe.name, outside)
    image = tmp_path / "photo.png"
    photo(72, 40, seed=4).save(image)
    args = ["--artifacts", str(tiny), "--image", str(image), "--text", "the red dog", "--threads", "1"]
    for name, cli in (("from_dist", root / "bin" / "restr-predict-cpp"), ("from_build", build / "tools" / "restr-predict-cpp")):
        r = subprocess.run([str(cli), *args, "--out", str(tmp_path / name)], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, (name, r.stderr)
    assert (tmp_path / "from_dist" / "1_the-red-dog.png").read_bytes() == (
        tmp_path / "from_build" / "1_the-red-dog.png"
    ).read_bytes()


def test_library_builds_and_installs_without_the_cli_and_its_decoders(build, tmp_path):
    """RESTR_BUILD_TOOLS=OFF: the library alone is configured, built and installed with pkg-config
    seeing no .pc file (stb's, libtiff's, libwebp's, libexif's, netpbm's lookups would fail), looks for
    no image library, links none, and installs no CLI."""
    cache = (build / "CMakeCache.txt").read_text().splitlines()
    ort = [
        "-D" + line.replace(":PATH", "", 1) for line in cache if line.startswith(("RESTR_ORT_INCLUDE_DIR:", "RESTR_ORT_LIB_DIR:"))
    ]
    env = {**os.environ, "PKG_CONFIG_LIBDIR": str(tmp_path / "no-pc-files")}
    tree, prefix = tmp_path / "build", tmp_path / "prefix"
    for cmd in (
        [
            "cmake",
            "-S",
            str(ROOT / "runtime" / "cpp"),
            "-B",
            str(tree),
            "-DCMAKE_BUILD_TYPE=Debug",
            "-DRESTR_BUILD_TOOLS=OFF",
            "-DRESTR_BUILD_TESTS=OFF",
            *ort,
        ],  # Debug: the quickest compile; the links are what is checked
        ["cmake", "--build", str(tree), "-j2"],
        ["cmake", "--install", str(tree), "--prefix", str(prefix)],
    ):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, (cmd[:2], r.stdout[-2000:], r.stderr[-2000:])
    looked_up = [
        line
        for line in (tree / "CMakeCache.txt").read_text().splitlines()
        if re.match(r"(pkgcfg_lib_)?(STB|EXIF|NETPBM|WEBP|TIFF|JPEG|ZLIB)_", line)
    ]
    assert not looked_up, looked_up
    needed = re.findall(
        r"\(NEEDED\).*\[(.+)\]", _run(["readelf", "-d", str(next((prefix / "lib").glob("librestr_runtime.so.*.*.*")))]).stdout
    )
    assert "libonnxruntime.so.1" in needed and not [
        n for n in needed if re.search(r"stb|exif|netpbm|webp|tiff|jpeg|png|libz\.", n)
    ], needed
    assert not (prefix / "bin").exists()
