"""restr-export: ONNX graphs (end-to-end and split, FP32 and mixed FP16), verification, manifest,
errors, and the engine path's shared code (TensorRT itself is absent here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from conftest import DECISIVE_WORDS as WORDS, FakeTensorRT, decisive_tiny_model
from restr.checkpoint import save_checkpoint
from restr.config import ReSTRConfig, get_config, get_config as _get_config
from restr.export import fp16 as fp16_mod
from restr.export.cli import cli
from restr.export.manifest import check_checksums, sha256_file
from restr.export.onnx_export import (
    GRAPHS,
    SHAPE_OPS,
    ExportCheckError,
    check_graph,
    count_layernorm_calls,
    example_inputs,
    graph_io,
    graph_module,
    op_counts,
)
from restr.export.pipeline import ExportOptions, export_artifacts, load_source
from restr.export.processing import processing_io
from restr.export.tensorrt_build import (
    ENGINE_PRECISION,
    EngineUnavailable,
    build_engines,
    engine_instructions,
    engine_support,
    profiles,
    sidecar,
    timing_cache_path,
)
from restr.export.verify import (
    Check,
    Rules,
    Tolerances,
    VerificationError,
    compare_probs,
    format_table,
    mask_iou,
    verification_body,
)
from restr.modeling import ReSTR
from restr.runtime.artifacts import Artifacts, check_consistency
from restr.runtime.formats import PROCESSING_GRAPHS
from restr.runtime.runners import make_runner
from restr.runtime.schema import first_error, manifest_schema
from restr.runtime.tokenizer import Vocabulary

S = _get_config("restr-tiny").image_size  # input side of the small model
N_V = _get_config("restr-tiny").num_patches


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    model, vocab = decisive_tiny_model()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, vocab, meta={"step": 0, "note": "random weights for tests"})
    return path


def _options(**kw) -> ExportOptions:
    base = dict(threads=1, progress=False)
    base.update(kw)
    return ExportOptions(**base)


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("exp") / "export"
    logs = []
    manifest = export_artifacts(load_source(ckpt=ckpt), out, _options(masks_meaningful=True), log=logs.append)
    return out, manifest


def _no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# ------------------------------------------------------------------------------- folder, manifest


def test_folder_and_manifest(exported, ckpt):
    out, m = exported
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["format_version"] == 1 and m["image_size"] == S and m["max_words"] == 20 and m["patch_size"] == 8
    assert m["num_patches"] == N_V and m["feature_width"] == 96 and m["max_batch"] == 8
    assert m["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert m["model"]["name"] == "restr-tiny" and m["model"]["random_weights"] is False
    assert ReSTRConfig.from_dict(m["model"]["config"]) == get_config("restr-tiny")
    assert m["model"]["checkpoint"]["sha256"] == sha256_file(ckpt)
    assert set(m["graphs"]) == set(GRAPHS) | {f"{g}_fp16" for g in GRAPHS} | set(PROCESSING_GRAPHS)
    io = graph_io(get_config("restr-tiny"))
    io.update(processing_io(S))
    for key, g in m["graphs"].items():
        base = key.removesuffix("_fp16")
        assert g["file"] == f"{key}.onnx" and (out / g["file"]).is_file()
        assert g["precision"] == ("fp16" if key.endswith("_fp16") else "fp32")
        assert g["opset"] >= 17 and g["op_counts"]["nodes"] > 0
        assert [t["name"] for t in g["inputs"]] == [t.name for t in io[base][0]]
        assert [t["name"] for t in g["outputs"]] == [t.name for t in io[base][1]]
        if base not in PROCESSING_GRAPHS:
            assert g["attention"] == "onnx"
            assert all(t["shape"][0] in ("batch", "image_batch") for t in g["inputs"] + g["outputs"])
    assert m["graphs"]["end_to_end"]["inputs"] == [
        {"name": "image", "dtype": "float32", "shape": ["batch", 3, S, S]},
        {"name": "words", "dtype": "int64", "shape": ["batch", 20]},
        {"name": "pad_mask", "dtype": "bool", "shape": ["batch", 20]},
    ]
    assert Vocabulary.load(out / "vocab.txt").itos == Vocabulary(WORDS).itos
    assert m["vocab"] == {
        "file": "vocab.txt",
        "size": len(WORDS) + 2,
        "sha256": sha256_file(out / "vocab.txt"),
        "placeholder": False,
        "tokenizer": "restr",
    }
    assert {"torch", "onnx", "onnxruntime", "exporter", "restr"} <= set(m["versions"])
    assert m["engines"] == {} and m["tensorrt"]["status"] in ("not built", "built")
    assert check_checksums(out, m) == []
    assert first_error(manifest_schema(), m) is None and check_consistency(m) is None  # what the runtime validates
    assert _no_leftovers(out.parent)


def test_checksums_catch_a_changed_file(exported, tmp_path):
    out, m = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "vision.onnx", "ab") as f:
        f.write(b"\0")
    (copy / "language_fp16.onnx").unlink()
    assert check_checksums(copy, m) == ["vision.onnx (sha256 mismatch)", "language_fp16.onnx (missing)"]


def test_verification_in_manifest(exported):
    _, m = exported
    v = m["verification"]
    assert v["enabled"] and v["passed"] and v["failures"] == []
    assert v["inputs"]["source"] == "generated" and v["masks_meaningful"] is True
    expected = set(GRAPHS) | {f"{g}_fp16" for g in GRAPHS} | {"split_vs_end_to_end", "split_vs_end_to_end_fp16"}
    expected |= {"split_vs_repeated_image", "split_vs_repeated_image_fp16"}
    assert set(v["checks"]) == expected
    assert v["processing"]["passed"] and v["processing"]["geometry_equal"]
    assert set(v["graphs"]) == set(m["graphs"]) and v["graphs"]["end_to_end"]["Shape"] == 0
    for name, c in v["checks"].items():
        assert c["batch_sizes"] == [3, 1], name
        # FP16 features have no criteria of their own: "not judged" (None), never a vacuous True
        assert c["passed"] is (None if name in ("vision_fp16", "language_fp16") else True), name
    tol = Tolerances()
    assert v["checks"]["end_to_end"]["max_abs_diff"] <= tol.fp32_max_abs_diff
    assert v["checks"]["split_vs_end_to_end"]["max_abs_diff"] <= tol.split_max_abs_diff
    fp16 = v["checks"]["end_to_end_fp16"]
    assert fp16["mask_iou"] >= tol.fp16_min_mask_iou and fp16["mean_abs_diff"] <= tol.fp16_max_mean_abs_diff
    assert fp16["decisive_pixels"] > 0 and fp16["same_side"] >= tol.fp16_min_same_side
    assert set(fp16["criteria"]) == {"mean_abs_diff", "decisive_share", "same_side", "mask_iou"}
    assert v["checks"]["split_vs_end_to_end_fp16"]["criteria"] == {"max_abs_diff": f"<= {tol.split_max_abs_diff:g}"}


# ------------------------------------------------------------------------------------ the graphs


def test_graph_contract(exported, ckpt):
    out, _ = exported
    model = load_source(ckpt=ckpt).model
    for g in GRAPHS:
        proto = onnx.load(str(out / f"{g}.onnx"))
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
        n_ln = sum(n.op_type == "LayerNormalization" for n in proto.graph.node)
        assert n_ln > 0 and n_ln == count_layernorm_calls(graph_module(model, g), example_inputs(model, g)), g
        for v in list(proto.graph.input) + list(proto.graph.output):
            want = "image_batch" if (g, v.name) == ("fusion_decoder", "visual_features") else "batch"
            assert v.type.tensor_type.shape.dim[0].dim_param == want, (g, v.name)


def test_graphs_carry_no_shape_arithmetic_and_no_redundant_casts(exported):
    """The graphs a GPU engine runs: no Shape nodes (ONNX Runtime's CUDA EP runs shape arithmetic on
    the CPU, which forbids CUDA graphs), a constant attention scale, reshapes to constant targets,
    and in FP16 one Cast per float input and output only."""
    out, m = exported
    for key, entry in m["graphs"].items():
        if key in PROCESSING_GRAPHS:
            continue
        proto = onnx.load(str(out / entry["file"]))
        ops = op_counts(proto)
        assert not any(ops.get(op) for op in SHAPE_OPS), (key, ops)
        assert ops.get("Sqrt", 0) == 0, key  # SDPA's default scale is sqrt of a shape
        init = {t.name: t for t in proto.graph.initializer}
        for node in proto.graph.node:
            if node.op_type == "Reshape":
                assert node.input[1] in init, (key, node.name)  # a constant target
        float_io = [
            v for v in (*proto.graph.input, *proto.graph.output) if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        ]
        if key.endswith("_fp16"):
            casts = [n for n in proto.graph.node if n.op_type == "Cast"]
            to_float = [n for n in casts if n.attribute[0].i in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
            bool_inputs = sum(v.type.tensor_type.elem_type == onnx.TensorProto.BOOL for v in proto.graph.input)
            assert len(to_float) == len(float_io) + bool_inputs, (key, len(to_float))
        onnx.checker.check_model(proto, full_check=True)  # sorted, valid, types consistent


def test_shape_arithmetic_is_refused(exported):
    """check_graph rejects a graph whose batch comes from a Shape node (what a traced x.shape does)."""
    from onnx import helper

    out, _ = exported
    proto = onnx.load(str(out / "language.onnx"))
    proto.graph.node.insert(0, helper.make_node("Shape", ["words"], ["words_shape"], name="traced_shape"))
    io = graph_io(get_config("restr-tiny"))["language"]
    with pytest.raises(ExportCheckError, match="computes shapes at run time"):
        check_graph(proto, *io, layernorms=None, opset=17, graph="language")


def test_layernorm_count_matches_modules():
    torch.manual_seed(0)
    model = ReSTR(get_config("restr-tiny"), 12).eval()
    n_modules = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert count_layernorm_calls(graph_module(model, "end_to_end"), example_inputs(model, "end_to_end")) == n_modules


def _feeds(vocab_size: int, batch: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 21, batch)
    pad = np.arange(20)[None] >= lengths[:, None]
    return {
        "image": rng.standard_normal((batch, 3, S, S)).astype(np.float32),
        "words": np.where(pad, 0, rng.integers(2, vocab_size, (batch, 20))).astype(np.int64),
        "pad_mask": pad,
    }


def _runner(out: Path, key: str):
    """Graph `key` of the export in `out` as the runtime runs it (ONNX Runtime on the CPU, one thread)."""
    return make_runner(Artifacts.open(out), key, "ort", threads=1)


@pytest.mark.parametrize("batch", [1, 3])
def test_batch_sizes_from_one_export_match_pytorch(exported, ckpt, batch):
    out, _ = exported
    model = load_source(ckpt=ckpt).model
    feeds = _feeds(len(WORDS) + 2, batch, seed=batch)
    got = _runner(out, "end_to_end").run(feeds)
    with torch.no_grad():
        pixel, patch = model(*(torch.from_numpy(feeds[k]) for k in ("image", "words", "pad_mask")))
    assert got["pixel_probs"].shape == (batch, 1, S, S) and got["patch_probs"].shape == (batch, N_V)
    np.testing.assert_allclose(got["pixel_probs"], torch.sigmoid(pixel).numpy(), atol=1e-4)
    np.testing.assert_allclose(got["patch_probs"], torch.sigmoid(patch).numpy(), atol=1e-4)


@pytest.mark.parametrize("suffix", ["", "_fp16"])
def test_one_image_many_expressions(exported, suffix):
    """The service pattern: encode the image once, repeat its features for K expressions."""
    out, _ = exported
    s = {g: _runner(out, f"{g}{suffix}") for g in GRAPHS}
    k = 3
    feeds = _feeds(len(WORDS) + 2, k, seed=7)
    feeds["image"] = np.repeat(feeds["image"][:1], k, axis=0)
    v = s["vision"].run({"image": feeds["image"][:1]})["visual_features"]
    l = s["language"].run(feeds)["linguistic_features"]
    split = s["fusion_decoder"].run(
        {"visual_features": np.repeat(v, k, 0), "linguistic_features": l, "pad_mask": feeds["pad_mask"]}
    )
    whole = s["end_to_end"].run(feeds)
    for name in ("pixel_probs", "patch_probs"):
        np.testing.assert_allclose(split[name], whole[name], atol=1e-4)


def test_padding_is_masked_in_the_graph(exported):
    """SDPA's boolean mask survives the export: padded word ids do not matter, the mask does."""
    out, _ = exported
    s = _runner(out, "end_to_end")
    feeds = _feeds(len(WORDS) + 2, 2, seed=3)
    feeds["pad_mask"][:, 4:] = True
    feeds["words"][:, 4:] = 0
    base = s.run(feeds)["pixel_probs"]
    other_ids = dict(feeds, words=np.where(feeds["pad_mask"], 5, feeds["words"]))
    np.testing.assert_array_equal(s.run(other_ids)["pixel_probs"], base)
    unmasked = dict(other_ids, pad_mask=np.zeros_like(feeds["pad_mask"]))
    assert np.abs(s.run(unmasked)["pixel_probs"] - base).max() > 1e-6


