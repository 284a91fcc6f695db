"""The torch Dataset over referring samples, and `build_dataset`, the one entry point the CLIs use."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from restr.data.refer import DataError, Sample, dataset_name, find_split_by, length_groups, load_refer, num_words
from restr.data.synthetic import DEFAULT_SIZES, SPLIT_BY, synthetic_root
from restr.runtime.tokenizer import Vocabulary
from restr.runtime.transforms import RESTR_TRANSFORM, ImageTransform, Letterbox


class ReferDataset(Dataset):
    """Letterboxed, normalised images with tokenized expressions and letterboxed masks.

    `transform` is the model's (`ReSTRConfig.image_transform`): restr's letterbox, or the authors'
    evaluation transform, in training as in evaluation; masks are letterboxed nearest-neighbour
    either way. Expressions are split by the vocabulary's tokenizer (`Vocabulary.tokenizer`).

    Item i is a dict: image float32 (3, S, S), words int64 (N_l,), pad_mask bool (N_l,) True = padding,
    mask float32 (1, S, S) in {0, 1}, index int. Scoring uses `ground_truth(i)` (H, W) at the original
    resolution and `letterbox(i).invert` to map predictions back onto it.

    shuffle_text=True is the shuffled-text control: sample i keeps its image and mask but reads the
    expression of a different object of the same image (a deterministic derangement of the image's
    objects, drawn from `seed`). Samples whose image has only one referred object are dropped, so
    every expression in the control is a wrong one.
    """

    def __init__(
        self,
        samples: list[Sample],
        image_size: int,
        vocab: Vocabulary,
        mean,
        std,
        max_words: int = 20,
        shuffle_text: bool = False,
        seed: int = 0,
        name: str = "custom",
        transform: ImageTransform = RESTR_TRANSFORM,
    ):
        self.image_size = int(image_size)
        self.transform = transform
        self.vocab = vocab
        self.mean, self.std = tuple(mean), tuple(std)
        self.max_words = int(max_words)
        self.shuffle_text = shuffle_text
        self.name = name
        if shuffle_text:
            self.samples, self._texts = _shuffled(samples, seed)
        else:
            self.samples, self._texts = list(samples), [s.text for s in samples]
        self.skipped = len(samples) - len(self.samples)  # single-object images left out by shuffle_text

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def length_groups(self) -> list[tuple[int, int]]:
        """Table 2's expression-length groups for this data set."""
        return length_groups(self.name)

    def text(self, i: int) -> str:
        """The expression sample i reads (another object's under shuffle_text)."""
        return self._texts[i]

    def num_words(self, i: int) -> int:
        """Words the model sees (at most max_words): the length Table 2 groups by."""
        return num_words(self._texts[i], self.max_words, self.vocab.tokenizer)

    def image_path(self, i: int) -> Path:
        return self.samples[i].image_path

    def groups_by_image(self, indices=None, most: int | None = None) -> list[list[int]]:
        """The samples (of `indices`, default all) grouped by image, images in first-seen order, at
        most `most` samples a group: so an image is read and encoded once for its expressions."""
        by_image: dict[Path, list[int]] = {}
        for i in range(len(self)) if indices is None else indices:
            by_image.setdefault(self.image_path(i), []).append(i)
        most = most or max(1, len(self))
        return [g[k : k + most] for g in by_image.values() for k in range(0, len(g), most)]

    def expressions_by_image(self, images: int) -> dict[Path, list[str]]:
        """The first `images` images (in sample order) with the expressions read about them."""
        out: dict[Path, list[str]] = {}
        for i in range(len(self)):
            path = self.image_path(i)
            if path not in out and len(out) == images:
                break
            out.setdefault(path, []).append(self.text(i))
        return out

    def letterbox(self, i: int) -> Letterbox:
        s = self.samples[i]
        return Letterbox.fit((s.height, s.width), self.image_size, self.transform)

    def ground_truth(self, i: int) -> np.ndarray:
        """(H, W) uint8 {0, 1} mask of the referred object at the original resolution."""
        return self.samples[i].mask()

    def arrays(self, i: int) -> dict:
        """Item i as numpy arrays (the same keys as __getitem__)."""
        s = self.samples[i]
        lb = self.letterbox(i)
        image = lb.input(s.image(), self.mean, self.std)
        enc = self.vocab.encode(self._texts[i], self.max_words)
        return {
            "image": image,
            "words": enc.words[0],
            "pad_mask": enc.pad_mask[0],
            "mask": lb.mask(s.mask())[None].astype(np.float32),
            "index": i,
        }

    def __getitem__(self, i: int) -> dict:
        a = self.arrays(i)
        return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in a.items()}


