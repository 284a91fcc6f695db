"""Referring-segmentation data: the refer-layout loader, the built-in synthetic set, the torch Dataset.

`restr.data.refer` and `restr.data.synthetic` are torch-free; `ReferDataset` and `build_dataset`
(in `restr.data.dataset`) import torch, and are loaded here only when first used.
"""

from restr.data.refer import (
    DataError,
    Sample,
    build_vocabulary,
    decode_segmentation,
    length_groups,
    load_refer,
    num_words,
    texts,
)
from restr.data.synthetic import DEFAULT_SIZES, make_synthetic, synthetic_root

_TORCH_NAMES = ("ReferDataset", "build_dataset", "parse_spec")

__all__ = [
    "DataError",
    "Sample",
    "build_vocabulary",
    "decode_segmentation",
    "length_groups",
    "load_refer",
    "num_words",
    "texts",
    "DEFAULT_SIZES",
    "make_synthetic",
    "synthetic_root",
    *_TORCH_NAMES,
]


def __getattr__(name):
    if name in _TORCH_NAMES:
        from restr.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'restr.data' has no attribute {name!r}")