def test_fp16_is_fp16_through(exported):
    out, m = exported
    for g in GRAPHS:
        proto = onnx.load(str(out / f"{g}_fp16.onnx"))
        summary = fp16_mod.check_fp16(proto)
        assert summary == m["graphs"][f"{g}_fp16"]["compute_precision"]
        for op in ("MatMul", "LayerNormalization", "Softmax"):
            if op in summary:
                assert set(summary[op]) == {"float16"}, (g, op)
        for v in list(proto.graph.input) + list(proto.graph.output):
            assert v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.BOOL)


def test_fp16_check_rejects_fp32_ops_redundant_casts_and_unsorted_nodes(exported):
    from onnx import helper

    out, _ = exported
    with pytest.raises(fp16_mod.FP16Error, match="computes in float32"):
        fp16_mod.check_fp16(onnx.load(str(out / "language.onnx")))
    proto = onnx.load(str(out / "language_fp16.onnx"))
    ln = next(n for n in proto.graph.node if n.op_type == "LayerNormalization")
    x = ln.input[0]
    pair = [
        helper.make_node("Cast", [x], [x + "_f32"], to=onnx.TensorProto.FLOAT, name="island_in"),
        helper.make_node("Cast", [x + "_f32"], [x + "_f16"], to=onnx.TensorProto.FLOAT16, name="island_out"),
    ]
    at = list(proto.graph.node).index(ln)
    for node in reversed(pair):
        proto.graph.node.insert(at, node)
    ln.input[0] = x + "_f16"
    with pytest.raises(fp16_mod.FP16Error, match="Casts"):
        fp16_mod.check_fp16(proto)
    proto = onnx.load(str(out / "language_fp16.onnx"))
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes[::-1])  # what the converter did with its input Casts
    with pytest.raises(fp16_mod.FP16Error, match="not sorted"):
        fp16_mod.check_fp16(proto)


