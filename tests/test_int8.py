"""INT8 graphs: calibrated static QDQ export, its Q/DQ layout, its agreement with FP32, the inputs it
refuses, and the hosts that load it."""

from __future__ import annotations

import json
import pickle

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper
from PIL import Image

from conftest import decisive_tiny_model
from restr.checkpoint import save_checkpoint
from restr.export.cli import cli
from restr.export.int8 import KEEP_FLOAT, INT8Error, check_int8, weight_matmuls
from restr.export.pipeline import ExportError, ExportOptions, export_artifacts, load_source
from restr.export.verify import compare_probs, generated_inputs
from restr.runtime import ArtifactError, Predictor
from restr.runtime.artifacts import Artifacts
from restr.runtime.schema import first_error, manifest_schema

GRAPHS = ("end_to_end", "vision", "language", "fusion_decoder")
FAST = dict(
    calibration="synthetic",
    calibration_size=16,
    calibration_method="minmax",
    samples=3,
    int8_samples=3,
    threads=1,
    progress=False,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model, vocab = decisive_tiny_model()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, vocab, meta={"step": 0, "note": "random weights for tests"})
    return path


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "export"
    manifest = export_artifacts(load_source(ckpt), out, ExportOptions(precisions=("fp32", "int8"), **FAST))
    return out, manifest


def test_manifest_describes_the_int8_graphs(exported):
    out, m = exported
    assert first_error(manifest_schema(), m) is None
    assert m["int8"]["calibration"]["data"] == "synthetic:train" and m["int8"]["calibration"]["samples"] == 16
    assert m["int8"]["calibration"]["method"] == "minmax"
    for g in GRAPHS:
        entry = m["graphs"][f"{g}_int8"]
        assert entry["precision"] == "int8" and entry["quantization"]["format"] == "QDQ"
        assert entry["quantization"]["method"] == "minmax"
        assert entry["bytes"] < m["graphs"][g]["bytes"]  # INT8 weights
    assert not any(k.endswith("_fp16") for k in m["graphs"])  # only what was asked for
    checks = m["verification"]["checks"]
    for name in ("end_to_end_int8", "fusion_decoder_int8", "split_vs_end_to_end_int8", "split_vs_repeated_image_int8"):
        assert checks[name]["passed"] is True, (name, checks[name])
    assert checks["end_to_end_int8"]["reference"] == "end_to_end (fp32, onnxruntime)"
    assert checks["vision_int8"]["passed"] is None and checks["vision_int8"]["cosine"] > 0.99  # reported, not judged


def test_qdq_only_at_the_inputs_of_weight_matmuls(exported):
    """Q/DQ pairs feed the matrix products with a weight and nothing else: LayerNorm, Softmax, GELU
    and the residual Adds take float inputs; the attention products stay float."""
    out, m = exported
    for g in GRAPHS:
        proto = onnx.load(str(out / f"{g}_int8.onnx"))
        fp32 = onnx.load(str(out / f"{g}.onnx"), load_external_data=False)
        summary = check_int8(proto)
        kept = [n for n in weight_matmuls(fp32) if any(k in n for k in KEEP_FLOAT)]
        assert summary["ops"]["MatMul"]["int8"] == len(weight_matmuls(fp32)) - len(kept) > 0
        assert m["graphs"][f"{g}_int8"]["quantization"]["kept_float"] == sorted(kept)
        assert bool(kept) == (g in ("vision", "end_to_end"))  # the patch embedding
        for op in ("LayerNormalization", "Softmax", "Erf", "Add"):
            assert set(summary["ops"].get(op, {"float": 0})) == {"float"}, (g, op)
        producer = {o: n for n in proto.graph.node for o in n.output}
        for n in proto.graph.node:
            if n.op_type in ("LayerNormalization", "Softmax", "Erf", "Add", "Sigmoid"):
                assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in n.input), (g, n.name)
        assert summary == {k: v for k, v in m["graphs"][f"{g}_int8"]["quantization"].items() if k in summary}


def _rewired(proto: onnx.ModelProto, op: str) -> onnx.ModelProto:
    """`proto` with the first `op` node reading a dequantized activation (a Q/DQ in front of it)."""
    bad = onnx.ModelProto.FromString(proto.SerializeToString())
    dq = next(
        n for n in bad.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in {t.name for t in bad.graph.initializer}
    )
    target = next(n for n in bad.graph.node if n.op_type == op)
    target.input[0] = dq.output[0]
    return bad


