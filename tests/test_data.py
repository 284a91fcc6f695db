"""Data: the refer-layout loader, the synthetic generator, ReferDataset and their errors."""

import datetime
import json
import pickle
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from restr.data import (
    DataError,
    ReferDataset,
    build_dataset,
    build_vocabulary,
    decode_segmentation,
    load_refer,
    make_synthetic,
    synthetic_root,
)
from restr.data.dataset import parse_spec
from restr.data.synthetic import EXTREMES, RELATIONS, SHAPES, VERSION
from restr.runtime.tokenizer import Vocabulary

torch.set_num_threads(1)
SIZES = {"train": 10, "val": 3, "test": 3}
MEAN = STD = (0.5, 0.5, 0.5)


# --- a tiny data set in exactly the refer toolkit's on-disk format --------------------------------


def _rect_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1  # what COCO's rasterizer makes of the polygon (x0,y0) (x1,y0) (x1,y1) (x0,y1)
    return m


@pytest.fixture
def refer_folder(tmp_path):
    """data/refcoco/{refs(unc).p, instances.json} and data/images/mscoco/images/train2014/*.jpg."""
    data = tmp_path / "data"
    folder = data / "refcoco"
    images = data / "images/mscoco/images/train2014"
    folder.mkdir(parents=True)
    images.mkdir(parents=True)
    Image.new("RGB", (40, 30), (10, 20, 30)).save(images / "COCO_train2014_000000000001.jpg")
    Image.new("RGB", (24, 32), (200, 20, 30)).save(images / "COCO_train2014_000000000002.jpg")

    blob = np.zeros((32, 24), np.uint8)  # image 2, an irregular shape stored as compressed RLE
    blob[3:9, 2:7] = 1
    blob[20:30, 10:22] = 1
    blob[5, 15] = 1
    rle = mask_utils.encode(np.asfortranarray(blob))
    expected = {
        101: _rect_mask(30, 40, 5, 4, 25, 20),  # one polygon
        102: np.maximum(_rect_mask(30, 40, 0, 0, 4, 3), _rect_mask(30, 40, 30, 20, 38, 28)),  # two polygons: union
        103: np.zeros((30, 40), np.uint8),  # uncompressed RLE, counts by hand (column-major)
        201: blob,
        202: blob[:, ::-1].copy(),  # a list of RLE dicts, as ReferIt stores masks
    }
    expected[103][1:3, 1] = 1  # counts [31, 2, ...]: 30 zeros of column 0, 1 zero, then 2 ones
    flipped = mask_utils.encode(np.asfortranarray(expected[202]))
    anns = [
        {"id": 101, "image_id": 1, "segmentation": [[5, 4, 25, 4, 25, 20, 5, 20]], "bbox": [5, 4, 20, 16], "category_id": 1},
        {
            "id": 102,
            "image_id": 1,
            "segmentation": [[0, 0, 4, 0, 4, 3, 0, 3], [30, 20, 38, 20, 38, 28, 30, 28]],
            "bbox": [0, 0, 38, 28],
            "category_id": 1,
        },
        {
            "id": 103,
            "image_id": 1,
            "segmentation": {"size": [30, 40], "counts": [31, 2, 30 * 40 - 33]},
            "bbox": [1, 1, 1, 2],
            "category_id": 2,
        },
        {
            "id": 201,
            "image_id": 2,
            "segmentation": {"size": [32, 24], "counts": rle["counts"].decode()},
            "bbox": [2, 3, 20, 27],
            "category_id": 3,
        },
        {
            "id": 202,
            "image_id": 2,
            "segmentation": [{"size": [32, 24], "counts": flipped["counts"].decode()}],
            "bbox": [2, 3, 20, 27],
            "category_id": 3,
        },
    ]
    instances = {
        "info": {},
        "licenses": [],
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 30, "width": 40},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 32, "width": 24},
        ],
        "annotations": anns,
        "categories": [{"id": i, "name": n, "supercategory": "x"} for i, n in [(1, "dog"), (2, "cat"), (3, "car")]],
    }
    (folder / "instances.json").write_text(json.dumps(instances))

    def ref(ref_id, ann_id, image_id, split, sents):
        sentences = [
            {"sent": s, "raw": s.capitalize() + ".", "tokens": s.split(), "sent_id": ref_id * 10 + k} for k, s in enumerate(sents)
        ]
        return {
            "ref_id": ref_id,
            "ann_id": ann_id,
            "image_id": image_id,
            "split": split,
            "sentences": sentences,
            "sent_ids": [s["sent_id"] for s in sentences],
            "category_id": 1,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
        }

    refs = [
        ref(1, 101, 1, "train", ["the big dog", "dog in the middle"]),
        ref(2, 102, 1, "train", ["the two dogs at the corners"]),
        ref(3, 103, 1, "val", ["tiny cat"]),
        ref(4, 201, 2, "testA", ["red car"]),
        ref(5, 202, 2, "testB", ["the mirrored red car on the left side of the picture"]),
    ]
    with open(folder / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return folder, expected


def test_refer_loader_reads_polygons_and_rle(refer_folder):
    folder, expected = refer_folder
    samples = load_refer(folder)  # one refs file: splitBy found; images found where the toolkit puts them
    assert len(samples) == 6  # one sample per sentence
    assert [s.text for s in samples[:2]] == ["the big dog", "dog in the middle"]
    for s in samples:
        m = s.mask()
        assert m.dtype == np.uint8 and m.shape == (s.height, s.width)
        np.testing.assert_array_equal(m, expected[s.ann_id], err_msg=f"annotation {s.ann_id}")
        assert s.image().size == (s.width, s.height)
    assert samples[0].image_path.name == "COCO_train2014_000000000001.jpg"  # from instances.json, not the ref


def test_refer_splits(refer_folder):
    folder, _ = refer_folder
    assert {s.ann_id for s in load_refer(folder, split="train", split_by="unc")} == {101, 102}
    assert [s.ann_id for s in load_refer(folder, split="val")] == [103]
    assert [s.ann_id for s in load_refer(folder, split="testB")] == [202]
    assert {s.ann_id for s in load_refer(folder, split="test")} == {201, 202}  # the toolkit's 'test': every test split
    with pytest.raises(DataError, match=r"unknown split 'tset'.*available: testA, testB, train, val"):
        load_refer(folder, split="tset")


def test_refer_dataset_items_and_round_trip(refer_folder):
    folder, expected = refer_folder
    train = load_refer(folder, split="train")
    vocab = build_vocabulary(train)
    ds = ReferDataset(load_refer(folder), image_size=32, vocab=vocab, mean=MEAN, std=STD, max_words=20)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["words"].shape == (20,) and item["words"].dtype == torch.int64
    assert item["pad_mask"].dtype == torch.bool and item["pad_mask"].sum() == 20 - 3
    assert item["mask"].shape == (1, 32, 32) and item["mask"].dtype == torch.float32
    assert item["index"] == 0
    assert torch.equal(item["words"][:3], torch.from_numpy(vocab.encode("the big dog").words[0][:3]))
    # a 40x30 image fits as 32x24: rows 24+ are padding, the mean colour (0 after normalising, to
    # within the uint8 rounding of the fill colour)
    assert ds.letterbox(0).new_hw == (24, 32)
    assert item["image"][:, 24:].abs().max() < 0.01 and item["image"][:, :24].abs().min() > 0.5
    assert torch.all(item["mask"][:, 24:] == 0)
    assert ds.text(5).startswith("the mirrored") and ds.num_words(5) == 11
    short = ReferDataset(ds.samples, 32, vocab, MEAN, STD, max_words=5)
    assert short.num_words(5) == 5 and short[5]["words"].shape == (5,)  # Table 2 counts the words the model sees
    assert ds.image_path(0) == train[0].image_path
    # letterboxed mask mapped back onto the original image recovers the ground truth closely
    gt = ds.ground_truth(0)
    np.testing.assert_array_equal(gt, expected[101])
    back = ds.letterbox(0).invert(item["mask"][0].numpy()) > 0.5
    assert back.shape == gt.shape
    assert (back & (gt > 0)).sum() / (back | (gt > 0)).sum() > 0.9


def test_build_dataset_from_a_path(refer_folder):
    folder, _ = refer_folder
    vocab = Vocabulary(["the", "dog"])
    ds = build_dataset(f"{folder}:train", "val", 32, vocab, MEAN, STD)  # the split in the spec wins
    assert len(ds) == 3 and ds.name == "refcoco"
    assert ds.length_groups == [(1, 2), (3, 3), (4, 5), (6, 20)]
    assert parse_spec("synthetic:test") == ("synthetic", "test")
    assert parse_spec("synthetic", "val") == ("synthetic", "val")
    assert parse_spec(str(folder), "val") == (str(folder), "val")


# --- errors: DataError with a one-line, useful message --------------------------------------------


def _one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def test_error_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no such data set folder") as e:
        load_refer(tmp_path / "nope")
    _one_line(e)
    with pytest.raises(DataError, match="no such data set folder"):
        build_dataset(str(tmp_path / "nope"), None, 32, None, MEAN, STD)


def test_error_missing_files(refer_folder):
    folder, _ = refer_folder
    with pytest.raises(DataError, match=r"refs\(umd\)\.p: missing.*found splitBy: unc"):
        load_refer(folder, split_by="umd")
    (folder / "instances.json").unlink()
    with pytest.raises(DataError, match=r"instances\.json: missing") as e:
        load_refer(folder)
    _one_line(e)
    (folder / "refs(unc).p").unlink()
    with pytest.raises(DataError, match=r"one refs\(<splitBy>\)\.p file, found none"):
        load_refer(folder)


def test_error_several_refs_files(refer_folder):
    folder, _ = refer_folder
    (folder / "refs(google).p").write_bytes((folder / "refs(unc).p").read_bytes())
    with pytest.raises(DataError, match=r"several \(google, unc\); choose one with split_by"):
        load_refer(folder)
    assert len(load_refer(folder, split_by="google")) == 6


@pytest.mark.parametrize(
    "content, message",
    [
        ({"refs": []}, "expected a list of dicts"),
        ([{"ref_id": 1, "image_id": 1}], "lacks ann_id, split, sentences"),
        ([{"ref_id": 1, "ann_id": 1, "image_id": 1, "split": "train", "sentences": ["a dog"]}], "sentences must be dicts"),
        ([datetime.date(2020, 1, 1)], "refuses to load datetime.date"),
        (b"not a pickle at all", "not a readable refs pickle"),
    ],
)
def test_error_wrong_pickle(refer_folder, content, message):
    folder, _ = refer_folder
    path = folder / "refs(unc).p"
    path.write_bytes(content if isinstance(content, bytes) else pickle.dumps(content, protocol=2))
    with pytest.raises(DataError, match=re.escape(message)) as e:
        load_refer(folder)
    assert str(path) in _one_line(e)


def test_error_images(refer_folder, tmp_path):
    folder, _ = refer_folder
    with pytest.raises(DataError, match="no such image folder"):
        load_refer(folder, image_root=tmp_path / "elsewhere")
    samples = load_refer(folder)
    samples[0].image_path.write_bytes(b"\x89PNG garbage")
    ds = ReferDataset(samples, 32, Vocabulary([]), MEAN, STD)
    with pytest.raises(DataError, match="not a readable image") as e:
        ds[0]
    assert str(samples[0].image_path) in _one_line(e)
    samples[0].image_path.unlink()
    with pytest.raises(DataError, match="no such file"):
        ds[0]
    Image.new("RGB", (41, 30)).save(samples[0].image_path, format="JPEG")  # not the size instances.json says
    with pytest.raises(DataError, match="image is 41x30 but instances.json says 40x30"):
        ds[0]


def test_error_no_image_folder(refer_folder):
    folder, _ = refer_folder
    moved = folder.parent / "elsewhere"
    (folder.parent / "images").rename(moved)
    with pytest.raises(DataError, match="no image folder found.*pass image_root"):
        load_refer(folder)
    assert len(load_refer(folder, image_root=moved / "mscoco/images/train2014")) == 6


# --- the synthetic set ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "synthetic", seed=0, sizes=SIZES)


def _instances(root):
    return json.loads((Path(root) / "instances.json").read_text())


def test_synthetic_is_refer_layout_and_splits_are_disjoint(synthetic):
    assert sorted(p.name for p in synthetic.iterdir()) == ["images", "instances.json", "refs(synthetic).p"]
    assert not [p for p in synthetic.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    by_split = {s: load_refer(synthetic, split=s) for s in ("train", "val", "test")}
    images = {s: {x.image_id for x in v} for s, v in by_split.items()}
    assert {s: len(v) for s, v in images.items()} == SIZES
    assert not (images["train"] & images["val"] or images["train"] & images["test"] or images["val"] & images["test"])
    pixels = {s: {np.asarray(Image.open(x.image_path)).tobytes() for x in v} for s, v in by_split.items()}
    assert not (pixels["train"] & pixels["val"] or pixels["train"] & pixels["test"] or pixels["val"] & pixels["test"])
    sizes = {(x.width, x.height) for v in by_split.values() for x in v}
    assert len(sizes) > 3 and any(w != h for w, h in sizes)  # sizes vary, not always square
    with pytest.raises(DataError, match="already exists"):
        make_synthetic(synthetic, seed=0, sizes=SIZES)


def test_synthetic_is_deterministic(synthetic, tmp_path):
    again = make_synthetic(tmp_path / "again", seed=0, sizes=SIZES)
    assert _instances(again) == _instances(synthetic)
    assert (again / "refs(synthetic).p").read_bytes() == (synthetic / "refs(synthetic).p").read_bytes()
    for p in sorted((synthetic / "images").iterdir()):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(again / "images" / p.name)))
    other = make_synthetic(tmp_path / "other", seed=1, sizes=SIZES)
    assert _instances(other)["annotations"] != _instances(synthetic)["annotations"]
    # image i of a split depends on (seed, split, i) only
    fewer = make_synthetic(tmp_path / "fewer", seed=0, sizes={"train": 4, "val": 0, "test": 3})
    a = [im for im in _instances(synthetic)["images"] if im["id"] < 1_000_000][:4]
    assert [im for im in _instances(fewer)["images"] if im["id"] < 1_000_000] == a


