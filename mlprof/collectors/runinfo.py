"""Who, where and what: rank/world detection and the facts that go into ``meta.json``.

A profile is only comparable to another one if we know what ran: the command line,
the commit (and whether the tree was dirty), the machine, the GPUs and the software
versions. Everything here is best effort and bounded in time (git gets 2 s): a fact
that cannot be read is ``null``, never an exception.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

META_SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    source: str
    """``torch.distributed`` (initialised process group), ``env`` (RANK/WORLD_SIZE/LOCAL_RANK) or ``default``."""
    backend: str | None = None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


def dist_info() -> DistInfo:
    """Rank and world size from ``torch.distributed`` if initialised, else the launcher's env vars."""
    local = _env_int("LOCAL_RANK")
    try:
        if "torch" in sys.modules:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                rank = dist.get_rank()
                return DistInfo(
                    rank=rank,
                    world_size=dist.get_world_size(),
                    local_rank=local if local is not None else rank,
                    source="torch.distributed",
                    backend=str(dist.get_backend()),
                )
    except Exception:
        pass
    env_rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if env_rank is not None:
        return DistInfo(
            rank=env_rank,
            world_size=world if world is not None else env_rank + 1,
            local_rank=local if local is not None else env_rank,
            source="env",
        )
    return DistInfo(rank=0, world_size=1, local_rank=0, source="default")


def git_info(cwd: str | None = None, timeout_s: float = 2.0) -> dict[str, Any]:
    """Commit and dirty flag of the repository holding ``cwd`` (tracked files only); nulls outside git."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def software_versions() -> dict[str, Any]:
    versions: dict[str, Any] = {"python": platform.python_version(), "torch": None, "cuda": None, "cudnn": None}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            versions["torch"] = str(torch.__version__)
            versions["cuda"] = torch.version.cuda
            versions["hip"] = getattr(torch.version, "hip", None)
            cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
            versions["cudnn"] = cudnn
        except Exception:
            pass
    try:
        from mlprof import __version__

        versions["mlprof"] = __version__
    except Exception:
        versions["mlprof"] = None
    return versions


def gpu_info() -> dict[str, Any]:
    """GPUs this process can use, as torch sees them (after ``CUDA_VISIBLE_DEVICES``)."""
    info: dict[str, Any] = {"cuda_available": False, "count": 0, "models": [], "driver_version": None}
    info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    torch = sys.modules.get("torch")
    if torch is None:
        return info
    try:
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            info.update(cuda_available=True, count=n, models=[torch.cuda.get_device_name(i) for i in range(n)])
    except Exception:
        pass
    return info


def base_meta(
    *, name: str, tags: dict[str, str], start_ns: int, dist: DistInfo, cwd: str | None = None
) -> dict[str, Any]:
    """The ``meta.json`` facts known when the run starts."""
    return {
        "schema_version": META_SCHEMA_VERSION,
        "run": name,
        "tags": dict(tags),
        "start_time_ns": start_ns,
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start_ns / 1e9)),
        "end_time_ns": None,
        "command_line": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "git": git_info(cwd),
        "distributed": asdict(dist),
        "world_size": dist.world_size,
        "rank": dist.rank,
        "gpus": gpu_info(),
        "versions": software_versions(),
        "platform": {"system": platform.system(), "machine": platform.machine(), "cpu_count": os.cpu_count()},
    }
