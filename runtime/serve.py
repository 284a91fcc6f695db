"""`restr-serve`: the restr runtime behind NVIDIA Triton Inference Server, through PyTriton.

    restr-serve --artifacts runs/demo/export                 # http :8000, grpc :8001, metrics :8002

PyTriton starts a real `tritonserver` (HTTP and gRPC, /v2/health/live and /ready, Prometheus
metrics on /metrics) whose Python backend hands each request to `RestrModel` in this process. One
model, `restr`: an image (encoded file bytes as `image`, or uint8 HxWx3 pixels as `rgb`) and one or
more expressions (`texts`) in; masks, scores, areas, patch scores, unknown words out (the
`OUTPUTS` table). `--instances N` runs N requests at once on one shared `Predictor`, so an image
is encoded once for all its expressions and again only when it falls out of the features cache.
SIGTERM (or Ctrl-C) drains: requests the model has not started get a one-line "shutting down"
error (clients retry elsewhere), the running ones finish (`--drain-timeout`), then Triton stops.

nvidia-pytriton 0.7 requires numpy < 2: install this in its own torch-free environment
(`make serve-env`, README "Serving"); clients need only `restr[client]`.
"""
from __future__ import annotations

import io
import json
import logging
import os
import signal
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
from restr.runtime.transforms import ImageError, load_image

PROG = "restr-serve"
MODEL = "restr"
EXIT_BAD_INPUT = 2

# name -> (numpy dtype, shape without batch axis; -1 = any). The Triton model's whole contract;
# the client (restr.runtime.client) and the generated GPU repository (restr.export.triton) use it too.
INPUTS = {
    "image": (np.bytes_, (1,)),  # an encoded image file (PNG, JPEG, ...); EXIF orientation applied
    "rgb": (np.uint8, (-1, -1, 3)),  # or the decoded pixels
    "texts": (np.bytes_, (-1,)),  # UTF-8 expressions about that image
    "threshold": (np.float32, (1,)),  # optional; the manifest's by default
}
OPTIONAL = ("image", "rgb", "threshold")
OUTPUTS = {
    "masks": (np.bool_, (-1, -1, -1)),  # (K, H, W) at the image's resolution
    "probs": (np.float32, (-1, -1, -1)),  # (K, H, W); ask for it only when needed (K*H*W*4 bytes)
    "scores": (np.float32, (-1,)),
    "areas": (np.int64, (-1,)),
    "patch_scores": (np.float32, (-1,)),
    "unknown_words": (np.bytes_, (-1,)),  # one JSON list per expression
    "truncated": (np.bool_, (-1,)),
    "used_threshold": (np.float32, (1,)),  # the request's threshold, or the manifest's
}


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
    extra: dict = field(default_factory=dict)  # more TritonConfig fields, for tests and experts


class RequestError(ValueError):
    """A request the model cannot answer: becomes a Triton error for that request only."""


