"""``mlprof.profile``: one line in a training script gives a run folder ``mlprof analyze`` reads.

::

    with mlprof.profile(name="resnet-bs64") as run:      # or @mlprof.profile(...) on the train function
        for batch in loader:
            train_step(batch)
            run.step()                                   # or @mlprof.step on train_step, or mlprof.step()

It wraps ``torch.profiler.profile`` with defaults that skip the noisy start of a job
(``wait=5`` steps, ``warmup=2``, then ``active=5`` recorded steps), records CPU and,
when CUDA is available, CUDA activity with shapes, memory and Python stacks, samples
GPU counters (NVML; DCGM when asked) on a background thread, writes everything into
``out_dir/<name>/`` (see :mod:`mlprof.collectors.output`) and prints a short summary.

Nothing here may stop the training job: every call into the profiler, the samplers or
the file system is guarded, the first failure prints one warning, and the run goes on
with whatever still works (see :class:`~mlprof.collectors.faults.FaultLog`).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from mlprof.collectors.faults import FaultLog
from mlprof.collectors.output import COUNTER_COLUMNS, CounterFile, RunFolder, gzip_file, make_run_folder
from mlprof.collectors.output import write_json_atomic as _write_json
from mlprof.collectors.runinfo import DistInfo, base_meta, dist_info
from mlprof.collectors.sampling import BackgroundSampler, CounterSink

F = TypeVar("F", bound=Callable[..., Any])

CLOCK_NOTE = {
    "counters_ts": "int ns since the Unix epoch, from time.time_ns()",
    "trace_ts": "Kineto ts are µs relative to the trace header's baseTimeNanoseconds: "
    "epoch ns = ts * 1000 + baseTimeNanoseconds (the same clock as counters_ts)",
}


@dataclass(frozen=True)
class ProfileOptions:
    """Everything :func:`profile` accepts; see its docstring for the meaning of each field."""

    name: str | None = None
    out_dir: str | os.PathLike[str] = "runs"
    tags: Mapping[str, str] = field(default_factory=dict)
    wait: int = 5
    warmup: int = 2
    active: int = 5
    repeat: int = 1
    every: int | None = None
    record_shapes: bool = True
    profile_memory: bool = True
    with_stack: bool = True
    with_flops: bool = False
    cuda: bool | None = None
    nvml: bool = True
    nvml_interval_s: float = 0.1
    nvml_devices: Sequence[int] | Literal["auto"] = "auto"
    dcgm_url: str | None = None
    dcgmi: bool | None = None
    dcgm_interval_s: float = 1.0
    summary: bool = True

    def __post_init__(self) -> None:
        if self.wait < 0 or self.warmup < 0 or self.active < 1 or self.repeat < 0:
            raise ValueError("need wait >= 0, warmup >= 0, active >= 1, repeat >= 0")
        if self.every is not None and self.every < self.warmup + self.active:
            raise ValueError(f"every={self.every} must be at least warmup + active ({self.warmup + self.active})")

    @property
    def first_active_step(self) -> int:
        """Step number (``ProfilerStep#N``) of the first recorded step."""
        return self.wait + self.warmup

    def schedule_args(self) -> dict[str, int]:
        """Keyword arguments for ``torch.profiler.schedule``."""
        if self.every is None:
            return {"wait": self.wait, "warmup": self.warmup, "active": self.active, "repeat": self.repeat}
        # The first cycle starts after `wait` steps, later ones every `every` steps.
        return {
            "skip_first": self.wait,
            "skip_first_wait": 1,
            "wait": self.every - self.warmup - self.active,
            "warmup": self.warmup,
            "active": self.active,
            "repeat": self.repeat,
        }


_ACTIVE: list[ProfileRun] = []
"""Runs entered and not yet finished, innermost last: what :func:`step` advances."""


class ProfileRun:
    """One profiled run, as given by ``with mlprof.profile(...) as run``.

    Attributes:
        path: the run folder (``None`` if it could not be created).
        rank, world_size: this process's place in the job.
        trace_paths: traces written so far (cycle 1 first).
        notes, errors: plain-language caveats and recorded failures (also in ``meta.json``).
    """

    def __init__(self, options: ProfileOptions) -> None:
        self.options = options
        self.faults = FaultLog()
        self.notes: list[str] = []
        self.trace_paths: list[Path] = []
        self.path: Path | None = None
        self.step_num = 0
        self.meta: dict[str, Any] = {}
        self._user_meta: dict[str, Any] = {}
        self._folder: RunFolder | None = None
        self._dist = DistInfo(rank=0, world_size=1, local_rank=0, source="default")
        self._prof: Any = None
        self._cycle = 0
        self._writers: list[threading.Thread] = []
        self._samplers: list[BackgroundSampler] = []
        self._sink: CounterSink | None = None
        self._cuda = False
        self._start_ns = 0

    @property
    def rank(self) -> int:
        return self._dist.rank

    @property
    def world_size(self) -> int:
        return self._dist.world_size

    @property
    def errors(self) -> list[str]:
        return self.faults.errors

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._start_ns = time.time_ns()
        refusal = _cannot_profile_here()
        if refusal is not None:
            self.notes.append(refusal)
            _warn_once(refusal)
            return  # torch.profiler would take the process down: the job runs unprofiled
        try:
            self._dist = dist_info()
            self._folder = make_run_folder(self.options.out_dir, self.options.name, self.rank, self._start_ns)
            self.path = self._folder.path
            if self.options.name and self.path.name != self.options.name:
                self.notes.append(f"run name {self.options.name!r} written as the folder name {self.path.name!r}")
        except Exception as exc:
            self.faults.record("creating the run folder", exc)
            return  # nowhere to write: the job runs unprofiled
        self._init_meta()
        self._write_meta()
        self._start_samplers()
        self._start_profiler()

    def finish(self, *, print_summary: bool = True) -> None:
        """Stop everything, keep what was collected, write ``meta.json``, print the summary."""
        prof, self._prof = self._prof, None
        if prof is not None:
            try:
                prof.stop()  # exports a cycle that was still recording
            except Exception as exc:
                self.faults.record("stopping torch.profiler", exc)
        for writer in self._writers:
            writer.join()
        self.trace_paths.sort(key=lambda p: (len(p.parts), str(p)))
        for sampler in self._samplers:
            try:
                sampler.stop()
            except Exception as exc:
                self.faults.record(f"stopping the {sampler.source} sampler", exc)
        if self._folder is None:
            return
        if not self.trace_paths and not self.faults.errors:
            self.notes.append(
                f"no trace was written: the run ended after {self.step_num} steps, before the first recorded step "
                f"(ProfilerStep#{self.options.first_active_step}); lower wait/warmup or call run.step() every step"
            )
        self._finish_meta()
        self._write_meta()
        if print_summary and self.options.summary and self.rank == 0 and self.trace_paths:
            from mlprof.collectors.summary import print_summary as _print

            _print(self.trace_paths[0])

    # -- steps ---------------------------------------------------------------------

    def step(self) -> None:
        """Mark the end of one training step (advances the profiler schedule)."""
        self.step_num += 1
        prof = self._prof
        if prof is None:
            return
        try:
            prof.step()
        except Exception as exc:
            self.faults.record(f"torch.profiler step {self.step_num}", exc)
            self._prof = None
            try:
                prof.stop()
            except Exception:
                pass

    def add_meta(self, key: str, value: Any) -> None:
        """Attach a JSON-serialisable fact to ``meta.json`` (under ``user``)."""
        self._user_meta[key] = value

    # -- profiler ------------------------------------------------------------------

    def _start_profiler(self) -> None:
        try:
            import torch
            from torch.profiler import ProfilerActivity, schedule
        except Exception as exc:
            self.faults.record("importing torch.profiler", exc)
            return
        o = self.options
        try:
            self._cuda = bool(torch.cuda.is_available()) if o.cuda is None else bool(o.cuda)
        except Exception:
            self._cuda = False
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self._cuda else [])
        try:
            prof = torch.profiler.profile(
                activities=activities,
                schedule=schedule(**o.schedule_args()),
                on_trace_ready=self._on_trace_ready,
                record_shapes=o.record_shapes,
                profile_memory=o.profile_memory,
                with_stack=o.with_stack,
                with_flops=o.with_flops,
            )
            prof.start()
        except Exception as exc:
            self.faults.record("starting torch.profiler", exc)
            return
        self._prof = prof

    def _on_trace_ready(self, prof: Any) -> None:
        """Export one finished cycle; gzip on a background thread so the training step resumes sooner."""
        self._cycle += 1
        if self._folder is None:
            return
        final = self._folder.trace_path(self._cycle)
        # A fresh hidden name: nothing of the user's can be in the way, and the loader skips dot files.
        raw = final.with_name(f".{final.name[: -len('.gz')]}.{os.getpid()}.{self._cycle}.tmp")
        try:
            raw.parent.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(raw))
            check_exported(raw)
        except Exception as exc:
            self.faults.record(f"exporting trace cycle {self._cycle} to {final}", exc)
            for leftover in (raw, raw.with_name(raw.name + ".tmp")):
                leftover.unlink(missing_ok=True)  # a partial JSON file is worse than none
            return
        self._writers = [w for w in self._writers if w.is_alive()]
        writer = threading.Thread(target=self._compress, args=(raw, final), name="mlprof-gzip", daemon=True)
        self._writers.append(writer)
        writer.start()

    def _compress(self, raw: Path, final: Path) -> None:
        try:
            gzip_file(raw, final)
            self.trace_paths.append(final)
            return
        except Exception as exc:
            self.faults.record(f"compressing the trace to {final} (kept uncompressed)", exc)
        plain = final.with_name(final.name[: -len(".gz")])  # trace.rank<N>.json, readable by mlprof
        try:
            os.replace(raw, plain)
            self.trace_paths.append(plain)
        except OSError:
            self.trace_paths.append(raw)

    # -- counters ------------------------------------------------------------------

    def _start_samplers(self) -> None:
        from mlprof.collectors.nvml import NvmlSampler, is_library_missing

        o = self.options
        assert self._folder is not None
        devices = None if o.nvml_devices == "auto" else list(o.nvml_devices)
        if devices is None and self._dist.local_rank != 0:
            self.notes.append("GPU counters are sampled by local rank 0 of each node (nvml_devices='auto')")
            return
        self._sink = CounterSink(CounterFile(self._folder.counters_path), self.faults)
        cuda = _cuda_available()
        if o.nvml and devices != []:
            nvml = NvmlSampler(self._sink, self.faults, o.nvml_interval_s, devices=devices)
            try:
                nvml.start()
                self._samplers.append(nvml)
            except Exception as exc:
                if is_library_missing(exc, nvml._nvml) and not cuda:
                    self.notes.append("CPU only: no NVIDIA driver/NVML on this machine, so no GPU counters")
                else:
                    self.faults.record("starting the NVML sampler", exc)
        url = o.dcgm_url or os.environ.get("MLPROF_DCGM_URL")
        want_dcgmi = o.dcgmi or (o.dcgmi is None and cuda and shutil.which("dcgmi"))
        if not (url or want_dcgmi):
            return
        try:
            # Imported only when asked for: it pulls in mlprof.counters (the file readers and their
            # dependencies), which the training process does not need otherwise.
            from mlprof.collectors.dcgm import DcgmExporterSampler, DcgmiSampler
        except Exception as exc:
            self.faults.record("loading the DCGM sampler", exc)
            return
        dcgm: BackgroundSampler | None = None
        if url:
            dcgm = DcgmExporterSampler(self._sink, self.faults, url, interval_s=o.dcgm_interval_s)
        else:
            dcgm = DcgmiSampler(self._sink, self.faults, interval_s=o.dcgm_interval_s)
        if dcgm is not None:
            try:
                dcgm.start()
                self._samplers.append(dcgm)
            except Exception as exc:
                self.faults.record(f"starting the DCGM sampler ({url or 'dcgmi dmon'})", exc)

    # -- meta.json -------------------------------------------------------------------

    def _init_meta(self) -> None:
        o = self.options
        try:
            self.meta = base_meta(
                name=self.path.name if self.path else "", tags=dict(o.tags), start_ns=self._start_ns, dist=self._dist
            )
        except Exception as exc:
            self.faults.record("collecting run metadata", exc)
            self.meta = {"run": self.path.name if self.path else "", "start_time_ns": self._start_ns}
        options = {k: v for k, v in asdict(o).items() if k not in ("out_dir", "tags", "name")}
        options["nvml_devices"] = o.nvml_devices if o.nvml_devices == "auto" else list(o.nvml_devices)
        self.meta["profiler"] = {
            **options,
            "schedule": o.schedule_args(),
            "first_active_step": o.first_active_step,
        }
        self.meta["clock"] = dict(CLOCK_NOTE)

    def _finish_meta(self) -> None:
        end = time.time_ns()
        self.meta["end_time_ns"] = end
        self.meta["duration_s"] = round((end - self._start_ns) / 1e9, 3)
        self.meta["steps_taken"] = self.step_num
        self.meta["profiler"]["cuda_activity"] = self._cuda
        self.meta["profiler"]["cycles_written"] = len(self.trace_paths)
        try:
            self.meta["gpus"]["cuda_available"] = self.meta["gpus"].get("cuda_available") or _cuda_available()
        except Exception:
            pass
        root = self.path
        self.meta["outputs"] = {
            "traces": "trace.rank<N>.json.gz (cycle 1), cycles/<K>/trace.rank<N>.json.gz (later cycles)",
            "this_rank_traces": [str(p.relative_to(root)) if root else str(p) for p in self.trace_paths],
        }
        self.meta["counters"] = self._counter_meta()
        notes = list(self.notes)
        for sampler in self._samplers:
            notes.extend(sampler.notes)
        self.meta["notes"] = notes
        self.meta["errors"] = list(self.faults.errors)
        self.meta["user"] = dict(self._user_meta)

    def _counter_meta(self) -> dict[str, Any]:
        sink, folder = self._sink, self._folder
        file = sink.file if sink is not None else None
        rows = file.rows_written if file is not None else 0
        info: dict[str, Any] = {
            "file": folder.counters_path.name if folder is not None and rows else None,
            "columns": list(COUNTER_COLUMNS),
            "rows_written": rows,
            "rows_lost": len(sink.buffered()) + sink.rows_dropped if sink is not None else 0,
            "sources": [],
        }
        for sampler in self._samplers:
            entry: dict[str, Any] = {"source": sampler.source, "interval_s": sampler.interval_s}
            entry["samples"] = sampler.samples
            for attr in ("devices", "driver_version", "url"):
                if hasattr(sampler, attr):
                    entry[attr] = getattr(sampler, attr)
            info["sources"].append(entry)
            if getattr(sampler, "driver_version", None) and isinstance(self.meta.get("gpus"), dict):
                self.meta["gpus"]["driver_version"] = sampler.driver_version  # type: ignore[attr-defined]
        return info

    def _write_meta(self) -> None:
        if self._folder is None or self.rank != 0:
            return
        try:
            _write_json(self._folder.meta_path, self.meta)
        except Exception as exc:
            self.faults.record(f"writing {self._folder.meta_path}", exc)


