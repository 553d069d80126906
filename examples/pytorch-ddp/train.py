"""A plain PyTorch DDP script: it runs under `ringo launch` unchanged,
exactly as under torchrun, because ringo gives each worker torchrun's
environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...).

    ringo launch --nproc-per-node gpu -- python3 train.py      # NCCL, a GPU each
    ringo launch --nproc-per-node 2   -- python3 train.py      # gloo on CPU

It trains a small linear model on synthetic data, checks that every
replica holds the same weights at the end, and prints one line per rank.
"""
import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()

    use_cuda = torch.cuda.is_available() and "LOCAL_RANK" in os.environ
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")  # CUDA_VISIBLE_DEVICES holds one GPU

    torch.manual_seed(0)
    model = DDP(torch.nn.Linear(16, 1).to(device), device_ids=[0] if use_cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1 + rank)  # each rank its own data
    true_w = torch.arange(16, dtype=torch.float32) / 16
    for _ in range(args.steps):
        x = torch.randn(64, 16, generator=gen)
        y = x @ true_w + 0.5
        loss = torch.nn.functional.mse_loss(model(x.to(device)).squeeze(1), y.to(device))
        opt.zero_grad()
        loss.backward()  # DDP all-reduces the gradients here
        opt.step()

    # Every replica must hold the same weights.
    flat = torch.cat([q.detach().flatten() for q in model.parameters()]).to(device)
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], g) for g in gathered)
    print(f"ddp rank {rank}/{world} local {local} backend {backend} loss {loss.item():.4f} "
          f"replicas identical {same} restarts {os.environ.get('TORCHELASTIC_RESTART_COUNT')}", flush=True)
    dist.destroy_process_group()
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
