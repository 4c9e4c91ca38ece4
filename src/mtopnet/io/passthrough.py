"""Per-object tables of the input files that FITS catalogues carry along (pass-through).

Survey files hold a table row per object beside the spectra: DESI's ``FIBERMAP`` (one row per
target), SDSS's ``SPECOBJ`` (SDSS-V: ``SPALL``; one row per spec file, with the plug-map
columns). :func:`input_passthrough` reads them per object source, before a run (SDSS: a
few ms per file, headers walked without astropy);
:func:`stack_passthrough` puts them in catalogue order once the run knows how many catalogue
rows each source gave. Each HDU name becomes one table of exactly the catalogue's rows, in the
catalogue's order:

- its columns are those every file's table of that name has (astropy ``vstack``, inner join);
- rows of objects whose file had no such table (a MOONS file, a store, an SDSS file in the
  FIBERMAP table, a DESI file in the SPECOBJ table) are null: masked in astropy, written as
  NaN (floats), an empty string, or the column's ``TNULL`` value (integers; a value no real
  row of the column holds);
- a table that does not stack, or whose row count is not the number of spectra read from
  its file, is left out with a :class:`~mtopnet.io.ReaderWarning` (the catalogue is still written).

Tables are held in memory until the catalogue is written (DESI: a few hundred bytes per
target; SDSS: ~1.5 kB per spec file).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..config import UserError
from ._core import ReaderWarning, first_line
from .desi import read_fibermap
from .sdss import read_specobj

SOURCE_TABLES: dict[str, tuple[str, ...]] = {"desi": ("FIBERMAP",), "sdss": ("SPECOBJ", "SPALL")}
"""Input format -> the HDU names of its per-object tables copied to FITS catalogues."""


def unit_tables(fmt: str, path: str) -> dict[str, np.ndarray]:
    """The pass-through tables of one input file of format ``fmt``: HDU name -> (n,) structured
    array, one row per object the reader yields, in its order ({} for other formats, and for
    a file that cannot be read: reading its spectra reports that)."""
    try:
        if fmt == "desi":
            return {"FIBERMAP": read_fibermap(path)}
        if fmt == "sdss":
            return read_specobj(path)
    except UserError:
        pass
    return {}


def input_passthrough(units: list[Any]) -> list[dict[str, np.ndarray]]:
    """:func:`unit_tables` of each object source (``plan_inputs``' units, or a run's shards'
    units in order): one dict per unit, {} where it has no table."""
    return [unit_tables(unit.fmt, unit.paths[0]) if unit.fmt in SOURCE_TABLES and unit.paths else {}
            for unit in units]


def _null_value(dtype: np.dtype, values: np.ndarray) -> Any:
    """A null for an integer column: the dtype's min (signed) or max (unsigned), else any
    value the column's real rows do not hold (None if it holds every value)."""
    info = np.iinfo(dtype)
    candidates = [info.max, info.min] if dtype.kind == "u" else [info.min, info.max, -1]
    for value in candidates:
        if not np.any(values == value):
            return value
    used = np.unique(values)
    gaps = np.nonzero(np.diff(used) > 1)[0]
    return int(used[gaps[0]]) + 1 if gaps.size else None


def _stack(parts: list[np.ndarray], name: str) -> np.ndarray | None:
    """``parts`` one after the other as one structured array: concatenated when they share a
    dtype, else with astropy ``vstack`` (inner join: the columns all have). None, with a
    warning, when they do not stack."""
    if all(p.dtype == parts[0].dtype for p in parts):
        return np.concatenate(parts)
    from astropy.table import Table, vstack
    from astropy.utils.metadata import MergeConflictWarning
    # one vstack per run of equal dtypes: many one-row SDSS tables stack in one concatenate each
    runs: list[list[np.ndarray]] = []
    for part in parts:
        if runs and runs[-1][0].dtype == part.dtype:
            runs[-1].append(part)
        else:
            runs.append([part])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MergeConflictWarning)
            return vstack([Table(np.concatenate(run)) for run in runs], join_type="inner",
                          metadata_conflicts="silent").as_array()
    except (ValueError, TypeError) as exc:  # astropy's TableMergeError is a ValueError
        warnings.warn(ReaderWarning(f"{name} not copied: the inputs' {name} tables do not stack ({first_line(exc)})"),
                      stacklevel=3)
        return None


