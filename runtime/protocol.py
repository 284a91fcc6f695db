"""The `restr` Triton model's contract: inputs, outputs, request checks, the response arrays and
the model configuration (config.pbtxt) that declares them.

Shared by `restr-serve` (runtime/serve.py), the client (runtime/client.py) and the BLS model of the
repository `restr-export --triton` writes, into which this file is copied (as restr_protocol.py,
beside restr_transforms.py): so it needs only numpy, Pillow and transforms.py.

restr-serve's model batches requests (Triton's dynamic batcher, `max_batch_size` > 0): every input
and output then has a leading batch axis of 1 (one image per request; `texts` is [1, K]). The BLS
model of `restr-export --triton` takes requests as they are (`max_batch_size` 0). Clients read
`max_batch_size` from the model's configuration and add the axis where it is needed.
"""

from __future__ import annotations

import io
import json

import numpy as np

try:
    from restr.runtime.transforms import ImageError, check_threshold, load_image
except ImportError:  # inside a generated Triton repository, where restr is not installed
    from restr_transforms import ImageError, check_threshold, load_image

MODEL = "restr"

# name -> (numpy dtype, shape; -1 = any). Triton checks dtypes and ranks before the model runs.
INPUTS = {
    "image": (np.bytes_, (1,)),  # an encoded image file (PNG, JPEG, ...); EXIF orientation applied
    "rgb": (np.uint8, (-1, -1, 3)),  # or the decoded pixels
    "texts": (np.bytes_, (-1,)),  # UTF-8 expressions about that image
    "threshold": (np.float32, (1,)),  # optional; the manifest's by default
}
OPTIONAL = ("image", "rgb", "threshold")
OUTPUTS = {
    "masks": (np.bool_, (-1, -1, -1)),  # (K, H, W) at the image's resolution
    "probs": (np.float32, (-1, -1, -1)),  # (K, H, W); ask for it only when needed (K*H*W*4 bytes)
    "scores": (np.float32, (-1,)),
    "areas": (np.int64, (-1,)),
    "patch_scores": (np.float32, (-1,)),
    "unknown_words": (np.bytes_, (-1,)),  # one JSON list per expression
    "truncated": (np.bool_, (-1,)),
    "no_known_words": (np.bool_, (-1,)),  # no content word of the expression is in the vocabulary: a guess
    "timings": (np.bytes_, (-1,)),  # one JSON object per expression: ms per stage, as Prediction.timings
    "used_threshold": (np.float32, (1,)),  # the request's threshold, or the manifest's
}
# Model configuration parameters the client reads (GET /v2/models/restr/config): what the model is.
PARAM_MODEL_NAME, PARAM_MAX_WORDS, PARAM_THRESHOLD, PARAM_VOCABULARY = (
    "restr_model_name",
    "restr_max_words",
    "restr_threshold",
    "restr_vocabulary",
)


class RequestError(ValueError):
    """A request the model cannot answer: a Triton error for that request only, one line."""


def read_request(get, max_texts: int, decode: bool = True):
    """`get(name)` -> array or None for each input -> (rgb PIL image or uint8 HxWx3 array, texts, threshold or None).

    decode=False leaves an encoded image undecoded (a file-like object for `decode_image`), so that
    a batch's images can be decoded in parallel."""
    encoded, rgb = get("image"), get("rgb")
    if (encoded is None) == (rgb is None):
        raise RequestError("send exactly one of the inputs 'image' (encoded file bytes) and 'rgb' (uint8 HxWx3)")
    if rgb is not None:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
            raise RequestError(f"'rgb' must be a non-empty uint8 HxWx3 array, got shape {tuple(rgb.shape)}")
        image = np.ascontiguousarray(rgb)
    else:
        blob = np.asarray(encoded, dtype=np.object_).reshape(-1)
        if blob.size != 1 or not isinstance(blob[0], (bytes, bytearray)) or not blob[0]:
            raise RequestError("'image' must hold one encoded image file (bytes)")
        image = _RequestBytes(blob[0])
        if decode:
            image = decode_image(image)
    raw = get("texts")
    raw = np.asarray([] if raw is None else raw, dtype=np.object_).reshape(-1)
    if raw.size == 0:
        raise RequestError("'texts' holds no expression")
    if raw.size > max_texts:
        raise RequestError(f"{raw.size} expressions in one request; this server takes at most {max_texts}")
    try:
        texts = [t.decode("utf-8") if isinstance(t, (bytes, bytearray)) else str(t) for t in raw]
    except UnicodeDecodeError:
        raise RequestError("'texts' must be UTF-8") from None
    threshold = get("threshold")
    if threshold is not None:
        try:  # the rule every host applies
            threshold = check_threshold(np.asarray(threshold).reshape(-1)[0])
        except ValueError as e:
            raise RequestError(str(e)) from None
    return image, texts, threshold


