"""Where the network runs: the torch device, and the data-parallel processes ``torchrun`` starts.

``--device`` is ``cpu`` (the default everywhere), ``cuda`` (a GPU; an error when there is none,
never a silent fall-back to the CPU) or ``auto`` (a GPU when one is present).

Data-parallel training (:func:`mtopnet.train.train` under ``torchrun``) reads its place from
the environment ``torchrun`` (or ``srun`` + ``torchrun``) sets: ``RANK`` (0 .. WORLD_SIZE - 1),
``WORLD_SIZE`` (the number of processes) and ``LOCAL_RANK`` (the process's index on its
machine, which picks its GPU). Without them a run is one process. The process group uses gloo
on the CPU and NCCL on GPUs, rendezvous through ``MASTER_ADDR``/``MASTER_PORT`` (``env://``).

Threads on the CPU: :func:`torch_threads` (torch's intra-op threads for a block) and
:func:`single_threaded_ops` (torch and BLAS on one thread, for results that do not depend on
the number of cores: prediction's batches at once). :class:`ForkedPool` runs an object's
methods in forked processes (prediction's batches at once on Linux: see its docstring).
"""
from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist

from .config import UserError


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op threads set to ``n`` (None: as they are), restored after.

    Sets (and restores) only when ``n`` differs from the current count, so that blocks run in
    several Python threads at once under one setting (``predict_batches(threads=N)`` sets 1)
    never change it under each other.
    """
    old = torch.get_num_threads()
    change = n is not None and n != old
    if change:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(old)


_ONE_THREAD = threading.Lock()
_one_thread_state: dict[str, Any] = {"users": 0}


@contextlib.contextmanager
def single_threaded_ops() -> Iterator[None]:
    """Run the block with torch's intra-op threads and numpy's BLAS threads (threadpoolctl)
    at 1, so that an operation's rounding does not depend on how many cores there are.

    torch's count is the calling thread's (OpenMP's setting is per thread; threads started
    inside the block take 1 too) and is restored when the block ends. BLAS's is the
    process's: the first block to start sets it and the last to end restores it, so that a
    block ending while another runs in another thread (two prediction runs in one process)
    does not restore it under the other. The OpenBLAS that numpy's wheels bundle (0.3.31 when
    this was written) takes a count only from the process's main thread: set or restored from
    another thread, nothing changes (Dask's workers start with OPENBLAS_NUM_THREADS=1).
    """
    with _ONE_THREAD:
        state = _one_thread_state
        if state["users"] == 0:
            from threadpoolctl import threadpool_limits
            state["blas"] = threadpool_limits(limits=1, user_api="blas")
        state["users"] += 1
    try:
        with torch_threads(1):
            yield
    finally:
        with _ONE_THREAD:
            state["users"] -= 1
            if state["users"] == 0:
                state["blas"].restore_original_limits()


_FORKED: dict[int, Any] = {}
"""The objects whose methods :class:`ForkedPool` processes run (each child has its copy as it
was when the pool forked)."""


def forked_pool_possible(device: torch.device | str = "cpu") -> bool:
    """Whether :class:`ForkedPool` can run here: Linux (fork is the start method that shares the
    parent's built objects; elsewhere it is unsafe or absent), a CPU device (CUDA cannot be used
    again in a forked child), the main thread (a child dies with the thread that forked it; a
    Dask worker's tasks run in other threads), and not inside a daemonic process (a Dask
    worker's), which may not have children."""
    return (sys.platform.startswith("linux") and torch.device(device).type == "cpu"
            and threading.current_thread() is threading.main_thread()
            and not multiprocessing.current_process().daemon)


def _forked_init(parent: int) -> None:
    """A :class:`ForkedPool` child: one thread for torch and BLAS, Ctrl-C left to the parent
    (which stops the children), and killed when the parent dies (even by SIGKILL), so that an
    interrupted run leaves no process behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the line above
        os._exit(0)
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=1, user_api="blas")


def _call_forked(key: int, name: str, args: tuple) -> tuple[Any, list[tuple]]:
    """The owner's method called in a child, and the warnings it raised (text, category, file,
    line) for the parent to raise again."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = getattr(_FORKED[key], name)(*args)
    return out, [(str(w.message), w.category, w.filename, w.lineno) for w in caught]


class _StopFlag:
    """An event without a lock (one byte of shared memory): a child killed while reading it
    cannot leave it locked for the parent."""

    def __init__(self, ctx: Any):
        self._value = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)


