"""A client of a restr Triton server (`restr-serve`, or a GPU server running the repository that
`restr-export --triton` writes): the same `Prediction`s as the in-process `Predictor`.

    from restr.runtime.client import RestrClient
    with RestrClient("http://127.0.0.1:8000") as client:      # or "grpc://127.0.0.1:8001"
        preds = client.predict("photo.jpg", ["the red circle", "the small square"])

Images are read as the Predictor reads them: a path or bytes goes as the encoded file (the server
decodes it, EXIF orientation applied), a PIL image or array as RGB pixels after the same EXIF
orientation and alpha composition as `Predictor` (restr.runtime.predictor.as_rgb).

Needs `pip install "restr[client]"` (tritonclient). Server-side failures (bad image, empty text)
raise `ServerError` with the server's one-line message; the server keeps serving.
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

from restr.runtime.predictor import Prediction, as_rgb, rgb_array
from restr.runtime.protocol import (
    INPUTS,
    MODEL,
    OUTPUTS,
    PARAM_MAX_WORDS,
    PARAM_MODEL_NAME,
    PARAM_THRESHOLD,
    PARAM_VOCABULARY,
)
from restr.runtime.tokenizer import Vocabulary

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


@dataclass
class ServedModel:
    """What the server's model configuration says about the model it serves."""

    url: str
    model_name: str
    max_words: int | None
    threshold: float | None
    batched: bool  # max_batch_size > 0: every tensor has a leading batch axis
    outputs: tuple[str, ...]
    words: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def from_config(cls, url: str, config: dict) -> ServedModel:
        params = {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        number = lambda key, kind: kind(params[key]) if params.get(key) else None
        return cls(
            url=url,
            model_name=params.get(PARAM_MODEL_NAME) or f"{MODEL} at {url}",
            max_words=number(PARAM_MAX_WORDS, int),
            threshold=number(PARAM_THRESHOLD, float),
            batched=int(config.get("max_batch_size") or 0) > 0,
            outputs=tuple(o["name"] for o in config.get("output", [])),
            words=params[PARAM_VOCABULARY].split("\n") if params.get(PARAM_VOCABULARY) else [],
        )

    def vocabulary(self) -> Vocabulary:
        """The served model's vocabulary (ServerError if the server does not publish it)."""
        if not self.words:
            raise ServerError(f"{self.url}: the server does not publish its model's vocabulary (an older restr-serve?)")
        return Vocabulary(self.words)

    @property
    def providers(self) -> list[str]:
        return [f"triton {self.url}"]


class RestrClient:
    """One connection to a restr Triton server; give each thread its own (tritonclient's HTTP client is not thread-safe)."""

    def __init__(self, url: str, model: str = MODEL, timeout_s: float = 60.0, headers: dict | None = None):
        self.protocol, self.address = parse_url(url)
        self.url = f"{self.protocol}://{self.address}"
        self.model = model
        self.timeout_s = timeout_s
        self.headers = headers  # e.g. {"triton-access-token": ...}
        self.last_threshold: float | None = None  # the threshold the server used for the last predict()
        self.last_request_ms: float | None = None  # the last predict()'s round trip
        self._served: ServedModel | None = None
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

    # -- health and the model ---------------------------------------------------------------------

    def ready(self) -> bool:
        """Server and model ready (False while starting, stopping or unreachable)."""
        try:
            return bool(
                self._client.is_server_ready(headers=self.headers)
                and self._client.is_model_ready(self.model, headers=self.headers)
            )
        except Exception:  # connection refused, reset, timeout: all mean "not ready"
            return False

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServerError(f"{self.url}: model '{self.model}' not ready after {timeout_s:g} s")
            time.sleep(poll_s)

    def served(self) -> ServedModel:
        """The model's configuration, read once: its name, vocabulary, whether it batches."""
        if self._served is None:
            config = self._call(
                self._client.get_model_config,
                self.model,
                headers=self.headers,
                **({"as_json": True} if self.protocol == "grpc" else {}),
            )
            self._served = ServedModel.from_config(self.url, config.get("config", config) if self.protocol == "grpc" else config)
        return self._served

    # -- inference ----------------------------------------------------------------------------------

    def infer(self, inputs: dict[str, np.ndarray], outputs=DEFAULT_OUTPUTS) -> dict[str, np.ndarray]:
        """Raw call: numpy inputs by name (runtime/protocol.py's INPUTS, without the batch axis) ->
        numpy outputs by name (those of `outputs` the model has)."""
        tc, served = self._tc, self.served()
        outputs = [n for n in outputs if n in served.outputs]
        tensors = []
        for name, value in inputs.items():
            value = np.asarray(value)
            if served.batched:
                value = value[None]
            t = tc.InferInput(name, list(value.shape), self._dtype(value.dtype) if value.dtype != object else "BYTES")
            if self.protocol == "http":
                t.set_data_from_numpy(value, binary_data=True)
            else:
                t.set_data_from_numpy(value)
            tensors.append(t)
        wanted = [
            tc.InferRequestedOutput(n, binary_data=True) if self.protocol == "http" else tc.InferRequestedOutput(n)
            for n in outputs
        ]
        timeout = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        result = self._call(self._client.infer, self.model, tensors, outputs=wanted, headers=self.headers, **timeout)
        return {n: result.as_numpy(n)[0] if served.batched else result.as_numpy(n) for n in outputs}

    def predict(self, image, texts: str | list[str], threshold: float | None = None, probs: bool = False) -> list[Prediction]:
        """Masks for expressions about one image. image: a file path or the file's bytes (decoded by
        the server), a PIL image or a uint8 array ((H, W), (H, W, 3) or (H, W, 4): oriented and made
        RGB here as Predictor does, sent as pixels)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:  # tritonclient cannot even serialise an empty BYTES tensor
            raise ValueError("no expression given")
        inputs = {"texts": np.array([t.encode("utf-8") for t in texts], dtype=np.object_)}
        inputs.update(image_inputs(image))
        if threshold is not None:
            inputs["threshold"] = np.array([threshold], dtype=INPUTS["threshold"][0])
        t0 = time.perf_counter()
        out = self.infer(inputs, DEFAULT_OUTPUTS + (("probs",) if probs else ()))
        self.last_request_ms = (time.perf_counter() - t0) * 1000
        self.last_threshold = float(out["used_threshold"][0])
        k = len(texts)
        flags = out.get("no_known_words", np.zeros(k, bool))
        timings = [json.loads(t) for t in out["timings"]] if "timings" in out else [{} for _ in texts]
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
                timings=timings[i],
                no_known_words=bool(flags[i]),
            )
            for i, text in enumerate(texts)
        ]

    def _call(self, fn, *args, **kwargs):
        """A tritonclient call; its failures as ServerError in one line."""
        try:
            return fn(*args, **kwargs)
        except self._error as e:
            message = _one_line(e.message() if hasattr(e, "message") else str(e))
            if "has no available versions" in message:  # what Triton answers for a model it is unloading
                message += " (the server is shutting down: send the request again, to another replica)"
            raise ServerError(f"{self.url}: {message}") from None
        except Exception as e:  # socket errors, timeouts (gevent / grpc raise their own types)
            raise ServerError(f"{self.url}: {type(e).__name__}: {_one_line(str(e))}") from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RestrClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def image_inputs(image) -> dict[str, np.ndarray]:
    """A path or bytes -> {'image': the encoded file}; a PIL image or array -> {'rgb': uint8 HxWx3},
    oriented and made RGB as the Predictor does (ImageError if it cannot be)."""
    if isinstance(image, (str, Path)):
        try:
            image = Path(image).read_bytes()
        except OSError as e:
            raise ValueError(f"{image}: cannot be read ({e.strerror or e})") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return {"image": np.array([bytes(image)], dtype=np.object_)}
    if isinstance(image, Image.Image):
        return {"rgb": np.asarray(as_rgb(image))}
    return {"rgb": rgb_array(np.asarray(image))}


@dataclass
class RemoteEmbedding:
    """restr-predict's view of an image sent to a server: the pixels and their size; `timings`
    (ms) are filled in by the server's answer (preprocess, vision) and the round trip (request)."""

    rgb: Image.Image
    timings: dict = field(default_factory=lambda: {"preprocess": 0.0, "vision": 0.0})

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.height, self.rgb.width


class RemotePredictor:
    """The parts of `Predictor` that restr-predict uses, answered by a server (`--server URL`):
    `artifacts` is the served model (its name, max_words, vocabulary())."""

    mode = "server"

    def __init__(self, url: str, threshold: float | None = None, timeout_s: float = 60.0, headers: dict | None = None):
        self.client = RestrClient(url, timeout_s=timeout_s, headers=headers)
        try:
            if not self.client.ready():
                raise ServerError(f"{self.client.url}: no ready '{self.client.model}' model there (start one with restr-serve)")
            self.artifacts = self.client.served()
        except ServerError:
            self.client.close()
            raise
        self.threshold = threshold  # None until the first answer says which the server used
        self.runners = {"server": self.artifacts}

    def embed(self, rgb: Image.Image) -> RemoteEmbedding:
        return RemoteEmbedding(rgb)

    def predict_embedding(self, embedding: RemoteEmbedding, texts) -> list[Prediction]:
        preds = self.client.predict(embedding.rgb, texts, threshold=self.threshold)
        self.threshold = self.client.last_threshold
        # the image's stages (the server's) and the round trip, where Predictor's embedding keeps them
        embedding.timings.update(
            {n: preds[0].timings[n] for n in ("preprocess", "vision") if n in preds[0].timings},
            request=self.client.last_request_ms,
        )
        return preds

    def close(self) -> None:
        self.client.close()


def _one_line(s: str) -> str:
    """The server's message in one line (an older restr-serve, on PyTriton's proxy, answered with the
    model's traceback: its RequestError, else its last "SomeError: message" line)."""
    s = (s or "").strip()
    m = re.search(r"RequestError: (.+)", s)
    if m:
        return m.group(1).strip()
    if "Traceback" in s:
        found = re.findall(r"^(\w+(?:Error|Exception): .+)$", s, flags=re.M)
        if found:
            return found[-1].strip()[:300]
    return s.splitlines()[0][:300] if s else "error"
