"""ONNX graphs of ReSTR: one end-to-end graph and the three split stages.

    end_to_end      image, words, pad_mask                      -> pixel_probs, patch_probs
    vision          image                                       -> visual_features
    language        words, pad_mask                             -> linguistic_features
    fusion_decoder  visual_features, linguistic_features, pad_mask -> pixel_probs, patch_probs

The split lets a service encode an image once and ask many expressions about it: fusion_decoder's
`visual_features` has batch `image_batch`, 1 (one image shared by the batch's expressions) or batch.
Every graph has a dynamic `batch` axis; the image size is fixed per export (the position grid
depends on it). Names, dtypes and shapes come from `graph_io` (restr.runtime.formats.GRAPH_IO at a
config's sizes), the one description shared by the exporter, the manifest, the verification, the
TensorRT profiles and the runtimes.

The graphs carry no shape arithmetic: the model writes its reshapes with constant targets (-1 or 0
for the batch) and a constant attention scale, and attention is written in the form the engine
fuses (`restr.modeling.attention`). `check_graph` refuses a graph with a Shape node.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from restr.config import ReSTRConfig
from restr.modeling import ReSTR
from restr.modeling.attention import graph_form
from restr.runtime import formats
from restr.runtime.formats import ATTENTION_FORMS, MODEL_GRAPHS, TensorSpec

GRAPHS = MODEL_GRAPHS
# Ops that compute shapes at run time. ONNX Runtime's CUDA EP runs them on the CPU (with Memcpy
# nodes around), which forbids CUDA graphs; TensorRT must re-derive them per shape.
SHAPE_OPS = ("Shape", "Size", "ConstantOfShape")
MIN_OPSET = 17  # LayerNormalization is an ONNX op from opset 17 on
# Traced at this batch so that a graph that secretly baked the batch in fails at 1 and 3.
TRACE_BATCH = 2


class ExportCheckError(RuntimeError):
    """An exported graph that breaks the contract (ops, names, dynamic axes): one line."""


def spec_dict(t: TensorSpec) -> dict:
    """A TensorSpec as the manifest writes it."""
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}


def graph_io(cfg: ReSTRConfig) -> dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]]:
    """{graph: (inputs, outputs)} for a config: restr.runtime.formats.GRAPH_IO at its sizes."""
    sizes = {"S": cfg.image_size, "L": cfg.max_words, "N": cfg.num_patches, "D": cfg.fusion.width}
    return {g: formats.graph_io(g, sizes) for g in MODEL_GRAPHS}


# The graphs' modules: thin wrappers over ReSTR's stages that add the sigmoid (deployment wants
# probabilities) and fix the patch grid, which is static for an export.


class EndToEnd(nn.Module):
    def __init__(self, model: ReSTR):
        super().__init__()
        self.model = model

    def forward(self, image, words, pad_mask):
        """(B,3,S,S), (B,N_l), (B,N_l) -> pixel probs (B,1,S,S), patch probs (B,N_v)."""
        pixel_logits, patch_logits = self.model(image, words, pad_mask)
        return torch.sigmoid(pixel_logits), torch.sigmoid(patch_logits)


class Vision(nn.Module):
    def __init__(self, model: ReSTR):
        super().__init__()
        self.model = model

    def forward(self, image):
        """(B,3,S,S) -> visual features v (B,N_v,D)."""
        return self.model.encode_image(image)


class Language(nn.Module):
    def __init__(self, model: ReSTR):
        super().__init__()
        self.model = model

    def forward(self, words, pad_mask):
        """(B,N_l), (B,N_l) -> linguistic features l (B,N_l,D)."""
        return self.model.encode_text(words, pad_mask)


class FusionDecoder(nn.Module):
    def __init__(self, model: ReSTR):
        super().__init__()
        self.model = model
        self.grid = (model.cfg.grid, model.cfg.grid)

    def forward(self, visual_features, linguistic_features, pad_mask):
        """(B,N_v,D), (B,N_l,D), (B,N_l) -> pixel probs (B,1,S,S), patch probs (B,N_v)."""
        pixel_logits, patch_logits = self.model.decode(visual_features, linguistic_features, pad_mask, self.grid)
        return torch.sigmoid(pixel_logits), torch.sigmoid(patch_logits)


GRAPH_MODULES = {"end_to_end": EndToEnd, "vision": Vision, "language": Language, "fusion_decoder": FusionDecoder}


def graph_module(model: ReSTR, graph: str) -> nn.Module:
    """The nn.Module exported as `graph` (eval mode)."""
    return GRAPH_MODULES[graph](model).eval()


def example_inputs(model: ReSTR, graph: str, batch: int = TRACE_BATCH, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of `graph` at `batch` (numpy, by name). Features come from the model's own stages so that
    the fusion graph is traced on realistic values; word lists have different lengths."""
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    n_l = cfg.max_words
    lengths = np.linspace(1, n_l, batch).round().astype(int) if batch > 1 else np.array([max(1, n_l // 2)])
    pad = np.arange(n_l)[None, :] >= lengths[:, None]
    words = np.where(pad, 0, rng.integers(2, max(3, model.vocab_size), (batch, n_l))).astype(np.int64)
    image = rng.standard_normal((batch, 3, cfg.image_size, cfg.image_size)).astype(np.float32)
    if graph == "end_to_end":
        return {"image": image, "words": words, "pad_mask": pad}
    if graph == "vision":
        return {"image": image}
    if graph == "language":
        return {"words": words, "pad_mask": pad}
    with torch.no_grad():  # one image's features shared by the batch's expressions: the common call
        v = model.encode_image(torch.from_numpy(image[:1])).numpy()
        l = model.encode_text(torch.from_numpy(words), torch.from_numpy(pad)).numpy()
    return {"visual_features": v, "linguistic_features": l, "pad_mask": pad}


def count_layernorm_calls(module: nn.Module, inputs: dict[str, np.ndarray]) -> int:
    """How many times nn.LayerNorm modules run in one forward pass (a shared layer counts each use):
    the number of LayerNormalization nodes the graph must have."""
    calls = 0

    def hook(*_):
        nonlocal calls
        calls += 1

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.LayerNorm)]
    try:
        with torch.no_grad():
            module(*(torch.from_numpy(x) for x in inputs.values()))
    finally:
        for h in handles:
            h.remove()
    return calls


def export_graph(model: ReSTR, graph: str, path: str | Path, opset: int = MIN_OPSET, attention: str = "onnx") -> onnx.ModelProto:
    """Trace `graph` with the TorchScript exporter (dynamo=False) to `path` and check it (`check_graph`).

    `attention`: "onnx" (standard ONNX, TensorRT's input) or "ort" (com.microsoft.MultiHeadAttention).
    Returns the loaded ModelProto. Raises ExportCheckError when the graph breaks the contract.
    """
    if opset < MIN_OPSET:
        raise ExportCheckError(f"opset {opset} is too old: LayerNormalization needs opset {MIN_OPSET} or newer")
    if attention not in ATTENTION_FORMS:
        raise ExportCheckError(f"attention form must be one of {ATTENTION_FORMS}, got {attention!r}")
    module = graph_module(model, graph)
    inputs_spec, outputs_spec = graph_io(model.cfg)[graph]
    feeds = example_inputs(model, graph)
    with warnings.catch_warnings():
        # The tracer warns where the model turns the (fixed) image size or width into Python numbers:
        # constants by design, since an export has one image size. The batch stays symbolic.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        with graph_form(attention):
            torch.onnx.export(
                module,
                tuple(torch.from_numpy(x) for x in feeds.values()),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[t.name for t in inputs_spec],
                output_names=[t.name for t in outputs_spec],
                dynamic_axes={t.name: {0: t.shape[0]} for t in inputs_spec + outputs_spec},
                do_constant_folding=True,
                custom_opsets={"com.microsoft": 1} if attention == "ort" else None,
            )
    proto = declare_shapes(constants_to_initializers(onnx.load(str(path))), outputs_spec)
    onnx.save(proto, str(path))
    check_graph(proto, inputs_spec, outputs_spec, layernorms=count_layernorm_calls(module, feeds), opset=opset, graph=graph)
    return proto


def constants_to_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes become initializers: one form for every constant, which the FP16 converter
    treats by its consumers (a Resize's scales stay FP32) and engines read as weights."""
    keep = []
    for node in proto.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            proto.graph.initializer.append(t)
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return proto


def declare_shapes(proto: onnx.ModelProto, outputs: tuple) -> onnx.ModelProto:
    """Write the contract's output shapes into the graph. The tracer leaves the spatial and patch
    axes of the outputs as anonymous symbols although they are fixed per export; the verification
    checks the shapes the graph really produces against these at several batch sizes."""
    for value, spec in zip(proto.graph.output, outputs):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            raise ExportCheckError(f"output {value.name} has rank {len(dims)}, expected {len(spec.shape)}")
        for dim, want in zip(dims, spec.shape):
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = int(want)
    return proto


_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.FLOAT16: "float16",
}


def value_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    """A graph input/output as a TensorSpec (symbolic axes by name)."""
    t = value.type.tensor_type
    shape = tuple(d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in t.shape.dim)
    return TensorSpec(value.name, _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), shape)


