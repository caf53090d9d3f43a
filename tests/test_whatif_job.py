"""The job replay (mlprof.whatif.job): ranks simulated together, a matched collective ends no earlier than its last
rank's arrival. A synthetic 3-rank job whose step times are computed by hand before and after each fix, the
fallback when matching by order is unreliable, and the real 8-rank DLRM job."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlprof.analyzers.rank_skew import comm_signature, match_collectives
from mlprof.engine.job import analyze_paths
from mlprof.results.schema import to_json_dict
from mlprof.trace.loader import load_trace
from mlprof.whatif import RankReplay, replay_rank
from mlprof.whatif.job import JobReplay, build_job
from mlprof.whatif.transforms import remove_host_time
from tests.conftest import X, external, kernel, write_trace

US = 1000
DLRM = "facebookresearch__param/dlrm_kineto"
NCCL = "ncclKernel_AllReduce_RING_LL_Sum_float(ncclDevComm*, unsigned long, ncclWork*)"
DATALOADER = "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"
STEP_US = 700
DATA_US = (100, 250, 400)
"""Host time before each rank's first launch of a step (its data loading): rank 2 is the straggler."""


def rank_events(
    rank: int,
    data_us: int,
    end_shift_us: tuple[int, int] = (0, 0),
    k_us: int = 200,
    steps: int = 2,
    late_us: int = 0,
) -> list[dict[str, Any]]:
    """Two 700 us steps of one rank. Per step (at S = 0, 700): DataLoader [S, S + d); launch K at S + d (10 us),
    K runs 200 us from 20 us after its launch; launch the all-reduce at S + d + 10 (queued behind K on the same
    stream, so the rank *arrives* when K ends, at S + d + 220); cudaStreamSynchronize from S + d + 20 until the
    all-reduce ends + 10 us; 20 us of Python to the step's end.

    The all-reduce ends when the last rank (rank 2, d = 400) has arrived, + 50 us of transfer: at S + 670 on every
    rank (``end_shift_us`` moves one step's end on this rank, to break the matching on purpose)."""
    events: list[dict[str, Any]] = []
    for n in range(steps):
        step = n * STEP_US
        d = data_us
        arrive = step + d + 20 + late_us + k_us
        end = step + 670 + (end_shift_us[n] if n < 2 else 0)
        corr = 10 * n + 1
        events += [
            X("user_annotation", f"ProfilerStep#{n + 1}", step, STEP_US),
            X("user_annotation", DATALOADER, step, d),
            X("cuda_runtime", "cudaLaunchKernel", step + d, 10, correlation=corr),
            kernel("void at::native::vectorized_elementwise_kernel<4, relu>", step + d + 20 + late_us, k_us, corr=corr),
            X("cuda_runtime", "cudaLaunchKernel", step + d + 10, 10, correlation=corr + 1),
            kernel(NCCL, arrive, end - arrive, corr=corr + 1),
            X("cuda_runtime", "cudaStreamSynchronize", step + d + 20, end + 10 - (step + d + 20)),
        ]
        if late_us:
            # Ten 0.2 us kernels during the data loading, each 5 us after its launch onto an idle stream: the
            # trace's typical launch latency, so the late kernel's extra delay is something no edge explains.
            for i in range(10):
                at = step + 1 + 6 * i
                events.append(X("cuda_runtime", "cudaLaunchKernel", at, 0.5, correlation=1000 * (n + 1) + i))
                events.append(kernel("void tiny_kernel", at + 5, 0.2, corr=1000 * (n + 1) + i))
    return events


