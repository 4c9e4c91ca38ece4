"""Many inputs -> one stream of SpectraBatch objects, one row per object, in input order."""
from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..config import UserError
from ..store import SpectraBatch, iter_store, read_store
from ._core import NoiseEstimatedWarning, ReaderWarning, count_corrupt, fail, first_line, sanitize
from .desi import read_desi
from .detect import FORMATS, detect_format, sniff_format
from .generic_fits import read_generic_fits
from .moons1d import moons_band, moons_stem, read_moons1d
from .sdss import read_sdss
from .spectrum_objects import from_specutils, is_spectrum
from .text import read_text

DEFAULT_BATCH_SIZE = 1024
_GLOB_CHARS = set("*?[")


@dataclass
class _Unit:
    """One object source in the stream: a file, a moons1d object's arm files, or a Spectrum.

    rows: for a store (``fmt`` 'hdf5'), only its rows [start, stop) (None: all of them).
    """

    fmt: str
    paths: list[str] = field(default_factory=list)
    obj: Any = None
    label: str = ""
    rows: tuple[int, int] | None = None


def read_hdf5(path: str, batch_size: int = DEFAULT_BATCH_SIZE,
              rows: tuple[int, int] | None = None) -> Iterator[SpectraBatch]:
    """Stream an mtopnet store (int64 ids, labels kept) through the same sanitising rules.

    rows: only rows [start, stop) of the store, in batches from ``start`` (None: all rows).
    """
    if rows is None:
        batches: Iterable[SpectraBatch] = iter_store(path, batch_size=batch_size)
    else:
        batches = (read_store(path, a, min(a + batch_size, rows[1])) for a in range(rows[0], rows[1], batch_size))
    for batch in batches:
        for arm in batch.arms.values():
            batch.n_bad_pixels = batch.n_bad_pixels + count_corrupt(arm["flux"], arm["ivar"], arm["mask"])
            arm["flux"], arm["ivar"], arm["mask"] = sanitize(arm["flux"], arm["ivar"], arm["mask"])
        batch.labels.setdefault("noise_estimated", np.zeros(len(batch), dtype=bool))
        yield batch


def _read_specutils(path: str) -> Iterator[SpectraBatch]:
    from .specutils_io import read_specutils  # imports specutils (~2 s): only when needed
    yield from read_specutils(path)


_READERS: dict[str, Callable[[str], Iterator[SpectraBatch]]] = {
    "specutils": _read_specutils,
    "sdss": read_sdss,
    "fits": read_generic_fits,
    "text": read_text,
}


def _expand(item: str, fmt: str | None, skipped: list[str]) -> list[tuple[str, str]]:
    """(path, format) pairs for one path, glob or folder, in sorted order for globs/folders."""
    explicit = True
    if os.path.isdir(item):
        files = sorted(str(p) for p in Path(item).iterdir() if p.is_file() and not p.name.startswith("."))
        explicit = False
        if not files:
            subs = sorted(p.name for p in Path(item).iterdir() if p.is_dir() and not p.name.startswith("."))
            raise fail(item, "folder holds no files" + (f" (its subfolders {', '.join(subs[:3])}"
                                                      f"{' ...' if len(subs) > 3 else ''} are not read: name them, "
                                                      f"or a glob such as '{item.rstrip('/')}/*/*.fits')"
                                                      if subs else ""))
    elif os.path.isfile(item):
        files = [item]
    elif _GLOB_CHARS & set(item):
        files = sorted(p for p in glob.glob(item) if os.path.isfile(p))
        explicit = False
        if not files:
            raise fail(item, "no files match")
    else:
        raise fail(item, "no such file or directory")
    out = []
    for path in files:
        if fmt is not None:
            out.append((path, fmt))
            continue
        found = sniff_format(path) if not explicit else detect_format(path)
        if found is None:
            skipped.append(path)
            continue
        out.append((path, found))
    return out


