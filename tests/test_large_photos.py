"""Photos as phones take them (12 MP, EXIF-rotated, RGBA): the processing graphs on them against the
earlier graphs, the overlay rule, and the PNG writer. Torch-free and without a model export."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from restr.runtime.transforms import Letterbox, load_image, mean_fill, normalize
from restr.runtime.visualize import contact_sheet, contour_width, overlay, save_mask, save_overlay, write_png

# preprocess.onnx and postprocess.onnx as restr-export wrote them for restr-tiny (80 x 80, mean and
# std 0.5) before the preprocess graph resized channel by channel: what older exports hold.
EARLIER = Path(__file__).parent / "data" / "processing-before-per-channel"
S, MEAN, STD = 80, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def session(proto_or_path):
    import onnxruntime as ort

    data = proto_or_path.read_bytes() if isinstance(proto_or_path, Path) else proto_or_path.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def large_photo(w: int = 4000, h: int = 3000, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8: smooth colour blobs with per-pixel noise, as a 12 MP phone photo (cheap to make)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 100 + 1, w // 100 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    return base ^ rng.integers(0, 16, base.shape, dtype=np.uint8)  # noise in the low four bits


def test_processing_graphs_on_a_12_mp_photo_equal_the_earlier_graphs():
    """The per-channel preprocess graph computes the same bits as the earlier whole-image one on a
    4000 x 3000 photo (letterbox and image), within one uint8 level of Pillow (the training
    transform) as ever; the postprocess graph gives the earlier probabilities, masks, areas and
    scores, bit for bit. (Its score, one FP32 ReduceSum over 12 million products, is 1.6e-4 off the
    float64 mean here: a sum per row would be exact to 1e-7, but ONNX Runtime's sum of the rows then
    rounds differently at batch 1 than at batch 3, and a bulk job's scores must be a single image's.)"""
    from restr.export.processing import postprocess_graph, preprocess_graph

    rgb = large_photo()
    new_image, new_lb = session(preprocess_graph(S, MEAN, STD)).run(None, {"rgb": rgb})
    old_image, old_lb = session(EARLIER / "preprocess.onnx").run(None, {"rgb": rgb})
    lb = Letterbox.fit(rgb.shape[:2], S)
    assert new_lb.tolist() == old_lb.tolist() == [*lb.src_hw, *lb.new_hw] == [3000, 4000, 60, 80]
    np.testing.assert_array_equal(new_image, old_image)
    pillow = normalize(lb.image(Image.fromarray(rgb), mean_fill(MEAN)), MEAN, STD)[None]
    assert np.abs(new_image - pillow).max() * 0.5 * 255 <= 1.001

    rng = np.random.default_rng(1)
    probs = np.asarray(Image.fromarray(rng.random((10, 10), dtype=np.float32), mode="F").resize((S, S), Image.BILINEAR))
    pixel = np.stack([probs, 1 - probs])[:, None].astype(np.float32)  # smooth maps: masks of real regions
    feeds = {"pixel_probs": pixel, "letterbox": new_lb, "threshold": np.array([0.5], np.float32)}
    new = dict(zip(("probs", "mask", "score", "area"), session(postprocess_graph(S)).run(None, feeds)))
    old = dict(zip(("probs", "mask", "score", "area"), session(EARLIER / "postprocess.onnx").run(None, feeds)))
    for key in ("probs", "mask", "area", "score"):
        np.testing.assert_array_equal(new[key], old[key], err_msg=key)
    assert new["mask"].shape == (2, 3000, 4000) and 0 < new["area"][0] < 12_000_000
    exact = [new["probs"][i][new["mask"][i]].astype(np.float64).mean() for i in range(2)]
    np.testing.assert_allclose(new["score"], exact, rtol=1e-3)


def test_earlier_graphs_have_the_inputs_and_outputs_of_the_new_ones():
    """An export made before the per-channel graphs runs as it did: its processing graphs take and
    give the same names, types and shapes, so the runtime (which reads only those) runs either."""
    from restr.export.processing import postprocess_graph, preprocess_graph

    def io_of(sess):
        return [(v.name, v.type, v.shape) for v in (*sess.get_inputs(), *sess.get_outputs())]

    assert io_of(session(EARLIER / "preprocess.onnx")) == io_of(session(preprocess_graph(S, MEAN, STD)))
    assert io_of(session(EARLIER / "postprocess.onnx")) == io_of(session(postprocess_graph(S)))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_image_turns_the_photo_as_pillow_does(tmp_path, orientation):
    """load_image turns the decoded pixels in place (no copy of the photo): the result is Pillow's
    exif_transpose of the file, for every EXIF orientation, and RGBA is composed over black."""
    rng = np.random.default_rng(orientation)
    rgba = rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    Image.fromarray(rgba).save(path, exif=exif)
    got = np.asarray(load_image(path))
    with Image.open(path) as im:
        upright = ImageOps.exif_transpose(im)
    alpha = np.asarray(upright)[..., 3:].astype(np.uint16)
    want = (np.asarray(upright)[..., :3] * alpha + 127) // 255  # over black, as Pillow composes
    assert got.shape == ((40, 30, 3) if orientation >= 5 else (30, 40, 3))
    assert np.abs(got.astype(int) - want).max() <= 1
    Image.fromarray(rgba[..., :3]).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "photo.jpg") as im:
        np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "photo.jpg")), np.asarray(ImageOps.exif_transpose(im)))


# -- the overlay rule ----------------------------------------------------------------------------------


def rest_of_image(rgb: np.ndarray, k: int = 128) -> np.ndarray:
    """The rule's pixels outside the mask and its contour, written out: ((c + y) * k) >> 9 per channel,
    y = (19595 R + 38470 G + 7471 B + 32768) >> 16."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    luma = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16
    return (((rgb + luma[..., None]) * k) >> 9).astype(np.uint8)


