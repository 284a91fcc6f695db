#!/usr/bin/env bash
# restr-serve on a GPU: images per second at 16 clients with Triton's dynamic batcher handing one
# instance up to 16 requests (--batch-images 16) against one request at a time (--batch-images 1).
#     bash benchmarks/gpu_serve_bench.sh [OUT_DIR]
# restr-b16 at 320x320 with random weights, FP16 graphs on ONNX Runtime's CUDA EP, one instance;
# requests of one distinct 480x360 PNG and 2 expressions over gRPC, from benchmarks/serve_bench.py's
# client (perf_analyzer too where PERF_ANALYZER names it). The target: batch 16 >= 2x batch 1.
# Needs restr with torch (the export) and tritonclient in python3, and the serving environment
# (SERVE_PYTHON, default .venv-serve/bin/python) with nvidia-pytriton and onnxruntime-gpu.
# Writes OUT_DIR/b1.json, b16.json (and perf-b1.json, perf-b16.json), summary.txt. CONFIG, SIZE,
# PROVIDERS, PRECISION and REQUESTS override the defaults (a CPU smoke run: CONFIG=restr-tiny SIZE=80
# PROVIDERS=cpu PRECISION=fp32 REQUESTS=64).
set -euo pipefail
OUT=${1:-runs/gpu-serve-bench}
CONFIG=${CONFIG:-restr-b16}
SIZE=${SIZE:-320}
PROVIDERS=${PROVIDERS:-cuda,cpu}
PRECISION=${PRECISION:-fp16}
REQUESTS=${REQUESTS:-800}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export RESTR_SERVE_PYTHON=${SERVE_PYTHON:-$(pwd)/.venv-serve/bin/python}
if [ ! -d "$OUT/export" ]; then
    restr-export --config "$CONFIG" --image-size "$SIZE" --precision "$PRECISION" --precision fp32 --no-verify --no-engine \
        --out "$OUT/export" --force --no-progress
fi
for B in 1 16; do
    python3 -m restr.benchmarks.serve_bench --artifacts "$OUT/export" --requests "$REQUESTS" --images 256 --expressions 2 \
        --clients 16 --instances 1 --protocol grpc --no-baseline --work "$OUT/work-b$B" \
        --serve-args "--providers $PROVIDERS --precision $PRECISION --batch-images $B --workers 4" --json "$OUT/b$B.json" | tee "$OUT/b$B.txt"
    if [ -n "${PERF_ANALYZER:-}" ]; then
        python3 -m restr.benchmarks.perf_bench --artifacts "$OUT/export" --perf-analyzer "$PERF_ANALYZER" --concurrency 1,16 \
            --images 64 --expressions 2 --no-baseline --work "$OUT/perf-b$B" \
            --serve-args "--instances 1 --providers $PROVIDERS --precision $PRECISION --batch-images $B --workers 4" --json "$OUT/perf-b$B.json"
    fi
done
python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, sys
out = sys.argv[1]
rate = {b: json.load(open(f"{out}/b{b}.json"))["server_rows"][0]["requests_per_s"] for b in (1, 16)}
print(f"16 clients, images/s: batch 1 {rate[1]:.1f}, batch 16 {rate[16]:.1f}: {rate[16] / rate[1]:.2f}x (target >= 2x)")
PY
