"""restr-serve on a real Triton server on 127.0.0.1, queried with restr.runtime.client, curl-like
raw HTTP and restr-predict; readiness polled on /v2/health/ready as a load balancer polls it.

The server runs in the serving environment (`make serve-env`: nvidia-pytriton needs numpy < 2),
found at $RESTR_SERVE_PYTHON or .venv-serve/bin/python; the tests skip, saying so, without it.
Every server is started on free ports and stopped (SIGTERM, then SIGKILL) even when a test fails.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("tritonclient.http")
pytest.importorskip("tritonclient.grpc")

from conftest import SERVE_START_TIMEOUT_S as START_TIMEOUT_S, Server, make_tiny_export, photo, serve_python
from restr.benchmarks.serve_bench import free_ports, run_load
from restr.runtime import Predictor
from restr.runtime.client import RemotePredictor, RestrClient, ServerError, parse_url

TEXTS = ["the red circle", "the small blue square left of it", "zzz unknown words"]
TOKEN = "a-token-for-the-tests"
SERVE_PYTHON = serve_python()
pytestmark = pytest.mark.skipif(
    SERVE_PYTHON is None, reason="no serving environment with nvidia-pytriton: run `make serve-env` (or set RESTR_SERVE_PYTHON)"
)


def health(url: str) -> int | str:
    """GET /v2/health/ready as a load balancer does: the status, or the connection error's name."""
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return type(e).__name__


