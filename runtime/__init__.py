"""restr.runtime: the torch-free runtime (numpy, Pillow, ONNX Runtime or TensorRT).

    from restr.runtime import Predictor
    predictor = Predictor.from_artifacts("export_dir")      # a restr-export folder
    predictor.set_image("photo.jpg")
    masks = [p.mask for p in predictor.predict(["the dog", "the red car"])]

Importing this package loads numpy and Pillow only: onnxruntime is imported when a graph is
loaded, tensorrt and cuda-python only for the tensorrt backend, torch and onnx never.
"""

from restr.runtime.artifacts import ArtifactError, Artifacts, GraphInfo, TensorSpec
from restr.runtime.predictor import (
    CacheInfo,
    EmbeddingError,
    FeatureCache,
    ImageEmbedding,
    ImageResult,
    Prediction,
    Predictor,
    TextError,
    TextTruncatedWarning,
    as_rgb,
)
from restr.runtime.runners import OrtRunner, Runner, choose_providers, make_runner
from restr.runtime.tokenizer import Vocabulary, split_words
from restr.runtime.transforms import ImageError, Letterbox, load_image
from restr.runtime.visualize import overlay, save_mask, save_overlay

__all__ = [
    "ArtifactError",
    "Artifacts",
    "CacheInfo",
    "EmbeddingError",
    "FeatureCache",
    "GraphInfo",
    "ImageEmbedding",
    "ImageError",
    "ImageResult",
    "Letterbox",
    "OrtRunner",
    "Prediction",
    "Predictor",
    "Runner",
    "TensorSpec",
    "TextError",
    "TextTruncatedWarning",
    "Vocabulary",
    "as_rgb",
    "choose_providers",
    "load_image",
    "make_runner",
    "overlay",
    "save_mask",
    "save_overlay",
    "split_words",
]
