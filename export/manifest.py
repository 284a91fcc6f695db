"""Writing `manifest.json` of an export folder (docs/artifacts.md, format_version 1). Torch-free.

It is read in one place only: `restr.runtime.artifacts.Artifacts.open`, which validates it.
"""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path

from restr.runtime import atomic
from restr.runtime.artifacts import FORMAT_VERSION, MANIFEST, check_consistency, sha256_file
from restr.runtime.schema import first_error, manifest_schema

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "sha256_file",
    "graph_entry",
    "versions",
    "write_json",
    "write_manifest",
    "check_checksums",
]

EXPORTER = "torch.onnx.export (TorchScript tracer, dynamo=False)"
FP16_CONVERTER = (
    "onnxruntime.transformers (OnnxModel.convert_float_to_float16: float16.convert_float_to_float16, then cascaded Cast removal)"
)


def graph_entry(folder: Path, file: str, inputs, outputs, precision: str, opset: int, **extra) -> dict:
    """The manifest entry of one ONNX graph in `folder` (sha256 computed from the file)."""
    from restr.export.onnx_export import spec_dict

    return {
        "file": file,
        "sha256": sha256_file(folder / file),
        "bytes": (folder / file).stat().st_size,
        "precision": precision,
        "opset": opset,
        "inputs": [spec_dict(t) for t in inputs],
        "outputs": [spec_dict(t) for t in outputs],
        **extra,
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Versions of what made the export (read from package metadata: nothing heavy is imported)."""
    from restr import __version__

    return {
        "restr": __version__,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),  # the `cpu` or the `gpu` extra
        "exporter": EXPORTER,
        "fp16_converter": FP16_CONVERTER,
    }


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def json_safe(obj):
    """A JSON-serialisable copy (unknown objects become strings)."""
    return json.loads(json.dumps(obj, default=str))


def write_json(path: Path, obj) -> None:
    """Write JSON through a temporary file and a rename: a reader never sees half a file."""
    atomic.write_json(path, obj)


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write `folder/manifest.json` after the checks every reader makes (manifest.schema.json, then
    check_consistency): an exporter bug stops here, not in a runtime. ValueError with one line."""
    problem = first_error(manifest_schema(), manifest) or check_consistency(manifest)
    if problem:
        raise ValueError(f"the manifest to be written is invalid: {problem} (a bug in restr-export: please report it)")
    write_json(Path(folder) / MANIFEST, manifest)


def check_checksums(folder: Path, manifest: dict) -> list[str]:
    """Files named by the manifest whose sha256 does not match (or that are missing); [] when all match."""
    folder = Path(folder)
    entries = [manifest["vocab"], *manifest.get("graphs", {}).values(), *(manifest.get("engines") or {}).values()]
    bad = []
    for e in entries:
        path = folder / e["file"]
        if not path.is_file():
            bad.append(f"{e['file']} (missing)")
        elif sha256_file(path) != e["sha256"]:
            bad.append(f"{e['file']} (sha256 mismatch)")
    return bad
