"""restr-serve's own logic, without a server: what tests/test_serve.py cannot make happen on demand
or would spend a server start on.

- The repository it writes: config.pbtxt parsed by Triton's own ModelConfig message (batching,
  ragged inputs, the metadata clients read), and the tritonserver command line (which APIs need the
  access token, no CUDA pools on a CPU).
- The model as Triton's Python backend runs it, with a stand-in for triton_python_backend_utils:
  a batch of requests is one predict_many call, each bad request gets its own one-line client error
  and one log line, a runtime failure fails its batch in one line.
- Repositories the bundled tritonserver cannot run, ports in use or given twice: one line, exit 2,
  before anything starts.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from restr.runtime import protocol, serve

pytest.importorskip("torch")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import json_format, text_format

from conftest import make_tiny_export, photo
from restr.runtime import Predictor


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("tiny") / "export")


def written(tiny, tmp_path, **kwargs):
    """write_repository's config.pbtxt, parsed by Triton's ModelConfig message (bad fields or enums raise)."""
    config = serve.ServeConfig(artifacts=tiny.folder, **kwargs)
    repo, name, batch = serve.write_repository(config, tmp_path, tmp_path / "error.txt")
    parsed = text_format.Parse((repo / "restr" / "config.pbtxt").read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    return repo, name, batch, parsed


def test_the_repository_batches_requests_and_says_what_it_serves(tiny, tmp_path):
    repo, name, batch, c = written(tiny, tmp_path, instances=3, batch_delay_us=500, providers=["cuda", "cpu"])
    manifest = json.loads((tiny.folder / "manifest.json").read_text())
    assert name == "restr-tiny" and batch == c.max_batch_size == manifest["max_batch"] > 1  # with a GPU: the export's
    assert c.backend == "python" and c.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in c.instance_group] == [(3, "KIND_CPU")]
    # one image per request, of any size and any number of expressions: every input may be ragged
    assert [t.name for t in c.input] == list(protocol.INPUTS) and all(t.allow_ragged_batch for t in c.input)
    assert {t.name for t in c.input if t.optional} == set(protocol.OPTIONAL)
    assert [t.name for t in c.output] == list(protocol.OUTPUTS)
    params = {k: v.string_value for k, v in c.parameters.items()}
    assert params["artifacts"] == str(tiny.folder.resolve()) and params["threads"] == str(max(1, (os.cpu_count() or 1) // 3))
    served = __import__("restr.runtime.client", fromlist=["ServedModel"]).ServedModel.from_config(
        "http://h:1", json_format.MessageToDict(c, preserving_proto_field_name=True)
    )
    assert served.model_name == "restr-tiny" and served.batched and served.max_words == manifest["max_words"]
    assert served.vocabulary() == tiny.vocab and served.threshold == manifest.get("threshold", 0.5)
    assert (repo / "restr" / "1" / "model.py").read_text().count("TritonModel as TritonPythonModel") == 1
    assert written(tiny, tmp_path / "cpu")[3].max_batch_size == 1  # on a CPU one at a time costs less per image
    assert written(tiny, tmp_path / "b3", batch_images=3)[3].max_batch_size == 3


def test_pbtxt_keeps_words_outside_ascii():
    """Vocabularies hold such words; protobuf's text format has to read them back as written."""
    text = protocol.pbtxt(
        {"name": "restr", "parameters": [protocol.parameter("restr_vocabulary", '<pad>\n<unk>\ncafé\n"quoted"\n日本')]}
    )
    parsed = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert parsed.parameters["restr_vocabulary"].string_value == '<pad>\n<unk>\ncafé\n"quoted"\n日本'


def test_tritonserver_command_line(tmp_path):
    def args(**kwargs):
        return serve.tritonserver_args(serve.ServeConfig(artifacts=tmp_path, **kwargs), tmp_path, tmp_path, "p-", "TOKEN")

    local = args()
    assert "--http-restricted-api=model-repository,trace,logging:triton-access-token=TOKEN" in local
    assert "--grpc-restricted-protocol=model-repository,trace,logging:triton-access-token=TOKEN" in local
    assert not any("statistics" in a for a in local)  # perf_analyzer and Model Analyzer read them
    exposed = args(host="0.0.0.0")
    assert "--http-restricted-api=model-repository,trace,logging,shared-memory:triton-access-token=TOKEN" in exposed
    assert {"--model-control-mode=explicit", "--load-model=restr", "--strict-readiness=true", "--exit-timeout-secs=30"} <= set(
        local
    )
    assert {"--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"} <= set(local)  # no CUDA on a CPU server
    gpu = args(providers=["cuda", "cpu"])
    assert not any(a.startswith(("--pinned-memory", "--allow-gpu-metrics")) for a in gpu)
    assert "--load-model=*" in serve.tritonserver_args(
        serve.ServeConfig(artifacts=None, repository=tmp_path), tmp_path, tmp_path, "p-", "T"
    )


