"""The TensorRT calls in our code exist in TensorRT's Python API, on the class they are made on.

TensorRT's libraries cannot be installed on machines without NVIDIA's index, so `import tensorrt`
fails here; its binding module alone (`pip install tensorrt-cu13-bindings`, 1.2 MB, no CUDA) does
install. Its compiled module's string table holds every class, method, property, enum value and
keyword-argument name it defines, but not which class each belongs to, so:

- `tests/data/tensorrt_api.json` lists, per class, the members restr may use and their parameter
  names (from NVIDIA's Python API reference); every name in it is checked against the string table
  (and the package's own Python helpers, such as `nptype`), so it cannot list what TensorRT lacks;
- the scanner infers the class of each TensorRT object in our source (from `trt.X(...)`, the
  return types below and the conventional names `engine` and `context`) and holds every attribute
  used on it, and every keyword passed to its methods, against that class's members: a
  `context.set_shape(...)` fails although `set_shape` exists on another class.

Scanned: runtime/trt_runner.py, export/tensorrt_build.py, benchmarks/*.py, and the GPU test code
(tests/test_gpu.py).
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = json.loads((ROOT / "tests" / "data" / "tensorrt_api.json").read_text(encoding="utf-8"))
API.pop("_about")
# file -> None (all of it) or the functions to scan (test files also hold fakes of TensorRT)
SOURCES = {
    "runtime/trt_runner.py": None,
    "export/tensorrt_build.py": None,
    **{f"benchmarks/{p.name}": None for p in sorted((ROOT / "benchmarks").glob("*.py"))},
    "tests/test_gpu.py": None,
}
# what a call returns, for the calls that make TensorRT objects
RETURNS = {
    ("tensorrt", "Logger"): "Logger",
    ("tensorrt", "Runtime"): "Runtime",
    ("tensorrt", "Builder"): "Builder",
    ("tensorrt", "OnnxParser"): "OnnxParser",
    ("Runtime", "deserialize_cuda_engine"): "ICudaEngine",
    ("ICudaEngine", "create_execution_context"): "IExecutionContext",
    ("Builder", "create_network"): "INetworkDefinition",
    ("INetworkDefinition", "get_layer"): "ILayer",
    ("Builder", "create_builder_config"): "IBuilderConfig",
    ("Builder", "create_optimization_profile"): "IOptimizationProfile",
    ("IBuilderConfig", "create_timing_cache"): "ITimingCache",
    ("IBuilderConfig", "get_timing_cache"): "ITimingCache",
}
BY_NAME = {"engine": "ICudaEngine", "context": "IExecutionContext"}  # names our code keeps for these objects
# Gone from TensorRT 10/11: code must not use them.
REMOVED = {
    "FP16",
    "EXPLICIT_BATCH",
    "OBEY_PRECISION_CONSTRAINTS",
    "int8_calibrator",
    "platform_has_fast_fp16",
    "execute_async_v2",
    "get_binding_index",
    "max_workspace_size",
    "build_engine",
}


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
            if isinstance(node, ast.FunctionDef):
                names.update(a.arg for a in node.args.args)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def in_string_table(data: bytes, name: str) -> bool:
    # The linker merges a string into the tail of a longer one ("Logger" lives in "ILogger\0"),
    # so a name is present when it ends some NUL-terminated string.
    return name.encode() + b"\0" in data


# ------------------------------------------------------------------------------------ the scanner


class Scanner:
    """Infers the TensorRT class of expressions in one module and records every use:
    (file:line, class, member, keyword or None)."""

    def __init__(self, tree: ast.Module, where: str, functions: set[str] | None = None):
        self.where = where
        self.uses: list[tuple[str, str, str, str | None]] = []
        self.attrs: dict[str, str] = {}  # "self.x" -> class, across the module
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        if functions is not None:
            funcs = [f for f in funcs if f.name in functions]
        for _ in range(2):  # self.x set in one method and used in another: two passes settle it
            for f in funcs:
                self._function(f, record=False)
        for f in funcs:
            self._function(f, record=True)

    def _function(self, fn, record: bool) -> None:
        env: dict[str, str] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "tensorrt":
                        env[a.asname or a.name] = "tensorrt"
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    self._bind(env, target, node.value)
        if record:
            for node in ast.walk(fn):
                if isinstance(node, ast.Attribute):
                    cls = self.type_of(node.value, env)
                    if cls in API:
                        self.uses.append((f"{self.where}:{node.lineno}", cls, node.attr, None))
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    cls = self.type_of(node.func.value, env)
                    if cls in API:
                        for kw in node.keywords:
                            if kw.arg:
                                self.uses.append((f"{self.where}:{node.lineno}", cls, node.func.attr, kw.arg))

    def _bind(self, env: dict, target, value) -> None:
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            for t, v in zip(target.elts, value.elts):
                self._bind(env, t, v)
            return
        cls = self.type_of(value, env)
        if cls is None:
            return
        if isinstance(target, ast.Name):
            env[target.id] = cls
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            self.attrs[target.attr] = cls

    def type_of(self, node, env: dict) -> str | None:
        if isinstance(node, ast.Name):
            return "tensorrt" if node.id == "trt" else env.get(node.id) or BY_NAME.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return self.attrs.get(node.attr) or BY_NAME.get(node.attr)
            base = self.type_of(node.value, env)
            if base == "tensorrt" and node.attr in API:  # trt.Logger, trt.TensorIOMode: the class itself
                return node.attr
            return BY_NAME.get(node.attr) if base is None else None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return RETURNS.get((self.type_of(node.func.value, env), node.func.attr))
        return None


def scan(path: Path, functions: set[str] | None = None) -> Scanner:
    return Scanner(
        ast.parse(path.read_text(encoding="utf-8")),
        str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name,
        functions,
    )


def problems(scanner: Scanner) -> list[str]:
    out = []
    for where, cls, member, kw in scanner.uses:
        if member not in API[cls]:
            out.append(f"{where}: {cls} has no member {member!r}")
        elif kw is not None and kw not in (API[cls][member] or ()):
            out.append(f"{where}: {cls}.{member} has no parameter {kw!r}")
    return out


def all_uses() -> list[Scanner]:
    return [scan(ROOT / f, fns) for f, fns in SOURCES.items() if (ROOT / f).is_file()]


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def lib() -> Path:
    found = binding_library()
    if found is None:
        pytest.skip(
            "TensorRT's Python binding module is not installed: pip install tensorrt-cu13-bindings "
            "(1.2 MB, no CUDA needed) to check the TensorRT names the code uses"
        )
    return found


def test_scanner_sees_the_api(lib):
    """The table check is not vacuous: known TensorRT 10+ names are found, removed ones are not."""
    table = lib.read_bytes()
    for name in ("STRONGLY_TYPED", "build_serialized_network", "execute_async_v3", "set_tensor_address", "create_timing_cache"):
        assert in_string_table(table, name), name
    for name in ("FP16", "EXPLICIT_BATCH", "execute_async_v2", "NoSuchTensorRTName"):
        assert not in_string_table(table, name), name


def test_api_table_names_exist_in_the_binding(lib):
    """Every class, member and parameter name of tests/data/tensorrt_api.json is TensorRT's."""
    table, helpers = lib.read_bytes(), python_helpers(lib)
    names = {c for c in API if c != "tensorrt"}
    for members in API.values():
        for member, params in members.items():
            names.add(member)
            names.update(params or ())
    missing = sorted(n for n in names if not (in_string_table(table, n) or n in helpers))
    assert not missing, f"not in TensorRT's Python API: {missing}"
    assert not (names & REMOVED)


