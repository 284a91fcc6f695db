"""restr-serve's own logic, without Triton: what tests/test_serve.py cannot make happen on demand.

- Start-up: a model load lost to PyTriton's handshake race (an instance after the first connecting to
  the first's Unix socket before it listens) is retried on a fresh server, any other failure is not,
  and no tritonserver is left running either way. PyTriton is replaced by a fake whose load fails
  as scripted.
- Drain: a request Triton had taken from its queue before SIGTERM but not yet handed to the model
  is answered, not refused.
- Ports another program holds, or given twice: one line and exit 2, before anything is loaded.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import types

import pytest

from restr.runtime import serve

HANDSHAKE_ERROR = (
    "[400] load failed for model 'restr': version 1 is at UNAVAILABLE state: Internal: TritonModelException: "
    "Model initialize error: Traceback (most recent call last):\n  File \"/tmp/f/1/model.py\", line 425, in initialize\n"
    "    inference_handler_config = get_config_from_handshake_server(handshake_socket)\n"
    "ConnectionRefusedError: [Errno 111] Connection refused"
)


class LoadFailed(Exception):
    """Stands for tritonclient's InferenceServerException."""


class FakeTriton:
    """Records each server made; `bind` (the model load) raises the next scripted outcome, if any."""

    made: list[FakeTriton] = []
    outcomes: list[BaseException | None] = []

    def __init__(self, config):
        self.running = self.loaded = False
        FakeTriton.made.append(self)

    def run(self):
        self.running = True

    def bind(self, **kwargs):
        assert self.running, "the model is loaded into a running server"
        outcome = FakeTriton.outcomes.pop(0) if FakeTriton.outcomes else None
        if outcome is not None:
            raise outcome
        self.loaded = True

    def stop(self):
        self.running = False


@pytest.fixture
def fake_pytriton(monkeypatch):
    """`pytriton.triton` and `pytriton.model_config` as far as serve.start uses them."""
    triton_mod = types.ModuleType("pytriton.triton")
    triton_mod.TritonConfig = lambda **kw: kw
    config_mod = types.ModuleType("pytriton.model_config")
    config_mod.ModelConfig = lambda **kw: kw
    config_mod.Tensor = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "pytriton", types.ModuleType("pytriton"))
    monkeypatch.setitem(sys.modules, "pytriton.triton", triton_mod)
    monkeypatch.setitem(sys.modules, "pytriton.model_config", config_mod)
    FakeTriton.made, FakeTriton.outcomes = [], []
    return FakeTriton


def start(tmp_path):
    return serve.start(FakeTriton, predictor=None, config=serve.ServeConfig(artifacts=tmp_path))


def test_a_load_lost_to_the_handshake_race_is_retried_on_a_fresh_server(fake_pytriton, tmp_path, capsys):
    fake_pytriton.outcomes = [LoadFailed(HANDSHAKE_ERROR)]
    triton, model = start(tmp_path)
    first, second = fake_pytriton.made
    assert triton is second and second.loaded and second.running
    assert not first.running, "the server whose load failed was stopped"
    assert isinstance(model, serve.RestrModel)
    assert "missed PyTriton's start-up handshake" in capsys.readouterr().err


def test_a_timeout_waiting_for_the_handshake_socket_is_the_same_race(fake_pytriton, tmp_path):
    timeout = HANDSHAKE_ERROR.replace("ConnectionRefusedError: [Errno 111] Connection refused",
                                      "TimeoutError: Timeout occurred while waiting for config file /w/restr-config.sock")
    fake_pytriton.outcomes = [LoadFailed(timeout), LoadFailed(timeout)]
    triton, _ = start(tmp_path)
    assert len(fake_pytriton.made) == 3 and triton.loaded


def test_other_load_failures_are_not_retried(fake_pytriton, tmp_path):
    fake_pytriton.outcomes = [LoadFailed("[400] load failed for model 'restr': failed to open model.onnx")]
    with pytest.raises(LoadFailed, match="model.onnx"):
        start(tmp_path)
    assert len(fake_pytriton.made) == 1 and not fake_pytriton.made[0].running


