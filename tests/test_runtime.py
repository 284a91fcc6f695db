"""The torch-free runtime (restr.runtime) against the PyTorch model, on a tiny export.

The export is made by restr-export's pipeline (`make_tiny_export`) from restr-tiny with seeded
random weights spread out so the masks are not all empty.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from conftest import (
    TINY_TEXTS as TEXTS,
    FakeCudart,
    Tiny,
    copy_export,
    fake_tensorrt_module,
    install_fake_tensorrt,
    make_tiny_export,
    make_tiny_model,
    photo,
    sha256_of,
)
from restr.config import get_config as _get_config
from restr.modeling import ReSTR
from restr.runtime import (
    ArtifactError,
    Artifacts,
    ImageError,
    Letterbox,
    Prediction,
    Predictor,
    TextError,
    TextTruncatedWarning,
    Vocabulary,
    load_image,
    save_mask,
    save_overlay,
)
from restr.runtime.transforms import mean_fill, normalize
from restr.runtime.trt_runner import EngineMismatchError, check_sidecar, profile_max_batch

S = _get_config("restr-tiny").image_size  # input side of the small model
N_V = _get_config("restr-tiny").num_patches


# -- a tiny export, as docs/artifacts.md describes it ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    return make_tiny_export(tmp_path_factory.mktemp("tiny") / "export")


@pytest.fixture(scope="module")
def predictor(tiny) -> Predictor:
    return Predictor.from_artifacts(tiny.folder, threads=1)


def torch_probs(model: ReSTR, vocab: Vocabulary, im: Image.Image, texts: list[str], predictor: Predictor | None = None):
    """The PyTorch model on the same pre-processing: pixel probs (K, S, S), patch probs, letterbox.
    With a predictor, its input (the preprocess graph's); else the Pillow transform of training."""
    cfg = model.cfg
    lb = Letterbox.fit((im.height, im.width), cfg.image_size)
    x = normalize(lb.image(im.convert("RGB"), mean_fill(cfg.image_mean)), cfg.image_mean, cfg.image_std)[None]
    if predictor is not None:
        x, lb2 = predictor.preprocess(np.asarray(im.convert("RGB")))
        assert lb2 == lb
        assert (
            np.abs(
                x - normalize(lb.image(im.convert("RGB"), mean_fill(cfg.image_mean)), cfg.image_mean, cfg.image_std)[None]
            ).max()
            <= 1.001 / 127.5
        )
    enc = vocab.encode(texts, cfg.max_words)
    with torch.no_grad():
        pixel, patch = model(
            torch.from_numpy(x).expand(len(texts), -1, -1, -1), torch.from_numpy(enc.words), torch.from_numpy(enc.pad_mask)
        )
    return torch.sigmoid(pixel)[:, 0].numpy(), torch.sigmoid(patch).numpy(), lb


# -- correctness ---------------------------------------------------------------------------------------


def test_matches_pytorch_on_non_square_image(tiny, predictor):
    im = photo(80, 56)
    preds = predictor.predict_image(im, TEXTS)
    ref, ref_patch, lb = torch_probs(tiny.model, tiny.vocab, im, TEXTS, predictor)
    emb = predictor.embed(im)
    enc = predictor.encode_text(TEXTS)
    pixel, patch, _ = predictor.decode(emb, enc.words, enc.pad_mask)
    assert pixel.shape == (len(TEXTS), 1, S, S)
    np.testing.assert_allclose(pixel[:, 0], ref, atol=1e-4)
    np.testing.assert_allclose(patch, ref_patch, atol=1e-4)
    # masks equal on the letterboxed square wherever the probability is not within rounding of 0.5
    decided = np.abs(ref - 0.5) > 1e-4
    assert decided.mean() > 0.95
    np.testing.assert_array_equal((pixel[:, 0] > 0.5)[decided], (ref > 0.5)[decided])
    for p, r in zip(preds, ref):
        assert isinstance(p, Prediction)
        assert p.mask.shape == p.probs.shape == (56, 80) and p.mask.dtype == bool and p.probs.dtype == np.float32
        np.testing.assert_allclose(p.probs, lb.invert(r), atol=1e-4)
        assert p.area == int(p.mask.sum())
        assert p.score == pytest.approx(float(p.probs[p.mask].mean()) if p.area else 0.0)
    areas = [p.area_fraction for p in preds]
    assert max(areas) > 0.01 and min(areas) < 0.99  # the seeded model gives non-trivial masks


def test_split_graphs_match_end_to_end(tiny, predictor):
    e2e = Predictor.from_artifacts(tiny.folder, mode="end_to_end", threads=1)
    assert predictor.mode == "split" and e2e.mode == "end_to_end"
    im = photo(64, 96, seed=3)
    for a, b in zip(predictor.predict_image(im, TEXTS), e2e.predict_image(im, TEXTS)):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
        assert a.patch_score == pytest.approx(b.patch_score, abs=1e-5)


def test_batched_expressions_equal_one_at_a_time(predictor):
    """Six expressions go through in chunks of max_batch=4; each equals its own single run."""
    im = photo(70, 70, seed=5)
    batched = predictor.predict_image(im, TEXTS)
    for text, p in zip(TEXTS, batched):
        (single,) = predictor.predict_image(im, text)
        np.testing.assert_allclose(p.probs, single.probs, atol=1e-5)


def test_feature_cache_hits_by_content_and_is_bounded(tiny):
    pred = Predictor.from_artifacts(tiny.folder, cache_size=2, threads=1)
    a, b, c = photo(seed=10), photo(seed=11), photo(seed=12)
    pred.set_image(a)
    assert pred.vision_runs == 1
    pred.set_image(a.copy())  # same pixels, another object: a hit
    pred.set_image(np.asarray(a))
    assert pred.vision_runs == 1 and pred.cache_info().hits == 2
    pred.set_image(b)
    pred.set_image(c)  # evicts a (least recently used)
    assert pred.cache_info().currsize == 2 and pred.vision_runs == 3
    pred.set_image(a)
    assert pred.vision_runs == 4
    assert pred.cache_info().misses == 4  # a, b, c, then a again after its eviction
    p1 = pred.predict(["the dog"])[0]
    assert p1.timings["vision"] > 0.0  # this image's features were computed by the last set_image
    pred.set_image(a)  # now a hit: the vision graph did not run for it
    p2 = pred.predict(["the dog"])[0]
    assert p2.timings["vision"] == 0.0 and pred.vision_runs == 4 and pred.cache_info().hits == 3
    off = Predictor.from_artifacts(tiny.folder, cache_size=0, threads=1)
    off.set_image(a)
    off.set_image(a)
    assert off.vision_runs == 2 and off.cache_info().currsize == 0


def test_set_image_then_many_predicts(predictor):
    im = photo(90, 60, seed=7)
    runs = predictor.vision_runs
    emb = predictor.set_image(im)
    assert emb.size == (60, 90)
    first = predictor.predict("the dog")
    second = predictor.predict(["the dog", "red car"])
    assert predictor.vision_runs <= runs + 1
    np.testing.assert_array_equal(first[0].mask, second[0].mask)
    predictor.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict("the dog")


def test_eight_threads_equal_serial(predictor):
    jobs = [(photo(60 + 8 * i, 50 + 4 * i, seed=20 + i), TEXTS[i % 3 : i % 3 + 3]) for i in range(8)]
    serial = [predictor.predict_image(im, texts) for im, texts in jobs]
    results: dict[int, list] = {}
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        im, texts = jobs[i]
        for _ in range(3):  # set_image/predict per thread, then the stateless call
            predictor.set_image(im)
            results[i] = predictor.predict(texts)
            results[i] = predictor.predict_image(im, texts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        for a, b in zip(serial[i], results[i]):
            np.testing.assert_array_equal(a.mask, b.mask)
            np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)


# -- pre-processing ------------------------------------------------------------------------------------


def test_exif_rotation_gives_rotated_mask(tmp_path, predictor):
    im = photo(80, 48, seed=4)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif, quality=95)
    (p,) = predictor.predict_image(path, "the dog")
    assert p.mask.shape == (80, 48)  # displayed upright: 48 wide, 80 high
    upright = load_image(path)
    (q,) = predictor.predict_image(upright, "the dog")
    np.testing.assert_array_equal(p.mask, q.mask)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16", "LA", "CMYK"])