# -- the model, with a stand-in for Triton's Python backend -----------------------------------------


class FakeTensor:
    def __init__(self, name, value):
        self.name, self.value = name, value

    def as_numpy(self):
        return self.value


class FakeRequest:
    def __init__(self, wanted=(), **inputs):
        self.inputs, self.wanted = inputs, list(wanted)

    def requested_output_names(self):
        return self.wanted


class FakeError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message, code="UNKNOWN"):
        self.message, self.code = message, code


class FakeResponse:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name: t.value for t in output_tensors}
        self.error = error


@pytest.fixture
def model(tiny, tmp_path, monkeypatch):
    pb = types.ModuleType("triton_python_backend_utils")
    pb.get_input_tensor_by_name = lambda r, n: FakeTensor(n, r.inputs[n]) if n in r.inputs else None
    pb.Tensor, pb.TritonError, pb.InferenceResponse = FakeTensor, FakeError, FakeResponse
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    _, _, _, c = written(tiny, tmp_path, threads=1, workers=2, batch_images=8)
    m = serve.TritonModel()
    m.initialize({"model_config": json.dumps(json_format.MessageToDict(c, preserving_proto_field_name=True))})
    yield m
    m.finalize()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def batched(**arrays):
    """A request's inputs with the leading batch axis of 1 a batching model receives."""
    return {k: np.asarray(v)[None] for k, v in arrays.items()}


def texts(*t):
    return np.array([s.encode() for s in t], dtype=object)


def test_a_batch_is_one_predict_many_and_each_bad_request_fails_alone(model, tiny, capsys, monkeypatch):
    calls = []
    many = model.predictor.predict_many
    monkeypatch.setattr(
        model.predictor, "predict_many", lambda requests, **kw: calls.append(len(requests)) or many(requests, **kw)
    )
    good_file, good_rgb = photo(72, 48, seed=1), np.asarray(photo(40, 64, seed=2))
    requests = [
        FakeRequest(**batched(image=np.array([png(good_file)], dtype=object), texts=texts("the red circle", "zzz"))),
        FakeRequest(**batched(texts=texts("no image at all"))),
        FakeRequest(**batched(rgb=good_rgb, texts=texts("the square"))),
        FakeRequest(**batched(rgb=good_rgb, texts=texts(""))),
        FakeRequest(**batched(image=np.array([b"not an image"], dtype=object), texts=texts("the circle"))),
        FakeRequest(image=np.array([[png(good_file)], [png(good_file)]], dtype=object), texts=texts("a", "b").reshape(2, 1)),
    ]
    capsys.readouterr()
    answers = model.execute(requests)
    assert calls == [3], "the requests with a readable image ran as one batch (the empty expression fails inside it, alone)"
    errors = {i: a.error for i, a in enumerate(answers) if a.error is not None}
    assert sorted(errors) == [1, 3, 4, 5] and all(e.code == "INVALID_ARG" and "\n" not in e.message for e in errors.values())
    assert "exactly one of" in errors[1].message and "is empty" in errors[3].message
    assert "not a readable image" in errors[4].message and "one image per request" in errors[5].message
    log = capsys.readouterr().err.splitlines()
    assert len(log) == 4 and all(line.startswith("restr-serve: refused a request: ") for line in log)

    predictor = Predictor.from_artifacts(tiny.folder, threads=1)
    for answer, (image, asked) in (
        (answers[0], (good_file, ["the red circle", "zzz"])),
        (answers[2], (good_rgb, ["the square"])),
    ):
        local = predictor.predict_image(image, asked)
        out = {k: v[0] for k, v in answer.outputs.items()}  # the batch axis of 1
        assert np.array_equal(out["masks"], np.stack([p.mask for p in local]))
        assert out["no_known_words"].tolist() == [p.no_known_words for p in local]
        assert [json.loads(u) for u in out["unknown_words"]] == [p.unknown_words for p in local]
        assert set(json.loads(out["timings"][0])) >= {"preprocess", "vision", "postprocess"}
    assert any(p.no_known_words for p in predictor.predict_image(good_file, ["zzz"]))  # the flag can differ