# ---------------------------------------------------------------------------------- verification


def test_figures():
    ref = np.array([0.9, 0.8, 0.1, 0.55, 0.45])
    test = np.array([0.9, 0.4, 0.1, 0.45, 0.45])
    r = compare_probs(ref, test, 0.5, 0.1)
    assert r["max_abs_diff"] == pytest.approx(0.4) and r["mean_abs_diff"] == pytest.approx(0.1)
    assert r["mask_iou"] == pytest.approx(1 / 3)  # masks {0,1,3} vs {0}
    assert r["decisive_pixels"] == 3 and r["same_side"] == pytest.approx(2 / 3)
    assert mask_iou(np.zeros(4, bool), np.zeros(4, bool)) == 1.0


def _check(name: str, reference: str, figures: dict, rule) -> Check:
    """A check as `run_checks` makes it: its criteria from the rule its comparison site names."""
    return Check(name, reference, [1], figures, rule(figures))


def _fp16_probs(rules: Rules):
    return lambda figures: rules.reduced_probs("fp16", figures)


def test_judge_names_the_failing_figure():
    e2e = {"max_abs_diff": 2e-3, "mean_abs_diff": 1e-4, "mask_iou": 1.0, "same_side": 1.0}
    fp16 = {"max_abs_diff": 0.2, "mean_abs_diff": 0.02, "mask_iou": 0.5, "same_side": 0.9, "decisive_share": 0.5}
    features = {"max_abs_diff": 1.0, "mean_abs_diff": 0.1, "max_rel_diff": 0.5}
    for meaningful in (False, True):
        rules = Rules(Tolerances(), meaningful)
        checks = [
            _check("end_to_end", "pytorch", e2e, rules.fp32_probs),
            _check("end_to_end_fp16", "end_to_end", fp16, _fp16_probs(rules)),
            Check("vision_fp16", "vision", [1], features, {}, judged=False),
        ]
        v = verification_body(checks, Tolerances(), meaningful)
        judged, failures = v["checks"], v["failures"]
        assert not v["passed"] and not judged["end_to_end"]["passed"] and not judged["end_to_end_fp16"]["passed"]
        assert judged["vision_fp16"]["passed"] is None and judged["vision_fp16"]["criteria"] == {}  # reported, not judged
        assert failures[0].startswith("end_to_end vs pytorch: max_abs_diff 0.002")
        assert "mean_abs_diff 0.02 (needs <= 0.01)" in failures[1] and "same_side 0.9" in failures[1]
        if meaningful:
            assert "mask_iou 0.5 (needs >= 0.98)" in failures[1]
        else:
            assert "mask_iou" not in judged["end_to_end_fp16"]["criteria"]  # random weights: masks not judged


