"""The TensorRT names our code uses exist in TensorRT's Python API.

TensorRT's libraries cannot be installed on machines without NVIDIA's index, so `import tensorrt`
fails here; its binding module alone (`pip install tensorrt-cu13-bindings`, 1.2 MB, no CUDA) does
install, and the compiled module's string table holds the name of every class, enum value, method,
property and keyword argument it defines (the package's `__init__.py` adds a few Python helpers,
such as `nptype`, which are read from its AST). This test gathers the TensorRT names from our source (by
AST, not by hand) and checks each against that table: a cheap guard against writing to an API that
does not exist (or no longer exists: TensorRT 11 removed the FP16 builder flag, for one).

Names gathered, in every project module that imports tensorrt:
- attribute chains on the module alias `trt` (`trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED`);
- every attribute and keyword argument inside functions named `trt_*` (the thin TensorRT layer);
- attributes used on objects held as `engine`, `context` or `_runtime` (the runtime's engine code).
"""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("export", "runtime", "benchmarks")
TRT_RECEIVERS = {"engine", "context", "_runtime"}
# Python's own attribute names that can appear in the thin layer (dict.items, ...): not TensorRT's.
PYTHON_NAMES = set(dir(dict)) | set(dir(list)) | set(dir(str)) | set(dir(bytes)) | {"__version__"}
# Gone from TensorRT 10/11: code must not use them.
REMOVED = {"FP16", "EXPLICIT_BATCH", "OBEY_PRECISION_CONSTRAINTS", "int8_calibrator", "platform_has_fast_fp16",
           "execute_async_v2", "get_binding_index", "max_workspace_size", "build_engine"}


def binding_library() -> Path | None:
    """TensorRT's compiled Python module, found without importing it (the import needs libnvinfer)."""
    for package in ("tensorrt_bindings", "tensorrt"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            found = sorted(Path(folder).glob("tensorrt*.so"))
            if found:
                return found[0]
    return None


def python_helpers(lib: Path) -> set[str]:
    """Top-level functions and names defined in the binding package's own Python (`trt.nptype`, ...)."""
    names = set()
    for node in ast.parse((lib.parent / "__init__.py").read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _trt_modules() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in sorted((ROOT / d).glob("*.py"))]
    return [p for p in files if re.search(r"^\s*import tensorrt|\btrt\.", p.read_text(encoding="utf-8"), re.M)]


def _chain(node: ast.AST) -> list[str]:
    """`trt.A.B` -> ["trt", "A", "B"]; [] when the chain is not rooted at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else []


def used_names(path: Path) -> dict[str, int]:
    """{TensorRT name: line} used in `path` (see the module docstring for which ones)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _chain(node)
            if chain[:1] == ["trt"]:
                for n in chain[1:]:
                    names.setdefault(n, node.lineno)
            receiver = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", None)
            if receiver in TRT_RECEIVERS:
                names.setdefault(node.attr, node.lineno)
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name.startswith("trt_"):
            for node in ast.walk(fn):
                if isinstance(node, ast.Attribute):
                    names.setdefault(node.attr, node.lineno)
                elif isinstance(node, ast.keyword) and node.arg:
                    names.setdefault(node.arg, getattr(node.value, "lineno", fn.lineno))
    return {n: line for n, line in names.items() if n not in PYTHON_NAMES or n == "__version__"}


def in_string_table(data: bytes, name: str) -> bool:
    # The linker merges a string into the tail of a longer one ("Logger" lives in "ILogger\0"),
    # so a name is present when it ends some NUL-terminated string.
    return name.encode() + b"\0" in data


@pytest.fixture(scope="module")
def lib() -> Path:
    found = binding_library()
    if found is None:
        pytest.skip("TensorRT's Python binding module is not installed: pip install tensorrt-cu13-bindings "
                    "(1.2 MB, no CUDA needed) to check the TensorRT names the code uses")
    return found


@pytest.fixture(scope="module")
def table(lib) -> bytes:
    return lib.read_bytes()


def test_scanner_sees_the_api(table):
    """The table check is not vacuous: known TensorRT 10+ names are found, removed ones are not."""
    for name in ("STRONGLY_TYPED", "build_serialized_network", "execute_async_v3", "set_tensor_address", "create_timing_cache"):
        assert in_string_table(table, name), name
    for name in ("FP16", "EXPLICIT_BATCH", "execute_async_v2", "NoSuchTensorRTName"):
        assert not in_string_table(table, name), name


def test_our_tensorrt_names_exist(lib, table):
    helpers = python_helpers(lib)
    assert "__version__" in helpers
    modules = _trt_modules()
    assert ROOT / "export" / "tensorrt_build.py" in modules
    gathered = {p: used_names(p) for p in modules}
    export_names = set(gathered[ROOT / "export" / "tensorrt_build.py"])
    # the builder's essentials are among what was gathered (the AST walk found the thin layer)
    assert {"Builder", "STRONGLY_TYPED", "OnnxParser", "set_memory_pool_limit", "create_optimization_profile", "set_shape",
            "build_serialized_network", "create_timing_cache", "set_timing_cache", "ignore_mismatch"} <= export_names
    missing = [f"{p.relative_to(ROOT)}:{line}: {n}" for p, names in gathered.items() for n, line in sorted(names.items())
               if not (in_string_table(table, n) or n in helpers)]
    assert not missing, "names not in TensorRT's Python API: " + ", ".join(missing)


def test_no_removed_api():
    used = {n: (p, line) for p in _trt_modules() for n, line in used_names(p).items()}
    removed = sorted(set(used) & REMOVED)
    assert not removed, f"TensorRT APIs removed in 10/11 are used: {[(n, str(used[n][0].name), used[n][1]) for n in removed]}"
