"""Unfused elementwise and normalisation block: what ``torch.compile`` fuses.

Bad: a residual block written op by op as many models do, on a 4096 x 4096 activation
on a GPU: a hand-written RMS norm (``pow``, ``mean``, ``add``, ``rsqrt``, ``mul``, ``mul``
by the weight), a bias and a tanh-GELU spelled out (about ten ops), a scale and the
residual ``add``: each op a separate memory-bound kernel reading and writing the whole
tensor, and a matching chain in the backward. A small ``Linear`` feeds it so that the
matmuls stay a small part of the step. Fixed: the same module through ``torch.compile``
(default mode): Inductor fuses the chain into a few Triton kernels forward and backward.
Compilation happens in the start-up steps, before anything is measured.

On CPU ``torch.compile`` needs a C++ compiler and takes minutes on a small machine; if it
fails the fixed run exits with code 3 (skipped) and the reason, rather than recording an
uncompiled run as "fixed".

    python sample_traces/scenarios/compile_fusion.py [--fixed] [--device cuda] [--out runs] [--steps 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import _harness
import torch
from torch import nn

IN = 64
BATCH, HIDDEN = 256, 1024
CUDA_BATCH, CUDA_HIDDEN = 4096, 4096
SQRT_2_OVER_PI = 0.7978845608028654


class Block(nn.Module):
    """Linear, then RMS norm, bias, tanh-GELU, scale and residual, each written as separate ops."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(IN, hidden)
        self.weight = nn.Parameter(torch.ones(hidden))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        n = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        n = n + self.bias
        g = 0.5 * n * (1.0 + torch.tanh(SQRT_2_OVER_PI * (n + 0.044715 * n * n * n)))
        return self.head(h + 0.5 * g)


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = _harness.device(args)
    batch, hidden = _harness.pick(args, (BATCH, HIDDEN), (CUDA_BATCH, CUDA_HIDDEN))
    block = Block(hidden).to(dev)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.01)
    x, y = torch.randn(batch, IN).to(dev), torch.randn(batch, 1).to(dev)
    forward = block
    if args.fixed:
        compiled = torch.compile(block)
        try:
            loss = nn.functional.mse_loss(compiled(x), y)  # compile now: a failure is a skip, not a crash
            loss.backward()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise _harness.Skip(f"torch.compile failed on {dev}: {type(exc).__name__}: {first[:200]}") from exc
        forward = compiled  # type: ignore[assignment]

    def train_step(_: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(forward(x), y)
        loss.backward()
        optimizer.step()

    _harness.run_loop(args, "compile_fusion", train_step, extra={"compiled": "default" if args.fixed else None})


if __name__ == "__main__":
    _harness.main_guard(main)
