"""restr-export --triton: the generated model repository, every config.pbtxt parsed with Triton's own
model-config protobuf (tritonclient), and the repository run on a real tritonserver (PyTriton's).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # tritonclient[grpc] brings protobuf

from conftest import Server, make_tiny_export, photo, serve_python
from restr.export.pipeline import ExportError
from restr.export.triton import TritonOptions, write_repository
from restr.runtime import Predictor, protocol
from restr.runtime.client import RestrClient, ServerError

SERVE_PYTHON = serve_python()

STEPS = ["restr_vision", "restr_language", "restr_fusion_decoder", "restr_preprocess", "restr_postprocess"]
DTYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("tiny") / "export")


def parse(repo: Path) -> dict:
    """Every config.pbtxt, parsed by Triton's ModelConfig message (unknown fields or bad enums raise)."""
    configs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        configs[path.parent.name] = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert configs[path.parent.name].name == path.parent.name
    return configs


def io(tensors) -> list:
    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def manifest_io(specs, batching: bool) -> list:
    return [
        (s["name"], DTYPES[s["dtype"]], [-1 if isinstance(d, str) else d for d in (s["shape"][1:] if batching else s["shape"])])
        for s in specs
    ]


def _older_export(tiny, tmp_path) -> Path:
    """The export as restr wrote it before the processing graphs and the shared image batch."""
    folder = tmp_path / "older"
    shutil.copytree(tiny.folder, folder)
    m = json.loads((folder / "manifest.json").read_text())
    for key in ("preprocess", "postprocess"):
        del m["graphs"][key]
    m["graphs"]["fusion_decoder"]["inputs"][0]["shape"][0] = "batch"
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def test_repository_follows_the_manifest(tiny, tmp_path):
    repo = tmp_path / "repo"
    folder = _older_export(tiny, tmp_path)
    models = write_repository(folder, repo)
    m = json.loads((folder / "manifest.json").read_text())
    configs = parse(repo)
    assert sorted(configs) == sorted(STEPS + ["restr"]) and set(models) == set(configs)
    for step in ("vision", "language", "fusion_decoder"):
        c, g = configs[f"restr_{step}"], m["graphs"][step]
        assert c.backend == "onnxruntime" and c.max_batch_size == m["max_batch"]
        assert c.dynamic_batching.max_queue_delay_microseconds == 500
        assert [(i.count, model_config_pb2.ModelInstanceGroup.Kind.Name(i.kind)) for i in c.instance_group] == [(1, "KIND_GPU")]
        assert io(c.input) == manifest_io(g["inputs"], True) and io(c.output) == manifest_io(g["outputs"], True)
        assert hashlib.sha256((repo / f"restr_{step}" / "1" / "model.onnx").read_bytes()).hexdigest() == g["sha256"]
    # No preprocess / postprocess graphs in this export: the Python stand-ins, with the same contract.
    pre, post = configs["restr_preprocess"], configs["restr_postprocess"]
    assert pre.backend == post.backend == "python" and pre.max_batch_size == post.max_batch_size == 0
    assert pre.parameters["restr_step"].string_value == "preprocess"
    s = m["image_size"]
    assert io(pre.input) == [("rgb", "TYPE_UINT8", [-1, -1, 3])]
    assert io(pre.output) == [("image", "TYPE_FP32", [1, 3, s, s]), ("letterbox", "TYPE_INT64", [4])]
    assert io(post.input)[0] == ("pixel_probs", "TYPE_FP32", [-1, 1, s, s])
    bls = configs["restr"]
    assert bls.backend == "python" and bls.parameters["restr_step"].string_value == "bls"
    # what clients read from the configuration: the model, its word limit, threshold and vocabulary
    assert bls.parameters[protocol.PARAM_MODEL_NAME].string_value == m["model"]["name"]
    assert bls.parameters[protocol.PARAM_VOCABULARY].string_value.split("\n") == (folder / "vocab.txt").read_text().splitlines()
    assert [t.name for t in bls.input] == list(protocol.INPUTS) and [t.name for t in bls.output] == list(protocol.OUTPUTS)
    assert {t.name for t in bls.input if t.optional} == set(protocol.OPTIONAL)
    version = repo / "restr" / "1"
    assert (version / "vocab.txt").read_bytes() == (folder / "vocab.txt").read_bytes()
    cfg = json.loads((version / "restr.json").read_text())
    assert cfg["threshold"] == m["threshold"] and cfg["max_batch"] == m["max_batch"] and cfg["broadcast_image"] is False
    assert {"model.py", "restr_protocol.py", "restr_tokenizer.py", "restr_transforms.py"} <= {p.name for p in version.iterdir()}
    write_repository(folder, tmp_path / "cpu", TritonOptions(device="cpu", instances=3))
    cpu = parse(tmp_path / "cpu")
    assert [(i.count, model_config_pb2.ModelInstanceGroup.Kind.Name(i.kind)) for i in cpu["restr_vision"].instance_group] == [
        (3, "KIND_CPU")
    ]


