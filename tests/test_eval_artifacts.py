"""restr-eval --artifacts / --server: the model as deployed, scored as the checkpoint is, and the deploy
gate (--max-drop) that compares the two on the same samples.

One small synthetic data set, its refs shuffled so that an image's samples lie apart (as in
RefCOCO), a restr-tiny checkpoint with seeded random weights spread out so its masks are not all
empty (tests/test_runtime.py's `make_tiny_model`), and restr-export's FP32 and FP16 graphs of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from restr.evaluate import main, predict_images, runtime_masks, score
from restr.metrics import AGREEMENT_LEVEL, SegmentationMetrics, agreement, difference, format_comparison
from restr.runtime import Predictor

SHARE = f"share_above_{AGREEMENT_LEVEL}"
FP32_BOUND, FP16_BOUND = 0.002, 0.005  # overall IoU, artifacts against the checkpoint
RUNTIME_FIELDS = {"artifacts", "backend", "precision", "providers"}
SCORES = ("n", "overall_iou", "mean_iou", "precision_at", "by_length")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    from conftest import make_tiny_model
    from restr.checkpoint import save_checkpoint
    from restr.data import load_refer, make_synthetic
    from restr.export.pipeline import ExportOptions, export_artifacts, load_source
    from restr.runtime.tokenizer import Vocabulary

    root = tmp_path_factory.mktemp("eval-artifacts")
    data = make_synthetic(root / "data", seed=0, sizes={"train": 4, "val": 2, "test": 6})
    refs = pickle.loads((data / "refs(synthetic).p").read_bytes())
    random.Random(0).shuffle(refs)
    (data / "refs(synthetic).p").write_bytes(pickle.dumps(refs))
    vocab = Vocabulary.build(s.text for s in load_refer(data))
    torch.set_num_threads(1)
    save_checkpoint(root / "model.pt", make_tiny_model(vocab), vocab, {"data": str(data)})
    export_artifacts(
        load_source(ckpt=root / "model.pt"),
        root / "export",
        ExportOptions(max_batch=4, precisions=("fp32", "fp16"), engine=False, verify=False, progress=False, threads=1),
        log=lambda _: None,
    )
    return SimpleNamespace(root=root, data=f"{data}:test", ckpt=str(root / "model.pt"), export=str(root / "export"))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="restr-eval")


def scored(made, tmp_path, *args, code: int = 0) -> dict:
    """restr-eval ARGS --json FILE in-process: its JSON (the exit code checked)."""
    out = tmp_path / f"eval-{len(list(tmp_path.iterdir()))}.json"
    r = run(*args, "--data", made.data, "--json", out, "--no-progress")
    assert r.exit_code == code, (r.exit_code, r.output, r.stderr, r.exception)
    return json.loads(out.read_text())


def without_seconds(block: dict) -> dict:
    return {k: v for k, v in block.items() if k != "seconds"}


def dataset(made, vocab=None, shuffle_text=False):
    from restr.data import build_dataset
    from restr.runtime import Artifacts

    art = Artifacts.open(made.export)
    return build_dataset(
        made.data, None, art.image_size, vocab or art.vocabulary(), art.mean, art.std, art.max_words, shuffle_text=shuffle_text
    )


def _counts(metrics: SegmentationMetrics) -> dict:
    return {k: v.tolist() for k, v in metrics.state().items()}


# -- the score: the runtime on each image as it reads it, at the image's own size -----------------------


@pytest.mark.parametrize("shuffle_text", [False, True])
def test_artifacts_score_is_the_runtime_on_each_image_at_its_own_size(made, tmp_path, shuffle_text):
    """Sample by sample: the image file through Predictor.predict_image with the expressions of its
    image (the batch the evaluation makes), the sample's own mask picked out and compared with the
    ground truth at the image's size. A sample given another's mask, a mask compared on the
    letterboxed square, or an image prepared by anything but the export's preprocess graph changes
    the counts."""
    args = ["--artifacts", made.export] + (["--shuffle-text"] if shuffle_text else [])
    got = scored(made, tmp_path, *args)
    ds = dataset(made, shuffle_text=shuffle_text)
    predictor = Predictor.from_artifacts(made.export, cache_size=0)
    paths = [ds.image_path(i) for i in range(len(ds))]
    answers = {
        p: predictor.predict_image(p, [ds.text(i) for i in range(len(ds)) if paths[i] == p], probs=False) for p in set(paths)
    }
    expected = SegmentationMetrics(ds.length_groups)
    for i, path in enumerate(paths):
        expected.update(answers[path][paths[:i].count(path)].mask, ds.ground_truth(i), ds.num_words(i))
    assert without_seconds(got) == {
        **expected.result(),
        "checkpoint": "model.pt",
        "config": "restr-tiny",
        "data": made.data,
        "split": None,
        "shuffle_text": shuffle_text,
        "threshold": 0.5,
        "artifacts": made.export,
        "backend": "ort",
        "precision": "fp32",
        "providers": ["CPUExecutionProvider"],
    }
    assert 0 < got["overall_iou"] < 1 and len({ds.ground_truth(i).shape for i in range(len(ds))}) > 1  # the test means something


def test_each_image_is_encoded_once_and_answers_keep_their_samples(made):
    ds = dataset(made)
    groups = ds.groups_by_image(range(len(ds)))
    assert sorted(i for g in groups for i in g) == list(range(len(ds)))
    assert all(len({ds.image_path(i) for i in g}) == 1 for g in groups)
    assert len(groups) == len({ds.image_path(i) for i in range(len(ds))}) < len(ds)
    predictor = Predictor.from_artifacts(made.export, cache_size=0)
    answers = list(runtime_masks(predictor, ds, groups))
    assert predictor.vision_runs == len(groups)
    assert [i for i, _ in answers] == [i for g in groups for i in g]
    assert all(mask.shape == ds.ground_truth(i).shape for i, mask in answers)
    assert ds.groups_by_image(range(len(ds)), most=2) == [g[k : k + 2] for g in groups for k in range(0, len(g), 2)]


def test_answers_are_paired_by_sample_whatever_their_order():
    """The checkpoint answers in index order, the runtime image by image: sample i's two masks meet."""
    gt = np.ones((3, 3), np.uint8)
    ds = SimpleNamespace(
        ground_truth=lambda i: gt,
        num_words=lambda i: i + 1,
        length_groups=[(1, 2), (3, 20)],
        image_path=lambda i: Path(f"{i}.png"),
    )
    masks = {i: np.arange(9).reshape(3, 3) < i + 1 for i in range(4)}  # sample i: i + 1 pixels
    (first, second), pairs = score(
        ds, [iter(masks.items()), iter([(i, masks[i]) for i in (2, 0, 3, 1)])], total=4, progress=False
    )
    assert _counts(first) == _counts(second) == {"intersection": [1, 2, 3, 4], "union": [9] * 4, "num_words": [1, 2, 3, 4]}
    assert agreement(pairs)["min_mask_iou"] == 1.0
    with pytest.raises(RuntimeError, match="different samples"):
        score(ds, [iter(masks.items()), iter([(i, masks[i]) for i in (2, 0, 1)])], total=4, progress=False)


