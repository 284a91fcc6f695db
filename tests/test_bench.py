"""`restr-bench --engine`: every engine kind that runs here, the JSON contract, ratios, --queries,
--plot, one-line errors, and the statistics on known data. A restr-tiny export (random weights)
and a checkpoint are made once; every run is a few rounds at one thread."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from restr.benchmarks.cli import main
from restr.benchmarks.flops import achieved_gflops, graph_macs
from restr.benchmarks.latency import query_result, ratios
from restr.benchmarks.loaders import make_feeds
from restr.benchmarks.timing import STAT_KEYS, summarize
from restr.config import get_config, get_config as _get_config
from restr.runtime.artifacts import TensorSpec

S = _get_config("restr-tiny").image_size  # input side of the small model
N_V = _get_config("restr-tiny").num_patches

FAST = [
    "--runs",
    "3",
    "--warmup",
    "1",
    "--batch-sizes",
    "1,2",
    "--throughput-runs",
    "1",
    "--gemm-size",
    "64",
    "--import-runs",
    "0",
    "--threads",
    "1",
    "--no-progress",
]
RESULT_KEYS = ("engine", "model_ms", "end_to_end_ms", "cold_start_ms", "achieved_gflops", "gemm_peak_gflops", "peak_fraction")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A restr-tiny export folder (FP32 graphs) and a checkpoint of the same weights."""
    import torch

    from restr.checkpoint import save_checkpoint
    from restr.export import ExportOptions, export_artifacts, load_source

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bench")
    source = load_source(config="restr-tiny", seed=0)
    export_artifacts(
        source,
        root / "export",
        ExportOptions(precisions=("fp32",), engine=False, verify=False, progress=False),
        log=lambda msg: None,
    )
    save_checkpoint(root / "model.pt", source.model, source.vocab)
    return SimpleNamespace(root=root, export=root / "export", onnx=root / "export" / "end_to_end.onnx", pt=root / "model.pt")


def bench(*args):
    return CliRunner().invoke(main, [*args, *FAST])


