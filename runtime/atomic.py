"""Atomic file writes: a reader sees the old file or the whole new one, never half (temp + rename);
and the predict CLIs' staging folders, with the stale ones a killed run leaves."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside `path`, created with mode 0666 so that the kernel applies
    the umask (mkstemp's private 0600 would need a chmod, and reading the umask means setting it:
    process-wide and racy with other threads creating files)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name}")


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None):
    """Open a temporary file beside `path`; on success fsync it and rename it onto `path`.

    The file gets the usual permissions (0666 less the umask), set without touching the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path, obj) -> None:
    """`obj` as indented JSON, written atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# Staging folders of the predict CLIs inside --out: `.restr-predict-<pid>-<random>` (Python) and
# `.restr-predict-cpp-<pid>-<random>` (C++). One whose process is gone (killed, aborted) is stale:
# any later run removes it, and it does not count as a file of the folder.
STAGING = re.compile(r"^\.restr-predict(-cpp)?-([0-9]+)-[A-Za-z0-9_]+$")


def staging_dir(out: Path, prog: str) -> Path:
    """A new staging folder for `prog`'s outputs inside `out`, named after this process."""
    return Path(tempfile.mkdtemp(prefix=f".{prog}-{os.getpid()}-", dir=out))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process
        return True
    except (ProcessLookupError, OverflowError):  # gone, or not a pid at all
        return False
    return True


def stale_staging(out: Path) -> list[Path]:
    """The staging folders in `out` whose process is gone."""
    found = []
    with contextlib.suppress(OSError):
        for entry in out.iterdir():
            m = STAGING.match(entry.name)
            if m and entry.is_dir() and not entry.is_symlink() and int(m.group(2)) != os.getpid() and not _alive(int(m.group(2))):
                found.append(entry)
    return found


def remove_stale_staging(out: Path) -> None:
    for folder in stale_staging(out):
        shutil.rmtree(folder, ignore_errors=True)