def test_image_modes(tmp_path, predictor, mode):
    base = photo(50, 40, seed=8)
    if mode == "I;16":
        im = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        assert im.mode.startswith("I;16")
    elif mode == "P":
        im = base.convert("P", palette=Image.ADAPTIVE)
    else:
        im = base.convert(mode)
    ext = "jpg" if mode == "CMYK" else "png"
    path = tmp_path / f"img.{ext}"
    im.save(path)
    for source in (path, Image.open(path)):
        (p,) = predictor.predict_image(source, "the red car")
        assert p.mask.shape == (40, 50)


def test_numpy_inputs(predictor):
    rgb = np.asarray(photo(40, 30, seed=9))
    (a,) = predictor.predict_image(rgb, "the dog")
    (b,) = predictor.predict_image(Image.fromarray(rgb), "the dog")
    np.testing.assert_array_equal(a.mask, b.mask)
    assert predictor.predict_image(rgb[..., 0], "the dog")[0].mask.shape == (30, 40)
    with pytest.raises(ImageError):
        predictor.predict_image(rgb.astype(np.float64), "the dog")
    with pytest.raises(ImageError, match="zero size"):
        predictor.predict_image(np.zeros((0, 5, 3), np.uint8), "the dog")


# -- text ----------------------------------------------------------------------------------------------