class RestrModel:
    """The Triton model's inference callable: one `Predictor`, shared by every instance (thread)."""

    def __init__(self, predictor: Predictor, max_batch: int = 64):
        self.predictor = predictor
        self.max_batch = max_batch
        self.draining = False
        self._running = 0
        self._cv = threading.Condition()

    def __call__(self, requests):
        with self._cv:
            if self.draining:
                raise RequestError("the server is shutting down: send the request again (to another replica)")
            self._running += 1
        try:
            return [self.infer(r.data, getattr(r, "requested_output_names", None)) for r in requests]
        finally:
            with self._cv:
                self._running -= 1
                self._cv.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait for the running ones; False if some still run after timeout_s.
        (Triton's own shutdown keeps taking requests until its exit timeout, then drops what runs.)"""
        with self._cv:
            self.draining = True
            return self._cv.wait_for(lambda: self._running == 0, timeout_s)

    def infer(self, data: dict, wanted=None) -> dict:
        rgb = self._image(data)
        texts = self._texts(data)
        threshold = None
        if data.get("threshold") is not None:
            threshold = float(np.asarray(data["threshold"]).reshape(-1)[0])
            if not 0.0 < threshold < 1.0:
                raise RequestError(f"threshold must be in (0, 1), got {threshold}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TextTruncatedWarning)  # reported in `truncated`
                preds = self.predictor.predict_image(rgb, texts, threshold=threshold)
        except (TextError, ImageError) as e:
            raise RequestError(str(e)) from None
        out = {
            "masks": np.stack([p.mask for p in preds]),
            "scores": np.array([p.score for p in preds], np.float32),
            "areas": np.array([p.area for p in preds], np.int64),
            "patch_scores": np.array([p.patch_score for p in preds], np.float32),
            "unknown_words": np.array([json.dumps(p.unknown_words).encode() for p in preds], dtype=np.object_),
            "truncated": np.array([p.truncated for p in preds], np.bool_),
            "used_threshold": np.array([self.predictor.threshold if threshold is None else threshold], np.float32),
        }
        if not wanted or "probs" in wanted:
            out["probs"] = np.stack([p.probs for p in preds]).astype(np.float32, copy=False)
        return out if not wanted else {k: v for k, v in out.items() if k in wanted}

    def _image(self, data: dict):
        encoded, rgb = data.get("image"), data.get("rgb")
        if (encoded is None) == (rgb is None):
            raise RequestError("send exactly one of the inputs 'image' (encoded file bytes) and 'rgb' (uint8 HxWx3)")
        if rgb is not None:
            if rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
                raise RequestError(f"'rgb' must be a non-empty uint8 HxWx3 array, got shape {tuple(rgb.shape)}")
            return np.ascontiguousarray(rgb)
        blob = np.asarray(encoded, dtype=np.object_).reshape(-1)
        if blob.size != 1 or not isinstance(blob[0], (bytes, bytearray)) or not blob[0]:
            raise RequestError("'image' must hold one encoded image file (bytes)")
        try:
            return load_image(_RequestBytes(blob[0]))
        except ImageError as e:
            raise RequestError(str(e)) from None

    def _texts(self, data: dict) -> list[str]:
        raw = np.asarray(data["texts"], dtype=np.object_).reshape(-1)
        if raw.size == 0:
            raise RequestError("'texts' holds no expression")
        if raw.size > self.max_batch:
            raise RequestError(f"{raw.size} expressions in one request; this server takes at most {self.max_batch} (--max-batch)")
        try:
            return [t.decode("utf-8") if isinstance(t, (bytes, bytearray)) else str(t) for t in raw]
        except UnicodeDecodeError:
            raise RequestError("'texts' must be UTF-8") from None


class _RequestBytes(io.BytesIO):
    """Image bytes that read as 'request image' in error messages (load_image names its source)."""

    def __str__(self) -> str:
        return "request image"

    __repr__ = __str__  # Pillow's "cannot identify image file <...>" uses repr


def bind(triton, predictor: Predictor, config: ServeConfig) -> RestrModel:
    """Bind the `restr` model (one callable per instance, one shared Predictor) to a PyTriton server."""
    from pytriton.model_config import ModelConfig, Tensor

    model = RestrModel(predictor, config.max_batch)
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
    with Triton(config=triton_config(config)) as triton:
        model = bind(triton, predictor, config)
        triton.run()
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
            click.echo(f"{PROG}: stopping: refusing new requests, finishing the running ones", err=True)
            if not model.drain(config.drain_timeout_s):
                click.echo(f"{PROG}: requests still running after {config.drain_timeout_s} s are dropped", err=True)
    click.echo(f"{PROG}: stopped", err=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--artifacts", required=True, type=click.Path(path_type=Path), help="Export folder written by restr-export.")
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
def cli(artifacts, host, http_port, grpc_port, metrics_port, instances, max_batch, backend, precision, providers, threads,
        cache_size, drain_timeout):
    """Serve a restr export on NVIDIA Triton Inference Server (through PyTriton).

    \b
      restr-serve --artifacts runs/demo/export
      restr-predict --server http://127.0.0.1:8000 --image photo.jpg --text "the red circle" --out out/

    Health: /v2/health/ready; metrics: http://HOST:METRICS_PORT/metrics. SIGTERM drains and stops.
    """
    if providers and "," in providers:
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    config = ServeConfig(artifacts=artifacts, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                         instances=instances, max_batch=max_batch, backend=backend, precision=precision, providers=providers,
                         threads=threads, cache_size=cache_size, drain_timeout_s=drain_timeout)
    logging.getLogger("pytriton").setLevel(logging.WARNING)
    try:
        predictor = load_predictor(config)
    except ValueError as e:  # ArtifactError, bad providers
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
