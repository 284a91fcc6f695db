"""FP16 on the GPU against FP32 on the CPU, through the Predictor as users run it.

    python -m restr.benchmarks.agreement EXPORT_DIR [--photos 8] [--data synthetic:test] [--json FILE]

For generated photos and expressions of the export's own words (or, with --data, a data set's images
and expressions: what a trained model such as the demo's is for), the masks (at the photo's size) of
the FP16 graphs on the first GPU execution provider are compared with the FP32 graphs' on the CPU:
the share of pixels on the same side of the threshold, the overall mask IoU, and the share of
decisive pixels (the FP32 probability at least 0.1 from the threshold; random weights put most
pixels near 0.5, where the same-side share says little).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from restr.benchmarks.latency import synthetic_photo
from restr.runtime import Predictor


def generated(vocab, photos: int, texts: int, seed: int):
    """Generated photos of a few sizes, each with expressions of random vocabulary words."""
    rng = np.random.default_rng(seed)
    words = vocab.itos[2:]
    for i in range(photos):
        photo = synthetic_photo(640 - 64 * (i % 3), 480 + 32 * (i % 2), seed=seed + i)
        yield photo, [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(texts)]


def from_data(spec: str, vocab, photos: int, texts: int):
    """A data set's images (`restr.data.build_dataset` spec, e.g. "synthetic:test") with their own
    expressions: what a trained model is meant to segment."""
    from restr.data import build_dataset

    data = build_dataset(spec, None, 64, vocab, (0.5,) * 3, (0.5,) * 3)  # only paths and texts are used
    for path, asked in data.expressions_by_image(photos).items():
        yield str(path), asked[:texts]


def agreement(folder, photos: int = 8, texts: int = 8, seed: int = 0, providers="cuda", data: str | None = None) -> dict:
    gpu = Predictor.from_artifacts(folder, precision="fp16", providers=providers, cache_size=0)
    cpu = Predictor.from_artifacts(folder, precision="fp32", cache_size=0)
    same = pixels = decisive = inter = union = asked_total = 0
    cases = from_data(data, cpu.vocab, photos, texts) if data else generated(cpu.vocab, photos, texts, seed)
    for photo, asked in cases:
        asked_total += len(asked)
        for a, b in zip(cpu.predict_image(photo, asked), gpu.predict_image(photo, asked)):
            same += int((a.mask == b.mask).sum())
            pixels += a.mask.size
            decisive += int((np.abs(a.probs - cpu.threshold) >= 0.1).sum())
            inter += int((a.mask & b.mask).sum())
            union += int((a.mask | b.mask).sum())
    return {
        "same_side": same / pixels,
        "mask_iou": inter / union if union else 1.0,
        "decisive_share": decisive / pixels,
        "pixels": pixels,
        "photos": photos,
        "expressions": asked_total,
        "data": data or "generated photos, random words",
        "gpu": repr(gpu.runners),
        "reference": "fp32 graphs, ONNX Runtime CPU",
    }


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m restr.benchmarks.agreement", description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--texts", type=int, default=8, help="expressions per photo (at most)")
    ap.add_argument("--data", help="a data set's images and expressions, e.g. \"synthetic:test\" (a trained model's own task)")
    ap.add_argument(
        "--providers", default="cuda", help='execution providers of the FP16 side ("cuda"; "cpu" to try it without a GPU)'
    )
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    result = agreement(a.folder, a.photos, a.texts, providers=a.providers, data=a.data)
    print(json.dumps(result, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
