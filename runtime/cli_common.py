"""What every restr command shares: one-line errors with exit code 2, signals, output checks, progress.

Torch-free: the runtime's commands use it, and so do the torch side's (`restr/cli_common.py` adds
what only those need)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import click

from restr.runtime.formats import BACKENDS, PRECISIONS

EXIT_BAD_INPUT = 2  # bad input or a failure the user can act on: one line on stderr


class UsageError(ValueError):
    """A user mistake detected by a command itself: one line, exit code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread as Ctrl-C is: clean-up code runs alike."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_interrupt():
    """SIGTERM and SIGHUP raise `Terminated` (a KeyboardInterrupt) while inside: what a command
    staged is removed on its way out, as for Ctrl-C, instead of the process dying mid-write."""

    def raise_terminated(signum, frame):
        raise Terminated(signum)

    sigs = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    try:
        previous = {s: signal.signal(s, raise_terminated) for s in sigs}
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signals_deferred():
    """SIGINT, SIGTERM and SIGHUP wait while inside and arrive on the way out: a short commit (files
    moved into place, the staging folder removed) is never cut in half. Held by Python's handlers,
    not a thread's signal mask: the kernel may hand a process signal to any thread (ONNX Runtime's
    pool too), and Python runs its handlers in the main thread whichever thread caught it."""
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    held: list[int] = []
    try:
        previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in sigs}
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:  # delivered now, to the handler it was meant for
            handler = previous[held[0]]
            if callable(handler):
                handler(held[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), held[0])


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process a signal ended (SIGINT: 130)."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


class OneLineErrorCommand(click.Command):
    """A click command whose usage errors (a misspelt option, a missing value) are one line on stderr,
    `prog: error: ... (see --help)`, with exit code 2, instead of click's usage block."""

    def main(self, args=None, prog_name=None, **extra):
        extra.pop("standalone_mode", None)
        prog = self.name  # name the command after its console script: @click.command("restr-...", cls=...)
        try:
            rv = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.ClickException as e:
            message = (
                e.format_message()
                .rstrip(".")
                .replace("(Did you mean", "(did you mean")
                .replace(". Did you mean", "; did you mean")
            )
            click.echo(f"{prog}: error: {message} (see --help)", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except click.Abort:
            click.echo(f"{prog}: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_folder(folder: Path, what: str) -> None:
    """Create and remove a file in `folder`: the only test that also holds for root, /proc and read-only mounts."""
    if not folder.is_dir():
        raise UsageError(f"{what}: {folder} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".restr-probe-"):
            pass
    except OSError as e:
        # /proc, /sys and the like answer "No such file or directory" for a new file in a folder that exists
        why = "the file system there takes no new files" if e.errno == errno.ENOENT else (e.strerror or str(e))
        raise UsageError(f"{what}: cannot write in {folder} ({why})") from None


def check_writable_dir(path, option: str) -> None:
    """Refuse, before any work, an output folder that cannot be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: exists and is not a folder")
    _probe_folder(_nearest_existing(path), f"{option} {path}")


def check_writable_file(path, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written (its folder is created later)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, expected a file name")
    _probe_folder(_nearest_existing(path.parent), f"{option} {path}")


class Progress:
    """A progress bar on a terminal; plain lines at most every `interval` seconds otherwise.

    Written to a file (a log, a CI job), tqdm's carriage-return updates make one huge line; here each
    update is a line such as `train 1200/3600 (33%) 2.1 it/s, eta 19m loss=0.3512`.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        initial: int = 0,
        enabled: bool = True,
        interval: float | None = None,
        unit: str = "it",
        stream=None,
    ):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.n, self.unit, self.enabled = total, desc, initial, unit, enabled
        self.interval = float(os.environ.get("RESTR_PROGRESS_INTERVAL", 30)) if interval is None else interval
        self.postfix: dict = {}
        self._bar = None
        self._t0 = self._last = time.monotonic()
        self._n0 = initial
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(self.postfix)
        elif self.enabled:
            now = time.monotonic()
            if now - self._last >= self.interval or self.n >= self.total:
                self._last = now
                self._line(now)

    def _line(self, now: float) -> None:
        rate = (self.n - self._n0) / max(now - self._t0, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        extra = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        pct = 100 * self.n / max(1, self.total)
        print(
            f"{self.desc} {self.n}/{self.total} ({pct:.0f}%) {rate:.2f} {self.unit}/s, eta {_duration(eta)}"
            + (f" {extra}" if extra else ""),
            file=self.stream,
            flush=True,
        )

    def write(self, line: str) -> None:
        """A line of its own (a validation result), printed even when progress is off."""
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def runtime_options(scope: str = ""):
    """--backend, --precision and --providers, as every command that runs an export takes them
    (restr-predict, restr-eval, restr-bench, restr-serve); `scope` starts their help, e.g.
    "With --artifacts: "."""

    def helped(text: str) -> str:
        return scope + text if scope else text[0].upper() + text[1:]

    options = [
        click.option(
            "--backend",
            type=click.Choice(BACKENDS),
            default="ort",
            show_default=True,
            help=helped("ONNX Runtime graphs or native TensorRT engines (GPU)."),
        ),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default="fp32",
            show_default=True,
            help=helped(
                "the FP32 graphs, the mixed-precision FP16 ones or the calibrated INT8 ones (restr-export --precision"
                " int8); TensorRT engines are FP16."
            ),
        ),
        click.option(
            "--providers",
            default=None,
            help=helped("ONNX Runtime providers, comma-separated: tensorrt, cuda, cpu, or auto. [default: cpu]"),
        ),
    ]

    def add(command):
        for option in reversed(options):  # click lists options in the order they are written
            command = option(command)
        return command

    return add