def test_synthetic_masks_non_empty_and_every_object_referred(synthetic):
    inst = _instances(synthetic)
    samples = load_refer(synthetic)
    referred = defaultdict(int)
    for s in samples:
        referred[s.ann_id] += 1
    for ann in inst["annotations"]:
        m = decode_segmentation(ann["segmentation"], *ann["segmentation"]["size"])
        assert m.sum() == ann["area"] > 0
        assert referred[ann["id"]] >= 2  # several expressions per object
    per_image = defaultdict(int)
    for ann in inst["annotations"]:
        per_image[ann["image_id"]] += 1
    assert set(per_image.values()) <= {2, 3, 4} and len(per_image) == sum(SIZES.values())


# An interpreter written independently of the generator: "[the] [extreme] [size] [colour] noun
# [relation the [size] [colour] noun]", positions read from the mask box in one of three ways (its
# near edge, centre or far edge), compared strictly.
READINGS = ("low", "centre", "high")


def _interpret(text, objects, reading="centre"):
    x, y = (lambda o: o["x"][reading]), (lambda o: o["y"][reading])
    words = text.split()
    if words[0] == "the":
        words = words[1:]
    rel = next((r for r in RELATIONS if f" {r} the " in f" {' '.join(words)} "), None)
    if rel:
        left, right = " ".join(words).split(f" {rel} the ")
        (anchor,) = _noun_phrase(right.split(), objects, x, y)  # the anchor must be unique
        cands = _noun_phrase(left.split(), objects, x, y)
        dx = {
            "left of": lambda o: x(o) < x(anchor),
            "right of": lambda o: x(o) > x(anchor),
            "above": lambda o: y(o) < y(anchor),
            "below": lambda o: y(o) > y(anchor),
        }[rel]
        return [o for o in cands if o is not anchor and dx(o)]
    return _noun_phrase(words, objects, x, y)


