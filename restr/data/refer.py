"""Read referring-expression data sets in the `refer` toolkit's layout (torch-free).

ReferIt (refclef), RefCOCO (refcoco, splitBy unc), RefCOCO+ (refcoco+, unc), RefCOCOg (refcocog, umd or
google) are distributed by the `refer` toolkit (github.com/lichengunc/refer) as one folder per data set:

    <folder>/refs(<splitBy>).p   a pickle: a list of refs, each a dict with ref_id, ann_id, image_id,
                                 split, category_id, file_name, sentences [{sent, tokens, raw, sent_id}]
    <folder>/instances.json      COCO style: images [{id, file_name, height, width}], annotations
                                 [{id, image_id, segmentation (polygons or RLE), bbox, category_id}]

with images in a separate folder (the toolkit's default: <folder>/../images/mscoco/images/train2014
for the COCO-based sets, <folder>/../images/saiapr_tc-12 for ReferIt). One sample per sentence.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from restr.runtime.tokenizer import Vocabulary, split_words
from restr.runtime.transforms import ImageError, load_image, to_rgb


class DataError(ValueError):
    """A data set that cannot be read: one line, meant for users."""


# Table 2's expression-length groups (inclusive word counts).
_GREF_GROUPS = ((1, 5), (6, 7), (8, 10), (11, 20))
_UNC_GROUPS = ((1, 2), (3, 3), (4, 5), (6, 20))
_REFERIT_GROUPS = ((1, 1), (2, 2), (3, 4), (5, 20))
_GROUPS = {
    "refcocog": _GREF_GROUPS,
    "gref": _GREF_GROUPS,
    "g-ref": _GREF_GROUPS,
    "umd": _GREF_GROUPS,
    "google": _GREF_GROUPS,
    "refcoco": _UNC_GROUPS,
    "unc": _UNC_GROUPS,
    "refcoco+": _UNC_GROUPS,
    "unc+": _UNC_GROUPS,
    "referit": _REFERIT_GROUPS,
    "refclef": _REFERIT_GROUPS,
    "berkeley": _REFERIT_GROUPS,
    "synthetic": _UNC_GROUPS,  # short attribute phrases, like RefCOCO's
    "custom": _UNC_GROUPS,  # any other refer-layout folder
}


def length_groups(dataset_name: str) -> list[tuple[int, int]]:
    """Table 2's expression-length groups, inclusive (lo, hi) word counts, for a data set name.

    G-Ref: 1-5, 6-7, 8-10, 11-20; UNC and UNC+: 1-2, 3, 4-5, 6-20; ReferIt: 1, 2, 3-4, 5-20.
    'synthetic' and 'custom' use the UNC groups. Names as folders or splitBy values are accepted
    (refcoco, refcoco+, refcocog, refclef, referit, unc, unc+, umd, google, gref).
    """
    try:
        return list(_GROUPS[dataset_name.lower()])
    except KeyError:
        raise ValueError(f"no length groups for data set {dataset_name!r}; known: {', '.join(_GROUPS)}") from None


def dataset_name(folder: str | Path, split_by: str) -> str:
    """Best name for length groups: the refer folder name when it is a known one, else from splitBy."""
    name = Path(folder).resolve().name.lower()
    if name in ("refcoco", "refcoco+", "refcocog", "refclef", "synthetic"):
        return name
    if name.startswith("synthetic"):
        return "synthetic"
    return {"umd": "refcocog", "google": "refcocog", "berkeley": "refclef", "synthetic": "synthetic"}.get(split_by, "custom")


@dataclass(frozen=True)
class Sample:
    """One referring expression: a sentence, its image and the referred object's segmentation."""

    image_path: Path
    text: str
    segmentation: Any  # as in instances.json: polygons, an RLE dict, or a list of RLE dicts
    height: int  # of the annotated image
    width: int
    image_id: int
    ann_id: int
    ref_id: int
    sent_id: int
    split: str

    def mask(self) -> np.ndarray:
        """The referred object's mask at the original resolution: (H, W) uint8 in {0, 1}."""
        return decode_segmentation(self.segmentation, self.height, self.width)

    def image(self) -> Image.Image:
        """The image as RGB, in the pixel order the annotations were drawn on. Raises DataError."""
        try:
            im = load_image(self.image_path)
        except ImageError as e:
            raise DataError(str(e)) from None
        if im.size == (self.width, self.height):
            return im
        # load_image applies the EXIF orientation; annotations of the COCO-based sets were made on the
        # stored pixels, so an image it rotated is read again without the rotation.
        with Image.open(self.image_path) as raw:
            if raw.size == (self.width, self.height):
                return to_rgb(raw)
        raise DataError(
            f"{self.image_path}: image is {im.size[0]}x{im.size[1]} but instances.json says {self.width}x{self.height}"
        )


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """COCO segmentation (polygons, RLE dict with compressed or uncompressed counts, or a list of
    RLE dicts as ReferIt has) -> (height, width) uint8 mask in {0, 1}; parts are merged (union)."""
    if isinstance(segmentation, dict):
        rles = [_rle(segmentation, height, width)]
    elif isinstance(segmentation, (list, tuple)) and segmentation and isinstance(segmentation[0], dict):
        rles = [_rle(s, height, width) for s in segmentation]
    elif isinstance(segmentation, (list, tuple)):
        polygons = [list(map(float, p)) for p in segmentation if len(p) >= 6]  # >= 3 points
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        rles = mask_utils.frPyObjects(polygons, height, width)
    else:
        raise DataError(f"unreadable segmentation of type {type(segmentation).__name__}")
    with warnings.catch_warnings():  # pycocotools' Cython decoder trips a numpy 2 DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        m = mask_utils.decode([mask_utils.merge(rles, intersect=False)])[:, :, 0]
    if m.shape != (height, width):
        raise DataError(f"segmentation of size {m.shape[1]}x{m.shape[0]} on an image of {width}x{height}")
    return (m > 0).astype(np.uint8)