def write_job(
    folder: Path,
    data_us: tuple[int, ...] = DATA_US,
    shifted: bool = False,
    k_us: tuple[int, ...] = (200, 200, 200),
    steps: int = 2,
    late_us: tuple[int, ...] = (0, 0, 0),
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for rank, d in enumerate(data_us):
        shift = (200, -200) if shifted and rank == 1 else (0, 0)
        write_trace(
            folder / f"rank-{rank}.json",
            rank_events(rank, d, shift, k_us[rank], steps, late_us[rank]),
            distributedInfo={"rank": rank, "world_size": len(data_us), "backend": "nccl"},
            deviceProperties=[{"id": 0, "name": "NVIDIA A100-SXM4-80GB"}],
        )
    return folder


def job_of(folder: Path) -> tuple[list[RankReplay], JobReplay | str]:
    traces = [load_trace(p) for p in sorted(folder.glob("rank-*.json"))]
    replays = []
    for t in traces:
        steps = t.steps
        replays.append(replay_rank(t, int(t.meta.rank or 0), steps["ts"].to_numpy(), steps["end"].to_numpy(), steps))
    signatures = [comm_signature(t) for t in traces]
    skew = match_collectives([rr.rank for rr in replays], signatures)
    return replays, build_job(replays, signatures, skew)


def raw_steps_us(folder: Path) -> list[float]:
    """Mean ProfilerStep duration of each rank, read from the JSON itself."""
    out = []
    for p in sorted(folder.glob("rank-*.json")):
        evs = json.loads(p.read_text())["traceEvents"]
        out.append(float(np.mean([e["dur"] for e in evs if e["name"].startswith("ProfilerStep#")])))
    return out


def data_removed(rr: RankReplay, keep_us: int) -> Any:
    """The rank's DataLoader ranges shortened to ``keep_us`` (the slow data path fixed)."""
    s, e = rr.graph.ranges["dataloader"]
    return remove_host_time(rr.graph, s, e, keep_us * US)


def per_rank_speedup(replays: list[RankReplay], graphs: list[Any]) -> float:
    """Today's model: every rank replayed on its own, collective durations (waits included) as recorded."""
    base = sum(rr.mean_step_ns(rr.graph) for rr in replays)
    return base / sum(rr.mean_step_ns(g) for rr, g in zip(replays, graphs, strict=True))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RankReplay], JobReplay]:
    folder = write_job(tmp_path_factory.mktemp("job3"))
    replays, job = job_of(folder)
    assert isinstance(job, JobReplay), job
    return folder, replays, job


def test_unmodified_job_replay_reproduces_the_recorded_steps(synthetic: Any) -> None:
    folder, replays, job = synthetic
    assert raw_steps_us(folder) == [700.0, 700.0, 700.0]
    steps = job.step_ns([rr.graph for rr in replays]) / US
    assert steps.tolist() == [700.0, 700.0, 700.0]
    # The job model (collective end = last arrival + shortest duration, no recorded end used) is exact here.
    assert job.error_pct == [0.0, 0.0, 0.0]
    assert job.n_collectives == 2 and job.transfer.tolist() == [50 * US, 50 * US]


def test_straggler_fix_gains_only_down_to_the_second_latest_rank(synthetic: Any) -> None:
    _, replays, job = synthetic
    graphs = [rr.graph for rr in replays]
    # Rank 2's data path down to rank 0's (100 us): it arrives at S + 320, but rank 1 arrives at S + 470, so the
    # all-reduce ends at S + 520 on every rank, the sync returns at S + 530, the step ends at S + 550.
    fixed = [*graphs[:2], data_removed(replays[2], 100)]
    steps = job.step_ns(fixed) / US
    assert steps.tolist() == pytest.approx([550.0, 550.0, 550.0], abs=1e-3)
    assert sum(job.step_ns(graphs)) / sum(job.step_ns(fixed)) == pytest.approx(2100 / 1650, abs=1e-5)
    # Replayed on its own, rank 2 would finish its step at S + 400 while the others kept waiting for it.
    assert per_rank_speedup(replays, fixed) == pytest.approx(2100 / 1800, abs=1e-5)


def test_fix_on_a_rank_that_is_not_the_straggler_gains_nothing(synthetic: Any) -> None:
    _, replays, job = synthetic
    graphs = [rr.graph for rr in replays]
    fixed = [data_removed(replays[0], 0), *graphs[1:]]
    # Rank 0 now arrives at S + 220 and waits 100 us longer: the all-reduce still ends at S + 670.
    assert (job.step_ns(fixed) / US).tolist() == pytest.approx([700.0, 700.0, 700.0], abs=1e-3)
    assert sum(job.step_ns(graphs)) / sum(job.step_ns(fixed)) == pytest.approx(1.0, abs=1e-9)
    assert per_rank_speedup(replays, fixed) == pytest.approx(2100 / 2000, abs=1e-5)  # what one-by-one claims


