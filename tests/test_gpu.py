"""The engines restr ships, on a GPU: `restr-export` builds the FP16 TensorRT engines (the only
ones it writes, `*_fp16`), `Predictor(backend="tensorrt")` runs them at its default precision, and
the masks agree with ONNX Runtime FP32 by the export's own FP16 criteria.

Marked `gpu`; skipped, with the reason, where TensorRT 10+, cuda-python or a CUDA GPU is missing
(every machine this project has had so far).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner

from restr.checkpoint import save_checkpoint
from restr.export.cli import cli as export_cli
from restr.export.verify import Tolerances, compare_probs
from restr.runtime import Predictor


def _no_gpu_reason() -> str | None:
    try:
        from restr.runtime.trt_runner import describe_gpu, import_backends

        _, cudart = import_backends()
        describe_gpu(cudart)
    except Exception as e:  # any failure means: no TensorRT engines here
        return f"needs TensorRT 10+, cuda-python and a CUDA GPU ({str(e).splitlines()[0][:160]})"
    return None


REASON = _no_gpu_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=str(REASON))]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:  # pragma: no cover - needs a GPU
    """An export with engines, made the way users make it: restr-export --ckpt ... --engine."""
    from conftest import decisive_tiny_model

    tmp = tmp_path_factory.mktemp("gpu")
    model, vocab = decisive_tiny_model()
    ckpt = tmp / "tiny.pt"
    save_checkpoint(ckpt, model, vocab, meta={"step": 0, "note": "random weights, rescaled head"})
    out = tmp / "export"
    r = CliRunner().invoke(
        export_cli,
        [
            "--ckpt",
            str(ckpt),
            "--out",
            str(out),
            "--engine",
            "--max-batch",
            "4",
            "--timing-cache",
            str(tmp / "timing.cache"),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    return out


def _photos(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(40, 160)), int(rng.integers(40, 160)), 3), dtype=np.uint8) for _ in range(n)]


TEXTS = ["the red circle", "blue square on the left", "the big one", "small", "left of the square"]


def test_exporter_writes_fp16_engines_only(shipped):  # pragma: no cover - needs a GPU
    import json

    m = json.loads((shipped / "manifest.json").read_text())
    assert m["tensorrt"]["status"] == "built"
    assert set(m["engines"]) == {"end_to_end_fp16", "vision_fp16", "language_fp16", "fusion_decoder_fp16"}


def test_shipped_engines_match_onnxruntime_fp32(shipped):  # pragma: no cover - needs a GPU
    trt_pred = Predictor.from_artifacts(shipped, backend="tensorrt")  # default precision: the FP16 engines
    assert {r.name for r in trt_pred.runners.values()} == {"vision_fp16", "language_fp16", "fusion_decoder_fp16"}
    assert all(r.backend == "tensorrt" and r.device.startswith("cuda:") for r in trt_pred.runners.values())
    ort = Predictor.from_artifacts(shipped, threads=1)
    tol = Tolerances()
    for image in _photos(4):
        a = np.stack([p.probs for p in ort.predict_image(image, TEXTS)])
        b = np.stack([p.probs for p in trt_pred.predict_image(image, TEXTS)])  # 5 expressions: chunks of max_batch 4
        figures = compare_probs(a, b, tol.threshold, tol.decisive_margin)
        assert figures["mean_abs_diff"] <= tol.fp16_max_mean_abs_diff, figures
        assert figures["decisive_share"] >= tol.fp16_min_decisive_share and figures["same_side"] >= tol.fp16_min_same_side, (
            figures
        )
    e2e = Predictor.from_artifacts(shipped, backend="tensorrt", mode="end_to_end")
    image = _photos(1, seed=5)[0]
    a = np.stack([p.probs for p in ort.predict_image(image, TEXTS[:2])])
    b = np.stack([p.probs for p in e2e.predict_image(image, TEXTS[:2])])
    assert compare_probs(a, b)["mean_abs_diff"] <= tol.fp16_max_mean_abs_diff


def test_shipped_engines_threads_equal_serial_and_phase_timings(shipped):  # pragma: no cover - needs a GPU
    trt_pred = Predictor.from_artifacts(shipped, backend="tensorrt")
    jobs = [(im, TEXTS[i % 3 : i % 3 + 2]) for i, im in enumerate(_photos(8, seed=9))]
    serial = [[p.probs for p in trt_pred.predict_image(im, t)] for im, t in jobs]
    with ThreadPoolExecutor(8) as pool:  # 8 threads, 4 contexts: some runs wait for one
        threaded = list(pool.map(lambda job: [p.probs for p in trt_pred.predict_image(*job)], jobs))
    for ours, theirs in zip(serial, threaded):
        np.testing.assert_allclose(np.stack(ours), np.stack(theirs), atol=1e-3)
    runner = trt_pred.runners["vision"]
    assert runner.contexts <= runner.max_contexts
    timings: dict = {}
    runner.run(
        {"image": np.zeros((1, 3, trt_pred.artifacts.image_size, trt_pred.artifacts.image_size), np.float32)}, timings=timings
    )
    assert set(timings) == {"h2d", "compute", "d2h"} and timings["compute"] > 0
    for r in trt_pred.runners.values():
        r.close()
