"""Launch-bound small model: the GPU waits for Python to dispatch ~200 tiny kernels a step.

Bad: a 16-layer, 64-wide MLP on a batch of 32, trained eagerly: every layer's forward and
backward kernels take a few µs on a GPU, less than the host needs to dispatch them
(Python, the dispatcher, ``cudaLaunchKernel``), so the GPU idles between kernels and the
step time is the host's. Fixed: ``torch.compile(model, mode="reduce-overhead")``: the
forward and backward are compiled and replayed as CUDA graphs, one launch each; the
optimizer stays eager (``SGD(foreach=True)``, a few kernels). Compilation happens in the
start-up steps, before anything is measured.

CUDA graphs need a GPU: on CPU the bad (eager) run is recorded and ``--fixed`` exits with
code 3 (skipped) and one line saying so.

    python sample_traces/scenarios/launch_bound.py [--fixed] [--device cuda] [--out runs] [--steps 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import _harness
import torch
from torch import nn

LAYERS = 16
WIDTH = 64
BATCH = 32


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    _harness.skip_unless_cuda(args, 'CUDA graphs, torch.compile(mode="reduce-overhead")')
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = _harness.device(args)
    model = nn.Sequential(*[m for _ in range(LAYERS) for m in (nn.Linear(WIDTH, WIDTH), nn.ReLU())]).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, foreach=True)
    forward = torch.compile(model, mode="reduce-overhead") if args.fixed else model
    x, y = torch.randn(BATCH, WIDTH).to(dev), torch.randn(BATCH, WIDTH).to(dev)

    def train_step(_: int) -> None:
        if args.fixed:
            torch.compiler.cudagraph_mark_step_begin()  # the graph's outputs of the last step are not reused
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(forward(x), y)
        loss.backward()
        optimizer.step()

    _harness.run_loop(args, "launch_bound", train_step, extra={"compiled": "reduce-overhead" if args.fixed else None})


if __name__ == "__main__":
    _harness.main_guard(main)