def test_long_text_truncated_with_warning_and_unknown_words(predictor):
    long = " ".join(["the big dog"] * 9)  # 27 words
    with pytest.warns(TextTruncatedWarning, match="27 words; only the first 20"):
        (p,) = predictor.predict_image(photo(), long)
    assert p.truncated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (q,) = predictor.predict_image(photo(), "the zebra near a dog")
    assert not q.truncated and q.unknown_words == ["zebra", "near", "a"]
    # truncation keeps the first 20 words exactly
    (r,) = predictor.predict_image(photo(), " ".join(["the big dog"] * 9)[: len("the big dog ") * 6 + len("the big")])
    np.testing.assert_allclose(p.probs, r.probs, atol=1e-6)


@pytest.mark.parametrize("texts", ["", "   ", "...", [], ["the dog", "!!"]])
def test_empty_text_refused(predictor, texts):
    with pytest.raises(TextError):
        predictor.predict_image(photo(), texts)


# -- artifacts -----------------------------------------------------------------------------------------


def test_manifest_errors(tiny, tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        Artifacts.open(tmp_path)
    with pytest.raises(ArtifactError, match="no such folder"):
        Artifacts.open(tmp_path / "missing")
    folder = copy_export(tiny, tmp_path)
    m = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**m, "format_version": 2}))
    with pytest.raises(ArtifactError, match="format_version 2 is not supported"):
        Predictor.from_artifacts(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a readable JSON"):
        Artifacts.open(folder)
    del m["graphs"]
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="manifest is invalid: manifest: required field 'graphs' is missing"):
        Artifacts.open(folder)


def test_checksum_checked_when_graph_is_loaded(tiny, tmp_path):
    folder = copy_export(tiny, tmp_path)
    with open(folder / "end_to_end.onnx", "ab") as f:
        f.write(b"\0")
    Predictor.from_artifacts(folder, mode="split", threads=1)  # the split graphs are intact
    with pytest.raises(ArtifactError, match="end_to_end.onnx: sha256 .* does not match"):
        Predictor.from_artifacts(folder, mode="end_to_end")
    (folder / "vision.onnx").unlink()
    with pytest.raises(ArtifactError, match="vision.onnx: file named by the manifest is missing"):
        Predictor.from_artifacts(folder)
    with pytest.raises(ArtifactError, match="no 'vision_fp16' graph"):
        Predictor.from_artifacts(tiny.folder, precision="fp16")


def test_fp16_precision_loads_the_fp16_graphs(tiny, tmp_path):
    """precision="fp16" reads the `*_fp16` manifest entries (here: the FP32 files under those names)."""
    folder = copy_export(tiny, tmp_path)
    m = json.loads((folder / "manifest.json").read_text())
    m["graphs"].update({f"{k}_fp16": {**g, "precision": "fp16"} for k, g in list(m["graphs"].items())})
    (folder / "manifest.json").write_text(json.dumps(m))
    pred = Predictor.from_artifacts(folder, precision="fp16", threads=1)
    assert sorted(r.name for r in pred.runners.values()) == ["fusion_decoder_fp16", "language_fp16", "vision_fp16"]
    assert pred.predict_image(photo(), "the dog")[0].mask.shape == (56, 80)
    with pytest.raises(ValueError, match="precision must be"):
        Predictor.from_artifacts(folder, precision="int4")
    with pytest.raises(ArtifactError, match="no 'vision_int8' graph"):  # a precision this export lacks
        Predictor.from_artifacts(folder, precision="int8")


# -- visualisation -------------------------------------------------------------------------------------


def test_save_mask_and_overlay(tmp_path, predictor):
    im = photo(64, 40, seed=2)
    (p,) = predictor.predict_image(im, "the dog")
    save_mask(tmp_path / "m.png", p.mask)
    save_overlay(tmp_path / "o.png", im, p.mask)
    m = np.asarray(Image.open(tmp_path / "m.png"))
    assert m.shape == (40, 64) and set(np.unique(m)) <= {0, 255}
    np.testing.assert_array_equal(m == 255, p.mask)
    o = Image.open(tmp_path / "o.png")
    assert o.size == im.size and o.mode == "RGB"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.png", "o.png"]  # no temporary files left


# -- torch-free ----------------------------------------------------------------------------------------


