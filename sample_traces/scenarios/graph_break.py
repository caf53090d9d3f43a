"""torch.compile with a graph break every step: a Python ``if`` on a tensor value inside the compiled forward.

Bad: the forward of a compiled 3-layer MLP (``backend="aot_eager"``: Dynamo's graph capture,
guards and resume frames as with Inductor, no C++ toolchain needed on this CPU) branches on
``h.mean() > 0.1`` after the first two layers. Dynamo cannot trace a branch on a tensor value:
it splits the frame at each ``if`` into a compiled graph, eager code (the ``.item()`` that
reads the value, the branch) and a resume frame compiled separately, so every forward runs
three compiled regions with eager Python between them (two graph breaks). Fixed: the same computation with
``torch.where(h.mean() > 0.1, h * 2, h)``, compiled with ``fullgraph=True``: one graph.
Inference (``no_grad``), batch 16 x 64: small enough that Dynamo's per-region overhead is
what a step costs.

    python sample_traces/scenarios/graph_break.py [--fixed] [--out runs] [--steps 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import _harness
import torch
from torch import nn

WIDTH = 64
BATCH = 16


class Net(nn.Module):
    def __init__(self, fixed: bool) -> None:
        super().__init__()
        self.a, self.b, self.c = (nn.Linear(WIDTH, WIDTH) for _ in range(3))
        self.fixed = fixed

    def branch(self, h: torch.Tensor) -> torch.Tensor:
        if self.fixed:
            return torch.where(h.mean() > 0.1, h * 2, h)  # stays in the graph
        if h.mean() > 0.1:  # data-dependent branch: a graph break
            return h * 2
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Straight-line code (a break inside a loop makes Dynamo run the whole frame eagerly instead).
        h = self.branch(torch.relu(self.a(x)))
        h = self.branch(torch.relu(self.b(h)))
        return torch.tanh(self.c(h)).sum()


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = _harness.device(args)
    model = torch.compile(Net(args.fixed).to(dev), backend="aot_eager", fullgraph=args.fixed)
    x = torch.randn(BATCH, WIDTH).to(dev)

    def train_step(_: int) -> None:
        with torch.no_grad():
            model(x)

    _harness.run_loop(args, "graph_break", train_step, extra={"breaks_per_step": 0 if args.fixed else 2})


if __name__ == "__main__":
    _harness.main_guard(main)