def test_a_failure_on_one_image_names_it(made):
    from restr.runtime.cli_common import UsageError

    ds = dataset(made)
    groups = ds.groups_by_image(range(len(ds)))

    predictor = Predictor.from_artifacts(made.export)

    class Failing:  # a runtime without predict_many (as a served model's client), failing on the second image
        def predict_image(self, image, texts, probs=False):
            if image == ds.image_path(groups[1][0]):
                raise RuntimeError("the graph failed\nsecond line")
            return predictor.predict_image(image, texts, probs=probs)

    results = list(predict_images(Failing(), [(ds.image_path(g[0]), ["the circle"] * len(g)) for g in groups[:2]]))
    assert (
        [r.index for r in results] == [0, 1]
        and results[0].error is None
        and results[0].size == ds.ground_truth(groups[0][0]).shape
    )
    assert results[1].predictions == [] and str(results[1].error).startswith("the graph failed")
    with pytest.raises(
        UsageError, match=re.escape(f"{ds.image_path(groups[1][0])}: the runtime failed on it: the graph failed") + "$"
    ):
        list(runtime_masks(Failing(), ds, groups))


# -- the checkpoint beside the artifacts -------------------------------------------------------------------


def test_checkpoint_and_artifacts_on_the_same_samples(made, tmp_path):
    """Each block equals the command run alone on the same samples (the checkpoint's is the PyTorch
    model's masks at each image's size, computed here); the artifacts are within the bound."""
    from restr.checkpoint import load_checkpoint

    limit = ["--limit", 25]  # cuts an image's expressions in two: the same 25 samples on both sides
    both = scored(made, tmp_path, "--ckpt", made.ckpt, "--artifacts", made.export, *limit)
    alone = scored(made, tmp_path, "--ckpt", made.ckpt, *limit)
    exported = scored(made, tmp_path, "--artifacts", made.export, *limit)
    assert set(both) == {"checkpoint", "artifacts", "difference", "agreement", "max_drop", "passed"}
    assert without_seconds(both["checkpoint"]) == without_seconds(alone)
    assert without_seconds(both["artifacts"]) == without_seconds(exported)
    assert both["checkpoint"]["n"] == 25 and both["max_drop"] is None and both["passed"] is None

    ck = load_checkpoint(made.ckpt)
    ds = dataset(made, vocab=ck.vocab)
    batch = {k: torch.stack([ds[i][k] for i in range(25)]) for k in ("image", "words", "pad_mask")}  # one batch, as restr-eval's
    with torch.no_grad():
        probs = torch.sigmoid(ck.model(batch["image"], batch["words"], batch["pad_mask"])[0])[:, 0].numpy()
    expected = SegmentationMetrics(ds.length_groups)
    for i in range(25):
        expected.update(ds.letterbox(i).invert(probs[i]) > 0.5, ds.ground_truth(i), ds.num_words(i))
    assert without_seconds(alone) == {
        **expected.result(),
        "checkpoint": made.ckpt,
        "config": "restr-tiny",
        "data": made.data,
        "split": None,
        "shuffle_text": False,
        "threshold": 0.5,
    }

    assert_close(both, FP32_BOUND)