class ForkedPool:
    """Up to ``n`` calls of ``owner``'s methods at once, each in a process forked from this one.

    The children are forked at the first :meth:`submit` and share what ``owner`` holds at that
    moment (copy-on-write): a model and the tables built before are not loaded or built again
    (caches built at a child's first call are its own). Each child runs every torch and BLAS
    operation on one thread, as :func:`single_threaded_ops` does, so results are the same bytes
    as in threads. Arguments and results are pickled; :meth:`result` raises the warnings a call
    raised again in the parent. The children do not share the GIL (prediction's template fits
    are many small torch operations, between which threads wait for it). :meth:`stop_event`
    gives an event the children see set; :meth:`kill` ends them at once. Use only where
    :func:`forked_pool_possible`.
    """

    def __init__(self, n: int, owner: Any):
        self._ctx = multiprocessing.get_context("fork")
        self._pool = ProcessPoolExecutor(n, mp_context=self._ctx, initializer=_forked_init, initargs=(os.getpid(),))
        self._owner = owner
        self._key = id(owner)
        self._registry: dict = {}  # the warnings raised again: once per text and place, as warn() does
        _FORKED[self._key] = owner

    def stop_event(self) -> _StopFlag:
        """An event the parent sets and the children (forked after this call) see."""
        return _StopFlag(self._ctx)

    def submit(self, method: Callable, *args: Any) -> Future:
        """Run the bound ``method`` of the owner (looked up there by its name) with ``args`` in a
        child (the first call forks them). Raises BrokenProcessPool when a child has died."""
        if getattr(method, "__self__", None) is not self._owner:
            raise TypeError("ForkedPool.submit: takes bound methods of the pool's owner")
        with warnings.catch_warnings():  # Python >= 3.12 warns of any fork in a process with threads
            warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks", category=DeprecationWarning)
            return self._pool.submit(_call_forked, self._key, method.__name__, args)

    def result(self, future: Future) -> Any:
        """A :meth:`submit` call's result, its warnings raised again here (BrokenProcessPool
        when its child died)."""
        out, caught = future.result()
        for text, category, filename, lineno in caught:
            warnings.warn_explicit(text, category, filename, lineno, registry=self._registry)
        return out

    def kill(self) -> None:
        """End the children now (SIGKILL): a second Ctrl-C while a call hangs."""
        for proc in list((getattr(self._pool, "_processes", None) or {}).values()):  # the executor's children
            with contextlib.suppress(OSError, ValueError):
                proc.kill()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """As ``ProcessPoolExecutor.shutdown``; the owner is then forgotten."""
        try:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        finally:
            _FORKED.pop(self._key, None)


DEVICES = ("cpu", "cuda", "auto")
"""The accepted ``--device`` values."""

GROUP_TIMEOUT = datetime.timedelta(hours=1)
"""How long a process waits for the others at a collective (rank 0 validates and calibrates
alone while the others wait)."""


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """The torch device for ``name`` (one of :data:`DEVICES`, or a ``torch.device``).

    ``cuda`` -> ``cuda:<local_rank>`` (the process's GPU on its machine); UserError when torch
    sees no GPU or fewer than ``local_rank + 1``. ``auto`` -> ``cuda`` when available, else ``cpu``.
    """
    if isinstance(name, torch.device):
        name = name.type if name.index is None else str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no GPU is available to torch (torch.cuda.is_available() is False); "
                            "use --device cpu")
        index = int(name.partition(":")[2] or local_rank)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device cuda: process needs GPU {index} but torch sees "
                            f"{torch.cuda.device_count()}; start at most that many processes per machine")
        return torch.device("cuda", index)
    raise UserError(f"--device: must be one of {', '.join(DEVICES)}, got {name!r}")


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel processes.

    rank: 0 .. world - 1 (rank 0 validates, calibrates and writes the files); world: the
    number of processes; local_rank: index on this machine (its GPU).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True for the process that validates, calibrates and writes the run's files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains (gradients are all-reduced)."""
        return self.world > 1


def processes_from_env(environ: Mapping[str, str] | None = None) -> Processes:
    """The :class:`Processes` that ``torchrun``'s ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` describe;
    one process (0, 1, 0) without them. Malformed values are a one-line UserError."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them); got "
                        f"{env.get('RANK')!r}, {env.get('WORLD_SIZE')!r}, {env.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise UserError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank}: need 0 <= RANK < WORLD_SIZE")
    return Processes(rank=rank, world=world, local_rank=local_rank)


def join_process_group(procs: Processes, device: torch.device) -> bool:
    """Join the process group of ``procs`` (gloo on a CPU device, NCCL on CUDA; ``env://``
    rendezvous). True when this call created it (the caller then ends it with
    :func:`leave_process_group`); False for one process or a group that already exists."""
    if not procs.distributed or dist.is_initialized():
        return False
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise UserError(f"WORLD_SIZE={procs.world} but {var} is not set; start data-parallel training "
                            "with torchrun (see docs/scale.md)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method="env://", rank=procs.rank, world_size=procs.world,
                            timeout=GROUP_TIMEOUT)
    return True


def leave_process_group() -> None:
    """End the process group :func:`join_process_group` created."""
    if dist.is_initialized():
        dist.destroy_process_group()


def data_parallel(module: torch.nn.Module, procs: Processes, device: torch.device) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel (its gradients averaged over the processes
    in ``backward()``), or ``module`` itself for one process.

    Non-persistent buffers (constants rebuilt from the model config, e.g. a sparse
    interpolation matrix that collectives cannot send) are left out of DDP's broadcasts.
    """
    if not procs.distributed:
        return module
    persistent = set(module.state_dict())
    derived = [name for name, _ in module.named_buffers() if name not in persistent]
    DDP = torch.nn.parallel.DistributedDataParallel
    DDP._set_params_and_buffers_to_ignore_for_model(module, derived)
    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)


def barrier(procs: Processes) -> None:
    """Wait until every process gets here (nothing for one process)."""
    if procs.distributed:
        dist.barrier()


def broadcast_object(obj: Any, procs: Processes) -> Any:
    """Rank 0's ``obj`` (picklable) on every process; ``obj`` itself for one process."""
    if not procs.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list[float], procs: Processes, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over the processes (float64); ``values`` for one process."""
    if not procs.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


__all__ = ["single_threaded_ops", "torch_threads", "DEVICES", "GROUP_TIMEOUT", "resolve_device", "Processes",
           "processes_from_env", "join_process_group",
           "leave_process_group", "data_parallel", "barrier", "broadcast_object", "all_reduce_sum"]
