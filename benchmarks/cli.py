"""`restr-bench`: MACs/params against the paper (`--macs`) and latency/throughput (`--engine`)."""
from __future__ import annotations

import sys

import click


def _fail(msg: str) -> None:
    click.echo(f"restr-bench: error: {msg}", err=True)
    sys.exit(2)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--macs", is_flag=True, help="Count params and MACs of restr-b16 and its variants and compare with the paper's Tables 3b and 5.")
@click.option("--engine", "engines", multiple=True, metavar="PATH",
              help="A .trt/.plan engine, an .onnx graph, a .pt checkpoint or an export folder to time; repeat to compare in one run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON to this file.")
def main(macs: bool, engines: tuple[str, ...], json_path: str | None) -> None:
    """Benchmark ReSTR.

    \b
    restr-bench --macs                      paper comparison table
    restr-bench --macs --json macs.json     the same rows as JSON
    """
    if not macs and not engines:
        _fail("nothing to do: give --macs and/or --engine PATH (see --help)")
    if macs:
        from restr.benchmarks.macs import format_comparison, paper_comparison, rows_as_json
        from restr.benchmarks.report import write_json

        rows = paper_comparison(progress=lambda r: click.echo(f"  counted {r.name} at {r.image_size}x{r.image_size}", err=True))
        click.echo(format_comparison(rows))
        if json_path and not engines:
            write_json(json_path, rows_as_json(rows))
    if engines:
        _fail("--engine is not implemented yet")


if __name__ == "__main__":
    main()