def decode_image(encoded):
    """An encoded request image (read_request(decode=False)) -> RGB PIL image; RequestError if unreadable."""
    try:
        return load_image(encoded)
    except ImageError as e:
        raise RequestError(str(e)) from None


def response(
    masks, probs, scores, areas, patch_scores, unknown_words, truncated, threshold: float, no_known_words, timings
) -> dict:
    """The output arrays, in OUTPUTS' dtypes; masks and probs (K, H, W), the rest per expression."""
    return {
        "masks": np.asarray(masks, dtype=np.bool_),
        "probs": np.asarray(probs, dtype=np.float32),
        "scores": np.asarray(scores, dtype=np.float32),
        "areas": np.asarray(areas, dtype=np.int64),
        "patch_scores": np.asarray(patch_scores, dtype=np.float32),
        "unknown_words": np.array([json.dumps(list(u)).encode() for u in unknown_words], dtype=np.object_),
        "truncated": np.asarray(truncated, dtype=np.bool_),
        "no_known_words": np.asarray(no_known_words, dtype=np.bool_),
        "timings": np.array(
            [json.dumps({k: round(float(v), 3) for k, v in t.items()}).encode() for t in timings], dtype=np.object_
        ),
        "used_threshold": np.array([threshold], dtype=np.float32),
    }


# -- the model configuration ----------------------------------------------------------------------

TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "bool": "TYPE_BOOL",
    "bool_": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "bytes": "TYPE_STRING",
    "bytes_": "TYPE_STRING",
    "object": "TYPE_STRING",
}


class ConfigError(ValueError):
    """A tensor the model configuration cannot declare."""


class Enum(str):
    """A protobuf enum value: written unquoted."""


def model_io(ragged: bool = False) -> dict:
    """The `input` and `output` entries of the restr model's config.pbtxt. ragged: requests of
    different shapes may share a batch (each keeps its own shapes: the Python backend hands them over
    one by one)."""
    inputs = []
    for name, (dtype, shape) in INPUTS.items():
        entry = tensor_config(name, dtype, shape)
        if name in OPTIONAL:
            entry["optional"] = True
        if ragged:
            entry["allow_ragged_batch"] = True
        inputs.append(entry)
    return {"input": inputs, "output": [tensor_config(n, d, s) for n, (d, s) in OUTPUTS.items()]}


def tensor_config(name: str, dtype, shape) -> dict:
    dtype = getattr(dtype, "__name__", str(dtype))
    if dtype not in TRITON_DTYPES:
        raise ConfigError(f"tensor {name!r}: dtype {dtype} has no Triton type here")
    return {
        "name": name,
        "data_type": Enum(TRITON_DTYPES[dtype]),
        "dims": [-1 if isinstance(s, str) or s < 0 else int(s) for s in shape],
    }


def parameter(key: str, value) -> dict:
    return {"key": key, "value": {"string_value": str(value)}}


def metadata_parameters(model_name: str, max_words: int, threshold: float, vocabulary_words) -> list[dict]:
    """What a client learns from the model's configuration: the model, its word limit, its default
    threshold and its vocabulary (one word a line, `<pad>` and `<unk>` first)."""
    return [
        parameter(PARAM_MODEL_NAME, model_name),
        parameter(PARAM_MAX_WORDS, max_words),
        parameter(PARAM_THRESHOLD, threshold),
        parameter(PARAM_VOCABULARY, "\n".join(vocabulary_words)),
    ]


def pbtxt(message: dict, indent: int = 0) -> str:
    """A dict as protobuf text format: lists of dicts are repeated messages, lists of scalars `[a, b]`."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for v in value:
                lines += [f"{pad}{key} {{", pbtxt(v, indent + 1), f"{pad}}}"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(lines) + ("\n" if indent == 0 else "")


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


class _RequestBytes(io.BytesIO):
    """Image bytes that read as 'request image' in error messages (load_image names its source)."""

    def __str__(self) -> str:
        return "request image"

    __repr__ = __str__  # Pillow's "cannot identify image file <...>" uses repr
