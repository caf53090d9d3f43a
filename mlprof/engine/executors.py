"""Run one function over many inputs: in this process, in local processes, or as Dask tasks.

Results come back in input order whatever order the tasks finish in, and a failure is the first
failing input's (local processes), whichever failed first. Only the
tasks' (small) results are held; inputs are file names. No scheduling of our own:
local parallelism is :class:`concurrent.futures.ProcessPoolExecutor`, distributed
work is ``dask.distributed`` (a ``LocalCluster`` when no scheduler address is given).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mlprof.errors import MlprofError, UsageError
from mlprof.interrupts import worker_pool

T = TypeVar("T")
R = TypeVar("R")
ProgressFn = Callable[[int, int], None]
CONNECT_TIMEOUT_S = 10
"""How long ``--scheduler`` keeps trying to reach the scheduler before it is an error."""


def default_jobs(n_tasks: int) -> int:
    """One process per core, at most 8 and at most one per task."""
    return max(1, min(8, os.cpu_count() or 1, n_tasks))


def _same(result: R) -> R:
    return result


def run_local(
    fn: Callable[[T, Any], R],
    items: Sequence[T],
    arg: Any,
    jobs: int,
    on_done: ProgressFn | None = None,
    keep: Callable[[R], Any] | None = None,
) -> list[Any]:
    """``[fn(item, arg) for item in items]``, in ``jobs`` forked processes when ``jobs > 1``.

    ``keep``: applied to each result as it arrives; what it returns is what is held until the end (a job
    folds what it can into running totals and tables there, and holds only an index a task)."""
    total = len(items)
    keep = keep or _same
    if jobs <= 1 or total <= 1:
        out = []
        for i, item in enumerate(items):
            out.append(keep(fn(item, arg)))
            if on_done:
                on_done(i + 1, total)
        return out
    from concurrent.futures import FIRST_COMPLETED, wait  # here: one trace analysed in this process needs no pool

    results: list[Any] = [None] * total
    workers = min(jobs, total)
    # Tasks are submitted in input order, at most AHEAD_PER_WORKER a worker ahead of the results taken: a
    # future is ~1.6 KB (its condition, lock and waiters), and 1,024 of them submitted at once were ~1.6 MB
    # of the client's peak; each finished one holds its result, unpickled, until taken (a rank task's of the
    # generated 1,024-rank job: ~0.2 MB of objects), so a client slowed by a busy machine held up to that many at
    # once (4 a worker: ~1 MB more at 256 ranks under load 2-4); one queued per worker keeps the workers as busy.
    ahead = AHEAD_PER_WORKER * workers
    queued = iter(enumerate(items))
    running: dict[Any, int] = {}
    done = 0
    with worker_pool(workers) as pool:  # Ctrl-C, SIGTERM or an error: no worker outlives us
        while True:
            while len(running) < ahead:
                task = next(queued, None)
                if task is None:
                    break
                running[pool.submit(fn, task[1], arg)] = task[0]
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=running.__getitem__):  # several at once: in input order
                i = running[future]
                error = future.exception()
                if error is not None:
                    raise _first_error(running, i, error)
                del running[future]
                results[i] = keep(future.result())
                done += 1
                if on_done:
                    on_done(done, total)
    return results


AHEAD_PER_WORKER = 2
"""Tasks submitted per worker of :func:`run_local`'s pool before their results are taken."""


def _first_error(futures: dict[Any, int], failed: int, error: BaseException) -> BaseException:
    """The error of the first input that fails, whichever task failed first.

    Two bad rank files must give the same one-line error on every run, not whichever worker lost the
    race. The pool starts tasks in input order, so every input before ``failed`` has started: wait for
    those (at most ``jobs - 1`` still running; ``futures``: the tasks whose results are not taken yet, an
    earlier task's taken result was not an error), drop the queued ones after it, and return the lowest
    input's error (``error`` itself when every earlier input succeeded)."""
    earlier = sorted((i, f) for f, i in futures.items() if i < failed)
    for f, i in futures.items():
        if i > failed:
            f.cancel()
    for _, f in earlier:
        first = f.exception()
        if first is not None:
            return first
    return error


def run_dask(
    fn: Callable[[T, Any], R],
    items: Sequence[T],
    arg: Any,
    *,
    scheduler: str | None,
    workers: int,
    processes: bool = True,
    on_done: ProgressFn | None = None,
    keep: Callable[[R], Any] | None = None,
) -> list[Any]:
    """The same map as Dask tasks; each result is fetched as soon as it is ready and its future released.

    With ``scheduler`` (``tcp://host:8786``) the tasks run on that cluster's workers, which must be able
    to import mlprof and read the paths (shared storage or fsspec URLs). Without it a ``LocalCluster`` of
    ``workers`` workers (one thread each) is started for the run and closed after it.
    """
    try:
        from dask.distributed import Client, LocalCluster
        from dask.distributed import as_completed as dask_as_completed
    except ImportError:
        raise UsageError("--engine dask needs dask[distributed]: pip install 'dask[distributed]'") from None
    import logging

    # A task's error comes back as its own exception (one line from the CLI); Dask's worker log of it is noise.
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    cluster = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise MlprofError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        else:
            # The workers are new processes: they read their log level from the environment at start.
            os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
            cluster = LocalCluster(
                n_workers=max(1, workers),
                threads_per_worker=1,
                processes=processes,
                dashboard_address=":0",  # a free port: never collides with another cluster
            )
            client = Client(cluster)
        with client:
            total = len(items)
            futures = client.map(fn, list(items), [arg] * total, pure=False)
            index = {f.key: i for i, f in enumerate(futures)}
            results: list[Any] = [None] * total
            keep = keep or _same
            for done, future in enumerate(dask_as_completed(futures), 1):
                results[index[future.key]] = keep(future.result())
                future.release()
                if on_done:
                    on_done(done, total)
            return results
    finally:
        if cluster is not None:
            cluster.close()
