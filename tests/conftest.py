"""Shared fixtures: where the real third-party traces live, and a builder for tiny traces."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest

from mlprof.trace import Trace
from mlprof.trace.model import TABLES

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "external_traces"
SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"


if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    # A non-interactive shell starts a background job (`pytest ... &`, some CI runners) with SIGINT ignored, and
    # every process the tests start inherits that: the Ctrl-C tests' children then never see their SIGINT. A
    # Python handler here is reset to the default (not inherited) in a child, as for a command run from a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def load_script(path: Path) -> ModuleType:
    """A repository script (``benchmarks/``, ``docs/``, ``sample_traces/``) imported as a module by its file name.

    Registered in ``sys.modules`` under its stem: dataclasses defined in it look their module up.
    """
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


REQUIRE_EXTERNAL = os.environ.get("MLPROF_REQUIRE_EXTERNAL") == "1"
"""Set by ``.ci/run`` when ../shared/external_traces is there: then a missing real trace fails, not skips."""
_used_external: list[bool] = []


def broken_gzip(payload: bytes, how: str) -> bytes:
    """``payload`` gzipped, then broken one way: ``truncated`` (its first half), ``header`` (the first 12 bytes),
    ``corrupt`` (16 bytes of the deflate stream flipped), ``crc`` (the CRC32 trailer flipped) or ``trailing``
    (garbage after the member). The bytes as they go on disk: write them with ``Path.write_bytes``."""
    data = bytearray(gzip.compress(payload))
    if how == "truncated":
        return bytes(data[: len(data) // 2])
    if how == "header":
        return bytes(data[:12])
    if how == "corrupt":
        mid = len(data) // 2
        for i in range(mid, mid + 16):
            data[i] ^= 0xA5
        return bytes(data)
    if how == "crc":
        data[-6] ^= 0xFF
        return bytes(data)
    if how == "trailing":
        return bytes(data) + b"garbage!!"
    raise ValueError(how)


def external(relative: str) -> Path:
    """A file under ../shared/external_traces, or skip the test when the folder is absent.

    The test is marked ``external`` (``pytest -m external`` runs only these; ``-m "not
    external"`` what a clean clone can run), and the summary counts them.
    """
    _used_external.append(True)
    path = EXTERNAL / relative
    if not path.exists():
        if REQUIRE_EXTERNAL:
            pytest.fail(f"external: real trace missing although MLPROF_REQUIRE_EXTERNAL=1: {path}")
        pytest.skip(f"external: real trace not available: {path}")
    return path


_EXTERNAL_OUTCOMES: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    _used_external.clear()
    yield
    if _used_external:
        item.add_marker("external")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    # a test skipped while its fixtures are set up (a store of real traces) is counted too
    counted = report.when == "call" or (report.when == "setup" and report.skipped)
    if counted and (item.get_closest_marker("external") or "external:" in str(report.longrepr)):
        _EXTERNAL_OUTCOMES[report.outcome] = _EXTERNAL_OUTCOMES.get(report.outcome, 0) + 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that call ``external(`` (directly, through a helper, fixture or constant of their module)
    are marked before they run, so ``-m external`` / ``-m "not external"`` select them."""
    import inspect
    import re

    helpers: dict[object, set[str]] = {}
    for item in items:
        module = getattr(item, "module", None)
        func = getattr(item, "function", None)
        if module is None or func is None:
            continue
        if module not in helpers:
            names = {"external"}
            for _ in range(3):  # helpers calling helpers
                for name, value in vars(module).items():
                    if callable(value) and getattr(value, "__module__", None) == module.__name__:
                        try:
                            text = inspect.getsource(value)
                        except (OSError, TypeError):
                            continue
                        if any(re.search(rf"\b{re.escape(n)}\b", text) for n in names if n != name):
                            names.add(name)
            helpers[module] = names
        try:
            source = inspect.getsource(func)
        except (OSError, TypeError):
            continue
        used = set(re.findall(r"\b\w+\b", source)) | set(getattr(item, "fixturenames", ()))
        if used & helpers[module]:
            item.add_marker("external")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    done = sum(_EXTERNAL_OUTCOMES.values())
    if done:
        where = "present" if EXTERNAL.is_dir() else "absent"
        terminalreporter.write_line(
            f"external (real traces in ../shared/external_traces, {where}): "
            + ", ".join(f"{n} {k}" for k, n in _EXTERNAL_OUTCOMES.items() if n)
        )


def write_trace(path: Path, events: list[dict[str, Any]], **header: Any) -> Path:
    """Write a Kineto-style trace (gzipped when the name ends in .gz)."""
    doc = {"schemaVersion": 1, **header, "traceEvents": events}
    data = json.dumps(doc, indent=1).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def X(cat: str, name: str, ts: float, dur: float, pid: Any = 1, tid: Any = 1, **args: Any) -> dict[str, Any]:
    """A complete ("X") event, times in microseconds like Kineto writes them."""
    ev: dict[str, Any] = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur}
    if args:
        ev["args"] = args
    return ev


def opts(rule: str, **values: Any) -> Any:
    """``rule``'s typed options (what its detection and its what-if fix read), ``values`` over the defaults,
    range-checked like the config's."""
    from mlprof.rules.registry import BY_ID

    return BY_ID[rule].options_class.build(values)


def kernel(name: str, ts: float, dur: float, stream: int = 7, corr: int = 0) -> dict[str, Any]:
    return X("kernel", name, ts, dur, pid=0, tid=stream, device=0, stream=stream, correlation=corr)


def assert_same_tables(a: Trace, b: Trace, *, meta: bool = True) -> None:
    """Every table identical (values, dtypes, order); with ``meta``, what the reader saw too."""
    for name in TABLES:
        pd.testing.assert_frame_equal(a.table(name), b.table(name), obj=name)
    if meta:
        assert a.meta.num_events == b.meta.num_events
        assert a.meta.rank == b.meta.rank
        assert a.meta.devices == b.meta.devices
        assert a.meta.notes == b.meta.notes
        assert a.meta.step_source == b.meta.step_source
