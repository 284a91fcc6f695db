"""pyproject.toml's dependencies: the CPU and GPU ONNX Runtime builds are never installed together
(both own the `onnxruntime` module and overwrite each other), and the floors match what the code
imports."""

from __future__ import annotations

import os
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
ORT_BUILDS = {"onnxruntime", "onnxruntime-gpu"}


def resolve(extras: tuple[str, ...]) -> dict[str, Requirement]:
    """The requirements `pip install restr[extras]` asks for, with restr[...] self-references expanded."""
    project = PYPROJECT["project"]
    out, todo, seen = {}, list(extras), set()
    for spec in project["dependencies"]:
        out[Requirement(spec).name] = Requirement(spec)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for spec in project["optional-dependencies"][extra]:
            req = Requirement(spec)
            if req.name == project["name"]:
                todo.extend(req.extras)
            else:
                out[req.name] = req
    return out


def test_base_has_no_onnxruntime_and_each_install_has_one_build():
    assert not ORT_BUILDS & set(resolve(()))  # the lean base depends on neither build
    for extras, build in [
        (("cpu",), "onnxruntime"),
        (("gpu",), "onnxruntime-gpu"),
        (("dev",), "onnxruntime"),
        (("torch", "gpu", "test"), "onnxruntime-gpu"),
        (("torch", "cpu", "test"), "onnxruntime"),
    ]:
        assert ORT_BUILDS & set(resolve(extras)) == {build}, extras
    assert not ORT_BUILDS & set(resolve(("tensorrt",)))  # engines alone need no ONNX Runtime


def test_make_install_gets_what_the_tests_need():
    """`make install` installs `.[dev]`: torch's export tools, CPU ONNX Runtime, pytest, jsonschema."""
    assert {"torch", "onnx", "onnxruntime", "pytest", "jsonschema", "numpy", "Pillow"} <= set(resolve(("dev",)))


def test_cuda_python_floor_has_cuda_bindings():
    """`from cuda.bindings import runtime` (the runtime's CUDA calls) exists from cuda-python 12.6."""
    req = resolve(("gpu",))["cuda-python"]
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert floors and min(floors) >= Version("12.6"), str(req)


# -- what `make` prints: what a user needs, not the tools' chatter -----------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _terminal_env() -> dict:
    """The environment of make typed at a terminal: under `make test` the inherited MAKELEVEL
    makes any make print "Entering directory" lines a user never sees."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}


def _fake_apt(tmp_path: Path, rc: int) -> dict:
    """An apt-get on PATH that prints like apt (many lines) and exits `rc`."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    apt = bin_dir / "apt-get"
    apt.write_text(f'#!/bin/sh\nfor i in $(seq 60); do echo "Get:$i http://deb.example/ pkg $i"; done\nexit {rc}\n')
    apt.chmod(0o755)
    return {**_terminal_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_cpp_apt_prints_one_line_unless_apt_fails(tmp_path):
    import subprocess

    missing = "restr-no-such-package"
    ok = subprocess.run(
        ["make", "-s", "cpp-apt", f"CPP_APT={missing}"], cwd=ROOT, env=_fake_apt(tmp_path, 0), capture_output=True, text=True
    )
    assert (
        ok.returncode == 0
        and ok.stdout.strip() == f"installing Debian packages: {missing}"
        and "Get:" not in ok.stdout + ok.stderr
    )
    failed = subprocess.run(
        ["make", "-s", "cpp-apt", f"CPP_APT={missing}"],
        cwd=ROOT,
        env=_fake_apt(tmp_path / "f", 100),
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and "Get:60" in failed.stdout  # apt's own words, when they matter


def test_cpp_build_prints_no_make_directory_chatter():
    import shutil
    import subprocess

    import pytest

    if not (ROOT / "build" / "cpp" / "CMakeCache.txt").is_file() or shutil.which("cmake") is None:
        pytest.skip("the C++ host is not built here (make cpp-build)")
    done = subprocess.run(["make", "cpp-build"], cwd=ROOT, env=_terminal_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Entering directory" not in done.stdout and "Leaving directory" not in done.stdout
