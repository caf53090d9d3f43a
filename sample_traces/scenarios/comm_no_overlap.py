"""Communication not overlapped: gradients all-reduced one by one after the backward pass.

Two processes (``torch.multiprocessing.spawn``, gloo on localhost) train the same
MLP on different data. Bad: after ``loss.backward()`` the loop calls
``dist.all_reduce`` on each of the 16 gradients in turn: 16 blocking collectives that
start only when the whole backward pass is done, so none of them hides under
compute. Fixed: ``DistributedDataParallel``, which packs gradients into buckets and
starts each bucket's all-reduce from a backward hook, while the rest of the backward
pass still runs. Both ranks write ``trace.rank<N>.json.gz`` into the same run folder.

With ``--device cuda`` rank N trains on GPU N over NCCL (the machine needs two GPUs), and
the layers are 4096 wide so that the all-reduces are worth overlapping.

    python sample_traces/scenarios/comm_no_overlap.py [--fixed] [--out runs] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence

import _harness
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

WORLD = 2
LAYERS = 8
WIDTH = 256
BATCH = 32
CUDA_WIDTH = 4096
CUDA_BATCH = 256


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(rank: int, args: argparse.Namespace, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    cuda = _harness.device(args) == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        torch.set_num_threads(1)
        dev = f"cuda:{rank}" if cuda else "cpu"
        width, batch = _harness.pick(args, (WIDTH, BATCH), (CUDA_WIDTH, CUDA_BATCH))
        model: nn.Module = nn.Sequential(*[m for _ in range(LAYERS) for m in (nn.Linear(width, width), nn.ReLU())]).to(
            dev
        )
        if args.fixed:
            model = DistributedDataParallel(model, bucket_cap_mb=_harness.pick(args, 1, 25))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(rank)
        x, y = torch.randn(batch, width, generator=gen).to(dev), torch.randn(batch, width, generator=gen).to(dev)

        def train_step(_: int) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if not args.fixed:
                for p in model.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)  # blocking, one by one, after the whole backward
                        p.grad /= WORLD
            optimizer.step()

        _harness.run_loop(args, "comm_no_overlap", train_step, rank=rank, extra={"world_size": WORLD})
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    if _harness.device(args) == "cuda" and torch.cuda.device_count() < WORLD:
        raise _harness.Skip(f"needs {WORLD} GPUs, this machine has {torch.cuda.device_count()}")
    mp.spawn(worker, args=(args, _free_port()), nprocs=WORLD, join=True)


if __name__ == "__main__":
    _harness.main_guard(main)
