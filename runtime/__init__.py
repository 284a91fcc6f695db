"""restr.runtime: the torch-free runtime (numpy, Pillow, ONNX Runtime or TensorRT)."""
from restr.runtime.tokenizer import Vocabulary, split_words

__all__ = ["Vocabulary", "split_words"]
