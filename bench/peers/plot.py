"""Latency against load, one line per engine: python bench/peers/plot.py RESULTS.json OUT.png

Runs on the peers' virtualenv (matplotlib is not an aiki dependency). Each point is one cell of
the matrix: x the throughput reached with that many workflows in flight, y the p50
start→result latency at that load; the labels are the numbers in flight.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display here
import matplotlib.pyplot as plt

STYLE = {
    "aiki-sqlite": ("tab:blue", "o", "-"),
    "aiki-pg": ("tab:blue", "s", "--"),
    "dbos-pg": ("tab:orange", "s", "--"),
    "dbos-sqlite": ("tab:orange", "o", "-"),
    "temporal": ("tab:green", "^", "-"),
}


def main(results_path: str, out_path: str) -> None:
    with open(results_path) as f:
        results = json.load(f)["results"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, kind in zip(axes, ("1-step", "10-step"), strict=True):
        for name, result in results.items():
            rows = sorted((r for r in result["rows"] if r["kind"] == kind), key=lambda r: r["concurrency"])
            rows = [r for r in rows if r["p50_ms"] is not None]
            if not rows:
                continue
            color, marker, line = STYLE.get(name, ("gray", "x", ":"))
            xs, ys = [r["workflows_per_s"] for r in rows], [r["p50_ms"] for r in rows]
            ax.plot(xs, ys, color=color, marker=marker, linestyle=line, label=result["label"])
            for r, x, y in zip(rows, xs, ys, strict=True):
                ax.annotate(str(r["concurrency"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("throughput, workflows/s")
        ax.set_ylabel("p50 start → result latency, ms (log)")
        ax.set_title(f"{kind} workflow (labels: workflows in flight)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Latency vs load on one 2-core machine: aiki, DBOS Transact, Temporal (dev server)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