def assert_close(both: dict, bound: float) -> None:
    diff = both["difference"]
    assert diff["overall_iou"] == pytest.approx(both["artifacts"]["overall_iou"] - both["checkpoint"]["overall_iou"])
    assert abs(diff["overall_iou"]) <= bound
    agree = both["agreement"]
    assert (
        agree["n"] == both["checkpoint"]["n"] and agree["min_mask_iou"] <= agree["mean_mask_iou"] <= 1 and 0 <= agree[SHARE] <= 1
    )
    assert agree["mean_mask_iou"] >= 0.98


def test_fp16_graphs_against_the_checkpoint(made, tmp_path):
    both = scored(made, tmp_path, "--ckpt", made.ckpt, "--artifacts", made.export, "--precision", "fp16")
    assert (
        both["artifacts"]["precision"] == "fp16"
        and both["checkpoint"]["precision_at"].keys() == both["artifacts"]["precision_at"].keys()
    )
    assert_close(both, FP16_BOUND)


def test_json_keys_of_artifacts_are_those_of_ckpt_and_what_was_scored(made, tmp_path):
    alone = scored(made, tmp_path, "--ckpt", made.ckpt, "--limit", 5)
    exported = scored(made, tmp_path, "--artifacts", made.export, "--limit", 5)
    assert set(exported) == set(alone) | RUNTIME_FIELDS
    assert set(alone) == {
        "n",
        "overall_iou",
        "mean_iou",
        "precision_at",
        "by_length",
        "checkpoint",
        "config",
        "data",
        "split",
        "shuffle_text",
        "threshold",
        "seconds",
    }
    for key in ("precision_at", "by_length"):
        assert exported[key].keys() == alone[key].keys()
    assert all(g.keys() == {"overall_iou", "mean_iou", "n"} for g in exported["by_length"].values())


