#!/usr/bin/env python3
"""Latency against load from `freeim bench all --sweep --json FILE` records.

Usage: python3 benchmarks/plot.py results.jsonl latency.png

Left: p2p (2 nodes, through Redis) publish→receive latency against the offered rate, ours
and the raw baseline, p50 and p99 (medians over runs). Right: the same for paced fan-out to
10k sockets. Runs "as fast as possible" are left out: the raw baseline's publisher is open
loop (no replies), so its latency at saturation is queueing in TCP buffers, not comparable.
Needs matplotlib (pip install matplotlib).
"""
import json
import statistics
import sys
from collections import defaultdict

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(records, scenarios, x_of):
    """(target) -> sorted [(x, p50 median, p99 median)]."""
    groups = defaultdict(list)
    for r in records:
        if r["scenario"] in scenarios and r.get("latency"):
            groups[(r["target"], x_of(r))].append(r)
    out = defaultdict(list)
    for (target, x), rs in groups.items():
        p50 = statistics.median(r["latency"]["p50_ms"] for r in rs)
        p99 = statistics.median(r["latency"]["p99_ms"] for r in rs)
        out[target].append((x, p50, p99))
    return {t: sorted(v) for t, v in out.items()}


def main():
    records = load(sys.argv[1])
    out = sys.argv[2] if len(sys.argv) > 2 else "latency.png"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = {"freeim": "tab:blue", "raw": "tab:gray"}
    panels = [
        (axes[0], {"p2p-paced"}, lambda r: r["rate"], "p2p via Redis, 2 nodes, 10k clients",
         "messages/s offered"),
        (axes[1], {"fanout-paced"}, lambda r: r["rate"] * r["size"],
         "fan-out, 1 node, 10k sockets, one channel", "deliveries/s offered (messages/s × 10k)"),
    ]
    for ax, scenarios, x_of, title, xlabel in panels:
        for target, points in series(records, scenarios, x_of).items():
            xs = [p[0] for p in points]
            ax.plot(xs, [p[1] for p in points], "o-", color=colours.get(target), label=f"{target} p50")
            ax.plot(xs, [p[2] for p in points], "s--", color=colours.get(target), label=f"{target} p99")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("publish → receive latency (ms)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("FreeIM for Rust: latency against load (2-core box, loopback)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
