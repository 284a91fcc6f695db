"""restr.export: checkpoint -> ONNX graphs (FP32 and FP16, pre- and post-processing) -> TensorRT engines, with a manifest.

    from restr.export import load_source, export_artifacts, ExportOptions
    manifest = export_artifacts(load_source(ckpt="model.pt"), "runs/demo/export")

Importing this package is cheap; torch and onnx are imported by the functions that need them.
"""

from __future__ import annotations

_API = {
    "ExportError": "pipeline",
    "ExportOptions": "pipeline",
    "Source": "pipeline",
    "load_source": "pipeline",
    "export_artifacts": "pipeline",
    "add_engines": "pipeline",
    "Tolerances": "verify",
    "VerificationError": "verify",
    "EngineUnavailable": "tensorrt_build",
    "EngineBuildError": "tensorrt_build",
}

__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"restr.export.{_API[name]}"), name)
    raise AttributeError(f"module 'restr.export' has no attribute {name!r}")
