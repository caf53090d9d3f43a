"""nn.DataParallel: one process drives every GPU (replicate, scatter, parallel_apply, gather per step).

Bad: the model is wrapped in ``torch.nn.DataParallel``. On a machine with several GPUs
every forward broadcasts the parameters to each device (``replicate``), splits the
batch (``scatter``), runs the replicas in Python threads that share one GIL
(``parallel_apply``) and copies the outputs back to the first GPU (``gather``); the
first GPU also holds every gradient reduction. Fixed: the bare module, which is what
each process runs under ``DistributedDataParallel`` (one process per GPU; the DDP
all-reduce itself is the ``comm_no_overlap`` scenario). On this CPU recording
``DataParallel`` has no devices to split across and calls the module directly, so the
two run the same ops and the same time: the recording is the detection case (the
``DataParallel.forward`` range in the trace), not a speed-up.

    python sample_traces/scenarios/data_parallel.py [--fixed] [--out runs] [--steps 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import _harness
import torch
from torch import nn

LAYERS = 4
WIDTH = 256
BATCH = 64


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = _harness.device(args)
    body = nn.Sequential(*[m for _ in range(LAYERS) for m in (nn.Linear(WIDTH, WIDTH), nn.ReLU())]).to(dev)
    model: nn.Module = body if args.fixed else nn.DataParallel(body)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(BATCH, WIDTH).to(dev), torch.randn(BATCH, WIDTH).to(dev)

    def train_step(_: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()

    _harness.run_loop(args, "data_parallel", train_step, extra={"gpus": torch.cuda.device_count()})


if __name__ == "__main__":
    main()
