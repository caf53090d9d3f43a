"""Record a torch.compile'd loop with a graph break and a recompilation inside the profiled steps.

The model is compiled (``backend="aot_eager"``: no C++ toolchain needed on CPU; Dynamo's
graph capture, guards and recompilation are the same as with Inductor). Its forward has a
data-dependent ``if`` on a tensor value, which Dynamo cannot trace: the frame is split in
two compiled regions with eager code between them (a graph break, every step). At the
third recorded step the batch size changes from 16 to 24, the shape guard fails and both
frames are recompiled inside that step. Written through ``mlprof.profile`` to
``sample_traces/compile_graph_break/`` (``trace.rank0.json.gz`` + ``meta.json``)::

    python sample_traces/record_compile.py

The fixed form of the same model (not recorded) replaces the ``if`` by ``torch.where`` and
marks the batch dimension dynamic (``torch._dynamo.mark_dynamic(x, 0)``).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

try:
    import mlprof
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import mlprof

OUT = Path(__file__).resolve().parent / "compile_graph_break"
WAIT, WARMUP, ACTIVE = 3, 1, 4
RESHAPE_AT = WAIT + WARMUP + 2
"""First step with the new batch size: the third recorded step."""


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if h.mean() > 0.1:  # data-dependent branch: Dynamo breaks the graph here
            h = h * 2
        return torch.tanh(self.b(h)).sum()


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.compile(Block(), backend="aot_eager")
    with tempfile.TemporaryDirectory() as tmp:
        with mlprof.profile(
            name="run",
            out_dir=tmp,
            wait=WAIT,
            warmup=WARMUP,
            active=ACTIVE,
            with_stack=False,
            profile_memory=False,
            summary=False,
            tags={"recording": "compile_graph_break"},
        ) as run:
            for i in range(WAIT + WARMUP + ACTIVE):
                x = torch.randn(24 if i >= RESHAPE_AT else 16, 64)
                with torch.no_grad():
                    model(x)
                run.step()
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(Path(tmp) / "run", OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
