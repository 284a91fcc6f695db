"""restr-serve measured with Triton's own load generator, perf_analyzer, beside the in-process runtime.

    python -m restr.benchmarks.perf_bench --artifacts runs/demo/export \\
        --perf-analyzer "../shared/tools/perf_analyzer.sh build/perf-analyzer" --concurrency 1,4,8,16

Starts restr-serve (from the serving environment) on free loopback ports, writes perf_analyzer's
input data (distinct 480x360 PNG files and K expressions, as benchmarks/serve_bench.py sends them),
runs perf_analyzer once per concurrency and reads its CSV: throughput, p50/p99 latency and the
server's own split of a request (queue, compute input / infer / output), from Triton's statistics.
perf_analyzer asks for every output, the probability maps too, so the in-process figure
(`serve_bench.in_process`) computes them too.

Only the input data for the `restr` model, for your own perf_analyzer command:

    python -m restr.benchmarks.perf_bench --write-data restr.json --image photo.jpg --text "the red circle"
    perf_analyzer -m restr -u 127.0.0.1:8001 -i grpc --input-data restr.json --concurrency-range 1:16:3

`image` is a BYTES tensor, which perf_analyzer's JSON takes as base64 of the serialised tensor: each
element a 4-byte little-endian length, then its bytes (`bytes_tensor_b64`).
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import click

from restr.benchmarks.serve_bench import ServerProcess, in_process, make_requests, serve_python

# perf_analyzer's verbose CSV columns (microseconds) -> our names (milliseconds)
COLUMNS = {
    "Server Queue": "queue_ms",
    "Server Compute Input": "compute_input_ms",
    "Server Compute Infer": "compute_infer_ms",
    "Server Compute Output": "compute_output_ms",
    "p50 latency": "p50_ms",
    "p99 latency": "p99_ms",
    "Avg latency": "mean_ms",
}


def bytes_tensor_b64(items: list[bytes]) -> str:
    """A BYTES tensor as perf_analyzer's JSON input data takes it ({"b64": ...})."""
    return base64.b64encode(b"".join(struct.pack("<I", len(x)) + x for x in items)).decode("ascii")


def input_data(requests: list[tuple[bytes, list[str]]]) -> dict:
    """[(encoded image, texts)] -> perf_analyzer's --input-data JSON: one step per request, used in turn.
    Shapes are without the batch axis (perf_analyzer adds it, -b 1)."""
    return {
        "data": [
            {"image": {"b64": bytes_tensor_b64([image]), "shape": [1]}, "texts": {"content": list(texts), "shape": [len(texts)]}}
            for image, texts in requests
        ]
    }


def write_input_data(path: Path, requests: list[tuple[bytes, list[str]]]) -> None:
    Path(path).write_text(json.dumps(input_data(requests)), encoding="utf-8")


def run_perf_analyzer(
    command: list[str],
    url: str,
    protocol: str,
    data: Path,
    concurrency: int,
    csv_path: Path,
    window_ms: int,
    stability: int,
    extra: list[str] = (),
) -> dict:
    """One perf_analyzer run at one concurrency: its CSV row, in ms; raises ClickException if it failed."""
    args = [
        *command,
        "-m",
        "restr",
        "-u",
        url,
        "-i",
        protocol,
        "--input-data",
        str(data),
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "-p",
        str(window_ms),
        "-s",
        str(stability),
        "-r",
        "10",
        "-f",
        str(csv_path),
        "--verbose-csv",
        *extra,
    ]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0 or not csv_path.is_file():
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-8:])
        raise click.ClickException(f"perf_analyzer failed (exit {r.returncode}) at concurrency {concurrency}:\n{tail}")
    with open(csv_path, newline="") as f:
        row = next(csv.DictReader(f))
    out = {"concurrency": concurrency, "requests_per_s": float(row["Inferences/Second"])}
    out.update({name: float(row[col]) / 1000 for col, name in COLUMNS.items()})
    out["server_ms"] = out["queue_ms"] + out["compute_input_ms"] + out["compute_infer_ms"] + out["compute_output_ms"]
    return out


def model_stats(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"{url}/v2/models/restr/stats", timeout=10) as r:
        return json.loads(r.read())["model_stats"][0]


