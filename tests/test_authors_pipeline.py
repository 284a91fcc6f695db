"""The authors' pipeline around their model: their evaluation image transform in the export's
processing graphs and in restr.runtime.transforms (training and evaluation), and their tokenizer.

The references below are written from the authors' code (SouthFlame/restr at 371f102), not from
restr's modules: `dataset/referit_dataset_vit.py` (the photo as float32, `-= 127.5`, `/= 127.5`),
`utils/torchutils.py` `resize_and_pad` / `resize_and_crop` (torchvision 0.14's `TF.resize` on a
tensor: `F.interpolate(mode="bilinear", align_corners=False)`, no antialiasing), `eval/evaluate.py`
(`resize_and_crop(pred) >= 1e-9` on the logits) and `utils/text_processing.py`.
"""

import hashlib
import json
import math
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from restr.config import get_config
from restr.export.processing import postprocess_graph, preprocess_graph
from restr.runtime.tokenizer import Vocabulary, split_words
from restr.runtime.transforms import AUTHORS_TRANSFORM, RESTR_TRANSFORM, ImageTransform, Letterbox

VIT = (0.5, 0.5, 0.5)  # their STATS["vit"], the authors variant's mean and std
# (photo H, W, input side S): landscape, portrait, smaller than the input both ways, square, a sliver;
# odd padding (S - h or S - w) on both axes, so a centred offset rounded the other way shows
PHOTOS = [(480, 640, 96), (640, 480, 96), (30, 41, 96), (41, 23, 96), (96, 96, 96), (97, 96, 96), (7, 200, 96), (375, 500, 480)]


# ---------------------------------------------------------------- their code, as references


def their_dataset_image(photo: np.ndarray) -> torch.Tensor:
    """ReferDataSet_vit.__getitem__ at evaluation (no crop_size): (1, 3, H, W) float32."""
    image = np.asarray(photo, np.float32).copy()
    image -= tuple(np.round(255 * np.array(VIT), 2))
    image /= tuple(np.round(255 * np.array(VIT), 2))
    return torch.from_numpy(image.transpose((2, 0, 1)).copy())[None]


def their_resized(images: torch.Tensor, input_h: int, input_w: int, pick) -> tuple[torch.Tensor, int, int]:
    """What resize_and_pad (pick=min) and resize_and_crop (pick=max) share: the images resized by
    TF.resize, and the offset of the smaller into the larger (floor of half the difference)."""
    B, C, H, W = images.size()
    scale = pick(input_h / H, input_w / W)
    resized_h, resized_w = int(round(H * scale)), int(round(W * scale))
    off_h, off_w = int(math.floor(abs(input_h - resized_h)) / 2), int(math.floor(abs(input_w - resized_w)) / 2)
    return F.interpolate(images, size=[resized_h, resized_w], mode="bilinear", align_corners=False), off_h, off_w


def their_resize_and_pad(images: torch.Tensor, input_h: int, input_w: int) -> torch.Tensor:
    resize_image, pad_h, pad_w = their_resized(images, input_h, input_w, min)
    new_im = torch.zeros((*images.shape[:2], input_h, input_w)).float()
    new_im[..., pad_h : pad_h + resize_image.shape[2], pad_w : pad_w + resize_image.shape[3]] = resize_image
    return new_im


def their_resize_and_crop(images: torch.Tensor, input_h: int, input_w: int) -> torch.Tensor:
    resize_image, crop_h, crop_w = their_resized(images, input_h, input_w, max)
    return resize_image[..., crop_h : crop_h + input_h, crop_w : crop_w + input_w]


def their_indices(sentence: str, vocab_dict: dict) -> list[int]:
    """sentence2vocab_indices (an expression without tokens, which raises IndexError there, gives none)."""
    words = re.compile(r"(\W+)").split(sentence.strip())
    words = [w.lower() for w in words if len(w.strip()) > 0]
    if words and words[-1] == ".":
        words = words[:-1]
    return [(vocab_dict[w] if w in vocab_dict else vocab_dict["<unk>"]) for w in words]


# Logits differ by up to 16 between neighbours below, and float32 source coordinates put a pixel ~3e-5
# apart in torch, ONNX Runtime and numpy at 500 pixels: resized logits agree to ~5e-4, probabilities
# to a quarter of that. The masks must agree wherever their resized logit is further from 0 than this.
LOGIT_ATOL = 1e-3