def test_runtime_imports_and_predicts_without_torch(tiny, tmp_path):
    photo(50, 30).save(tmp_path / "x.png")
    code = textwrap.dedent(
        f"""
        import sys
        for name in ("torch", "onnx", "tensorrt", "cuda"):
            sys.modules[name] = None  # any import of these now raises ImportError
        import restr.runtime
        assert "onnxruntime" not in sys.modules, "onnxruntime is imported lazily"
        from restr.runtime import Predictor
        p = Predictor.from_artifacts({str(tiny.folder)!r}, threads=1)
        (pred,) = p.predict_image({str(tmp_path / "x.png")!r}, "the dog")
        assert pred.mask.shape == (30, 50)
        from restr.runtime import cli  # the CLI module too
        leaked = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "tensorrt") and sys.modules[m] is not None]
        assert not leaked, leaked
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


# -- TensorRT ------------------------------------------------------------------------------------------

MACHINE = {"tensorrt_version": "10.13.0.35", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_sidecar_check_accepts_matching_and_refuses_others():
    sidecar = {
        **MACHINE,
        "profiles": {
            "image": {"min": [1, 3, S, S], "opt": [1, 3, S, S], "max": [8, 3, S, S]},
            "words": {"min": [1, 20], "opt": [4, 20], "max": [16, 20]},
        },
    }
    check_sidecar(sidecar, **MACHINE)
    check_sidecar(sidecar, **{**MACHINE, "compute_capability": (9, 0), "gpu_name": "NVIDIA  H100 80GB HBM3"})
    assert profile_max_batch(sidecar) == 8
    with pytest.raises(
        EngineMismatchError, match=r"built with TensorRT 10.13.0.35, this machine has TensorRT 11.0.0.1; .*rebuild"
    ):
        check_sidecar(sidecar, **{**MACHINE, "tensorrt_version": "11.0.0.1"})
    with pytest.raises(EngineMismatchError, match="built for NVIDIA H100 80GB HBM3 .* this GPU is NVIDIA L4"):
        check_sidecar(sidecar, **{**MACHINE, "gpu_name": "NVIDIA L4", "compute_capability": "8.9"})
    with pytest.raises(EngineMismatchError, match="compute capability 8.0"):
        check_sidecar(sidecar, **{**MACHINE, "compute_capability": [8, 0]})
    with pytest.raises(EngineMismatchError, match="lacks"):
        check_sidecar({"gpu_name": "x"}, **MACHINE)
    assert issubclass(EngineMismatchError, ArtifactError)


def test_tensorrt_backend_needs_an_engine(tiny):
    with pytest.raises(ArtifactError, match="no 'vision_fp16' TensorRT engine"):
        Predictor.from_artifacts(tiny.folder, backend="tensorrt", precision="fp16", mode="split")


@pytest.fixture()
def fake_tensorrt(monkeypatch):
    trt = fake_tensorrt_module()
    install_fake_tensorrt(monkeypatch, trt, FakeCudart())
    return trt


def _fake_engines(folder: Path, sidecar: dict, max_batch: int = 4) -> None:
    """Engines that are the ONNX graphs themselves (for the fake tensorrt), with sidecars."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("vision", "language", "fusion_decoder"):
        (folder / f"{key}.engine").write_bytes((folder / f"{key}.onnx").read_bytes())
        profiles = {s["name"]: {"min": [1], "opt": [max_batch], "max": [max_batch]} for s in manifest["graphs"][key]["inputs"]}
        (folder / f"{key}.engine.json").write_text(json.dumps({**sidecar, "profiles": profiles}))
        manifest["engines"][key] = {
            "file": f"{key}.engine",
            "sha256": sha256_of(folder / f"{key}.engine"),
            "sidecar": f"{key}.engine.json",
        }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_trt_runner_data_path_on_a_fake_tensorrt(tiny, tmp_path, fake_tensorrt):
    """TrtRunner's shapes, buffers, copies and per-thread contexts, with TensorRT and CUDA faked on the host."""
    folder = copy_export(tiny, tmp_path)
    _fake_engines(folder, {"tensorrt_version": "10.99.0", "gpu_name": "Fake GPU 80GB", "compute_capability": "9.0"})
    trt_pred = Predictor.from_artifacts(folder, backend="tensorrt", precision="fp32")
    ort_pred = Predictor.from_artifacts(folder, threads=1)
    assert type(trt_pred.runners["vision"]).__name__ == "TrtRunner" and trt_pred.max_batch == 4
    jobs = [(photo(60 + 8 * i, 50, seed=30 + i), TEXTS[i % 2 :]) for i in range(8)]  # 5-6 expressions: two chunks
    serial = [ort_pred.predict_image(im, t) for im, t in jobs]
    out: dict[int, list] = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, trt_pred.predict_image(*jobs[i]))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        for a, b in zip(serial[i], out[i]):
            np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
    runner = trt_pred.runners["vision"]
    assert 1 <= runner.contexts <= runner.max_contexts == 4  # a bounded pool, not one context per thread
    with pytest.raises(ValueError, match="above the engine's profile maximum 4"):
        trt_pred.runners["language"].run({"words": np.ones((5, 20), np.int64), "pad_mask": np.zeros((5, 20), bool)})
    for runner in trt_pred.runners.values():
        runner.close()


