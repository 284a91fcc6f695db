"""`restr-serve`: the restr runtime behind NVIDIA Triton Inference Server.

    restr-serve --artifacts runs/demo/export                 # http :8000, grpc :8001, metrics :8002

restr-serve writes a model repository for the export into a temporary folder, starts the
`tritonserver` that nvidia-pytriton bundles on it and supervises it. The repository holds one model,
`restr` (runtime/protocol.py: an image and expressions in; masks, scores, unknown words out), run by
Triton's Python backend: each of its `--instances` is a process with its own `Predictor`
(`TritonModel` below), and Triton's dynamic batcher hands an instance up to `--batch-images`
queued requests at once (on a GPU; one at a time on a CPU, unless asked), which
`Predictor.predict_many` answers together: the image graph runs once on all their images, the
later graphs on all their expressions.

Readiness: the model loads (and runs once) while tritonserver starts, and Triton's strict readiness
answers /v2/health/ready with 200 only once every instance has, so a load balancer sends traffic only
to a replica that can answer it. SIGTERM (or Ctrl-C) drains: tritonserver closes its listening
sockets at once (readiness probes fail, new connections are refused: clients retry on another
replica), answers the requests it holds, running or queued, up to `--drain-timeout`, and exits; a
second signal kills it. A request the model cannot answer (no image, an empty expression, an
unreadable file) gets its own one-line client error (HTTP 400, gRPC INVALID_ARGUMENT) and one log
line; the other requests of its batch are answered.

nvidia-pytriton 0.7 requires numpy < 2: install this in its own torch-free environment
(`make serve-env`, docs/serving.md); clients need only `restr[client]`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import click
import numpy as np

from restr.runtime.cli_common import EXIT_BAD_INPUT, runtime_options
from restr.runtime.protocol import (
    MODEL,
    OUTPUTS,
    Enum,
    RequestError,
    decode_image,
    metadata_parameters,
    model_io,
    parameter,
    pbtxt,
    read_request,
    response,
)

PROG = "restr-serve"
ACCESS_HEADER = "triton-access-token"
# Triton APIs behind the access token (--access-token, else a random one only restr-serve knows, for
# its drain): the model repository (it can unload the model), trace and log settings everywhere;
# shared memory off loopback (a remote client could map the server's regions). Health, metadata,
# configuration, inference and statistics stay open: load balancers, perf_analyzer and Model Analyzer
# use them, and the statistics hold what /metrics already publishes.
RESTRICTED_APIS = ("model-repository", "trace", "logging")
RESTRICTED_OFF_LOOPBACK = ("shared-memory",)
# What tritonserver prints on a machine without a GPU although nothing here needs one.
NO_GPU_NOISE = (
    "CudaDriverHelper has not been initialized",
    "Failed to initialize NVML",
    "DCGM unable to start",
    "Unable to allocate pinned system memory",
    "CUDA driver version is insufficient",
)


@dataclass
class ServeConfig:
    """What `restr-serve` starts; the defaults are the command line's."""

    artifacts: Path | None
    repository: Path | None = None  # instead: a repository restr-export --triton --triton-for pytriton wrote
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    instances: int = 2
    max_texts: int = 64  # most expressions in one request
    batch_images: int | None = None  # most requests in one model run; default: the export's max_batch with a GPU, 1 on a CPU
    batch_delay_us: int = 0  # how long a request may wait for others to share its run
    backend: str = "ort"
    precision: str = "fp32"
    providers: list[str] | str | None = None
    threads: int | None = None  # ONNX Runtime intra-op threads per instance; default: cores / instances
    cache_size: int = 32
    workers: int | None = None  # threads per instance decoding and preparing a batch's images; default: 0 on a CPU, 4 on a GPU
    drain_timeout_s: int = 30
    access_token: str | None = None
    verbose: bool = False

    @property
    def gpu(self) -> bool:
        """Whether the model may run on a GPU (then Triton's CUDA memory pools and GPU metrics stay on)."""
        providers = self.providers if isinstance(self.providers, list) else [self.providers or "cpu"]
        return self.backend == "tensorrt" or any(str(p).strip().lower() != "cpu" for p in providers)