def test_folder_onnx_and_checkpoint_in_one_run(tiny, tmp_path):
    out, plot = tmp_path / "r.json", tmp_path / "r.png"
    res = bench(
        "--engine",
        str(tiny.export),
        "--engine",
        str(tiny.onnx),
        "--engine",
        str(tiny.pt),
        "--queries",
        "3",
        "--query-runs",
        "1",
        "--json",
        str(out),
        "--plot",
        str(plot),
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    results = doc["results"]
    assert [r["kind"] for r in results] == ["folder", "onnx", "pt"]
    for r in results:
        for key in RESULT_KEYS:
            assert r[key] is not None, (r["kind"], key)
        for key in ("model_ms", "end_to_end_ms"):
            assert set(STAT_KEYS) <= set(r[key]) and r[key]["n"] == 3
            assert r[key]["median"] <= r[key]["p90"] <= r[key]["p99"]
        # the end-to-end path is the model plus pre- and post-processing
        assert r["end_to_end_ms"]["median"] > r["preprocess_ms"]["median"] > 0
        assert r["peak_fraction"] == pytest.approx(r["achieved_gflops"] / r["gemm_peak_gflops"])
        assert r["peak_fraction_paired"] > 0
        assert r["achieved_gflops"] == pytest.approx(2 * r["macs"] / (r["model_ms"]["median"] / 1000) / 1e9)
        # differences of noisy timings (one query round on a tiny model): present and finite, sign not guaranteed
        assert math.isfinite(r["per_query_ratio"]) and math.isfinite(r["per_query_ratio_one_at_a_time"])
        assert [t["batch"] for t in r["throughput"]] == [1, 2]
    # one model, three ways: the same MACs
    assert len({r["macs"] for r in results}) == 1
    assert [x["engine"] for x in doc["ratios"]] == [str(tiny.onnx), str(tiny.pt)]
    assert all(x["model_ms"] > 0 and x["relative_to"] == str(tiny.export) for x in doc["ratios"])
    assert f"relative to {tiny.root.name}/export" in res.output and "K expressions on one image" in res.output
    assert "cold ms = loading the engine" in res.output and "peak MiB = how much" in res.output
    assert "pre+post = pre- plus post-processing time as a share of the model time" in res.output  # the legend
    assert "paired = the share computed within each round" in res.output
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.width > 300


def test_bare_graphs_without_manifest(tiny, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny.onnx, bare / "model.onnx")
    shutil.copy(tiny.export / "vision.onnx", bare / "vision.onnx")
    out = tmp_path / "r.json"
    res = bench(
        "--engine",
        str(bare / "model.onnx"),
        "--engine",
        str(bare / "vision.onnx"),
        "--config",
        "restr-tiny",
        "--op-profile",
        "1",
        "--json",
        str(out),
    )
    assert res.exit_code == 0, res.output
    full, vision = json.loads(out.read_text())["results"]
    assert full["graph"] == "end_to_end" and full["end_to_end_ms"]["n"] == 3 and full["notes"]
    # a split graph alone: the model is timed, there is no end-to-end path; MACs are the vision graph's
    assert vision["graph"] == "vision" and vision["end_to_end_ms"] is None
    assert 0 < vision["macs"] < full["macs"]
    # ONNX Runtime's profiler: kernel time by op type, matrix products among them
    assert "MatMul" in {o["op"] for o in full["op_profile"]["ops"]}
    assert sum(o["share"] for o in full["op_profile"]["ops"]) == pytest.approx(1.0)


def bad_path(kind: str, d):
    """A PATH restr-bench must refuse."""
    if kind == "text":
        (d / "model.txt").write_text("x")
        return d / "model.txt"
    if kind == "empty-folder":
        (d / "empty").mkdir()
        return d / "empty"
    if kind == "corrupt-onnx":
        (d / "bad.onnx").write_bytes(b"\x00not a graph" * 10)
        return d / "bad.onnx"
    if kind == "engine":  # no TensorRT or GPU here; with them, the missing sidecar is refused
        (d / "model.trt").write_bytes(b"engine")
        return d / "model.trt"
    return d / "missing"


@pytest.mark.parametrize(
    "kind, extra, message",
    [
        ("missing", [], "no such file or folder"),
        ("text", [], "unknown engine type"),
        ("empty-folder", [], "no manifest.json"),
        ("corrupt-onnx", [], "not a readable ONNX graph"),
        ("engine", [], "TensorRT"),
        ("missing", ["--queries", "1"], "--queries K needs K >= 2"),
        ("missing", ["--batch-sizes", "1,x"], "--batch-sizes"),
        ("empty-folder", ["--bulk", "-1"], "--bulk must be at least 0"),
    ],
)
def test_errors_are_one_line_and_write_nothing(tmp_path, kind, extra, message):
    out = tmp_path / "out.json"
    res = CliRunner().invoke(
        main, ["--engine", str(bad_path(kind, tmp_path)), "--json", str(out), *FAST, *extra]
    )  # the last value of an option wins
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.output
    assert not out.exists()


def test_checkpoint_rebuilt_at_another_image_size(tiny, tmp_path):
    out = tmp_path / "r.json"
    res = bench("--engine", str(tiny.pt), "--image-size", "64", "--json", str(out))
    assert res.exit_code == 0, res.output
    (r,) = json.loads(out.read_text())["results"]
    assert r["image_size"] == 64 and r["backend"].startswith("pytorch")
    assert r["macs"] == graph_macs(get_config("restr-tiny").replace(image_size=64))["end_to_end"]


def test_image_size_is_refused_for_a_fixed_graph(tiny, tmp_path):
    out = tmp_path / "out.json"
    res = bench("--engine", str(tiny.export), "--image-size", str(S + 32), "--json", str(out))
    assert res.exit_code == 2 and f"fixed at {S}x{S}" in res.output and not out.exists()


def test_statistics_on_known_data():
    s = summarize(range(1, 101))
    assert s["median"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)  # linear interpolation between ranks 90 and 91
    assert s["p99"] == pytest.approx(99.01)
    assert s["mean"] == pytest.approx(50.5)
    assert s["std"] == pytest.approx(np.sqrt(sum((x - 50.5) ** 2 for x in range(1, 101)) / 99))
    assert (s["min"], s["max"], s["n"]) == (1, 100, 100)
    one = summarize([7.0])
    assert one["median"] == one["p99"] == 7.0 and one["std"] == 0.0
    assert summarize([])["median"] is None


def test_per_query_ratio_and_ratios_on_known_data():
    # 8 expressions: the first costs 100 ms through the split graphs, each further one 10 ms
    # (batched) or 20 ms (one at a time); one end-to-end run costs 100 ms.
    e = SimpleNamespace(
        split=object(),
        target=SimpleNamespace(predictor=object()),
        queries={
            "split_1": [100.0],
            "split_batched_k": [170.0],
            "split_one_at_a_time_k": [240.0],
            "end_to_end_k": [800.0],
            "vision": [80.0],
        },
    )
    q = query_result(e, 8)
    assert q["per_query_ratio"] == pytest.approx(0.1)
    assert q["per_query_ratio_one_at_a_time"] == pytest.approx(0.2)
    assert q["queries"]["speedup_batched"] == pytest.approx(800 / 170)

    def result(engine, ms, tp):
        return {
            "engine": engine,
            "model_ms": {"median": ms},
            "end_to_end_ms": {"median": ms + 1},
            "cold_start_ms": 10.0,
            "peak_memory_mb": 5.0,
            "throughput": [{"batch": 1, "items_per_s": tp}],
        }

    (r,) = ratios([result("a", 10.0, 100.0), result("b", 20.0, 50.0)])
    assert r["model_ms"] == pytest.approx(2.0) and r["throughput"]["1"] == pytest.approx(0.5) and r["relative_to"] == "a"


def test_graph_macs_add_up_and_gflops():
    macs = graph_macs(get_config("restr-tiny"))
    assert macs["end_to_end"] == macs["vision"] + macs["language"] + macs["fusion_decoder"]
    assert achieved_gflops(10**9, 1000.0, batch=2) == pytest.approx(4.0)
    assert achieved_gflops(None, 1.0) is None


def test_generated_feeds_follow_the_specs():
    specs = (
        TensorSpec("image", "float32", ("batch", 3, 8, 8)),
        TensorSpec("words", "int64", ("batch", 20)),
        TensorSpec("pad_mask", "bool", ("batch", 20)),
    )
    f = make_feeds(specs, 3, vocab_size=50)
    assert f["image"].shape == (3, 3, 8, 8) and f["image"].dtype == np.float32
    assert f["words"].dtype == np.int64 and f["pad_mask"].dtype == np.bool_
    assert ((f["words"] == 0) == f["pad_mask"]).all() and f["words"].max() < 50


def test_engine_tags_give_each_engine_its_own_options(tiny, tmp_path):
    """PATH#tags: one run compares the same checkpoint in FP32 and FP16 PyTorch, and labels them apart;
    an unknown tag is one line and exit 2."""
    out = tmp_path / "t.json"
    res = bench("--engine", f"{tiny.pt}#fp32", "--engine", f"{tiny.pt}#fp16,eager", "--json", str(out))
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())["results"]
    assert [r["label"] for r in results] == [f"{tiny.root.name}/model.pt#fp32", f"{tiny.root.name}/model.pt#fp16,eager"]
    assert [r["precision"] for r in results] == ["fp32", "fp16"]
    res = bench("--engine", f"{tiny.pt}#fp8")
    assert res.exit_code == 2 and "unknown engine tag 'fp8'" in res.output and "Traceback" not in res.output


