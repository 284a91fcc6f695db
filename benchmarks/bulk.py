"""`restr-bench --bulk N`: many photos through `Predictor.predict_many` against a loop of
`Predictor.predict_image`, in images per second.

N JPEG files (synthetic photos of --photo-size, landscape and portrait in turn) are written once;
each round reads all of them both ways with one expression each, the order of the two alternating
from round to round, on one split-graph predictor without a feature cache (every image is
encoded). The loop is what a user writes without the bulk API; the bulk run decodes and prepares
images in worker threads while the model runs, runs the image graph on up to max_batch photos at
once and shares the later graphs across images. `speedup` is bulk / loop within each round.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from restr.benchmarks.timing import ratio, summarize

TEXT = "the man in the blue hat"


def write_photos(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """n JPEG photos of `size` (width, height), every other one turned portrait."""
    from restr.benchmarks.latency import synthetic_photo

    w, h = size
    paths = []
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(synthetic_photo(*((w, h) if i % 2 == 0 else (h, w)), seed=i)).save(path, quality=90)
        paths.append(path)
    return paths


@dataclass
class BulkRuns:
    """Images per second of each way, one sample per round."""

    loop: list[float] = field(default_factory=list)
    bulk: list[float] = field(default_factory=list)

    def round(self, predictor, paths: list[Path], bulk_first: bool, workers: int) -> None:
        def loop():
            for p in paths:
                predictor.predict_image(p, [TEXT], probs=False)

        def bulk():
            for r in predictor.predict_many(((p, [TEXT]) for p in paths), workers=workers):
                if r.error is not None:
                    raise r.error

        ways = [(self.bulk, bulk), (self.loop, loop)]
        for samples, run in ways if bulk_first else ways[::-1]:
            t0 = time.perf_counter()
            run()
            samples.append(len(paths) / (time.perf_counter() - t0))

    def result(self, images: int, workers: int) -> dict:
        per_round = [ratio(b, a) for a, b in zip(self.loop, self.bulk)]
        return {
            "images": images,
            "expressions_per_image": 1,
            "workers": workers,
            "loop_images_per_s": summarize(self.loop),
            "bulk_images_per_s": summarize(self.bulk),
            "speedup": summarize([r for r in per_round if r is not None]),
        }


class PhotoFolder:
    """The bulk photos, written once per benchmark into a temporary folder removed at the end."""

    def __init__(self, n: int, size: tuple[int, int]):
        self._tmp = tempfile.TemporaryDirectory(prefix="restr-bench-bulk-")
        self.paths = write_photos(Path(self._tmp.name), n, size)

    def close(self) -> None:
        self._tmp.cleanup()