def _add_graph(folder: Path, m: dict, key: str, source: str, inputs: list, outputs: list) -> None:
    """A manifest entry for a graph the export may have (the file: a copy of another, for the checksum)."""
    shutil.copy(folder / f"{source}.onnx", folder / f"{key}.onnx")
    m["graphs"][key] = {
        "file": f"{key}.onnx",
        "sha256": hashlib.sha256((folder / f"{key}.onnx").read_bytes()).hexdigest(),
        "precision": "fp32",
        "inputs": inputs,
        "outputs": outputs,
    }


def test_uses_preprocess_postprocess_graphs_engines_and_image_batch_when_the_manifest_has_them(tiny, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tiny.folder, folder)
    m = json.loads((folder / "manifest.json").read_text())
    s = m["image_size"]
    _add_graph(
        folder,
        m,
        "preprocess",
        "vision",
        [{"name": "rgb", "dtype": "uint8", "shape": ["height", "width", 3]}],
        [{"name": "image", "dtype": "float32", "shape": [1, 3, s, s]}, {"name": "letterbox", "dtype": "int64", "shape": [4]}],
    )
    _add_graph(
        folder,
        m,
        "postprocess",
        "vision",
        [
            {"name": "pixel_probs", "dtype": "float32", "shape": ["batch", 1, s, s]},
            {"name": "letterbox", "dtype": "int64", "shape": [4]},
            {"name": "threshold", "dtype": "float32", "shape": [1]},
        ],
        [
            {"name": "mask", "dtype": "bool", "shape": ["batch", "height", "width"]},
            {"name": "score", "dtype": "float32", "shape": ["batch"]},
        ],
    )
    m["graphs"]["fusion_decoder"]["inputs"][0]["shape"][0] = "image_batch"
    (folder / "vision_fp16.engine").write_bytes(b"a serialized TensorRT engine")
    m["engines"] = {
        "vision_fp16": {
            "file": "vision_fp16.engine",
            "sha256": hashlib.sha256(b"a serialized TensorRT engine").hexdigest(),
            "source": "vision.onnx",
            "max_batch": 16,
        }
    }
    (folder / "manifest.json").write_text(json.dumps(m))

    write_repository(folder, tmp_path / "repo")
    configs = parse(tmp_path / "repo")
    pre, post, fd, vision = (configs[f"restr_{k}"] for k in ("preprocess", "postprocess", "fusion_decoder", "vision"))
    assert pre.backend == post.backend == "onnxruntime" and pre.max_batch_size == post.max_batch_size == 0
    assert io(pre.input) == [("rgb", "TYPE_UINT8", [-1, -1, 3])]
    assert io(post.output) == [("mask", "TYPE_BOOL", [-1, -1, -1]), ("score", "TYPE_FP32", [-1])]
    # One image's features for K expressions: no common batch axis, so no Triton batching; the BLS broadcasts.
    assert (
        fd.max_batch_size == 0
        and not fd.HasField("dynamic_batching")
        and io(fd.input)[0][2] == [-1, m["num_patches"], m["feature_width"]]
    )
    assert json.loads((tmp_path / "repo" / "restr" / "1" / "restr.json").read_text())["broadcast_image"] is True
    assert vision.platform == "tensorrt_plan" and not vision.backend and vision.max_batch_size == 16
    assert (tmp_path / "repo" / "restr_vision" / "1" / "model.plan").read_bytes() == b"a serialized TensorRT engine"
    assert io(vision.input) == manifest_io(m["graphs"]["vision"]["inputs"], True)
    write_repository(folder, tmp_path / "no-engines", TritonOptions(engines=False))
    plain = parse(tmp_path / "no-engines")
    assert plain["restr_vision"].backend == "onnxruntime" and plain["restr_vision"].max_batch_size == m["max_batch"]