def test_bench_loads_engine_files_as_it_loads_graph_files(tiny, tmp_path, fake_tensorrt):
    """restr-bench's one path for single files: an engine beside its manifest, then alone."""
    from restr.benchmarks.loaders import load_target

    folder = copy_export(tiny, tmp_path)
    _fake_engines(folder, {"tensorrt_version": "10.99.0", "gpu_name": "Fake GPU 80GB", "compute_capability": "9.0"})
    onnx = load_target(folder / "vision.onnx")
    listed = load_target(folder / "vision.engine")
    assert (listed.kind, listed.graph, listed.device, listed.notes) == ("tensorrt", "vision", "cuda", [])
    assert listed.backend.startswith("tensorrt ") and listed.image_size == onnx.image_size == S
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("language.engine", "language.engine.json"):
        (bare / name).write_bytes((folder / name).read_bytes())
    alone = load_target(bare / "language.engine")
    assert (alone.kind, alone.graph, alone.precision) == ("tensorrt", "language", "fp16-strongly-typed")
    assert "shapes from the engine" in alone.notes[0] and alone.predictor is None and alone.split is None
    feeds = alone.feeds(2)
    np.testing.assert_allclose(
        alone.runner.run(feeds)["linguistic_features"],
        load_target(folder / "language.onnx").runner.run(feeds)["linguistic_features"],
        atol=1e-5,
    )
    for t in (onnx, listed, alone):
        t.runner.close()


def test_trt_engine_from_another_version_or_gpu_refused(tiny, tmp_path, fake_tensorrt):
    folder = copy_export(tiny, tmp_path)
    _fake_engines(folder, {"tensorrt_version": "10.3.0", "gpu_name": "Fake GPU 80GB", "compute_capability": "9.0"})
    with pytest.raises(EngineMismatchError, match="built with TensorRT 10.3.0, this machine has TensorRT 10.99.0"):
        Predictor.from_artifacts(folder, backend="tensorrt", precision="fp32")
    _fake_engines(folder, {"tensorrt_version": "10.99.0", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"})
    with pytest.raises(EngineMismatchError, match="built for NVIDIA L4 .* this GPU is Fake GPU 80GB"):
        Predictor.from_artifacts(folder, backend="tensorrt", precision="fp32")


def test_trt_runner_uses_only_names_in_cuda_python():
    """The cuda.bindings.runtime names trt_runner.py calls exist (where cuda-python is installed)."""
    import functools
    import re

    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed (pip install cuda-python)")
    source = (Path(__file__).resolve().parents[1] / "runtime" / "trt_runner.py").read_text()
    names = set(re.findall(r"cudart\.(\w+(?:\.\w+)?)", source))
    assert {"cudaMalloc", "cudaMemcpyAsync", "cudaStreamSynchronize"} <= names
    missing = []
    for name in sorted(names):
        try:
            functools.reduce(getattr, name.split("."), cudart)
        except AttributeError:
            missing.append(name)
    assert not missing, f"not in cuda.bindings.runtime: {missing}"


# -- the device path (bound buffers, buckets, one image slot), exercised on the CPU ------------------


def _bound_predictor(folder, cache_size=8, mode="split"):
    """A Predictor whose model runners use bucketed bound buffers: the GPU path's code, on the CPU."""
    from restr.runtime.runners import OrtRunner

    art = Artifacts.open(folder)
    stages = ("vision", "language", "fusion_decoder") if mode == "split" else ("end_to_end",)
    runners = {s: OrtRunner(art, art.graph(s), threads=1, max_batch=art.max_batch, bind=True) for s in stages}
    processing = {k: OrtRunner(art, art.graph(k), threads=1, bind=True) for k in ("preprocess", "postprocess")}
    return Predictor(art, runners, art.vocabulary(), cache_size=cache_size, processing=processing)


@pytest.mark.parametrize("mode", ["split", "end_to_end"])
def test_device_path_equals_host_path(tiny, predictor, mode):
    """Buckets padded past the batch (6 expressions: buckets 4 and 2), the image slot handed between
    images with host copies, and results equal to the plain host path."""
    from restr.runtime.paths import DevicePath, HostPath

    bound = _bound_predictor(tiny.folder, mode=mode)
    assert isinstance(bound.path, DevicePath) and isinstance(predictor.path, HostPath)
    a, b = photo(80, 56, seed=1), photo(64, 96, seed=2)
    emb_a = bound.embed(a)
    emb_b = bound.embed(b)  # takes the slot: emb_a (alive) gets a host copy
    assert emb_a.features is not None and emb_b.features is None
    first = next(iter(bound.runners.values()))  # its own run() must not touch the predictor's buffers
    first.run({s.name: np.zeros(s.concrete(1), s.dtype) for s in first.input_specs})
    for emb, im in ((emb_a, a), (emb_b, b), (emb_a, a)):
        got = bound.predict_embedding(emb, TEXTS)
        want = predictor.predict_image(im, TEXTS)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.mask, w.mask)
            np.testing.assert_allclose(g.probs, w.probs, atol=1e-5)
            assert g.area == w.area and g.score == pytest.approx(w.score, abs=1e-5)
    enc = bound.encode_text(TEXTS[:3])
    pixel, _, _ = bound.decode(emb_b, enc.words, enc.pad_mask)
    ref, _, _ = predictor.decode(predictor.embed(b), enc.words, enc.pad_mask)
    np.testing.assert_allclose(pixel, ref, atol=1e-5)


def test_device_path_photo_sizes_bound_and_unbound_agree_with_the_host_path(tiny, predictor, monkeypatch):
    """The processing graphs' per-size bindings (one size here) and the unbound runs of further sizes
    give the host path's results, for thresholds that change between calls on the same binding, and
    two predictors on the same runners keep their bindings apart."""
    import restr.runtime.paths as paths

    monkeypatch.setattr(paths, "PHOTO_SIZES", 1)
    bound = _bound_predictor(tiny.folder, cache_size=0)
    other = Predictor(bound.artifacts, bound.runners, bound.vocab, cache_size=0, processing=bound.processing)
    a, b, a2 = photo(80, 56, seed=1), photo(64, 96, seed=2), photo(80, 56, seed=3)
    for im, thr in ((a, 0.5), (b, 0.3), (a2, 0.2), (a, 0.7), (b, 0.5)):
        for p in (bound, other):
            got = p.predict_image(im, TEXTS[:3], threshold=thr)
            want = predictor.predict_image(im, TEXTS[:3], threshold=thr)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g.mask, w.mask)
                np.testing.assert_allclose(g.probs, w.probs, atol=1e-5)
                assert g.area == w.area and g.score == pytest.approx(w.score, abs=1e-5)
    assert list(bound.path.photos) == [(56, 80)] and list(other.path.photos) == [(56, 80)]


