"""Every command, every kind of user mistake: one line on stderr, `prog: error: ...`, exit code 2,
nothing written, and outputs checked before any work (issue 13, item 3; help texts, item 7)."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from restr.benchmarks.cli import main as bench_main
from restr.evaluate import main as eval_main
from restr.export.cli import cli as export_main
from restr.runtime.cli import main as predict_main
from restr.train import main as train_main

COMMANDS = {
    "restr-train": train_main,
    "restr-eval": eval_main,
    "restr-export": export_main,
    "restr-predict": predict_main,
    "restr-bench": bench_main,
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small data set, a real checkpoint, a tiny export, an image, and the wrong files users give."""
    import torch

    from conftest import make_tiny_export, photo
    from restr.checkpoint import save_checkpoint
    from restr.config import get_config
    from restr.data import make_synthetic
    from restr.modeling import ReSTR
    from restr.runtime.tokenizer import Vocabulary

    root = tmp_path_factory.mktemp("files")
    data = make_synthetic(root / "data", seed=0, sizes={"train": 8, "val": 4, "test": 4})
    vocab = Vocabulary("the small big red green blue circle square triangle left right of".split())
    torch.manual_seed(0)
    save_checkpoint(root / "model.pt", ReSTR(get_config("restr-tiny").replace(image_size=32), len(vocab)), vocab, {})
    export = make_tiny_export(root / "export").folder
    photo(40, 30).save(root / "photo.png")
    (root / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 a JPEG that is not a checkpoint")
    (root / "notes.txt").write_text("not a picture")
    (root / "a-file").write_text("a file, not a folder")
    return {
        "data": str(data),
        "ckpt": str(root / "model.pt"),
        "export": str(export),
        "photo": str(root / "photo.png"),
        "jpg": str(root / "photo.jpg"),
        "txt": str(root / "notes.txt"),
        "file": str(root / "a-file"),
        "root": root,
    }


def invoke(prog: str, args: list[str]):
    return CliRunner().invoke(COMMANDS[prog], [str(a) for a in args], prog_name=prog)


def one_line_error(r, prog: str, pattern: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert isinstance(r.exception, SystemExit), r.exception  # handled, not a traceback
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


MISSPELT = {
    "restr-train": (["--out", "{root}/t", "--iteratons", "3"], "--iterations"),
    "restr-eval": (["--ckpt", "{ckpt}", "--data", "synthetic:test", "--thresold", "0.3"], "--threshold"),
    "restr-export": (["--config", "restr-tiny", "--out", "{root}/e", "--forse"], "--force"),
    "restr-predict": (["--artifacts", "{export}", "--imag", "{photo}"], "--image"),
    "restr-bench": (["--mac"], "--macs"),
}


def fill(args, files):
    return [a.format(**files) if isinstance(a, str) else a for a in args]


@pytest.mark.parametrize("prog", list(COMMANDS))
def test_misspelt_option_is_one_line_with_a_suggestion(prog, files):
    args, right = MISSPELT[prog]
    line = one_line_error(invoke(prog, fill(args, files)), prog, "(?i)did you mean")
    assert right in line and "Usage:" not in line


NOT_A_CHECKPOINT = {
    "restr-train": (["--data", "{data}", "--out", "{root}/t-glove", "--glove", "{txt}", "--iterations", "1"], "{txt}"),
    "restr-eval": (["--ckpt", "{jpg}", "--data", "{data}:test"], "not a PyTorch file"),
    "restr-export": (["--ckpt", "{jpg}", "--out", "{root}/e-jpg"], "not a PyTorch file"),
    "restr-predict": (["--artifacts", "{file}", "--image", "{photo}", "--text", "the dog", "--out", "{root}/p-art"], "{file}"),
    "restr-bench": (["--engine", "{jpg}"], "unknown engine type"),
}


@pytest.mark.parametrize("prog", list(COMMANDS))
def test_a_file_of_the_wrong_kind_is_one_line(prog, files):
    args, pattern = NOT_A_CHECKPOINT[prog]
    one_line_error(invoke(prog, fill(args, files)), prog, re.escape(pattern.format(**files)) if "{" in pattern else pattern)
    assert not [p for p in files["root"].iterdir() if p.name.startswith(("t-", "e-", "p-"))]  # nothing written


def test_an_image_is_not_a_checkpoint(files):
    """It used to say '(truncated or not a torch file: 101)'."""
    from restr.checkpoint import CheckpointError, read_checkpoint_dict

    with pytest.raises(CheckpointError, match=r"photo\.jpg: not a readable checkpoint: not a PyTorch file"):
        read_checkpoint_dict(files["jpg"])


UNWRITABLE = {
    # a path under a file, or under /proc (where even root cannot create files)
    "restr-train": (["--data", "{data}", "--out", "{file}/t", "--iterations", "1"], "--out"),
    "restr-eval": (["--ckpt", "{ckpt}", "--data", "{data}:test", "--json", "/proc/restr-e.json"], "--json"),
    "restr-export": (["--config", "restr-tiny", "--out", "{file}/exp", "--no-verify"], "--out"),
    "restr-predict": (["--artifacts", "{export}", "--image", "{photo}", "--text", "the dog", "--out", "{file}/o"], "--out"),
    "restr-bench": (["--macs", "--json", "/proc/restr-b.json"], "--json"),
}


@pytest.mark.parametrize("prog", list(COMMANDS))
def test_unwritable_output_is_refused_before_any_work(prog, files):
    args, option = UNWRITABLE[prog]
    r = invoke(prog, fill(args, files))
    one_line_error(r, prog, re.escape(option))
    assert r.stdout == ""  # no table, no progress: the check came first


def test_unwritable_outputs_of_predict_and_export_json(files):
    r = invoke(
        "restr-predict",
        [
            "--artifacts",
            files["export"],
            "--image",
            files["photo"],
            "--text",
            "the dog",
            "--out",
            files["root"] / "p-json",
            "--json",
            "/proc/restr-p.json",
        ],
    )
    one_line_error(r, "restr-predict", "--json")
    r = invoke(
        "restr-export",
        ["--config", "restr-tiny", "--out", files["root"] / "e-json", "--json", "/proc/restr-x.json", "--no-verify"],
    )
    one_line_error(r, "restr-export", "--json")
    assert not (files["root"] / "p-json").exists() and not (files["root"] / "e-json").exists()


@pytest.mark.parametrize("prog", list(COMMANDS))
def test_every_option_is_explained(prog):
    command = COMMANDS[prog]
    undocumented = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert undocumented == [], f"{prog}: options without help: {undocumented}"
    r = invoke(prog, ["--help"])
    assert r.exit_code == 0 and prog in r.output
    assert re.search(rf"^\s+{prog} --", r.output, re.M), f"{prog} --help shows no example"
    assert "Exit codes" in r.output
