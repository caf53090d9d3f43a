"""Where steps come from when the trace has no ProfilerStep markers."""

from __future__ import annotations

from pathlib import Path

from mlprof.trace import load_trace

from conftest import X, external, kernel, write_trace


def test_profiler_steps_numbered_from_names() -> None:
    trace = load_trace(external("pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz"))
    assert trace.meta.step_source == "ProfilerStep"
    assert trace.steps["step"].tolist() == [16, 17, 18, 19, 20, 21]
    assert trace.steps["dur"].iloc[0] == 159_363_000  # ProfilerStep#16 dur 159363 us


def test_dataloader_fallback_on_param_resnet() -> None:
    trace = load_trace(external("facebookresearch__param/resnet_kineto.json.gz"))
    assert trace.meta.step_source.startswith("DataLoader __next__")
    assert len(trace.steps) == 30  # CATALOG: 30 enumerate(DataLoader) calls
    assert (trace.steps["end"].to_numpy()[:-1] == trace.steps["ts"].to_numpy()[1:]).all()


def test_optimizer_fallback_on_param_linear() -> None:
    trace = load_trace(external("facebookresearch__param/linear_kineto.json.gz"))
    assert trace.meta.step_source.startswith("Optimizer.step")
    assert len(trace.steps) == 40  # 80 annotations = 40 Optimizer.step + 40 zero_grad


def test_user_marker_overrides(tmp_path: Path) -> None:
    events = [X("user_annotation", "ProfilerStep#1", 0, 100)]
    for i in range(4):
        events.append(X("user_annotation", "train_iter", 10 + 20 * i, 5))
        events.append(kernel("k", 11 + 20 * i, 3))
    path = write_trace(tmp_path / "t.json", events)
    trace = load_trace(path, step_marker=r"^train_iter$")
    assert trace.meta.step_source == "user marker /^train_iter$/"
    assert trace.steps["ts"].tolist() == [10_000, 30_000, 50_000, 70_000]
    assert trace.steps["dur"].tolist() == [20_000] * 4
