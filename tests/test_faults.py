"""Fault tests: a fuzzed manifest, damaged graph files, `kill -9` mid-export and mid-predict, and a
predictor shared by 16 threads. Each failure must be one line (ArtifactError / exit code 2), with no
traceback and nothing written; each run must be bounded in time (the whole file: about a minute on
2 CPU cores)."""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("torch")

from restr.export.pipeline import ExportOptions, export_artifacts, load_source  # noqa: E402
from restr.runtime import Predictor  # noqa: E402
from restr.runtime.artifacts import ArtifactError, Artifacts, check_consistency  # noqa: E402
from restr.runtime.cli import main as predict_main  # noqa: E402
from restr.runtime.schema import first_error, manifest_schema  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# informational subtrees: fuzzed only at their top (wrong type, removed), not leaf by leaf
INFO = {("model", "config"), ("verification",), ("versions",), ("tensorrt",)}


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A random-weight restr-tiny export (FP32 graphs), as `restr-export --config restr-tiny` makes it."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("faults") / "export"
    export_artifacts(load_source(config="restr-tiny"), out, ExportOptions(threads=1, progress=False, precisions=("fp32",), engine=False),
                     log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------ manifest fuzz


def _paths(node, path=()):
    """Every field path of a JSON value (dict keys and list indices), parents before children."""
    yield path
    if path in INFO:
        return
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


def _wrong_types(value) -> list:
    if isinstance(value, bool):
        return ["yes", 1]
    if isinstance(value, (int, float)):
        return [str(value), None, [value]]
    if isinstance(value, str):
        return [7, None, [value]]
    if isinstance(value, list):
        return [{"0": value[0]} if value else {}, "list"]
    if isinstance(value, dict):
        return [[value], "object"]
    return [0]


def _out_of_range(value) -> list:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [0, -1, 10**12]
    if isinstance(value, float):
        return [-1.0, 1e12]
    if isinstance(value, str):
        return ["", "../outside"]
    if isinstance(value, list):
        return [[]]
    return []


def mutations(m: dict):
    """(description, manifest) for every field removed, given a wrong type, or put out of range."""
    for path in _paths(m):
        if not path:
            continue
        parent = m
        for p in path[:-1]:
            parent = parent[p]
        value = parent[path[-1]]
        where = ".".join(map(str, path))
        changes = [("removed", None)] if isinstance(parent, dict) else []
        changes += [(f"= {json.dumps(v)}", v) for v in _wrong_types(value) + _out_of_range(value)]
        for what, v in changes:
            new = copy.deepcopy(m)
            target = new
            for p in path[:-1]:
                target = target[p]
            if what == "removed":
                del target[path[-1]]
            else:
                target[path[-1]] = v
            yield f"{where} {what}", new


def test_manifest_fuzz_every_field(export, tmp_path, image):
    """Every mutation either loads and predicts, or is refused with one ArtifactError line."""
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    original = json.loads((export / "manifest.json").read_text())
    refused, loaded, wrong = 0, 0, []
    t0 = time.perf_counter()
    cases = list(mutations(original))
    for what, m in cases:
        (folder / "manifest.json").write_text(json.dumps(m))
        try:
            Predictor.from_artifacts(folder, threads=1).predict_image(image, "the dog")
            loaded += 1
        except ArtifactError as e:
            refused += 1
            if "\n" in str(e) or not str(e).startswith(str(folder)):
                wrong.append(f"{what}: not one line naming the folder: {e!r}")
        except Exception as e:  # noqa: BLE001 - what the fuzz looks for
            wrong.append(f"{what}: {type(e).__name__}: {str(e)[:160]}")
    assert not wrong, f"{len(wrong)} of {len(cases)} mutations escaped as other errors:\n" + "\n".join(wrong[:30])
    # the fuzz is not vacuous: most mutations are impossible manifests, and the known ones are refused
    assert refused > 0.6 * len(cases) and loaded > 10, (refused, loaded, len(cases))
    assert time.perf_counter() - t0 < 120


@pytest.mark.parametrize("field, value, message", [
    ("patch_size", 0, "patch_size: 0 is below the minimum 1"),
    ("patch_size", 7, "image_size 80 is not a multiple of patch_size 7"),
    ("num_patches", 99, "num_patches 99 is not (image_size / patch_size)^2 = 100"),
    ("max_words", 21, "graphs.end_to_end: tensor 'words' has shape ['batch', 20], the manifest's sizes give [batch, 21]"),
    ("image_size", "80", 'image_size: "80" is not an integer'),
    ("threshold", 1.5, "threshold: 1.5 is above the maximum 1"),
    ("max_batch", True, "max_batch: true is not an integer"),
    ("vocab", {"file": "../vocab.txt"}, 'vocab.file: "../vocab.txt" is not of the expected form'),
])
def test_impossible_values_name_the_field(export, tmp_path, field, value, message):
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m[field] = value
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError) as e:
        Artifacts.open(folder)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_nan_is_not_a_json_number(export, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    text = (folder / "manifest.json").read_text().replace('"threshold": 0.5', '"threshold": NaN')
    (folder / "manifest.json").write_text(text)
    with pytest.raises(ArtifactError, match="not a readable JSON manifest .*NaN is not a JSON number"):
        Artifacts.open(folder)


def test_schema_is_valid_and_agrees_with_jsonschema(export):
    """The shipped schema is a valid Draft 2020-12 schema, the manifest the exporter wrote satisfies
    it, and the runtime's small validator gives the verdict the reference implementation gives on
    every fuzzed manifest."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = manifest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    written = json.loads((export / "manifest.json").read_text())
    assert list(validator.iter_errors(written)) == [] and first_error(schema, written) is None
    assert check_consistency(written) is None
    disagree = []
    for what, m in mutations(written):
        ours, theirs = first_error(schema, m), next(iter(validator.iter_errors(m)), None)
        if (ours is None) != (theirs is None):
            disagree.append(f"{what}: ours {ours!r}, jsonschema {theirs.message if theirs else None!r}")
    assert not disagree, "\n".join(disagree[:20])


def test_schema_allows_what_the_manifest_is_growing():
    """Graph entries from the next exporter (preprocess / postprocess graphs, op_counts, attention
    fields, an 'image_batch' first axis) pass; the validator refuses keywords it does not implement."""
    schema = manifest_schema()
    tensor = {"name": "visual_features", "dtype": "float32", "shape": ["image_batch", 100, 96]}
    graph = {"file": "preprocess.onnx", "sha256": "0" * 64, "inputs": [tensor], "outputs": [tensor],
             "op_counts": {"MatMul": 12}, "attention": {"kind": "sdpa"}}
    base = {"format_version": 1, "image_size": 80, "patch_size": 8, "max_words": 20, "num_patches": 100, "feature_width": 96,
            "vocab": {"file": "vocab.txt"}, "graphs": {"preprocess": graph, "postprocess": graph}}
    assert first_error(schema, base) is None and check_consistency(base) is None
    bad = copy.deepcopy(base)
    bad["graphs"]["preprocess"]["op_counts"]["MatMul"] = -1
    assert first_error(schema, bad) == "graphs.preprocess.op_counts.MatMul: -1 is below the minimum 0"
    with pytest.raises(ValueError, match="not supported"):
        first_error({"oneOf": [{}]}, 1)


# --------------------------------------------------------------------------------- graph-file fuzz


def _damage(folder: Path, kind: str, fix_checksum: bool) -> None:
    """Truncate, flip a bit of, or swap the vision graph (and, if asked, update its manifest sha256)."""
    from restr.runtime.artifacts import sha256_file

    path = folder / "vision.onnx"
    data = path.read_bytes()
    if kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "bit-flipped":
        i = len(data) // 3
        data = data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :]
    elif kind == "swapped":
        data = (folder / "language.onnx").read_bytes()
    path.write_bytes(data)
    if fix_checksum:
        m = json.loads((folder / "manifest.json").read_text())
        m["graphs"]["vision"]["sha256"] = sha256_file(path)
        (folder / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("kind", ["truncated", "bit-flipped", "swapped"])
def test_damaged_graph_file_one_line_and_nothing_written(export, tmp_path, image, kind):
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    _damage(folder, kind, fix_checksum=False)
    with pytest.raises(ArtifactError, match=r"vision.onnx: sha256 .* does not match"):
        Predictor.from_artifacts(folder, threads=1)
    out = tmp_path / "pred"
    r = CliRunner().invoke(predict_main, ["--artifacts", str(folder), "--image", str(image), "--text", "the dog", "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output and r.stderr.count("\n") == 1, r.output
    assert "vision.onnx: sha256" in r.stderr and not out.exists()


@pytest.mark.parametrize("kind, message", [("truncated", "not a loadable ONNX graph"), ("swapped", "graph inputs .* do not match")])
def test_damaged_graph_with_matching_checksum(export, tmp_path, kind, message):
    """A file whose checksum was recomputed (an exporter bug, a hand edit) is still refused in one line."""
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    _damage(folder, kind, fix_checksum=True)
    with pytest.raises(ArtifactError, match=message) as e:
        Predictor.from_artifacts(folder, threads=1)
    assert "\n" not in str(e.value)


def test_damaged_vocab(export, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    (folder / "vocab.txt").write_bytes((folder / "vocab.txt").read_bytes()[:-7])
    with pytest.raises(ArtifactError, match="vocab.txt: sha256 does not match"):
        Predictor.from_artifacts(folder, threads=1)
