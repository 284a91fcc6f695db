#!/usr/bin/env bash
# One command on a GPU machine, from the project's root:
#     bash benchmarks/gpu_train.sh [OUT_DIR]
# Training on the GPU, measured, in this order (each part writes its files as it ends, so a run cut
# short still leaves what it finished; a part that fails is recorded and the others still run):
#   1. restr-bench --train: restr-b16 at 480x480, batch 8 (CONFIG, SIZE, BATCH): every speed choice
#      against the trainer's default, MFU against the BF16 GEMM peak of the same run, host syncs,
#      attention kernels, the data loader alone on JPEG photos, the paper's recipe projected
#      -> bench.json, bench.txt
#   2. restr-train itself on those photos (refer layout, --from-scratch), ITERATIONS iterations:
#      without torchrun, under torchrun with one process (DDP over NCCL), and stopped half-way then
#      resumed -> train-*/ (metrics.jsonl, run.json, logs); the loss curves and weights compared
#   3. make demo's steps (python3 -m restr.demo) on the GPU, timed; its test IoU against the CPU
#      run's REF_IOU (0.733, README) -> demo/ (eval*.json, demo.log)
# and summary.json (+ summary.txt) of all three, rewritten after each part.
# DEVICE=cpu CONFIG=restr-tiny SIZE=32 BATCH=4 ... runs it small on a CPU (tests/test_train_bench.py);
# DEMO=0 leaves part 3 out. On a machine without restr installed (the lent GPU machines: their own
# torch, no package registry) the checkout is installed under /tmp with the wheels in WHEELS
# (default .device/extra: pycocotools, see ../shared/gpu/README.md).
set -uo pipefail
OUT=${1:-runs/gpu-train}
CONFIG=${CONFIG:-restr-b16}
SIZE=${SIZE:-480}
BATCH=${BATCH:-8}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-30}
CHOICES=${CHOICES:-all}
ITERATIONS=${ITERATIONS:-300}
DEMO=${DEMO:-1}
REF_IOU=${REF_IOU:-0.733}
ROOT=$(pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)  # photos and checkpoints (restr-b16's are 0.5 GB each): not under OUT
cd "$WORK"  # Python puts the working folder first on its path: a checkout's restr/ must not shadow the installed one
FAILED=()
if ! python3 -c "import restr.benchmarks.train_bench, pycocotools" 2>/dev/null; then
    WHEELS=${WHEELS:-$ROOT/.device/extra}
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-extra "$WHEELS"/*.whl \
        && python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site-project "$ROOT" > /tmp/pip-project.log 2>&1 \
        || { cat /tmp/pip-project.log; echo "gpu_train: cannot install restr (wheels from $WHEELS)"; exit 4; }
    export PYTHONPATH=/tmp/site-extra:/tmp/site-project${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi -L 2>/dev/null; python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.is_available())"; nproc; } \
    > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

summary() {
    python3 - "$OUT" "$WORK" "$REF_IOU" <<'PY' || FAILED+=("summary")
import json, sys
from pathlib import Path
out, work, ref = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
s = {}

def losses(folder):
    return [(r["step"], r["loss"]) for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

if (out / "bench.json").is_file():
    b = json.loads((out / "bench.json").read_text())
    d = b["choices"][0]
    s["bench"] = {"config": b["config"], "image_size": b["image_size"], "batch": b["batch"], "device": b["environment"].get("gpu", "cpu"),
                  "default": d["describe"], "ms_per_step": d["ms_per_step"]["median"], "images_per_s": d["images_per_s"], "mfu": d["mfu"],
                  "peak_memory_mb": d["peak_memory_mb"], "gemm_peak_tflops": b["gemm"]["peak_gflops"] / 1000, "gemm_dtype": b["gemm"]["dtype"],
                  "host_syncs_per_step": b["host_syncs"]["per_step"], "attention_ops": b["attention_ops"],
                  "loader_images_per_s": b["loader"]["images_per_s"], "loader_workers": b["loader"]["workers"],
                  "loader_over_model": b["loader"]["ratio_to_model"], "projected_hours": b["projection"]["hours"],
                  "choices": {c["label"]: {"ms": c["ms_per_step"]["median"], "mfu": c["mfu"], "x_default": c["speedup_of_default"],
                                           "first_step_s": c["first_step_s"], "memory_mb": c["peak_memory_mb"]} for c in b["choices"]}}
plain, ddp = out / "train-plain", out / "train-ddp"
if (plain / "metrics.jsonl").is_file():
    recs = [r for r in map(json.loads, (plain / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    run = json.loads((plain / "run.json").read_text())
    steady = (recs[-1]["time"] - recs[0]["time"]) / (recs[-1]["step"] - recs[0]["step"]) * 1000 if len(recs) > 1 else None
    s["trainer"] = {"runtime": run["runtime"], "iterations": recs[-1]["step"], "ms_per_step": steady or recs[-1]["time"] / recs[-1]["step"] * 1000,
                    "ms_per_step_from": "between the first and last logged steps" if steady else "the whole run (one logged step)"}
if (ddp / "metrics.jsonl").is_file() and (plain / "metrics.jsonl").is_file():
    a, b = losses(plain), losses(ddp)
    s["ddp"] = {"distributed": json.loads((ddp / "run.json").read_text())["runtime"]["distributed"], "steps": [x for x, _ in a],
                "same_steps": [x for x, _ in a] == [x for x, _ in b], "plain": [y for _, y in a], "torchrun": [y for _, y in b],
                "max_abs_loss_difference": max(abs(x - y) for (_, x), (_, y) in zip(a, b))}
if (work / "train-resumed" / "model.pt").is_file() and (work / "train-plain" / "model.pt").is_file():
    import torch
    a = torch.load(work / "train-plain" / "model.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(work / "train-resumed" / "model.pt", map_location="cpu", weights_only=True)["model"]
    resumed, whole = losses(out / "train-resumed"), losses(plain)
    s["resume"] = {"max_abs_weight_difference": max(float((a[k].float() - b[k].float()).abs().max()) for k in a),
                   "same_steps": [x for x, _ in resumed] == [x for x, _ in whole],
                   "max_abs_loss_difference": max(abs(x - y) for (_, x), (_, y) in zip(resumed, whole)),
                   "resumed": [y for _, y in resumed], "without_stop": [y for _, y in whole]}
demo = out / "demo"
if (demo / "eval.json").is_file():
    ev = json.loads((demo / "eval.json").read_text())
    s["demo"] = {"minutes": float((demo / "seconds.txt").read_text()) / 60 if (demo / "seconds.txt").is_file() else None,
                 "overall_iou": ev["overall_iou"], "mean_iou": ev["mean_iou"], "cpu_overall_iou": ref,
                 "difference": ev["overall_iou"] - ref, "within_0.02": abs(ev["overall_iou"] - ref) <= 0.02}
    if (demo / "eval-shuffled.json").is_file():
        s["demo"]["shuffled_overall_iou"] = json.loads((demo / "eval-shuffled.json").read_text())["overall_iou"]
(out / "summary.json").write_text(json.dumps(s, indent=2))
text = json.dumps(s, indent=2)
(out / "summary.txt").write_text(text + "\n")
print(text)
PY
}

echo "== 1/3 restr-bench --train ($CONFIG at $SIZE, batch $BATCH, $DEVICE)"
python3 -m restr.benchmarks.cli --train --config "$CONFIG" --image-size "$SIZE" --batch-size "$BATCH" --device "$DEVICE" --steps "$STEPS" \
    --choices "$CHOICES" --photos "$WORK/photos" --no-progress --json "$OUT/bench.json" 2> "$OUT/bench.log" | tee "$OUT/bench.txt" \
    || FAILED+=("restr-bench --train")
[ -f "$WORK/photos/refs(unc).p" ] || python3 -c "import sys; from restr.benchmarks.train_bench import write_photo_refer; write_photo_refer(sys.argv[1])" "$WORK/photos"
summary

echo "== 2/3 restr-train on $DEVICE: without torchrun, under torchrun with one process, stopped and resumed"
TRAIN=(--config "$CONFIG" --from-scratch --data "$WORK/photos" --split-by unc --iterations "$ITERATIONS" --batch-size "$BATCH"
       --val-every "$ITERATIONS" --device "$DEVICE" --no-progress)
keep() {  # the run's small files go to OUT
    mkdir -p "$OUT/$1" && cp "$WORK/$1"/metrics.jsonl "$WORK/$1"/run.json "$OUT/$1/" 2>/dev/null
}
python3 -m restr.train "${TRAIN[@]}" --out "$WORK/train-plain" 2> "$OUT/train-plain.log" || FAILED+=("restr-train")
keep train-plain
python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m restr.train "${TRAIN[@]}" --out "$WORK/train-ddp" \
    > "$OUT/train-ddp.log" 2>&1 || FAILED+=("torchrun restr-train")
keep train-ddp
python3 -m restr.train "${TRAIN[@]}" --out "$WORK/train-resumed" --stop-after $((ITERATIONS / 2)) 2> "$OUT/train-resumed.log" \
    && python3 -m restr.train "${TRAIN[@]}" --out "$WORK/train-resumed" --resume 2>> "$OUT/train-resumed.log" || FAILED+=("restr-train --resume")
keep train-resumed
summary
rm -rf "$WORK/train-plain" "$WORK/train-ddp" "$WORK/train-resumed"

if [ "$DEMO" = 1 ]; then
    echo "== 3/3 make demo's steps on $DEVICE (python3 -m restr.demo)"
    mkdir -p "$OUT/demo" "$WORK/demo"
    start=$(date +%s.%N)
    (cd "$WORK/demo" && python3 -m restr.demo) > "$OUT/demo/demo.log" 2>&1 || FAILED+=("make demo")
    python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$(date +%s.%N)" > "$OUT/demo/seconds.txt"
    cp "$WORK"/demo/runs/demo/eval*.json "$OUT/demo/" 2>/dev/null
    tail -8 "$OUT/demo/demo.log"
    summary
fi
rm -rf "$WORK"
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'gpu_train: FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
