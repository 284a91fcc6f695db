"""`make demo`: the whole toolkit end to end on the built-in synthetic task, with the real commands.

train restr-tiny -> evaluate (and the shuffled-text control) -> export ONNX + FP16 ONNX (verified)
-> the deploy gate: the FP32 and the FP16 graphs through the runtime scored against the checkpoint
-> predict masks and overlays with the torch-free runtime (and one contact sheet, runs/demo/predictions.png)
-> MACs/params against the paper.
Each step is the command a user would type, printed before it runs. Re-running resumes or reuses
what is already there.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

RUN = Path("runs/demo")
MODULES = {  # console script -> module, so the demo works before the scripts are on PATH
    "restr-train": "restr.train",
    "restr-eval": "restr.evaluate",
    "restr-export": "restr.export.cli",
    "restr-predict": "restr.runtime.cli",
    "restr-bench": "restr.benchmarks.cli",
}


def step(title: str, *argv: str) -> float:
    print(f"\n== {title}\n$ {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", MODULES[argv[0]], *argv[1:]])
    if done.returncode:
        sys.exit(f"demo: '{argv[0]}' failed with exit code {done.returncode}")
    return time.perf_counter() - t


# The deploy gate: how far below the checkpoint's overall IoU each precision's graphs may score
# through the runtime on the test split (restr-eval --max-drop), and the file each comparison goes to.
GATES = {"fp32": (0.002, RUN / "eval-artifacts.json"), "fp16": (0.005, RUN / "eval-artifacts-fp16.json")}


def main() -> None:
    t0 = time.perf_counter()
    ckpt = RUN / "model.pt"
    step(
        "1/8 train restr-tiny on the synthetic referring task (2 CPU cores: 11-27 minutes; stopped, make demo goes on from its last checkpoint)",
        "restr-train",
        "--config",
        "restr-tiny",
        "--data",
        "synthetic",
        "--out",
        str(RUN),
        "--resume",
        "--workers",
        "1",
    )
    step(
        "2/8 evaluate on the synthetic test split",
        "restr-eval",
        "--ckpt",
        str(ckpt),
        "--data",
        "synthetic:test",
        "--json",
        str(RUN / "eval.json"),
    )
    step(
        "3/8 control: the same model with each expression swapped for another object's of the same image",
        "restr-eval",
        "--ckpt",
        str(ckpt),
        "--data",
        "synthetic:test",
        "--shuffle-text",
        "--json",
        str(RUN / "eval-shuffled.json"),
    )
    step(
        "4/8 export ONNX (end-to-end and split), mixed-precision FP16 ONNX, verified against PyTorch",
        "restr-export",
        "--ckpt",
        str(ckpt),
        "--out",
        str(RUN / "export"),
        "--force",
    )
    for n, (precision, (drop, path)) in enumerate(GATES.items(), 5):
        step(
            f"{n}/8 deploy gate: the {precision.upper()} graphs through the runtime against the checkpoint, on the same samples",
            "restr-eval",
            "--ckpt",
            str(ckpt),
            "--artifacts",
            str(RUN / "export"),
            "--data",
            "synthetic:test",
            *(["--precision", precision] if precision != "fp32" else []),
            "--max-drop",
            str(drop),
            "--json",
            str(path),
        )

    from restr.data import build_dataset
    from restr.runtime.tokenizer import Vocabulary

    vocab = Vocabulary.load(RUN / "export" / "vocab.txt")
    test = build_dataset("synthetic:test", None, 64, vocab, (0.5,) * 3, (0.5,) * 3)  # only paths and texts are used
    for n, (image, texts) in enumerate(test.expressions_by_image(3).items(), 1):
        args = [a for t in texts[:3] for a in ("--text", t)]
        out = RUN / "predict" / image.stem
        step(
            f"7/8 predict with the torch-free runtime (image {n} of 3)",
            "restr-predict",
            "--artifacts",
            str(RUN / "export"),
            "--image",
            str(image),
            *args,
            "--out",
            str(out),
            "--overlay",
            "--force",
        )
        if not (out / "summary.json").is_file():
            sys.exit(f"demo: restr-predict wrote no {out / 'summary.json'}")
    sheet = _contact_sheet(RUN / "predict", RUN / "predictions.png")
    step("8/8 params and MACs of restr-b16 against the paper", "restr-bench", "--macs")

    ev = json.loads((RUN / "eval.json").read_text())
    sh = json.loads((RUN / "eval-shuffled.json").read_text())
    meta_train = _train_seconds(ckpt)
    print("\n== summary")
    print(
        f"training time            {meta_train / 60:.1f} min"
        if meta_train
        else "training time            (reused an earlier run)"
    )
    print(f"test overall IoU         {ev['overall_iou']:.3f}   mean IoU {ev['mean_iou']:.3f}   (n={ev['n']})")
    print(f"shuffled-text control    {sh['overall_iou']:.3f}   mean IoU {sh['mean_iou']:.3f}   (the model reads the words)")
    for precision, (drop, path) in GATES.items():
        print(gate_summary(precision, drop, path))
    print(f"artifacts                {RUN / 'export'}   predictions {RUN / 'predict'} ({sheet})")
    print(f"demo wall time           {(time.perf_counter() - t0) / 60:.1f} min")


def gate_summary(precision: str, drop: float, path: Path) -> str:
    """One summary line of a deploy-gate comparison that restr-eval wrote to `path`."""
    res = json.loads(Path(path).read_text())
    return (
        f"{precision.upper() + ' export':<25}overall IoU {res['artifacts']['overall_iou']:.4f}, {res['difference']['overall_iou']:+.4f} "
        f"against the checkpoint (gate: at most {drop:g} below); mask IoU with the checkpoint's, mean {res['agreement']['mean_mask_iou']:.4f}"
    )


def _contact_sheet(predict: Path, path: Path) -> Path:
    """One figure of every overlay restr-predict wrote (a row per image), captioned with its expression."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    folders = [d for d in sorted(predict.iterdir()) if (d / "summary.json").is_file()]
    rows = [json.loads((d / "summary.json").read_text())["expressions"] for d in folders]
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 2.7 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for folder, expressions, row in zip(folders, rows, axes):
        for e, ax in zip(expressions, row):
            ax.imshow(Image.open(folder / e["overlay"]))
            ax.set_title(e["text"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _train_seconds(ckpt: Path) -> float | None:
    import torch

    return torch.load(ckpt, map_location="cpu", weights_only=True).get("meta", {}).get("train_seconds")


if __name__ == "__main__":
    main()