def _noun_phrase(words, objects, x, y):
    extreme = words.pop(0) if words[0] in EXTREMES else None
    *attrs, noun = words
    assert noun in SHAPES or noun == "object", noun
    sel = [o for o in objects if (noun == "object" or o["shape"] == noun) and all(a in (o["size"], o["colour"]) for a in attrs)]
    if extreme:
        key = {
            "leftmost": lambda o: x(o),
            "rightmost": lambda o: -x(o),
            "topmost": lambda o: y(o),
            "bottommost": lambda o: -y(o),
        }[extreme]
        best = min(map(key, sel))
        sel = [o for o in sel if key(o) == best]
    return sel


def test_synthetic_every_expression_names_exactly_one_object(synthetic):
    """Under every reading of positions (edges or centres), each expression names its object alone."""
    inst = _instances(synthetic)
    objects = defaultdict(list)
    for ann in inst["annotations"]:
        x, y, w, h = mask_utils.toBbox(ann["segmentation"])
        box = {
            "x": dict(zip(READINGS, (x, x + (w - 1) / 2, x + w - 1))),
            "y": dict(zip(READINGS, (y, y + (h - 1) / 2, y + h - 1))),
        }
        objects[ann["image_id"]].append({**ann["attributes"], "id": ann["id"], **box})
    samples = load_refer(synthetic)
    kinds = set()
    for s in samples:
        for reading in READINGS:
            match = _interpret(s.text, objects[s.image_id], reading)
            assert [o["id"] for o in match] == [s.ann_id], f"{s.text!r} in image {s.image_id}, reading {reading}"
        kinds.add(
            "relation"
            if any(f" {r} " in s.text for r in RELATIONS)
            else "extreme"
            if any(e in s.text for e in EXTREMES)
            else "attribute"
        )
    assert kinds == {"attribute", "extreme", "relation"}


