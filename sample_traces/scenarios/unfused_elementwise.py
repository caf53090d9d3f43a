"""Unfused elementwise chain: an activation written as nine separate tensor ops.

Bad: the tanh-approximated GELU spelled out,
``0.5 * h * (1 + tanh(0.79788456 * (h + 0.044715 * h * h * h)))``, on a 256 x 2048
activation: every op reads and writes the whole tensor (and autograd saves most of
them and runs a matching chain backwards). Fixed:
``torch.nn.functional.gelu(h, approximate="tanh")``, the same function (max
difference ~2e-7) in one fused kernel forward and one backward. On a GPU the same
change removes ~8 kernel launches and ~8 round trips through device memory per call;
``torch.compile`` would fuse it too, but compiling takes far longer than this CPU run.

    python sample_traces/scenarios/unfused_elementwise.py [--fixed] [--out runs] [--steps 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import _harness
import torch
from torch import nn

BATCH = 256
IN = 16
HIDDEN = 2048
CUDA_BATCH = 4096
CUDA_HIDDEN = 4096
"""On a GPU: a 4096 x 4096 activation (64 MB), so each elementwise op is a memory-bound kernel of tens of µs."""
SQRT_2_OVER_PI = 0.7978845608028654


def gelu_unfused(h: torch.Tensor) -> torch.Tensor:
    return 0.5 * h * (1.0 + torch.tanh(SQRT_2_OVER_PI * (h + 0.044715 * h * h * h)))


def gelu_fused(h: torch.Tensor) -> torch.Tensor:
    return nn.functional.gelu(h, approximate="tanh")


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = _harness.device(args)
    batch, hidden = _harness.pick(args, (BATCH, HIDDEN), (CUDA_BATCH, CUDA_HIDDEN))
    lin1, lin2 = nn.Linear(IN, hidden).to(dev), nn.Linear(hidden, 1).to(dev)
    act = gelu_fused if args.fixed else gelu_unfused
    optimizer = torch.optim.SGD([*lin1.parameters(), *lin2.parameters()], lr=0.01)
    x, y = torch.randn(batch, IN).to(dev), torch.randn(batch, 1).to(dev)

    def train_step(_: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(lin2(act(lin1(x))), y)
        loss.backward()
        optimizer.step()

    _harness.run_loop(args, "unfused_elementwise", train_step)


if __name__ == "__main__":
    _harness.main_guard(main)
