"""The built-in synthetic referring data set (torch-free).

Scenes of 2-4 shapes that differ in shape, colour, size and position, drawn with Pillow on a plain or
lightly textured background, in images of 80-112 x 64-96 pixels (not always square, so letterboxing
is exercised). Each object is named by several expressions ("the small red circle", "blue square",
"the leftmost circle", "the square left of the green triangle"); an expression is kept only if it
names exactly one object of its scene, and every object of a scene is named, so a shuffled-text
control can give each object another object's expression.

The set is written in the `refer` toolkit's layout (images/*.png, refs(synthetic).p, instances.json
with RLE masks) and read back by the same loader as RefCOCO. Generation is deterministic: image i of
a split depends only on (seed, split, i), so changing one split's size leaves the others as they were.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

from restr.data.refer import DataError
from restr.runtime.tokenizer import split_words

VERSION = 4  # bump when the generated data change; it is part of the cache folder's name
SPLIT_BY = "synthetic"
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 3000, "val": 300, "test": 300}  # images per split

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (215, 45, 40), "green": (40, 165, 60), "blue": (45, 85, 220), "yellow": (235, 205, 35)}
SIZES = {"small": (13, 17), "big": (22, 27)}  # half-extent r in pixels: a shape spans 2r + 1
WIDTHS, HEIGHTS = (80, 112), (64, 96)  # inclusive ranges of image sizes
GAP = 3  # minimum gap in pixels between two objects' boxes
MARGIN = 6  # edges and centres must differ by more than this for left/right/above/below to be stated
EXPRESSIONS_PER_OBJECT = 3
RELATIONS = ("left of", "right of", "above", "below")
EXTREMES = ("leftmost", "rightmost", "topmost", "bottommost")
_SIZE_NAMES, _COLOUR_NAMES = tuple(SIZES), tuple(COLOURS)


@dataclass(frozen=True)
class Obj:
    """One object of a scene; (cx, cy) is the centre of its box [cx - r, cx + r] x [cy - r, cy + r]."""

    shape: str
    colour: str
    size: str
    cx: int
    cy: int
    r: int

    def attrs(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size}


@dataclass
class Scene:
    width: int
    height: int
    objects: list[Obj]
    expressions: list[list[str]]  # per object, the expressions naming exactly it


def _sizes(sizes) -> dict[str, int]:
    if isinstance(sizes, Mapping):
        out = {s: int(sizes.get(s, 0)) for s in SPLITS}
        if set(sizes) - set(SPLITS):
            raise ValueError(f"sizes: unknown splits {sorted(set(sizes) - set(SPLITS))}; use {SPLITS}")
    else:
        vals = tuple(int(v) for v in sizes)
        if len(vals) != 3:
            raise ValueError("sizes: give (train, val, test) image counts or a dict")
        out = dict(zip(SPLITS, vals))
    if any(not 0 <= v < 1_000_000 for v in out.values()):
        raise ValueError(f"sizes: image counts must be in [0, 1000000), got {out}")
    return out


# --- expressions ----------------------------------------------------------------------------------
# A description is a subset of {size, colour, shape} attribute values; it selects the objects that
# have all of them ("the small red circle", "the red object", "the big one" ...).


def _selects(objects: list[Obj], desc: dict) -> list[Obj]:
    return [o for o in objects if all(getattr(o, k) == v for k, v in desc.items())]


def _phrase(desc: dict) -> str:
    words = [desc[k] for k in ("size", "colour") if k in desc]
    return " ".join(words + [desc.get("shape", "object")])


def _descriptions(o: Obj) -> list[dict]:
    """Every description of o: all subsets of its attributes, the empty one included."""
    a = o.attrs()
    keys = ("size", "colour", "shape")
    return [{k: a[k] for k in sub} for n in range(4) for sub in itertools.combinations(keys, n)]


_DIRECTION = {  # extreme or relation -> (axis, sign): the signed coordinate grows that way
    "leftmost": ("x", -1),
    "rightmost": ("x", 1),
    "topmost": ("y", -1),
    "bottommost": ("y", 1),
    "left of": ("x", -1),
    "right of": ("x", 1),
    "above": ("y", -1),
    "below": ("y", 1),
}


def _coords(o: Obj, direction: str) -> tuple[int, int, int]:
    """o's box edges and centre as signed coordinates that grow in `direction` ('leftmost' -> -x).

    Positions are compared on all three: "the topmost circle" must hold whether a reader goes by
    centres or by edges (a big shape's centre can be lower while its top edge is higher).
    """
    axis, sign = _DIRECTION[direction]
    c = o.cx if axis == "x" else o.cy
    return (sign * (c - o.r), sign * c, sign * (c + o.r))


def _beyond(a: Obj, b: Obj, direction: str, margin: int) -> list[bool]:
    """Per coordinate (edges and centre): is a further than b in `direction` by more than margin?"""
    return [ca > cb + margin for ca, cb in zip(_coords(a, direction), _coords(b, direction))]


def _anchor_phrases(objects: list[Obj]) -> dict[int, str]:
    """For relations: the shortest 1-2 attribute phrase naming each object uniquely, where one exists."""
    out = {}
    for i, o in enumerate(objects):
        descs = [d for d in _descriptions(o) if 1 <= len(d) <= 2 and _selects(objects, d) == [o]]
        if descs:
            out[i] = _phrase(min(descs, key=len))
    return out


def scene_expressions(objects: list[Obj], target: Obj, anchors: dict[int, str] | None = None) -> dict[str, list[str]]:
    """Expressions naming exactly `target` among `objects`, by kind ('attribute', 'extreme',
    'relation'). Positional words are used only when the position differs by more than MARGIN
    pixels from every competitor, by centres and by edges alike, so they read the same under any
    reasonable interpretation."""
    anchors = _anchor_phrases(objects) if anchors is None else anchors
    out: dict[str, list[str]] = {"attribute": [], "extreme": [], "relation": []}
    for desc in _descriptions(target):
        sel = _selects(objects, desc)
        if desc and sel == [target]:  # attributes alone suffice
            out["attribute"].append(f"the {_phrase(desc)}")
            continue
        if len(desc) > 2 or len(sel) < 2:
            continue
        for ext in EXTREMES:  # "the leftmost circle": target beats every other one of its class
            if all(all(_beyond(target, o, ext, MARGIN)) for o in sel if o is not target):
                out["extreme"].append(f"the {ext} {_phrase(desc)}")
        for a, anchor_phrase in anchors.items():  # "the circle left of the red square"
            anchor = objects[a]
            if anchor is target:
                continue
            for rel in RELATIONS:
                # a competitor counts if any reading (edges or centre) nearly relates it
                loose = [o for o in sel if o is not anchor and any(_beyond(o, anchor, rel, -MARGIN))]
                if loose == [target] and all(_beyond(target, anchor, rel, MARGIN)):
                    out["relation"].append(f"the {_phrase(desc)} {rel} the {anchor_phrase}")
    return out


KIND_WEIGHTS = {"attribute": 0.6, "extreme": 0.25, "relation": 0.15}  # share of expressions by kind


def _pick_expressions(kinds: dict[str, list[str]], rng: np.random.Generator, k: int) -> list[str]:
    """Up to k distinct expressions, each slot drawing a kind by KIND_WEIGHTS among the kinds that
    have phrases left. Mostly attribute phrases, so a small model trained from scratch for a few
    minutes learns to ground words; positional ones stay common enough to need reading as well.
    Attribute phrases sometimes lose their article ("red circle") so short expressions occur too."""
    pools = {kind: list(rng.permutation(v)) for kind, v in kinds.items() if v}
    chosen: list[str] = []
    while len(chosen) < k and any(pools.values()):
        names = [n for n, v in pools.items() if v]
        w = np.array([KIND_WEIGHTS[n] for n in names])
        kind = names[rng.choice(len(names), p=w / w.sum())]
        e = str(pools[kind].pop())
        if kind == "attribute" and rng.random() < 0.3:
            e = e[len("the ") :]
        chosen.append(e)
    return chosen


# --- scenes ---------------------------------------------------------------------------------------


def _place(rng: np.random.Generator, width: int, height: int, count: int) -> list[Obj]:
    objects: list[Obj] = []
    for _ in range(count):
        for _attempt in range(60):
            size = _SIZE_NAMES[rng.integers(len(_SIZE_NAMES))]
            r = int(rng.integers(SIZES[size][0], SIZES[size][1] + 1))
            if 2 * r + 2 > min(width, height):
                continue
            cx, cy = int(rng.integers(r, width - r)), int(rng.integers(r, height - r))
            if all(abs(cx - o.cx) >= r + o.r + GAP or abs(cy - o.cy) >= r + o.r + GAP for o in objects):
                shape, colour = SHAPES[rng.integers(len(SHAPES))], _COLOUR_NAMES[rng.integers(len(_COLOUR_NAMES))]
                objects.append(Obj(shape, colour, size, cx, cy, r))
                break
    return objects


def make_scene(rng: np.random.Generator, expressions_per_object: int = EXPRESSIONS_PER_OBJECT) -> Scene:
    """A random scene whose every object has at least one expression naming exactly it."""
    while True:
        width, height = int(rng.integers(WIDTHS[0], WIDTHS[1] + 1)), int(rng.integers(HEIGHTS[0], HEIGHTS[1] + 1))
        objects = _place(rng, width, height, int(rng.integers(2, 4)))  # 2-3 objects
        if len(objects) < 2:
            continue
        anchors = _anchor_phrases(objects)
        exprs = [_pick_expressions(scene_expressions(objects, o, anchors), rng, expressions_per_object) for o in objects]
        if all(exprs):
            return Scene(width, height, objects, exprs)


def _draw(draw: ImageDraw.ImageDraw, o: Obj, fill) -> None:
    box = [o.cx - o.r, o.cy - o.r, o.cx + o.r, o.cy + o.r]
    if o.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif o.shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # triangle filling the box, so its box centre is (cx, cy) like the others'
        draw.polygon([(o.cx, o.cy - o.r), (o.cx + o.r, o.cy + o.r), (o.cx - o.r, o.cy + o.r)], fill=fill)


def render(scene: Scene, rng: np.random.Generator) -> tuple[Image.Image, list[np.ndarray]]:
    """The scene's RGB image and one (H, W) uint8 {0, 1} mask per object."""
    w, h = scene.width, scene.height
    grey = rng.integers(110, 176)
    tint = rng.integers(-12, 13, size=3)
    bg = np.clip(grey + tint, 0, 255).astype(np.float32)
    canvas = np.broadcast_to(bg, (h, w, 3)).copy()
    style = rng.integers(3)
    if style == 1:  # a faint linear gradient
        ramp = np.linspace(-1, 1, w if rng.random() < 0.5 else h, dtype=np.float32) * rng.uniform(8, 20)
        canvas += ramp[None, :, None] if ramp.shape[0] == w else ramp[:, None, None]
    im = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    masks = []
    for o in scene.objects:
        colour = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[o.colour])
        _draw(draw, o, colour)
        m = Image.new("L", (w, h), 0)
        _draw(ImageDraw.Draw(m), o, 1)
        masks.append(np.asarray(m, dtype=np.uint8))
    if style == 2:  # light pixel noise over everything
        a = np.asarray(im, dtype=np.float32) + rng.normal(0, 6, size=(h, w, 3))
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    return im, masks