def their_logits(h: int, w: int, s: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """Pixel logits with steep steps (i.i.d. per pixel: resizing probabilities instead of logits shows)
    within +-8, where float32 probabilities still carry the logit to 1e-4; and its sigmoid."""
    logits = torch.from_numpy(np.clip(np.random.default_rng(seed + h * w).normal(0, 4, (2, 1, s, s)), -8, 8).astype(np.float32))
    return torch.sigmoid(logits).numpy(), logits


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Noise over stripes: what a resize gets wrong shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(x / 3.0) * 100 + 128, np.cos(y / 2.0) * 100 + 128, ((x // 5 + y // 7) % 2) * 200 + 20], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def session(model) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def graphs() -> dict:
    return {
        s: (session(preprocess_graph(s, VIT, VIT, AUTHORS_TRANSFORM)), session(postprocess_graph(s, AUTHORS_TRANSFORM)))
        for s in (96, 480)
    }


def test_the_photo_sizes_have_odd_padding_both_ways():
    pads = [(s - Letterbox.fit((h, w), s).new_hw[0], s - Letterbox.fit((h, w), s).new_hw[1]) for h, w, s in PHOTOS]
    assert any(ph % 2 for ph, _ in pads) and any(pw % 2 for _, pw in pads)


# ---------------------------------------------------------------- the processing graphs


@pytest.mark.parametrize("h, w, s", PHOTOS)
def test_preprocess_graph_is_their_resize_and_pad(graphs, h, w, s):
    rgb = photo(h, w)
    image, letterbox = graphs[s][0].run(None, {"rgb": rgb})
    want = their_resize_and_pad(their_dataset_image(rgb), s, s).numpy()
    nh, nw = round(h * min(s / h, s / w)), round(w * min(s / h, s / w))
    assert letterbox.tolist() == [h, w, nh, nw]
    top, left = (s - nh) // 2, (s - nw) // 2
    inside = np.zeros((s, s), bool)
    inside[top : top + nh, left : left + nw] = True
    assert np.abs(image - want).max() <= 1e-4  # float32 coordinates: ONNX Runtime's and torch's differ by ~1e-5 at 640 pixels
    assert (image[..., ~inside] == 0).all()  # their canvas of zeros: the mean


@pytest.mark.parametrize("h, w, s", PHOTOS)
def test_postprocess_graph_is_their_resize_and_crop(graphs, h, w, s):
    probs, logits = their_logits(h, w, s, seed=1)
    scale = min(s / h, s / w)
    letterbox = np.array([h, w, round(h * scale), round(w * scale)], np.int64)
    got, mask, score, area = graphs[s][1].run(
        None, {"pixel_probs": probs, "letterbox": letterbox, "threshold": np.array([0.5], np.float32)}
    )
    back = their_resize_and_crop(logits, h, w)[:, 0].numpy()
    assert got.shape == mask.shape == (2, h, w)
    decided = np.abs(back) > LOGIT_ATOL
    assert decided.mean() > 0.99 and np.array_equal(mask[decided], (back >= 1e-9)[decided])
    assert np.abs(got - torch.sigmoid(torch.from_numpy(back)).numpy()).max() <= LOGIT_ATOL / 4
    assert area.tolist() == mask.sum((1, 2)).tolist()
    np.testing.assert_allclose(score, [g[m].mean() if m.any() else 0 for g, m in zip(got, mask)], atol=1e-5)


def test_postprocess_graph_threshold_is_a_probability(graphs):
    """threshold 0.5 is their 1e-9 on the logits; another threshold is logit(threshold) on them."""
    probs, logits = their_logits(40, 70, 96, seed=2)
    letterbox = np.array([40, 70, 55, 96], np.int64)
    for t in (0.2, 0.5, 0.9):
        (mask,) = graphs[96][1].run(
            ["mask"], {"pixel_probs": probs, "letterbox": letterbox, "threshold": np.array([t], np.float32)}
        )
        back = their_resize_and_crop(logits, 40, 70)[:, 0].numpy()
        bound = math.log(t / (1 - t))
        decided = np.abs(back - bound) > LOGIT_ATOL
        assert np.array_equal(mask[decided], (back >= bound + 1e-9)[decided])


# ---------------------------------------------------------------- training and evaluation (restr.runtime.transforms)


@pytest.mark.parametrize("h, w, s", PHOTOS)
def test_letterbox_is_their_transform(h, w, s):
    """What restr.data feeds the authors variant in training and restr-eval scores it with."""
    rgb = photo(h, w, seed=3)
    lb = Letterbox.fit((h, w), s, AUTHORS_TRANSFORM)
    x = lb.input(Image.fromarray(rgb), VIT, VIT)
    assert np.abs(x - their_resize_and_pad(their_dataset_image(rgb), s, s)[0].numpy()).max() <= 1e-5
    probs, logits = their_logits(h, w, s, seed=4)
    back = their_resize_and_crop(logits, h, w)[:, 0].numpy()
    decided = np.abs(back) > LOGIT_ATOL
    for k in range(2):
        assert np.array_equal(lb.invert_mask(probs[k, 0], 0.5)[decided[k]], (back[k] >= 1e-9)[decided[k]])
        assert np.abs(lb.invert(probs[k, 0]) - torch.sigmoid(torch.from_numpy(back[k])).numpy()).max() <= LOGIT_ATOL / 4
    gt = np.zeros((h, w), np.uint8)
    gt[h // 4 : h // 2 + 1, w // 3 : w // 2 + 1] = 1
    square = lb.mask(gt)
    (top, left), (nh, nw) = lb.offset, lb.new_hw
    assert square[top : top + nh, left : left + nw].any() and square.sum() == square[top : top + nh, left : left + nw].sum()


def test_the_dataset_uses_the_models_transform_and_tokenizer(tmp_path):
    from restr.data import build_dataset, make_synthetic

    data = make_synthetic(tmp_path / "synthetic", seed=0, sizes={"train": 4, "val": 2, "test": 2})
    cfg = get_config("restr-b16-authors").replace(image_size=64)
    ds = build_dataset(
        str(data),
        "train",
        cfg.image_size,
        None,
        cfg.image_mean,
        cfg.image_std,
        cfg.max_words,
        transform=cfg.image_transform,
        tokenizer=cfg.tokenizer,
    )
    assert ds.vocab.tokenizer == "authors" and ds.letterbox(0).transform == AUTHORS_TRANSFORM
    rgb = np.asarray(ds.samples[0].image())
    want = their_resize_and_pad(their_dataset_image(rgb), 64, 64)[0].numpy()
    assert np.abs(ds.arrays(0)["image"] - want).max() <= 1e-5
    restr_ds = build_dataset(
        str(data), "train", cfg.image_size, ds.vocab, cfg.image_mean, cfg.image_std, cfg.max_words, tokenizer="restr"
    )
    assert restr_ds.vocab.tokenizer == "restr" and restr_ds.vocab == ds.vocab
    assert np.abs(restr_ds.arrays(0)["image"] - want).max() > 0.1  # restr's top-left letterbox: another input


# ---------------------------------------------------------------- the tokenizer

TEXTS = [
    "man's shirt",
    "The dog, left of the bench.",
    "the dog . ",
    "dog...",
    "(left) guy",
    "İstanbul",
    "",
    ".",
    "a  b",
    "guy in red/white",
    "the man -- on the left ,",
    "far-right zebra!",
    "naïve café",
    "x² ½",
]
THEIR_WORDS = [
    "<pad>",
    "<go>",
    "<eos>",
    "<unk>",
    "man",
    "'",
    "s",
    "shirt",
    "the",
    "dog",
    ",",
    ".",
    "left",
    "...",
    "(",
    ")",
    "/",
    "guy",
]


def test_authors_tokenizer_is_theirs():
    vocab = Vocabulary(THEIR_WORDS, tokenizer="authors")
    theirs = {w: n for n, w in enumerate(THEIR_WORDS)}
    enc = vocab.encode(TEXTS, 20)
    for text, ids, pad in zip(TEXTS, enc.words, enc.pad_mask):
        want = [vocab.stoi[THEIR_WORDS[i]] for i in their_indices(text, theirs)]
        assert ids[~pad].tolist() == want, text
    assert split_words("man's shirt", "authors") == ["man", "'", "s", "shirt"] and split_words("man's shirt") == [
        "man",
        "s",
        "shirt",
    ]
    assert vocab.split("İstanbul") == ["i\u0307stanbul"]  # split, then lower-cased: one word
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        Vocabulary(THEIR_WORDS, tokenizer="bert")


def test_tokenizer_goldens_are_what_the_tokenizers_give():
    from conftest import load_golden as _load, make_golden as _make_golden

    make = _make_golden()
    assert make.tokenizer_cases("authors") == _load("tokenizer_authors.json")
    assert make.tokenizer_cases("restr") == _load("tokenizer.json")
    authors = {c["text"]: c for c in _load("tokenizer_authors.json")["cases"]}
    restr = {c["text"]: c for c in _load("tokenizer.json")["cases"]}
    assert len(authors["man's shirt"]["words"]) == 4 and len(restr["man's shirt"]["words"]) == 3
    assert sum(authors[t]["words"] != restr[t]["words"] for t in authors) >= 10


@pytest.fixture(scope="module")
def cpp_split_words(tmp_path_factory):
    """runtime/cpp/src/tokenizer.cpp, compiled with tests/cpp/split_words.cpp: its split_words as a program."""
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if (
        not (shutil.which("g++") and shutil.which("pkg-config"))
        or subprocess.run(["pkg-config", "--exists", "icu-uc"]).returncode
    ):
        pytest.skip("g++ and ICU (libicu-dev) are needed to build the C++ tokenizer")
    exe = tmp_path_factory.mktemp("cpp") / "split_words"
    icu = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "icu-uc", "icu-i18n"], capture_output=True, text=True, check=True
    ).stdout.split()
    subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-O1",
            "-I",
            str(root / "runtime/cpp/src"),
            "-I",
            str(root / "runtime/cpp/include"),
            str(root / "tests/cpp/split_words.cpp"),
            str(root / "runtime/cpp/src/tokenizer.cpp"),
            *icu,
            "-o",
            str(exe),
        ],
        check=True,
    )

    def run(tokenizer: str, texts: list[str]) -> list[list[str] | str]:
        out = subprocess.run(
            [str(exe), tokenizer],
            input="".join(t.encode().hex() + "\n" for t in texts),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        return [line if line.startswith("ERROR ") else [bytes.fromhex(w).decode() for w in line.split()] for line in out]

    return run


@pytest.mark.parametrize("golden", ["tokenizer.json", "tokenizer_authors.json"])
def test_cpp_tokenizer_gives_the_golden_words(cpp_split_words, golden):
    from conftest import load_golden as _load

    g = _load(golden)
    got = cpp_split_words(g["tokenizer"], [c["text"] for c in g["cases"]])
    assert got == [c["words"] for c in g["cases"]]
    stoi = {w: i for i, w in enumerate(g["vocab"])}
    for words, c in zip(got, g["cases"]):  # the ids follow from the words: the C++ encode's lookup, truncation and padding
        ids = [stoi.get(w, 1) for w in words][: g["max_words"]]
        assert ids + [0] * (g["max_words"] - len(ids)) == c["ids"]
    assert cpp_split_words("bert", ["a"]) == ['ERROR unknown tokenizer "bert" (restr or authors)']


# ---------------------------------------------------------------- restr's own graphs

# sha256 of restr's default processing graphs (before the authors' transform existed): byte for byte
DEFAULT_GRAPHS = {
    "restr-b16": (
        "4d38cd3f42c6550406f12ad3ca4a7b51c32686bc6a90b740ecb13422bf0454bf",
        "652484b30c5f6d393c52538f0c6c6d62221af62d077ce71830e6705eb2d93164",
    ),
    "restr-tiny": (
        "173aaa235bab5b9ccaca2e444a1c1bf25247c6029c23a1bbaf643bb6dbb079bc",
        "c2522a6a452189f79c0d51e74b8c06dbc5892eb67f4ef50efc1d38126a53d692",
    ),
}


@pytest.mark.parametrize("name", DEFAULT_GRAPHS)
def test_restr_default_processing_graphs_are_unchanged(name):
    cfg = get_config(name)
    pre = preprocess_graph(cfg.image_size, cfg.image_mean, cfg.image_std, cfg.image_transform).SerializeToString()
    post = postprocess_graph(cfg.image_size, cfg.image_transform).SerializeToString()
    assert (hashlib.sha256(pre).hexdigest(), hashlib.sha256(post).hexdigest()) == DEFAULT_GRAPHS[name]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from restr.export.pipeline import ExportOptions, export_artifacts, load_source

    folder = tmp_path_factory.mktemp("tiny") / "export"
    export_artifacts(
        load_source(config="restr-tiny"),
        folder,
        ExportOptions(precisions=("fp32",), engine=False, verify=False, progress=False, threads=1),
        log=lambda _: None,
    )
    return folder


def test_default_export_manifest_records_restr_pipeline(tiny_export):
    m = json.loads((tiny_export / "manifest.json").read_text())
    assert m["letterbox"] == {"align": "top-left", "fill": "mean", "antialias": True}
    assert m["mask_from"] == "probabilities" and m["vocab"]["tokenizer"] == "restr"
    assert ImageTransform.of_manifest(m) == ImageTransform.of_manifest({}) == RESTR_TRANSFORM  # older exports: restr's


def test_the_runtime_splits_as_the_manifest_says(tiny_export, tmp_path):
    import shutil

    from restr.runtime import Artifacts

    folder = tmp_path / "export"
    shutil.copytree(tiny_export, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["vocab"]["tokenizer"] = "authors"
    (folder / "manifest.json").write_text(json.dumps(m))
    assert Artifacts.open(folder).vocabulary().tokenizer == "authors"
