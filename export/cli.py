"""`restr-export`: a checkpoint -> an artifact folder the runtime and restr-bench read (docs/artifacts.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from restr.export.int8 import CALIBRATION_METHODS, DEFAULT_CALIBRATION_SIZE, DEFAULT_METHOD
from restr.export.onnx_export import GRAPHS, MIN_OPSET
from restr.runtime.cli_common import EXIT_BAD_INPUT, OneLineErrorCommand, UsageError, check_writable_dir, check_writable_file
from restr.runtime.formats import DEFAULT_PRECISIONS, PRECISIONS

PROG = "restr-export"

EXIT_FAILED = 1  # verification tolerance exceeded, a graph broke its contract, or TensorRT failed to build


def _fail(message: str, code: int) -> None:
    click.echo(f"{PROG}: error: {message}", err=True)
    sys.exit(code)


@click.command(PROG, cls=OneLineErrorCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--ckpt", type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint to export (from restr-train).")
@click.option(
    "--from",
    "ckpt_from",
    type=click.Choice(["restr", "authors"]),
    default="restr",
    show_default=True,
    help="What --ckpt holds: a restr checkpoint, or a state dict saved by the authors' train_restr.py (SouthFlame/restr), "
    "read into restr-b16-authors (or -shared-authors) with their --vocab.",
)
@click.option(
    "--vocab",
    "authors_vocab",
    type=click.Path(path_type=Path),
    metavar="PATH",
    help="With --from authors: their data/vocabulary_*.txt, or their data/ folder (the file that fits the checkpoint).",
)
@click.option(
    "--config",
    "config_name",
    metavar="NAME",
    help="Without --ckpt: export RANDOMLY INITIALISED weights of this config (restr-b16, restr-tiny, ...), for benchmarking before training.",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Artifact folder to write (must not exist unless --force)."
)
@click.option(
    "--build-engines",
    "engines_for",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Instead of exporting: build TensorRT engines into an existing export folder (on a GPU machine).",
)
@click.option("--image-size", type=int, help="Square input side (a multiple of the patch size); default: the checkpoint's.")
@click.option(
    "--max-batch",
    type=int,
    help="Largest batch of the TensorRT profiles (min 1, opt 1, max N); default 8. ONNX graphs take any batch.",
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(PRECISIONS),
    default=DEFAULT_PRECISIONS,
    show_default=True,
    help="Graph precisions to write (repeat the option); fp16 = FP16 through with FP32 inputs and outputs (GPUs, "
    "TensorRT); int8 = static INT8 QDQ graphs calibrated on --calibration (CPUs, TensorRT).",
)
@click.option(
    "--calibration",
    metavar="SPEC",
    help="INT8 calibration data: 'synthetic' (the demo's), or a refer-layout folder as PATH[:split] (default split: train). "
    "Default: the data set the checkpoint names, its training split.",
)
@click.option(
    "--calibration-size",
    type=int,
    default=DEFAULT_CALIBRATION_SIZE,
    show_default=True,
    help="INT8 calibration samples (images with one of their expressions).",
)
@click.option(
    "--calibration-method",
    type=click.Choice(CALIBRATION_METHODS),
    default=DEFAULT_METHOD,
    show_default=True,
    help="How INT8 activation ranges are chosen from the calibration data (recorded in the manifest).",
)
@click.option(
    "--engine/--no-engine",
    default=None,
    help="Build TensorRT engines from the FP16 graphs. Default: when TensorRT and a GPU are present. --engine fails (exit 2) where they are not.",
)
@click.option(
    "--engine-graph",
    "engine_graphs",
    multiple=True,
    type=click.Choice(GRAPHS),
    default=GRAPHS,
    show_default=True,
    help="Graphs to build engines for (repeat the option).",
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TensorRT timing cache file reused across builds; default: one per TensorRT version and GPU in ~/.cache/restr/tensorrt.",
)
@click.option("--workspace-gib", type=float, default=4.0, show_default=True, help="TensorRT builder workspace limit.")
@click.option("--opset", type=int, default=MIN_OPSET, show_default=True, help=f"ONNX opset (>= {MIN_OPSET}).")
@click.option(
    "--attention",
    type=click.Choice(["onnx", "ort"]),
    default="onnx",
    show_default=True,
    help="How attention is written: onnx = standard ONNX ops (TensorRT builds from them; any ONNX runtime); "
    "ort = ONNX Runtime's fused MultiHeadAttention (ONNX Runtime only, CPU or CUDA).",
)
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check every graph in ONNX Runtime against PyTorch.")
@click.option("--samples", type=int, default=3, show_default=True, help="Verification batch (batch 1 is checked too).")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of generated verification inputs and of random weights."
)
@click.option(
    "--atol", type=float, default=1e-3, show_default=True, help="Max |probability difference|, ONNX Runtime FP32 vs PyTorch."
)
@click.option(
    "--fp16-max-mean-diff", type=float, default=0.01, show_default=True, help="Max mean |probability difference|, FP16 vs FP32."
)
@click.option("--fp16-min-iou", type=float, default=0.98, show_default=True, help="Min mask IoU, FP16 vs FP32 (trained weights).")
@click.option(
    "--judge-masks/--no-judge-masks",
    default=None,
    help="Gate on mask IoU. Default: for a checkpoint that names its data set (trained weights), not for random weights.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the manifest (and the folder) here, for machines.",
)
@click.option(
    "--threads", type=int, default=0, show_default=True, help="CPU threads for PyTorch and ONNX Runtime (0: their defaults)."
)
@click.option(
    "--triton",
    "triton_repo",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Also write a Triton Inference Server model repository for the export (alone: from the existing export --out).",
)
@click.option(
    "--triton-for",
    type=click.Choice(["gpu", "cpu", "pytriton"]),
    default="gpu",
    show_default=True,
    help="Repository for a GPU server, a CPU one, or the CPU server bundled with PyTriton (restr-serve --repository).",
)
@click.option("--force", is_flag=True, help="Replace an existing export folder (and Triton repository).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def cli(
    ckpt,
    ckpt_from,
    authors_vocab,
    config_name,
    out,
    engines_for,
    image_size,
    max_batch,
    precisions,
    calibration,
    calibration_size,
    calibration_method,
    engine,
    engine_graphs,
    timing_cache,
    workspace_gib,
    opset,
    attention,
    verify,
    samples,
    seed,
    atol,
    fp16_max_mean_diff,
    fp16_min_iou,
    judge_masks,
    json_out,
    threads,
    triton_repo,
    triton_for,
    force,
    no_progress,
):
    """Export a ReSTR checkpoint to ONNX (end-to-end and split graphs, FP32 and FP16, pre- and post-processing), verify it
    against PyTorch, build TensorRT engines where TensorRT and a GPU are present, and describe it all
    in DIR/manifest.json.

    \b
      restr-export --ckpt runs/demo/model.pt --out runs/demo/export
      restr-export --ckpt Gref_400000.pth --from authors --vocab data/vocabulary_Gref.txt --out runs/authors
      restr-export --ckpt runs/demo/model.pt --out runs/demo/export --precision fp32 --precision int8   (INT8 too)
      restr-export --config restr-b16 --image-size 320 --out runs/b16-random   (random weights)
      restr-export --build-engines runs/demo/export                            (later, on a GPU machine)
      restr-export --out runs/demo/export --triton runs/demo/triton            (a Triton model repository)

    Exit codes: 0 done, 1 verification or engine build failed, 2 bad input (nothing written).
    """
    from restr.export.fp16 import FP16Error
    from restr.export.int8 import INT8Error
    from restr.export.onnx_export import ExportCheckError
    from restr.export.pipeline import (
        ExportError,
        ExportOptions,
        Tolerances,
        add_engines,
        check_out_dir,
        export_artifacts,
        load_source,
    )
    from restr.export.tensorrt_build import EngineBuildError, EngineUnavailable
    from restr.export.verify import VerificationError

    options = ExportOptions(
        max_batch=8 if max_batch is None else max_batch,
        precisions=tuple(dict.fromkeys(precisions)),
        engine=engine,
        engine_graphs=tuple(dict.fromkeys(engine_graphs)),
        timing_cache=timing_cache,
        workspace_gib=workspace_gib,
        opset=opset,
        attention=attention,
        verify=verify,
        samples=samples,
        seed=seed,
        masks_meaningful=judge_masks,
        force=force,
        progress=not no_progress,
        threads=threads,
        calibration=calibration,
        calibration_size=calibration_size,
        calibration_method=calibration_method,
        tolerances=Tolerances(fp32_max_abs_diff=atol, fp16_max_mean_abs_diff=fp16_max_mean_diff, fp16_min_mask_iou=fp16_min_iou),
    )
    try:
        if triton_repo is not None and engines_for is None and not (ckpt or config_name):
            if out is None:
                raise ExportError(
                    "--triton DIR needs an export: --out EXPORT (an existing one), or --ckpt / --config to export first"
                )
            _write_triton(out, triton_repo, triton_for, force, options.precisions)
            return
        if engines_for is not None:
            if ckpt or config_name or out:
                raise ExportError("--build-engines DIR works on an existing export: give no --ckpt, --config or --out")
            manifest = add_engines(engines_for, options, max_batch=max_batch)
            out = engines_for
        else:
            if out is None:
                raise ExportError("missing --out DIR (the artifact folder to write)")
            check_out_dir(out, force)  # before loading a (possibly large) checkpoint
            check_writable_dir(out.parent if force and out.exists() else out, "--out")
            if json_out is not None:
                check_writable_file(json_out, "--json")
            if ckpt_from == "authors" or authors_vocab is not None:
                source = _authors_source(ckpt, ckpt_from, authors_vocab, config_name, image_size)
            else:
                source = load_source(ckpt, config_name, image_size, seed)
            manifest = export_artifacts(source, out, options)
        if triton_repo is not None:
            _write_triton(out, triton_repo, triton_for, force, options.precisions)
    except (ExportError, EngineUnavailable, UsageError) as e:
        _fail(str(e), EXIT_BAD_INPUT)
    except (VerificationError, EngineBuildError, ExportCheckError, FP16Error, INT8Error) as e:
        _fail(str(e), EXIT_FAILED)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"out": str(out), "manifest": manifest}, indent=2) + "\n", encoding="utf-8")


def _authors_source(ckpt, ckpt_from, vocab, config_name, image_size):
    """--from authors: their state dict and vocabulary as the `-authors` variant (restr.authors)."""
    from restr.checkpoint import CheckpointError, load_checkpoint_from, resize_model
    from restr.export.pipeline import ExportError, Source, check_image_size

    if ckpt is None or config_name:
        raise ExportError(
            "--from authors reads --ckpt THEIR_MODEL.pth with --vocab (their data/vocabulary_*.txt or data/ folder), no --config"
        )
    try:
        ck = load_checkpoint_from(ckpt, ckpt_from, vocab)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    model = ck.model
    if image_size is not None and image_size != ck.config.image_size:
        check_image_size(image_size, ck.config.patch_size, ck.config.name)
        model = resize_model(model, image_size)
    return Source(model, ck.vocab, ck.meta, Path(ckpt), random_weights=False)


def _write_triton(export_dir: Path, repo: Path, target: str, force: bool, precisions: tuple[str, ...]) -> None:
    """The Triton repository of an export: the graphs of the one --precision given (fp32 otherwise)."""
    from restr.export.triton import TritonOptions, write_repository

    precision = precisions[0] if len(precisions) == 1 else "fp32"
    options = TritonOptions(
        precision=precision, device="gpu" if target == "gpu" else "cpu", python_graphs=target == "pytriton", force=force
    )
    models = write_repository(export_dir, repo, options)
    click.echo(f"wrote Triton model repository {repo}: " + ", ".join(f"{m} ({b})" for m, b in models.items()), err=True)


def main(argv=None) -> None:
    """Console entry point (`restr-export`)."""
    cli.main(args=argv, prog_name=PROG)


if __name__ == "__main__":
    main()