# --- writing --------------------------------------------------------------------------------------


def make_synthetic(root: str | Path, seed: int = 0, sizes=DEFAULT_SIZES, overwrite: bool = False, progress: bool = False) -> Path:
    """Generate the synthetic set into `root` in the refer layout; returns `root`.

    root/images/<image_id>.png, root/refs(synthetic).p, root/instances.json (RLE masks; each
    annotation also carries its 'attributes': shape, colour, size, centre). sizes: images per split,
    {"train": n, "val": n, "test": n} or (train, val, test). Written into a temporary sibling folder
    and renamed at the end, so `root` is either complete or absent.
    """
    root = Path(root)
    counts = _sizes(sizes)
    if root.exists() and not overwrite:
        raise DataError(f"{root}: already exists (pass overwrite=True to replace it)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished set is an ordinary readable folder
        _write(tmp, seed, counts, progress)
        if root.exists():  # overwrite: move the old one aside first, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
            os.replace(root, old / root.name)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _write(folder: Path, seed: int, counts: dict[str, int], progress: bool) -> None:
    (folder / "images").mkdir()
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations, refs = [], [], []
    jobs = [(k, split, i) for k, split in enumerate(SPLITS) for i in range(counts[split])]
    for k, split, i in tqdm(jobs, desc="synthetic data", disable=not progress, unit="image"):
        rng = np.random.default_rng([seed, k, i])
        scene = make_scene(rng)
        im, masks = render(scene, rng)
        image_id = k * 1_000_000 + i + 1
        file_name = f"{image_id:07d}.png"
        im.save(folder / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": scene.height, "width": scene.width})
        for j, (o, m, exprs) in enumerate(zip(scene.objects, masks, scene.expressions)):
            ann_id = image_id * 10 + j
            rle = mask_utils.encode(np.asfortranarray(m))
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "segmentation": {"size": [scene.height, scene.width], "counts": rle["counts"].decode("ascii")},
                    "area": int(m.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                    "category_id": cat_id[o.shape],
                    "attributes": {**o.attrs(), "center": [o.cx, o.cy]},
                }
            )
            sentences = [{"sent": e, "raw": e, "tokens": split_words(e), "sent_id": ann_id * 10 + s} for s, e in enumerate(exprs)]
            refs.append(
                {
                    "ref_id": ann_id,
                    "ann_id": ann_id,
                    "image_id": image_id,
                    "split": split,
                    "sentences": sentences,
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "category_id": cat_id[o.shape],
                    "file_name": file_name,
                }
            )
    info = {"description": "restr synthetic referring segmentation", "version": VERSION, "seed": seed, "sizes": counts}
    with open(folder / "instances.json", "w", encoding="utf-8") as f:
        json.dump({"info": info, "images": images, "annotations": annotations, "categories": categories}, f)
    with open(folder / f"refs({SPLIT_BY}).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)  # the refer toolkit's pickles are protocol 2


def default_cache_dir() -> Path:
    """$RESTR_CACHE if set, else ~/.cache/restr."""
    env = os.environ.get("RESTR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "restr"


def synthetic_root(seed: int = 0, sizes=DEFAULT_SIZES, cache_dir: str | Path | None = None, progress: bool = False) -> Path:
    """The cached synthetic set for (seed, sizes), generated on first use and reused after.

    <cache>/synthetic-v<VERSION>-seed<seed>-<train>-<val>-<test>; safe when several processes ask at
    once (each writes its own temporary folder; the first rename wins).
    """
    counts = _sizes(sizes)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"synthetic-v{VERSION}-seed{seed}-{counts['train']}-{counts['val']}-{counts['test']}"
    if root.is_dir():
        return root
    try:
        return make_synthetic(root, seed=seed, sizes=counts, progress=progress)
    except (DataError, OSError):
        if root.is_dir():  # another process finished first
            return root
        raise
