"""runtime/atomic.py: whole files or nothing, the umask's permissions, and the umask left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from restr.runtime.atomic import atomic_write, write_json


def test_does_not_touch_the_process_umask(tmp_path, monkeypatch):
    """Setting the umask is process-wide: another thread creating a file meanwhile gets mode 0666."""

    def refuse(mask):
        raise AssertionError(f"os.umask({mask:#o}) called")

    monkeypatch.setattr(os, "umask", refuse)
    write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_file_gets_0666_less_the_umask(tmp_path, umask):
    code = (
        f"import os; os.umask({umask}); from restr.runtime.atomic import atomic_write\n"
        f"with atomic_write({str(tmp_path / 'f.bin')!r}) as f: f.write(b'data')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failure_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w", encoding="utf-8") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]