def benchmark(
    artifacts: Path,
    command: list[str],
    concurrency: list[int],
    images: int,
    expressions: int,
    protocol: str,
    serve_args: list[str],
    work: Path,
    window_ms: int = 8000,
    stability: int = 30,
    baseline: bool = True,
) -> dict:
    python = serve_python()
    if python is None:
        raise click.ClickException(
            "no serving environment with nvidia-pytriton: run `make serve-env` (or set RESTR_SERVE_PYTHON)"
        )
    work.mkdir(parents=True, exist_ok=True)
    requests = make_requests(images, images, expressions)
    data = work / "input-data.json"
    write_input_data(data, requests)
    server = ServerProcess(python, work / "server.log", "--artifacts", str(artifacts), *serve_args)
    rows = []
    try:
        if not server.wait_ready():
            raise click.ClickException(f"restr-serve did not start; log:\n{server.tail()}")
        url = f"127.0.0.1:{server.grpc if protocol == 'grpc' else server.http}"
        run_perf_analyzer(command, url, protocol, data, max(concurrency), work / "warmup.csv", 2000, 100)  # sessions, caches
        for c in concurrency:
            before = model_stats(server.url)
            row = run_perf_analyzer(command, url, protocol, data, c, work / f"c{c}.csv", window_ms, stability)
            after = model_stats(server.url)
            runs = int(after["execution_count"]) - int(before["execution_count"])
            row["requests_per_run"] = (int(after["inference_count"]) - int(before["inference_count"])) / max(1, runs)
            rows.append(row)
            click.echo(f"concurrency {c}: {row['requests_per_s']:.1f} requests/s, p50 {row['p50_ms']:.0f} ms", err=True)
    finally:
        server.stop()
    local = in_process(artifacts, requests * max(1, 128 // images), threads=os.cpu_count() or 1) if baseline else None
    from restr.benchmarks.environment import environment

    return {
        "artifacts": str(artifacts),
        "request": {
            "images": images,
            "expressions": expressions,
            "image_size": "480x360 PNG",
            "outputs": "all (perf_analyzer's default), probs included",
        },
        "server": {"args": serve_args, "protocol": protocol},
        "perf_analyzer": {"window_ms": window_ms, "stability_percent": stability},
        "rows": rows,
        "in_process": local,
        "environment": environment(os.cpu_count() or 1),
    }


def table(result: dict) -> str:
    local = result["in_process"]
    lines = [
        "| concurrency | requests/s | x in-process | p50 ms | p99 ms | server queue ms | compute input / infer / output ms | requests per model run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ratio = f"{r['requests_per_s'] / local['requests_per_s']:.2f}" if local else ""
        lines.append(
            f"| {r['concurrency']} | {r['requests_per_s']:.1f} | {ratio} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['queue_ms']:.0f} | "
            f"{r['compute_input_ms']:.1f} / {r['compute_infer_ms']:.0f} / {r['compute_output_ms']:.1f} | {r['requests_per_run']:.2f} |"
        )
    if local:
        lines.append(
            f"| in-process ({local['workers']} worker(s) x {local['ort_threads']} thread(s)) | {local['requests_per_s']:.1f} | 1.00 | | | | | |"
        )
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--perf-analyzer",
    "perf_analyzer",
    default="perf_analyzer",
    show_default=True,
    help="The perf_analyzer command (e.g. '../shared/tools/perf_analyzer.sh build/perf-analyzer').",
)
@click.option("--concurrency", default="1,4,8,16", show_default=True, help="Concurrency levels, comma-separated.")
@click.option("--images", type=click.IntRange(1), default=64, show_default=True, help="Distinct images (input data steps).")
@click.option("--expressions", type=click.IntRange(1), default=4, show_default=True, help="Expressions per request.")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True)
@click.option("--serve-args", default="--instances 2 --cache-size 16", show_default=True, help="More restr-serve options.")
@click.option(
    "--window-ms", type=click.IntRange(500), default=8000, show_default=True, help="perf_analyzer's measurement window."
)
@click.option(
    "--stability",
    type=click.IntRange(1),
    default=30,
    show_default=True,
    help="perf_analyzer's allowed variation between windows, percent (a shared machine needs slack).",
)
@click.option("--no-baseline", is_flag=True, help="Skip the in-process figure.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/perf-bench"), show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--write-data",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Only write perf_analyzer's input data for --image and --text to this file.",
)
@click.option("--image", "image_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--text", "texts", multiple=True)
def main(
    artifacts,
    perf_analyzer,
    concurrency,
    images,
    expressions,
    protocol,
    serve_args,
    window_ms,
    stability,
    no_baseline,
    work,
    json_out,
    write_data,
    image_files,
    texts,
):
    """Measure restr-serve with perf_analyzer (or write its input data for the restr model)."""
    if write_data is not None:
        if not image_files or not texts:
            raise click.UsageError("--write-data needs --image FILE (one or more) and --text EXPRESSION (one or more)")
        write_input_data(write_data, [(p.read_bytes(), list(texts)) for p in image_files])
        click.echo(f"wrote {write_data}: {len(image_files)} request(s) of {len(texts)} expression(s)", err=True)
        return
    if artifacts is None:
        raise click.UsageError("give --artifacts EXPORT (or --write-data FILE)")
    result = benchmark(
        artifacts,
        shlex.split(perf_analyzer),
        [int(c) for c in concurrency.split(",")],
        images,
        expressions,
        protocol,
        shlex.split(serve_args),
        work,
        window_ms,
        stability,
        baseline=not no_baseline,
    )
    click.echo(table(result))
    if json_out:
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
