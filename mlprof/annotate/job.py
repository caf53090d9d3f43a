"""What a multi-rank job adds to each rank's annotated copy: the job's findings about that rank, the straggler mark."""

from __future__ import annotations

from mlprof.results.findings import Finding
from mlprof.results.measurements import Analysis


def rank_findings(analysis: Analysis, rank: int, own: list[Finding]) -> list[Finding]:
    """The rank's own findings that the job reports, then the job-level findings that name this rank
    (e.g. STRAG001 on the straggler), which no single rank's analysis produces."""
    reported = {f.rule for f in analysis.findings}
    mine = [f for f in own if f.rule in reported]
    have = {f.rule for f in mine}
    rank_rules = {f.rule for ra in analysis.ranks for f in ra.findings}
    job_level = [f for f in analysis.findings if f.rule not in rank_rules and f.rule not in have and rank in f.ranks]
    return mine + job_level


def straggler_marks(analysis: Analysis) -> dict[int, list[str]]:
    """rank -> marks for its copy: the straggler the cross-rank analysis names (the rank the job waits for
    longest at its collectives, :mod:`mlprof.analyzers.stragglers`), and no other rank."""
    diagnosis = analysis.diagnosis
    cross = diagnosis.cross_rank if diagnosis is not None else None
    if cross is None or len(analysis.ranks) < 2:
        return {}
    stragglers = cross.summary.get("stragglers") or []
    if not stragglers:
        return {}
    worst = stragglers[0]
    rank = int(worst["rank"])
    matched = cross.summary.get("matched_collectives") or 0
    text = (
        f"straggler: rank {rank}, arrived last at {int(worst['arrived_last'])} of {matched} collectives; "
        f"the job waits for it {float(worst['critical_ms']):.3f} ms per step"
    )
    return {rank: [text]}