_WARNED: set[str] = set()


def _cannot_profile_here() -> str | None:
    """Why torch.profiler must not be started now, or None.

    Starting a second profiler while one records (nested ``mlprof.profile`` contexts, or
    the user's own ``torch.profiler``), or starting one from a thread other than the main
    thread, ends the process with a segmentation fault inside Kineto (exit 139), which no
    ``try`` can catch. So both are detected before torch.profiler is touched.
    """
    if threading.current_thread() is not threading.main_thread():
        return (
            "mlprof.profile was entered from a thread other than the main thread, where torch.profiler crashes "
            "the process; this run is not profiled (enter mlprof.profile in the main thread)"
        )
    if any(run._prof is not None for run in _ACTIVE):
        return (
            "mlprof.profile was entered inside another mlprof.profile that is profiling; a second torch.profiler "
            "would crash the process, so only the outer one profiles"
        )
    torch = sys.modules.get("torch")
    try:
        busy = torch is not None and bool(torch.autograd.profiler._is_profiler_enabled)
    except Exception:
        busy = False
    if busy:
        return (
            "a torch.profiler is already running; a second one would crash the process, so mlprof.profile does not "
            "profile this run"
        )
    return None


def _warn_once(message: str) -> None:
    if message in _WARNED:
        return
    _WARNED.add(message)
    warnings.warn(f"mlprof: {message}. The job goes on.", RuntimeWarning, stacklevel=4)