def _rle(obj: dict, height: int, width: int) -> dict:
    counts = obj.get("counts")
    if isinstance(counts, list):  # uncompressed RLE
        return mask_utils.frPyObjects(obj, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes) or "size" not in obj:
        raise DataError("unreadable RLE segmentation (needs 'size' and 'counts')")
    return {"size": list(obj["size"]), "counts": counts}


class _RefsUnpickler(pickle.Unpickler):
    """A refs pickle holds only lists, dicts, strings and numbers: refuse anything that names a
    class or function, so a crafted file cannot run code."""

    def find_class(self, module, name):
        raise DataError(f"refuses to load {module}.{name}: a refs pickle holds only lists, dicts, strings and numbers")


def _load_refs(path: Path) -> list:
    # The toolkit's pickles were written by Python 2: bytes strings decode as ASCII, else latin-1.
    for encoding in ("ASCII", "latin1"):
        try:
            with open(path, "rb") as f:
                return _RefsUnpickler(f, encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
            raise DataError(f"{path}: not a readable refs pickle ({type(e).__name__}: {e})") from None
    raise DataError(f"{path}: not a readable refs pickle (undecodable strings)")


_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


def _check_refs(refs, path: Path) -> None:
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"{path}: not a refs pickle (expected a list of dicts, got {type(refs).__name__})")
    for r in refs:
        missing = [k for k in _REF_KEYS if k not in r]
        if missing:
            raise DataError(f"{path}: not a refs pickle (a ref lacks {', '.join(missing)}; needs {', '.join(_REF_KEYS)})")
        if not isinstance(r["sentences"], list) or not all(isinstance(s, dict) and "sent" in s for s in r["sentences"]):
            raise DataError(f"{path}: not a refs pickle (ref {r['ref_id']}: sentences must be dicts with 'sent')")


def find_split_by(folder: str | Path) -> list[str]:
    """The splitBy names of the refs(<splitBy>).p files in a refer folder, sorted."""
    return sorted(p.name[len("refs(") : -len(").p")] for p in Path(folder).glob("refs(*).p"))


def _default_image_roots(folder: Path) -> list[Path]:
    # Where the refer toolkit puts images: data/images/mscoco/images/train2014 and
    # data/images/saiapr_tc-12 beside data/refcoco etc.; a self-contained folder has images/.
    return [folder / "images", folder.parent / "images/mscoco/images/train2014", folder.parent / "images/saiapr_tc-12"]


