"""Unfused attention: softmax(Q K^T / sqrt(d)) V written out as two matmuls and a softmax.

Bad: a self-attention block (2 heads of 64 over 2048 tokens, batch 1, inference under
``torch.no_grad``) computes the scores ``q @ k.transpose(-2, -1) * scale``, their
softmax and ``p @ v`` as separate ops: the 1 x 2 x 2048 x 2048 score matrix (32 MiB
in FP32) is written out, scaled, normalised and read back. Fixed:
``torch.nn.functional.scaled_dot_product_attention(q, k, v)``, the same function (max
difference ~1e-6) in one fused op that never materialises the score matrix (on CPU
``_scaled_dot_product_flash_attention_for_cpu``; on a GPU the flash or
memory-efficient kernel). The projections before and after are the same both ways.
(Unprofiled, on this 2-core CPU, attention alone: at 512 tokens both forms took about
the same time, the score matrix still fit in cache; at 1024 the unfused form took ~1.6x
as long, at 2048 ~2x.)

On a GPU (``--device cuda``, for sample_traces/scenarios/gpu/run_all.py): batch 4, 16 heads
of 64 over 2048 tokens in bfloat16 both ways (a 512 MiB score matrix), so that the unfused
form is memory-bound and SDPA dispatches to the flash kernel.

    python sample_traces/scenarios/attention.py [--fixed] [--out runs] [--steps 5]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import _harness
import torch
from torch import nn

BATCH = 1
HEADS = 2
SEQ = 2048
HEAD_DIM = 64
WIDTH = HEADS * HEAD_DIM
CUDA_BATCH, CUDA_HEADS = 4, 16


def attention_unfused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1]))
    return torch.softmax(scores, dim=-1) @ v


def attention_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return nn.functional.scaled_dot_product_attention(q, k, v)


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = _harness.device(args)
    batch, n_heads = _harness.pick(args, (BATCH, HEADS), (CUDA_BATCH, CUDA_HEADS))
    width = n_heads * HEAD_DIM
    dtype = _harness.pick(args, torch.float32, torch.bfloat16)
    qkv, out = nn.Linear(width, 3 * width).to(dev, dtype), nn.Linear(width, width).to(dev, dtype)
    attend = attention_fused if args.fixed else attention_unfused
    x = torch.randn(batch, SEQ, width).to(dev, dtype)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, SEQ, n_heads, HEAD_DIM).transpose(1, 2)

    @torch.no_grad()
    def train_step(_: int) -> None:
        q, k, v = qkv(x).chunk(3, dim=-1)
        o = attend(heads(q), heads(k), heads(v))
        out(o.transpose(1, 2).reshape(batch, SEQ, width))

    _harness.run_loop(
        args,
        "attention",
        train_step,
        extra={"batch": batch, "heads": n_heads, "seq": SEQ, "head_dim": HEAD_DIM, "dtype": str(dtype)},
    )


if __name__ == "__main__":
    _harness.main_guard(main)