def test_split_fp16_gets_the_tight_split_tolerance():
    """The FP16 split chain and the FP16 end-to-end graph compute the same thing: held to 1e-4 like
    the FP32 pair, not to the loose FP16-vs-FP32 criteria (a name containing "fp16" once did that)."""
    rules = Rules(Tolerances(), masks_meaningful=False)
    figures = {"max_abs_diff": 5e-4, "mean_abs_diff": 1e-5, "mask_iou": 1.0, "same_side": 1.0, "decisive_share": 0.9}
    c = _check("split_vs_end_to_end_fp16", "end_to_end_fp16 (onnxruntime)", figures, rules.same_computation)
    assert c.passed is False
    assert c.failure == "split_vs_end_to_end_fp16 vs end_to_end_fp16 (onnxruntime): max_abs_diff 0.0005 (needs <= 0.0001)"


def test_fp16_gate_needs_decisive_pixels():
    """Outputs all within the margin of 0.5 have no pixel to judge the same side by: that is not a pass."""
    rng = np.random.default_rng(0)
    ref = 0.5 + rng.uniform(-0.05, 0.05, (2, 1, 16, 16))
    test = 1.0 - ref  # every pixel on the other side
    r = compare_probs(ref, test)
    assert r["same_side"] is None and r["decisive_pixels"] == 0 and r["decisive_share"] == 0.0
    tol = Tolerances(fp16_max_mean_abs_diff=0.1)
    c = _check("end_to_end_fp16", "end_to_end (fp32, onnxruntime)", r, _fp16_probs(Rules(tol, masks_meaningful=True)))
    assert c.passed is False
    assert "decisive_share 0 (needs >= 0.05)" in c.failure and "same_side n/a" in c.failure
    # random weights: same_side is left out where too few pixels are decisive, and shown as such
    c = _check("end_to_end_fp16", "x", r, _fp16_probs(Rules(tol, masks_meaningful=False)))
    assert set(c.criteria) == {"mean_abs_diff"} and c.passed is True and c.failure is None


