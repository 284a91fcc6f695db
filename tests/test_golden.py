"""The Python runtime against tests/golden, the vectors the C++ host's tests read too
(runtime/cpp/tests/test_golden.cpp): if either runtime drifts, its own tests fail.
Regenerate with `python tests/golden/make_golden.py` after a deliberate change."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import GOLDEN, load_golden, make_golden
from restr.runtime.artifacts import check_consistency
from restr.runtime.schema import first_error, manifest_schema
from restr.runtime.transforms import Letterbox


def test_tokenizer_golden_is_what_the_tokenizer_gives():
    assert make_golden().tokenizer_cases() == load_golden("tokenizer.json")


def test_tokenizer_golden_covers_the_tricky_cases():
    words = {c["text"]: c["words"] for c in load_golden("tokenizer.json")["cases"]}
    assert words["İstanbul"] == ["i", "stanbul"]  # lower() adds U+0307, a combining mark: not \w
    assert words[""] == [] and words["the dog. "] == ["the", "dog"]
    assert words["snake_case_word __init__"] == ["snake_case_word", "__init__"]
    assert any(c["truncated"] for c in load_golden("tokenizer.json")["cases"])


def test_letterbox_golden_is_what_letterbox_fit_gives():
    g = load_golden("letterbox.json")
    assert make_golden().letterbox_cases(g["image_size"]) == g
    assert [Letterbox.fit((c["height"], c["width"]), g["image_size"]).new_hw for c in g["cases"]] == [
        tuple(c["letterbox"][2:]) for c in g["cases"]
    ]


def test_manifest_golden_errors_are_the_validators():
    g = load_golden("manifest_cases.json")
    assert any(c["error"] is None for c in g["cases"]) and sum(c["error"] is not None for c in g["cases"]) >= 15
    for case in g["cases"]:
        m = copy.deepcopy(g["manifest"])
        if case["path"]:
            node = m
            for key in case["path"][:-1]:
                node = node[key]
            if case["value"] == g["delete"]:
                del node[case["path"][-1]]
            else:
                node[case["path"][-1]] = case["value"]
        assert (first_error(manifest_schema(), m) or check_consistency(m)) == case["error"], case["path"]


@pytest.fixture(scope="module")
def golden_export(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    return make_golden().make_export(tmp_path_factory.mktemp("golden") / "export")


def test_predictions_golden_on_the_python_runtime(golden_export):
    from restr.runtime import Predictor
    from restr.runtime.predictor import TextTruncatedWarning

    g = load_golden("predictions.json")
    predictor = Predictor.from_artifacts(golden_export, threads=1, cache_size=0)
    lb = load_golden("letterbox.json")
    for c in lb["cases"]:  # the preprocess graph's geometry is the golden one
        _, got = predictor.preprocess(np.full((c["height"], c["width"], 3), 128, np.uint8))
        assert [*got.src_hw, *got.new_hw] == c["letterbox"]
    for photo in g["photos"]:
        rgb = np.asarray(Image.open(GOLDEN / photo["image"]).convert("RGB"))
        want = photo["expressions"]
        with warnings.catch_warnings(record=True) as caught:  # one per expression cut to N_l words
            warnings.simplefilter("always", TextTruncatedWarning)
            got = predictor.predict_image(rgb, [e["text"] for e in want], probs=False)
        assert sum(issubclass(w.category, TextTruncatedWarning) for w in caught) == sum(e["truncated"] for e in want)
        for p, e in zip(got, want):
            assert np.array_equal(p.mask, np.asarray(Image.open(GOLDEN / e["mask"])) > 127), e["text"]
            assert p.area == e["area"]
            assert abs(p.score - e["score"]) <= g["score_atol"] and abs(p.patch_score - e["patch_score"]) <= g["score_atol"]
            assert (p.unknown_words, p.no_known_words, p.truncated) == (e["unknown_words"], e["no_known_words"], e["truncated"])


def test_the_writer_checks_the_manifest_as_readers_do(tmp_path):
    """restr-export writes manifest.json through write_manifest: what the schema refuses is never written."""
    from restr.export.manifest import write_manifest

    g = load_golden("manifest_cases.json")
    write_manifest(tmp_path, g["manifest"])
    assert json.loads((tmp_path / "manifest.json").read_text()) == g["manifest"]
    bad = copy.deepcopy(g["manifest"])
    bad["patch_size"] = 0
    with pytest.raises(ValueError, match="the manifest to be written is invalid: patch_size: 0 is below the minimum 1"):
        write_manifest(tmp_path / "other", bad)
    assert not (tmp_path / "other").exists()
