"""Host syncs every step: per-parameter statistics pulled to Python with ``.item()`` each step.

Bad: after every optimizer step the loop logs the loss and, for each of the 12
parameters of a 6-layer, 32-wide MLP, six statistics (norm, max and mean of the gradient
and of the weight), each with ``.item()`` (73 ``aten::item`` calls per step). On a GPU every ``.item()`` waits for
the device to drain its queue; on this CPU recording there is no queue to drain, so
the cost seen here is the per-step statistics ops and the 97 host round trips.
Fixed: the loss is accumulated as a tensor (``loss.detach()``) and the statistics
are computed and read once every ``LOG_EVERY`` = 50 steps, outside the recorded window.

    python sample_traces/scenarios/sync_item.py [--fixed] [--out runs] [--steps 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import _harness
import torch
from torch import nn

LAYERS = 6
WIDTH = 32
BATCH = 16
LOG_EVERY = 50


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__ or "", argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = _harness.device(args)
    model = nn.Sequential(*[m for _ in range(LAYERS) for m in (nn.Linear(WIDTH, WIDTH), nn.ReLU())]).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(BATCH, WIDTH).to(dev), torch.randn(BATCH, WIDTH).to(dev)
    log: list[dict[str, float]] = []
    running = torch.zeros((), device=dev)

    def log_stats(loss_value: float) -> None:
        stats = {"loss": loss_value}
        for name, p in model.named_parameters():
            grad, weight = p.grad if p.grad is not None else torch.zeros_like(p), p.detach()
            stats[f"{name}.grad_norm"] = grad.norm().item()
            stats[f"{name}.grad_max"] = grad.abs().max().item()
            stats[f"{name}.grad_mean"] = grad.mean().item()
            stats[f"{name}.norm"] = weight.norm().item()
            stats[f"{name}.max"] = weight.abs().max().item()
            stats[f"{name}.mean"] = weight.mean().item()
        log.append(stats)

    def train_step(i: int) -> None:
        nonlocal running
        optimizer.zero_grad(set_to_none=False)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        if not args.fixed:
            log_stats(loss.item())  # 1 + 6 * 12 host syncs, every step
        else:
            running = running + loss.detach()  # stays a tensor: no sync
            if (i + 1) % LOG_EVERY == 0:
                log_stats(running.item() / LOG_EVERY)
                running = torch.zeros((), device=dev)

    _harness.run_loop(args, "sync_item", train_step, extra={"log_every": 1 if not args.fixed else LOG_EVERY})


if __name__ == "__main__":
    _harness.main_guard(main)