def test_device_path_keeps_no_host_copy_of_a_dropped_embedding(tiny):
    bound = _bound_predictor(tiny.folder, cache_size=0)
    first = bound.embed(photo(80, 56, seed=1))
    ref = weakref.ref(first)
    del first
    bound.embed(photo(64, 96, seed=2))  # the slot changes hands; nobody holds the first embedding
    assert ref() is None


def test_runner_protocol_and_closing(tiny):
    from restr.runtime.runners import OrtRunner, Runner, RunnerClosedError

    art = Artifacts.open(tiny.folder)
    runner = OrtRunner(art, art.graph("language"), threads=1)
    assert isinstance(runner, Runner) and runner.backend == "onnxruntime" and runner.device == "cpu" and runner.max_batch is None
    timings = {}
    out = runner.run({"words": np.ones((2, 20), np.int64), "pad_mask": np.arange(20)[None].repeat(2, 0) >= 5}, timings)
    assert out["linguistic_features"].shape[0] == 2 and timings["compute"] > 0
    runner.close()
    runner.close()  # idempotent
    with pytest.raises(RunnerClosedError, match="language"):
        runner.run({"words": np.ones((1, 20), np.int64), "pad_mask": np.zeros((1, 20), bool)})


def test_one_table_of_graph_inputs_and_outputs(tiny):
    """formats.GRAPH_IO is what the exporter writes, in order, and what the C++ host compiles in."""
    from restr.runtime.formats import GRAPH_IO, cpp_header, graph_by_inputs, graph_io

    art = Artifacts.open(tiny.folder)
    sizes = {"S": art.image_size, "L": art.max_words, "N": art.num_patches, "D": art.feature_width}
    for key, info in art.graphs.items():
        assert (info.inputs, info.outputs) == graph_io(key, sizes), key
    assert graph_by_inputs(["pad_mask", "words"]) == "language" and graph_by_inputs(["rgb"]) is None
    assert set(GRAPH_IO) == set(art.graphs)
    header = Path(__file__).parents[1] / "runtime" / "cpp" / "src" / "graph_io.hpp"
    assert header.read_text(encoding="utf-8") == cpp_header(), (
        "runtime/cpp/src/graph_io.hpp is stale: python -c 'from restr.runtime.formats import cpp_header; "
        'print(cpp_header(), end="")\' > runtime/cpp/src/graph_io.hpp'
    )


