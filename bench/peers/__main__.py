"""aiki next to DBOS Transact and Temporal: the same workloads, on this machine, in one run.

    python -m bench.peers [--seconds 5] [--engines aiki-sqlite,aiki-pg,dbos-pg,dbos-sqlite,temporal]

Each engine runs in a process of its own (bench/peers/*_driver.py) that measures the matrix of
bench/peers/common.py and writes JSON; engines run one after another, so each has the machine to
itself. aiki runs on this checkout's virtualenv; DBOS and Temporal on a separate one
(`make bench-peers` creates .venv-peers from bench/peers/requirements.txt), since they are not
aiki's dependencies. Prints a table per workload, ratios aiki/peer, the issue's goals, and draws
latency against throughput (bench/peers/plot.py, matplotlib) into a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PEERS_VENV = ROOT / ".venv-peers"

ENGINES = {
    # name: (label, which interpreter, the driver's arguments)
    "aiki-sqlite": ("aiki, SQLite", "aiki", ["-m", "bench.peers.aiki_driver", "--mode", "sqlite"]),
    "aiki-pg": ("aiki, PostgreSQL + Redis", "aiki", ["-m", "bench.peers.aiki_driver", "--mode", "postgres-redis"]),
    "dbos-pg": ("DBOS, PostgreSQL", "peers", [str(HERE / "dbos_driver.py"), "--db", "postgres"]),
    "dbos-sqlite": ("DBOS, SQLite", "peers", [str(HERE / "dbos_driver.py"), "--db", "sqlite"]),
    "temporal": ("Temporal dev server", "peers", [str(HERE / "temporal_driver.py")]),
}
# aiki/peer ratios: which aiki deployment each peer is set against (same database where they share one).
PAIRS = [("aiki-pg", "dbos-pg"), ("aiki-sqlite", "dbos-sqlite"), ("aiki-pg", "temporal"), ("aiki-sqlite", "temporal")]


def run_engine(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any] | None:
    label, interpreter, driver = ENGINES[name]
    python = sys.executable if interpreter == "aiki" else str(args.peers_python)
    command = [python, *driver, "--out", str(out), "--seconds", str(args.seconds)]
    if name == "temporal":
        command += ["--temporal-bin", str(args.temporal_bin)]
    print(f"\n== {label}: {' '.join(command[1:])}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT)) if interpreter == "aiki" else dict(os.environ)
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env)
    if done.returncode != 0 or not out.exists():
        print(f"!! {label} failed (exit {done.returncode}); its numbers are left out", flush=True)
        return None
    result: dict[str, Any] = json.loads(out.read_text())
    result["name"], result["label"], result["wall_s"] = name, label, time.perf_counter() - began
    return result


def row_of(result: dict[str, Any], kind: str, concurrency: int) -> dict[str, Any] | None:
    return next((r for r in result["rows"] if r["kind"] == kind and r["concurrency"] == concurrency), None)


def peak(result: dict[str, Any], kind: str) -> float:
    return max((r["workflows_per_s"] for r in result["rows"] if r["kind"] == kind), default=0.0)


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> str:
    return "—" if not a or not b else f"{a / b:.2f}×"


def print_tables(results: dict[str, dict[str, Any]]) -> None:
    names = [n for n in ENGINES if n in results]
    cells = sorted({(r["kind"], r["concurrency"]) for res in results.values() for r in res["rows"]})
    print("\nThroughput (workflows/s completed) and start→result latency p50 / p99 (ms), by workload and")
    print("workflows in flight (each slot starts the next workflow as soon as its last one returned)\n")
    print(f"  {'workload':<17}" + "".join(f"{results[n]['label']:>28}" for n in names))
    for kind, concurrency in cells:
        line = f"  {kind + ' x' + str(concurrency):<17}"
        for n in names:
            r = row_of(results[n], kind, concurrency)
            if r is None:
                line += f"{'—':>28}"
                continue
            text = f"{r['workflows_per_s']:.1f}/s {fmt(r['p50_ms'], '.1f')}/{fmt(r['p99_ms'], '.0f')}"
            if r["errors"]:
                text += f" ({r['errors']} err)"
            line += f"{text:>28}"
        print(line)
    pairs = [(a, b) for a, b in PAIRS if a in results and b in results]
    if not pairs:
        return
    print("\nRatios aiki/peer: throughput (above 1: aiki does more) and p50 latency (below 1: aiki is faster)\n")
    print(
        f"  {'workload':<17}"
        + "".join(f"{results[a]['label'][6:] + ' / ' + results[b]['label']:>44}" for a, b in pairs)
    )
    for kind, concurrency in cells:
        line = f"  {kind + ' x' + str(concurrency):<17}"
        for a, b in pairs:
            ra, rb = row_of(results[a], kind, concurrency), row_of(results[b], kind, concurrency)
            if ra is None or rb is None:
                line += f"{'—':>44}"
                continue
            text = f"{ratio(ra['workflows_per_s'], rb['workflows_per_s'])} thr, {ratio(ra['p50_ms'], rb['p50_ms'])} p50"
            line += f"{text:>44}"
        print(line)


def print_goals(results: dict[str, dict[str, Any]]) -> None:
    """The goals the benchmark was set: aiki (PostgreSQL + Redis) 10-step peak throughput ≥ 4× DBOS
    on PostgreSQL and ≥ 3× Temporal; idle one-step p50 no worse than DBOS's."""
    aiki = results.get("aiki-pg")
    if aiki is None:
        return
    print("\nGoals (aiki on PostgreSQL + Redis; peak = best throughput over the in-flight levels)")
    for peer, goal in (("dbos-pg", 4.0), ("temporal", 3.0)):
        if peer in results:
            mine, theirs = peak(aiki, "10-step"), peak(results[peer], "10-step")
            verdict = "met" if theirs and mine / theirs >= goal else "NOT met"
            print(
                f"  10-step peak throughput: aiki {mine:.1f}/s vs {results[peer]['label']} {theirs:.1f}/s = "
                f"{mine / theirs if theirs else float('nan'):.2f}× (goal ≥ {goal:g}×): {verdict}"
            )
    if "dbos-pg" in results:
        mine_row, theirs_row = row_of(aiki, "1-step", 1), row_of(results["dbos-pg"], "1-step", 1)
        if mine_row and theirs_row:
            verdict = "met" if mine_row["p50_ms"] <= theirs_row["p50_ms"] else "NOT met"
            print(
                f"  idle 1-step p50: aiki {mine_row['p50_ms']:.2f} ms vs DBOS {theirs_row['p50_ms']:.2f} ms "
                f"(goal: no worse): {verdict}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window per cell (default 5)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--peers-python", type=Path, default=PEERS_VENV / "bin" / "python")
    parser.add_argument("--temporal-bin", type=Path, default=PEERS_VENV / "bin" / "temporal")
    parser.add_argument("--json", type=Path, default=ROOT / "build" / "bench-peers.json", help="all results")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "latency-vs-load.png", help="'' for none")
    args = parser.parse_args()
    chosen = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in chosen if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {unknown}; choose from {list(ENGINES)}")
    if any(ENGINES[e][1] == "peers" for e in chosen) and not args.peers_python.exists():
        parser.error(f"{args.peers_python} is missing: `make bench-peers` installs the peers there")
    began = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="aiki-peers-") as tmp:
        for name in chosen:
            result = run_engine(name, args, Path(tmp) / f"{name}.json")
            if result is not None:
                results[name] = result
    print_tables(results)
    print_goals(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seconds": args.seconds, "results": results}, indent=2) + "\n")
    print(f"\nall results: {args.json}; total wall time {time.perf_counter() - began:.0f} s")
    if str(args.plot) and results:
        subprocess.run([str(args.peers_python), str(HERE / "plot.py"), str(args.json), str(args.plot)], check=True)
        print(f"plot: {args.plot}")
    failed = [n for n in chosen if n not in results] + [
        n for n, r in results.items() if any(row["errors"] for row in r["rows"])
    ]
    if failed:
        print(f"FAILED or with errors: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
