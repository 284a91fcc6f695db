"""restr-export's steps one at a time (restr.export.pipeline): each on its own `ExportContext`, without
the rest of the export around it."""

from __future__ import annotations

import json

import pytest
import torch

from restr.export import pipeline
from restr.export.manifest import check_checksums
from restr.export.onnx_export import ExportCheckError
from restr.export.pipeline import (
    ExportContext,
    ExportError,
    ExportOptions,
    add_engines,
    check_options,
    load_source,
    make_manifest,
    prepare_model,
    publish,
    verify_export,
    write_engines,
    write_graphs,
    write_processing_graphs,
    write_vocabulary,
)
from restr.export.tensorrt_build import EngineUnavailable
from restr.export.verify import Tolerances, VerificationError
from restr.runtime.artifacts import Artifacts
from restr.runtime.formats import GRAPH_IO, PROCESSING_GRAPHS, graph_file


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def source():
    return load_source(config="restr-tiny")


def _context(source, tmp_path, **options) -> ExportContext:
    """A context past `check_options`, its staging folder made (as `export_artifacts` makes it)."""
    ctx = check_options(source, tmp_path / "export", ExportOptions(threads=1, progress=False, **options), log=lambda _: None)
    ctx.folder = tmp_path / "staging"
    ctx.folder.mkdir()
    return ctx


