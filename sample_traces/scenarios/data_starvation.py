"""Data starvation: the training step waits for a slow Dataset read in the main process.

Bad: ``DataLoader(num_workers=0)``, so every batch is read (``__getitem__`` sleeps
0.25 ms per sample, a stand-in for decoding or a remote read: 32 samples = ~8-9 ms)
on the training thread before the model can run (~6-7 ms). The
``enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__`` range takes most of
each step. Fixed: ``num_workers=2, persistent_workers=True``: two worker processes
read the next batches while the model trains, and the ``__next__`` range shrinks to
taking a ready batch off the queue.

On a GPU (``--device cuda``) the batch is 1024 x 1024 and is read in one go
(``__getitems__`` sleeps 8 µs per sample, ~8 ms per batch), the model is wider (~3 ms of
FP32 matmuls per step on an H200), and the fix is the usual pair: ``num_workers=8`` with
``pin_memory=True``, and the batch copied with ``non_blocking=True``.

    python sample_traces/scenarios/data_starvation.py [--fixed] [--out runs] [--steps 5]
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import _harness
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

BATCH = 32
FEATURES = 512
SLEEP_PER_SAMPLE_S = 0.00025
CUDA_BATCH = 1024
CUDA_FEATURES = 1024
CUDA_HIDDEN = 4096
CUDA_SLEEP_PER_SAMPLE_S = 0.000008
CUDA_WORKERS = 8


class SlowDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random samples that take a fixed time to "read"."""

    def __init__(self, samples: int, features: int = FEATURES, sleep_s: float = SLEEP_PER_SAMPLE_S) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(samples, features, generator=gen)
        self.y = torch.randn(samples, 1, generator=gen)
        self.sleep_s = sleep_s

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(self.sleep_s)
        return self.x[index], self.y[index]


class SlowBatchDataset(SlowDataset):
    """The same, read a batch at a time: one sleep per batch (sleeps of a few µs are not precise)."""

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        time.sleep(self.sleep_s * len(indices))
        return [(self.x[i], self.y[i]) for i in indices]


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = _harness.device(args)
    cuda = dev == "cuda"
    batch, features, hidden = _harness.pick(args, (BATCH, FEATURES, 1024), (CUDA_BATCH, CUDA_FEATURES, CUDA_HIDDEN))
    samples = batch * (_harness.total_steps(args) + 4)
    if cuda:
        dataset: SlowDataset = SlowBatchDataset(samples, features, CUDA_SLEEP_PER_SAMPLE_S)
    else:
        dataset = SlowDataset(samples)
    if args.fixed:
        # Batches come back from the workers through shared memory; naming it by file is cheaper
        # than passing a file descriptor over a socket per tensor (~1.7 ms per batch on this VM).
        torch.multiprocessing.set_sharing_strategy("file_system")
        loader = DataLoader(
            dataset,
            batch_size=batch,
            num_workers=CUDA_WORKERS if cuda else 2,
            persistent_workers=True,
            prefetch_factor=2,
            pin_memory=cuda,
        )
    else:
        loader = DataLoader(dataset, batch_size=batch, num_workers=0)
    model = nn.Sequential(
        nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    ).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = iter(loader)
    non_blocking = cuda and args.fixed

    def train_step(_: int) -> None:
        x, y = next(batches)
        if cuda:
            x, y = x.to(dev, non_blocking=non_blocking), y.to(dev, non_blocking=non_blocking)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()

    _harness.run_loop(args, "data_starvation", train_step)


if __name__ == "__main__":
    _harness.main_guard(main)
