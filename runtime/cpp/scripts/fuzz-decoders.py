"""Differential fuzzing of restr-predict-cpp's image decoding against restr-predict's (Pillow).

    python runtime/cpp/scripts/fuzz-decoders.py --cli build/cpp/tools/restr-predict-cpp \
        --artifacts EXPORT [--seconds 300] [--seed 0] [--keep DIR]

Writes one small image per format and mode Pillow reads differently (JPEG, CMYK JPEG, WebP, PNG
modes, BMP, GIF, TGA, TIFF, PBM/PGM/PPM plain and raw), then over and over damages one (bytes changed,
the file cut, header bytes set to edge values) and runs both CLIs on it. A difference is a different
exit code, different overlay pixels, or an error of more than one line; each is printed and the file
kept in --keep. With the ASan build as --cli, it also reports sanitizer errors. Known differences
are listed in runtime/cpp/README.md; this found the damaged-file cases the tests now pin.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def seeds(folder: Path) -> list[Path]:
    """One file per format and mode, 48 x 64 (small: each run is dominated by process start)."""
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
    rgba = np.dstack([rgb, (yy * 5).astype(np.uint8)])
    im = Image.fromarray(rgb)
    im.save(folder / "rgb.jpg", quality=90)
    Image.fromarray(rgba, "CMYK").save(folder / "cmyk.jpg", quality=90)
    im.save(folder / "lossy.webp", quality=60)
    Image.fromarray(rgba).save(folder / "alpha.webp", lossless=True)
    im.save(folder / "rgb.png")
    im.convert("LA").save(folder / "grey_alpha.png")
    im.convert("P").save(folder / "palette.png", transparency=5)
    im.convert("1").save(folder / "bits.png")
    Image.fromarray((xx * 700 + yy * 90).astype(np.uint16)).save(folder / "deep.png")
    im.save(folder / "rgb.bmp")
    im.convert("P").save(folder / "palette.bmp")
    im.convert("P").save(folder / "clear.gif", transparency=3)
    im.save(folder / "rgb.tga")
    im.save(folder / "rle.tga", compression="tga_rle")
    for compression in ("raw", "tiff_lzw", "tiff_adobe_deflate", "packbits", "jpeg"):
        im.save(folder / f"rgb_{compression}.tif", compression=compression)
    Image.fromarray(rgba).save(folder / "alpha.tif", compression="tiff_lzw")
    Image.fromarray(rgba, "CMYK").save(folder / "cmyk.tif")
    im.convert("P").save(folder / "palette.tif")
    im.convert("1").save(folder / "bits.tif", compression="group4")
    Image.fromarray((xx * 700 + yy * 90).astype(np.uint16)).save(folder / "deep.tif")
    for magic, maxval in (("P5", 255), ("P5", 100), ("P5", 1000), ("P6", 255), ("P6", 1000), ("P2", 100), ("P3", 1000)):
        top = np.round(rgb.astype(float) * maxval / 255).astype(int)
        samples = top[..., 0] if magic in ("P2", "P5") else top
        head = f"{magic}\n# fuzz\n64 48\n{maxval}\n".encode()
        if magic in ("P2", "P3"):
            data = head + " ".join(map(str, samples.ravel())).encode() + b"\n"
        else:
            data = head + samples.astype(">u2" if maxval > 255 else "u1").tobytes()
        (folder / f"{magic}_{maxval}.pnm").write_bytes(data)
    return sorted(folder.iterdir())


def damage(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.random()
    if kind < 0.4:  # a few bytes anywhere
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind < 0.65:  # cut short
        b = b[: rng.randrange(1, len(b))]
    else:  # header fields set to edge values
        for _ in range(rng.randint(1, 2)):
            b[rng.randrange(min(64, len(b)))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    return bytes(b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cli", required=True, help="restr-predict-cpp (the ASan build also reports memory errors)")
    ap.add_argument("--artifacts", required=True, help="an export folder, e.g. restr-export --config restr-tiny")
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=Path("fuzz-differences"), help="where files that differ are kept")
    ap.add_argument("--formats", default="", help="only these file suffixes, comma-separated (e.g. tif,png); default: all")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="restr-fuzz-"))
    (work / "seeds").mkdir()
    files = seeds(work / "seeds")
    if a.formats:
        files = [f for f in files if f.suffix.lstrip(".") in a.formats.split(",")]
    try:
        found, runs = fuzz(a, rng, work, files)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{runs} damaged files, {found} differences")
    return 1 if found else 0


def fuzz(a, rng: random.Random, work: Path, files: list[Path]) -> tuple[int, int]:
    """Damaged files run through both CLIs until the time is up; (differences, runs)."""
    runs = found = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.seconds:
        src = rng.choice(files)
        image = work / f"input{src.suffix}"
        image.write_bytes(damage(src.read_bytes(), rng))
        args = ["--artifacts", a.artifacts, "--image", str(image), "--text", "the dog", "--overlay", "--force"]
        cpp = subprocess.run(
            [a.cli, *args, "--out", str(work / "cpp"), "--threads", "1"], capture_output=True, text=True, errors="replace"
        )
        py = subprocess.run(
            [sys.executable, "-m", "restr.runtime.cli", *args, "--out", str(work / "py")],
            capture_output=True,
            text=True,
            errors="replace",
        )
        runs += 1
        why = []
        if cpp.returncode != py.returncode:
            why.append(f"exit {cpp.returncode} (C++) vs {py.returncode} (Python)")
        elif cpp.returncode == 0:
            x, y = (np.asarray(Image.open(work / d / "1_the-dog_overlay.png")) for d in ("cpp", "py"))
            if x.shape != y.shape or not np.array_equal(x, y):
                why.append("overlay pixels differ")
        if cpp.returncode == 2 and cpp.stderr.count("\n") != 1:
            why.append("C++ error not one line")
        if "Sanitizer" in cpp.stderr or "runtime error" in cpp.stderr:
            why.append("sanitizer report")
        if why:
            a.keep.mkdir(parents=True, exist_ok=True)
            kept = a.keep / f"{a.seed}-{found}-{src.stem}{src.suffix}"
            kept.write_bytes(image.read_bytes())
            found += 1
            print(
                f"{kept}: {'; '.join(why)}\n  C++: {cpp.stderr.strip()[-300:]}\n  Python: {py.stderr.strip()[-300:]}", flush=True
            )
    return found, runs


if __name__ == "__main__":
    sys.exit(main())