def post(url: str, path: str, body: dict, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (restr-serve, tritonserver in its own session, the instances)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def alive(pids) -> list[int]:
    """Those of pids still running (zombies count as gone)."""
    out = []
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(p)
    return out


def assert_nothing_left(s: Server, tree: list[int]) -> None:
    """No process of the server's tree, no shared memory or temporary folder of its restr-serve."""
    deadline = time.monotonic() + 10
    while alive(tree[1:]) and time.monotonic() < deadline:  # instances exiting after tritonserver
        time.sleep(0.2)
    assert not alive(tree[1:]), alive(tree[1:])
    assert not list(Path("/dev/shm").glob(f"restr-serve-{s.proc.pid}-*"))
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob(f"restr-serve-{s.proc.pid}-*"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("tiny") / "export")


@pytest.fixture(scope="module")
def predictor(tiny):
    return Predictor.from_artifacts(tiny.folder, threads=1)


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    s = Server(
        tmp_path_factory.mktemp("serve") / "server.log",
        "--artifacts",
        str(tiny.folder),
        "--instances",
        "2",
        "--batch-images",
        "4",
        "--access-token",
        TOKEN,
    )  # batching: a CPU server does not by default
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    photo(72, 48, seed=1).save(path)
    return path


def assert_same(remote, local):
    assert [p.text for p in remote] == [p.text for p in local]
    for r, l in zip(remote, local):
        assert r.mask.shape == l.mask.shape and r.mask.dtype == bool
        assert np.array_equal(r.mask, l.mask), r.text
        assert r.area == l.area and r.unknown_words == l.unknown_words and r.truncated == l.truncated
        assert r.no_known_words == l.no_known_words, r.text
        assert r.score == pytest.approx(l.score, abs=1e-5) and r.patch_score == pytest.approx(l.patch_score, abs=1e-5)


def test_parse_url():
    assert parse_url("localhost:9000") == ("http", "localhost:9000")
    assert parse_url("grpc://127.0.0.1") == ("grpc", "127.0.0.1:8001")
    with pytest.raises(ValueError, match="expected http"):
        parse_url("ftp://host:1")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_masks_identical_to_in_process(server, predictor, image_file, protocol):
    url = server.url if protocol == "http" else server.grpc_url
    with RestrClient(url) as client:
        local = predictor.predict_image(image_file, TEXTS)
        assert any(p.area for p in local) and any(p.unknown_words for p in local)  # the comparison can fail
        assert any(p.no_known_words for p in local) and not all(p.no_known_words for p in local)
        remote = client.predict(image_file, TEXTS)  # the encoded file, decoded by the server
        assert_same(remote, local)
        assert_same(client.predict(image_file.read_bytes(), TEXTS), local)  # the same, as bytes
        assert set(remote[0].timings) >= {"preprocess", "vision", "language", "fusion_decoder", "postprocess"}
        rgb = np.asarray(photo(50, 90, seed=2))
        remote = client.predict(rgb, TEXTS[:2], threshold=0.3, probs=True)  # pixels, another size and threshold
        assert_same(remote, predictor.predict_image(rgb, TEXTS[:2], threshold=0.3))
        assert client.last_threshold == pytest.approx(0.3)
        assert remote[0].probs.shape == (90, 50)
        assert np.allclose(remote[0].probs, predictor.predict_image(rgb, TEXTS[:1])[0].probs, atol=1e-5)


def test_pil_images_are_oriented_and_composited_as_the_predictor_does(server, predictor, tmp_path):
    """A photo with EXIF orientation 6 (turned 90 degrees) and a PNG with alpha, given as PIL images."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    photo(90, 60, seed=4).save(buf, format="JPEG", quality=95, exif=exif)
    turned = Image.open(io.BytesIO(buf.getvalue()))
    rgba = photo(64, 40, seed=5).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((64, 40)))
    with RestrClient(server.url) as client:
        for image in (turned, rgba):
            local = predictor.predict_image(image, TEXTS[:2])
            assert_same(client.predict(image, TEXTS[:2]), local)
        assert local[0].mask.shape == (40, 64) and predictor.predict_image(turned, TEXTS[:1])[0].mask.shape == (90, 60)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"image": np.array([b"not an image"], dtype=object)}, "not a readable image"),
        ({"image": np.array([b""], dtype=object)}, "one encoded image"),
        ({"rgb": np.zeros((0, 4, 3), np.uint8)}, "non-empty uint8|zeros in shape"),  # tritonclient may refuse it first
        ({"rgb": np.zeros((4, 4, 3), np.float32)}, "expects 'UINT8'"),
        ({"rgb": np.zeros((4, 4), np.uint8)}, "rgb"),
        ({}, "exactly one of"),
        ({"image": "FILE", "rgb": np.zeros((4, 4, 3), np.uint8)}, "exactly one of"),
        ({"image": "FILE", "texts": np.array([b"   "], dtype=object)}, "is empty"),
        ({"image": "FILE", "texts": np.array([b""], dtype=object)}, "is empty"),
        (
            {"image": "FILE", "texts": np.array([], dtype=object)},
            "no expression|zero-sized|zeros in shape",
        ),  # refused by tritonclient itself
        ({"image": "FILE", "texts": np.array([1.5], dtype=np.float32)}, "texts"),
        ({"image": "FILE", "threshold": np.array([1.5], np.float32)}, "threshold"),
    ],
    ids=[
        "garbage",
        "empty-bytes",
        "empty-rgb",
        "rgb-float",
        "rgb-2d",
        "no-image",
        "two-images",
        "blank-text",
        "empty-text",
        "no-text",
        "text-float",
        "threshold",
    ],
)
def test_bad_requests_are_errors_and_the_server_keeps_serving(server, predictor, image_file, inputs, message):
    inputs = dict(inputs)
    if inputs.get("image") == "FILE":
        inputs["image"] = np.array([image_file.read_bytes()], dtype=object)
    inputs.setdefault("texts", np.array([b"the red circle"], dtype=object))
    with RestrClient(server.url) as client:
        with pytest.raises(ServerError, match=message) as e:
            client.infer(inputs)
        assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
        assert client.ready()
        assert_same(client.predict(image_file, TEXTS[:1]), predictor.predict_image(image_file, TEXTS[:1]))


@pytest.mark.parametrize(
    "body, message",
    [
        (
            {
                "inputs": [
                    {"name": "texts", "datatype": "BYTES", "shape": [1, 1], "data": [""]},
                    {"name": "rgb", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": list(range(12))},
                ]
            },
            "expression 1 ('') is empty",
        ),
        (
            {"inputs": [{"name": "texts", "datatype": "BYTES", "shape": [1, 1], "data": ["the red circle"]}]},
            "send exactly one of",
        ),
    ],
    ids=["empty-text", "no-image"],
)
def test_a_bad_request_over_plain_http_is_a_client_error_in_one_line(server, body, message):
    """What curl sees: HTTP 400 and a one-line message without server internals; the log: one line."""
    before = len(server.lines())
    status, text = post(server.url, "/v2/models/restr/infer", body)
    assert status == 400, text
    error = json.loads(text)["error"]
    assert message in error and "\n" not in error and ".py" not in error and "Traceback" not in error
    deadline = time.monotonic() + 5
    while len(server.lines()) == before and time.monotonic() < deadline:  # the instance's log line travels through tritonserver
        time.sleep(0.05)
    time.sleep(0.3)  # a second line, were there one, would have come with the first
    new = server.lines()[before:]
    assert len(new) == 1 and new[0] == f"restr-serve: refused a request: {error}", new


def test_health_metrics_statistics_and_what_needs_the_token(server, image_file):
    with RestrClient(server.url) as client:
        client.predict(image_file, TEXTS[:1])
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/restr/ready", "/v2/models/restr/stats"):
        with urllib.request.urlopen(server.url + path, timeout=10) as r:  # statistics are open: perf_analyzer reads them
            assert r.status == 200, path
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    ok = [line for line in text.splitlines() if line.startswith('nv_inference_request_success{model="restr"')]
    assert ok and float(ok[0].split()[-1]) >= 1
    status, text = post(server.url, "/v2/repository/index", {})  # the repository API could unload the model
    assert status == 403 and "triton-access-token" in text
    assert post(server.url, "/v2/repository/index", {}, {"triton-access-token": TOKEN})[0] == 200
    address = outward_address()  # bound to the loopback address only, by default
    if address is not None:
        with pytest.raises(OSError):
            socket.create_connection((address, server.http), timeout=2).close()


def outward_address() -> str | None:
    """This machine's address on its network (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_predict_cli_and_remote_predictor_against_the_server(server, tiny, image_file, tmp_path):
    from click.testing import CliRunner

    from restr.runtime.cli import main

    def run(*args):
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return json.loads((args[args.index("--out") + 1] / "summary.json").read_text())

    fresh = tmp_path / "fresh.png"  # an image no instance has cached: the server's vision time is real
    photo(60, 44, seed=9).save(fresh)
    texts = [a for t in TEXTS for a in ("--text", t)]
    local = run("--artifacts", tiny.folder, "--image", fresh, *texts, "--out", tmp_path / "local")
    remote = run("--server", server.url, "--image", fresh, *texts, "--out", tmp_path / "remote")
    assert (
        remote["mode"] == "server"
        and remote["threshold"] == local["threshold"]
        and remote["model"] == local["model"] == "restr-tiny"
    )
    keys = ("text", "mask", "area", "area_fraction", "score", "patch_score", "unknown_words", "no_known_words", "truncated")
    assert [{k: e[k] for k in keys} for e in remote["expressions"]] == [{k: e[k] for k in keys} for e in local["expressions"]]
    assert any(e["no_known_words"] for e in remote["expressions"])
    for e in local["expressions"]:
        assert (tmp_path / "local" / e["mask"]).read_bytes() == (tmp_path / "remote" / e["mask"]).read_bytes()
    t = remote["timings_ms"]
    assert t["vision"] > 0 and t["language_fusion_per_expression"] > 0 and t["postprocess_per_expression"] > 0
    assert t["server_round_trip"] > 0 and "server_round_trip" not in local["timings_ms"]
    words = [
        CliRunner().invoke(main, [option, str(where), "--list-words"])
        for option, where in (("--server", server.url), ("--artifacts", tiny.folder))
    ]
    assert (
        words[0].exit_code == words[1].exit_code == 0 and words[0].stdout == words[1].stdout and "dog" in words[0].stdout.split()
    )
    remote_predictor = RemotePredictor(server.url)
    try:
        assert remote_predictor.artifacts.vocabulary() == tiny.vocab and remote_predictor.artifacts.max_words == local_max_words(
            tiny
        )
    finally:
        remote_predictor.close()
    r = CliRunner().invoke(
        main,
        [
            "--server",
            f"http://127.0.0.1:{free_ports(1)[0]}",
            "--image",
            str(image_file),
            "--text",
            "x",
            "--out",
            str(tmp_path / "none"),
        ],
    )
    assert r.exit_code == 2 and "no ready 'restr' model" in r.output and not (tmp_path / "none").exists()


def local_max_words(tiny) -> int:
    return json.loads((tiny.folder / "manifest.json").read_text())["max_words"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("load")
    paths = []
    for k in range(4):
        paths.append(folder / f"{k}.png")
        photo(64 + 8 * k, 48, seed=10 + k).save(paths[-1])
    return paths


def model_stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/v2/models/restr/stats", timeout=10) as r:
        return json.loads(r.read())["model_stats"][0]


def test_load_16_clients_400_requests_batched_across_requests(server, predictor, images):
    expected = {p: predictor.predict_image(p, TEXTS) for p in images}
    t0 = time.perf_counter()
    for _ in range(3):
        for p in images:
            predictor.predict_image(Image.open(p), TEXTS)  # a new PIL object: hashed, found in the cache
    in_process = 3 * len(images) / (time.perf_counter() - t0)

    before = model_stats(server.url)
    r = run_load(server.url, [(images[i % len(images)], TEXTS) for i in range(400)], clients=16)
    after = model_stats(server.url)
    latencies, results, errors, wall = r.latencies_s, r.results, r.errors, r.wall_s
    assert errors == [] and len(results) == 400
    for i, _, _, preds in results:
        assert_same(preds, expected[images[i % len(images)]])
    requests_, runs = (int(after[k]) - int(before[k]) for k in ("inference_count", "execution_count"))
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    print(
        f"\nrestr-tiny, 16 clients, 400 requests of {len(TEXTS)} expressions: {400 / wall:.1f} req/s, p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, {requests_ / runs:.2f} requests per model run; in-process (cached features) {in_process:.1f} req/s"
    )
    assert requests_ == 400 and runs < requests_, "no model run took more than one request"
    assert p99 < 10_000


def test_readiness_follows_the_model_and_the_drain(tiny, predictor, images, tmp_path):
    """A load balancer's view, polling /v2/health/ready: 200 only once the model answers (the first
    request after it succeeds), never again once SIGTERM starts the drain, while the requests held at
    the signal are answered and the ones after it refused in one line. Then: exit 0, a log of
    restr-serve's own lines only, nothing left in /tmp or /dev/shm."""
    s = Server(tmp_path / "server.log", "--artifacts", str(tiny.folder), "--instances", "2", "--drain-timeout", "30")
    try:
        polls = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and s.proc.poll() is None:
            polls.append(health(s.url))
            if polls[-1] == 200:
                break
            time.sleep(0.02)
        assert polls[-1] == 200, s.tail()
        assert all(p != 200 for p in polls[:-1]) and len(polls) > 5  # polled while it started
        with RestrClient(s.url) as client:  # at once: health said the replica can answer
            assert_same(client.predict(images[0], TEXTS), predictor.predict_image(images[0], TEXTS))
        tree = process_tree(s.proc.pid)
        assert len(tree) >= 4  # restr-serve, tritonserver, 2 instances

        texts = TEXTS * 8  # 24 expressions: requests long enough to be in flight at the signal
        expected = {p: predictor.predict_image(p, texts) for p in images}
        stop = threading.Event()
        box = {}
        requests = [(images[i % len(images)], texts) for i in range(400)]
        runner = threading.Thread(target=lambda: box.update(out=run_load(s.url, requests, clients=8, stop=stop)))
        runner.start()
        time.sleep(2.0)
        t_signal = time.perf_counter()
        s.proc.send_signal(signal.SIGTERM)
        during = []
        while s.proc.poll() is None:
            during.append((time.perf_counter() - t_signal, health(s.url)))
            time.sleep(0.02)
        code = s.proc.wait(60)
        t_exit = time.perf_counter()
        stop.set()  # the server is gone: stop the clients before they run through their 400 requests
        runner.join(60)
        results, errors = box["out"].results, box["out"].errors
        for i, _, _, preds in results:
            assert_same(preds, expected[images[i % len(images)]])
        drained = [r for r in results if r[1] < t_signal < r[2]]  # sent before the signal, answered after it
        print(
            f"\nSIGTERM: {len(results)} answered ({len(drained)} across the signal), {len(errors)} refused, "
            f"exit {t_exit - t_signal:.1f} s after the signal; readiness polled {len(during)} times during the drain"
        )
        assert code == 0, s.tail()
        assert results and drained, "no request was in flight at SIGTERM: the test proved nothing"
        assert len(drained) > 2  # more than the 2 instances were running: Triton's queue was answered too
        assert t_exit - t_signal < 25  # drained, not cut off at the 30 s timeout
        late_ready = [(round(t, 2), h) for t, h in during if t > 1.0 and h == 200]
        assert during and not late_ready, late_ready
        # Sent before the signal (50 ms of slack for the request to reach Triton): answered. Later: refused
        # in one line ("shutting down", or no connection once Triton is gone), never dropped or timed out.
        lost = [e for e in errors if e[0] < t_signal - 0.05]
        assert not lost, lost[:3]
        others = [e for e in errors if "shutting down" not in e[2] and "onnect" not in e[2]]
        assert not others, others[:3]
        noise = [line for line in s.lines() if not line.startswith("restr-serve: ")]
        assert not noise, noise[:5]  # no CUDA/NVML complaints, no "exited with failure", no traceback
        assert_nothing_left(s, tree)
    finally:
        s.stop()


def test_a_second_sigterm_stops_at_once_and_leaves_no_process(tiny, tmp_path):
    """SIGTERM twice (an impatient Ctrl-C, a supervisor's repeat): restr-serve skips the rest of the
    drain, kills tritonserver and exits 0, and nothing of its session lives on."""
    s = Server(tmp_path / "server.log", "--artifacts", str(tiny.folder), "--drain-timeout", "30")
    session = os.getsid(s.proc.pid)
    try:
        s.wait_ready()
        deadline = time.monotonic() + 30
        while "serving model" not in s.tail() and time.monotonic() < deadline:  # past start-up
            time.sleep(0.1)
        stop = threading.Event()  # requests running and queued at the signals: the drain would wait for them
        images = []
        for k in range(4):
            images.append(tmp_path / f"{k}.png")
            photo(64, 48 + 8 * k, seed=20 + k).save(images[-1])
        load = threading.Thread(target=run_load, args=(s.url, [(images[i % 4], TEXTS * 8) for i in range(400)], 8, stop))
        load.start()
        time.sleep(1.5)
        tree = process_tree(s.proc.pid)
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        s.proc.send_signal(signal.SIGTERM)
        code = s.proc.wait(60)
        stop.set()
        load.join(60)
        left = ""
        for _ in range(50):  # processes of the session still exiting
            left = subprocess.run(["pgrep", "-a", "-s", str(session)], capture_output=True, text=True).stdout
            if not left:
                break
            time.sleep(0.2)
        assert code == 0, s.tail()
        assert "second signal: stopping now" in s.tail() and not left, (left, s.tail())
        assert_nothing_left(s, tree)
    finally:
        s.stop()
        subprocess.run(["pkill", "-9", "-s", str(session)])


def test_sigterm_while_starting_stops_cleanly(tiny, tmp_path):
    """SIGTERM once tritonserver runs but before it is ready (the model loading): exit 0, nothing left."""
    s = Server(tmp_path / "server.log", "--artifacts", str(tiny.folder))
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        tree = []
        while time.monotonic() < deadline and len(tree) < 3:  # tritonserver and an instance started
            tree = process_tree(s.proc.pid)
            time.sleep(0.05)
        assert len(tree) >= 3 and health(s.url) != 200, (tree, health(s.url))
        s.proc.send_signal(signal.SIGTERM)
        code = s.proc.wait(60)
        assert code == 0, s.tail()
        assert "serving" not in s.tail() and "stopped" in s.tail(), s.tail()
        assert_nothing_left(s, tree)
    finally:
        s.stop()


def test_a_model_that_cannot_load_is_one_line(tiny, tmp_path):
    """The export's graph changed after it was written: each instance fails to load it; restr-serve
    says why in one line (not tritonserver's traceback of it) and exits 2."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny.folder, broken)
    (broken / "language.onnx").write_bytes(b"changed")
    s = Server(tmp_path / "server.log", "--artifacts", str(broken))
    try:
        code = s.proc.wait(START_TIMEOUT_S)
        lines = s.lines()
        assert code == 2, s.tail()
        assert len(lines) == 1 and lines[0].startswith("restr-serve: error: ") and "sha256" in lines[0], lines
    finally:
        s.stop()


@pytest.mark.slow
def test_serve_benchmark_restr_b16(tmp_path):
    """The restr-b16 benchmark, briefly: a 320x320 export served to 1 and 4 clients without errors, and
    Triton's overhead small beside a ~3 s request (benchmarks/RESULTS.md has the full run)."""
    from restr.benchmarks.serve_bench import benchmark
    from restr.export.pipeline import ExportOptions, export_artifacts, load_source

    export = tmp_path / "b16"
    export_artifacts(
        load_source(config="restr-b16", image_size=320),
        export,
        ExportOptions(precisions=("fp32",), engine=False, verify=False, progress=False),
    )
    result = benchmark(export, requests=8, images=4, expressions=2, clients=[1, 4], instances=2, work=tmp_path / "work")
    assert [r["errors"] for r in result["server_rows"]] == [0, 0] and [r["requests"] for r in result["server_rows"]] == [8, 8]
    assert result["server_rows"][-1]["vs_in_process"] > 0.7  # loose: the shared machine's load swings


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            total += int(
                next(line for line in Path(f"/proc/{p}/status").read_text().splitlines() if line.startswith("VmRSS:")).split()[1]
            )
        except (OSError, StopIteration):
            pass
    return total


SOAK_S = int(os.environ.get("RESTR_SOAK_S", "600"))


@pytest.mark.slow
def test_soak_10_minutes_at_concurrency_8(tiny, predictor, images, tmp_path):
    """restr-serve under 8 clients for 10 minutes (RESTR_SOAK_S) after a minute's warm-up: no error,
    the server's memory (every process of it) grows by at most 5%, and the p99 latency holds: the
    last third's p99 at most 1.5x the first third's."""
    s = Server(tmp_path / "server.log", "--artifacts", str(tiny.folder), "--instances", "2")
    try:
        s.wait_ready()
        many = [tmp_path / f"soak{k}.png" for k in range(32)]  # more images than the caches hold: the image graph runs
        for k, path in enumerate(many):
            photo(64 + 2 * k, 48 + k, seed=100 + k).save(path)
        expected = {p: predictor.predict_image(p, TEXTS) for p in many[:4]}
        minute = max(10, SOAK_S // 10)
        run_load(s.url, [(many[i % len(many)], TEXTS) for i in range(400)], clients=8)  # warm-up
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run_load(s.url, [(many[i % len(many)], TEXTS) for i in range(200)], clients=8)
        rss0, windows = tree_rss_kib(s.proc.pid), []
        end = time.monotonic() + SOAK_S
        while time.monotonic() < end:
            stop = threading.Event()
            timer = threading.Timer(minute, stop.set)
            timer.start()
            r = run_load(s.url, [(many[i % len(many)], TEXTS) for i in range(10**6)], clients=8, stop=stop)
            timer.cancel()
            assert r.errors == [], r.errors[:3]
            for i, _, _, preds in r.results:
                if many[i % len(many)] in expected:
                    assert_same(preds, expected[many[i % len(many)]])
            windows.append((len(r.results) / r.wall_s, float(np.percentile(r.latencies_s, 99)) * 1000, tree_rss_kib(s.proc.pid)))
        print("\nsoak, 8 clients: requests/s, p99 ms, server RSS MiB per window:")
        for rate, p99, rss in windows:
            print(f"  {rate:6.1f} {p99:8.0f} {rss / 1024:8.1f}")
        third = max(1, len(windows) // 3)
        first, last = np.median([w[1] for w in windows[:third]]), np.median([w[1] for w in windows[-third:]])
        growth = max(w[2] for w in windows) / rss0 - 1
        print(
            f"RSS after warm-up {rss0 / 1024:.1f} MiB, largest growth {growth:+.1%}; p99 first third {first:.0f} ms, last third {last:.0f} ms"
        )
        assert growth <= 0.05 and last <= 1.5 * first
    finally:
        s.stop()


def perf_analyzer_command() -> list[str] | None:
    """perf_analyzer as $RESTR_PERF_ANALYZER gives it (e.g. "../shared/tools/perf_analyzer.sh build/perf-analyzer"),
    else on the PATH; None if it cannot run here."""
    import shlex
    import shutil

    command = shlex.split(os.environ.get("RESTR_PERF_ANALYZER", "")) or (
        [shutil.which("perf_analyzer")] if shutil.which("perf_analyzer") else []
    )
    if not command:
        return None
    try:
        r = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=300)
    except OSError:
        return None
    return command if "Perf Analyzer" in r.stdout + r.stderr else None


@pytest.mark.slow
def test_perf_analyzer_measures_restr_serve(tiny, tmp_path):
    """Triton's load generator against restr-serve: it reads the statistics API (refused by PyTriton's
    default token before), takes the input data written for the BYTES image, and the server's own
    counts show requests batched together at concurrency 8."""
    from restr.benchmarks.perf_bench import benchmark

    command = perf_analyzer_command()
    if command is None:
        pytest.skip(
            "no perf_analyzer: set RESTR_PERF_ANALYZER (docs/serving.md), e.g. to "
            "'../shared/tools/perf_analyzer.sh build/perf-analyzer'"
        )
    result = benchmark(
        tiny.folder,
        command,
        [1, 8],
        images=8,
        expressions=3,
        protocol="grpc",
        serve_args=["--instances", "1"],
        work=tmp_path / "work",
        window_ms=2000,
        stability=100,
        baseline=False,
    )
    one, eight = result["rows"]
    assert one["requests_per_s"] > 0 and eight["requests_per_s"] > 0
    assert one["compute_infer_ms"] > 0 and one["requests_per_run"] == pytest.approx(1.0, abs=0.05)
    assert eight["requests_per_run"] > 1.5 and eight["queue_ms"] > 0
