"""Mixed-precision FP16 ONNX, the way TensorRT 11 takes it: precision written into the graph.

TensorRT 11 builds strongly typed networks only (no FP16 builder flag, no precision constraints),
so the FP16 graph is made here, with ONNX Runtime's maintained converter
(`onnxruntime.transformers`: `float16.convert_float_to_float16` through `OnnxModel`, which also
removes the Cast pairs the converter leaves between FP32 nodes):

- matrix products (and everything not listed below) in FP16;
- kept in FP32: LayerNormalization, Softmax, the per-token L2 normalisations (ReduceL2 / ReduceSumSquare
  and the Clip / Sqrt / Expand / Div that follow it, as F.normalize exports them: its epsilon 1e-12
  is 0 in FP16), and every Sigmoid (the patch gate of eq. 10 and the output probabilities);
- FP32 inputs and outputs (`keep_io_types`), so callers do not change.

The result runs in ONNX Runtime on a CPU, which is how its numerics are checked (`restr.export.verify`).
"""
from __future__ import annotations

import onnx
from onnx import TensorProto

# Op types kept in FP32 wherever they occur.
FP32_OPS = ("LayerNormalization", "Softmax", "Sigmoid", "ReduceL2", "ReduceSumSquare")
# Ops between a norm's reduction and the division it feeds (F.normalize: x / max(||x||, eps)).
_NORM_TAIL_OPS = {"Clip", "Max", "Sqrt", "Expand", "Add", "Div"}
_NORM_REDUCTIONS = {"ReduceL2", "ReduceSumSquare"}


class FP16Error(RuntimeError):
    """The FP16 graph does not have the precision layout it must have: one line."""


def normalization_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes of every L2 normalisation after its reduction (Clip, Sqrt, Expand, ..., the Div)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: list[str] = []
    for node in proto.graph.node:
        if node.op_type not in _NORM_REDUCTIONS:
            continue
        frontier = [node]
        for _ in range(4):  # reduction -> [Sqrt] -> Clip -> [Expand] -> Div: at most four steps
            nxt = []
            for n in frontier:
                for c in (c for out in n.output for c in consumers.get(out, ())):
                    if c.op_type in _NORM_TAIL_OPS and c.name not in found:
                        found.append(c.name)
                        if c.op_type != "Div":
                            nxt.append(c)
            frontier = nxt
    return found


def convert_mixed_fp16(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, dict[str, int]]]:
    """The mixed-precision twin of an FP32 graph (see the module docstring), checked
    (`check_mixed_precision`), and its precision summary {op type: {dtype: count}}.

    ONNX Runtime's `OnnxModel.convert_float_to_float16` runs the converter and then removes the
    Cast pairs it leaves between FP32 nodes (FP32 -> FP16 -> FP32): without that, the output
    Sigmoid's probabilities would be rounded to FP16 on their way out (steps of 2^-11 near 0.5,
    enough to flip a mask pixel), and the norms' tails would pass through FP16 between FP32 ops.
    """
    from onnxruntime.transformers.onnx_model import OnnxModel

    norms = normalization_nodes(proto)
    model = OnnxModel(onnx.ModelProto.FromString(proto.SerializeToString()))
    model.convert_float_to_float16(
        use_symbolic_shape_infer=False,  # plain ONNX ops only: ONNX's own type inference suffices
        keep_io_types=True,
        op_block_list=list(FP32_OPS),
        node_block_list=norms,
    )
    return model.model, check_mixed_precision(model.model, fp32_nodes=norms)


_DTYPE = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}


def compute_dtypes(proto: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """{node name: (op type, dtype of its first output)} after ONNX shape/type inference."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    return {
        n.name: (n.op_type, _DTYPE.get(types.get(n.output[0]), "other"))
        for n in inferred.graph.node
        if n.output and n.output[0] in types
    }


def precision_summary(dtypes: dict[str, tuple[str, str]]) -> dict[str, dict[str, int]]:
    """{op type: {dtype: count}} for the ops whose precision matters (for the manifest), from `compute_dtypes`."""
    summary: dict[str, dict[str, int]] = {}
    for op, dtype in dtypes.values():
        if op in ("MatMul", "Gemm", *FP32_OPS):
            summary.setdefault(op, {}).setdefault(dtype, 0)
            summary[op][dtype] += 1
    return dict(sorted(summary.items()))


def check_mixed_precision(proto: onnx.ModelProto, fp32_nodes=()) -> dict[str, dict[str, int]]:
    """Every matrix product in FP16; every FP32_OPS node and every node named in `fp32_nodes` in FP32;
    float inputs and outputs FP32. Returns the precision summary; raises FP16Error."""
    for v in (*proto.graph.input, *proto.graph.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16:
            raise FP16Error(f"FP16 graph: {v.name} is FP16; inputs and outputs must stay FP32")
    dtypes = compute_dtypes(proto)
    for name, (op, dtype) in dtypes.items():
        if op in ("MatMul", "Gemm") and dtype != "float16":
            raise FP16Error(f"FP16 graph: matrix product {name} computes in {dtype}, expected float16")
        if (op in FP32_OPS or name in fp32_nodes) and dtype != "float32":
            raise FP16Error(f"FP16 graph: {op} {name} computes in {dtype}, expected float32")
    return precision_summary(dtypes)
