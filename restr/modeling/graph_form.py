"""Which form attention and padding take while a graph is traced: a flag of its own, so that
`attention.py` and `ops.py` both read it without importing each other (as timm's `layers/config.py`)."""

from __future__ import annotations

import contextlib

FORMS = ("torch", "onnx", "ort")  # "torch" is eager; see attention.py for the exported forms
_form = "torch"


@contextlib.contextmanager
def graph_form(form: str):
    """Within the block, attention is traced in `form` ("onnx" or "ort"; "torch" is eager)."""
    global _form
    if form not in FORMS:
        raise ValueError(f"attention form must be one of {FORMS}, got {form!r}")
    previous, _form = _form, form
    try:
        yield
    finally:
        _form = previous


def current_form() -> str:
    return _form
