"""A client of a restr Triton server (`restr-serve`, or a GPU server running the repository that
`restr-export --triton` writes): the same `Prediction`s as the in-process `Predictor`.

    from restr.runtime.client import RestrClient
    with RestrClient("http://127.0.0.1:8000") as client:      # or "grpc://127.0.0.1:8001"
        preds = client.predict("photo.jpg", ["the red circle", "the small square"])

Needs `pip install "restr[client]"` (tritonclient). Server-side failures (bad image, empty text)
raise `ServerError` with Triton's one-line message; the server keeps serving.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from restr.runtime.predictor import Prediction
from restr.runtime.protocol import INPUTS, MODEL, OUTPUTS

# What predict() asks for by default: everything but the probability maps.
DEFAULT_OUTPUTS = tuple(n for n in OUTPUTS if n != "probs")


class ServerError(ValueError):
    """The server answered with an error, or could not be reached: one line, meant for users
    (a ValueError like the runtime's other user-facing errors, so callers catch them alike)."""


def parse_url(url: str) -> tuple[str, str]:
    """'http://h:p', 'grpc://h:p' or 'h:p' (HTTP) -> (protocol, 'h:p')."""
    if "://" not in url:
        url = "http://" + url
    u = urlparse(url)
    if u.scheme not in ("http", "grpc") or not u.hostname or u.path not in ("", "/"):
        raise ValueError(f"server URL {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
    default = 8001 if u.scheme == "grpc" else 8000
    return u.scheme, f"{u.hostname}:{u.port or default}"


class RestrClient:
    """One connection to a restr Triton server; give each thread its own (tritonclient's HTTP client is not thread-safe)."""

    def __init__(self, url: str, model: str = MODEL, timeout_s: float = 60.0):
        self.protocol, self.address = parse_url(url)
        self.url = f"{self.protocol}://{self.address}"
        self.model = model
        self.timeout_s = timeout_s
        self.last_threshold: float | None = None  # the threshold the server used for the last predict()
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as tc
            else:
                import tritonclient.http as tc
            from tritonclient.utils import InferenceServerException, np_to_triton_dtype
        except ImportError as e:
            raise ServerError(f"tritonclient is not installed ({e}); pip install 'restr[client]'") from None
        self._tc, self._error, self._dtype = tc, InferenceServerException, np_to_triton_dtype
        if self.protocol == "grpc":
            self._client = tc.InferenceServerClient(self.address)
        else:  # connection and network timeouts; inference can take a while on a busy CPU server
            self._client = tc.InferenceServerClient(self.address, connection_timeout=timeout_s, network_timeout=timeout_s)

    # -- health -------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Server and model ready (False while starting, stopping or unreachable)."""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except Exception:  # connection refused, reset, timeout: all mean "not ready"
            return False

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServerError(f"{self.url}: model '{self.model}' not ready after {timeout_s:g} s")
            time.sleep(poll_s)

    # -- inference ----------------------------------------------------------------------------------

    def infer(self, inputs: dict[str, np.ndarray], outputs=DEFAULT_OUTPUTS) -> dict[str, np.ndarray]:
        """Raw call: numpy inputs by name (see restr.runtime.serve.INPUTS) -> numpy outputs by name."""
        tc = self._tc
        tensors = []
        for name, value in inputs.items():
            value = np.asarray(value)
            t = tc.InferInput(name, list(value.shape), self._dtype(value.dtype) if value.dtype != object else "BYTES")
            if self.protocol == "http":
                t.set_data_from_numpy(value, binary_data=True)
            else:
                t.set_data_from_numpy(value)
            tensors.append(t)
        wanted = [tc.InferRequestedOutput(n, binary_data=True) if self.protocol == "http" else tc.InferRequestedOutput(n)
                  for n in outputs]
        try:
            if self.protocol == "grpc":
                result = self._client.infer(self.model, tensors, outputs=wanted, client_timeout=self.timeout_s)
            else:
                result = self._client.infer(self.model, tensors, outputs=wanted)
        except self._error as e:
            raise ServerError(f"{self.url}: {_one_line(e.message() if hasattr(e, 'message') else str(e))}") from None
        except Exception as e:  # socket errors, timeouts (gevent / grpc raise their own types)
            raise ServerError(f"{self.url}: {type(e).__name__}: {_one_line(str(e))}") from None
        return {n: result.as_numpy(n) for n in outputs}

    def predict(self, image, texts: str | list[str], threshold: float | None = None, probs: bool = False) -> list[Prediction]:
        """Masks for expressions about one image. image: a file path (sent as its bytes, decoded by
        the server), PIL image or uint8 HxWx3 array (sent as pixels)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:  # tritonclient cannot even serialise an empty BYTES tensor
            raise ValueError("no expression given")
        inputs = {"texts": np.array([t.encode("utf-8") for t in texts], dtype=np.object_)}
        inputs.update(image_inputs(image))
        if threshold is not None:
            inputs["threshold"] = np.array([threshold], dtype=INPUTS["threshold"][0])
        t0 = time.perf_counter()
        out = self.infer(inputs, DEFAULT_OUTPUTS + (("probs",) if probs else ()))
        ms = (time.perf_counter() - t0) * 1000 / max(1, len(texts))
        self.last_threshold = float(out["used_threshold"][0])
        return [
            Prediction(
                text=text,
                mask=out["masks"][i].astype(bool),
                probs=out["probs"][i] if probs else None,
                score=float(out["scores"][i]),
                area=int(out["areas"][i]),
                patch_score=float(out["patch_scores"][i]),
                unknown_words=json.loads(out["unknown_words"][i]),
                truncated=bool(out["truncated"][i]),
                timings={"request": ms, "postprocess": 0.0},
            )
            for i, text in enumerate(texts)
        ]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RestrClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def image_inputs(image) -> dict[str, np.ndarray]:
    """A path -> {'image': its bytes}; a PIL image or array -> {'rgb': uint8 HxWx3}."""
    if isinstance(image, (str, Path)):
        try:
            data = Path(image).read_bytes()
        except OSError as e:
            raise ValueError(f"{image}: cannot be read ({e.strerror or e})") from None
        return {"image": np.array([data], dtype=np.object_)}
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return {"rgb": np.ascontiguousarray(image, dtype=np.uint8)}


@dataclass
class RemoteEmbedding:
    """restr-predict's view of an image sent to a server: the pixels and their size."""

    rgb: Image.Image
    timings: dict = field(default_factory=lambda: {"preprocess": 0.0, "vision": 0.0})

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.height, self.rgb.width


class RemotePredictor:
    """The parts of `Predictor` that restr-predict uses, answered by a server (`--server URL`)."""

    mode = "server"

    def __init__(self, url: str, threshold: float | None = None, timeout_s: float = 60.0):
        self.client = RestrClient(url, timeout_s=timeout_s)
        if not self.client.ready():
            self.client.close()
            raise ServerError(f"{self.client.url}: no ready '{self.client.model}' model there (start one with restr-serve)")
        self.threshold = threshold  # None until the first answer says which the server used
        self.runners = {"server": _Endpoint(self.client.url)}
        self.artifacts = _Endpoint(self.client.url)

    def embed(self, rgb: Image.Image) -> RemoteEmbedding:
        return RemoteEmbedding(rgb)

    def predict_embedding(self, embedding: RemoteEmbedding, texts) -> list[Prediction]:
        preds = self.client.predict(embedding.rgb, texts, threshold=self.threshold)
        self.threshold = self.client.last_threshold
        return preds

    def close(self) -> None:
        self.client.close()


@dataclass
class _Endpoint:
    url: str

    @property
    def model_name(self) -> str:
        return f"{MODEL} at {self.url}"

    @property
    def providers(self) -> list[str]:
        return [f"triton {self.url}"]


def _one_line(s: str) -> str:
    """PyTriton returns the model's traceback: keep the RequestError's message, else the first line."""
    s = (s or "").strip()
    m = re.search(r"RequestError: (.+)", s)
    if m:
        return m.group(1).strip()
    if "Traceback" in s:  # another exception in the server: its last "SomeError: message" line
        found = re.findall(r"^(\w+(?:Error|Exception): .+)$", s, flags=re.M)
        if found:
            return found[-1].strip()[:300]
    return s.splitlines()[0][:300] if s else "error"