def test_a_check_cannot_go_unjudged_by_mistake():
    """Criteria come with the check where its comparison runs: a judged check without any, or with one
    on a figure it does not have (a misspelt name), is a bug in the exporter and is refused at once;
    only a check declared not judged is reported as such."""
    figures = {"max_abs_diff": 9.0, "mean_abs_diff": 9.0, "max_rel_diff": 9.0}
    with pytest.raises(ValueError, match="something_new.*no criteria"):
        Check("something_new", "x", [1], figures, {})
    with pytest.raises(ValueError, match="max_rel_dif"):
        Check("vision", "pytorch", [1], figures, {"max_rel_dif": ("<=", 1e-3)})
    with pytest.raises(ValueError, match="not judged"):
        Check("vision_fp16", "vision", [1], figures, {"max_rel_diff": ("<=", 1e-3)}, judged=False)
    reported = Check("vision_fp16", "vision", [1], figures, {}, judged=False)
    assert reported.passed is None and reported.failure is None
    v = verification_body([reported], Tolerances(), masks_meaningful=True)
    assert v["passed"] and v["failures"] == []
    table = format_table(v)
    assert table.count("not judged") == 1 and " ok" not in table


def test_verification_inputs_from_the_checkpoints_data_set(tmp_path):
    """A checkpoint whose meta names its data set is verified on its validation images (here a tiny
    synthetic set in the refer layout); an unreadable one falls back to generated inputs and says why."""
    from restr.data import make_synthetic
    from restr.export.verify import verification_inputs

    root = make_synthetic(tmp_path / "data", sizes={"train": 1, "val": 2, "test": 1})
    cfg, vocab = get_config("restr-tiny"), Vocabulary(WORDS)
    feeds, info = verification_inputs(cfg, vocab, {"data": str(root)}, n=3)
    assert info["source"] == "dataset" and info["samples"] == len(feeds["image"]) >= 2
    assert feeds["image"].shape[1:] == (3, S, S) and feeds["image"].dtype == np.float32
    assert feeds["words"].shape[1:] == (20,) and feeds["pad_mask"].dtype == bool
    assert not feeds["pad_mask"][:, 0].any()  # every expression has a first word
    feeds, info = verification_inputs(cfg, vocab, {"data": str(tmp_path / "absent")}, n=3)
    assert info["source"] == "generated" and "not readable" in info["note"] and feeds["image"].shape == (3, 3, S, S)


def test_exceeded_tolerance_fails_and_writes_nothing(ckpt, tmp_path):
    out = tmp_path / "export"
    with pytest.raises(VerificationError, match=r"verification failed: end_to_end vs pytorch: max_abs_diff"):
        export_artifacts(
            load_source(ckpt=ckpt),
            out,
            _options(precisions=("fp32",), tolerances=Tolerances(fp32_max_abs_diff=0.0)),
            log=lambda _: None,
        )
    assert not out.exists() and _no_leftovers(tmp_path)


# ------------------------------------------------------------------------------ CLI and errors


def _run(args):
    return CliRunner().invoke(cli, [*map(str, args), "--threads", "1", "--no-progress"])


