"""Record the project's real CPU sample traces with ``torch.profiler``.

Trains a tiny MLP on random data for a few steps under the profiler and writes a gzipped
Chrome trace next to this script::

    python sample_traces/record_cpu_training.py              # -> cpu_tiny_training.pt.trace.json.gz
    python sample_traces/record_cpu_training.py --slow-data  # -> cpu_slow_dataloader.pt.trace.json.gz

``--slow-data`` makes the Dataset sleep in ``__getitem__`` (2 ms per sample, ``num_workers=0``),
so the ``enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__`` ranges dominate each step.

The recordings are real, so their timings differ on every run; tests check structure only
(6 ``ProfilerStep#2``..``#7`` steps, CPU ops, memory events, no device activity).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, schedule
from torch.utils.data import DataLoader, Dataset

HERE = Path(__file__).resolve().parent
WAIT, WARMUP, ACTIVE = 1, 1, 6
TOTAL_STEPS = 12
"""Steps the loop runs; the schedule (one cycle) records steps 2..7 as ProfilerStep#2..#7."""

SLOW_SECONDS_PER_SAMPLE = 0.002


class RandomRegression(Dataset):
    """Random features and targets, generated once from a fixed seed."""

    def __init__(self, samples: int, features: int, sleep_s: float = 0.0) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(samples, features, generator=gen)
        self.y = torch.randn(samples, 1, generator=gen)
        self.sleep_s = sleep_s

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sleep_s:
            time.sleep(self.sleep_s)  # a slow decode / augmentation / remote read
        return self.x[index], self.y[index]


def tiny_mlp(features: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 1),
    )


def record(output: Path, *, slow_data: bool, batch_size: int = 16, features: int = 32, hidden: int = 64) -> Path:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dataset = RandomRegression(
        samples=batch_size * TOTAL_STEPS,
        features=features,
        sleep_s=SLOW_SECONDS_PER_SAMPLE if slow_data else 0.0,
    )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    model = tiny_mlp(features, hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.MSELoss()

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        with profile(
            activities=[ProfilerActivity.CPU],
            schedule=schedule(wait=WAIT, warmup=WARMUP, active=ACTIVE, repeat=1),
            record_shapes=True,
            profile_memory=True,
            with_stack=True,
            on_trace_ready=lambda p: p.export_chrome_trace(str(raw)),
        ) as prof:
            for step, (x, y) in enumerate(loader):
                if step >= TOTAL_STEPS:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                prof.step()
        # mtime=0 and no file name in the gzip header: the archive depends only on the JSON.
        with (
            raw.open("rb") as src,
            output.open("wb") as dst_file,
            gzip.GzipFile(filename="", mode="wb", fileobj=dst_file, mtime=0, compresslevel=9) as dst,
        ):
            shutil.copyfileobj(src, dst)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow-data", action="store_true", help="sleep 2 ms per sample in Dataset.__getitem__")
    parser.add_argument("--output", type=Path, default=None, help="where to write the .pt.trace.json.gz")
    args = parser.parse_args()
    name = "cpu_slow_dataloader.pt.trace.json.gz" if args.slow_data else "cpu_tiny_training.pt.trace.json.gz"
    output = args.output or HERE / name
    record(output, slow_data=args.slow_data)
    print(f"wrote {output} ({os.path.getsize(output):,} bytes)")


if __name__ == "__main__":
    main()
