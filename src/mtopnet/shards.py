"""Sharded, resumable runs that end in one catalogue: in-process, on local processes or on Dask.

A run's inputs are cut into shards in input order (:func:`plan_shards`): a store into runs of
``shard_size`` rows, other files into groups of ``shard_size`` files (a moons1d object's arm
files stay together). Each shard is computed by a function the caller gives (``compute(job,
shard, info)`` yields catalogue row chunks; :mod:`mtopnet.predict` gives its batch
prediction) and written to the run's work folder ``OUT.shards/`` beside the output::

    OUT.shards/shard_00000.parquet   the shard's rows (CatalogueWriter: temp name, then rename)
    OUT.shards/shard_00000.json      written after it: fingerprint, row count, ``info``, warnings

A shard is done when its record exists and holds the shard's fingerprint: a SHA-256 of the
run's settings (model file digest, options, package version and source code) and of the shard's inputs
(resolved path, size and modification time of each file, store rows). A re-run skips done
shards and computes the others; a changed model, input file or option changes the fingerprint,
so an old shard is never mistaken for done. When all are done the catalogue is assembled from
the shards in input order with the catalogue readers and writers (atomically, under the
output's lock) and the work folder is removed. Every run is sharded, so a resumed run and an
uninterrupted one assemble the same bytes.

One run per output: the run holds an advisory lock (:class:`mtopnet.catalogue.OutputLock`) on
the work folder from start to end, so a second run on the same output is refused with one
line naming the first one's pid. A run killed with SIGKILL at any moment loses at most the
shards in flight; the lock dies with it and the next run removes its temporary files.

Where shards run (:func:`run_sharded`, through :func:`mtopnet.cluster.run_tasks`, which
``mtopnet simulate`` uses too): in this process (``workers=1``), on a
``dask.distributed.LocalCluster`` of ``workers`` processes with one thread each, or on the
Dask cluster at ``scheduler`` (an address such as ``tcp://host:8786``). On Dask the compute
function and the job travel to the workers by pickle; whatever a worker loads for a job (the
model) is kept in :func:`worker_cached`, so it is loaded once per worker process.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .catalogue import CatalogueWriter, OutputLock, catalogue_format, read_catalogue, temp_name
from .cluster import ResumableError, Task, check_workers, run_tasks
from .config import UserError
from .io import plan_inputs, read_units
from .logs import progress_bar
from .store import check_writable, remove_partial, store_info, write_error

log = logging.getLogger(__name__)

SHARD_SIZE = 4096
"""Default shard size: store rows, or files for other inputs."""

ComputeFn = Callable[[Any, "Shard", dict], Iterator[dict[str, np.ndarray]]]
"""``compute(job, shard, info)``: the shard's catalogue row chunks (dict column -> (n,) array,
input order); anything it puts in ``info`` (JSON-serialisable) is kept in the shard's record."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard of a run: ``index`` (input order), ``units`` (the io object sources, stores
    restricted to rows), ``n_rows`` (None where not known before reading) and ``fingerprint``."""

    index: int
    units: tuple
    n_rows: int | None
    fingerprint: str

    @property
    def name(self) -> str:
        return f"shard_{self.index:05d}"

    def batches(self, batch_size: int, counts: list[int] | None = None) -> Iterator:
        """The shard's spectra as :class:`~mtopnet.store.SpectraBatch` of at most ``batch_size`` rows;
        ``counts`` (``len(units)`` zeros) gets each unit's number of spectra (:func:`mtopnet.io.read_units`)."""
        return read_units(list(self.units), batch_size, counts)


@dataclasses.dataclass
class ShardRun:
    """What :func:`run_sharded` did: rows written, shards in all, reused from an earlier run,
    computed now, and each shard's ``info`` (input order)."""

    n_rows: int
    n_shards: int
    n_reused: int
    n_computed: int
    infos: list[dict]


