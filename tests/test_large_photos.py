"""Photos as phones take them (12 MP, EXIF-rotated, RGBA): what the runtime does to them on the host."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from restr.runtime.transforms import load_image


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
