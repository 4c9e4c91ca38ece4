"""The catalogue: its columns, the ZWARN bits, and every writer and reader of it.

One row per input spectrum, input order. The columns (names, dtypes, units, descriptions)
and the ZWARN / ZWARN_INFO bits are :mod:`mtopnet.columns`' one table (docs/catalogue.md).
FITS: HDU ``REDSHIFTS`` with TCOMM for every column and TUNIT for those with a unit (the
others are dimensionless by declaration: :class:`mtopnet.columns.Column`), the provenance in both
headers, with ``--pdf`` an HDU ``ZBINS`` of the bin centres of ``Z_PDF``, then the inputs'
per-object tables (DESI ``FIBERMAP``, SDSS ``SPECOBJ``; :mod:`mtopnet.io.passthrough`); Parquet: the same
names, with units and descriptions as field metadata, the provenance and the bin centres as
schema metadata; CSV: the same names, vector columns spread as ``COEFF_<i>`` and
``PDF_Z<centre>``. Catalogues of the layout before this one (lowercase names) are read as
today's (:func:`mtopnet.columns.upgrade_legacy`).

Writing (:class:`CatalogueWriter`): rows go to a temporary file ``NAME.<pid>.<random>.tmp`` in
the output's folder, renamed to ``NAME`` when complete, so a reader never sees half a
catalogue. For the whole run the writer holds an advisory lock (``fcntl.flock``) on
``NAME.lock``: a second writer of the same ``NAME`` is refused with a one-line
:class:`~mtopnet.config.UserError` naming the first one's pid. The kernel releases the lock
when its process dies (even by SIGKILL), so a killed run never blocks the next one, which also
removes the killed run's temporary files. A full disk or a read-only folder ends as
:func:`mtopnet.store.write_error`'s one line, with the temporary file removed.

Over 500 lines: the writers of the three formats (sharing the lock, the temporary names and the
column handling) and their readers (which undo what the writers do, old layouts and damaged
files included) are one file format, kept in one place; the column table is in
:mod:`mtopnet.columns`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .columns import ALL_COLUMNS, BASE_SCHEMA, REFINE_SCHEMA, SCAN_SCHEMA, ZInfo, ZWarn, upgrade_legacy
from .config import UserError
from .io.passthrough import append_tables
from .provenance import header_cards
from .store import open_store, remove_partial, write_error

MIN_VALID_FRACTION = 0.2
"""Objects with valid data on less than this fraction of the model grid get LITTLE_COVERAGE."""

CATALOGUE_COLUMNS = tuple(c.name for c in BASE_SCHEMA)
"""Columns of every catalogue, in order."""
CATALOGUE_DTYPES = {c.name: np.dtype(c.dtype) for c in BASE_SCHEMA if c.name not in ("TARGETID", "COEFF")}
"""Their dtypes (TARGETID's follows the input's ids; COEFF is a vector of float64)."""
REFINE_COLUMNS = tuple(c.name for c in REFINE_SCHEMA)
REFINE_DTYPES = {c.name: np.dtype(c.dtype) for c in REFINE_SCHEMA}
"""Columns added by the refinement (mtopnet.refine), after CATALOGUE_COLUMNS."""
SCAN_COLUMNS = tuple(c.name for c in SCAN_SCHEMA)
SCAN_DTYPES = {c.name: np.dtype(c.dtype) for c in SCAN_SCHEMA}
"""Columns of the full-range template scan (models calibrated with it), after REFINE_COLUMNS."""
VECTOR_COLUMNS = ("COEFF", "Z_PDF")
"""Columns holding one vector per row (rows["COEFF"]: (n, K))."""


def _columns(rows: dict) -> dict[str, np.dtype]:
    """Column name -> element dtype of a catalogue chunk (TARGETID excluded), in catalogue order:
    the scalar columns of :data:`CATALOGUE_COLUMNS`, the others where ``rows`` has them."""
    return {name: np.dtype(col.dtype) for name, col in ALL_COLUMNS.items() if name != "TARGETID" and (
        name in rows or (name in CATALOGUE_COLUMNS and name not in VECTOR_COLUMNS))}


def _text_width(dt: np.dtype) -> int:
    return dt.itemsize // 4 if dt.kind == "U" else dt.itemsize


# ----------------------------------------------------------------------------- writers


def catalogue_format(path: str | Path) -> str:
    """'fits', 'parquet' or 'csv' from the file extension (UserError otherwise)."""
    name = str(path).lower()
    for ext, fmt in ((".fits", "fits"), (".fit", "fits"), (".fits.gz", "fits"), (".parquet", "parquet"),
                     (".pq", "parquet"), (".csv", "csv")):
        if name.endswith(ext):
            if ext == ".fits.gz":
                raise UserError(f"{path}: compressed FITS is not written; use .fits")
            return fmt
    raise UserError(f"{path}: unknown catalogue format; use .fits, .parquet or .csv")


class OutputLock:
    """Advisory lock of one output file for one run: ``fcntl.flock`` on ``NAME.lock``.

    ``acquire()`` raises :class:`UserError` ("... is being written by another mtopnet run
    (pid N)") while another process holds it. The lock file holds the holder's pid; it is
    removed on ``release()``. A lock left by a killed process is free (the kernel drops a
    flock with its process), so it never blocks a re-run.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        while self._fd is None:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise write_error(self.path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    who = f" (pid {holder})" if holder else ""
                    raise UserError(f"{self.path}: is being written by another mtopnet run{who}; "
                                    f"wait for it or choose another output") from None
                raise write_error(self.path, exc) from None
            try:  # the holder before us may have removed the file after we opened it: lock the one on disk
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError as exc:  # a full disk: leave no empty lock file behind (we hold it)
                with contextlib.suppress(OSError):
                    self.lock_path.unlink()
                os.close(fd)
                raise write_error(self.path, exc) from None
            self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.lock_path.unlink()  # while still holding it: a waiting process re-checks the file
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    return None


def temp_name(path: Path) -> Path:
    """A temporary name for ``path`` unique to this run: ``NAME.<pid>.<random>.tmp``, same folder."""
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _remove_stale_temps(path: Path) -> None:
    """Temporary files of earlier, killed writers of ``path`` (call only while holding its lock)."""
    for stale in path.parent.glob(f"{_glob_escape(path.name)}.*.tmp"):
        remove_partial(stale)
    remove_partial(path.with_name(path.name + ".tmp"))  # the name of earlier versions


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


class CatalogueWriter:
    """Streaming catalogue writer: ``write(rows)`` per batch, ``close()`` renames the temp file.

    path: output (format from the extension); rows: column -> (n,) or, for
    :data:`VECTOR_COLUMNS`, (n, K) arrays; zbin_centres: (K,) written with ``Z_PDF``; meta:
    provenance, FITS keyword -> value or (value, comment), into headers / metadata; overwrite: False refuses
    a ``path`` that exists once the lock is held (another run may just have finished it);
    passthrough: HDU name -> (n_rows,) array or astropy Table, FITS only, appended as HDUs, row
    for row with the catalogue (FIBERMAP, SPECOBJ: :mod:`mtopnet.io.passthrough`).
    The lock on ``path`` (:class:`OutputLock`) is taken on construction and held until
    ``close()`` or ``abort()``. UserError: another run writes ``path``, or a write failed
    (full disk, read-only folder; the temporary file is removed).
    """

    def __init__(self, path: str | Path, zbin_centres: np.ndarray | None = None, meta: dict | None = None,
                 overwrite: bool = True, passthrough: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.format = catalogue_format(path)
        self.centres = zbin_centres
        self.meta = meta or {}
        self.passthrough = dict(passthrough or {}) if self.format == "fits" else {}
        self.n_rows = 0
        self._impl: Any = None
        self.lock = OutputLock(self.path).acquire()
        if not overwrite and self.path.exists():
            self.lock.release()
            raise UserError(f"{self.path}: exists; pass --overwrite to replace it")
        _remove_stale_temps(self.path)
        self.tmp = temp_name(self.path)

    def _open(self, rows: dict[str, np.ndarray], centres: np.ndarray | None) -> None:
        self._impl = {"fits": _FitsSink, "parquet": _ParquetSink, "csv": _CsvSink}[self.format](
            self.tmp, rows, centres, self.meta)

    def write(self, rows: dict[str, np.ndarray]) -> None:
        try:
            if self._impl is None:
                self._open(rows, self.centres)
            self._impl.write(rows)
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from None
        self.n_rows += len(rows["TARGETID"])

    def close(self) -> None:
        for name, table in self.passthrough.items():
            if len(table) != self.n_rows:
                self.abort()
                raise UserError(f"{self.path}: {len(table)} {name} rows for {self.n_rows} catalogue rows")
        try:
            if self._impl is None:  # no rows: an empty catalogue with the right columns
                empty = {"TARGETID": np.zeros(0, np.int64),
                         **{k: np.zeros(0, dt) for k, dt in CATALOGUE_DTYPES.items()}}
                self._open(empty, None)
            self._impl.close()
            if self.passthrough:
                append_tables(self.tmp, self.passthrough)
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from None
        self.lock.release()

    def abort(self) -> None:
        if self._impl is not None:
            with contextlib.suppress(Exception):  # best effort cleanup
                self._impl.close()
        remove_partial(self.tmp)
        self.lock.release()

    def __enter__(self) -> "CatalogueWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _id_array(ids: np.ndarray, width: int | None = None) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    return ids.astype(str).astype(f"S{width}" if width else "S")


class _FitsSink:
    """BINTABLE 'REDSHIFTS' streamed to disk: header (NAXIS2 patched at the end), raw rows, padding."""

    def __init__(self, tmp: Path, first: dict, centres: np.ndarray | None, meta: dict):
        from astropy.io import fits
        self.fits = fits
        ids = np.asarray(first["TARGETID"])
        self.id_width = None if ids.dtype.kind in "iu" else max(64, max((len(str(i)) for i in ids), default=1))
        fields: list[tuple] = [("TARGETID", ">i8" if self.id_width is None else f"S{self.id_width}")]
        self.columns = _columns(first)
        for name, dt in self.columns.items():
            base = f"S{_text_width(dt)}" if dt.kind == "U" else dt.newbyteorder(">").str
            fields.append((name, base, (np.asarray(first[name]).shape[1],)) if name in VECTOR_COLUMNS
                          else (name, base))
        self.dtype = np.dtype(fields)
        hdu = fits.BinTableHDU.from_columns(np.zeros(0, dtype=self.dtype), name="REDSHIFTS")
        for i, name in enumerate(self.dtype.names, start=1):
            col = ALL_COLUMNS[name]
            if col.unit:
                hdu.header[f"TUNIT{i}"] = col.unit
            hdu.header[f"TCOMM{i}"] = col.description
        primary = fits.PrimaryHDU()
        for key, value, comment in header_cards(meta):
            primary.header[key] = (value, comment)
            hdu.header[key] = (value, comment)
        self.header = hdu.header
        self.centres = centres
        self.fh = open(tmp, "wb")  # noqa: SIM115 - the sink streams rows into it until close()
        self.fh.write(primary.header.tostring().encode("ascii"))
        self.header_at = self.fh.tell()
        self.header_bytes = self.header.tostring().encode("ascii")
        self.fh.write(self.header_bytes)
        self.n = 0

    def write(self, rows: dict) -> None:
        n = len(rows["TARGETID"])
        rec = np.zeros(n, dtype=self.dtype)
        ids = _id_array(rows["TARGETID"], self.id_width)
        if self.id_width is not None and ids.dtype.itemsize > self.id_width:
            raise UserError(f"TARGETID longer than {self.id_width} characters cannot be written to FITS; "
                            f"use .parquet")
        rec["TARGETID"] = ids
        for k, dt in self.columns.items():
            value = np.asarray(rows[k])
            rec[k] = np.char.encode(value.astype(str), "ascii") if dt.kind == "U" else value
        self.fh.write(rec.tobytes())
        self.n += n

    def close(self) -> None:
        if self.fh.closed:
            return
        try:
            self._finish()
        finally:
            self.fh.close()

    def _finish(self) -> None:
        size = self.n * self.dtype.itemsize
        self.fh.write(b"\0" * ((-size) % 2880))
        self.header["NAXIS2"] = self.n
        text = self.header.tostring().encode("ascii")
        assert len(text) == len(self.header_bytes)
        self.fh.seek(self.header_at)
        self.fh.write(text)
        self.fh.seek(0, os.SEEK_END)
        if "Z_PDF" in self.columns and self.centres is not None:
            data = np.asarray(self.centres, dtype=">f8")
            zb = self.fits.ImageHDU(data, name="ZBINS")
            zb.header["COMMENT"] = "redshift bin centres of the Z_PDF column"
            self.fh.write(zb.header.tostring().encode("ascii"))
            self.fh.write(data.tobytes() + b"\0" * ((-data.nbytes) % 2880))
        self.fh.flush()


def _arrow_type(pa, name: str, dt: np.dtype, first: dict):
    if dt.kind == "U":
        return pa.string()
    if name in VECTOR_COLUMNS:
        return pa.list_(pa.from_numpy_dtype(dt), np.asarray(first[name]).shape[1])
    return pa.from_numpy_dtype(dt)


def _arrow_fields(pa, first: dict, vectors: bool = True) -> tuple[list, dict]:
    """Arrow fields of the columns (unit and description as field metadata), and their dtypes.
    ``vectors``: False leaves out the vector columns (CSV spreads them over scalar columns)."""
    ids = np.asarray(first["TARGETID"])
    columns = {k: dt for k, dt in _columns(first).items() if vectors or k not in VECTOR_COLUMNS}
    types = {"TARGETID": pa.int64() if ids.dtype.kind in "iu" else pa.string()}
    types.update({k: _arrow_type(pa, k, dt, first) for k, dt in columns.items()})
    fields = [pa.field(k, t, metadata={"unit": ALL_COLUMNS[k].unit, "description": ALL_COLUMNS[k].description})
              for k, t in types.items()]
    return fields, columns


def _arrow_arrays(pa, rows: dict, columns: dict) -> list:
    """Arrow arrays of the TARGETID and the ``columns`` of a chunk of catalogue rows."""
    ids = np.asarray(rows["TARGETID"])
    cols = [pa.array(ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str))]
    for k, dt in columns.items():
        value = np.asarray(rows[k])
        if k in VECTOR_COLUMNS:
            flat = pa.array(np.ascontiguousarray(value, dtype=dt).ravel())
            cols.append(pa.FixedSizeListArray.from_arrays(flat, value.shape[1]))
        else:
            cols.append(pa.array(value.astype(str) if dt.kind == "U" else value.astype(dt)))
    return cols


class _ParquetSink:
    def __init__(self, tmp: Path, first: dict, centres: np.ndarray | None, meta: dict):
        import pyarrow as pa
        import pyarrow.parquet as pq
        self.pa = pa
        fields, self.columns = _arrow_fields(pa, first)
        md = {key: str(value) for key, value, _ in header_cards(meta)}
        if "Z_PDF" in self.columns and centres is not None:
            md["z_bin_centres"] = json.dumps([float(c) for c in centres])
        self.schema = pa.schema(fields, metadata={k.encode(): v.encode() for k, v in md.items()})
        self.writer = pq.ParquetWriter(str(tmp), self.schema)

    def write(self, rows: dict) -> None:
        self.writer.write_table(self.pa.Table.from_arrays(_arrow_arrays(self.pa, rows, self.columns),
                                                          schema=self.schema))

    def close(self) -> None:
        self.writer.close()


class _CsvSink:
    """CSV: the scalar columns, then COEFF as COEFF_<i> and the PDF as PDF_Z<centre>."""

    def __init__(self, tmp: Path, first: dict, centres: np.ndarray | None, meta: dict):
        import pyarrow as pa
        import pyarrow.csv as pcsv
        self.pa = pa
        fields, self.columns = _arrow_fields(pa, first, vectors=False)
        self.spread = {}
        if "COEFF" in first:
            self.spread["COEFF"] = [f"COEFF_{i}" for i in range(np.asarray(first["COEFF"]).shape[1])]
        if "Z_PDF" in first:
            nbins = np.asarray(first["Z_PDF"]).shape[1]
            centres = centres if centres is not None else np.arange(nbins, dtype=float)
            self.spread["Z_PDF"] = [f"PDF_Z{c:.6f}" for c in centres]
        for k, names in self.spread.items():
            fields += [pa.field(n, pa.from_numpy_dtype(np.dtype(ALL_COLUMNS[k].dtype))) for n in names]
        self.schema = pa.schema(fields)
        self.writer = pcsv.CSVWriter(str(tmp), self.schema)

    def write(self, rows: dict) -> None:
        pa = self.pa
        cols = _arrow_arrays(pa, rows, self.columns)
        for k, names in self.spread.items():
            value = np.asarray(rows[k], dtype=ALL_COLUMNS[k].dtype)
            cols += [pa.array(np.ascontiguousarray(value[:, j])) for j in range(len(names))]
        self.writer.write_table(pa.Table.from_arrays(cols, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


def write_catalogue(path: str | Path, chunks: Iterable[dict[str, np.ndarray]], zbin_centres: np.ndarray | None = None,
                    meta: dict | None = None) -> int:
    """Write catalogue chunks (dicts of column arrays) atomically; returns the number of rows."""
    with CatalogueWriter(path, zbin_centres, meta) as writer:
        for rows in chunks:
            writer.write(rows)
    return writer.n_rows


# ----------------------------------------------------------------------------- readers


def read_catalogue(path: str | Path) -> dict[str, np.ndarray]:
    """A catalogue written by ``mtopnet predict`` (FITS, Parquet or CSV) as column arrays.

    Text columns come back as ``str`` arrays, vector columns (COEFF, Z_PDF) as (n, K) arrays,
    in catalogue order; a catalogue of the layout before the Redrock one is returned in
    today's names and bits (:func:`mtopnet.columns.upgrade_legacy`).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    fmt = catalogue_format(path)
    try:
        if fmt == "fits":
            out = _read_fits_table(path)
        else:
            import pyarrow as pa
            import pyarrow.csv as pcsv
            import pyarrow.parquet as pq
            text = pcsv.ConvertOptions(column_types={c.name: pa.string() for c in ALL_COLUMNS.values()
                                                     if c.dtype.startswith("U")})
            table = pq.read_table(path) if fmt == "parquet" else pcsv.read_csv(path, convert_options=text)
            out = {}
            for name in table.column_names:
                col = table.column(name).combine_chunks()
                out[name] = (np.asarray(col.flatten()).reshape(len(col), -1) if pa.types.is_fixed_size_list(col.type)
                             else col.to_numpy(zero_copy_only=False))
        for k, prefix in {"COEFF": "COEFF_", "Z_PDF": "PDF_Z", "z_pdf": "pdf_z"}.items():  # CSV: spread vectors
            parts = [n for n in out if n.startswith(prefix)]
            if parts:
                out[k] = np.stack([out.pop(n) for n in parts], axis=1)
        for name, value in out.items():
            if value.dtype.kind in "SO":
                out[name] = np.char.decode(value, "ascii") if value.dtype.kind == "S" else value.astype(str)
        out = upgrade_legacy(out)
        return {**{k: out[k] for k in ALL_COLUMNS if k in out}, **out}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{path}: not a readable catalogue ({(str(exc).splitlines() or [repr(exc)])[0]})") from None


_DAMAGED = ("truncated", "corrupt", "Header size is not multiple", "Error validating header")
"""Words of astropy's warnings about a damaged FITS file (read_catalogue refuses the file)."""


def _read_fits_table(path: Path) -> dict[str, np.ndarray]:
    """Columns of the HDU REDSHIFTS (an older catalogue without one: its first table), read by
    name so that astropy does not warn about FIBERMAP or SPECOBJ. ValueError for a damaged file
    (truncated, bad header), in astropy's words; its warnings become that one error."""
    import warnings

    from astropy.io import fits
    from astropy.table import Table
    error, out = None, {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(path, memmap=False) as hdul:
                tables = [h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
                if not tables:
                    raise ValueError("no table HDU (REDSHIFTS) in the file")
                table = Table.read(next((h for h in tables if h.name == "REDSHIFTS"), tables[0]))
                out = {name: np.array(table[name]) for name in table.colnames}
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            error = exc
    damaged = [str(w.message) for w in caught if any(word in str(w.message) for word in _DAMAGED)]
    if damaged:  # astropy's words on the damage say more than what failed because of it
        lines = [t.strip(" .") for t in damaged[0].splitlines() if t.strip() and "zero-based" not in t]
        raise ValueError("; ".join(lines))
    if error is not None:
        raise error
    for w in caught:  # anything else astropy had to say about a readable file
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def read_zbin_centres(path: str | Path) -> np.ndarray | None:
    """Redshift-bin centres of a catalogue written with ``--pdf`` (None without a PDF)."""
    fmt = catalogue_format(path)
    try:
        if fmt == "fits":
            from astropy.io import fits
            with fits.open(path) as hdul:
                return np.asarray(hdul["ZBINS"].data, dtype=np.float64) if "ZBINS" in hdul else None
        if fmt == "parquet":
            import pyarrow.parquet as pq
            md = pq.read_schema(path).metadata or {}
            raw = md.get(b"z_bin_centres")
            return np.asarray(json.loads(raw), dtype=np.float64) if raw else None
        with open(path) as fh:
            names = [n.strip('"') for n in fh.readline().strip().split(",")]
        centres = [float(n[len("PDF_Z"):]) for n in names if n.upper().startswith("PDF_Z")]
        return np.asarray(centres) if centres else None
    except (OSError, ValueError, KeyError):
        return None


def read_catalogue_meta(path: str | Path) -> dict[str, str]:
    """The provenance a catalogue records (:mod:`mtopnet.provenance`: MODEL, INFILEnn, INHASHnn,
    COMMAND, ...) as keyword -> text: a FITS file's primary header, a Parquet file's schema
    metadata; {} for CSV (which has no place for it) and for a file that cannot be read."""
    try:
        fmt = catalogue_format(path)
        if fmt == "fits":
            from astropy.io import fits
            header = fits.getheader(path, 0)
            return {key: str(header[key]) for key in header if key and key not in ("COMMENT", "HISTORY")}
        if fmt == "parquet":
            import pyarrow.parquet as pq
            md = pq.read_schema(path).metadata or {}
            return {k.decode(): v.decode() for k, v in md.items() if k != b"z_bin_centres"}
    except (OSError, ValueError, KeyError, UserError):
        pass
    return {}


def read_truth(path: str | Path) -> dict[str, np.ndarray]:
    """ids and labels of a store (no spectra)."""
    with open_store(path) as f:
        out = {"id": np.asarray(f["ids"])}
        if "labels" in f:
            out.update({k: np.asarray(f["labels"][k]) for k in f["labels"]})
    if "z" not in out:
        raise UserError(f"{path}: the store has no labels/z to compare with")
    return out


def match_ids(cat_ids: np.ndarray, truth_ids: np.ndarray) -> np.ndarray:
    """Index into ``truth_ids`` of each catalogue id (-1 if absent): (N_cat,) int64."""
    cat_ids = np.asarray(cat_ids)
    truth_ids = np.asarray(truth_ids)
    if cat_ids.dtype.kind != truth_ids.dtype.kind:
        cat_ids, truth_ids = cat_ids.astype(str), truth_ids.astype(str)
    order = np.argsort(truth_ids, kind="stable")
    pos = np.searchsorted(truth_ids[order], cat_ids)
    pos = np.clip(pos, 0, max(len(order) - 1, 0))
    found = (len(order) > 0) & (truth_ids[order][pos] == cat_ids) if len(order) else np.zeros(len(cat_ids), bool)
    return np.where(found, order[pos] if len(order) else -1, -1).astype(np.int64)


__all__ = ["ZWarn", "ZInfo", "MIN_VALID_FRACTION", "VECTOR_COLUMNS", "CATALOGUE_COLUMNS", "CATALOGUE_DTYPES",
           "REFINE_COLUMNS", "REFINE_DTYPES", "SCAN_COLUMNS", "SCAN_DTYPES",
           "catalogue_format", "CatalogueWriter", "OutputLock", "temp_name", "write_catalogue", "read_catalogue",
           "read_catalogue_meta",
           "read_zbin_centres", "read_truth", "match_ids"]
