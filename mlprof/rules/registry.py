"""Every rule mlprof knows, in one list: ``mlprof rules`` prints it, the engine runs it (counter rules apart)."""

from __future__ import annotations

from mlprof.errors import UsageError
from mlprof.rules.allocator_churn import AllocatorChurn
from mlprof.rules.attention import UnfusedAttention
from mlprof.rules.base import Rule
from mlprof.rules.comm_exposed import CommExposed
from mlprof.rules.compiled import CompileIssues
from mlprof.rules.counter_base import CounterRule
from mlprof.rules.data_loader_wait import DataLoaderWait
from mlprof.rules.data_parallel import DataParallelUsed
from mlprof.rules.fp32_matmul import Fp32Matmul
from mlprof.rules.gpu_idle import GpuIdle
from mlprof.rules.gpu_imbalance import GpuImbalance
from mlprof.rules.gpu_throttle import GpuThrottle
from mlprof.rules.h2d_copy import HostToDeviceCopy
from mlprof.rules.host_gaps import HostGaps
from mlprof.rules.host_sync import HostSync
from mlprof.rules.launch_bound import LaunchBound
from mlprof.rules.memory_growth import DeviceMemoryGrowth
from mlprof.rules.memory_leak import MemoryLeak
from mlprof.rules.rank_wait import RankWait
from mlprof.rules.shape_alignment import ShapeAlignment
from mlprof.rules.small_batch import SmallBatch
from mlprof.rules.startup import StartupCosts
from mlprof.rules.straggler import Straggler
from mlprof.rules.unfused_elementwise import UnfusedElementwise
from mlprof.rules.unfused_optimizer import UnfusedOptimizer

RULES: tuple[Rule, ...] = (
    DataLoaderWait(),
    HostToDeviceCopy(),
    HostSync(),
    UnfusedAttention(),
    UnfusedElementwise(),
    UnfusedOptimizer(),
    LaunchBound(),
    CompileIssues(),
    DataParallelUsed(),
    CommExposed(),
    RankWait(),
    Straggler(),
    MemoryLeak(),
    Fp32Matmul(),
    ShapeAlignment(),
    SmallBatch(),
    StartupCosts(),
    AllocatorChurn(),
    HostGaps(),
    GpuIdle(),
    GpuThrottle(),
    GpuImbalance(),
    DeviceMemoryGrowth(),
)

COUNTER_RULES: tuple[CounterRule, ...] = tuple(r for r in RULES if isinstance(r, CounterRule))
"""Rules over GPU counters (run by :func:`mlprof.rules.engine.diagnose_counters`), not over a trace."""
TRACE_RULES: tuple[Rule, ...] = tuple(r for r in RULES if not isinstance(r, CounterRule))

BY_ID: dict[str, Rule] = {r.id: r for r in RULES}


def get_rule(rule_id: str) -> Rule:
    """A rule by id (case-insensitive) or by name (``dataloader-wait``)."""
    key = rule_id.strip().upper()
    if key in BY_ID:
        return BY_ID[key]
    for rule in RULES:
        if rule.name == rule_id.strip().lower():
            return rule
    known = ", ".join(BY_ID)
    raise UsageError(f"no rule {rule_id!r}; known rules: {known} (see 'mlprof rules')")