def ring_of(mask: np.ndarray, w: int) -> np.ndarray:
    """Pixels outside `mask` with a mask pixel within Chebyshev distance w, by brute force over the
    (2w+1)^2 shifts (small masks only)."""
    h, wd = mask.shape
    padded = np.zeros((h + 2 * w, wd + 2 * w), bool)
    padded[w : w + h, w : w + wd] = mask
    near = np.zeros_like(mask)
    for dy in range(2 * w + 1):
        for dx in range(2 * w + 1):
            near |= padded[dy : dy + h, dx : dx + wd]
    return near & ~mask


def scene(h: int, w: int) -> np.ndarray:
    """A grey, lightly noisy background with a red and a green rectangle (the synthetic task's colours)."""
    rgb = np.full((h, w, 3), 140, np.uint8) ^ np.random.default_rng(0).integers(0, 8, (h, w, 3), dtype=np.uint8)
    rgb[h // 4 : h // 2, w // 8 : w // 3] = (215, 45, 40)
    rgb[h // 2 : 3 * h // 4, w // 2 : 3 * w // 4] = (40, 165, 60)
    return rgb


def test_overlay_rule_on_a_large_photo(tmp_path):
    """On a photo 4000 wide (600 high: the width alone sets the contour's): the object's pixels are
    kept exactly (the earlier overlay tinted them half way to a contrasting colour: "the red circle"
    showed grey-blue), every other pixel is (c + y) >> 2, and the contour is white and
    max(2, 4000 // 300) = 13 pixels wide (the earlier outline: 1 pixel, inside the mask); the saved
    PNG holds the same pixels."""
    h, w = 600, 4000
    rgb = scene(h, w)
    boxes = [(h // 4, h // 2, w // 8, w // 3), (0, 40, w - 300, w)]  # the red rectangle; one at two edges
    mask = np.zeros((h, w), bool)
    ring = np.zeros((h, w), bool)
    for y0, y1, x0, x1 in boxes:  # the ring of rectangles: each grown by 13, clipped at the edges
        mask[y0:y1, x0:x1] = True
        ring[max(0, y0 - 13) : y1 + 13, max(0, x0 - 13) : x1 + 13] = True
    ring &= ~mask
    assert contour_width(h, w) == 13
    want = rest_of_image(rgb)
    want[mask] = rgb[mask]
    want[ring] = 255
    got = np.asarray(overlay(rgb, mask))
    np.testing.assert_array_equal(got, want)
    assert (got[h // 4 + 5 : h // 2 - 5, w // 8 + 5 : w // 3 - 5] == (215, 45, 40)).all()  # what the words are about
    row = got[3 * h // 8, w // 3 : w // 3 + 14]  # right of the red rectangle: 13 contour pixels, then the rest
    assert (row[:13] == 255).all() and (row[13] < 128).all()
    path = save_overlay(tmp_path / "o.png", Image.fromarray(rgb), mask)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), want)


@pytest.mark.parametrize("alpha,color", [(0.0, (255, 0, 255)), (0.5, (0, 0, 0)), (0.75, (0, 0, 0)), (1.0, (255, 255, 0))])
def test_overlay_alpha_and_colour(alpha, color):
    """alpha sets k = round(256 (1 - alpha)) in ((c + y) k) >> 9 for the rest (0: only desaturated,
    1: black); color is the contour's; an array or a PIL image gives the same."""
    rgb = scene(90, 120)
    mask = np.zeros((90, 120), bool)
    mask[30:60, 20:50] = True
    mask[0:5, 100:120] = True
    got = np.asarray(overlay(Image.fromarray(rgb), mask, color=color, alpha=alpha))
    want = rest_of_image(rgb, round(256 * (1 - alpha)))
    want[mask] = rgb[mask]
    want[ring_of(mask, 2)] = color
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(overlay(rgb, mask.astype(np.uint8), color=color, alpha=alpha)), got)


def test_overlay_of_an_empty_and_a_full_mask():
    rgb = scene(60, 80)
    np.testing.assert_array_equal(np.asarray(overlay(rgb, np.zeros((60, 80), bool))), rest_of_image(rgb))  # no contour
    np.testing.assert_array_equal(np.asarray(overlay(rgb, np.ones((60, 80), bool))), rgb)


def test_sheet_tiles_are_the_overlay_rule_at_the_tile_size():
    """A --sheet tile: the photo resized to the tile (Pillow BILINEAR), the mask as 0/255 resized the
    same way and kept where >= 128, then the overlay rule with contour_width(tile) = 2: the red
    object stays red (the earlier tile was the tinted overlay, scaled down) and is ringed in white."""
    h, w = 900, 1200
    rgb = scene(h, w)
    mask = np.zeros((h, w), bool)
    mask[h // 4 : h // 2, w // 8 : w // 3] = True
    sheet = np.asarray(contact_sheet(Image.fromarray(rgb), [mask, ~mask], ["the red rectangle", "the rest"]))
    small = np.asarray(Image.fromarray(rgb).resize((320, 240), Image.BILINEAR))
    for k, m in enumerate((mask, ~mask)):
        tile = sheet[8 : 8 + 240, 8 + k * 328 : 8 + k * 328 + 320]  # 1200 x 900 -> 320 x 240, 8 pixels apart
        small_mask = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((320, 240), Image.BILINEAR)) >= 128
        want = rest_of_image(small)
        want[small_mask] = small[small_mask]
        want[ring_of(small_mask, 2)] = 255
        np.testing.assert_array_equal(tile, want)
    assert (sheet[8 + 70, 8 + 50] == (215, 45, 40)).all()


# -- PNG -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (37, 53), (37, 53, 3), (1, 5, 3), (300, 2, 3), (513, 9)])
def test_write_png_round_trips(shape):
    """write_png's files, from an array or a PIL image, in one band of rows or several, read back in
    Pillow as the same pixels (greyscale L or RGB)."""
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    for source in (pixels, Image.fromarray(pixels)):
        f = io.BytesIO()
        write_png(f, source)
        im = Image.open(io.BytesIO(f.getvalue()))
        assert im.mode == ("RGB" if len(shape) == 3 else "L")
        np.testing.assert_array_equal(np.asarray(im), pixels)


def test_save_mask_writes_0_and_255(tmp_path):
    mask = np.zeros((3000, 4000), bool)
    mask[100:2000, 50:3000] = True
    path = save_mask(tmp_path / "m.png", mask)
    m = np.asarray(Image.open(path))
    assert Image.open(path).mode == "L" and set(np.unique(m)) == {0, 255}
    np.testing.assert_array_equal(m == 255, mask)


def test_restr_predict_on_a_12_mp_photo_stays_under_600_mb(tmp_path):
    """The CLI on a 12 MP JPEG (EXIF-rotated), two expressions with overlays: peak RSS <= 600 MB
    (it was 1.28 GB: photo-sized probability maps fetched for nothing, copies of the photo, the
    processing graphs' arena kept at the photo's size)."""
    import subprocess
    import sys

    from restr.export.pipeline import ExportOptions, export_artifacts, load_source

    export = tmp_path / "export"
    export_artifacts(
        load_source(config="restr-tiny", seed=0),
        export,
        ExportOptions(max_batch=2, precisions=("fp32",), engine=False, verify=False, progress=False),
        log=lambda m: None,
    )
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(large_photo()).save(tmp_path / "12mp.jpg", quality=90, exif=exif)
    # VmHWM: this process's own peak (ru_maxrss would carry the forking pytest process's over exec)
    code = (
        "import atexit, re, sys; atexit.register(lambda: print('MAXRSS', re.search(r'VmHWM:\\s*(\\d+)', "
        "open('/proc/self/status').read()).group(1), file=sys.stderr)); from restr.runtime.cli import main; "
        "sys.argv[0] = 'restr-predict'; main()"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--artifacts",
            str(export),
            "--image",
            str(tmp_path / "12mp.jpg"),
            "--text",
            "the dog",
            "--text",
            "a cat",
            "--out",
            str(tmp_path / "out"),
            "--overlay",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    peak_mb = int(r.stderr.rsplit("MAXRSS", 1)[1].split()[0]) / 1024
    assert peak_mb <= 600, f"peak RSS {peak_mb:.0f} MB"
    assert Image.open(tmp_path / "out" / "1_the-dog_overlay.png").size == (3000, 4000)


def test_sheet_captions_draw_greek_and_cyrillic_letters_and_keep_the_score(tmp_path):
    """Pillow's default font drew every non-Latin letter as the same box; the caption font has them.
    A long expression is cut at the tile's second line: the score comes first, so it stays."""
    from PIL import ImageDraw

    from restr.runtime.cli import main
    from restr.runtime.visualize import caption_font

    font = caption_font()
    if not hasattr(font, "path"):
        pytest.skip("no DejaVu Sans here (fonts-dejavu or matplotlib)")

    def glyph(c: str) -> bytes:
        im = Image.new("L", (20, 20))
        ImageDraw.Draw(im).text((2, 2), c, fill=255, font=font)
        return im.tobytes()

    box = glyph("\ue000")  # a private-use character: the font's 'missing glyph' box
    for letter in "éΩЖß":
        assert glyph(letter) != box, letter
    from click.testing import CliRunner

    from conftest import make_tiny_export

    tiny = make_tiny_export(tmp_path / "export")
    Image.fromarray(large_photo(120, 80)).save(tmp_path / "p.png")
    seen = {}
    import restr.runtime.cli as cli

    original = cli.contact_sheet

    def spy(rgb, masks, captions, *a, **k):
        seen["captions"] = captions
        return original(rgb, masks, captions, *a, **k)

    cli.contact_sheet = spy
    try:
        long = "the man in the blue shirt on the left of the big red car next to the small tree"
        r = CliRunner().invoke(
            main,
            [
                "--artifacts",
                str(tiny.folder),
                "--image",
                str(tmp_path / "p.png"),
                "--text",
                long,
                "--out",
                str(tmp_path / "o"),
                "--sheet",
            ],
        )
    finally:
        cli.contact_sheet = original
    assert r.exit_code == 0, r.output
    (caption,) = seen["captions"]
    from restr.runtime.visualize import _wrap

    lines = _wrap(caption, 120, font, ImageDraw.Draw(Image.new("RGB", (1, 1))))
    assert len(lines) > 2 and "score" in lines[0]  # cut after two lines, the score on the first