def test_shuffled_text_uses_another_object_of_the_same_image(synthetic):
    samples = load_refer(synthetic, split="train")
    texts_of = defaultdict(set)
    for s in samples:
        texts_of[(s.image_id, s.ann_id)].add(s.text)
    vocab = build_vocabulary(samples)
    ds = ReferDataset(samples, 96, vocab, MEAN, STD, shuffle_text=True, seed=3)
    assert len(ds) == len(samples) and ds.skipped == 0  # every synthetic image has 2-4 objects
    for i in range(len(ds)):
        s = ds.samples[i]
        assert ds.text(i) not in texts_of[(s.image_id, s.ann_id)]
        assert any(ds.text(i) in t for (img, ann), t in texts_of.items() if img == s.image_id and ann != s.ann_id)
    again = ReferDataset(samples, 96, vocab, MEAN, STD, shuffle_text=True, seed=3)
    assert [again.text(i) for i in range(len(again))] == [ds.text(i) for i in range(len(ds))]


def test_shuffled_text_drops_single_object_images(refer_folder):
    folder, _ = refer_folder
    samples = load_refer(folder, split="train")  # image 1: two objects, three sentences
    lone = load_refer(folder, split="testA")  # image 2, with only one of its objects
    ds = ReferDataset(samples + lone, 32, Vocabulary([]), MEAN, STD, shuffle_text=True)
    assert ds.skipped == 1 and len(ds) == len(samples)