def check_graph(proto: onnx.ModelProto, inputs: tuple, outputs: tuple, layernorms: int | None, opset: int, graph: str) -> None:
    """The contract an exported graph must keep; raises ExportCheckError naming what broke.

    - a valid ONNX model at the requested opset (>= 17);
    - inputs and outputs exactly as `graph_io` says: names, dtypes, shapes, `batch` symbolic;
    - one LayerNormalization node per LayerNorm call (TensorRT must see real LayerNorms to keep them FP32);
    - no shape arithmetic (SHAPE_OPS): every reshape has a constant target.
    """
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportCheckError(f"{graph}: the exported graph is not valid ONNX ({str(e).splitlines()[0]})") from None
    got_opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if got_opset < max(opset, MIN_OPSET):
        raise ExportCheckError(f"{graph}: graph has opset {got_opset}, expected {opset}")
    for kind, want, have in (("inputs", inputs, proto.graph.input), ("outputs", outputs, proto.graph.output)):
        got = tuple(value_spec(v) for v in have)
        if got != tuple(want):
            raise ExportCheckError(f"{graph}: {kind} are {[spec_dict(t) for t in got]}, expected {[spec_dict(t) for t in want]}")
    shape_ops = [n.op_type for n in proto.graph.node if n.op_type in SHAPE_OPS]
    if shape_ops:
        raise ExportCheckError(
            f"{graph}: the graph computes shapes at run time ({len(shape_ops)} {'/'.join(sorted(set(shape_ops)))} "
            "nodes); write the model's reshapes with constant targets"
        )
    if layernorms is not None:
        n = sum(node.op_type == "LayerNormalization" for node in proto.graph.node)
        if n != layernorms:
            raise ExportCheckError(
                f"{graph}: {n} LayerNormalization nodes for {layernorms} LayerNorm calls (a norm was decomposed)"
            )


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type (top-level graph)."""
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


# Op types the verification table reports per graph: what a GPU engine pays for beyond the math.
REPORTED_OPS = ("Shape", "Cast", "Transpose", "Reshape", "MultiHeadAttention", "Softmax")


def graph_summary(proto: onnx.ModelProto) -> dict[str, int]:
    """{"nodes": total, "attention": attention blocks, op: count for REPORTED_OPS} of a graph.
    Attention blocks are fused MultiHeadAttention nodes, or Softmax nodes in the standard form."""
    counts = op_counts(proto)
    out = {"nodes": sum(counts.values()), "attention": counts.get("MultiHeadAttention", 0) or counts.get("Softmax", 0)}
    out.update({op: counts.get(op, 0) for op in REPORTED_OPS})
    return out