# ----------------------------------------------------------------------------- planning


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes (e.g. the model's checkpoint, for fingerprints)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                h.update(block)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return h.hexdigest()


def _identity(unit: Any) -> list:
    """What identifies an object source's content: format, files (resolved path, size, mtime), rows."""
    files = []
    for p in unit.paths:
        st = os.stat(p)
        files.append([os.path.realpath(p), st.st_size, st.st_mtime_ns])
    return [unit.fmt, files, list(unit.rows) if unit.rows is not None else None]


def json_digest(value: Any) -> str:
    """SHA-256 (hex) of a JSON-able value (keys sorted; other objects by their ``str``)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 (hex) of mtopnet's own source files (the package's ``*.py``): a shard computed by
    other code (a development checkout changed between a killed run and its re-run) is redone."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _fingerprint(settings: Mapping[str, Any], units: list) -> str:
    return json_digest({"mtopnet": __version__, "code": code_digest(), "settings": settings,
                        "inputs": [_identity(u) for u in units]})


def plan_shards(inputs: list[str | Path], format: str | None, shard_size: int,
                settings: Mapping[str, Any]) -> list[Shard]:
    """Cut ``inputs`` (paths, globs, folders as :func:`mtopnet.io.plan_inputs` takes) into shards.

    A store gives shards of ``shard_size`` rows (its own: shards never span two stores); other
    files go in consecutive groups of ``shard_size`` object sources. ``settings`` (JSON-able:
    everything besides the inputs that changes the rows) enters every shard's fingerprint.
    UserError: ``shard_size`` < 1, or an input :func:`plan_inputs` refuses.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise UserError(f"shard size: must be a positive integer, got {shard_size!r}")
    units = plan_inputs([str(p) for p in inputs], format)
    groups: list[tuple[list, int | None]] = []
    files: list = []
    for unit in units:
        if unit.fmt != "hdf5":
            files.append(unit)
            if len(files) == shard_size:
                groups.append((files, None))
                files = []
            continue
        if files:
            groups.append((files, None))
            files = []
        n = store_info(unit.paths[0])["n"]
        for start in range(0, n, shard_size):
            stop = min(start + shard_size, n)
            groups.append(([dataclasses.replace(unit, rows=(start, stop))], stop - start))
    if files:
        groups.append((files, None))
    return [Shard(i, tuple(g), n, _fingerprint(settings, g)) for i, (g, n) in enumerate(groups)]


# ----------------------------------------------------------------------------- one shard

_CACHE: dict[Any, Any] = {}
_CACHE_SIZE = 2
"""Entries a process keeps (a long-lived Dask worker serving runs of several models)."""


def worker_cached(key: Any, load: Callable[[], Any]) -> Any:
    """``load()``'s result, computed once per process for ``key`` (a model per Dask worker).

    ``key`` must name what ``load`` loads (e.g. the model file's digest): a worker of a
    cluster that outlives the run keeps its entries for the next run. The oldest entry goes
    when more than :data:`_CACHE_SIZE` are held.
    """
    if key not in _CACHE:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = load()
    return _CACHE[key]


def seed_cache(key: Any, value: Any) -> None:
    """Put ``value`` in this process's :func:`worker_cached` store (an in-process run's model)."""
    _CACHE[key] = value


def drop_cached(key: Any) -> None:
    _CACHE.pop(key, None)


def _record_path(workdir: Path, shard: Shard) -> Path:
    return workdir / f"{shard.name}.json"


def _rows_path(workdir: Path, shard: Shard) -> Path:
    return workdir / f"{shard.name}.parquet"


def _write_json_atomic(path: Path, record: dict) -> None:
    tmp = temp_name(path)
    try:
        with open(tmp, "w") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        remove_partial(tmp)
        raise write_error(path, exc) from None


def run_shard(compute: ComputeFn, job: Any, shard: Shard, workdir: str | Path) -> dict:
    """Compute ``shard`` into ``workdir`` (rows, then the record; each atomic); returns the record.

    Warnings raised while computing are recorded (category and message, each once) for the
    driver to repeat: on a Dask worker they would otherwise go to the worker's log.
    """
    workdir = Path(workdir)
    info: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with CatalogueWriter(_rows_path(workdir, shard), meta={"fingerprint": shard.fingerprint}) as writer:
            for rows in compute(job, shard, info):
                writer.write(rows)
    seen: list[list[str]] = []
    for w in caught:
        entry = [f"{w.category.__module__}:{w.category.__qualname__}", str(w.message)]
        if entry not in seen:
            seen.append(entry)
    record = {"fingerprint": shard.fingerprint, "rows": writer.n_rows, "info": info, "warnings": seen}
    _write_json_atomic(_record_path(workdir, shard), record)
    return record


def _done_record(workdir: Path, shard: Shard) -> dict | None:
    """The shard's record if an earlier run completed it with the same fingerprint."""
    try:
        record = json.loads(_record_path(workdir, shard).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != shard.fingerprint:
        return None
    return record if _rows_path(workdir, shard).is_file() else None


def _warning_category(name: str) -> type[Warning]:
    module, _, qualname = name.partition(":")
    with contextlib.suppress(ImportError, AttributeError):
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, Warning):
            return obj
    return UserWarning


# ----------------------------------------------------------------------------- the run


def run_sharded(compute: ComputeFn, job: Any, shards: list[Shard], out: str | Path, *, workers: int = 1,
                scheduler: str | None = None, overwrite: bool = False, progress: bool = False,
                zbin_centres: np.ndarray | None = None, meta: dict | None = None,
                chunk_rows: int | None = None,
                passthrough: Mapping[str, Any] | Callable[[list[dict]], Mapping[str, Any]] | None = None,
                on_rows: Callable[[dict], None] | None = None) -> ShardRun:
    """Compute the shards not done yet, then assemble catalogue ``out`` from all of them.

    compute, job: see :data:`ComputeFn` (both picklable by reference for Dask); shards: from
    :func:`plan_shards`; workers: 1 runs in this process, more start a LocalCluster of that
    many single-threaded processes; scheduler: a Dask scheduler address (``workers`` is then
    ignored); zbin_centres, meta: as :class:`~mtopnet.catalogue.CatalogueWriter`'s;
    chunk_rows: rows per write when assembling (None: a shard per write); passthrough: as
    :class:`~mtopnet.catalogue.CatalogueWriter`'s, or a function of the shards' ``info`` dicts
    (input order, those reused included) that gives them, called once every shard is done
    (e.g. when the rows per input are known only then); on_rows: called with every chunk of rows
    written to ``out``, in order (e.g. to collect a priors file).
    Warnings of the shards (those computed now and those reused) are repeated once each.

    UserError: ``out`` exists without ``overwrite``, another run writes ``out``, a shard's
    input is unreadable, a write failed. A run that ends in an error removes its work folder
    (nothing is left but what was there before); only a run that is killed, interrupted
    (Ctrl-C) or loses its Dask workers (:class:`ResumableError`) leaves the shards done for
    the next run.
    """
    out = Path(out)
    catalogue_format(out)
    check_writable(out, overwrite)
    workers = check_workers(workers)
    workdir = out.with_name(out.name + ".shards")
    OutputLock(out).acquire().release()  # another writer of ``out`` itself: refused before any work
    with OutputLock(workdir):
        try:
            workdir.mkdir(exist_ok=True)
        except OSError as exc:
            raise write_error(workdir, exc) from None
        for stale in workdir.glob("*.tmp"):  # temporary files of a killed run
            remove_partial(stale)
        records: dict[int, dict] = {}
        todo = []
        for shard in shards:
            record = _done_record(workdir, shard)
            if record is None:
                todo.append(shard)
            else:
                records[shard.index] = record
        n_reused = len(records)
        log.debug("%s: %d shard(s), %d done by an earlier run, %d to compute (%s)", out, len(shards), n_reused,
                  len(todo), f"scheduler {scheduler}" if scheduler else f"{workers} worker(s)")
        bar = progress_bar(total=len(shards), initial=n_reused, unit="shard", desc=out.name,  # shown after 1 s:
                           progress=progress, delay=1.0)  # not before a one-line input error

        def done(shard: Shard, record: dict) -> None:
            records[shard.index] = record
            bar.update(1)

        try:
            tasks = [Task(shard.name, f"mtopnet-{shard.name}-{shard.fingerprint[:16]}",
                          (compute, job, shard, str(workdir))) for shard in todo]
            run_tasks(run_shard, tasks, lambda task, record: done(task.args[2], record),
                      workers=workers, scheduler=scheduler)
            bar.close()
            if callable(passthrough):
                passthrough = passthrough([records[s.index].get("info", {}) for s in shards])
            n_rows = _assemble(workdir, shards, records, out, overwrite, zbin_centres, meta, chunk_rows, passthrough,
                               on_rows)
        except (KeyboardInterrupt, ResumableError):
            raise
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            bar.close()
        shutil.rmtree(workdir, ignore_errors=True)
    _repeat_warnings(records[s.index] for s in shards)
    return ShardRun(n_rows, len(shards), n_reused, len(todo), [records[s.index].get("info", {}) for s in shards])


def _assemble(workdir: Path, shards: list[Shard], records: dict[int, dict], out: Path, overwrite: bool,
              zbin_centres: np.ndarray | None, meta: dict | None, chunk_rows: int | None,
              passthrough: Mapping[str, Any] | None = None, on_rows: Callable[[dict], None] | None = None) -> int:
    """Write ``out`` from the shards' rows in input order (one shard in memory at a time),
    ``chunk_rows`` rows per write (None: a shard per write)."""
    with CatalogueWriter(out, zbin_centres, meta, overwrite=overwrite, passthrough=passthrough) as writer:
        for shard in shards:
            if not records[shard.index]["rows"]:
                continue
            rows = read_catalogue(_rows_path(workdir, shard))
            n = len(next(iter(rows.values())))  # whatever the id column's name
            if n != records[shard.index]["rows"]:
                raise UserError(f"{_rows_path(workdir, shard)}: holds {n} rows, its record "
                                f"{records[shard.index]['rows']}; remove {workdir} and run again")
            step = chunk_rows or n
            for start in range(0, n, step):
                chunk = {k: v[start:start + step] for k, v in rows.items()}
                writer.write(chunk)
                if on_rows is not None:
                    on_rows(chunk)
    return writer.n_rows


def _repeat_warnings(records) -> None:
    """The shards' warnings, the first of each category once (with the count of the others)."""
    by_category: dict[str, list[str]] = {}
    for record in records:
        for category, message in record.get("warnings", []):
            seen = by_category.setdefault(category, [])
            if message not in seen:
                seen.append(message)
    for category, messages in by_category.items():
        more = f" (and {len(messages) - 1} more like it)" if len(messages) > 1 else ""
        warnings.warn(messages[0] + more, _warning_category(category), stacklevel=3)


__all__ = ["SHARD_SIZE", "Shard", "ShardRun", "ResumableError", "ComputeFn", "plan_shards", "run_shard", "run_sharded",
           "file_digest", "json_digest", "worker_cached", "seed_cache", "drop_cached"]