def plan_inputs(inputs: Iterable[Any] | str | os.PathLike, format: str | None = None) -> list[_Unit]:
    """Resolve paths, globs, folders and Spectrum objects into ordered object sources.

    moons1d arm files of one object (same folder and name stem) become one source, placed
    where its first file appears. Files of unknown format met inside a folder or glob are
    skipped with one warning; named files of unknown format are an error.
    """
    if format is not None and format not in FORMATS:
        raise UserError(f"format: unknown format {format!r} (known: {', '.join(FORMATS)})")
    if isinstance(inputs, (str, os.PathLike)) or is_spectrum(inputs):
        inputs = [inputs]
    units: list[_Unit] = []
    moons_groups: dict[str, _Unit] = {}
    skipped: list[str] = []
    n_spectra = 0
    for item in inputs:
        if is_spectrum(item):
            if format is not None:
                raise UserError(f"format={format!r} does not apply to a specutils Spectrum object")
            n_spectra += 1
            units.append(_Unit("spectrum", obj=item, label=f"Spectrum #{n_spectra}"))
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise UserError(f"input {item!r}: expected a path, glob, folder or specutils Spectrum")
        for path, fmt in _expand(os.fspath(item), format, skipped):
            if fmt == "moons1d":
                band = moons_band(path)
                key = moons_stem(path, band)
                if key in moons_groups:
                    if path not in moons_groups[key].paths:
                        moons_groups[key].paths.append(path)
                    continue
                unit = _Unit("moons1d", paths=[path], label=path)
                moons_groups[key] = unit
                units.append(unit)
            else:
                units.append(_Unit(fmt, paths=[path], label=path))
    if skipped:
        shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        warnings.warn(ReaderWarning(f"skipped {len(skipped)} file(s) of unknown format: {shown}"), stacklevel=3)
    if not units:
        raise UserError("no spectra found in the inputs" + (f" (skipped {len(skipped)} file(s) of unknown format)"
                                                            if skipped else ""))
    return units


def _guarded(unit: _Unit, batch_size: int) -> Iterator[SpectraBatch]:
    """Read one source; unexpected library errors become one-line UserErrors naming it."""
    try:
        if unit.fmt == "spectrum":
            yield from_specutils(unit.obj, source=unit.label)
        elif unit.fmt == "moons1d":
            yield from read_moons1d(unit.paths)
        elif unit.fmt == "hdf5":
            yield from read_hdf5(unit.paths[0], batch_size, unit.rows)
        elif unit.fmt == "desi":  # many targets per file: read in chunks
            yield from read_desi(unit.paths[0], chunk_rows=batch_size)
        else:
            yield from _READERS[unit.fmt](unit.paths[0])
    except UserError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError) as exc:
        raise fail(unit.label, f"cannot read as {unit.fmt} ({first_line(exc)})") from None


def _same_layout(a: SpectraBatch, b: SpectraBatch) -> bool:
    if list(a.arms) != list(b.arms) or sorted(a.labels) != sorted(b.labels):
        return False
    if a.ids.dtype.kind != b.ids.dtype.kind:
        return False
    for name in a.arms:
        wa, wb = a.arms[name]["wave"], b.arms[name]["wave"]
        if wa is not wb and not np.array_equal(wa, wb):
            return False
    return all(a.labels[k].dtype.kind == b.labels[k].dtype.kind for k in a.labels)


def _concatenate(parts: list[SpectraBatch]) -> SpectraBatch:
    return parts[0] if len(parts) == 1 else SpectraBatch.concatenate(parts)


def rebatch(blocks: Iterable[SpectraBatch], batch_size: int) -> Iterator[SpectraBatch]:
    """Regroup consecutive blocks into batches of at most ``batch_size`` rows.

    A batch holds one wavelength grid per arm, so a change of arms or grid (or of label
    names or id type) between consecutive objects closes the batch early. Order is kept.
    """
    buffer: list[SpectraBatch] = []
    filled = 0
    for block in blocks:
        if len(block) == 0:
            continue
        if buffer and not _same_layout(buffer[0], block):
            yield _concatenate(buffer)
            buffer, filled = [], 0
        start = 0
        while start < len(block):
            take = min(batch_size - filled, len(block) - start)
            part = block if (start == 0 and take == len(block)) else block.subset(slice(start, start + take))
            buffer.append(part)
            filled += take
            start += take
            if filled == batch_size:
                yield _concatenate(buffer)
                buffer, filled = [], 0
    if buffer:
        yield _concatenate(buffer)