@pytest.mark.parametrize(
    "options, message",
    [
        ({"precisions": ("fp16",)}, "must include fp32"),
        ({"max_batch": 0}, "--max-batch must be at least 1"),
        ({"samples": 0}, "--samples must be at least 1"),
        ({"opset": 12}, "too old"),
        ({"attention": "flash"}, "--attention must be one of"),
        ({"engine": True, "attention": "ort"}, "use --attention onnx"),
        ({"engine": True, "precisions": ("fp32",)}, "add --precision fp16"),
    ],
)
def test_check_options_refuses_before_writing(source, tmp_path, options, message):
    with pytest.raises(ExportError, match=message):
        check_options(source, tmp_path / "export", ExportOptions(**options), log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_check_options_warns_of_random_weights(source, tmp_path):
    said = []
    ctx = check_options(source, tmp_path / "export", ExportOptions(), log=said.append)
    assert ctx.folder is None and ctx.graphs == {} and ctx.manifest is None  # nothing written yet
    assert len(said) == 1 and "RANDOMLY INITIALISED" in said[0]


def test_every_file_written_is_in_the_manifest(source, tmp_path):
    """The writing steps each record what they write: after them, the manifest names every file in
    the folder, and every file it names is there with its sha256."""
    ctx = _context(source, tmp_path)
    for step in (prepare_model, write_vocabulary, write_graphs, write_processing_graphs, make_manifest):
        step(ctx)
    m = ctx.manifest
    named = {m["vocab"]["file"], *(g["file"] for g in m["graphs"].values())}
    assert {p.name for p in ctx.folder.iterdir()} == named
    assert check_checksums(ctx.folder, m) == []
    assert set(m["graphs"]) == {
        "end_to_end",
        "vision",
        "language",
        "fusion_decoder",
        "end_to_end_fp16",
        "vision_fp16",
        "language_fp16",
        "fusion_decoder_fp16",
        *PROCESSING_GRAPHS,
    }
    assert m["model"]["config"]["decoder_linear_first"] is True  # prepare_model's form is the one recorded


def test_processing_graphs_are_recorded_with_their_contract(source, tmp_path):
    ctx = _context(source, tmp_path)
    write_processing_graphs(ctx)
    assert list(ctx.graphs) == list(PROCESSING_GRAPHS)
    for key, entry in ctx.graphs.items():
        assert entry["file"] == graph_file(key) and (ctx.folder / entry["file"]).is_file()
        inputs, outputs = GRAPH_IO[key]
        assert [t["name"] for t in entry["inputs"]] == [t.name for t in inputs]
        assert [t["name"] for t in entry["outputs"]] == [t.name for t in outputs]
        assert entry["precision"] == "fp32" and entry["op_counts"]["nodes"] > 0


def test_an_invalid_graph_is_neither_written_nor_recorded(source, tmp_path):
    from onnx import helper

    ctx = _context(source, tmp_path)
    node = helper.make_node("Relu", ["x"], ["y"])  # "x" is nobody's output and no input: not valid ONNX
    proto = helper.make_model(helper.make_graph([node], "broken", [], []))
    with pytest.raises(ExportCheckError, match="preprocess.onnx: not valid ONNX"):
        pipeline.add_graph(ctx, "preprocess", proto, "fp32", 0.0)
    assert ctx.graphs == {} and list(ctx.folder.iterdir()) == []


def test_verify_step_off_and_failing(source, tmp_path):
    """--no-verify leaves the manifest's "verification disabled" and runs nothing; a failed gate
    raises naming the check and records nothing."""
    ctx = _context(source, tmp_path, precisions=("fp32",), verify=False)
    for step in (write_vocabulary, write_graphs, write_processing_graphs, make_manifest):
        step(ctx)
    verify_export(ctx)
    assert ctx.manifest["verification"] == {"enabled": False} and not (ctx.folder / "manifest.json").exists()
    ctx.options = ExportOptions(
        threads=1, progress=False, precisions=("fp32",), samples=1, tolerances=Tolerances(fp32_max_abs_diff=0.0)
    )
    with pytest.raises(VerificationError, match="end_to_end vs pytorch: max_abs_diff"):
        verify_export(ctx)
    assert ctx.manifest["verification"] == {"enabled": False}


def test_engines_step_without_tensorrt_records_how(source, tmp_path, monkeypatch):
    def missing():
        raise EngineUnavailable("no module named tensorrt")

    monkeypatch.setattr(pipeline, "engine_support", missing)
    ctx = _context(source, tmp_path, precisions=("fp32", "fp16"))
    ctx.manifest = {"graphs": {}, "engines": {}, "tensorrt": {"status": "not requested"}, "max_batch": 8}
    write_engines(ctx)
    assert ctx.manifest["tensorrt"]["status"] == "not built" and "restr-export --build-engines" in ctx.manifest["tensorrt"]["how"]
    ctx.options = ExportOptions(engine=False)
    ctx.manifest["tensorrt"] = {"status": "not requested"}
    write_engines(ctx)
    assert ctx.manifest["tensorrt"] == {"status": "not requested"}


def test_publish_replaces_an_old_export_whole(source, tmp_path):
    ctx = _context(source, tmp_path, precisions=("fp32",), verify=False, force=True)
    ctx.out.mkdir()
    (ctx.out / "manifest.json").write_text("{}")
    (ctx.out / "stale.onnx").write_bytes(b"old")
    for step in (write_vocabulary, write_processing_graphs, make_manifest):
        step(ctx)
    manifest = publish(ctx)
    assert not ctx.folder.exists() and not (ctx.out / "stale.onnx").exists()
    assert json.loads((ctx.out / "manifest.json").read_text()) == manifest
    assert Artifacts.open(ctx.out).manifest == manifest  # what the runtime reads
    assert [p.name for p in ctx.out.parent.iterdir() if ".old-" in p.name or ".partial-" in p.name] == []


def test_add_engines_reads_the_manifest_as_the_runtime_does(tmp_path):
    """--build-engines reads the export through `Artifacts.open`: a manifest it cannot use is refused
    in its words, before TensorRT is looked for."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ExportError, match="not a readable JSON manifest"):
        add_engines(folder)
    (folder / "manifest.json").write_text(json.dumps({"format_version": 1, "graphs": {}}))
    with pytest.raises(ExportError, match="manifest is invalid"):
        add_engines(folder)
    with pytest.raises(ExportError, match="no manifest.json"):
        add_engines(tmp_path / "absent")