def check_exported(path: Path) -> None:
    """Raise unless ``path`` holds a complete trace.

    Kineto reports a failed write (disk full, a rename onto a directory) only in its own
    log and returns normally, so the file itself is checked: it must exist and end with
    the closing ``}`` of the JSON document.
    """
    if not path.is_file():
        raise OSError(f"torch.profiler wrote no trace to {path} (see the Kineto log above)")
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 64))
        tail = fh.read().rstrip()
    if not tail.endswith(b"}"):
        raise OSError(f"torch.profiler wrote an incomplete trace to {path} (disk full?)")


def _cuda_available() -> bool:
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_available())
    except Exception:
        return False


class Profile:
    """A reusable profiling configuration: a context manager and a decorator."""

    def __init__(self, options: ProfileOptions) -> None:
        self.options = options
        self._runs: list[ProfileRun] = []

    def __enter__(self) -> ProfileRun:
        run = ProfileRun(self.options)
        run.start()
        self._runs.append(run)
        _ACTIVE.append(run)
        return run

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        run = self._runs.pop()
        if run in _ACTIVE:
            _ACTIVE.remove(run)
        try:
            run.finish(print_summary=exc_type is None)
        except Exception as err:  # belt and braces: finish() guards each part already
            run.faults.record("finishing the run", err)

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