def _blocks(units: list[_Unit], batch_size: int, counts: list[int] | None = None) -> Iterator[SpectraBatch]:
    """Each source's blocks; NoiseEstimatedWarnings are reported once per stream. ``counts``
    (one entry per unit) gets each unit's number of objects added as they are read."""
    warned = False
    for index, unit in enumerate(units):
        if unit.fmt == "hdf5":  # streamed in chunks; a store always carries its ivar
            for block in _guarded(unit, batch_size):
                if counts is not None:
                    counts[index] += len(block)
                yield block
            continue
        blocks = _guarded(unit, batch_size)
        while True:  # one block at a time (a DESI coadd is read in chunks of targets)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                block = next(blocks, None)
            for record in caught:
                if issubclass(record.category, NoiseEstimatedWarning):
                    if warned:
                        continue
                    warned = True
                    message = f"{record.message} (further cases in this stream are not reported)"
                    warnings.warn(NoiseEstimatedWarning(message), stacklevel=2)
                else:
                    warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)
            if block is None:
                break
            if counts is not None:
                counts[index] += len(block)
            yield block


def read_spectra(inputs: Iterable[Any] | str | os.PathLike, format: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[SpectraBatch]:
    """Read files, globs, folders and specutils Spectrum objects as one stream of batches.

    inputs: paths (str/PathLike), glob patterns, folders (their files, sorted, not recursive)
    and specutils ``Spectrum`` objects, in any mix; format: force one of :data:`FORMATS`
    (default: detected from each file's content); batch_size: most rows per batch.

    Yields :class:`~mtopnet.store.SpectraBatch` with one row per object in input order:
    ``ids`` (N,) int64 (DESI TARGETID, store ids) or str (other formats); ``arms[ARM]``
    ``wave`` (L,) float64 vacuum Angstrom, ``flux`` (N, L) float32 1e-17 erg/s/cm2/A,
    ``ivar`` (N, L) float32, ``mask`` (N, L) uint8 bits 1 bad / 2 sky line / 4 telluric;
    ``labels['noise_estimated']`` (N,) bool (store labels are passed through too).

    Paths are resolved and formats detected when this is called, so a missing file or an
    unknown format raises :class:`~mtopnet.config.UserError` before any reading.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UserError(f"batch_size: must be a positive integer, got {batch_size!r}")
    units = plan_inputs(inputs, format)
    return rebatch(_blocks(units, int(batch_size)), int(batch_size))


def read_units(units: list[_Unit], batch_size: int = DEFAULT_BATCH_SIZE,
               counts: list[int] | None = None) -> Iterator[SpectraBatch]:
    """The stream of :func:`read_spectra` for object sources already planned (:func:`plan_inputs`),
    e.g. a part of them with store rows restricted (``_Unit.rows``): one run's shard.
    counts: if given, a list of ``len(units)`` zeros; each unit's number of objects is added
    to its entry as the stream is read (rows per source, e.g. for :mod:`mtopnet.io.passthrough`)."""
    if counts is not None and len(counts) != len(units):
        raise ValueError(f"counts: {len(counts)} entries for {len(units)} units")
    return rebatch(_blocks(list(units), int(batch_size), counts), int(batch_size))


def read_file(path: str | os.PathLike, format: str | None = None) -> SpectraBatch:
    """Every object of one file (or one moons1d arm file) as a single SpectraBatch."""
    parts = list(read_spectra([path], format=format, batch_size=1 << 62))
    if len(parts) != 1:
        raise fail(path, "its objects do not share one wavelength grid; use read_spectra")
    return parts[0]