def test_a_chain_of_collectives_settles_in_few_passes(tmp_path: Path) -> None:
    # 40 steps, each rank's host waiting for every all-reduce: a chain of 40 collectives. Passes that took
    # each kernel's start as simulated would settle one collective per pass (41 passes); the sweep moves each
    # start with the end of the rank's previous collective and checks it by simulating: 2 passes.
    replays, job = job_of(write_job(tmp_path / "long", steps=40))
    assert isinstance(job, JobReplay)
    fixed = [*[rr.graph for rr in replays[:2]], data_removed(replays[2], 100)]
    assert (job.step_ns(fixed) / US).tolist() == pytest.approx([550.0, 550.0, 550.0], abs=1e-3)
    assert job.passes[-1] <= 3 and job.unsettled == 0


def test_fix_on_every_rank(synthetic: Any) -> None:
    _, replays, job = synthetic
    fixed = [data_removed(rr, 0) for rr in replays]
    # No data time anywhere: all arrive at S + 220, the all-reduce ends at S + 270, the steps end at S + 300.
    assert (job.step_ns(fixed) / US).tolist() == pytest.approx([300.0, 300.0, 300.0], abs=1e-3)


def test_analyze_replays_the_straggler_fix_on_the_job(synthetic: Any) -> None:
    folder, _, _ = synthetic
    report = to_json_dict(analyze_paths(str(folder), jobs=1))
    job = report["whatif"]["job"]
    assert job["model"] == "job" and job["matched_collectives"] == 2 and job["job_replay_error_pct"] == 0.0
    strag = next(f for f in report["findings"] if f["rule"] == "STRAG001")
    assert strag["ranks"] == [2] and strag["speedup_source"] == "replay"
    assert strag["evidence"]["why_late"] == "host_side"
    # Rank 2 arrives with rank 1 (150 us earlier at both all-reduces): every rank's step is 550 us.
    assert strag["expected_speedup"] == pytest.approx(700 / 550, abs=1e-4)
    assert strag["evidence"]["straggler"]["critical_ms"] == pytest.approx(0.15)
    # The text report says how the ranks were replayed.
    from rich.console import Console

    from mlprof.report.text import _print_whatif

    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    _print_whatif(report, console)
    assert "ranks replayed together: 2 collectives matched (order)" in console.export_text()


def test_slow_compute_straggler_fix_scales_its_kernels(tmp_path: Path) -> None:
    # Every rank loads data for 100 us; rank 2's kernel takes 500 us (the others' 200): it arrives at S + 620,
    # 300 us after ranks 0 and 1, and the all-reduce ends at S + 670 as before (700 us steps).
    folder = write_job(tmp_path / "slow", data_us=(100, 100, 100), k_us=(200, 200, 500))
    assert raw_steps_us(folder) == [700.0, 700.0, 700.0]
    report = to_json_dict(analyze_paths(str(folder), jobs=1))
    strag = next(f for f in report["findings"] if f["rule"] == "STRAG001")
    assert strag["ranks"] == [2] and strag["evidence"]["why_late"] == "slow_compute"
    # The fix scales rank 2's kernel before each all-reduce by (500 - 300) / 500: it arrives at S + 320 with the
    # others, the all-reduce ends at S + 370, the sync returns at S + 380, the step ends at S + 400 on every rank.
    assert strag["speedup_source"] == "replay"
    assert strag["expected_speedup"] == pytest.approx(700 / 400, abs=1e-4)