def test_the_race_every_time_is_one_clear_error(fake_pytriton, tmp_path):
    fake_pytriton.outcomes = [LoadFailed(HANDSHAKE_ERROR)] * serve.LOAD_ATTEMPTS
    with pytest.raises(RuntimeError, match=f"{serve.LOAD_ATTEMPTS} tries missed PyTriton's start-up handshake"):
        start(tmp_path)
    assert len(fake_pytriton.made) == serve.LOAD_ATTEMPTS
    assert not any(t.running for t in fake_pytriton.made)


def test_sigterm_during_the_load_stops_the_server(fake_pytriton, tmp_path):
    fake_pytriton.outcomes = [KeyboardInterrupt()]  # what restr-serve's SIGTERM handler raises
    with pytest.raises(KeyboardInterrupt):
        start(tmp_path)
    assert len(fake_pytriton.made) == 1 and not fake_pytriton.made[0].running


class EchoModel(serve.RestrModel):
    """RestrModel's admission and drain, with a request that takes `work_s` and answers its data."""

    work_s = 0.0

    def infer(self, data, wanted=None):
        time.sleep(self.work_s)
        return data


class Req:
    def __init__(self, data):
        self.data = data


def busy(model, work_s: float) -> threading.Thread:
    """A request of `work_s` running in `model` (started, given 50 ms to get in)."""
    model.work_s = work_s
    running = threading.Thread(target=lambda: model([Req("running")]))
    running.start()
    time.sleep(0.05)
    return running


def drain_in_thread(model, **kwargs):
    box = {}
    t = threading.Thread(target=lambda: box.update(ok=model.drain(**kwargs)))
    t.start()
    time.sleep(0.05)  # drain has begun
    return t, box


def test_a_request_between_triton_and_the_model_at_sigterm_is_answered():
    model = EchoModel(predictor=None, instances=2)
    t, box = drain_in_thread(model, timeout_s=10, queued=0)  # Triton's queue empty: both instances mid-hand-off
    assert model([Req("a")]) == ["a"] and model([Req("b")]) == ["b"]
    with pytest.raises(serve.RequestError, match="shutting down"):
        model([Req("sent after the signal")])
    t.join(5)
    assert box["ok"] is True


def test_drain_answers_the_running_and_the_queued_then_refuses():
    model = EchoModel(predictor=None, instances=1)
    running = busy(model, 0.3)
    t, box = drain_in_thread(model, timeout_s=10, queued=2)  # the one instance is busy: no hand-off in flight
    assert model([Req("q1")]) == ["q1"] and model([Req("q2")]) == ["q2"]
    with pytest.raises(serve.RequestError, match="shutting down"):
        model([Req("late")])
    running.join(5)
    t.join(5)
    assert box["ok"] is True


def test_an_idle_server_drains_within_the_quiet_second():
    model = EchoModel(predictor=None, instances=4)
    t0 = time.monotonic()
    assert model.drain(timeout_s=10, queued=0) is True
    assert time.monotonic() - t0 < 3


def test_drain_gives_up_at_its_timeout():
    model = EchoModel(predictor=None, instances=1)
    running = busy(model, 2.0)
    t0 = time.monotonic()
    assert model.drain(timeout_s=0.5, queued=0) is False
    assert time.monotonic() - t0 < 1.5
    running.join(5)


def test_a_port_in_use_or_given_twice_is_one_line_before_anything_starts(tmp_path):
    """tritonserver would exit on a port in use and PyTriton fail later in an HTTP client's traceback.
    The folder is no export: the ports are checked first, else its error would come instead."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}": ["--metrics-port", str(port)],
                 "--http-port, --grpc-port and --metrics-port must differ": ["--grpc-port", "8000", "--http-port", "8000"]}
        for words, args in cases.items():
            r = subprocess.run([sys.executable, "-m", "restr.runtime.serve", "--artifacts", str(tmp_path), *args],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
