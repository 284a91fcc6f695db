"""`--plot FILE.png`: latency distributions, throughput against batch size and the multi-query cost.

Written atomically (a temporary file beside the target, then renamed), with matplotlib's Agg
backend, so it works on headless machines and never leaves half an image.
"""

from __future__ import annotations

from restr.runtime.atomic import atomic_write


def plot_results(doc: dict, path, samples: dict[str, dict[str, list[float]]] | None = None) -> None:
    """Draw `doc` (the --json document) into `path` (PNG).

    `samples` maps an engine label to its raw {"model", "end_to_end"} milliseconds for the
    distribution panel; without it the panel shows the medians with p90/p99 whiskers.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    results = doc["results"]
    with_queries = [r for r in results if (r.get("queries") or {}).get("ms")]
    panels = 2 + bool(with_queries)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False)
    axes = axes[0]

    ax = axes[0]
    data, labels = [], []
    for r in results:
        raw = (samples or {}).get(r["label"], {})
        for key, name in (("model", "model"), ("end_to_end", "e2e")):
            values = raw.get(key)
            stats = r.get(f"{key}_ms")
            if values:
                data.append(values)
            elif stats and stats.get("median") is not None:
                data.append([stats["median"], stats["p90"], stats["p99"]])
            else:
                continue
            labels.append(f"{r['label']}\n{name}")
    if data:
        ax.boxplot(data, whis=(1, 99), showfliers=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7, rotation=20)
    ax.set_ylabel("ms (batch 1)")
    ax.set_title("latency (box: quartiles, whiskers: p1-p99)", fontsize=9)

    ax = axes[1]
    for r in results:
        tp = [t for t in r["throughput"] if t["items_per_s"]]
        if tp:
            ax.plot([t["batch"] for t in tp], [t["items_per_s"] for t in tp], marker="o", label=r["label"])
    batches = sorted({t["batch"] for r in results for t in r["throughput"]})
    if batches:
        ax.set_xticks(batches)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (model alone)")
    ax.set_title("throughput", fontsize=9)
    if results:
        ax.legend(fontsize=7)

    if with_queries:
        ax = axes[2]
        names = ("end_to_end_k", "split_batched_k", "split_one_at_a_time_k")
        width = 0.8 / len(with_queries)
        for i, r in enumerate(with_queries):
            ms = r["queries"]["ms"]
            ax.bar([j + i * width for j in range(len(names))], [ms[n]["median"] for n in names], width, label=r["label"])
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(names))],
            ["K x end to end", "split, batched", "split, one by one"],
            fontsize=8,
        )
        ax.set_ylabel(f"ms for K = {with_queries[0]['queries']['k']} expressions")
        ax.set_title("one image, K expressions", fontsize=9)
        ax.legend(fontsize=7)

    fig.tight_layout()
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