def test_artifacts_from_bare_graphs_run_like_the_export(tiny, tmp_path):
    """A manifest-less Artifacts: sizes from the graph files, each file still checked when loaded."""
    from restr.runtime.artifacts import GraphInfo, sha256_file
    from restr.runtime.runners import make_runner

    art = Artifacts.open(tiny.folder)
    bare = Artifacts.from_graphs(tiny.folder, [art.graph("vision"), art.graph("language")], patch_size=art.patch_size)
    for field in ("image_size", "patch_size", "max_words", "num_patches", "feature_width"):
        assert getattr(bare, field) == getattr(art, field), field
    assert bare.manifest == {} and bare.mean == bare.std == (0.5, 0.5, 0.5) and bare.engines == {}
    assert Artifacts.from_graphs(tmp_path).max_words == 20 and Artifacts.from_graphs(tmp_path, max_words=7).max_words == 7
    words = {"words": np.ones((1, art.max_words), np.int64), "pad_mask": np.zeros((1, art.max_words), bool)}
    np.testing.assert_array_equal(
        make_runner(bare, "language", threads=1).run(words)["linguistic_features"],
        make_runner(art, "language", threads=1).run(words)["linguistic_features"],
    )
    info = art.graph("language")
    wrong = GraphInfo(key="language", path=info.path, sha256=sha256_file(tiny.folder / "vision.onnx"), inputs=info.inputs)
    with pytest.raises(ArtifactError, match="sha256"):
        make_runner(Artifacts.from_graphs(tiny.folder, [wrong]), "language", threads=1)


def test_bad_thresholds_and_too_many_expressions_are_refused(tiny, predictor):
    im = photo()
    for bad in (float("nan"), -0.1, 1.5, "x"):
        with pytest.raises(ValueError, match="threshold"):
            predictor.predict_image(im, "the dog", threshold=bad)
    with pytest.raises(ValueError, match="threshold"):
        Predictor.from_artifacts(tiny.folder, threshold=2.0)
    capped = Predictor.from_artifacts(tiny.folder, threads=1)
    capped.max_expressions = 3
    with pytest.raises(TextError, match="at most 3"):
        capped.predict_image(im, ["the dog"] * 4)
    (p,) = predictor.predict_image(im, "the dog", probs=False)
    assert p.probs is None and p.mask.shape == (im.height, im.width)


def test_image_batch_may_be_one_or_the_batch():
    from restr.runtime.artifacts import TensorSpec
    from restr.runtime.runners import prepare_feeds

    specs = (TensorSpec("visual_features", "float32", ("image_batch", 4, 2)), TensorSpec("words", "int64", ("batch", 3)))
    for v in (1, 5):
        _, batch = prepare_feeds(specs, {"visual_features": np.zeros((v, 4, 2)), "words": np.zeros((5, 3))}, "g")
        assert batch == 5
    with pytest.raises(ValueError, match="must be 1 \\(shared\\) or the batch 5"):
        prepare_feeds(specs, {"visual_features": np.zeros((2, 4, 2)), "words": np.zeros((5, 3))}, "g")


# -- many images: predict_many / embed_many, on the host path and the device path's code -------------


def _assert_same_predictions(got, want, probs=True):
    assert [p.text for p in got] == [p.text for p in want]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.mask, w.mask)
        if probs:
            np.testing.assert_allclose(g.probs, w.probs, atol=1e-5)
        assert g.area == w.area and g.score == pytest.approx(w.score, abs=1e-5)
        assert g.patch_score == pytest.approx(w.patch_score, abs=1e-5)
        assert (g.unknown_words, g.no_known_words, g.truncated) == (w.unknown_words, w.no_known_words, w.truncated)