def test_layout_check_refuses_qdq_around_float_ops_and_asymmetric_zero_points(exported):
    out, _ = exported
    proto = onnx.load(str(out / "vision_int8.onnx"))
    check_int8(proto)
    for op in ("LayerNormalization", "Softmax"):
        with pytest.raises(INT8Error, match="stays float"):
            check_int8(_rewired(proto, op))
    shifted = onnx.ModelProto.FromString(proto.SerializeToString())
    zp = next(t for t in shifted.graph.initializer if t.name.endswith("_zero_point") and not t.dims)
    zp.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), zp.name))
    with pytest.raises(INT8Error, match="zero point"):
        check_int8(shifted)
    fp32 = onnx.load(str(out / "vision.onnx"))
    with pytest.raises(INT8Error, match="no matrix product"):
        check_int8(fp32)


def test_int8_agrees_with_fp32_through_the_runtime(exported):
    """The Python runtime runs the INT8 split graphs; their masks match the FP32 graphs' on inputs
    that were not calibrated on (decisive pixels: the rescaled head makes most pixels confident)."""
    out, m = exported
    fp32, int8 = (Predictor.from_artifacts(out, precision=p, cache_size=0, threads=1) for p in ("fp32", "int8"))
    assert [r.name for r in int8.runners.values()] == ["vision_int8", "language_int8", "fusion_decoder_int8"]
    feeds = generated_inputs(m["image_size"], m["max_words"], m["vocab"]["size"], (0.5,) * 3, (0.5,) * 3, n=4, seed=11)
    ref, got = (
        np.stack(
            [
                p.runners["fusion_decoder"].run(
                    {
                        "visual_features": p.runners["vision"].run({"image": feeds["image"][i : i + 1]})["visual_features"],
                        "linguistic_features": p.runners["language"].run({k: feeds[k][i : i + 1] for k in ("words", "pad_mask")})[
                            "linguistic_features"
                        ],
                        "pad_mask": feeds["pad_mask"][i : i + 1],
                    }
                )["pixel_probs"][0]
                for i in range(4)
            ]
        )
        for p in (fp32, int8)
    )
    r = compare_probs(ref, got)
    assert r["decisive_share"] > 0.5 and r["same_side"] > 0.97 and r["mask_iou"] > 0.95, r
    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    a, b = fp32.predict_image(rgb, ["the red circle"])[0], int8.predict_image(rgb, ["the red circle"])[0]
    assert b.mask.shape == a.mask.shape == (50, 70)


def test_int8_request_on_an_export_without_int8_graphs(exported, tmp_path):
    out, m = exported
    folder = tmp_path / "fp32-only"
    folder.mkdir()
    for f in out.iterdir():
        if "_int8" not in f.name:
            (folder / f.name).write_bytes(f.read_bytes())
    manifest = dict(m, graphs={k: g for k, g in m["graphs"].items() if not k.endswith("_int8")})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="no 'vision_int8' graph"):
        Predictor.from_artifacts(folder, precision="int8")


def test_bench_loads_the_int8_graphs_beside_fp32(exported):
    from restr.benchmarks.loaders import load_target

    out, _ = exported
    targets = [load_target(f"{out}#{p}") for p in ("fp32", "int8")]
    assert [t.precision for t in targets] == ["fp32", "int8"]
    assert targets[1].runner.name == "end_to_end_int8"
    feeds = targets[1].feeds(2)
    assert targets[1].runner.run(feeds)["pixel_probs"].shape[0] == 2


# ------------------------------------------------------------------------------------ refused