@overload
def profile(fn: F, /) -> F: ...
@overload
def profile(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    out_dir: str | os.PathLike[str] = "runs",
    tags: Mapping[str, str] | None = None,
    wait: int = 5,
    warmup: int = 2,
    active: int = 5,
    repeat: int = 1,
    every: int | None = None,
    record_shapes: bool = True,
    profile_memory: bool = True,
    with_stack: bool = True,
    with_flops: bool = False,
    cuda: bool | None = None,
    nvml: bool = True,
    nvml_interval_s: float = 0.1,
    nvml_devices: Sequence[int] | Literal["auto"] = "auto",
    dcgm_url: str | None = None,
    dcgmi: bool | None = None,
    dcgm_interval_s: float = 1.0,
    summary: bool = True,
) -> Profile: ...
def profile(fn: Callable[..., Any] | None = None, /, **kwargs: Any) -> Any:
    """Profile a training loop: ``with mlprof.profile(...) as run:`` or ``@mlprof.profile(...)``.

    Args:
        name: run folder name under ``out_dir`` (default: the start time, ``YYYYmmdd-HHMMSS``,
            made unique). Give one in multi-process jobs so every rank writes to the same folder.
        out_dir: parent of the run folder.
        tags: free-form labels stored in ``meta.json``.
        wait, warmup, active: steps skipped, then warmed up (recorded and dropped), then
            recorded: ``ProfilerStep#<wait+warmup>`` is the first step in the trace.
        repeat: number of cycles (0 = until the run ends). Without ``every`` the cycles
            follow each other; with ``every=N`` one cycle starts every N steps (continuous
            sampling of long jobs). Cycle K>1 is written to ``cycles/K/``.
        record_shapes, profile_memory, with_stack, with_flops: passed to ``torch.profiler``.
        cuda: record CUDA activity (default: when ``torch.cuda.is_available()``).
        nvml, nvml_interval_s, nvml_devices: GPU counters from NVML every 100 ms by default;
            ``"auto"`` samples all GPUs of the node from local rank 0 only.
        dcgm_url: a dcgm-exporter endpoint (or env ``MLPROF_DCGM_URL``) polled every ``dcgm_interval_s``.
        dcgmi: run ``dcgmi dmon`` (default: when it is on PATH and CUDA is available).
        summary: print a short analysis of the trace at the end (rank 0).

    Returns:
        A :class:`Profile`; entering it gives a :class:`ProfileRun` with ``step()``.
        Used bare (``@mlprof.profile``) it decorates the function with the defaults.
    """
    if fn is not None:
        if not callable(fn):
            raise TypeError("mlprof.profile takes keyword arguments, e.g. mlprof.profile(name='run1')")
        return Profile(ProfileOptions())(fn)
    if kwargs.get("tags") is None:
        kwargs.pop("tags", None)
    return Profile(ProfileOptions(**kwargs))


@overload
def step(fn: F, /) -> F: ...
@overload
def step(fn: None = None, /) -> None: ...
def step(fn: Callable[..., Any] | None = None, /) -> Any:
    """Advance the innermost active profile by one step.

    ``@mlprof.step`` on the per-step function advances after each call returns;
    ``mlprof.step()`` advances now. Without an active profile both do nothing.
    """
    if fn is None:
        if _ACTIVE:
            _ACTIVE[-1].step()
        return None

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if _ACTIVE:
            _ACTIVE[-1].step()
        return result

    return wrapper