def _one_line_error(result, code=2):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("restr-export: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_missing_checkpoint(tmp_path):
    line = _one_line_error(_run(["--ckpt", tmp_path / "nope.pt", "--out", tmp_path / "out"]))
    assert "no such checkpoint" in line and not (tmp_path / "out").exists()


def test_truncated_checkpoint(ckpt, tmp_path):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    line = _one_line_error(_run(["--ckpt", bad, "--out", tmp_path / "out"]))
    assert "truncated" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", None])
def test_not_a_checkpoint(tmp_path, content):
    bad = tmp_path / "other.pt"
    if content is None:
        torch.save({"state_dict": {}}, bad)  # a torch file, but not ours
    else:
        bad.write_bytes(content)
    _one_line_error(_run(["--ckpt", bad, "--out", tmp_path / "out"]))
    assert not (tmp_path / "out").exists()


def test_weights_that_do_not_fit_the_config(ckpt, tmp_path):
    obj = torch.load(ckpt, weights_only=True)
    obj["config"]["fusion"]["width"] = 64  # weights are 96 wide
    bad = tmp_path / "misfit.pt"
    torch.save(obj, bad)
    line = _one_line_error(_run(["--ckpt", bad, "--out", tmp_path / "out"]))
    assert "do not fit" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", [100, 0])
def test_unsupported_image_size(ckpt, tmp_path, size):
    line = _one_line_error(_run(["--ckpt", ckpt, "--out", tmp_path / "out", "--image-size", size]))
    assert f"unsupported image size {size}" in line and "patch size 8" in line
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_refused_without_force(exported, ckpt, tmp_path):
    out, _ = exported
    line = _one_line_error(_run(["--ckpt", ckpt, "--out", out]))
    assert "--force" in line
    other = tmp_path / "not-an-export"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    line = _one_line_error(_run(["--ckpt", ckpt, "--out", other, "--force"]))
    assert "not a restr export folder" in line and (other / "precious.txt").read_text() == "keep me"


def test_engine_required_without_tensorrt(ckpt, tmp_path):
    try:
        engine_support()
        pytest.skip("TensorRT and a GPU are present: engines can be built here")
    except EngineUnavailable:
        pass
    line = _one_line_error(_run(["--ckpt", ckpt, "--out", tmp_path / "out", "--engine"]))
    assert "pip install 'tensorrt>=10' 'cuda-python>=12.6'" in line and "restr-export --build-engines" in line
    assert list(tmp_path.iterdir()) == []
    line = _one_line_error(_run(["--build-engines", tmp_path / "missing"]))
    assert "manifest.json" in line


def test_cli_random_weights_and_force(tmp_path):
    out = tmp_path / "random"
    out.mkdir()
    json_out = tmp_path / "result.json"
    result = _run(
        [
            "--config",
            "restr-tiny",
            "--out",
            out,
            "--force",
            "--precision",
            "fp32",
            "--no-verify",
            "--no-engine",
            "--max-batch",
            "4",
            "--json",
            json_out,
        ]
    )
    assert result.exit_code == 0, result.output
    assert "RANDOMLY INITIALISED" in result.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["random_weights"] and m["vocab"]["placeholder"] and m["max_batch"] == 4
    assert set(m["graphs"]) == set(GRAPHS) | set(PROCESSING_GRAPHS) and m["verification"] == {"enabled": False}
    assert m["tensorrt"] == {"status": "not requested"}
    assert json.loads(json_out.read_text())["manifest"] == m
    assert _no_leftovers(tmp_path)


def test_cli_help():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--ckpt",
        "--config",
        "--out",
        "--image-size",
        "--max-batch",
        "--precision",
        "--engine",
        "--force",
        "--build-engines",
    ):
        assert option in result.output


# ------------------------------------------------------------------ engines: the shared code path


def test_profiles_from_max_batch(exported):
    _, m = exported
    p = profiles(m["graphs"]["fusion_decoder_fp16"]["inputs"], max_batch=6)
    assert p == {
        "visual_features": {"min": [1, N_V, 96], "opt": [1, N_V, 96], "max": [1, N_V, 96]},  # one image, shared
        "linguistic_features": {"min": [1, 20, 96], "opt": [1, 20, 96], "max": [6, 20, 96]},
        "pad_mask": {"min": [1, 20], "opt": [1, 20], "max": [6, 20]},
    }
    with pytest.raises(ValueError):
        profiles(m["graphs"]["vision_fp16"]["inputs"], max_batch=0)