def _run(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _one_line_exit_2(result, needle: str):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output


def _refer_folder(root, sentences, with_image: bool = True):
    """A refer-layout data set: one 40x30 image, one object, `sentences` about it (train split)."""
    folder = root / "refer"
    folder.mkdir(parents=True)
    (folder / "images").mkdir()  # where the loader looks for images
    if with_image:
        Image.new("RGB", (40, 30), (200, 20, 30)).save(folder / "images" / "img1.jpg")
    instances = {
        "images": [{"id": 1, "file_name": "img1.jpg", "height": 30, "width": 40}],
        "annotations": [
            {"id": 11, "image_id": 1, "segmentation": [[5, 4, 25, 4, 25, 20, 5, 20]], "bbox": [5, 4, 20, 16], "category_id": 1}
        ],
        "categories": [{"id": 1, "name": "dog", "supercategory": "x"}],
    }
    (folder / "instances.json").write_text(json.dumps(instances))
    sents = [{"sent": s, "raw": s, "tokens": s.split(), "sent_id": k} for k, s in enumerate(sentences)]
    refs = [
        {
            "ref_id": 1,
            "ann_id": 11,
            "image_id": 1,
            "split": "train",
            "sentences": sents,
            "sent_ids": [s["sent_id"] for s in sents],
            "category_id": 1,
            "file_name": "img1_11.jpg",
        }
    ]
    with open(folder / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return folder


@pytest.mark.parametrize("case", ["random weights", "no data set named", "no images", "no expressions", "no such folder"])
def test_calibration_that_cannot_be_had_is_refused(ckpt, tmp_path, case):
    out = tmp_path / "out"
    source = ["--ckpt", ckpt]
    extra, needle = [], "calibration"
    if case == "random weights":
        source, needle = ["--config", "restr-tiny"], "--calibration SPEC"
    elif case == "no data set named":
        needle = "names no data set"
    elif case == "no images":
        extra, needle = ["--calibration", _refer_folder(tmp_path, ["the red dog"], with_image=False)], "no readable images"
    elif case == "no expressions":
        extra, needle = ["--calibration", _refer_folder(tmp_path, ["", "  "])], "no expressions"
    else:
        extra = ["--calibration", tmp_path / "missing"]
    result = _run([*source, "--out", out, "--precision", "fp32", "--precision", "int8", "--no-progress", *extra])
    _one_line_exit_2(result, needle)
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_a_refer_folder_calibrates(ckpt, tmp_path):
    """--calibration PATH reads a refer-layout data set (its training split) and records it."""
    folder = _refer_folder(tmp_path, ["the red dog", "dog on the left"])
    options = ExportOptions(
        precisions=("fp32", "int8"), **{**FAST, "calibration": str(folder), "samples": 1, "int8_samples": 1}, verify=False
    )
    m = export_artifacts(load_source(ckpt), tmp_path / "out", options)
    assert m["int8"]["calibration"]["data"] == f"{folder}:train"
    assert m["int8"]["calibration"]["samples"] == 2 and m["int8"]["calibration"]["images"] == 1
    assert Artifacts.open(tmp_path / "out").graph("vision_int8").precision == "int8"
    with pytest.raises(ExportError, match="calibration-size"):
        export_artifacts(
            load_source(ckpt), tmp_path / "out2", ExportOptions(precisions=("fp32", "int8"), **{**FAST, "calibration_size": 0})
        )


def test_engines_from_the_int8_graphs_with_a_stand_in(exported, tmp_path, monkeypatch):
    """The INT8 graphs take the strongly typed build; a network parsed without Quantize/Dequantize
    layers (explicit quantization lost) is refused."""
    import shutil

    from conftest import FakeTensorRT
    from restr.export.tensorrt_build import EngineBuildError, build_engines

    out, m = exported
    folder = tmp_path / "exp"
    shutil.copytree(out, folder)
    gpu = {"gpu_name": "Fake GPU", "compute_capability": "8.9"}
    FakeTensorRT.calls = []
    entries = build_engines(
        folder, m, ["vision_int8"], 2, tmp_path / "cache", 1.0, log=lambda _: None, backends=(FakeTensorRT, gpu)
    )
    assert entries["vision_int8"]["precision"] == "int8-strongly-typed" and ("network", 1) in FakeTensorRT.calls
    assert json.loads((folder / "vision_int8.engine.json").read_text())["precision"] == "int8-strongly-typed"
    monkeypatch.setattr(FakeTensorRT, "layers", ("matmul",))
    with pytest.raises(EngineBuildError, match="explicit quantization lost"):
        build_engines(folder, m, ["language_int8"], 2, tmp_path / "cache", 1.0, log=lambda _: None, backends=(FakeTensorRT, gpu))


def test_the_commands_take_int8_as_users_type_it(exported, ckpt, tmp_path):
    """restr-predict and restr-eval --artifacts run the INT8 graphs by --precision int8, and
    restr-eval names the precision it scored (not fp32, not the engines' fp16)."""
    from restr.evaluate import main as restr_eval
    from restr.runtime.cli import main as restr_predict

    out, _ = exported
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    r = CliRunner().invoke(
        restr_predict,
        [
            "--artifacts",
            str(out),
            "--precision",
            "int8",
            "--image",
            str(image),
            "--text",
            "the red circle",
            "--out",
            str(tmp_path / "pred"),
            "--json",
            "-",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["graphs"] == {
        "vision": "vision_int8",
        "language": "language_int8",
        "fusion_decoder": "fusion_decoder_int8",
    }
    r = CliRunner().invoke(
        restr_eval,
        [
            "--artifacts",
            str(out),
            "--precision",
            "int8",
            "--data",
            "synthetic:test",
            "--limit",
            "6",
            "--json",
            str(tmp_path / "eval.json"),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "eval.json").read_text())["precision"] == "int8"
