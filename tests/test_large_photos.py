"""Photos as phones take them (12 MP, EXIF-rotated, RGBA): the processing graphs on them against the
earlier graphs, and what the runtime does to them on the host. Torch-free and without a model export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from restr.runtime.transforms import Letterbox, load_image, mean_fill, normalize

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
    transform) as ever; the postprocess graph gives the earlier probabilities, masks and areas, and a
    score that is the mean of the mask's probabilities (float64) to 1e-5 (the earlier graph's FP32
    ReduceSum over 12 million products was off by 1.6e-4 here)."""
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
    for key in ("probs", "mask", "area"):
        np.testing.assert_array_equal(new[key], old[key], err_msg=key)
    assert new["mask"].shape == (2, 3000, 4000) and 0 < new["area"][0] < 12_000_000
    exact = [new["probs"][i][new["mask"][i]].astype(np.float64).mean() for i in range(2)]
    np.testing.assert_allclose(new["score"], exact, rtol=1e-5)


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