def test_each_call_is_on_its_class():
    scanners = all_uses()
    seen = {(cls, member) for s in scanners for _, cls, member, _ in s.uses}
    # the inference reached every object the runtime and the build use (the scan is not vacuous)
    assert {
        ("IExecutionContext", "execute_async_v3"),
        ("IExecutionContext", "set_input_shape"),
        ("IExecutionContext", "set_tensor_address"),
        ("ICudaEngine", "create_execution_context"),
        ("ICudaEngine", "get_tensor_mode"),
        ("Runtime", "deserialize_cuda_engine"),
        ("Builder", "build_serialized_network"),
        ("OnnxParser", "parse_from_file"),
        ("IBuilderConfig", "set_timing_cache"),
        ("IBuilderConfig", "add_optimization_profile"),
        ("IOptimizationProfile", "set_shape"),
        ("ITimingCache", "serialize"),
        ("Logger", "WARNING"),
        ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED"),
        ("TensorIOMode", "INPUT"),
        # explicit quantization of the INT8 graphs: the parsed network's Quantize/Dequantize layers
        ("INetworkDefinition", "num_layers"),
        ("INetworkDefinition", "get_layer"),
        ("ILayer", "type"),
        ("LayerType", "QUANTIZE"),
        ("LayerType", "DEQUANTIZE"),
    } <= seen
    found = [p for s in scanners for p in problems(s)]
    assert not found, "TensorRT calls not on their class:\n" + "\n".join(found)


def test_a_member_of_another_class_is_caught(tmp_path):
    """`set_shape` exists (on IOptimizationProfile), but not on an execution context; nor does
    set_timing_cache take `ignore`: both are reported."""
    path = tmp_path / "bad.py"
    path.write_text(
        "def f(engine, cache):\n"
        "    import tensorrt as trt\n"
        "    context = engine.create_execution_context()\n"
        "    context.set_shape('x', (1, 2))\n"
        "    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()\n"
        "    config.set_timing_cache(cache, ignore=False)\n"
        "    trt.Logger.LOUD\n"
    )
    assert sorted(problems(scan(path))) == [
        "bad.py:4: IExecutionContext has no member 'set_shape'",
        "bad.py:6: IBuilderConfig.set_timing_cache has no parameter 'ignore'",
        "bad.py:7: Logger has no member 'LOUD'",
    ]


def test_no_removed_api():
    used = {(member, where) for s in all_uses() for where, _, member, _ in s.uses}
    removed = sorted((m, w) for m, w in used if m in REMOVED)
    assert not removed, f"TensorRT APIs removed in 10/11 are used: {removed}"
