"""`restr-serve`: the restr runtime behind NVIDIA Triton Inference Server, through PyTriton.

    restr-serve --artifacts runs/demo/export                 # http :8000, grpc :8001, metrics :8002

PyTriton starts a real `tritonserver` (HTTP and gRPC, /v2/health/live and /ready, Prometheus
metrics on /metrics) whose Python backend hands each request to `RestrModel` in this process. One
model, `restr`: an image (encoded file bytes as `image`, or uint8 HxWx3 pixels as `rgb`) and one or
more expressions (`texts`) in; masks, scores, areas, patch scores, unknown words out
(runtime/protocol.py). `--instances N` runs N requests at once on one shared `Predictor`, so an image
is encoded once for all its expressions and again only when it falls out of the features cache.
SIGTERM (or Ctrl-C) drains: requests running or queued in Triton at the signal are answered
(`--drain-timeout`), later ones get a one-line "shutting down" error (clients retry elsewhere),
then Triton stops.

nvidia-pytriton 0.7 requires numpy < 2: install this in its own torch-free environment
(`make serve-env`, README "Serving"); clients need only `restr[client]`.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import sysconfig
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from restr.runtime.predictor import Predictor, TextError, TextTruncatedWarning
from restr.runtime.protocol import INPUTS, MODEL, OPTIONAL, OUTPUTS, RequestError, read_request, response
from restr.runtime.transforms import ImageError

PROG = "restr-serve"
EXIT_BAD_INPUT = 2

@dataclass
class ServeConfig:
    """What `restr-serve` starts; the defaults are the command line's."""

    artifacts: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    instances: int = 2
    max_batch: int = 64  # most expressions in one request
    backend: str = "ort"
    precision: str = "fp32"
    providers: list[str] | str | None = None
    threads: int | None = None  # ONNX Runtime intra-op threads; default: cores / instances
    cache_size: int = 32
    drain_timeout_s: int = 30
    log_verbose: int = 0
    extra: dict = field(default_factory=dict)  # more TritonConfig fields (pytriton.triton.TritonConfig)


class RestrModel:
    """The Triton model's inference callable: one `Predictor`, shared by every instance (thread)."""

    def __init__(self, predictor: Predictor, max_batch: int = 64, instances: int = 1):
        self.predictor = predictor
        self.max_batch = max_batch
        self.instances = instances
        self.draining = False
        self._running = 0
        self._admit = 0  # requests still to run while draining (Triton had queued them)
        self._cv = threading.Condition()

    def __call__(self, requests):
        with self._cv:
            if self.draining:
                if self._admit <= 0:
                    raise RequestError("the server is shutting down: send the request again (to another replica)")
                self._admit -= 1  # queued in Triton before the signal: accepted, so answered
            self._running += 1
            self._cv.notify_all()
        try:
            return [self.infer(r.data, getattr(r, "requested_output_names", None)) for r in requests]
        finally:
            with self._cv:
                self._running -= 1
                self._cv.notify_all()

    def drain(self, timeout_s: float, queued: int = 0) -> bool:
        """Answer the running requests and the `queued` ones Triton holds, refuse the rest; False if
        some still run after timeout_s. (Triton's own shutdown keeps taking new requests until its
        exit timeout, then drops what runs: so the model draws the line itself.)

        An instance that is not running a request here may be passing one on: Triton has taken it
        from its queue (so `queued` does not count it) and it has not reached `__call__` yet. Each
        such instance gets one more admission; one that was idle costs at most the quiet second below.
        """
        deadline = time.monotonic() + timeout_s
        with self._cv:
            self.draining, self._admit = True, queued + max(0, self.instances - self._running)
            while self._running or self._admit > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if not self._cv.wait(min(left, 1.0)) and not self._running:
                    return True  # nothing ran or arrived for a second: the queued count was stale
            return True

    def infer(self, data: dict, wanted=None) -> dict:
        image, texts, threshold = read_request(data.get, self.max_batch)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TextTruncatedWarning)  # reported in `truncated`
                preds = self.predictor.predict_image(image, texts, threshold=threshold)
        except (TextError, ImageError) as e:
            raise RequestError(str(e)) from None
        # probs is K*H*W*4 bytes: stacked only when asked for (Triton passes which outputs are wanted)
        with_probs = not wanted or "probs" in wanted
        out = response(
            masks=np.stack([p.mask for p in preds]),
            probs=np.stack([p.probs for p in preds]) if with_probs else np.zeros((0, 0, 0), np.float32),
            scores=[p.score for p in preds], areas=[p.area for p in preds], patch_scores=[p.patch_score for p in preds],
            unknown_words=[p.unknown_words for p in preds], truncated=[p.truncated for p in preds],
            threshold=self.predictor.threshold if threshold is None else threshold,
            no_known_words=[p.no_known_words for p in preds], timings=[p.timings for p in preds],
        )
        return out if not wanted else {k: v for k, v in out.items() if k in wanted}


