"""Unfused optimizer: ``Adam(foreach=False)`` updates 24 small parameters one by one.

Bad: the per-parameter ("for-loop") Adam runs ~10 small ops for each of the 24
parameters of a 12-layer 16-wide MLP: ~250 op dispatches per step, each one tiny.
Fixed: ``Adam(fused=True)``: one fused update over all parameters (on a GPU, one
multi-tensor kernel instead of hundreds of launches). On CPU the fused path still
does a few small ops per parameter (step counter ``add_``, ``to``, ``item``), so the
gain is smaller than on a GPU. (``foreach=True`` was tried too: on CPU it loops over
the tensors in C++ and the profiler records every inner op, so its trace showed no gain.) Same model, data and
hyper-parameters; the updates are the same up to rounding.

    python sample_traces/scenarios/unfused_optimizer.py [--fixed] [--out runs] [--steps 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import _harness
import torch
from torch import nn

LAYERS = 12
WIDTH = 16
BATCH = 8


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = _harness.device(args)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)]).to(dev)
    if args.fixed:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False)
    x, y = torch.randn(BATCH, WIDTH).to(dev), torch.randn(BATCH, WIDTH).to(dev)

    def train_step(_: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()

    _harness.run_loop(args, "unfused_optimizer", train_step)


if __name__ == "__main__":
    _harness.main_guard(main)