def test_only_the_outputs_asked_for_and_a_threshold_per_request(model):
    image = np.asarray(photo(48, 48, seed=3))
    a, b = model.execute(
        [
            FakeRequest(["masks", "used_threshold"], **batched(rgb=image, texts=texts("the circle"), threshold=[0.2])),
            FakeRequest(["probs", "used_threshold"], **batched(rgb=image, texts=texts("the circle"))),
        ]
    )
    assert sorted(a.outputs) == ["masks", "used_threshold"] and sorted(b.outputs) == ["probs", "used_threshold"]
    assert a.outputs["used_threshold"][0][0] == pytest.approx(0.2) and b.outputs["used_threshold"][0][0] == pytest.approx(0.5)


def test_a_runtime_failure_fails_its_batch_in_one_line(model, monkeypatch, capsys):
    def broken(requests, **kw):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : boom\nmore detail")

    monkeypatch.setattr(model.predictor, "predict_many", broken)
    image = np.asarray(photo(48, 48, seed=3))
    capsys.readouterr()
    answers = model.execute([FakeRequest(**batched(rgb=image, texts=texts("x"))), FakeRequest(**batched(texts=texts("y")))])
    assert answers[0].error.code == "INTERNAL" and answers[0].error.message.endswith("boom")
    assert answers[1].error.code == "INVALID_ARG"  # refused before the batch ran
    assert capsys.readouterr().err.count("\n") == 2


def test_what_a_killed_restr_serve_left_is_removed_by_the_next(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"restr-serve-{dead.pid}-abc123"
    (stale / "models").mkdir(parents=True)
    live = tmp_path / f"restr-serve-{os.getpid()}-def456"
    live.mkdir()
    other = tmp_path / "restr-serve-notapid-x"
    other.mkdir()
    serve.remove_stale(tmp_path)
    assert not stale.exists() and live.exists() and other.exists()


# -- refusals before anything starts ----------------------------------------------------------------


def run_serve(*args):
    return subprocess.run([sys.executable, "-m", "restr.runtime.serve", *args], capture_output=True, text=True, timeout=60)


def free_ports() -> list[str]:
    from restr.benchmarks.serve_bench import free_ports

    return [a for flag, port in zip(("--http-port", "--grpc-port", "--metrics-port"), free_ports(3)) for a in (flag, str(port))]


def test_a_repository_for_another_backend_is_refused_in_one_line(tmp_path):
    for backend, line in (("onnxruntime", 'backend: "onnxruntime"'), ("tensorrt_plan", 'platform: "tensorrt_plan"')):
        repo = tmp_path / backend
        for name, text in (("restr", 'backend: "python"'), ("restr_vision", line)):
            (repo / name).mkdir(parents=True)
            (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n{text}\n')
        r = run_serve("--repository", str(repo), *free_ports())
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"needs Triton's {backend} backend" in r.stderr and "--triton-for pytriton" in r.stderr
    r = run_serve("--repository", str(tmp_path), *free_ports())
    assert r.returncode == 2 and "not a model repository" in r.stderr


def test_a_port_in_use_or_given_twice_is_one_line_before_anything_starts(tmp_path):
    """tritonserver would exit later with a longer story. The folder is no export: the ports are
    checked first, else its error would come instead."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}": ["--metrics-port", str(port)],
            "--http-port, --grpc-port and --metrics-port must differ": ["--grpc-port", "8000", "--http-port", "8000"],
        }
        for words, args in cases.items():
            r = run_serve("--artifacts", str(tmp_path), *args)
            assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr


@pytest.mark.parametrize(
    "threshold, ok", [(0.0, True), (1.0, True), (0.3, True), (1.5, False), (-0.1, False), (float("nan"), False)]
)
def test_a_served_threshold_follows_the_predictors_rule(threshold, ok):
    """A request's threshold is judged as Predictor judges one: [0, 1], bounds included."""
    from restr.runtime.transforms import check_threshold

    inputs = {
        "rgb": np.zeros((2, 2, 3), np.uint8),
        "texts": np.array([b"the dog"], np.object_),
        "threshold": np.array([threshold], np.float32),
    }
    if ok:
        assert protocol.read_request(inputs.get, max_texts=4)[2] == pytest.approx(check_threshold(threshold))
    else:
        with pytest.raises(protocol.RequestError, match="threshold"):
            protocol.read_request(inputs.get, max_texts=4)
