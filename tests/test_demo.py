"""The demo's own code (the commands it runs are tested on their own)."""

import json

import numpy as np
from PIL import Image

from restr.demo import _contact_sheet


def test_contact_sheet_has_a_row_per_image_and_a_panel_per_expression(tmp_path):
    predict = tmp_path / "predict"
    for image, n in (("a", 3), ("b", 2)):
        folder = predict / image
        folder.mkdir(parents=True)
        expressions = []
        for k in range(n):
            Image.fromarray(np.full((30, 40, 3), 60 * k, np.uint8)).save(folder / f"{k}_overlay.png")
            expressions.append({"text": f"the {image} {k}", "overlay": f"{k}_overlay.png"})
        (folder / "summary.json").write_text(json.dumps({"expressions": expressions}))
    (predict / "stray").mkdir()  # a folder without summary.json is not a row
    out = _contact_sheet(predict, tmp_path / "sheet.png")
    w, h = Image.open(out).size
    assert (w, h) == (round(3.2 * 3 * 80), round(2.7 * 2 * 80))  # 3 columns, 2 rows at 80 dpi