# -- the model, inside tritonserver ---------------------------------------------------------------


class TritonModel:
    """The `restr` model in Triton's Python backend (the generated model.py imports it as
    TritonPythonModel): one object per instance, each in its own process with its own Predictor."""

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        from restr.runtime.predictor import Predictor

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        p = {k: (v or {}).get("string_value", "") for k, v in config["parameters"].items()}
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.max_texts = int(p["max_texts"])
        try:
            self.predictor = Predictor.from_artifacts(
                p["artifacts"],
                backend=p["backend"],
                precision=p["precision"],
                providers=parse_providers(p["providers"]),
                cache_size=int(p["cache_size"]),
                threads=int(p["threads"]) or None,
            )
            self.workers = int(p["workers"])
            self.decoder = ThreadPoolExecutor(self.workers, thread_name_prefix="restr-decode") if self.workers else None
            size = self.predictor.artifacts.image_size  # one run before Triton calls the model ready
            list(self.predictor.predict_many([(np.zeros((size, size, 3), np.uint8), ["warm up"])], workers=0))
        except Exception as e:  # the supervisor prints this line: tritonserver's log of it is a traceback
            Path(p["error_file"]).write_text(one_line(e), encoding="utf-8")
            raise

    def finalize(self):
        if self.decoder is not None:
            self.decoder.shutdown(wait=False, cancel_futures=True)

    def execute(self, requests):
        answers: list = [None] * len(requests)
        jobs = []  # (index, image, texts, threshold, wanted outputs)
        for i, request in enumerate(requests):
            try:
                image, texts, threshold = read_request(lambda name, r=request: self._input(r, name), self.max_texts, decode=False)
            except RequestError as e:
                answers[i] = self._refuse(e)
                continue
            jobs.append([i, image, texts, threshold, set(request.requested_output_names())])
        self._decode(jobs, answers)
        jobs = [j for j in jobs if answers[j[0]] is None]
        try:
            for threshold, group in groupby(sorted(jobs, key=lambda j: -1.0 if j[3] is None else j[3]), key=lambda j: j[3]):
                group = list(group)
                probs = any(not j[4] or "probs" in j[4] for j in group)
                results = self.predictor.predict_many(
                    [(j[1], j[2]) for j in group], threshold=threshold, probs=probs, workers=self.workers if len(group) > 1 else 0
                )
                for job, result in zip(group, results):
                    answers[job[0]] = self._refuse(result.error) if result.error else self._answer(job, result, threshold)
        except Exception as e:  # ONNX Runtime, CUDA: this batch fails, the server goes on
            message = f"inference failed: {one_line(e)}"
            log(message)
            error = self.pb.TritonError(message, self.pb.TritonError.INTERNAL)
            answers = [a if a is not None else self.pb.InferenceResponse(output_tensors=[], error=error) for a in answers]
        return answers

    def _input(self, request, name):
        tensor = self.pb.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        value = tensor.as_numpy()
        if self.batched:
            if value.shape[0] != 1:
                raise RequestError(
                    f"'{name}' holds a batch of {value.shape[0]}: send one image per request (the server batches requests itself)"
                )
            value = value[0]
        return value

    def _decode(self, jobs: list, answers: list) -> None:
        """Encoded images decoded (EXIF, RGB) in parallel, each job's image replaced by its pixels."""
        encoded = [j for j in jobs if not isinstance(j[1], np.ndarray)]
        decode = self.decoder.map if self.decoder is not None and len(encoded) > 1 else map
        for job, (image, ms) in zip(encoded, decode(_timed_decode, [j[1] for j in encoded])):
            if isinstance(image, RequestError):
                answers[job[0]] = self._refuse(image)
            else:
                job[1] = np.asarray(image)
                job.append(ms)

    def _refuse(self, error: Exception):
        message = one_line(error)
        log(f"refused a request: {message}")
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(message, self.pb.TritonError.INVALID_ARG))

    def _answer(self, job: list, result, threshold):
        preds = result.predictions
        wanted = job[4]
        decode_ms = job[5] if len(job) > 5 else 0.0
        timings = [{**p.timings, "preprocess": p.timings.get("preprocess", 0.0) + decode_ms} for p in preds]
        with_probs = not wanted or "probs" in wanted
        out = response(
            masks=np.stack([p.mask for p in preds]),
            probs=np.stack([p.probs for p in preds]) if with_probs else np.zeros((0, 0, 0), np.float32),
            scores=[p.score for p in preds],
            areas=[p.area for p in preds],
            patch_scores=[p.patch_score for p in preds],
            unknown_words=[p.unknown_words for p in preds],
            truncated=[p.truncated for p in preds],
            threshold=self.predictor.threshold if threshold is None else threshold,
            no_known_words=[p.no_known_words for p in preds],
            timings=timings,
        )
        names = [n for n in OUTPUTS if not wanted or n in wanted]
        return self.pb.InferenceResponse(
            output_tensors=[self.pb.Tensor(n, out[n][None] if self.batched else out[n]) for n in names]
        )