def _with_null_rows(rows: np.ndarray, where: np.ndarray, total: int) -> Any:
    """An astropy Table of ``total`` rows: ``rows`` at positions ``where``, every other row masked
    (module docstring: how a null is written)."""
    from astropy.table import Table
    table = Table(np.zeros(total, dtype=rows.dtype), masked=True)
    for name in table.colnames:
        col = table[name]
        col[where] = rows[name]
        col.mask[...] = True
        col.mask[where] = False
        kind = col.dtype.kind
        if kind in "iu":
            null = _null_value(col.dtype, np.asarray(rows[name]))
            col.meta["TNULL"] = null  # None: every value is taken; the null rows hold 0 (unmarked in FITS)
            col.fill_value = 0 if null is None else null
        else:
            col.fill_value = {"f": np.nan, "c": np.nan, "b": False}.get(kind, "" if kind in "SU" else 0)
    return table


def stack_passthrough(per_unit: list[dict[str, np.ndarray]], unit_rows: list[int],
                      labels: list[str] | None = None) -> dict[str, Any]:
    """The pass-through tables of a run, in catalogue order (module docstring).

    per_unit: each object source's tables (:func:`input_passthrough`), in input order;
    unit_rows: the catalogue rows each source gave, same order; labels: the sources' names for
    warnings. Returns HDU name -> (N,) structured array (every row present) or astropy Table
    with masked rows, N = ``sum(unit_rows)``; {} when no source has a table.
    ValueError: ``per_unit`` and ``unit_rows`` differ in length.
    """
    if len(per_unit) != len(unit_rows):
        raise ValueError(f"{len(per_unit)} sources' tables for {len(unit_rows)} sources' row counts")
    labels = labels or [f"input {i}" for i in range(len(per_unit))]
    offsets = np.concatenate([[0], np.cumsum(unit_rows, dtype=np.int64)])
    total = int(offsets[-1])
    names: list[str] = []
    for tables in per_unit:
        names += [n for n in tables if n not in names]
    out: dict[str, Any] = {}
    for name in names:
        parts, where = [], []
        for i, tables in enumerate(per_unit):
            rows = tables.get(name)
            if rows is None:
                continue
            if len(rows) != unit_rows[i]:
                warnings.warn(ReaderWarning(f"{labels[i]}: {name} has {len(rows)} rows for {unit_rows[i]} spectra; "
                                            f"its rows are left empty in the catalogue's {name}"), stacklevel=2)
                continue
            parts.append(rows)
            where.append(np.arange(offsets[i], offsets[i + 1]))
        if not parts:
            continue
        stacked = _stack(parts, name)
        if stacked is None:
            continue
        idx = np.concatenate(where)
        out[name] = stacked if len(idx) == total else _with_null_rows(stacked, idx, total)
    return out


def append_tables(path: str | os.PathLike, tables: Mapping[str, Any]) -> None:
    """Append each table (structured array, or astropy Table with masked rows from
    :func:`stack_passthrough`) to FITS file ``path`` as a binary table HDU named by its key.
    Masked values are written as each column's fill value: NaN, '', F (logical), and for
    integers the ``TNULL`` of the column (set here: astropy's own ``table_to_hdu`` loses it for
    vector columns)."""
    from astropy.io import fits
    from astropy.table import Table
    with fits.open(path, mode="append") as hdul:
        for name, table in tables.items():
            table = table if isinstance(table, Table) else Table(table)
            hdu = fits.table_to_hdu(table.filled() if table.has_masked_values else table)
            for col in hdu.columns:
                null = table[col.name].meta.get("TNULL")
                if null is not None:
                    col.null = int(null)
            hdu.name = name
            hdul.append(hdu)


__all__ = ["SOURCE_TABLES", "unit_tables", "input_passthrough", "stack_passthrough", "append_tables"]