def test_sidecar_and_cache_path(exported, tmp_path):
    _, m = exported
    gpu = {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    src = m["graphs"]["vision_fp16"]
    s = sidecar("vision_fp16", src, profiles(src["inputs"], 8), "11.4.0", gpu)
    assert s["tensorrt_version"] == "11.4.0" and s["gpu_name"] == gpu["gpu_name"] and s["compute_capability"] == "9.0"
    assert s["precision"] == ENGINE_PRECISION and s["max_batch"] == 8
    assert s["source"] == {"file": "vision_fp16.onnx", "sha256": src["sha256"]}
    assert s["profiles"]["image"]["max"] == [8, 3, S, S]
    p = timing_cache_path("11.4.0", gpu, tmp_path)
    assert p.parent == tmp_path and "11.4.0" in p.name and "H100" in p.name and " " not in p.name
    assert timing_cache_path("10.9.0", gpu, tmp_path) != p
    msg = engine_instructions("runs/x", "no module named tensorrt")
    assert "\n" not in msg and "restr-export --build-engines runs/x" in msg and "pip install" in msg


def test_build_engines_glue_with_a_stand_in(exported, tmp_path):
    """Everything around the TensorRT calls, run with a stand-in builder: files, sidecars, manifest
    entries, profiles handed to the builder, and the timing cache carried from build to build."""
    out, m = exported
    folder = tmp_path / "exp"
    shutil.copytree(out, folder)
    cache = tmp_path / "timing.cache"
    FakeTensorRT.calls = []
    gpu = {"gpu_name": "Fake GPU", "compute_capability": "8.9"}
    entries = build_engines(
        folder, m, ["vision_fp16", "language_fp16"], 4, cache, 1.0, log=lambda _: None, backends=(FakeTensorRT, gpu)
    )
    assert set(entries) == {"vision_fp16", "language_fp16"}
    for key, e in entries.items():
        assert (folder / e["file"]).read_bytes().startswith(b"ENGINE:") and e["sha256"] == sha256_file(folder / e["file"])
        side = json.loads((folder / e["sidecar"]).read_text())
        assert side["gpu_name"] == "Fake GPU" and side["tensorrt_version"] == "11.0.0-fake" and side["max_batch"] == 4
        assert side["source"]["sha256"] == m["graphs"][key]["sha256"]
    assert ("parse", "vision_fp16.onnx") in FakeTensorRT.calls and ("network", 1) in FakeTensorRT.calls
    assert ("workspace", 1 << 30) in FakeTensorRT.calls
    cache_ins = [c[1] for c in FakeTensorRT.calls if c[0] == "cache in"]
    assert cache_ins == [b"", b"+"] and cache.read_bytes() == b"++"  # the second build got the first one's cache


def test_build_engines_cli_with_a_stand_in(exported, tmp_path, monkeypatch):
    """`restr-export --build-engines DIR` on an ONNX-only export: engines added, manifest updated,
    checksums whole, the folder swapped in one piece."""
    from restr.export import pipeline

    out, m = exported
    folder = tmp_path / "exp"
    shutil.copytree(out, folder)
    gpu = {"gpu_name": "Fake GPU", "compute_capability": "8.9"}
    FakeTensorRT.calls = []
    monkeypatch.setattr(pipeline, "engine_support", lambda: (FakeTensorRT, gpu))
    result = _run(
        [
            "--build-engines",
            folder,
            "--max-batch",
            "2",
            "--engine-graph",
            "vision",
            "--engine-graph",
            "fusion_decoder",
            "--timing-cache",
            tmp_path / "cache.bin",
        ]
    )
    assert result.exit_code == 0, result.output
    new = json.loads((folder / "manifest.json").read_text())
    assert set(new["engines"]) == {"vision_fp16", "fusion_decoder_fp16"} and new["max_batch"] == 2
    assert new["tensorrt"] == {"status": "built", "tensorrt_version": "11.0.0-fake", **gpu}
    assert new["graphs"] == m["graphs"] and check_checksums(folder, new) == []
    assert first_error(manifest_schema(), new) is None  # engine entries too
    assert _no_leftovers(tmp_path)
    side = json.loads((folder / "fusion_decoder_fp16.engine.json").read_text())
    assert side["profiles"]["pad_mask"] == {"min": [1, 20], "opt": [1, 20], "max": [2, 20]}
    (folder / "vision.onnx").write_bytes(b"changed")
    line = _one_line_error(_run(["--build-engines", folder]))
    assert "vision.onnx (sha256 mismatch)" in line


def test_engines_on_a_gpu(exported, tmp_path):
    """A real strongly typed build: runs only where TensorRT and a GPU are present."""
    try:
        backends = engine_support()
    except EngineUnavailable as e:
        pytest.skip(f"TensorRT engines need TensorRT and a CUDA GPU: {e}")
    out, m = exported
    folder = tmp_path / "exp"
    shutil.copytree(out, folder)
    entries = build_engines(folder, m, ["end_to_end_fp16"], 2, tmp_path / "cache", 1.0, log=lambda _: None, backends=backends)
    assert (folder / entries["end_to_end_fp16"]["file"]).stat().st_size > 0


# ------------------------------------------------------------------------------------ restr-b16


@pytest.mark.slow
def test_b16_export_at_320(tmp_path):
    """The paper's model (random weights) at 320x320: every graph exports, verifies (ORT vs PyTorch,
    split vs end-to-end, FP16 by the random-weight criteria) and has its LayerNorms."""
    out = tmp_path / "b16"
    m = export_artifacts(
        load_source(config="restr-b16", image_size=320), out, _options(threads=2, engine=False), log=lambda _: None
    )
    v = m["verification"]
    assert v["passed"] and not v["masks_meaningful"]
    assert m["image_size"] == 320 and m["num_patches"] == 400 and m["feature_width"] == 768
    assert v["checks"]["end_to_end"]["max_abs_diff"] <= 1e-3
    assert v["checks"]["end_to_end_fp16"]["mean_abs_diff"] <= 0.01
    assert v["checks"]["end_to_end_fp16"]["same_side"] >= 0.99
    proto = onnx.load(str(out / "vision.onnx"), load_external_data=False)
    assert sum(n.op_type == "LayerNormalization" for n in proto.graph.node) == 2 * 12 + 1
    assert check_checksums(out, m) == []


# --------------------------------------------------------------- ONNX Runtime's fused attention


def test_fused_attention_form_verifies_and_is_kept_from_tensorrt(ckpt, tmp_path):
    """--attention ort writes one MultiHeadAttention per layer (no Softmax left), passes the same
    verification against PyTorch (FP32 and FP16), and engines refuse it."""
    out = tmp_path / "ort"
    m = export_artifacts(load_source(ckpt=ckpt), out, _options(masks_meaningful=True, attention="ort"))
    assert m["verification"]["passed"], m["verification"]["failures"]
    layers = {"end_to_end": 4 + 2 + 4, "vision": 4, "language": 2, "fusion_decoder": 4}  # restr-tiny's depths
    for g, n in layers.items():
        for key in (g, f"{g}_fp16"):
            ops = op_counts(onnx.load(str(out / f"{key}.onnx")))
            assert ops.get("MultiHeadAttention") == n and not ops.get("Softmax"), (key, ops)
            assert m["graphs"][key]["attention"] == "ort"
    from restr.export.pipeline import ExportError, add_engines

    with pytest.raises(ExportError, match="--attention onnx"):
        add_engines(out)


# ------------------------------------------------------------------------------ processing graphs


def _sample_photos():
    """Real photographs that ship with matplotlib (a dependency of the torch extra)."""
    from matplotlib import cbook

    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        with cbook.get_sample_data(name) as f:
            from restr.runtime.transforms import load_image

            yield name, np.asarray(load_image(f))


@pytest.mark.parametrize("size", [80, 320])
def test_preprocess_graph_matches_the_training_transform_on_photos(size):
    """The preprocess graph against Letterbox + normalize (Pillow, what training uses) on real photos:
    the same geometry, and no pixel more than one uint8 level apart (Pillow rounds in fixed point)."""
    from PIL import Image

    from restr.export.processing import preprocess_graph
    from restr.runtime.transforms import Letterbox, mean_fill, normalize

    mean = std = (0.5, 0.5, 0.5)
    session = ort_session_from_proto(preprocess_graph(size, mean, std))
    for name, rgb in _sample_photos():
        for photo in (rgb, rgb[: rgb.shape[0] // 3], np.ascontiguousarray(rgb[:, ::-1].transpose(1, 0, 2))):
            lb = Letterbox.fit(photo.shape[:2], size)
            want = normalize(lb.image(Image.fromarray(photo), mean_fill(mean)), mean, std)[None]
            image, letterbox = session.run(None, {"rgb": photo})
            assert letterbox.tolist() == [*lb.src_hw, *lb.new_hw], name
            levels = np.abs(image - want) * 0.5 * 255
            assert levels.max() <= 1.001 and levels.mean() < 0.5, (name, levels.max(), levels.mean())


def test_postprocess_graph_matches_letterbox_invert():
    from restr.export.processing import postprocess_graph
    from restr.runtime.transforms import Letterbox

    session = ort_session_from_proto(postprocess_graph(80))
    rng = np.random.default_rng(0)
    for hw in ((480, 640), (33, 20), (80, 80), (81, 80)):
        lb = Letterbox.fit(hw, 80)
        probs = rng.random((3, 1, 80, 80), dtype=np.float32)
        thr = np.array([0.6], np.float32)
        got = dict(
            zip(
                ("probs", "mask", "score", "area"),
                session.run(None, {"pixel_probs": probs, "letterbox": np.array([*lb.src_hw, *lb.new_hw]), "threshold": thr}),
            )
        )
        want = np.stack([lb.invert(p[0]) for p in probs])
        assert got["probs"].shape == (3, *hw) and np.abs(got["probs"] - want).max() < 1e-4
        assert (got["mask"] == (want > 0.6)).mean() > 0.999
        assert got["area"].tolist() == got["mask"].sum((1, 2)).tolist()
        np.testing.assert_allclose(got["score"], [want[i][got["mask"][i]].mean() for i in range(3)], rtol=1e-4)


def test_processing_graphs_read_geometry_only_in_shape_arithmetic():
    """ONNX Runtime's CUDA EP runs a graph's shape arithmetic on the CPU: the subgraph that starts at a
    Shape node. The letterbox input must enter only there (a Concat with a Shape output), or the EP
    copies it between devices and refuses CUDA graph capture (seen on an H200: postprocess ran
    uncaptured at 0.35 ms a call)."""
    from restr.export.processing import postprocess_graph, preprocess_graph

    post = postprocess_graph(80).graph
    made_by = {o: n for n in post.node for o in n.output}
    readers = [n for n in post.node if "letterbox" in n.input]
    assert readers and all(
        n.op_type == "Concat" and any(made_by.get(i) is not None and made_by[i].op_type == "Shape" for i in n.input)
        for n in readers
    )
    pre = preprocess_graph(80, (0.5,) * 3, (0.5,) * 3).graph
    constants = {t.name for t in pre.initializer}
    rgb_readers = [n for n in pre.node if "rgb" in n.input]
    assert (
        rgb_readers
        and all(  # its shape, and its pixels by constant channel slices (device work)
            n.op_type == "Shape" or (n.op_type == "Slice" and set(n.input[1:]) <= constants) for n in rgb_readers
        )
    )


def ort_session_from_proto(proto):
    import onnxruntime as ort

    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
