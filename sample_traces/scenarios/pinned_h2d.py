"""Pageable, blocking host-to-device copies: each batch is copied from ordinary host memory.

Bad: the batches (4 x 64 MB, prepared once and cycled) live in pageable host memory and
are copied with ``x.to("cuda")``: the driver stages every copy through a pinned bounce
buffer at a fraction of PCIe bandwidth, and the host waits for the copy before it can
launch the step's kernels (~2 ms of matmuls on an H200). Fixed: the same batches in pinned
(page-locked) memory, copied with ``non_blocking=True``: a direct DMA at full bandwidth,
and the host goes on launching while it runs.

Pinned memory needs CUDA: on CPU the bad run is recorded (the copy is a no-op there) and
``--fixed`` exits with code 3 (skipped) and one line saying so.

    python sample_traces/scenarios/pinned_h2d.py [--fixed] [--device cuda] [--out runs] [--steps 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import _harness
import torch
from torch import nn

BUFFERS = 4
ROWS, FEATURES, HIDDEN = 16384, 1024, 1024
"""One batch: 16384 x 1024 FP32 = 64 MB."""
CPU_ROWS = 32


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    _harness.skip_unless_cuda(args, "pinned host memory")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = _harness.device(args)
    cuda = dev == "cuda"
    rows = _harness.pick(args, CPU_ROWS, ROWS)
    host = [torch.randn(rows, FEATURES) for _ in range(BUFFERS)]
    if args.fixed:
        host = [b.pin_memory() for b in host]
    model = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1)).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def train_step(i: int) -> None:
        x = host[i % BUFFERS]
        if cuda:
            x = x.to(dev, non_blocking=args.fixed)
        optimizer.zero_grad(set_to_none=True)
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()

    _harness.run_loop(args, "pinned_h2d", train_step, extra={"batch_bytes": rows * FEATURES * 4, "pinned": args.fixed})


if __name__ == "__main__":
    _harness.main_guard(main)