def test_agreement_compares_fp16_with_fp32_through_the_predictor(tmp_path):
    """benchmarks/agreement.py (the GPU script's second step), run here with FP16 on the CPU."""
    import torch

    from restr.benchmarks.agreement import agreement
    from restr.export import ExportOptions, export_artifacts, load_source

    torch.set_num_threads(1)
    export_artifacts(
        load_source(config="restr-tiny", seed=0),
        tmp_path / "e",
        ExportOptions(engine=False, verify=False, progress=False),
        log=lambda m: None,
    )
    r = agreement(tmp_path / "e", photos=2, texts=3, providers=None)
    assert r["pixels"] > 0 and 0.99 <= r["same_side"] <= 1.0 and 0.0 <= r["decisive_share"] <= 1.0
    assert r["photos"] == 2 and r["expressions"] == 6 and r["data"].startswith("generated")


@pytest.mark.slow
def test_gpu_bench_script_runs_small_on_a_cpu(tmp_path):
    """benchmarks/gpu_bench.sh as documented, at restr-tiny size on the CPU (torch.compile included)."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CONFIG": "restr-tiny", "SIZE": "80", "DEVICE": "cpu", "RUNS": "2", "BULK": "12"}
    lib = root / "build" / "cpp" / "librestr_runtime.so"  # make cpp-build's (make test-slow builds it)
    if lib.exists():
        env["CPP_LIB"] = str(lib)
    done = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_bench.sh"), str(tmp_path / "gb")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    labels = [r["label"] for r in json.loads((tmp_path / "gb" / "bench.json").read_text())["results"]]
    assert labels == [
        "gb/export-ort#fp16,cpu",
        "gb/export-onnx#fp16,cpu",
        "gb/export-ort#fp32,cpu",
        "gb/model.pt#fp16,cpu,eager",
        "gb/model.pt#fp16,cpu,compile",
    ]
    (bulk,) = [r["bulk"] for r in json.loads((tmp_path / "gb" / "bulk.json").read_text())["results"]]
    assert bulk["images"] == 12 and bulk["model_alone"]["batch"] == 8 and bulk["share_of_model_alone"] > 0
    if lib.exists():
        cpp = json.loads((tmp_path / "gb" / "cpp.json").read_text())
        assert cpp["parity"]["masks_identical"] and cpp["precision"] == "fp16" and cpp["cpp_total_ms"]["n"] == 20


def test_bulk_rows_time_both_ways_on_the_same_photos(tiny, tmp_path, monkeypatch):
    """--bulk: one sample of each way per round, the speedup the per-round ratio bulk / loop, and
    both ways really segmenting every photo (a bulk run that dropped images would look fast)."""
    from restr.runtime import Predictor

    calls = {"loop": 0, "bulk": 0}
    predict_image, predict_many = Predictor.predict_image, Predictor.predict_many

    def count_image(self, *a, **k):
        calls["loop"] += 1
        return predict_image(self, *a, **k)

    def count_many(self, requests, **k):
        for r in predict_many(self, requests, **k):
            calls["bulk"] += len(r.predictions)
            yield r

    monkeypatch.setattr(Predictor, "predict_image", count_image)
    monkeypatch.setattr(Predictor, "predict_many", count_many)
    out = tmp_path / "r.json"
    progress_on = [a for a in FAST if a != "--no-progress"]
    res = CliRunner().invoke(
        main, ["--engine", str(tiny.export), "--bulk", "5", "--bulk-runs", "2", "--json", str(out), *progress_on]
    )
    assert res.exit_code == 0, res.output
    assert "\r" not in res.output  # off a terminal: no progress bars, whatever --no-progress says
    b = json.loads(out.read_text())["results"][0]["bulk"]
    assert b["images"] == 5 and b["loop_images_per_s"]["n"] == b["bulk_images_per_s"]["n"] == b["speedup"]["n"] == 2
    assert calls["bulk"] == 10 and calls["loop"] >= 10
    assert "bulk / loop" in res.output


def test_bulk_speedup_is_the_ratio_within_each_round():
    from restr.benchmarks.bulk import BulkRuns

    r = BulkRuns(loop=[10.0, 20.0, 5.0], bulk=[30.0, 20.0, 20.0]).result(images=7, workers=2)
    assert (r["speedup"]["min"], r["speedup"]["median"], r["speedup"]["max"]) == (1.0, 3.0, 4.0)
    assert r["loop_images_per_s"]["median"] == 10.0 and r["bulk_images_per_s"]["median"] == 20.0
