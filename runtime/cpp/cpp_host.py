"""The C++ host's library (runtime/cpp, librestr_runtime.so) from Python through ctypes: the parity
tests (tests/test_cpp.py) and the overhead benchmark (benchmarks/cpp_overhead.py) call the very C
API a C or C++ program does. It lives beside the library it binds; in a source checkout (the
editable install) it imports as restr.runtime.cpp.cpp_host. The wheel ships neither."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np


class _Options(ctypes.Structure):
    _fields_ = [
        ("provider", ctypes.c_char_p),
        ("device_id", ctypes.c_int),
        ("threads", ctypes.c_int),
        ("precision", ctypes.c_char_p),
        ("threshold", ctypes.c_float),
    ]


class _Prediction(ctypes.Structure):
    _fields_ = [
        ("text", ctypes.c_char_p),
        ("mask", ctypes.POINTER(ctypes.c_uint8)),
        ("probs", ctypes.POINTER(ctypes.c_float)),
        ("height", ctypes.c_int64),
        ("width", ctypes.c_int64),
        ("area", ctypes.c_int64),
        ("score", ctypes.c_float),
        ("patch_score", ctypes.c_float),
        ("truncated", ctypes.c_int),
        ("no_known_words", ctypes.c_int),
        ("n_unknown", ctypes.c_size_t),
        ("unknown_words", ctypes.POINTER(ctypes.c_char_p)),
    ]


TIMINGS = (
    "preprocess",
    "vision",
    "language",
    "fusion_decoder",
    "postprocess",
    "embed_ort",
    "embed_total",
    "predict_ort",
    "predict_total",
)


class _Timings(ctypes.Structure):
    _fields_ = [(name, ctypes.c_double) for name in TIMINGS]


class CppHostError(RuntimeError):
    """A restr_status other than RESTR_OK, with the library's one-line message."""


def onnxruntime_library() -> Path:
    """The libonnxruntime.so.* of the onnxruntime (or onnxruntime-gpu) wheel this Python imports: the
    ONNX Runtime build the Python runtime runs."""
    import onnxruntime

    capi = Path(onnxruntime.__file__).parent / "capi"
    found = sorted(capi.glob("libonnxruntime.so.*"))
    if not found:
        raise FileNotFoundError(f"no libonnxruntime.so.* in {capi}: this onnxruntime wheel ships no C library")
    return found[0]


class CppHost:
    """A restr_predictor: `predict(rgb, texts)` -> (per expression dicts, restr_timings as a dict).

    `onnxruntime`: a libonnxruntime.so.* to run on, loaded before the library so that its
    libonnxruntime.so.1 resolves to it (by soname) whatever the library's RUNPATH holds: e.g.
    `onnxruntime_library()`, the Python runtime's own build. It must be the first libonnxruntime.so.1
    this process loads."""

    def __init__(
        self,
        library: str | Path,
        folder: str | Path,
        threads: int = 0,
        precision: str = "fp32",
        provider: str = "cpu",
        onnxruntime: str | Path | None = None,
    ):
        if onnxruntime is not None:
            ctypes.CDLL(str(onnxruntime), mode=ctypes.RTLD_GLOBAL)
        lib = self.lib = ctypes.CDLL(str(library))
        lib.restr_last_error.restype = ctypes.c_char_p
        lib.restr_result_count.restype = ctypes.c_size_t
        opts = _Options()
        lib.restr_options_init(ctypes.byref(opts))
        opts.threads = threads
        opts.precision = precision.encode()
        opts.provider = provider.encode()
        self.p = ctypes.c_void_p()
        self._ok(lib.restr_predictor_open(str(folder).encode(), ctypes.byref(opts), ctypes.byref(self.p)))

    def _ok(self, status: int) -> None:
        if status:
            raise CppHostError(f"status {status}: {self.lib.restr_last_error().decode()}")

    def predict(self, rgb: np.ndarray, texts: list[str]) -> tuple[list[dict], dict]:
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        h, w = rgb.shape[:2]
        emb, res = ctypes.c_void_p(), ctypes.c_void_p()
        self._ok(
            self.lib.restr_embed(
                self.p,
                rgb.ctypes.data_as(ctypes.c_void_p),
                ctypes.c_int64(h),
                ctypes.c_int64(w),
                ctypes.c_int64(3 * w),
                ctypes.byref(emb),
            )
        )
        arr = (ctypes.c_char_p * len(texts))(*[t.encode() for t in texts])
        try:
            self._ok(
                self.lib.restr_predict(self.p, emb, arr, ctypes.c_size_t(len(texts)), ctypes.c_float(-1), 1, ctypes.byref(res))
            )
            out = []
            for i in range(self.lib.restr_result_count(res)):
                x = _Prediction()
                self._ok(self.lib.restr_result_get(res, ctypes.c_size_t(i), ctypes.byref(x)))
                out.append(
                    {
                        "mask": np.ctypeslib.as_array(x.mask, (h, w)).astype(bool),
                        "probs": np.ctypeslib.as_array(x.probs, (h, w)).copy(),
                        "area": x.area,
                        "score": x.score,
                        "patch_score": x.patch_score,
                        "truncated": bool(x.truncated),
                        "no_known_words": bool(x.no_known_words),
                        "unknown_words": [x.unknown_words[j].decode() for j in range(x.n_unknown)],
                    }
                )
            t = _Timings()
            self._ok(self.lib.restr_result_timings(res, ctypes.byref(t)))
            return out, {name: getattr(t, name) for name in TIMINGS}
        finally:
            self.lib.restr_result_free(res)
            self.lib.restr_embedding_free(emb)

    def close(self) -> None:
        self.lib.restr_predictor_free(self.p)
        self.p = ctypes.c_void_p()
