#!/usr/bin/env python3
"""All-reduce benchmark for torch.distributed's Gloo backend (CPU, TCP).

With --backend nccl (or --device cuda with gloo) the tensors are on GPU
cuda:(rank mod the visible GPUs) and the time includes a
torch.cuda.synchronize() after the timed calls. NCCL refuses two ranks on
one GPU; gloo over CUDA tensors copies them to the host and back.

Run without RANK in the environment, it launches --np copies of itself as
subprocesses (MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE set, env:// init) and
waits for them. Rank 0 prints one JSON line per size:

  {"peer":"gloo","np":N,"bytes":B,"time_us":t,"algbw_gbps":a,"busbw_gbps":b}

time_us follows nccl-tests: every rank times --iters back-to-back float32 sum
all-reduces after --warmup untimed ones and averages them; the reported time
is the maximum of those averages over ranks. algbw = bytes/time (1 GB = 1e9
bytes), busbw = algbw * 2(n-1)/n.

Needs a Python that has torch (Debian's python3-torch: /usr/bin/python3).
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time


def parse_size(s):
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*", s)
    if not m:
        raise argparse.ArgumentTypeError("bad size %r (want e.g. 4096, 4K, 64M)" % s)
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    return int(m.group(1)) * mult


def sizes(lo, hi):
    b = max(lo, 4)
    while b <= hi:
        yield b
        b *= 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args):
    port = str(args.port or free_port())
    procs = []

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    # A timeout(1) around us sends SIGTERM: take the ranks down with us.
    signal.signal(signal.SIGTERM, on_term)
    rc = 0
    try:
        for r in range(args.np):
            env = dict(os.environ)
            env.update(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                RANK=str(r),
                WORLD_SIZE=str(args.np),
            )
            # Gloo otherwise resolves the host name, which may not be loopback.
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
            procs.append(subprocess.Popen([sys.executable] + sys.argv, env=env))
        # One failed rank leaves the others blocked in a collective, so
        # watch them all and stop at the first failure.
        while any(p.poll() is None for p in procs):
            if any(p.returncode for p in procs if p.returncode is not None):
                break
            time.sleep(0.1)
        rc = next((p.returncode for p in procs if p.returncode), 0)
    except KeyboardInterrupt:
        rc = 130
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return rc


def worker(args):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    rank = int(os.environ["RANK"])
    n = int(os.environ["WORLD_SIZE"])
    dist.init_process_group(args.backend, init_method="env://", rank=rank, world_size=n)
    dev = "cpu"
    sync = lambda: None
    if args.backend == "nccl" or args.device == "cuda":
        dev = "cuda:%d" % (rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        sync = torch.cuda.synchronize

    for b in sizes(args.min_bytes, args.max_bytes):
        count = b // 4
        x = torch.ones(count, dtype=torch.float32, device=dev)
        dist.all_reduce(x)  # also a correctness check
        if not torch.all(x == float(n)):
            print("gloo: wrong all-reduce result at %d bytes" % b, file=sys.stderr)
            return 1
        x.zero_()  # a steady value: repeated sums of ones would overflow
        for _ in range(args.warmup):
            dist.all_reduce(x)
        sync()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            dist.all_reduce(x)
        sync()
        avg = (time.perf_counter() - t0) / args.iters
        t = torch.tensor([avg], dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        sec = t.item()
        if rank == 0:
            algbw = b / sec / 1e9
            print(json.dumps({
                "peer": args.peer,
                "np": n,
                "bytes": b,
                "time_us": round(sec * 1e6, 2),
                "algbw_gbps": round(algbw, 4),
                "busbw_gbps": round(algbw * 2 * (n - 1) / n, 4),
            }), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--min-bytes", type=parse_size, default=4 << 10)
    p.add_argument("--max-bytes", type=parse_size, default=64 << 20)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per rank")
    p.add_argument("--port", type=int, default=0, help="MASTER_PORT (default: a free one)")
    p.add_argument("--peer", default="gloo", help="name in the JSON output")
    p.add_argument("--backend", default="gloo", choices=["gloo", "nccl"], help="torch.distributed backend")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the tensors live (nccl: always cuda)")
    args = p.parse_args()
    if args.np < 1 or args.iters < 1 or args.warmup < 0:
        p.error("need --np >= 1, --iters >= 1, --warmup >= 0")
    if "RANK" in os.environ:
        return worker(args)
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
