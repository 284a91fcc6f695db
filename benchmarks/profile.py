"""`--op-profile N`: where an ONNX Runtime graph spends its time, per operator type.

A second session on the same graph with ONNX Runtime's own profiler on (the timed session is
left untouched), N runs, and the profiler's per-node "Node" events summed by operator type.
Kernel times only: the gaps between nodes and the session's own overhead are the difference to
the measured model time.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path


def ort_op_profile(graph: bytes, feeds: dict, runs: int = 3, threads: int | None = None, providers=None) -> dict:
    """{"runs", "total_ms" (per run), "ops": [{"op", "ms" (per run), "share", "nodes"}] sorted by time}."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="restr-ort-profile-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as the runtime's sessions
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        session = ort.InferenceSession(graph, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
        session.run(None, feeds)  # warm-up, excluded below by counting runs from the end
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_run = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if not per_run:
        return {"runs": 0, "total_ms": None, "ops": []}
    first_timed = per_run[-runs]["ts"] if len(per_run) >= runs else per_run[0]["ts"]
    by_op, nodes = defaultdict(float), defaultdict(set)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < first_timed:
            continue
        op = (e.get("args") or {}).get("op_name", "?")
        by_op[op] += e["dur"] / 1000.0  # microseconds -> ms
        nodes[op].add(e["name"])
    total = sum(by_op.values())
    ops = [
        {"op": op, "ms": ms / runs, "share": ms / total if total else None, "nodes": len(nodes[op])}
        for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])
    ]
    return {"runs": runs, "total_ms": total / runs, "ops": ops}
