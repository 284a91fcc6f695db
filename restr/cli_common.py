"""What the torch side's commands (restr-train, restr-eval, python -m restr.authors) add to the
runtime's `restr.runtime.cli_common`: their own user errors and the device choice."""

from __future__ import annotations

import contextlib
import sys

import click

from restr.runtime.cli_common import EXIT_BAD_INPUT, UsageError


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is meant for users (printed as one line, exit code 2)."""
    from restr.checkpoint import CheckpointError
    from restr.data.refer import DataError
    from restr.pretrained import PretrainedError
    from restr.runtime.transforms import ImageError

    return (UsageError, CheckpointError, DataError, ImageError, PretrainedError)


@contextlib.contextmanager
def one_line_errors(prog: str):
    """Turn user errors into `prog: error: message` on stderr and exit code 2."""
    try:
        yield
    except user_errors() as e:
        click.echo(f"{prog}: error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(130)


def pick_device(name: str):
    """'auto' -> cuda when available, else cpu."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)