def _timed_decode(encoded):
    t0 = time.perf_counter()
    try:
        image = decode_image(encoded)
    except RequestError as e:
        return e, 0.0
    return image, (time.perf_counter() - t0) * 1000


def log(message: str) -> None:
    """One line on the server's log (a model instance's stderr is tritonserver's, which restr-serve relays)."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:500]


def parse_providers(value):
    """'cuda,cpu' -> ['cuda', 'cpu']; 'auto' or 'cpu' as they are; '' -> None."""
    if not value:
        return None
    return [p.strip() for p in value.split(",") if p.strip()] if "," in value else value


# -- the repository ---------------------------------------------------------------------------------

MODEL_PY = '"""restr-serve\'s model: restr.runtime.serve.TritonModel."""\nfrom restr.runtime.serve import TritonModel as TritonPythonModel  # noqa: F401\n'


def write_repository(config: ServeConfig, root: Path, error_file: Path) -> tuple[Path, str, int]:
    """The model repository for the export under root; returns (repository, model name, batch size).
    Raises ArtifactError (in one line) for an export that cannot be used."""
    from restr.runtime.artifacts import Artifacts

    art = Artifacts.open(config.artifacts)
    words = art.vocabulary().itos  # checks vocab.txt against the manifest
    # On a CPU a batch of images costs more per image than one at a time (measured: benchmarks/RESULTS.md)
    batch = config.batch_images or (art.max_batch if config.gpu else 1)
    threads = config.threads or max(1, (os.cpu_count() or 1) // config.instances)
    providers = ",".join(config.providers) if isinstance(config.providers, list) else (config.providers or "")
    params = {
        "artifacts": Path(config.artifacts).resolve(),
        "backend": config.backend,
        "precision": config.precision,
        "providers": providers,
        "threads": threads,
        "cache_size": config.cache_size,
        "max_texts": config.max_texts,
        "workers": (4 if config.gpu else 0) if config.workers is None else config.workers,
        "error_file": error_file,
    }
    model = {
        "name": MODEL,
        "backend": "python",
        "max_batch_size": batch,
        **model_io(ragged=True),
        "dynamic_batching": {"max_queue_delay_microseconds": config.batch_delay_us},
        "instance_group": [{"count": config.instances, "kind": Enum("KIND_CPU")}],
        "parameters": [parameter(k, v) for k, v in params.items()]
        + metadata_parameters(art.model_name, art.max_words, art.threshold, words),
    }
    repo = root / "models"
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(pbtxt(model), encoding="utf-8")
    (repo / MODEL / "1" / "model.py").write_text(MODEL_PY, encoding="utf-8")
    return repo, art.model_name, batch


def check_repository(repository: Path) -> None:
    """Refuse, in one line, a repository the bundled tritonserver cannot run (it has only the Python backend)."""
    repository = Path(repository)
    if not (repository / MODEL / "config.pbtxt").is_file():
        raise ValueError(f"{repository}: not a model repository written by restr-export --triton (no {MODEL}/config.pbtxt)")
    for config in sorted(repository.glob("*/config.pbtxt")):
        text = config.read_text(encoding="utf-8", errors="replace")
        found = re.search(r'^\s*(?:backend|platform)\s*:\s*"([^"]+)"', text, flags=re.M)
        if found and found.group(1) != "python":
            raise ValueError(
                f"{repository}: model {config.parent.name!r} needs Triton's {found.group(1)} backend, which the "
                f"tritonserver bundled here lacks: write the repository with restr-export --triton DIR --triton-for pytriton"
            )


# -- tritonserver -----------------------------------------------------------------------------------


def check_ports(config: ServeConfig) -> None:
    """Raise ValueError, in one line, when a port is given twice or another program listens on it:
    tritonserver would exit later with a longer story."""
    ports = {"--http-port": config.http_port, "--grpc-port": config.grpc_port, "--metrics-port": config.metrics_port}
    if len(set(ports.values())) < len(ports):
        raise ValueError(f"--http-port, --grpc-port and --metrics-port must differ (got {', '.join(map(str, ports.values()))})")
    for flag, port in ports.items():
        try:
            family, kind, proto, _, address = socket.getaddrinfo(config.host, port, type=socket.SOCK_STREAM)[0]
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a closing connection is no conflict
                s.bind(address)
        except OSError as e:
            raise ValueError(
                f"{flag} {port}: cannot listen on {config.host}:{port} ({e.strerror or e}); choose another port"
            ) from None


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def restricted_apis(config: ServeConfig, token: str) -> str:
    """Triton's restriction argument: 'api,api:header=token'."""
    apis = RESTRICTED_APIS + (() if loopback(config.host) else RESTRICTED_OFF_LOOPBACK)
    return f"{','.join(apis)}:{ACCESS_HEADER}={token}"


def tritonserver_args(config: ServeConfig, repository: Path, backends: Path, shm_prefix: str, token: str) -> list[str]:
    """The command line: the models load while tritonserver starts (it is ready only once they have);
    explicit model control lets the drain unload them."""
    c = config
    load = MODEL if c.repository is None else "*"
    args = [
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        f"--load-model={load}",
        "--strict-readiness=true",
        "--disable-auto-complete-config",
        f"--exit-timeout-secs={c.drain_timeout_s}",
        f"--http-address={c.host}",
        f"--http-port={c.http_port}",
        f"--grpc-address={c.host}",
        f"--grpc-port={c.grpc_port}",
        "--allow-metrics=true",
        f"--metrics-address={c.host}",
        f"--metrics-port={c.metrics_port}",
        # The Python backend's shared memory starts small and grows (its 64 MiB default per instance
        # exceeds a container's default /dev/shm).
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        "--backend-config=python,shm-default-byte-size=4194304",
        "--backend-config=python,shm-growth-byte-size=16777216",
        f"--log-info={'true' if c.verbose else 'false'}",
        f"--log-verbose={1 if c.verbose else 0}",
    ]
    if not c.gpu:  # nothing here needs CUDA: no pinned or device memory pools, no GPU metrics
        args += ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0", "--allow-gpu-metrics=false"]
    restriction = restricted_apis(c, token)
    return args + [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]


def prepare_tritonserver(work: Path) -> tuple[Path, dict]:
    """A copy of PyTriton's bundled tritonserver with the Python backend stub of this interpreter's
    version, and the environment it runs in (its libraries; this environment's Python for the stub)."""
    try:
        from pytriton.triton import TRITONSERVER_DIST_DIR
        from pytriton.utils.distribution import get_libs_path, get_stub_path
    except ImportError as e:
        raise RuntimeError(f"PyTriton is not installed here ({e}); make serve-env (docs/serving.md)") from None
    dist = work / "tritonserver"
    shutil.copytree(TRITONSERVER_DIST_DIR, dist, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(
        get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}"), dist / "backends" / "python" / "triton_python_backend_stub"
    )
    env = dict(os.environ)
    # The stub loads libpython3.X.so by name: this interpreter's own first (another 3.X earlier on the
    # loader path fails with "'_thread.RLock' object has no attribute ...").
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [libdir] + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir] + [str(get_libs_path())]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return dist, env


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _die_with_parent() -> None:
    """In tritonserver, before exec: SIGTERM (a drain) when restr-serve dies, however it dies."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Tritonserver:
    """A running tritonserver in its own process group, its output relayed to stderr line by line
    (tritonserver's noise about absent GPUs dropped when no GPU is used). Until `release()` the lines
    are held back: a model that fails to load is then told in restr-serve's one line, not in
    tritonserver's traceback of it."""

    def __init__(self, dist: Path, args: list[str], env: dict, url: str, token: str, quiet_gpu: bool):
        self.url, self.token = url, token
        self.proc = subprocess.Popen(
            [str(dist / "bin" / "tritonserver"), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.quiet_gpu = quiet_gpu
        self.tail: deque[str] = deque(maxlen=40)
        self._held: list[str] | None = []
        self._lock = threading.Lock()
        self._relay = threading.Thread(target=self._relay_lines, name="tritonserver-log", daemon=True)
        self._relay.start()

    def _relay_lines(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if (
                not line.strip()
                or (self.quiet_gpu and any(n in line for n in NO_GPU_NOISE))
                or re.fullmatch(r"Signal \(\d+\) received\.", line)
            ):
                continue
            with self._lock:
                self.tail.append(line)
                if self._held is not None:
                    self._held.append(line)
                    continue
            _stderr(line)

    def release(self, show: bool = True) -> None:
        """Relay from now on; the lines held so far are written first (show) or dropped."""
        with self._lock:
            held, self._held = self._held or [], None
            for line in held if show else ():
                _stderr(line)

    def wait_ready(self) -> bool:
        """Poll /v2/health/ready until 200 (True) or tritonserver exits (False)."""
        while self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:  # refused, reset, 400 (HTTPError) while the model loads
                pass
            time.sleep(0.2)
        return False

    def wait(self, timeout_s: float | None = None) -> int:
        """tritonserver's exit code. (Popen.wait swallows a second Ctrl-C that comes within 0.25 s
        of the first, waiting for the child: here each signal interrupts at once.)"""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.proc.args, timeout_s)
            time.sleep(0.1)
        return self.proc.returncode

    def unload(self) -> None:
        """Ask tritonserver to unload the model (it returns at once): from then on readiness fails and
        new requests are refused, while the ones Triton holds, running or queued, are answered."""
        request = urllib.request.Request(
            f"{self.url}/v2/repository/models/{MODEL}/unload",
            data=b"{}",
            method="POST",
            headers={ACCESS_HEADER: self.token, "Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as e:  # then the SIGTERM alone drains
            click.echo(f"{PROG}: could not unload the model first ({e}); stopping tritonserver", err=True)
        except OSError:  # not listening yet (still starting): nothing to unload
            pass

    def kill(self) -> None:
        """SIGKILL tritonserver and its model instances (its process group: an instance outlives a
        tritonserver that gave up at its exit timeout)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def finish_log(self) -> None:
        self._relay.join(timeout=5)


# -- supervising it ---------------------------------------------------------------------------------


def serve(config: ServeConfig) -> int:
    """Write the repository, start tritonserver on it, serve until SIGTERM or SIGINT (then drain and
    stop); returns the exit code. Raises ValueError / RuntimeError (one line) for what cannot start."""
    signal.signal(signal.SIGTERM, _interrupt)  # how Kubernetes and systemd stop a server: as Ctrl-C
    remove_stale()
    work = Path(tempfile.mkdtemp(prefix=f"restr-serve-{os.getpid()}-"))
    shm_prefix = f"restr-serve-{os.getpid()}-"
    server = None
    try:
        error_file = work / "load-error.txt"
        if config.repository is not None:
            check_repository(config.repository)
            repo, what = Path(config.repository).resolve(), f"the repository {config.repository}"
        else:
            repo, name, batch = write_repository(config, work, error_file)
            batches = "one request per run" if batch == 1 else f"batches of up to {batch} requests"
            what = f"model '{MODEL}' ({name}, {config.instances} instance{'s' * (config.instances > 1)}, {batches})"
        dist, env = prepare_tritonserver(work)
        token = config.access_token or secrets.token_urlsafe(24)
        probe = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
        url = f"http://[{probe}]:{config.http_port}" if ":" in probe else f"http://{probe}:{config.http_port}"
        server = Tritonserver(
            dist, tritonserver_args(config, repo, dist / "backends", shm_prefix, token), env, url, token, quiet_gpu=not config.gpu
        )
        try:
            if not server.wait_ready():
                server.finish_log()
                if error_file.is_file():  # the model's own line says it all
                    server.release(show=False)
                    raise ValueError(error_file.read_text(encoding="utf-8"))
                server.release()
                raise RuntimeError(f"tritonserver exited ({server.proc.returncode}) before serving (its log above)")
        except KeyboardInterrupt:  # drained as when serving: Triton may already answer requests restr-serve has not seen it take
            server.release()
            return drain(server, config)
        server.release()
        click.echo(
            f"{PROG}: serving {what} on http://{config.host}:{config.http_port}, grpc {config.host}:{config.grpc_port}, "
            f"metrics http://{config.host}:{config.metrics_port}/metrics",
            err=True,
        )
        try:
            code = server.wait()
        except KeyboardInterrupt:
            return drain(server, config)
        server.finish_log()
        click.echo(f"{PROG}: error: tritonserver exited ({code}) on its own", err=True)
        return 1
    finally:
        _quietly(_clean_up, server, work, shm_prefix)


def drain(server: Tritonserver, config: ServeConfig) -> int:
    """After the first SIGTERM or Ctrl-C: the model is unloaded (readiness fails, new requests are
    refused, the held ones answered) and tritonserver stopped (it closes its listening sockets and
    exits once the model is gone, or at the drain timeout); a second signal kills it."""
    click.echo(
        f"{PROG}: stopping: refusing new requests, answering the ones Triton holds (up to {config.drain_timeout_s} s)", err=True
    )
    try:
        server.unload()
        server.proc.send_signal(signal.SIGTERM)
        code = server.wait(config.drain_timeout_s + 30)  # its exit timeout, then unloading
    except KeyboardInterrupt:
        click.echo(f"{PROG}: second signal: stopping now, requests still running are dropped", err=True)
        _quietly(server.kill)
        return 0
    except subprocess.TimeoutExpired:
        click.echo(f"{PROG}: tritonserver did not stop 30 s after the drain timeout: killed", err=True)
        _quietly(server.kill)
        return 1
    server.finish_log()
    if code != 0:
        click.echo(f"{PROG}: requests still running after {config.drain_timeout_s} s were dropped", err=True)
    click.echo(f"{PROG}: stopped", err=True)
    return 0


def _clean_up(server: Tritonserver | None, work: Path, shm_prefix: str) -> None:
    """Nothing of the server left behind: tritonserver and its instances, the temporary folder, the
    Python backend's shared memory (tritonserver frees it unless it was killed)."""
    if server is not None:
        server.kill()
    shutil.rmtree(work, ignore_errors=True)
    for region in Path("/dev/shm").glob(f"{shm_prefix}*"):
        region.unlink(missing_ok=True)


def remove_stale(tmp: Path | None = None) -> None:
    """What a restr-serve that was killed (SIGKILL, a crash) left: its temporary folder and shared
    memory, found by the dead process's id in their names."""
    tmp = Path(tmp or tempfile.gettempdir())
    for path in [*tmp.glob("restr-serve-*-*"), *Path("/dev/shm").glob("restr-serve-*-*")]:
        pid = path.name.split("-")[2]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _quietly(fn, *args):
    """Run fn deaf to SIGINT/SIGTERM: a signal inside it would leave a half-stopped server behind."""
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return fn(*args)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--artifacts", type=click.Path(path_type=Path), help="Export folder written by restr-export.")
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    help="Instead: a model repository from restr-export --triton DIR --triton-for pytriton.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 to accept other machines).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option(
    "--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True, help="Prometheus metrics (/metrics)."
)
@click.option(
    "--instances",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Model instances: processes, each with its own copy of the model and features cache.",
)
@click.option(
    "--batch-images",
    type=click.IntRange(1, 1024),
    default=None,
    help="Most requests (images) one instance runs together. [default: the export's max_batch with a GPU, 1 on a CPU]",
)
@click.option(
    "--batch-delay-us",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="How long a request may wait for others to share its run (0: only those already queued).",
)
@click.option(
    "--max-texts",
    "--max-batch",
    "max_texts",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Most expressions in one request.",
)
@runtime_options()
@click.option(
    "--threads", type=click.IntRange(1), default=None, help="ONNX Runtime threads per instance. [default: cores / instances]"
)
@click.option(
    "--cache-size", type=click.IntRange(1), default=32, show_default=True, help="Images whose features each instance keeps."
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=None,
    help="Threads per instance that decode and prepare a batch's images. [default: 0 on a CPU, 4 with a GPU]",
)
@click.option(
    "--drain-timeout", type=click.IntRange(0), default=30, show_default=True, help="Seconds the requests held at SIGTERM get."
)
@click.option(
    "--access-token",
    envvar="RESTR_SERVE_ACCESS_TOKEN",
    default=None,
    help="Token (header triton-access-token) for Triton's model-repository, shared-memory, trace and logging APIs. "
    "[default: those APIs open on a loopback --host, closed on any other; env RESTR_SERVE_ACCESS_TOKEN]",
)
@click.option("--verbose", is_flag=True, help="Triton's info and verbose log too.")
def cli(
    artifacts,
    repository,
    host,
    http_port,
    grpc_port,
    metrics_port,
    instances,
    batch_images,
    batch_delay_us,
    max_texts,
    backend,
    precision,
    providers,
    threads,
    cache_size,
    workers,
    drain_timeout,
    access_token,
    verbose,
):
    """Serve a restr export on NVIDIA Triton Inference Server (the tritonserver nvidia-pytriton bundles).

    \b
      restr-serve --artifacts runs/demo/export
      restr-serve --repository runs/demo/triton-cpu      (from restr-export --triton DIR --triton-for pytriton)
      restr-predict --server http://127.0.0.1:8000 --image photo.jpg --text "the red circle" --out out/

    /v2/health/ready answers 200 once the model is loaded, and no longer once SIGTERM starts the drain.
    Metrics: http://HOST:METRICS_PORT/metrics. Statistics (/v2/models/stats) are open: perf_analyzer
    reads them (docs/serving.md).
    """
    if (artifacts is None) == (repository is None):
        click.echo(f"{PROG}: error: give one of --artifacts DIR and --repository DIR (see --help)", err=True)
        sys.exit(EXIT_BAD_INPUT)
    config = ServeConfig(
        artifacts=artifacts,
        repository=repository,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        instances=instances,
        max_texts=max_texts,
        batch_images=batch_images,
        batch_delay_us=batch_delay_us,
        backend=backend,
        precision=precision,
        providers=parse_providers(providers),
        threads=threads,
        cache_size=cache_size,
        workers=workers,
        drain_timeout_s=drain_timeout,
        access_token=access_token or None,
        verbose=verbose,
    )
    try:
        check_ports(config)
        sys.exit(serve(config))
    except ValueError as e:  # ArtifactError, bad providers, not a usable repository, a port in use
        click.echo(f"{PROG}: error: {one_line(e)}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except RuntimeError as e:
        click.echo(f"{PROG}: error: {one_line(e)}", err=True)
        sys.exit(1)


def main(argv=None) -> None:
    """Console entry point (`restr-serve`)."""
    cli.main(args=argv, prog_name=PROG)


if __name__ == "__main__":
    main()