def test_a_rank_whose_own_replay_is_off_keeps_the_job_one_by_one(tmp_path: Path) -> None:
    # Rank 0's kernel starts 170 us after its launch where the trace's launches take 5 us, with nothing in the
    # trace to say why: its own (edge-model) replay starts it 165 us earlier and its step comes out 165 us short.
    folder = write_job(tmp_path / "late", late_us=(150, 0, 0))
    assert raw_steps_us(folder) == [700.0, 700.0, 700.0]
    replays, job = job_of(folder)
    assert replays[0].error_pct == pytest.approx(-100 * 165 / 700, abs=0.01)
    assert isinstance(job, str) and job.startswith("rank 0's own replay is -23.6% off its recorded steps")
    report = to_json_dict(analyze_paths(str(folder), jobs=1))
    assert report["whatif"]["job"]["model"] == "per-rank" and not report["whatif"]["trusted"]


def test_unreliable_order_matching_falls_back_to_per_rank_replay(tmp_path: Path) -> None:
    # Rank 1's all-reduces end 200 us late in step 1 and 200 us early in step 2: after clock alignment the
    # matched kernels end 200 us apart, which no collective does.
    folder = write_job(tmp_path / "bad", shifted=True)
    _, job = job_of(folder)
    assert isinstance(job, str) and job.startswith("matching by order is unreliable: ") and "200.0 us apart" in job
    report = to_json_dict(analyze_paths(str(folder), jobs=1))
    assert report["whatif"]["job"]["model"] == "per-rank"
    assert "unreliable" in report["whatif"]["job"]["reason"]
    assert any(n.startswith("ranks replayed one by one, not as a job: matching") for n in report["whatif"]["notes"])
    assert all(f["rule"] != "STRAG001" or f["speedup_source"] == "attribution" for f in report["findings"])


# ---- the real 8-rank DLRM job (one step per rank) -------------------------------------------------------------


@pytest.fixture(scope="module")
def dlrm() -> tuple[list[RankReplay], JobReplay]:
    traces = [load_trace(p) for p in sorted(external(DLRM).glob("*.json"))]
    replays = []
    for t in traces:
        steps = t.steps
        replays.append(replay_rank(t, int(t.meta.rank or 0), steps["ts"].to_numpy(), steps["end"].to_numpy(), steps))
    order = np.argsort([rr.rank for rr in replays])
    replays = [replays[i] for i in order]
    signatures = [comm_signature(traces[i]) for i in order]
    job = build_job(replays, signatures, match_collectives([rr.rank for rr in replays], signatures))
    assert isinstance(job, JobReplay), job
    return replays, job


def test_dlrm_job_replay_reproduces_each_rank(dlrm: Any) -> None:
    replays, job = dlrm
    recorded = np.array([rr.recorded_ns for rr in replays])
    # Recorded ProfilerStep#12 of each rank (ms), as the CATALOG lists them.
    assert (recorded / 1e6).round(1).tolist() == [14.5, 19.9, 13.0, 19.3, 18.0, 17.8, 13.1, 12.5]
    # Unmodified, the job replay (recorded ends kept) is the recording; the job model (every collective ending at
    # its last aligned arrival + its shortest duration, edge-model graphs) is within 0.1% on every rank.
    assert np.array_equal(job.step_ns([rr.graph for rr in replays]), recorded)
    assert job.n_collectives == 8 and max(abs(e) for e in job.error_pct) < 0.1


def test_dlrm_data_fix_gains_on_the_job_only_on_the_straggler(dlrm: Any) -> None:
    replays, job = dlrm
    graphs = [rr.graph for rr in replays]
    base = job.step_ns(graphs).sum()
    for rank in range(8):
        # One rank loses all its DataLoader time (1.0-1.4 ms per step).
        fixed = list(graphs)
        fixed[rank] = data_removed(replays[rank], 0)
        job_speedup = base / job.step_ns(fixed).sum()
        # One by one, that rank's step would shrink (0.8-1.1% of the job's summed steps)...
        assert per_rank_speedup(replays, fixed) > 1.008
        # ... together, only rank 7 (the straggler: last at 5 of the 8 collectives) moves the job.
        if rank == 7:
            assert 1.03 < job_speedup < 1.04
        else:
            assert job_speedup == pytest.approx(1.0, abs=1e-4)