def _select_split(refs: list, split: str | None, path: Path) -> list:
    if split is None:
        return refs
    available = sorted({str(r["split"]) for r in refs})
    if split in available:
        return [r for r in refs if r["split"] == split]
    if split == "test" and any("test" in s for s in available):  # the toolkit's 'test': every test split
        return [r for r in refs if "test" in str(r["split"])]
    raise DataError(f"unknown split {split!r} in {path}; available: {', '.join(available)}")


def load_refer(
    folder: str | Path,
    split: str | None = None,
    split_by: str | None = None,
    image_root: str | Path | None = None,
) -> list[Sample]:
    """Samples (one per sentence) of a refer-layout folder, in refs order.

    split: 'train', 'val', 'test', 'testA', ... as in the pickle; None for every split.
    split_by: which refs(<splitBy>).p (unc, unc+, umd, google, berkeley, ...); may be left out when
    the folder has exactly one. image_root: the folder image file names are relative to; by default
    <folder>/images or the refer toolkit's image folders beside <folder>. Raises DataError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such data set folder")
    if split_by is None:
        found = find_split_by(folder)
        if len(found) != 1:
            what = f"several ({', '.join(found)}); choose one with split_by" if found else "none"
            raise DataError(f"{folder}: expected one refs(<splitBy>).p file, found {what}")
        split_by = found[0]
    refs_path, inst_path = folder / f"refs({split_by}).p", folder / "instances.json"
    for p in (refs_path, inst_path):
        if not p.is_file():
            others = find_split_by(folder)
            hint = f" (found splitBy: {', '.join(others)})" if others and p is refs_path else ""
            raise DataError(f"{p}: missing; a refer-layout folder holds refs(<splitBy>).p and instances.json{hint}")

    refs = _load_refs(refs_path)
    _check_refs(refs, refs_path)
    refs = _select_split(refs, split, refs_path)

    try:
        with open(inst_path, encoding="utf-8") as f:
            instances = json.load(f)
        images = {int(im["id"]): im for im in instances["images"]}
        anns = {int(a["id"]): a for a in instances["annotations"]}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{inst_path}: not valid JSON ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{inst_path}: not COCO-style instances (needs images and annotations with ids; {e!r})") from None

    if image_root is None:
        candidates = _default_image_roots(folder)
        image_root = next((c for c in candidates if c.is_dir()), None)
        if image_root is None:
            raise DataError(f"{folder}: no image folder found (looked in {', '.join(map(str, candidates))}); pass image_root")
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise DataError(f"{image_root}: no such image folder")

    samples = []
    for r in refs:
        ann = anns.get(int(r["ann_id"]))
        im = images.get(int(r["image_id"]))
        if ann is None or im is None:
            what = f"annotation {r['ann_id']}" if ann is None else f"image {r['image_id']}"
            raise DataError(f"{refs_path}: ref {r['ref_id']} names {what}, which {inst_path.name} does not have")
        try:
            common = dict(
                image_path=image_root / im["file_name"],
                segmentation=ann["segmentation"],
                height=int(im["height"]),
                width=int(im["width"]),
                image_id=int(r["image_id"]),
                ann_id=int(r["ann_id"]),
                ref_id=int(r["ref_id"]),
                split=str(r["split"]),
            )
        except KeyError as e:
            raise DataError(f"{inst_path}: image {r['image_id']} or annotation {r['ann_id']} lacks {e}") from None
        for s in r["sentences"]:
            samples.append(Sample(text=str(s["sent"]), sent_id=int(s.get("sent_id", -1)), **common))
    return samples


def texts(samples: list[Sample]) -> list[str]:
    """The expressions of `samples`, in order."""
    return [s.text for s in samples]


def build_vocabulary(samples: list[Sample], min_count: int = 1, tokenizer: str = "restr") -> Vocabulary:
    """The vocabulary of a (training) split's expressions: `Vocabulary.build` over their texts."""
    return Vocabulary.build(texts(samples), min_count=min_count, tokenizer=tokenizer)


def num_words(text: str, max_words: int = 20, tokenizer: str = "restr") -> int:
    """Words the model sees (after tokenizing and truncation to max_words): the Table 2 length."""
    return min(len(split_words(text, tokenizer)), max_words)