def test_synthetic_dataset_items_round_trip(synthetic):
    samples = load_refer(synthetic, split="val")
    ds = ReferDataset(samples, 96, build_vocabulary(samples), MEAN, STD)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 96, 96) and item["mask"].shape == (1, 96, 96)
        assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
        gt = ds.ground_truth(i) > 0
        back = ds.letterbox(i).invert(item["mask"][0].numpy()) > 0.5
        assert (back & gt).sum() / (back | gt).sum() > 0.85, ds.text(i)
        rows, cols = np.nonzero(item["mask"][0].numpy())
        assert min(np.ptp(rows), np.ptp(cols)) + 1 >= 16  # objects span several 8x8 patches at 96x96


def test_synthetic_root_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTR_CACHE", str(tmp_path / "cache"))
    root = synthetic_root(seed=0, sizes=SIZES)
    assert root.parent == tmp_path / "cache" and f"v{VERSION}" in root.name
    stamp = (root / "instances.json").stat().st_mtime_ns
    assert synthetic_root(seed=0, sizes=SIZES) == root
    assert (root / "instances.json").stat().st_mtime_ns == stamp  # reused, not regenerated
    ds = build_dataset("synthetic:test", "train", 96, None, MEAN, STD, synthetic_sizes=SIZES)
    assert ds.name == "synthetic" and {s.split for s in ds.samples} == {"test"}
    assert ds.length_groups == [(1, 2), (3, 3), (4, 5), (6, 20)]