def test_fp16_is_the_fp16_graphs_or_a_refusal(tiny, tmp_path):
    """--precision fp16 used to fall back to the FP32 graphs without a word."""
    with pytest.raises(ExportError, match="no fp16 'vision' graph"):
        write_repository(tiny.folder, tmp_path / "repo", TritonOptions(precision="fp16"))
    assert not (tmp_path / "repo").exists()
    folder = tmp_path / "export"
    shutil.copytree(tiny.folder, folder)
    m = json.loads((folder / "manifest.json").read_text())
    for step in ("vision", "language", "fusion_decoder"):
        _add_graph(folder, m, f"{step}_fp16", step, m["graphs"][step]["inputs"], m["graphs"][step]["outputs"])
        (folder / f"{step}_fp16.onnx").write_bytes(
            (folder / f"{step}_fp16.onnx").read_bytes() + b"\0"
        )  # another file than the fp32 one
        m["graphs"][f"{step}_fp16"]["sha256"] = hashlib.sha256((folder / f"{step}_fp16.onnx").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(m))
    write_repository(folder, tmp_path / "fp16", TritonOptions(precision="fp16", engines=False))
    for step in ("vision", "language", "fusion_decoder"):
        assert (tmp_path / "fp16" / f"restr_{step}" / "1" / "model.onnx").read_bytes() == (
            folder / f"{step}_fp16.onnx"
        ).read_bytes()
    # as users type it: restr-export --out EXPORT --triton DIR --precision fp16
    from click.testing import CliRunner

    from restr.export.cli import cli

    r = CliRunner().invoke(
        cli, ["--out", str(folder), "--triton", str(tmp_path / "cli16"), "--precision", "fp16", "--triton-for", "cpu"]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cli16" / "restr_vision" / "1" / "model.onnx").read_bytes() == (folder / "vision_fp16.onnx").read_bytes()


def test_refusals(tiny, tmp_path):
    repo = tmp_path / "repo"
    write_repository(tiny.folder, repo)
    with pytest.raises(ExportError, match="already exists"):
        write_repository(tiny.folder, repo)
    write_repository(tiny.folder, repo, TritonOptions(force=True))  # a repository may be replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a restr Triton repository"):
        write_repository(tiny.folder, tmp_path / "other", TritonOptions(force=True))
    assert (tmp_path / "other" / "keep.txt").exists()
    broken = tmp_path / "broken"
    shutil.copytree(tiny.folder, broken)
    (broken / "language.onnx").write_bytes(b"changed")
    with pytest.raises(ExportError, match="sha256"):
        write_repository(broken, tmp_path / "repo-broken")
    assert not (tmp_path / "repo-broken").exists() and not list(tmp_path.glob(".repo-broken*"))


def test_cli(tiny, tmp_path):
    from click.testing import CliRunner

    from restr.export.cli import cli

    r = CliRunner().invoke(cli, ["--out", str(tiny.folder), "--triton", str(tmp_path / "repo")])
    assert r.exit_code == 0, r.output
    assert sorted(parse(tmp_path / "repo")) == sorted(STEPS + ["restr"])
    r = CliRunner().invoke(cli, ["--out", str(tiny.folder), "--triton", str(tmp_path / "repo")])
    assert r.exit_code == 2 and "already exists" in r.output
    r = CliRunner().invoke(cli, ["--triton", str(tmp_path / "x")])
    assert r.exit_code == 2 and "needs an export" in r.output


@pytest.mark.skipif(SERVE_PYTHON is None, reason="no serving environment with nvidia-pytriton: run `make serve-env`")
def test_generated_repository_runs_on_tritonserver(tiny, tmp_path):
    """The BLS model, the Python pre/post-processing and the wiring, on a real tritonserver: PyTriton's,
    which has only the Python backend, so the graphs run in onnxruntime inside it (--triton-for pytriton)."""
    repo = tmp_path / "repo"
    write_repository(tiny.folder, repo, TritonOptions(device="cpu", python_graphs=True, bls_instances=1))
    predictor = Predictor.from_artifacts(tiny.folder, threads=1)
    image = tmp_path / "photo.png"
    photo(72, 48, seed=1).save(image)
    texts = ["the red circle", "the small blue square left of it", "zzz unknown words"] * 2  # 6 > max_batch 4: two chunks
    s = Server(tmp_path / "server.log", "--repository", str(repo), "--drain-timeout", "5")
    try:
        s.wait_ready()
        for url in (s.url, s.grpc_url):
            with RestrClient(url) as client:
                local = predictor.predict_image(image, texts)
                assert any(p.area for p in local)
                assert client.served().model_name == "restr-tiny" and not client.served().batched
                for remote in (client.predict(image, texts), client.predict(np.asarray(photo(72, 48, seed=1)), texts)):
                    for r, l in zip(remote, local, strict=True):
                        assert np.array_equal(r.mask, l.mask) and r.area == l.area and r.unknown_words == l.unknown_words
                        assert r.no_known_words == l.no_known_words and set(r.timings) == set(l.timings)
                        assert r.score == pytest.approx(l.score, abs=1e-5) and r.patch_score == pytest.approx(
                            l.patch_score, abs=1e-5
                        )
                with pytest.raises(ServerError, match="is empty"):
                    client.predict(image, ["the red circle", "  "])
                with pytest.raises(ServerError, match="not a readable image"):
                    client.infer({"image": np.array([b"junk"], dtype=object), "texts": np.array([b"the circle"], dtype=object)})
                assert client.ready()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) == 0
    finally:
        s.stop()
