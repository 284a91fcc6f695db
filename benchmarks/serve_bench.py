"""Throughput and latency of restr-serve against the in-process runtime, on the same requests.

    python -m restr.benchmarks.serve_bench --artifacts runs/demo/export --requests 400 --clients 1,4,16

A request is one image (PNG bytes, decoded by the server) and K expressions (--expressions).
Images are distinct (--images of them, more than the server's features cache holds), so every
request pays the image encoder, as a stream of new photos would. The in-process figure is the best
of: one thread with every core for ONNX Runtime, and one thread per core with one ONNX Runtime
thread each ("best batched": K expressions of an image always run as one batch). The server runs
from the serving environment (`make serve-env`), started and stopped here.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the", "red", "small", "circle", "square", "left", "of", "blue", "big", "triangle", "green", "right")


def serve_python() -> str | None:
    """The serving environment's interpreter ($RESTR_SERVE_PYTHON or .venv-serve/bin/python), if it has PyTriton."""
    for py in filter(None, (os.environ.get("RESTR_SERVE_PYTHON"), str(ROOT / ".venv-serve" / "bin" / "python"))):
        if (
            Path(py).exists()
            and subprocess.run([py, "-c", "import pytriton, restr.runtime.serve"], capture_output=True).returncode == 0
        ):
            return py
    return None


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ServerProcess:
    """`restr-serve ARGS` on free loopback ports, in its own session; `stop()` is safe to call twice."""

    def __init__(self, python: str, log: Path, *args: str):
        self.http, self.grpc, self.metrics = free_ports(3)
        self.log = Path(log)
        cmd = [
            python,
            "-m",
            "restr.runtime.serve",
            "--http-port",
            str(self.http),
            "--grpc-port",
            str(self.grpc),
            "--metrics-port",
            str(self.metrics),
            *args,
        ]
        self._log_file = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc}"

    def wait_ready(self, timeout_s: float = 120) -> bool:
        from restr.runtime.client import RestrClient

        client = RestrClient(self.url)
        deadline = time.monotonic() + timeout_s
        try:
            while not client.ready():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    return False
                time.sleep(0.3)
            return True
        finally:
            client.close()

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: tritonserver and stubs go too
                self.proc.wait(10)
        self._log_file.close()
        return self.proc.returncode


@dataclass
class LoadResult:
    latencies_s: list = field(default_factory=list)
    results: list = field(default_factory=list)  # (request index, start, end, predictions)
    errors: list = field(default_factory=list)  # (start, end, message)
    wall_s: float = 0.0

    def summary(self, expressions: int) -> dict:
        p50, p99 = (np.percentile(self.latencies_s, [50, 99]) * 1000).tolist() if self.latencies_s else (None, None)
        n = len(self.results)
        return {
            "requests": n,
            "errors": len(self.errors),
            "requests_per_s": n / self.wall_s,
            "expressions_per_s": n * expressions / self.wall_s,
            "p50_ms": p50,
            "p99_ms": p99,
        }


def run_load(url: str, requests: list, clients: int, stop: threading.Event | None = None, protocol_kwargs=None) -> LoadResult:
    """Send `requests` [(image, texts)] from `clients` threads, each with its own client, in order."""
    from restr.runtime.client import RestrClient, ServerError

    out = LoadResult()
    lock = threading.Lock()
    counter = iter(range(len(requests)))

    def worker():
        with RestrClient(url, **(protocol_kwargs or {})) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None or (stop is not None and stop.is_set()):
                    return
                image, texts = requests[i]
                t0 = time.perf_counter()
                try:
                    preds = client.predict(image, texts)
                except ServerError as e:
                    with lock:
                        out.errors.append((t0, time.perf_counter(), str(e)))
                    continue
                t1 = time.perf_counter()
                with lock:
                    out.latencies_s.append(t1 - t0)
                    out.results.append((i, t0, t1, preds))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    out.wall_s = time.perf_counter() - t0
    return out


def make_requests(n: int, images: int, expressions: int, size: tuple[int, int] = (480, 360), seed: int = 0) -> list:
    """n requests over `images` distinct smooth random PNG files (as bytes held in temp files)."""
    rng = np.random.default_rng(seed)
    pngs = []
    for _ in range(images):
        small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize(size, Image.BILINEAR).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    texts = [" ".join(rng.choice(WORDS, 4)) for _ in range(expressions)]
    return [(pngs[i % images], texts) for i in range(n)]


