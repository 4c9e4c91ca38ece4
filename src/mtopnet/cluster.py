"""Where a run's tasks execute: in this process, on local processes, or on a Dask cluster.

One home for the choice that ``mtopnet predict`` and ``mtopnet simulate`` share
(``--workers N``, ``--scheduler ADDRESS``): :func:`run_tasks` runs a list of independent
:class:`Task` s of one function

- in this process, one after the other, when ``workers == 1`` and no scheduler is given;
- on a ``dask.distributed.LocalCluster`` of ``workers`` processes with one thread each;
- on the Dask cluster at ``scheduler`` (an address such as ``tcp://host:8786``).

Each task's result goes to the caller's ``done`` callback as soon as the task ends, in the
order they end. On Dask the function and its arguments travel to the workers by pickle (so
they must be importable by reference: module-level functions, not closures), the worker
processes are started with ``spawn`` (so a script needs the usual ``if __name__ ==
"__main__":`` guard), and a LocalCluster's workers die with the process that started them.
An exception a task raises (a :class:`~mtopnet.config.UserError` included) is raised again
here; workers that die under a task (out of memory, a lost node) end the run with
:class:`ResumableError`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .config import UserError


class ResumableError(UserError):
    """A run stopped by something other than its inputs (its Dask workers died): the work done
    stays where the run keeps it, and the same command resumes."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One call of a run's function: ``name`` (for messages, e.g. ``shard_00003``), ``key``
    (the Dask key: unique for the task's content, e.g. with a fingerprint) and ``args``."""

    name: str
    key: str
    args: tuple


def check_workers(workers: Any) -> int:
    """``workers`` as an int; UserError (one line naming ``--workers``) unless a positive integer."""
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise UserError(f"--workers: must be >= 1, got {workers!r}")
    return int(workers)


def dask_client(scheduler: str | None, workers: int) -> tuple[Any, Any]:
    """(client, cluster or None): a client of ``scheduler``, or of a new LocalCluster of ``workers``
    processes with one thread each. UserError: dask.distributed missing, scheduler unreachable."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserError("--scheduler / --workers > 1 need dask.distributed (pip install 'dask[distributed]')") \
            from None
    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserError(f"--scheduler {scheduler}: cannot connect ({reason})") from None
    import dask
    # Dask starts its workers with MALLOC_TRIM_THRESHOLD_=65536, which also fixes glibc's mmap
    # threshold: every large temporary of the template fits is then mmap'd and zeroed anew, and
    # the workers spent most of their time in the kernel (4,000 held-out spectra on 2 workers:
    # 61 s; with glibc's own adaptive thresholds, as in a single process: 38 s). The workers
    # get the rest of Dask's environment (one OpenMP / MKL / OpenBLAS thread).
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):  # None: unset
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)  # ":0": any free port, never a clash with another run
    return Client(cluster), cluster


def run_tasks(fn: Callable[..., Any], tasks: Sequence[Task], done: Callable[[Task, Any], None], *,
              workers: int = 1, scheduler: str | None = None) -> None:
    """Run ``fn(*task.args)`` for every task; ``done(task, result)`` as each one ends.

    workers: 1 runs the tasks here, in order; more start a LocalCluster of that many
    single-threaded processes (closed at the end). scheduler: a Dask scheduler address
    (``workers`` is then ignored). Nothing is started when ``tasks`` is empty.
    UserError: ``workers`` not a positive integer, dask.distributed missing, the scheduler
    unreachable; ResumableError: the workers running a task died; whatever ``fn`` raises.
    """
    workers = check_workers(workers)
    if not tasks:
        return
    if scheduler is None and workers == 1:
        for task in tasks:
            done(task, fn(*task.args))
        return
    from distributed import KilledWorker, as_completed
    client, cluster = dask_client(scheduler, workers)
    futures = []
    try:
        by_key = {}
        for task in tasks:
            fut = client.submit(fn, *task.args, pure=False, key=task.key)
            futures.append(fut)
            by_key[fut.key] = task
        for fut in as_completed(futures):
            try:
                result = fut.result()  # a task's exception (UserError included) is raised here
            except KilledWorker:
                raise ResumableError(f"{by_key[fut.key].name}: the workers computing it died (out of memory?); "
                                     f"see the workers' logs; the same command resumes") from None
            done(by_key[fut.key], result)
    finally:
        with contextlib.suppress(Exception):
            client.cancel(futures)
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception), _quiet_nanny():
                cluster.close()


@contextlib.contextmanager
def _quiet_nanny():
    """While a LocalCluster closes after its work: no "Worker process still alive after 4.0
    seconds, killing" warning (a busy machine's worker slow to exit is killed; its tasks are
    done and their results kept)."""
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    nanny.setLevel(logging.ERROR)
    try:
        yield
    finally:
        nanny.setLevel(level)


__all__ = ["ResumableError", "Task", "check_workers", "dask_client", "run_tasks"]
