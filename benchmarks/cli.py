"""`restr-bench`: MACs/params against the paper (`--macs`) and latency/throughput (`--engine`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from restr.runtime.cli_common import OneLineErrorCommand, UsageError, check_writable_file, runtime_options


def _fail(msg: str) -> None:
    click.echo(f"restr-bench: error: {msg}", err=True)
    sys.exit(2)


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(dict.fromkeys(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        _fail(f"--batch-sizes {text!r}: expected positive integers separated by commas, e.g. 1,2,4")
    return sizes


def _photo_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
        if w >= 1 and h >= 1:
            return w, h
    except ValueError:
        pass
    _fail(f"--photo-size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480")


def _writable_file(path: str | None, option: str) -> None:
    """Checked before any timing: a run of minutes must not end in an unwritable file."""
    if path:
        try:
            check_writable_file(path, option)
        except UsageError as e:
            _fail(str(e))


@click.command(
    "restr-bench", cls=OneLineErrorCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.option(
    "--macs",
    is_flag=True,
    help="Count params and MACs of restr-b16 and its variants and compare with the paper's Tables 3b and 5.",
)
@click.option(
    "--engine",
    "engines",
    multiple=True,
    metavar="PATH",
    help="A .trt/.plan/.engine TensorRT engine, an .onnx graph, a .pt checkpoint (PyTorch) or an export folder to time; "
    "repeat to compare several in one process, interleaved (ratios are printed against the first). "
    "PATH#tag,tag sets options for that engine alone: fp32/fp16/int8, cpu/cuda, ort/tensorrt, eager/compile "
    "(e.g. --engine runs/b16#fp16,cuda --engine b16.pt#fp16,cuda,compile).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON to this file.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    metavar="FILE.png",
    help="Draw latency distributions, throughput against batch size and the multi-query cost (PNG).",
)
@click.option(
    "--runs", type=int, default=20, show_default=True, help="Timed rounds of the batch-1 latency (model alone and end to end)."
)
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed runs of each path before timing.")
@click.option(
    "--batch-sizes", "batch_sizes", default="1,2,4", show_default=True, help="Batch sizes of the throughput runs (model alone)."
)
@click.option("--throughput-runs", type=int, default=5, show_default=True, help="Timed rounds per batch size.")
@click.option(
    "--queries",
    type=int,
    default=0,
    show_default=True,
    metavar="K",
    help="Also time K expressions on one image through the split graphs (batched, and one at a time) against K end-to-end runs.",
)
@click.option("--query-runs", type=int, default=3, show_default=True, help="Timed rounds of the --queries comparison.")
@click.option(
    "--bulk",
    type=int,
    default=0,
    show_default=True,
    metavar="N",
    help="Also time N photo files (JPEG, --photo-size) through predict_many against a loop of predict_image, "
    "one expression each, in images per second (export folders with the split graphs).",
)
@click.option("--bulk-runs", type=int, default=3, show_default=True, help="Rounds of the --bulk comparison.")
@click.option("--bulk-workers", type=int, default=2, show_default=True, help="predict_many's worker threads in --bulk.")
@click.option(
    "--threads",
    type=int,
    default=None,
    help="ONNX Runtime intra-op and PyTorch threads. Default: every CPU this process may use.",
)
@runtime_options("Export folders: ")
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Input side for a .pt checkpoint (rebuilt at that size). ONNX graphs and engines are fixed at export; a different size is refused.",
)
@click.option(
    "--config",
    "config_name",
    default=None,
    metavar="NAME",
    help="Config of an .onnx graph or engine without a manifest beside it (for MACs), e.g. restr-b16.",
)
@click.option(
    "--photo",
    type=click.Path(dir_okay=False),
    default=None,
    help="An image file for the end-to-end runs (decoded every run). Default: a synthetic photo held in memory.",
)
@click.option("--photo-size", default="640x480", show_default=True, help="WIDTHxHEIGHT of the synthetic photo.")
@click.option(
    "--gemm-size", type=int, default=2048, show_default=True, help="n of the n x n x n FP32 matrix product timed as the peak."
)
@click.option(
    "--op-profile",
    type=int,
    default=0,
    show_default=True,
    metavar="N",
    help="Also run each ONNX engine N times under ONNX Runtime's profiler and print kernel time per op type.",
)
@click.option(
    "--import-runs", type=int, default=5, show_default=True, help="Fresh interpreters timing `import restr.runtime` (0: skip)."
)
@click.option(
    "--train",
    is_flag=True,
    help="Time restr-train's step on --device (--config, --image-size, --batch-size; default restr-b16 at 480, batch 8), each "
    "speed choice against the default, the data loader alone on JPEG photos, MFU and the recipe's projected time.",
)
@click.option("--batch-size", type=int, default=None, help="--train: the batch (default: the config's recipe, 8 for restr-b16).")
@click.option("--device", default="auto", show_default=True, help="--train: cpu, cuda or auto.")
@click.option("--steps", type=int, default=30, show_default=True, help="--train: timed steps per choice.")
@click.option(
    "--choices",
    "train_choices",
    default="all",
    show_default=True,
    help="--train: what is timed against the default, from precision,tf32,optimizer,attention,compile; all or none.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="--train: the data loader's worker processes (default: the trainer's for the device).",
)
@click.option(
    "--photos",
    type=click.Path(file_okay=False),
    default=None,
    help="--train: the folder of the loader's refer-layout JPEG data set (written if absent, kept; default: a temporary one).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def main(
    macs,
    engines,
    json_path,
    plot_path,
    runs,
    warmup,
    batch_sizes,
    throughput_runs,
    queries,
    query_runs,
    bulk,
    bulk_runs,
    bulk_workers,
    threads,
    precision,
    backend,
    providers,
    image_size,
    config_name,
    photo,
    photo_size,
    gemm_size,
    op_profile,
    import_runs,
    train,
    batch_size,
    device,
    steps,
    train_choices,
    workers,
    photos,
    no_progress,
) -> None:
    """Benchmark ReSTR.

    \b
    restr-bench --macs                                 paper comparison table
    restr-bench --macs --json macs.json                the same rows as JSON
    restr-bench --engine runs/b16_320 --queries 8      latency, throughput, peak share, multi-query
    restr-bench --engine runs/demo/export --bulk 200   many photos: predict_many against a loop
    restr-bench --engine a.onnx --engine model.pt      two engines, interleaved, with ratios
    restr-bench --train --config restr-b16 --image-size 480 --batch-size 8 --device cuda
                                                       the trainer's step, MFU, loader, recipe time

    For each engine: batch-1 latency of the model alone and end to end (pre-processing, model and
    post-processing through restr.runtime's Predictor), median / p90 / p99 / mean / std over --runs;
    cold start (load + first run); throughput at --batch-sizes; peak memory (RSS high-water mark);
    achieved GFLOP/s (2 x MACs / median model time) and its share of an FP32 matrix-product peak
    measured in the same run. --train: the trainer's step instead (benchmarks/train_bench.py).
    Exit codes: 0 done, 2 bad input (nothing written).
    """
    if train:
        if macs or engines:
            _fail("--train runs alone: no --macs or --engine with it")
        _writable_file(json_path, "--json")
        _run_train(
            config_name,
            image_size,
            batch_size,
            device,
            steps,
            warmup,
            train_choices,
            workers,
            photos,
            threads,
            gemm_size,
            json_path,
            no_progress,
        )
        return
    if not macs and not engines:
        _fail("nothing to do: give --macs and/or --engine PATH, or --train (see --help)")
    if plot_path and not engines:
        _fail("--plot draws --engine results: give --engine PATH")
    _writable_file(json_path, "--json")
    macs_rows = None
    if engines:
        for name, value, least in (("--bulk", bulk, 0), ("--bulk-runs", bulk_runs, 1), ("--bulk-workers", bulk_workers, 0)):
            if value < least:
                _fail(f"{name} must be at least {least}, got {value}")
        settings, load_options = _engine_settings(
            engines,
            json_path,
            plot_path,
            runs,
            warmup,
            batch_sizes,
            throughput_runs,
            queries,
            query_runs,
            threads,
            precision,
            backend,
            providers,
            image_size,
            config_name,
            photo,
            photo_size,
            gemm_size,
            op_profile,
            import_runs,
            no_progress,
        )
        settings.bulk, settings.bulk_runs, settings.bulk_workers = bulk, bulk_runs, bulk_workers
    if macs:
        from restr.benchmarks.macs import format_comparison, paper_comparison, rows_as_json
        from restr.runtime.atomic import write_json

        rows = paper_comparison(progress=lambda r: click.echo(f"  counted {r.name} at {r.image_size}x{r.image_size}", err=True))
        click.echo(format_comparison(rows))
        if json_path and not engines:
            write_json(json_path, rows_as_json(rows))
        macs_rows = rows_as_json(rows)
    if engines:
        if macs:
            click.echo("")
        _run_engines(engines, settings, load_options, import_runs, json_path, plot_path, macs_rows)


def _engine_settings(
    engines,
    json_path,
    plot_path,
    runs,
    warmup,
    batch_sizes,
    throughput_runs,
    queries,
    query_runs,
    threads,
    precision,
    backend,
    providers,
    image_size,
    config_name,
    photo,
    photo_size,
    gemm_size,
    op_profile,
    import_runs,
    no_progress,
):
    """Check every option and PATH before any work: bad input is one line and exit 2."""
    from restr.benchmarks.environment import available_cpus
    from restr.benchmarks.latency import Settings
    from restr.benchmarks.loaders import LoadError, LoadOptions, engine_kind

    for name, value, least in (
        ("--runs", runs, 1),
        ("--warmup", warmup, 0),
        ("--throughput-runs", throughput_runs, 1),
        ("--query-runs", query_runs, 1),
        ("--gemm-size", gemm_size, 16),
        ("--import-runs", import_runs, 0),
        ("--op-profile", op_profile, 0),
    ):
        if value < least:
            _fail(f"{name} must be at least {least}, got {value}")
    if threads is not None and threads < 1:
        _fail(f"--threads must be at least 1, got {threads}")
    if queries and queries < 2:
        _fail(f"--queries K needs K >= 2 (the cost of each expression after the first), got {queries}")
    if queries < 0:
        _fail(f"--queries must be 0 (off) or at least 2, got {queries}")
    if image_size is not None and image_size < 1:
        _fail(f"--image-size must be positive, got {image_size}")
    if photo is not None and not Path(photo).is_file():
        _fail(f"--photo {photo}: no such file")
    if config_name is not None:
        from restr.config import CONFIGS

        if config_name not in CONFIGS:
            _fail(f"--config {config_name!r}: unknown config; known: {', '.join(CONFIGS)}")
    _writable_file(json_path, "--json")
    _writable_file(plot_path, "--plot")
    sizes, photo_wh = _batch_sizes(batch_sizes), _photo_size(photo_size)
    for path in engines:
        try:
            engine_kind(path)
        except LoadError as e:
            _fail(str(e))
    settings = Settings(
        runs=runs,
        warmup=warmup,
        batch_sizes=sizes,
        throughput_runs=throughput_runs,
        queries=queries,
        query_runs=query_runs,
        threads=threads or available_cpus(),
        gemm_size=gemm_size,
        photo=photo,
        photo_size=photo_wh,
        op_profile=op_profile,
        progress=not no_progress,
    )
    load_options = LoadOptions(
        threads=settings.threads,
        precision=precision,
        backend=backend,
        providers=providers,
        image_size=image_size,
        config=config_name,
    )
    return settings, load_options


def _run_train(
    config_name,
    image_size,
    batch_size,
    device,
    steps,
    warmup,
    choices,
    workers,
    photos,
    threads,
    gemm_size,
    json_path,
    no_progress,
) -> None:
    from restr.benchmarks.environment import available_cpus
    from restr.benchmarks.train_bench import TrainBenchOptions, format_train_report, parse_choices, run_train_bench
    from restr.config import CONFIGS
    from restr.runtime.atomic import write_json

    config_name = config_name or "restr-b16"
    if config_name not in CONFIGS:
        _fail(f"--config {config_name!r}: unknown config; known: {', '.join(CONFIGS)}")
    for name, value, least in (
        ("--steps", steps, 1),
        ("--warmup", warmup, 1),
        ("--batch-size", batch_size, 1),
        ("--workers", workers, 0),
        ("--image-size", image_size, 1),
        ("--threads", threads, 1),
        ("--gemm-size", gemm_size, 16),
    ):
        if value is not None and value < least:
            _fail(f"{name} must be at least {least}, got {value}")
    from restr.cli_common import pick_device
    from restr.data import DataError

    try:
        names = parse_choices(choices)
        pick_device(device)
    except (ValueError, UsageError) as e:
        _fail(str(e))
    options = TrainBenchOptions(
        config=config_name,
        image_size=image_size,
        batch_size=batch_size,
        device=device,
        steps=steps,
        warmup=warmup,
        choices=names,
        workers=workers,
        photos=photos,
        threads=threads or available_cpus(),
        gemm_size=gemm_size,
    )
    try:
        doc = run_train_bench(options, log=(lambda m: None) if no_progress else (lambda m: click.echo(m, err=True)))
    except (UsageError, DataError) as e:
        _fail(str(e))
    click.echo(format_train_report(doc))
    if json_path:
        write_json(json_path, doc)
        click.echo(f"results written to {json_path}", err=True)


def _run_engines(engines, settings, load_options, import_runs, json_path, plot_path, macs_rows) -> None:
    from restr.benchmarks.environment import import_time
    from restr.benchmarks.latency import Bench, format_report
    from restr.benchmarks.loaders import LoadError
    from restr.runtime import ArtifactError, ImageError, TextError
    from restr.runtime.atomic import write_json

    imports = {}
    if import_runs:
        # Fresh interpreters, before anything is loaded here: the runtime alone, and with ONNX Runtime
        # (which the runtime imports when the first graph is loaded).
        imports = {
            "restr.runtime": import_time("restr.runtime", import_runs),
            "restr.runtime+onnxruntime": import_time("restr.runtime, onnxruntime", import_runs),
        }
    bench = Bench(engines, settings, load_options, imports)
    try:
        doc = bench.run()
    except (LoadError, ArtifactError, ImageError, TextError) as e:
        _fail(str(e))
    except RuntimeError as e:  # TensorRT / CUDA failures surface as RuntimeError (TensorRTUnavailable too)
        _fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    if macs_rows is not None:
        doc["macs"] = macs_rows
    click.echo(format_report(doc))
    if plot_path:
        from restr.benchmarks.plot import plot_results

        plot_results(doc, plot_path, bench.samples())
        click.echo(f"plot written to {plot_path}", err=True)
    if json_path:
        write_json(json_path, doc)
        click.echo(f"results written to {json_path}", err=True)


if __name__ == "__main__":
    main()
