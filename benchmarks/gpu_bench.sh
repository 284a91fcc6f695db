#!/usr/bin/env bash
# One command on a GPU machine (restr installed with its GPU extra, PyTorch with CUDA):
#     bash benchmarks/gpu_bench.sh [OUT_DIR]
# restr-b16 at 320x320 with random weights, exported with each attention form, then timed in ONE
# interleaved restr-bench run against PyTorch eager FP16 and torch.compile(mode="reduce-overhead")
# FP16 on the same GPU, with the GPU's FP16 matrix-product peak measured in the same run; then the
# FP16-on-GPU vs FP32-on-CPU mask agreement; then bulk prediction (BULK photo files, 400 by default,
# through predict_many against a loop of predict_image, beside the model alone at batch 8).
# Writes OUT_DIR/bench.json, bench.txt, agreement.json, bulk.json, bulk.txt.
# CONFIG, SIZE and DEVICE (cuda|cpu) override the defaults (the tests run it small on a CPU); CPP_LIB
# adds the C++ host's parity and overhead (OUT_DIR/cpp.json).
set -euo pipefail
OUT=${1:-runs/gpu-bench}
CONFIG=${CONFIG:-restr-b16}
SIZE=${SIZE:-320}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-30}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(mktemp -d)"  # Python puts the working folder first on its path: a checkout's restr/ must not shadow the installed one
python3 - "$OUT/model.pt" "$CONFIG" "$SIZE" <<'PY'
import sys
from restr.checkpoint import save_checkpoint
from restr.export import load_source
src = load_source(config=sys.argv[2], image_size=int(sys.argv[3]), seed=0)  # random weights, seeded
save_checkpoint(sys.argv[1], src.model, src.vocab, meta={"note": "random weights for benchmarking"})
PY
for form in onnx ort; do  # both exports at once: each is single-threaded most of the time
    restr-export --ckpt "$OUT/model.pt" --out "$OUT/export-$form" --attention "$form" --no-verify --no-engine --force --no-progress &
done
wait
restr-bench --engine "$OUT/export-ort#fp16,$DEVICE" --engine "$OUT/export-onnx#fp16,$DEVICE" --engine "$OUT/export-ort#fp32,$DEVICE" \
    --engine "$OUT/model.pt#fp16,$DEVICE,eager" --engine "$OUT/model.pt#fp16,$DEVICE,compile" \
    --batch-sizes 1,8 --runs "$RUNS" --throughput-runs 10 --queries 8 --query-runs 5 --import-runs 0 --no-progress \
    --json "$OUT/bench.json" | tee "$OUT/bench.txt"
restr-bench --engine "$OUT/export-ort#fp16,$DEVICE" --bulk "${BULK:-400}" --bulk-runs 3 --batch-sizes 8 --runs 3 \
    --throughput-runs 10 --import-runs 0 --no-progress --json "$OUT/bulk.json" | tee "$OUT/bulk.txt"
if [ "$DEVICE" = cuda ]; then
    python3 -m restr.benchmarks.agreement "$OUT/export-ort" --json "$OUT/agreement.json"
fi
# The C++ host against the Python runtime on the same export and device, both on the ONNX Runtime
# build Python imports (onnxruntime-gpu here): CPP_LIB=build/cpp/librestr_runtime.so after make
# cpp-build, or, on a machine without the build's Debian packages, the lib/librestr_runtime.so of a
# `make cpp-dist` package unpacked there.
if [ -n "${CPP_LIB:-}" ]; then
    python3 -m restr.benchmarks.cpp_overhead --export "$OUT/export-ort" --library "$CPP_LIB" --provider "$DEVICE" \
        --precision fp16 --rounds 20 --json "$OUT/cpp.json"
fi
