"""The docs cannot rot: every Python snippet in README.md and runtime/README.md runs as written
(against a tiny real export, on an EXIF-rotated phone photo), and every link stays in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
SNIPPET_DOCS = ["README.md", "runtime/README.md"]
LINK_DOCS = ["README.md", "runtime/README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def python_snippets(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(encoding="utf-8"), re.S)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """A folder laid out as after `make demo`: runs/demo/export (a real restr-export of a tiny random
    model) and photo.jpg, a phone photo whose EXIF says 'rotate 90 degrees'."""
    import torch

    from restr.export.pipeline import ExportOptions, export_artifacts, load_source

    root = tmp_path_factory.mktemp("docs")
    torch.set_num_threads(1)
    source = load_source(config="restr-tiny", seed=0)
    export_artifacts(
        source,
        root / "runs" / "demo" / "export",
        ExportOptions(max_batch=2, precisions=("fp32",), engine=False, verify=False, progress=False),
        log=lambda m: None,
    )
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64x48, shown 48x64
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "photo.jpg", exif=exif)
    return root


@pytest.mark.parametrize("doc", SNIPPET_DOCS)
def test_every_python_snippet_runs(doc, demo_folder, monkeypatch):
    snippets = python_snippets(doc)
    assert snippets, f"{doc} has no python snippet"
    monkeypatch.chdir(demo_folder)
    for i, code in enumerate(snippets):
        before = set(demo_folder.iterdir())
        code, server = _with_server(code, demo_folder)
        try:
            exec(compile(code, f"{doc} snippet {i + 1}", "exec"), {"__name__": "__doc_snippet__"})
        finally:
            if server is not None:
                server.stop()
        for written in set(demo_folder.iterdir()) - before:
            if written.suffix == ".png":  # masks and overlays: at the photo's displayed size
                assert Image.open(written).size == (48, 64), written


def _with_server(code: str, folder: Path):
    """A snippet that asks a restr server gets a real one (restr-serve on the demo export, free
    ports written into the snippet's URLs); without the serving environment it is not run."""
    if "RestrClient" not in code:
        return code, None
    pytest.importorskip("tritonclient.grpc")
    from restr.benchmarks.serve_bench import ServerProcess, serve_python

    python = serve_python()
    if python is None:
        return "", None  # no serving environment (make serve-env): the client snippet cannot run here
    server = ServerProcess(python, folder / "server.log", "--artifacts", str(folder / "runs" / "demo" / "export"))
    if not server.wait_ready():
        server.stop()
        raise AssertionError(f"restr-serve did not start: {server.tail()}")
    return code.replace("127.0.0.1:8001", f"127.0.0.1:{server.grpc}").replace(
        "127.0.0.1:8000", f"127.0.0.1:{server.http}"
    ), server


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", LINK_DOCS)
def test_links_stay_inside_the_repository(doc):
    path = ROOT / doc
    text = path.read_text(encoding="utf-8")
    assert "shared/spec" not in text, f"{doc} points at the project's private spec"
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc}: {target} leaves the repository"
        assert resolved.exists(), f"{doc}: {target} does not exist"
