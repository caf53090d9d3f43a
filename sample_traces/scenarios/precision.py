"""FP32 matmuls on a GPU with tensor cores: the MLP trained without mixed precision.

Bad: a 4-layer, 4096-wide MLP (batch 1024 on a GPU) runs its forward and backward in
FP32 with TF32 off (PyTorch's default for matmuls): cuBLAS picks FP32 kernels that do not
use the tensor cores. Fixed: the forward pass under ``torch.autocast(dtype=torch.bfloat16)``
(the backward follows in the same precisions), the same weights, data and optimizer.
On an H200 the matmuls are most of the step, so the gain is several-fold.

On CPU (``--device cpu``, 256 wide, batch 64) autocast to bfloat16 runs too, but a CPU
has no tensor cores; the recording shows the same ops in another dtype and no gain is
expected.

    python sample_traces/scenarios/precision.py [--fixed] [--device cuda] [--out runs] [--steps 5]
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import _harness
import torch
from torch import nn

LAYERS = 4
WIDTH, BATCH = 256, 64
CUDA_WIDTH, CUDA_BATCH = 4096, 1024


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = _harness.device(args)
    width, batch = _harness.pick(args, (WIDTH, BATCH), (CUDA_WIDTH, CUDA_BATCH))
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the default, stated: FP32 means FP32 here
    model = nn.Sequential(*[m for _ in range(LAYERS) for m in (nn.Linear(width, width), nn.GELU())]).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, width).to(dev), torch.randn(batch, width).to(dev)

    def precision() -> contextlib.AbstractContextManager[None]:
        if args.fixed:
            return torch.autocast(device_type=dev, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(_: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision():
            loss = nn.functional.mse_loss(model(x).float(), y)
        loss.backward()
        optimizer.step()

    _harness.run_loop(args, "precision", train_step, extra={"autocast": "bfloat16" if args.fixed else None})


if __name__ == "__main__":
    _harness.main_guard(main)