def in_process(artifacts: Path, requests: list, threads: int) -> dict:
    """Best in-process throughput: one worker with every core, or one worker per core with one thread each."""
    from restr.runtime.predictor import Predictor
    from restr.runtime.transforms import load_image

    best = None
    cores = os.cpu_count() or 1
    for workers, ort_threads in ((1, threads), (cores, 1)):
        predictor = Predictor.from_artifacts(artifacts, threads=ort_threads)
        predictor.predict_image(load_image(io.BytesIO(requests[0][0])), requests[0][1])  # warm-up
        counter, lock = iter(range(len(requests))), threading.Lock()

        def worker(predictor=predictor, counter=counter, lock=lock):  # this round's, bound now
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                predictor.predict_image(load_image(io.BytesIO(requests[i][0])), requests[i][1])

        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(worker) for _ in range(workers)]:
                f.result()
        rate = len(requests) / (time.perf_counter() - t0)
        if best is None or rate > best["requests_per_s"]:
            best = {"requests_per_s": rate, "workers": workers, "ort_threads": ort_threads}
    best["expressions_per_s"] = best["requests_per_s"] * len(requests[0][1])
    return best


def _to_files(requests: list, folder: Path) -> list:
    paths, out = {}, []
    for png, texts in requests:
        if png not in paths:
            paths[png] = folder / f"{len(paths)}.png"
            paths[png].write_bytes(png)
        out.append((paths[png], texts))
    return out


def benchmark(
    artifacts: Path,
    requests: int,
    images: int,
    expressions: int,
    clients: list[int],
    instances: int,
    work: Path,
    protocol: str = "http",
    serve_args: list[str] = (),
    baseline: bool = True,
) -> dict:
    python = serve_python()
    if python is None:
        raise click.ClickException(
            "no serving environment with nvidia-pytriton: run `make serve-env` (or set RESTR_SERVE_PYTHON)"
        )
    reqs = make_requests(requests, images, expressions)
    local = in_process(artifacts, reqs, threads=os.cpu_count() or 1) if baseline else None
    work.mkdir(parents=True, exist_ok=True)
    files = _to_files(reqs, work)
    # each instance keeps its own features cache: together they hold half the images
    server = ServerProcess(
        python,
        work / "server.log",
        "--artifacts",
        str(artifacts),
        "--instances",
        str(instances),
        "--cache-size",
        str(max(1, images // (2 * instances))),
        *serve_args,
    )
    rows = []
    try:
        if not server.wait_ready():
            raise click.ClickException(f"restr-serve did not start; log:\n{server.tail()}")
        url = server.url if protocol == "http" else server.grpc_url
        run_load(url, files[: 2 * max(clients)], max(clients))  # warm-up: sessions, connections
        for c in clients:
            r = run_load(url, files, c).summary(expressions)
            r.update(clients=c, vs_in_process=r["requests_per_s"] / local["requests_per_s"] if local else None)
            rows.append(r)
    finally:
        server.stop()
    from restr.benchmarks.environment import environment

    return {
        "artifacts": str(artifacts),
        "request": {"expressions": expressions, "images": images, "requests": requests, "image_size": "480x360 PNG"},
        "server": {"instances": instances, "protocol": protocol, "args": list(serve_args)},
        "in_process": local,
        "server_rows": rows,
        "environment": environment(os.cpu_count() or 1),
    }


def table(result: dict) -> str:
    lines = [
        "| clients | requests/s | expressions/s | p50 ms | p99 ms | x in-process | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["server_rows"]:
        ratio = "" if r["vs_in_process"] is None else f"{r['vs_in_process']:.2f}"
        lines.append(
            f"| {r['clients']} | {r['requests_per_s']:.1f} | {r['expressions_per_s']:.1f} | {r['p50_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {ratio} | {r['errors']} |"
        )
    p = result["in_process"]
    if p is None:
        return "\n".join(lines)
    lines.append(
        f"| in-process ({p['workers']} worker(s) x {p['ort_threads']} thread(s)) | {p['requests_per_s']:.1f} | "
        f"{p['expressions_per_s']:.1f} | | | 1.00 | |"
    )
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--artifacts", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--requests", type=click.IntRange(1), default=400, show_default=True, help="Requests per concurrency level.")
@click.option(
    "--images", type=click.IntRange(1), default=64, show_default=True, help="Distinct images (the server's instances cache half)."
)
@click.option("--expressions", type=click.IntRange(1), default=4, show_default=True, help="Expressions per request.")
@click.option("--clients", default="1,4,16", show_default=True, help="Concurrency levels, comma-separated.")
@click.option("--instances", type=click.IntRange(1), default=2, show_default=True, help="restr-serve --instances.")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True)
@click.option("--serve-args", default="", help="More restr-serve options, e.g. '--providers cuda --batch-images 16'.")
@click.option("--no-baseline", is_flag=True, help="Skip the in-process figure (it runs on the CPU).")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/serve-bench"), show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(artifacts, requests, images, expressions, clients, instances, protocol, serve_args, no_baseline, work, json_out):
    """Benchmark restr-serve (Triton) against the in-process runtime.

    \b
      python -m restr.benchmarks.serve_bench --artifacts runs/demo/export --json runs/serve-bench.json
    """
    result = benchmark(
        artifacts,
        requests,
        images,
        expressions,
        [int(c) for c in clients.split(",")],
        instances,
        work,
        protocol,
        shlex.split(serve_args),
        baseline=not no_baseline,
    )
    click.echo(table(result))
    if json_out:
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
