"""Regenerate the golden vectors that the Python and C++ runtimes' tests both read.

    python tests/golden/make_golden.py                 # rewrite tests/golden/*.json, images/, masks/
    python tests/golden/make_golden.py --export DIR    # only make the deterministic export they use

tokenizer.json, tokenizer_authors.json: tricky expressions -> words, ids, truncation, unknown words
(vocabulary included), split by restr's tokenizer and by the authors' (`"tokenizer"`).
manifest_cases.json: a manifest and changes to it -> the first error restr.runtime.schema and
check_consistency report (the C++ reader validates with the same manifest.schema.json).
letterbox.json: photo sizes -> the letterbox [H, W, h, w] at the export's image size.
predictions.json + images/ + masks/: a few photos and expressions with the masks, areas and scores
the Python runtime gives on the export `make_export` writes (restr-tiny, seeded random weights:
tests/test_runtime.py's `make_tiny_export`). tests/test_golden.py keeps the Python runtime on
these files, runtime/cpp/tests the C++ host, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
MAX_WORDS = 20

TEXTS = [
    "The dog, left of the bench.",
    "  UPPER Case  ",
    "",
    "   ",
    ".",
    "..",
    "the dog. ",
    "the dog..",
    "hello,world!!the-man",
    "ÉCOLE élève",
    "İstanbul",  # lower() gives 'i' + U+0307 (a combining mark, not \w): two words
    "straße STRASSE",
    "ΣΟΦΟΣ σοφός",  # final sigma
    "naïve café",
    "nai\u0308ve",  # combining diaeresis splits the word, as in Python
    "snake_case_word __init__",
    "route 66 and 3rd",
    "x² ½ cup Ⅻ",  # numerics are \w
    "٣ arabic-indic digit",
    "日本語のテキスト",
    "emoji 🐶 dog",
    "tab\tsep\nnew line\x1fend",
    "\u00a0nbsp\u00a0",
    "\u2003em space\u3000",
    "a-b–c—d",
    "O'Neil's hat",
    "ǅungla ʰmodifier",  # titlecase and modifier letters
    "x\u200dy",  # zero-width joiner (format character) splits
    "\u212a kelvin",  # KELVIN SIGN lower-cases to k
    "\x1c the red car \x1d",
    "the red car on the left of the big tree next to the small man in the blue shirt with a hat and ball",
    "the " * 20 + "dog",
    "ﬁsh",
    # punctuation, which the authors' tokenizer keeps as tokens (as they are: with their spaces)
    "man's shirt",
    "the dog . ",
    "dog...",
    "(left) guy",
    "guy in red/white",
    "the man -- on the left ,",
    "\u00a0. , \u3000",
]

WORDS = "the dog cat man woman left right red blue car on of in hat bench shirt small big tree ball".split()
PUNCTUATION = ["'", "s", ",", ".", "...", "(", ")", "/", "-"]  # in the authors' vocabulary too

SIZES = [(56, 80), (96, 64), (80, 80), (1, 1), (1, 1000), (1000, 1), (479, 641), (3, 5), (333, 334), (7, 160)]

# (image width, height, seed) and the expressions asked about it
PHOTOS = [
    ((80, 56, 0), ["the red dog", "Zebra, qux.", "the man on the left"]),
    ((64, 96, 1), ["the small tree", "the " * 20 + "big ball"]),
    ((200, 150, 2), ["the blue car left of the woman", "a cat", "hat"]),
    ((33, 97, 3), ["shirt", "the bench on the right"]),
]


# (path into the manifest, new value; DELETE removes the field)
DELETE = "<delete>"
MANIFEST_CHANGES = [
    ([], None),
    (["patch_size"], 0),
    (["image_size"], "80"),
    (["vocab"], DELETE),
    (["format_version"], 2),
    (["graphs", "vision", "sha256"], "xyz"),
    (["graphs", "vision", "file"], "../vision.onnx"),
    (["graphs", "vision", "file"], ".."),
    (["graphs", "vision", "file"], "models/vision.onnx"),
    (["graphs", "vision", "file"], "vïsion.onnx"),  # any name without a folder part, non-ASCII too
    (["vocab", "sha256"], "0" * 64 + "\n"),  # Python's $ also matches before a final newline
    (["letterbox", "fill"], [1, 2]),
    (["letterbox", "fill"], "median"),
    (["normalization", "std"], [0.5, 0, 0.5]),
    (["threshold"], 1.5),
    (["threshold"], True),
    (["graphs", "vision", "inputs", 0, "shape"], ["batch", 3, 80, 81]),
    (["graphs", "language", "inputs"], []),
    (["graphs", "fusion_decoder", "outputs", 1, "name"], "patch_scores"),
    (["graphs", "vision", "inputs", 0, "dtype"], "float128"),
    (["graphs", "vision", "op_counts", "Cast"], -1),
    (["num_patches"], 99),
    (["image_size"], 81),
    (["model", "name"], ""),
    (["max_words"], 20.0),
    (["vocab", "size"], 1),
    (["graphs", "vision"], DELETE),
    (["engines"], {"vision_fp16": {"file": "v.engine"}}),
    (["letterbox", "align"], "centre"),  # the authors' pipeline (restr-b16-authors)
    (["letterbox", "align"], "center"),
    (["letterbox", "antialias"], 0),
    (["mask_from"], "logits"),
    (["mask_from"], "logit"),
    (["vocab", "tokenizer"], "authors"),
    (["vocab", "tokenizer"], "bert"),
]


def manifest_cases(export: Path) -> dict:
    import copy

    from restr.runtime.artifacts import check_consistency
    from restr.runtime.schema import first_error, manifest_schema

    base = json.loads((export / "manifest.json").read_text())
    cases = []
    for path, value in MANIFEST_CHANGES:
        m = copy.deepcopy(base)
        if path:
            node = m
            for key in path[:-1]:
                node = node[key]
            if value == DELETE:
                del node[path[-1]]
            else:
                node[path[-1]] = value
        cases.append({"path": path, "value": value, "error": first_error(manifest_schema(), m) or check_consistency(m)})
    return {"manifest": base, "delete": DELETE, "cases": cases}


def tokenizer_cases(tokenizer: str = "restr") -> dict:
    from restr.runtime.tokenizer import Vocabulary

    vocab = Vocabulary(WORDS + (PUNCTUATION if tokenizer == "authors" else []), tokenizer)
    cases = []
    for text in TEXTS:
        enc = vocab.encode([text], MAX_WORDS)
        cases.append(
            {
                "text": text,
                "words": vocab.split(text),
                "ids": enc.words[0].tolist(),
                "truncated": enc.truncated[0],
                "unknown": enc.unknown[0],
            }
        )
    return {"tokenizer": tokenizer, "max_words": MAX_WORDS, "vocab": vocab.itos, "cases": cases}


def letterbox_cases(image_size: int) -> dict:
    from restr.runtime.transforms import Letterbox

    rows = []
    for h, w in SIZES:
        lb = Letterbox.fit((h, w), image_size)
        rows.append({"height": h, "width": w, "letterbox": [*lb.src_hw, *lb.new_hw]})
    return {"image_size": image_size, "cases": rows}


def photo(w: int, h: int, seed: int) -> Image.Image:
    sys.path.insert(0, str(HERE.parent))
    from test_runtime import photo as make_photo

    return make_photo(w, h, seed=seed)


def make_export(out: Path) -> Path:
    """The deterministic export the golden predictions come from (restr-tiny, seeded weights)."""
    sys.path.insert(0, str(HERE.parent))
    from test_runtime import make_tiny_export

    make_tiny_export(out)
    return out


def predictions(export: Path) -> dict:
    from restr.runtime import Predictor

    predictor = Predictor.from_artifacts(export, threads=1, cache_size=0)
    (HERE / "images").mkdir(exist_ok=True)
    (HERE / "masks").mkdir(exist_ok=True)
    rows = []
    for n, ((w, h, seed), texts) in enumerate(PHOTOS, 1):
        name = f"images/photo{n}.png"
        photo(w, h, seed).save(HERE / name)
        rgb = np.asarray(Image.open(HERE / name).convert("RGB"))
        expected = []
        for k, p in enumerate(predictor.predict_image(rgb, texts, probs=False), 1):
            mask = f"masks/photo{n}_{k}.png"
            Image.fromarray(p.mask.astype(np.uint8) * 255).save(HERE / mask)
            expected.append(
                {
                    "text": p.text,
                    "mask": mask,
                    "area": p.area,
                    "score": p.score,
                    "patch_score": p.patch_score,
                    "unknown_words": p.unknown_words,
                    "no_known_words": p.no_known_words,
                    "truncated": p.truncated,
                }
            )
        rows.append({"image": name, "expressions": expected})
    return {"threshold": predictor.threshold, "score_atol": 1e-5, "photos": rows}


def write(name: str, obj: dict) -> None:
    (HERE / name).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, help="only write the deterministic export to this folder")
    args = ap.parse_args()
    if args.export:  # made afresh each time: a stale one would test old graphs against new golden files
        shutil.rmtree(args.export, ignore_errors=True)
        make_export(args.export)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        export = make_export(Path(tmp) / "export")
        image_size = json.loads((export / "manifest.json").read_text())["image_size"]
        write("tokenizer.json", tokenizer_cases("restr"))
        write("tokenizer_authors.json", tokenizer_cases("authors"))
        write("letterbox.json", letterbox_cases(image_size))
        write("manifest_cases.json", manifest_cases(export))
        write("predictions.json", predictions(export))


if __name__ == "__main__":
    main()
