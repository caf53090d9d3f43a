"""Data starvation: the training step waits for a slow Dataset read in the main process.

Bad: ``DataLoader(num_workers=0)``, so every batch is read (``__getitem__`` sleeps
0.25 ms per sample, a stand-in for decoding or a remote read: 32 samples = ~8-9 ms)
on the training thread before the model can run (~6-7 ms). The
``enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__`` range takes most of
each step. Fixed: ``num_workers=2, persistent_workers=True``: two worker processes
read the next batches while the model trains, and the ``__next__`` range shrinks to
taking a ready batch off the queue.

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


class SlowDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random samples that take a fixed time to "read"."""

    def __init__(self, samples: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(samples, FEATURES, generator=gen)
        self.y = torch.randn(samples, 1, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(SLEEP_PER_SAMPLE_S)
        return self.x[index], self.y[index]


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dataset = SlowDataset(BATCH * (_harness.total_steps(args) + 4))
    if args.fixed:
        # Batches come back from the workers through shared memory; naming it by file is cheaper
        # than passing a file descriptor over a socket per tensor (~1.7 ms per batch on this VM).
        torch.multiprocessing.set_sharing_strategy("file_system")
        loader = DataLoader(dataset, batch_size=BATCH, num_workers=2, persistent_workers=True, prefetch_factor=2)
    else:
        loader = DataLoader(dataset, batch_size=BATCH, num_workers=0)
    model = nn.Sequential(nn.Linear(FEATURES, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = iter(loader)

    def train_step(_: int) -> None:
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()

    _harness.run_loop(args, "data_starvation", train_step)


if __name__ == "__main__":
    main()
