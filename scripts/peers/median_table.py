#!/usr/bin/env python3
"""Medians over several compare-peers.sh runs, as one markdown table.

Standard library only. Usage:

  median_table.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR is the --out directory of one compare-peers.sh run (the
script's --runs N writes RUN_DIR/run-1 ... run-N and calls this). For every
process count and size that ringo measured, a row gives the median over the
runs of ringo's time and of Open MPI's (TCP), the ratio ringo time / Open MPI
time of each run that has both, in run order, and its median (below 1:
ringo is faster), then the median busbw of ringo and of Gloo and their
ratio. A peer that did not run leaves its cells "-". This is the table
BENCHMARKS.md quotes for the 4 KiB-8 MiB band.
"""

import os
import statistics
import sys

sys.dont_write_bytecode = True  # no __pycache__ left in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_table  # noqa: E402  (its reader of one run's JSON lines)


def load(run_dir):
    """{(peer, np, bytes): (time_us, busbw_gbps)} of one run."""
    ringo, peers, _ = compare_table.load(run_dir)
    rows = [("ringo", n, b, r) for n, by in ringo.items() for b, r in by.items()]
    rows += [(p, n, b, r) for (p, n), by in peers.items() if p in ("openmpi", "gloo") for b, r in by.items()]
    return {(p, n, b): (float(r["time_us"]), float(r["busbw_gbps"]))
            for p, n, b, r in rows if "time_us" in r and "busbw_gbps" in r}


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, f):
    return "-" if x is None else f % x


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    runs = []
    for d in argv:
        if not os.path.isdir(d):
            print("median_table: %s is not a directory" % d, file=sys.stderr)
            return 2
        runs.append(load(d))
    keys = sorted({(n, b) for run in runs for (p, n, b) in run if p == "ringo"})
    if not keys:
        print("median_table: no ringo all-reduce results in %s" % " ".join(argv), file=sys.stderr)
        return 1
    print("Medians over %d runs; ratios per run in run order." % len(runs))
    print()
    print("| ranks | bytes | ringo µs | Open MPI µs | ringo/OMPI time (runs) | median | ringo busbw | Gloo busbw | ringo/Gloo busbw |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for n, b in keys:
        def col(peer, i):
            return [run[(peer, n, b)][i] for run in runs if (peer, n, b) in run]
        ratios = [run[("ringo", n, b)][0] / run[("openmpi", n, b)][0]
                  for run in runs if ("ringo", n, b) in run and ("openmpi", n, b) in run]
        rb, gb = med(col("ringo", 1)), med(col("gloo", 1))
        print("| %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            n, compare_table.human(b),
            fmt(med(col("ringo", 0)), "%.1f"), fmt(med(col("openmpi", 0)), "%.1f"),
            " / ".join("%.2f" % x for x in ratios) or "-",
            fmt(med(ratios), "**%.2f**"),
            fmt(rb, "%.3f"), fmt(gb, "%.3f"),
            fmt(rb / gb if rb is not None and gb else None, "%.1f")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
