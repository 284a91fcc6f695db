"""An export folder, read through its `manifest.json` (docs/artifacts.md, format_version 1).

The manifest is validated when the folder is opened (against `manifest.schema.json`, the schema
the C++ host reads too, then across fields by `check_consistency`); a graph's or engine's sha256 is checked when
that file is loaded (on the very bytes handed to the backend), so opening a folder stays cheap and
only the files in use are read.
Every failure is an `ArtifactError`: one line, naming the file, meant for users.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from restr.runtime.errors import first_line
from restr.runtime.formats import END_TO_END, MODEL_GRAPHS, SIZES, STAGES, TensorSpec, base_graph, graph_io, graph_key  # noqa: F401  (re-exported: the contract's one table)
from restr.runtime.schema import first_error, manifest_schema
from restr.runtime.tokenizer import Vocabulary

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """An export folder, manifest, graph or engine that cannot be used: one line, meant for users."""


@dataclass(frozen=True)
class GraphInfo:
    """A graph (`.onnx`) or engine (`.engine`) file named by the manifest."""

    key: str  # manifest key, e.g. "vision" or "vision_fp16"
    path: Path
    sha256: str
    precision: str = "fp32"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    sidecar: Path | None = None  # engines only: X.engine.json


@dataclass
class Artifacts:
    """A validated export folder. Build with `Artifacts.open(folder)`, or `Artifacts.from_graphs`
    for graph files without a manifest."""

    root: Path
    manifest: dict
    image_size: int  # S: the letterboxed square side
    patch_size: int
    max_words: int  # N_l
    num_patches: int  # N_v
    feature_width: int  # D
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    threshold: float
    max_batch: int
    graphs: dict[str, GraphInfo]
    engines: dict[str, GraphInfo]
    vocab_path: Path
    vocab_sha256: str | None

    @classmethod
    def open(cls, folder) -> Artifacts:
        """Read and validate `folder/manifest.json`. Raises ArtifactError."""
        if str(folder) == "":
            raise ArtifactError(
                "folder is an empty string: give the path of an export folder (one restr-export wrote, holding manifest.json)"
            )
        root = Path(folder)
        if not root.is_dir():
            what = "not a folder" if root.exists() else "no such folder"
            raise ArtifactError(f"{root}: {what} (expected a restr export folder)")
        path = root / MANIFEST
        if not path.is_file():
            raise ArtifactError(f"{root}: no {MANIFEST} (not a restr export folder; make one with restr-export)")
        try:
            m = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ArtifactError(f"{path}: not a readable JSON manifest ({first_line(e)})") from None
        if not isinstance(m, dict):
            raise ArtifactError(f"{path}: not a restr manifest (a JSON object was expected)")
        version = m.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: manifest format_version {version!r} is not supported by this runtime "
                f"(it reads version {FORMAT_VERSION}); re-export with a matching restr version"
            )
        problem = first_error(manifest_schema(), m) or check_consistency(m)
        if problem:
            raise ArtifactError(f"{path}: manifest is invalid: {problem}")
        try:
            norm = m.get("normalization", {})
            graphs = {k: _graph_info(root, k, g) for k, g in m["graphs"].items()}
            engines = {k: _engine_info(root, k, e) for k, e in (m.get("engines") or {}).items()}
            art = cls(
                root=root,
                manifest=m,
                image_size=int(m["image_size"]),
                patch_size=int(m["patch_size"]),
                max_words=int(m["max_words"]),
                num_patches=int(m["num_patches"]),
                feature_width=int(m["feature_width"]),
                mean=tuple(float(x) for x in norm.get("mean", (0.5, 0.5, 0.5))),
                std=tuple(float(x) for x in norm.get("std", (0.5, 0.5, 0.5))),
                threshold=float(m.get("threshold", 0.5)),
                max_batch=int(m.get("max_batch", 8)),
                graphs=graphs,
                engines=engines,
                vocab_path=root / m["vocab"]["file"],
                vocab_sha256=m["vocab"].get("sha256"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(f"{path}: manifest is incomplete or malformed ({type(e).__name__}: {first_line(e)})") from None
        return art

    @classmethod
    def from_graphs(
        cls,
        root,
        graphs=(),
        engines=(),
        *,
        image_size: int | None = None,
        patch_size: int | None = None,
        max_words: int | None = None,
        num_patches: int | None = None,
        feature_width: int | None = None,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ) -> Artifacts:
        """An export without a manifest: graph and engine files (`GraphInfo`s, e.g. bare `.onnx`
        files beside no manifest.json), or none (graphs run in memory). Each file is still checked
        against its `sha256` when loaded.

        The sizes are read from the files' tensor specs by the names of `formats.GRAPH_IO` (image
        (B, 3, S, S), words (B, L), patch_probs (B, N), visual_features (B, N, D), ...); the keywords
        give what they do not say (patch_size, where not given: S / sqrt(N)). Threshold 0.5,
        max_batch 8, vocabulary `root/vocab.txt` unchecked, `manifest` {} (no model config).
        """
        root = Path(root)
        graphs, engines = {g.key: g for g in graphs}, {e.key: e for e in engines}
        read = _sizes_of(t for g in (*graphs.values(), *engines.values()) for t in (*g.inputs, *g.outputs))
        size = read.get("S") or image_size or 0
        n_v = read.get("N") or num_patches or 0
        patch = patch_size or (size // math.isqrt(n_v) if size and n_v else 1)
        return cls(
            root=root,
            manifest={},
            image_size=int(size),
            patch_size=int(patch),
            max_words=int(read.get("L") or max_words or 20),
            num_patches=int(n_v),
            feature_width=int(read.get("D") or feature_width or 0),
            mean=tuple(mean),
            std=tuple(std),
            threshold=0.5,
            max_batch=8,
            graphs=graphs,
            engines=engines,
            vocab_path=root / "vocab.txt",
            vocab_sha256=None,
        )

    @property
    def model_name(self) -> str:
        return str((self.manifest.get("model") or {}).get("name", "unknown"))

    def has_graphs(self, keys) -> bool:
        return all(k in self.graphs for k in keys)

    def graph(self, key: str) -> GraphInfo:
        """The ONNX graph named `key` (e.g. "vision_fp16"); its file is checked when loaded (`read_verified`)."""
        if key not in self.graphs:
            raise ArtifactError(
                f"{self.root}: the export has no {key!r} graph (it has: {', '.join(sorted(self.graphs)) or 'none'})"
            )
        return self.graphs[key]

    def engine(self, key: str) -> GraphInfo:
        """The TensorRT engine named `key`; its file is checked when loaded (`read_verified`).

        Engines are built from the FP16 graphs only, so `key` "vision" finds "vision_fp16": asking
        the tensorrt backend for the default precision gets the engine that exists.
        """
        if key not in self.engines and graph_key(key, "fp16") in self.engines:
            key = graph_key(key, "fp16")
        if key not in self.engines:
            raise ArtifactError(
                f"{self.root}: the export has no {key!r} TensorRT engine "
                f"(it has: {', '.join(sorted(self.engines)) or 'none'}; build engines with restr-export on a GPU machine)"
            )
        return self.engines[key]

    def read_verified(self, info: GraphInfo) -> bytes:
        """The file's bytes, hashed as read, so what is checked is exactly what gets loaded."""
        data = _read(info.path)
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.sha256:
            raise ArtifactError(
                f"{info.path}: sha256 {digest[:12]}... does not match the manifest's {info.sha256[:12]}... "
                "(the file is corrupt or was changed after export)"
            )
        return data

    def vocabulary(self) -> Vocabulary:
        """The export's vocabulary (`vocab.txt`), checked against the manifest's sha256."""
        data = _read(self.vocab_path)
        if self.vocab_sha256 and hashlib.sha256(data).hexdigest() != self.vocab_sha256:
            raise ArtifactError(
                f"{self.vocab_path}: sha256 does not match the manifest (the file is corrupt or was changed after export)"
            )
        try:
            vocab = Vocabulary.load(self.vocab_path, (self.manifest.get("vocab") or {}).get("tokenizer", "restr"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{self.vocab_path}: {first_line(e)}") from None
        size = (self.manifest.get("vocab") or {}).get("size")
        if size is not None and int(size) != len(vocab):
            raise ArtifactError(f"{self.vocab_path}: {len(vocab)} words, but the manifest says {size}")
        return vocab


def check_consistency(m: dict) -> str | None:
    """What a schema cannot say: the sizes agree with each other and with the graphs the runtime
    chains (other graphs are left to their runners). `m` has passed the schema. None or one line."""
    s, p = int(m["image_size"]), int(m["patch_size"])
    if s % p:
        return f"image_size {s} is not a multiple of patch_size {p}"
    if int(m["num_patches"]) != (s // p) ** 2:
        return f"num_patches {m['num_patches']} is not (image_size / patch_size)^2 = {(s // p) ** 2}"
    sizes = {"S": s, "L": int(m["max_words"]), "N": int(m["num_patches"]), "D": int(m["feature_width"])}
    for key, g in m["graphs"].items():
        if base_graph(key) not in MODEL_GRAPHS:
            continue
        inputs, outputs = graph_io(base_graph(key), sizes)
        io = ({t.name for t in inputs}, {t.name for t in outputs})
        names = ({t["name"] for t in g["inputs"]}, {t["name"] for t in g["outputs"]})
        if names != io:
            return (
                f"graphs.{key}: inputs {sorted(names[0])} and outputs {sorted(names[1])}; "
                f"the runtime needs {sorted(io[0])} -> {sorted(io[1])}"
            )
        for t in g["inputs"] + g["outputs"]:
            # the first axis must be dynamic; its name is free (batch, image_batch, ...)
            want = next(list(spec.shape[1:]) for spec in inputs + outputs if spec.name == t["name"])
            if not t["shape"] or not isinstance(t["shape"][0], str) or list(t["shape"][1:]) != want:
                return f"graphs.{key}: tensor {t['name']!r} has shape {t['shape']}, the manifest's sizes give [batch, {', '.join(map(str, want))}]"
    return None


def _sizes_of(specs) -> dict[str, int]:
    """{"S": image_size, "L": max_words, "N": num_patches, "D": feature_width} as far as the tensor
    specs `specs` fix them, read by `formats.GRAPH_IO`'s shapes of the same names."""
    named = {t.name: t for g in MODEL_GRAPHS for t in (*graph_io(g)[0], *graph_io(g)[1])}
    sizes = {}
    for t in specs:
        if t.name in named and len(t.shape) == len(named[t.name].shape):
            sizes.update((d, int(n)) for d, n in zip(named[t.name].shape, t.shape) if d in SIZES and isinstance(n, int))
    return sizes


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _graph_info(root: Path, key: str, g: dict) -> GraphInfo:
    return GraphInfo(
        key=key,
        path=root / g["file"],
        sha256=str(g["sha256"]),
        precision=str(g.get("precision", "fp32")),
        inputs=tuple(TensorSpec.from_dict(t) for t in g.get("inputs", ())),
        outputs=tuple(TensorSpec.from_dict(t) for t in g.get("outputs", ())),
    )


def _engine_info(root: Path, key: str, e: dict) -> GraphInfo:
    return GraphInfo(
        key=key,
        path=root / e["file"],
        sha256=str(e["sha256"]),
        precision=str(e.get("precision", "fp16-strongly-typed")),
        sidecar=root / e["sidecar"] if e.get("sidecar") else None,
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file named by the manifest is missing") from None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot be read ({first_line(e)})") from None
