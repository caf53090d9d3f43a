"""Memory leak: a metric kept with its autograd graph, ``val_losses.append(val_loss)``.

Bad: each step also evaluates the model on a held-out batch without
``torch.no_grad()`` and keeps the loss for logging. That loss still points at its
graph, and the graph holds the forward's saved activations (~0.5 MB here), so they
are never freed: allocated memory grows every step (on a GPU, until out-of-memory).
The trace's ``[memory]`` events show ``Total Allocated`` climbing. Fixed:
``val_losses.append(val_loss.detach())``: the same number is kept without the graph,
and memory stays flat. Step time barely changes; this pathology is about memory.

    python sample_traces/scenarios/memory_leak.py [--fixed] [--out runs] [--steps 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import _harness
import torch
from torch import nn

BATCH = 64
IN = 256
HIDDEN = 2048


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = _harness.device(args)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1)).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(BATCH, IN).to(dev), torch.randn(BATCH, 1).to(dev)
    x_val, y_val = torch.randn(BATCH, IN).to(dev), torch.randn(BATCH, 1).to(dev)
    val_losses: list[torch.Tensor] = []

    def train_step(_: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        val_loss = nn.functional.mse_loss(model(x_val), y_val)  # forgot torch.no_grad(): builds a graph
        val_losses.append(val_loss.detach() if args.fixed else val_loss)

    _harness.run_loop(args, "memory_leak", train_step)


if __name__ == "__main__":
    _harness.main_guard(main)