def _shuffled(samples: list[Sample], seed: int) -> tuple[list[Sample], list[str]]:
    """Give each sample the expression of another object of its image.

    The objects of an image (in first-seen order) are rotated by a random non-zero shift: a
    derangement. Sample k of object a reads sentence k (cyclically) of the object it maps to.
    """
    by_image: dict[int, dict[int, list[int]]] = defaultdict(dict)
    for idx, s in enumerate(samples):
        by_image[s.image_id].setdefault(s.ann_id, []).append(idx)
    new_text: dict[int, str] = {}
    for image_id, objects in by_image.items():
        anns = list(objects)
        if len(anns) < 2:
            continue
        shift = int(np.random.default_rng([seed, image_id & 0xFFFFFFFF]).integers(1, len(anns)))
        for a, ann in enumerate(anns):
            donor = objects[anns[(a + shift) % len(anns)]]
            for k, idx in enumerate(objects[ann]):
                new_text[idx] = samples[donor[k % len(donor)]].text
    kept = sorted(new_text)
    return [samples[i] for i in kept], [new_text[i] for i in kept]


def parse_spec(spec: str, split: str | None = None) -> tuple[str, str | None]:
    """'synthetic' / 'synthetic:test' / 'PATH' / 'PATH:split' -> (source, split).

    A split after the last colon overrides `split`; a path that exists as given is never split.
    """
    if spec != "synthetic" and not Path(spec).exists() and ":" in spec:
        head, tail = spec.rsplit(":", 1)
        if tail and "/" not in tail and "\\" not in tail and head:
            return head, tail
    return spec, split


def build_dataset(
    spec: str,
    split: str | None,
    image_size: int,
    vocab: Vocabulary | None,
    mean,
    std,
    max_words: int = 20,
    split_by: str | None = None,
    image_root: str | Path | None = None,
    shuffle_text: bool = False,
    seed: int = 0,
    synthetic_seed: int = 0,
    synthetic_sizes=DEFAULT_SIZES,
    progress: bool = False,
    transform: ImageTransform = RESTR_TRANSFORM,
    tokenizer: str | None = None,
) -> ReferDataset:
    """A ReferDataset from a spec string: 'synthetic[:split]' (the built-in set, generated once into
    the cache, see `synthetic_root`) or 'PATH[:split]' (a refer-layout folder). split None means every
    split. vocab None builds it from the selected samples (use the training split's). `transform` and
    `tokenizer` are the model's (`cfg.image_transform`, `cfg.tokenizer`); tokenizer None keeps the
    vocabulary's (restr's for one built here). Raises DataError.
    """
    source, split = parse_spec(spec, split)
    if source == "synthetic":
        folder = synthetic_root(seed=synthetic_seed, sizes=synthetic_sizes, progress=progress)
        split_by, name = SPLIT_BY, "synthetic"
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise DataError(f"{source}: no such data set folder (give a refer-layout folder or 'synthetic')")
        if split_by is None:
            found = find_split_by(folder)
            split_by = found[0] if len(found) == 1 else None
        name = dataset_name(folder, split_by or "")
    samples = load_refer(folder, split=split, split_by=split_by, image_root=image_root)
    if not samples:
        raise DataError(f"{spec}: split {split!r} has no samples")
    if vocab is None:
        vocab = Vocabulary.build((s.text for s in samples), tokenizer=tokenizer or "restr")
    elif tokenizer is not None and tokenizer != vocab.tokenizer:
        vocab = Vocabulary(vocab.itos, tokenizer)
    return ReferDataset(
        samples,
        image_size,
        vocab,
        mean,
        std,
        max_words=max_words,
        shuffle_text=shuffle_text,
        seed=seed,
        name=name,
        transform=transform,
    )