def _broken_head(export: Path, to: Path) -> Path:
    """A copy of the export whose fusion decoder's head bias is -100: every mask is empty, a real drop."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(export, to)
    path = to / "fusion_decoder.onnx"
    model = onnx.load(path)
    head = next(n for n in model.graph.node if "model.decoder.head.weight" in n.input)
    add = next(n for n in model.graph.node if head.output[0] in n.input)
    bias = next(t for t in model.graph.initializer if t.name in add.input)
    bias.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(bias).shape, -100, np.float32), bias.name))
    onnx.save(model, path)
    manifest = json.loads((to / "manifest.json").read_text())
    manifest["graphs"]["fusion_decoder"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["graphs"]["fusion_decoder"]["bytes"] = path.stat().st_size
    (to / "manifest.json").write_text(json.dumps(manifest))
    return to


def test_max_drop_passes_within_and_fails_beyond_the_drop(made, tmp_path):
    broken = _broken_head(Path(made.export), tmp_path / "broken")
    out = tmp_path / "gate.json"
    r = run("--ckpt", made.ckpt, "--artifacts", broken, "--data", made.data, "--max-drop", 0.005, "--json", out, "--no-progress")
    assert r.exit_code == 1, (r.output, r.stderr, r.exception)
    res = json.loads(out.read_text())  # written before the exit
    drop = res["checkpoint"]["overall_iou"] - res["artifacts"]["overall_iou"]
    assert res["artifacts"]["overall_iou"] == 0 and drop > 0.005 and res["passed"] is False
    assert "overall IoU (cumulative)" in r.stdout  # the table is printed too
    (line,) = r.stderr.strip().splitlines()
    assert line == (
        f"restr-eval: deploy gate failed: the artifacts' overall IoU 0.0000 is {drop:.4f} below the checkpoint's "
        f"{res['checkpoint']['overall_iou']:.4f}, more than --max-drop 0.005"
    )
    # the same drop against a tolerance just above it passes
    r = run(
        "--ckpt", made.ckpt, "--artifacts", broken, "--data", made.data, "--max-drop", round(drop + 0.001, 4), "--no-progress"
    )
    assert r.exit_code == 0 and "deploy gate passed" in r.stdout, (r.output, r.stderr)


def test_the_gate_as_users_run_it(made, tmp_path):
    """`python -m restr.evaluate`, a real process: exit code, table, progress lines, JSON."""
    out = tmp_path / "gate.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "restr.evaluate",
            "--ckpt",
            made.ckpt,
            "--artifacts",
            made.export,
            "--data",
            made.data,
            "--max-drop",
            str(FP32_BOUND),
            "--limit",
            "12",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "RESTR_PROGRESS_INTERVAL": "0"},
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and re.search(r"^evaluate 12/12 \(100%\) [\d.]+ sample/s", r.stderr, re.M), r.stderr
    res = json.loads(out.read_text())
    assert res["passed"] is True and res["max_drop"] == FP32_BOUND and res["checkpoint"]["n"] == res["artifacts"]["n"] == 12
    head = next(line for line in r.stdout.splitlines() if line.startswith("metric"))
    assert head.split() == ["metric", "checkpoint", "artifacts", "difference"]
    row = next(line for line in r.stdout.splitlines() if line.startswith("overall IoU (cumulative)")).split()
    assert row[-3:] == [
        f"{res['checkpoint']['overall_iou']:.4f}",
        f"{res['artifacts']['overall_iou']:.4f}",
        f"{res['difference']['overall_iou']:+.4f}",
    ]
    assert f"wrote {out}" in r.stdout and "deploy gate passed" in r.stdout
    from restr.demo import gate_summary  # make demo's summary reads this JSON

    line = gate_summary("fp32", FP32_BOUND, out)
    assert (
        f"overall IoU {res['artifacts']['overall_iou']:.4f}, {res['difference']['overall_iou']:+.4f} against the checkpoint"
        in line
    )
    assert f"mean {res['agreement']['mean_mask_iou']:.4f}" in line and line.startswith("FP32 export ")


def test_no_progress_prints_no_progress(made, monkeypatch):
    monkeypatch.setenv("RESTR_PROGRESS_INTERVAL", "0")
    r = run("--artifacts", made.export, "--data", made.data, "--limit", 3)
    assert r.exit_code == 0 and "evaluate 3/3 (100%)" in r.stderr and "sample/s" in r.stderr
    r = run("--artifacts", made.export, "--data", made.data, "--limit", 3, "--no-progress")
    assert r.exit_code == 0 and r.stderr == ""


# -- bad input: one line, exit 2, nothing written, before any work ----------------------------------------


def _fp32_only(made, tmp_path) -> Path:
    folder = shutil.copytree(made.export, tmp_path / "fp32-only")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"] = {k: g for k, g in manifest["graphs"].items() if not k.endswith("_fp16")}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _closed_port() -> int:
    from restr.benchmarks.serve_bench import free_ports

    return free_ports(1)[0]


BAD = [
    (["--data", "{data}"], r"give --ckpt FILE, --artifacts DIR or --server URL"),
    (
        ["--artifacts", "{export}", "--server", "http://127.0.0.1:1", "--data", "{nodata}"],
        r"give one of --artifacts DIR and --server URL",
    ),
    (["--artifacts", "{export}", "--max-drop", "0.005", "--data", "{nodata}"], r"--max-drop .*give --ckpt FILE"),
    (["--ckpt", "{ckpt}", "--max-drop", "0.005", "--data", "{nodata}"], r"--max-drop .*--artifacts DIR \(or --server URL\)"),
    (
        ["--ckpt", "{ckpt}", "--artifacts", "{export}", "--max-drop", "1", "--data", "{nodata}"],
        r"--max-drop 1: .*0\.01 is one point",
    ),
    (["--ckpt", "{ckpt}", "--precision", "fp16", "--data", "{nodata}"], r"--precision: only for an export folder"),
    (
        ["--server", "http://127.0.0.1:1", "--providers", "cpu", "--data", "{nodata}"],
        r"--providers: only for an export folder; a server",
    ),
    (["--artifacts", "{root}/missing", "--data", "{nodata}"], r"missing: no such folder"),
    (["--artifacts", "{root}", "--data", "{nodata}"], r"no manifest\.json"),
    (["--artifacts", "{fp32_only}", "--precision", "fp16", "--data", "{nodata}"], r"no 'vision_fp16' graph"),
    (["--artifacts", "{export}", "--backend", "tensorrt", "--data", "{nodata}"], r"no 'vision\w*' TensorRT engine"),
    (["--server", "http://127.0.0.1:{port}", "--data", "{nodata}"], r"http://127\.0\.0\.1:\d+: no ready 'restr' model there"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[re.sub(r"\W+", " ", m)[:40] for _, m in BAD])
def test_bad_input_is_one_line_before_any_work(made, tmp_path, args, message):
    """--data names no data set: each mistake is found before the data is read."""
    names = dict(
        data=made.data,
        nodata=tmp_path / "no-data",
        export=made.export,
        ckpt=made.ckpt,
        root=made.root,
        fp32_only=_fp32_only(made, tmp_path) if "{fp32_only}" in args else "",
        port=_closed_port(),
    )
    out = tmp_path / "e.json"
    r = run(*[a.format(**names) for a in args], "--json", out)
    assert r.exit_code == 2, (r.output, r.stderr, r.exception)
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("restr-eval: error: ") and re.search(message, line), line
    assert r.stdout == "" and not out.exists()


def test_a_provider_this_build_lacks_is_refused(made, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    r = run("--artifacts", made.export, "--providers", "cuda", "--data", tmp_path / "no-data")
    assert r.exit_code == 2 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert (
        line.startswith("restr-eval: error: --providers cuda: CUDAExecutionProvider is not available") and "skipped" not in line
    )


# -- the comparison's arithmetic ---------------------------------------------------------------------------


def test_difference_agreement_and_their_table_by_hand():
    groups = [(1, 2), (3, 20)]
    a, b = SegmentationMetrics(groups), SegmentationMetrics(groups)
    for m, counts in ((a, [(1, 2, 1), (3, 4, 3)]), (b, [(1, 4, 1), (4, 4, 3)])):
        for i, u, w in counts:
            m.add(i, u, w)
    ra, rb = a.result(), b.result()
    d = difference(ra, rb)
    assert d["overall_iou"] == pytest.approx(5 / 8 - 4 / 6) and d["mean_iou"] == pytest.approx(0.625 - 0.625)
    assert d["precision_at"]["0.5"] == pytest.approx(0.5 - 1.0) and d["by_length"]["3-20"]["overall_iou"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="not the same samples"):
        difference(ra, SegmentationMetrics(groups).result())

    pairs = SegmentationMetrics()
    full, half, empty = np.ones((2, 2), bool), np.array([[1, 1], [0, 0]], bool), np.zeros((2, 2), bool)
    for x, y in ((full, full), (full, half), (empty, empty), (half, empty)):
        pairs.update(x, y)
    agree = agreement(pairs)
    assert agree == {
        "n": 4,
        "mean_mask_iou": pytest.approx(2.5 / 4),
        "min_mask_iou": 0.0,
        SHARE: 0.5,
        "overall_mask_iou": pytest.approx(6 / 10),
    }

    text = format_comparison(ra, rb, agree)
    row = next(line for line in text.splitlines() if line.startswith("overall IoU (cumulative)")).split()
    assert row[-3:] == ["0.6667", "0.6250", "-0.0417"]
    assert "mean 0.6250, min 0.0000; above 0.99 on 2 of 4 expressions (50.0%)" in text


# -- a served model ------------------------------------------------------------------------------------------


def test_server_path_on_a_stand_in(made, tmp_path, monkeypatch):
    """--server's wiring without Triton: a stand-in for RemotePredictor answers with the export's
    Predictor. The image goes as its path (a served model decodes the file), the server is named,
    the connection closed; the scores are the folder's."""
    sent, closed = [], []

    class StandIn:
        def __init__(self, url, threshold=None):
            self.client, self.artifacts = SimpleNamespace(url=url), SimpleNamespace(max_words=20)
            self.predictor = Predictor.from_artifacts(made.export, threshold=threshold)

        def embed(self, image):
            sent.append(image)
            return image

        def predict_embedding(self, image, texts):
            return self.predictor.predict_image(image, texts, probs=False)

        def close(self):
            closed.append(True)

    monkeypatch.setattr("restr.runtime.client.RemotePredictor", StandIn)
    served = scored(made, tmp_path, "--ckpt", made.ckpt, "--server", "http://stand-in:8000", "--limit", 12)
    folder = scored(made, tmp_path, "--ckpt", made.ckpt, "--artifacts", made.export, "--limit", 12)
    assert served["artifacts"]["server"] == "http://stand-in:8000" and not RUNTIME_FIELDS & set(served["artifacts"])
    assert served["artifacts"]["config"] is None and served["artifacts"]["checkpoint"] is None
    assert {k: served["artifacts"][k] for k in SCORES} == {k: folder["artifacts"][k] for k in SCORES}
    assert closed == [True] and all(isinstance(p, Path) and p.is_file() for p in sent) and len(set(sent)) == len(sent)


@pytest.mark.slow
def test_a_served_export_scores_as_the_folder(made, tmp_path):
    """restr-serve on the export: --server gives the --artifacts figures (the image sent as its file's bytes)."""
    pytest.importorskip("tritonclient.http")
    from restr.benchmarks.serve_bench import ServerProcess, serve_python

    python = serve_python()
    if python is None:
        pytest.skip("no serving environment (make serve-env)")
    server = ServerProcess(python, tmp_path / "server.log", "--artifacts", made.export)
    try:
        assert server.wait_ready(), server.tail()
        served = scored(made, tmp_path, "--ckpt", made.ckpt, "--server", server.url, "--limit", 20)
    finally:
        server.stop()
    folder = scored(made, tmp_path, "--ckpt", made.ckpt, "--artifacts", made.export, "--limit", 20)
    assert served["artifacts"]["server"] == server.url and not RUNTIME_FIELDS & set(served["artifacts"])
    assert {k: served["artifacts"][k] for k in SCORES} == {k: folder["artifacts"][k] for k in SCORES}
    assert served["agreement"] == folder["agreement"]