def _bulk_requests(tmp_path):
    """Requests that exercise every way predict_many plans batches (chunks of max_batch 4), with bad
    ones in the middle: one expression each about four new images (rows 0-3 of one image batch),
    several expressions about one image then one each about three more (rows 1-3), repeated images
    (the cache), photos of several sizes, a missing file, a file that is not an image, an empty
    expression."""
    photos = [photo(80, 56, seed=1), photo(64, 96, seed=2), photo(96, 96, seed=3), photo(50, 40, seed=4), photo(71, 33, seed=5)]
    more = [photo(44, 60, seed=6), photo(90, 30, seed=7), photo(33, 33, seed=8)]
    path = tmp_path / "p1.png"
    photos[1].save(path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return [
        (photos[0], ["the dog"]),
        (path, "red car"),
        (photos[2], ["ball"]),
        (photos[3], ["the man in the blue shirt"]),
        (photos[4], TEXTS),
        (more[0], ["the dog"]),
        (more[1], ["the big cat on the bench"]),
        (more[2], ["small tree"]),
        (tmp_path / "missing.png", ["the dog"]),
        (photos[0], ["the big cat on the bench"]),
        (photos[2], ["small tree", "ball"]),
        (tmp_path / "broken.png", ["the dog"]),
        (photos[1], ["   "]),
        (photos[3], ["the dog"]),
        (photos[4], ["red car"]),
        (path, ["the zebra"]),
    ]


@pytest.mark.parametrize("path", ["host", "device"])
def test_predict_many_equals_predict_image_request_by_request(tiny, predictor, tmp_path, path):
    """Each request's masks equal predict_image's (so no row of a batch reads another image's
    features or letterbox), in input order, with the bad requests reported in place and the run
    going on past them."""
    requests = _bulk_requests(tmp_path)
    many = (
        _bound_predictor(tiny.folder, cache_size=4)
        if path == "device"
        else Predictor.from_artifacts(tiny.folder, threads=1, cache_size=4)
    )
    results = list(many.predict_many(iter(requests), probs=True, workers=2))
    assert [r.index for r in results] == list(range(len(requests)))
    errors = {r.index: r.error for r in results if r.error is not None}
    assert sorted(errors) == [8, 11, 12]
    assert isinstance(errors[8], ImageError) and "no such file" in str(errors[8])
    assert isinstance(errors[11], ImageError) and isinstance(errors[12], TextError)
    for r in results:
        if r.error is None:
            image, texts = requests[r.index]
            want = predictor.predict_image(image, texts)
            assert r.size == want[0].mask.shape and r.texts == ([texts] if isinstance(texts, str) else texts)
            _assert_same_predictions(r.predictions, want)
    assert many.vision_runs < len(requests) - len(errors)  # the repeated images came from the cache


def test_predict_many_without_workers_or_cache_and_without_probs(tiny, predictor, tmp_path):
    requests = [(im, t) for im, t in _bulk_requests(tmp_path) if not isinstance(im, Path) and t != ["   "]]
    many = Predictor.from_artifacts(tiny.folder, threads=1, cache_size=0)
    for r in many.predict_many(requests, workers=0):
        assert r.error is None and all(p.probs is None for p in r.predictions)
        _assert_same_predictions(r.predictions, predictor.predict_image(*requests[r.index]), probs=False)
    assert many.vision_runs == len(requests)


def test_predict_many_streams(predictor):
    """At most two batches are read ahead of the one being answered: a long input in flat memory."""
    pulled = []

    def requests():
        for i in range(100):
            pulled.append(i)
            yield photo(40 + i % 7, 30, seed=i), ["the dog"]

    stream = predictor.predict_many(requests())
    first = next(stream)
    assert first.index == 0 and len(pulled) <= 3 * predictor.max_batch
    stream.close()


def test_embed_many_equals_embed(tiny, predictor):
    images = [photo(80, 56, seed=1), photo(64, 96, seed=2), photo(96, 96, seed=3), photo(50, 40, seed=4), photo(71, 33, seed=5)]
    for p in (Predictor.from_artifacts(tiny.folder, threads=1, cache_size=0), _bound_predictor(tiny.folder, cache_size=0)):
        embs = list(p.embed_many(images))
        assert p.vision_runs == len(images)
        for emb, im in zip(embs, images):
            want = predictor.embed(im)
            assert emb.letterbox == want.letterbox
            enc = p.encode_text(TEXTS[:2])
            np.testing.assert_allclose(
                p.decode(emb, enc.words, enc.pad_mask)[0], predictor.decode(want, enc.words, enc.pad_mask)[0], atol=1e-5
            )
    with pytest.raises(ImageError):
        list(predictor.embed_many([images[0], np.zeros((0, 4, 3), np.uint8)]))


def test_an_embedding_from_another_export_is_refused(tiny, predictor, tmp_path):
    """Features of another export's image graph mean nothing to this decoder: refused in one line,
    on both paths; a second predictor of the same export takes them."""
    from restr.export.pipeline import ExportOptions, Source, export_artifacts
    from restr.runtime.predictor import EmbeddingError

    other = tmp_path / "other"
    export_artifacts(
        Source(make_tiny_model(tiny.vocab, seed=1), tiny.vocab, {}, None, False),
        other,
        ExportOptions(max_batch=4, precisions=("fp32",), engine=False, verify=False, progress=False, threads=1),
        log=lambda _: None,
    )
    im = photo(80, 56, seed=1)
    for theirs in (Predictor.from_artifacts(other, threads=1), _bound_predictor(other)):
        emb = theirs.embed(im)
        with pytest.raises(
            EmbeddingError,
            match=r"^this image embedding was made by another export \(its vision graph has sha256 [0-9a-f]{12}\.\.\., "
            r"this predictor's [0-9a-f]{12}\.\.\.\): embed the image again with this predictor$",
        ):
            predictor.predict_embedding(emb, "the dog")
        with pytest.raises(EmbeddingError):
            enc = predictor.encode_text("the dog")
            predictor.decode(emb, enc.words, enc.pad_mask)
    same = Predictor.from_artifacts(tiny.folder, threads=1)
    _assert_same_predictions(predictor.predict_embedding(same.embed(im), TEXTS), predictor.predict_image(im, TEXTS))
