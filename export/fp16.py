"""FP16 ONNX, the way TensorRT 11 takes it: the precision written into the graph.

TensorRT 11 builds strongly typed networks only (no FP16 builder flag, no precision constraints),
so the FP16 graph is made here with ONNX Runtime's maintained converter
(`onnxruntime.transformers.float16.convert_float_to_float16`):

- FP16 through: every float tensor and op, LayerNormalization and Softmax included. ONNX Runtime's
  and TensorRT's LayerNorm and Softmax kernels accumulate in FP32 on FP16 tensors, and FP32 islands
  cost a Cast pair each (measured on an H200: 92-145 Casts, 14% of the FP16 graph's kernel time,
  and no speed-up over FP32). `FP32_OPS` lists the islands that the FP16 agreement checks
  (restr.export.verify) have shown necessary: none so far.
- FP32 inputs and outputs (`keep_io_types`), so callers do not change: one Cast per float input and
  output, and no other (`check_fp16` refuses a graph with more).
- nodes topologically sorted (the converter appends its input Casts at the end, which the ONNX
  standard forbids and `onnx.checker` with full_check rejects).

The result runs in ONNX Runtime on a CPU, which is how its numerics are checked (`restr.export.verify`).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

# Op types kept in FP32 wherever they occur (see the module docstring: none is needed today).
FP32_OPS: tuple[str, ...] = ()


class FP16Error(RuntimeError):
    """The FP16 graph does not have the precision layout it must have: one line."""


def convert_fp16(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, dict[str, int]]]:
    """The FP16 twin of an FP32 graph (see the module docstring), checked (`check_fp16`), and its
    precision summary {op type: {dtype: count}}."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    half = convert_float_to_float16(
        onnx.ModelProto.FromString(proto.SerializeToString()),
        keep_io_types=True,
        op_block_list=list(FP32_OPS),  # an explicit list: the converter's default keeps Max, Range, ... in FP32
        disable_shape_infer=True,  # plain ONNX types suffice; shape inference would choke on contrib ops
    )
    model = OnnxModel(half)
    model.topological_sort()
    return model.model, check_fp16(model.model)


_DTYPE = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}
# Ops whose precision the manifest summarises.
SUMMARY_OPS = ("MatMul", "Gemm", "LayerNormalization", "Softmax", "MultiHeadAttention", "Resize")


def _tensor_types(proto: onnx.ModelProto) -> dict[str, int]:
    """{tensor name: ONNX element type} after shape/type inference (initializers included)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {
        v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }
    types.update({t.name: t.data_type for t in proto.graph.initializer})
    return types


def compute_dtypes(proto: onnx.ModelProto, types: dict[str, int] | None = None) -> dict[str, tuple[str, str]]:
    """{node name: (op type, dtype of its first output)} after ONNX shape/type inference (`types`:
    `_tensor_types(proto)` when the caller has it already)."""
    types = _tensor_types(proto) if types is None else types
    out = {}
    for n in proto.graph.node:
        if not n.output:
            continue
        dtype = types.get(n.output[0])
        if dtype is None and n.op_type == "MultiHeadAttention":  # no ONNX schema to infer with: its query's type
            dtype = types.get(n.input[0])
        if dtype is not None:
            out[n.name] = (n.op_type, _DTYPE.get(dtype, "other"))
    return out


def precision_summary(dtypes: dict[str, tuple[str, str]]) -> dict[str, dict[str, int]]:
    """{op type: {dtype: count}} for SUMMARY_OPS (for the manifest), from `compute_dtypes`."""
    summary: dict[str, dict[str, int]] = {}
    for op, dtype in dtypes.values():
        if op in SUMMARY_OPS:
            summary.setdefault(op, {}).setdefault(dtype, 0)
            summary[op][dtype] += 1
    return dict(sorted(summary.items()))


def check_fp16(proto: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """Every float op in FP16 but FP32_OPS; float inputs and outputs FP32 with one Cast each and no
    other Cast between floats; nodes sorted. Returns the precision summary; raises FP16Error."""
    io = [v for v in (*proto.graph.input, *proto.graph.output) if v.type.tensor_type.elem_type in _DTYPE]
    for v in io:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16:
            raise FP16Error(f"FP16 graph: {v.name} is FP16; inputs and outputs must stay FP32")
    seen = {i.name for i in proto.graph.input} | {t.name for t in proto.graph.initializer}
    for node in proto.graph.node:
        missing = [i for i in node.input if i and i not in seen]
        if missing:
            raise FP16Error(f"FP16 graph: node {node.name} reads {missing[0]} before it is made (nodes not sorted)")
        seen.update(node.output)
    types = _tensor_types(proto)
    float_casts = sum(
        n.op_type == "Cast" and types.get(n.input[0]) in _DTYPE and next(a.i for a in n.attribute if a.name == "to") in _DTYPE
        for n in proto.graph.node
    )
    if not FP32_OPS and float_casts > len(io):  # an FP32 island would add a Cast pair per use
        raise FP16Error(
            f"FP16 graph: {float_casts} float-to-float Casts for {len(io)} float inputs and outputs (redundant Casts came back)"
        )
    dtypes = compute_dtypes(proto, types)  # one shape inference: seconds on a restr-b16 graph
    for name, (op, dtype) in dtypes.items():
        if op in SUMMARY_OPS and op not in FP32_OPS and dtype != "float16":
            raise FP16Error(f"FP16 graph: {op} {name} computes in {dtype}, expected float16")
    return precision_summary(dtypes)