def bind(triton, predictor: Predictor, config: ServeConfig) -> RestrModel:
    """Bind the `restr` model (one callable per instance, one shared Predictor) to a PyTriton server."""
    from pytriton.model_config import ModelConfig, Tensor

    model = RestrModel(predictor, config.max_batch, config.instances)
    triton.bind(
        model_name=MODEL,
        infer_func=[model] * config.instances,  # N instances: N requests in flight on one Predictor
        inputs=[Tensor(name=n, dtype=d, shape=s, optional=n in OPTIONAL) for n, (d, s) in INPUTS.items()],
        outputs=[Tensor(name=n, dtype=d, shape=s) for n, (d, s) in OUTPUTS.items()],
        # Each request already batches its K expressions; requests differ in image size, so
        # Triton's batcher could not stack them.
        config=ModelConfig(batching=False),
        strict=False,
    )
    return model


def triton_config(config: ServeConfig):
    from pytriton.triton import TritonConfig

    return TritonConfig(
        http_address=config.host, http_port=config.http_port,
        grpc_address=config.host, grpc_port=config.grpc_port,
        metrics_address=config.host, metrics_port=config.metrics_port, allow_metrics=True,
        # Our drain (RestrModel.drain) waits for the real work; by the time Triton stops, what it still
        # holds are refusals, which must not keep a stopping server alive for the full drain timeout.
        exit_timeout_secs=min(5, config.drain_timeout_s), log_verbose=config.log_verbose,
        **config.extra,
    )


def prepare_environment() -> None:
    """The Python backend's stub loads libpython3.X.so by name: make it find this interpreter's own
    (another 3.X earlier on the loader path fails with "'_thread.RLock' object has no attribute ...")."""
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if libdir and (not paths or paths[0] != libdir):
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir] + paths)


def serve_repository(repository: Path, config: ServeConfig) -> int:
    """Run PyTriton's bundled tritonserver on a model repository (one `restr-export --triton
    --triton-for pytriton` wrote: this build has only the Python backend) until it exits; returns
    its exit code. SIGTERM is passed on: tritonserver stops and waits up to the drain timeout."""
    import shutil
    import subprocess
    import tempfile

    try:
        from pytriton.triton import TRITONSERVER_DIST_DIR
        from pytriton.utils.distribution import get_libs_path, get_stub_path
    except ImportError as e:
        raise RuntimeError(f"PyTriton is not installed here ({e}); make serve-env (README 'Serving')") from None
    if not (Path(repository) / MODEL / "config.pbtxt").is_file():
        raise RuntimeError(f"{repository}: not a model repository written by restr-export --triton (no {MODEL}/config.pbtxt)")
    # As PyTriton does: a copy of the server with the Python backend stub of this interpreter's version.
    dist = Path(tempfile.mkdtemp(prefix="restr-tritonserver-")) / "tritonserver"
    shutil.copytree(TRITONSERVER_DIST_DIR, dist, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}"), dist / "backends" / "python" / "triton_python_backend_stub")
    prepare_environment()
    os.environ["LD_LIBRARY_PATH"] += f":{get_libs_path()}"
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # the stub's Python: this environment
    c = config
    args = [f"--model-repository={Path(repository).resolve()}", f"--backend-directory={dist / 'backends'}",
            f"--http-address={c.host}", f"--http-port={c.http_port}", f"--grpc-address={c.host}", f"--grpc-port={c.grpc_port}",
            f"--metrics-address={c.host}", f"--metrics-port={c.metrics_port}", f"--exit-timeout-secs={c.drain_timeout_s}"]
    click.echo(f"{PROG}: serving the repository {repository} on http://{c.host}:{c.http_port}, grpc {c.host}:{c.grpc_port}", err=True)
    proc = subprocess.Popen([str(dist / "bin" / "tritonserver"), *args])
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    finally:
        shutil.rmtree(dist.parent, ignore_errors=True)


