#!/usr/bin/env python3
"""Join the JSON lines of compare-peers.sh into one markdown table per np.

Standard library only. Usage:

  compare_table.py RESULTS_DIR [--np "2 4"]

Reads every *.jsonl file in RESULTS_DIR. Lines with "peer" come from the peer
benchmarks (gloo, openmpi, openmpi-shm), lines with "op" from ringo bench
(only op == "allreduce" is used), lines with "gbps" and "sockets" from
ringceiling. Anything else (logs, partial lines) is skipped.
"""

import argparse
import glob
import json
import os
import sys

PEERS = ["gloo", "openmpi", "openmpi-shm"]


def load(d):
    ringo, peers, ceiling = {}, {}, {}
    for path in sorted(glob.glob(os.path.join(d, "*.jsonl"))):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(r, dict) or "np" not in r:
                    continue
                n = int(r["np"])
                if "op" in r:
                    if r.get("op") in ("allreduce", "all-reduce", "all_reduce") and "bytes" in r:
                        ringo.setdefault(n, {})[int(r["bytes"])] = r
                elif "peer" in r and "bytes" in r:
                    peers.setdefault((r["peer"], n), {})[int(r["bytes"])] = r
                elif "gbps" in r and "sockets" in r:
                    ceiling[n] = r
    return ringo, peers, ceiling


def human(b):
    for unit, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if b >= m and b % m == 0:
            return "%d%s" % (b // m, unit)
    return str(b)


def num(x, fmt="%.3f"):
    return "-" if x is None else fmt % x


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return "%.2f" % (a / b)


def get(rows, b, key):
    r = rows.get(b) if rows else None
    if r is None or key not in r:
        return None
    return float(r[key])


def table(n, ringo, peers, ceiling, out):
    rg = ringo.get(n, {})
    pr = {p: peers.get((p, n), {}) for p in PEERS}
    shown = [p for p in PEERS if pr[p] or p != "openmpi-shm"]
    ceil = ceiling.get(n)
    cg = float(ceil["gbps"]) if ceil else None
    sizes = sorted(set(rg) | set().union(*(set(v) for v in pr.values())))
    if not sizes and ceil is None:
        return
    out.write("\n### np = %d\n\n" % n)
    if ceil is not None:
        out.write("TCP ring ceiling (ringceiling, %s sockets/link): %.3f GB/s per rank\n\n"
                  % (ceil.get("sockets", "?"), cg))
    if not sizes:
        return
    wrong = [b for b in rg if rg[b].get("wrong")]
    head = ["bytes", "ringo time_us", "ringo busbw"]
    head += ["%s busbw" % p for p in shown]
    head += ["ceiling", "ringo/gloo", "ringo/openmpi"]
    if "openmpi-shm" in shown:
        head += ["ringo/ompi-shm"]
    head += ["ringo/ceiling", "gloo time_us", "openmpi time_us", "ringo/gloo time", "ringo/ompi time"]
    out.write("| " + " | ".join(head) + " |\n")
    out.write("|" + "|".join("---:" for _ in head) + "|\n")
    for b in sizes:
        rt = get(rg, b, "time_us")
        rb = get(rg, b, "busbw_gbps")
        bw = {p: get(pr[p], b, "busbw_gbps") for p in shown}
        tm = {p: get(pr[p], b, "time_us") for p in shown}
        row = [human(b) + ("!" if b in wrong else ""), num(rt, "%.1f"), num(rb)]
        row += [num(bw[p]) for p in shown]
        row += [num(cg), ratio(rb, bw["gloo"]), ratio(rb, bw["openmpi"])]
        if "openmpi-shm" in shown:
            row += [ratio(rb, bw["openmpi-shm"])]
        row += [ratio(rb, cg), num(tm["gloo"], "%.1f"), num(tm["openmpi"], "%.1f"),
                ratio(rt, tm["gloo"]), ratio(rt, tm["openmpi"])]
        out.write("| " + " | ".join(row) + " |\n")
    if wrong:
        out.write("\n`!`: ringo reported wrong results at these sizes.\n")


def main():
    p = argparse.ArgumentParser(description="markdown tables from compare-peers.sh results")
    p.add_argument("dir")
    p.add_argument("--np", default="", help='only these process counts, e.g. "2 4"')
    a = p.parse_args()
    ringo, peers, ceiling = load(a.dir)
    nps = sorted(set(ringo) | {n for _, n in peers} | set(ceiling))
    if a.np.split():
        want = {int(x) for x in a.np.split()}
        nps = [n for n in nps if n in want]
    if not nps:
        print("no results in %s" % a.dir, file=sys.stderr)
        return 1
    sys.stdout.write("busbw in GB/s (1e9 B/s), nccl-tests convention: algbw = bytes/time, "
                     "busbw = algbw*2(n-1)/n. Ratios > 1: ringo is faster (busbw) "
                     "or slower (time).\n")
    for n in nps:
        table(n, ringo, peers, ceiling, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