def check_ports(config: ServeConfig) -> None:
    """Raise ValueError, in one line, when a port is given twice or another program listens on it:
    tritonserver would exit and PyTriton fail later, deep in an HTTP client's traceback."""
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
            raise ValueError(f"{flag} {port}: cannot listen on {config.host}:{port} ({e.strerror or e}); choose another port") from None


def load_predictor(config: ServeConfig) -> Predictor:
    threads = config.threads or max(1, (os.cpu_count() or 1) // config.instances)
    return Predictor.from_artifacts(config.artifacts, backend=config.backend, precision=config.precision,
                                    providers=config.providers, cache_size=config.cache_size, threads=threads)


def serve(config: ServeConfig, predictor: Predictor | None = None) -> None:
    """Start Triton with the `restr` model and serve until SIGTERM or SIGINT (then drain and stop)."""
    try:
        from pytriton.triton import Triton
    except ImportError as e:
        raise RuntimeError(
            f"PyTriton is not installed here ({e}); install the server extra in its own environment: "
            "make serve-env (README 'Serving')"
        ) from None
    predictor = predictor or load_predictor(config)
    prepare_environment()
    # SIGTERM is how Kubernetes and systemd stop a server: treat it as Ctrl-C (drain, then stop Triton).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        triton, model = start(Triton, predictor, config)
    except KeyboardInterrupt:  # stopped before it served: start() has stopped Triton
        click.echo(f"{PROG}: stopped while starting", err=True)
        return
    try:
        click.echo(
            f"{PROG}: serving model '{MODEL}' ({predictor.artifacts.model_name}, {predictor.mode}, {config.instances} instances) "
            f"on http://{config.host}:{config.http_port}, grpc {config.host}:{config.grpc_port}, "
            f"metrics http://{config.host}:{config.metrics_port}/metrics",
            err=True,
        )
        try:
            while triton.is_alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            drain(model, config)
    finally:
        stop(triton)
    click.echo(f"{PROG}: stopped", err=True)


def drain(model: RestrModel, config: ServeConfig) -> None:
    """After the first SIGTERM or Ctrl-C: answer what was accepted, up to the drain timeout; a second
    signal ends the wait."""
    try:
        click.echo(f"{PROG}: stopping: refusing new requests, finishing the running ones", err=True)
        if not model.drain(config.drain_timeout_s, queued=pending_requests(config)):
            click.echo(f"{PROG}: requests still running after {config.drain_timeout_s} s are dropped", err=True)
    except KeyboardInterrupt:
        click.echo(f"{PROG}: second signal: stopping now, requests still running are dropped", err=True)


def stop(triton) -> None:
    """Stop Triton, deaf to further SIGINT/SIGTERM until it has: one arriving inside PyTriton's stop
    would abandon a running tritonserver (and its ports) as an orphan."""
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        triton.stop()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


LOAD_ATTEMPTS = 3


def missed_handshake(error: BaseException) -> bool:
    """Whether a model load failed because an instance missed PyTriton's start-up handshake.

    Each instance after the first fetches its set-up from the first over a Unix socket, polling 1 s
    for the socket's file. On a busy machine it can connect between the first's bind and listen
    (connection refused) or give up before the first starts (timeout): a race, not a broken model.
    """
    return "get_config_from_handshake_server" in str(error)


def start(triton_cls, predictor: Predictor, config: ServeConfig):
    """Start Triton (a `pytriton.triton.Triton` class) with the `restr` model loaded; returns
    (triton, model). A load lost to PyTriton's handshake race is retried on a fresh server."""
    for attempt in range(1, LOAD_ATTEMPTS + 1):
        triton = triton_cls(config=triton_config(config))
        try:
            triton.run()  # tritonserver, no model yet
            return triton, bind(triton, predictor, config)  # loads it
        except BaseException as e:  # SIGTERM (KeyboardInterrupt) too: never leave a tritonserver behind
            stop(triton)
            if not isinstance(e, Exception) or not missed_handshake(e):
                raise
            if attempt == LOAD_ATTEMPTS:
                raise RuntimeError(f"the model did not load: {LOAD_ATTEMPTS} tries missed PyTriton's start-up handshake "
                                   f"(is the machine overloaded? try fewer --instances)") from e
            click.echo(f"{PROG}: a model instance missed PyTriton's start-up handshake (a race on busy machines); "
                       f"starting again ({attempt + 1}/{LOAD_ATTEMPTS})", err=True)


def pending_requests(config: ServeConfig) -> int:
    """Requests Triton has queued for the model but not started (its Prometheus gauge); 0 if unknown."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{config.host}:{config.metrics_port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(f'nv_inference_pending_request_count{{model="{MODEL}"'):
                    return int(float(line.split()[-1]))
    except (OSError, ValueError):
        pass
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--artifacts", type=click.Path(path_type=Path), help="Export folder written by restr-export.")
@click.option("--repository", type=click.Path(path_type=Path),
              help="Instead: a model repository from restr-export --triton (made for CPU), served by the bundled tritonserver.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 to accept other machines).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True, help="Prometheus metrics (/metrics).")
@click.option("--instances", type=click.IntRange(1, 64), default=2, show_default=True, help="Requests served at once (model instances).")
@click.option("--max-batch", type=click.IntRange(1), default=64, show_default=True, help="Most expressions in one request.")
@click.option("--backend", type=click.Choice(["ort", "tensorrt"]), default="ort", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--providers", default=None, help="ONNX Runtime providers, comma-separated: tensorrt, cuda, cpu, or auto. [default: cpu]")
@click.option("--threads", type=click.IntRange(1), default=None, help="ONNX Runtime threads per graph. [default: cores / instances]")
@click.option("--cache-size", type=click.IntRange(1), default=32, show_default=True, help="Images whose features are kept.")
@click.option("--drain-timeout", type=click.IntRange(0), default=30, show_default=True, help="Seconds in-flight requests get on SIGTERM.")
def cli(artifacts, repository, host, http_port, grpc_port, metrics_port, instances, max_batch, backend, precision, providers, threads,
        cache_size, drain_timeout):
    """Serve a restr export on NVIDIA Triton Inference Server (through PyTriton).

    \b
      restr-serve --artifacts runs/demo/export
      restr-serve --repository runs/demo/triton-cpu      (from restr-export --triton DIR --triton-for pytriton)
      restr-predict --server http://127.0.0.1:8000 --image photo.jpg --text "the red circle" --out out/

    Health: /v2/health/ready; metrics: http://HOST:METRICS_PORT/metrics. SIGTERM drains and stops.
    """
    if providers and "," in providers:
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    if (artifacts is None) == (repository is None):
        click.echo(f"{PROG}: error: give one of --artifacts DIR and --repository DIR (see --help)", err=True)
        sys.exit(EXIT_BAD_INPUT)
    config = ServeConfig(artifacts=artifacts, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                         instances=instances, max_batch=max_batch, backend=backend, precision=precision, providers=providers,
                         threads=threads, cache_size=cache_size, drain_timeout_s=drain_timeout)
    logging.getLogger("pytriton").setLevel(logging.WARNING)
    try:
        check_ports(config)
        if repository is not None:
            sys.exit(serve_repository(repository, config))
        predictor = load_predictor(config)
    except (ValueError, RuntimeError) as e:  # ArtifactError, bad providers, not a repository
        click.echo(f"{PROG}: error: {str(e).splitlines()[0]}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    try:
        serve(config, predictor)
    except RuntimeError as e:
        click.echo(f"{PROG}: error: {str(e).splitlines()[0]}", err=True)
        sys.exit(1)


def main(argv=None) -> None:
    """Console entry point (`restr-serve`)."""
    cli.main(args=argv, prog_name=PROG)


if __name__ == "__main__":
    main()
