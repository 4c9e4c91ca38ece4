"""The catalogue: its columns, the ZWarn bits, and every writer and reader of it.

Catalogue columns (one row per input spectrum, input order)::

    id            input identifier
    z             the redshift: the template fit within the PDF's peaks (mtopnet.refine);
                  with --no-refine the PDF point estimate (the z maximising the PDF mass
                  within +-0.01, refined to the PDF mean inside that window, mtopnet.quality)
    z_mean        PDF mean
    z_lo68, z_hi68, z_lo95, z_hi95   central 68% / 95% intervals
    p_dz01        calibrated probability that |z - z_true| < 0.01 (from the PDF mass within
                  +-0.01 of the reported z)
    qop           4 (>= 99% reliable on validation), 3 (>= 90%), 2 (>= 50%), 1 (unreliable)
    zwarn         ZWarn bitmask (0 = no warning)
    logmstar, logmstar_err   log10 M*/Msun and its 1-sigma error
    logsfr, logsfr_err       log10 SFR/(Msun/yr) and its 1-sigma error

With refinement (the default) also, after those (mtopnet.refine, docs/refine.md)::

    z_net         the network's point estimate (the ``z`` of --no-refine)
    z_err         1-sigma error of z (chi2 curvature; half the 68% interval if not refined)
    delta_chi2    chi2 of the next-best PDF peak minus the best (NaN: one peak fitted)
    rchi2         reduced chi2 of the best template fit (NaN if not refined)
    refined       which PDF peak was reported (0 = the main one), -1 if not refined

With ``--pdf`` the PDF is added (FITS: a vector column ``z_pdf`` plus an HDU ``ZBINS`` with
the bin centres; Parquet: a fixed-size-list column ``z_pdf`` and the centres in the schema
metadata; CSV: one column per bin named ``pdf_z<centre>``).

Writing (:class:`CatalogueWriter`): rows go to a temporary file ``NAME.<pid>.<random>.tmp`` in
the output's folder, renamed to ``NAME`` when complete, so a reader never sees half a
catalogue. For the whole run the writer holds an advisory lock (``fcntl.flock``) on
``NAME.lock``: a second writer of the same ``NAME`` is refused with a one-line
:class:`~mtopnet.config.UserError` naming the first one's pid. The kernel releases the lock
when its process dies (even by SIGKILL), so a killed run never blocks the next one, which also
removes the killed run's temporary files. A full disk or a read-only folder ends as
:func:`mtopnet.store.write_error`'s one line, with the temporary file removed.
"""
from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import UserError
from .store import open_store, remove_partial, write_error

MIN_VALID_FRACTION = 0.2
"""Objects with valid data on less than this fraction of the model grid get LITTLE_COVERAGE."""

class ZWarn(enum.IntFlag):
    """Warning bits of the ``zwarn`` column (0 = no warning). Bit 15 is reserved."""

    LITTLE_COVERAGE = 1 << 0  # valid data on < MIN_VALID_FRACTION of the model's grid (qop forced to 1)
    ALL_MASKED = 1 << 1  # no valid pixel at all: outputs are the network's prior (qop 1, p_dz01 0)
    LOW_SN = 1 << 2  # continuum not detected (block medians below their noise); z rests on lines
    BAD_INPUT = 1 << 3  # NaN/inf flux or ivar, or negative ivar, in unmasked pixels (they were masked)
    NOISE_ESTIMATED = 1 << 4  # the reader estimated ivar from the flux scatter (mtopnet.io)
    OUT_OF_DOMAIN = 1 << 5  # wavelength coverage, sampling or resolution differs from the training data
    MULTI_PEAK = 1 << 6  # the PDF has more than one peak holding >= 5% probability within +-0.01
    LOW_PEAK_PROB = 1 << 7  # p_dz01 < 0.5
    REFINE_DISAGREE = 1 << 8  # template fit vs PDF: a weakly-supported peak fits best, or no peak fits (rchi2 > 3)
    UNTRAINED_PIXELS = 1 << 9  # data where the model saw none in training (voided before the network)
    IMPLAUSIBLE_FLUX = 1 << 10  # flux scale impossible for a galaxy (wrong unit?): M*, SFR meaningless (qop <= 2)
    SCAN_DISAGREE = 1 << 11  # the full-range template scan prefers another z by DELTACHI2 > 9 (qop <= 2)
    FIT_OUTLIERS = 1 << 12  # the template fit was dominated by a few pixels far from it; fitted without them (qop <= 3)
    NET_EXCLUDES = 1 << 14  # the network PDF holds < 0.1% within +-0.01 of the reported z (qop <= 2)
    Z_AT_LIMIT = 1 << 13  # z within 0.01 of the model's redshift range: a featureless spectrum's pile-up (qop <= 2)
    NO_FEATURES = 1 << 16  # templates at z fit no better than a smooth continuum (feature_dchi2 < 50; qop <= 2)

    @classmethod
    def names(cls, value: int) -> list[str]:
        """Names of the bits set in ``value``."""
        return [bit.name for bit in cls if value & bit and bit.name]


CATALOGUE_COLUMNS = ("id", "z", "z_mean", "z_lo68", "z_hi68", "z_lo95", "z_hi95", "p_dz01", "qop", "zwarn",
                     "logmstar", "logmstar_err", "logsfr", "logsfr_err")
CATALOGUE_DTYPES = {"z": np.float64, "z_mean": np.float64, "z_lo68": np.float64, "z_hi68": np.float64,
           "z_lo95": np.float64, "z_hi95": np.float64, "p_dz01": np.float32, "qop": np.int16,
           "zwarn": np.int32, "logmstar": np.float32, "logmstar_err": np.float32, "logsfr": np.float32,
           "logsfr_err": np.float32}
REFINE_COLUMNS = ("z_net", "z_err", "delta_chi2", "rchi2", "refined", "feature_dchi2")
REFINE_DTYPES = {"z_net": np.float64, "z_err": np.float64, "delta_chi2": np.float32, "rchi2": np.float32,
                  "refined": np.int16, "feature_dchi2": np.float32}
"""Columns added by the refinement (mtopnet.refine), after CATALOGUE_COLUMNS. feature_dchi2: chi2 of
a smooth per-arm continuum minus that of continuum + templates at z (evidence for any redshift
feature; NaN where not fitted)."""
SCAN_COLUMNS = ("scanned", "scan_z", "scan_dchi2")
SCAN_DTYPES = {"scanned": np.int16, "scan_z": np.float64, "scan_dchi2": np.float32}
"""Columns of the full-range template scan (models calibrated with it), after REFINE_COLUMNS:
scanned 1 where it ran; scan_z its best redshift; scan_dchi2 the chi2 of the best minimum more
than 1000 km/s away minus the best (NaN where it did not run)."""


def _columns(rows: dict) -> dict[str, Any]:
    """Column name -> dtype of a catalogue chunk (without id and z_pdf), in catalogue order."""
    return {**CATALOGUE_DTYPES, **{k: dt for k, dt in {**REFINE_DTYPES, **SCAN_DTYPES}.items() if k in rows}}


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
            except OSError as exc:
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

    path: output (format from the extension); zbin_centres: (K,) written with ``z_pdf``;
    meta: provenance (version, model) written into headers / metadata; overwrite: False refuses
    a ``path`` that exists once the lock is held (another run may just have finished it).
    The lock on ``path`` (:class:`OutputLock`) is taken on construction and held until
    ``close()`` or ``abort()``. UserError: another run writes ``path``, or a write failed
    (full disk, read-only folder; the temporary file is removed).
    """

    def __init__(self, path: str | Path, zbin_centres: np.ndarray | None = None, meta: dict | None = None,
                 overwrite: bool = True):
        self.path = Path(path)
        self.format = catalogue_format(path)
        self.centres = zbin_centres
        self.meta = meta or {}
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
        self.n_rows += len(rows["id"])

    def close(self) -> None:
        try:
            if self._impl is None:  # no rows: an empty catalogue with the right columns
                empty = {"id": np.zeros(0, np.int64), **{k: np.zeros(0, dt) for k, dt in CATALOGUE_DTYPES.items()}}
                self._open(empty, None)
            self._impl.close()
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
    """BINTABLE 'CATALOG' streamed to disk: header (NAXIS2 patched at the end), raw rows, padding."""

    def __init__(self, tmp: Path, first: dict, centres: np.ndarray | None, meta: dict):
        from astropy.io import fits
        self.fits = fits
        ids = np.asarray(first["id"])
        self.id_width = None if ids.dtype.kind in "iu" else max(64, max((len(str(i)) for i in ids), default=1))
        fields = [("id", ">i8" if self.id_width is None else f"S{self.id_width}")]
        self.columns = _columns(first)
        fields += [(k, np.dtype(dt).newbyteorder(">").str) for k, dt in self.columns.items()]
        self.pdf = "z_pdf" in first
        if self.pdf:
            fields.append(("z_pdf", ">f4", (first["z_pdf"].shape[1],)))
        self.dtype = np.dtype(fields)
        hdu = fits.BinTableHDU.from_columns(np.zeros(0, dtype=self.dtype), name="CATALOG")
        self.header = hdu.header
        primary = fits.PrimaryHDU()
        primary.header["MTOPVER"] = (__version__, "mtopnet version")
        for key, value in meta.items():
            primary.header[key[:8].upper()] = str(value)[:68]
        self.centres = centres
        self.fh = open(tmp, "wb")  # noqa: SIM115 - the sink streams rows into it until close()
        self.fh.write(primary.header.tostring().encode("ascii"))
        self.header_at = self.fh.tell()
        self.header_bytes = self.header.tostring().encode("ascii")
        self.fh.write(self.header_bytes)
        self.n = 0

    def write(self, rows: dict) -> None:
        n = len(rows["id"])
        rec = np.zeros(n, dtype=self.dtype)
        ids = _id_array(rows["id"], self.id_width)
        if self.id_width is not None and ids.dtype.itemsize > self.id_width:
            raise UserError(f"id longer than {self.id_width} characters cannot be written to FITS; use .parquet")
        rec["id"] = ids
        for k in self.columns:
            rec[k] = rows[k]
        if self.pdf:
            rec["z_pdf"] = rows["z_pdf"]
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
        if self.pdf and self.centres is not None:
            data = np.asarray(self.centres, dtype=">f8")
            zb = self.fits.ImageHDU(data, name="ZBINS")
            zb.header["COMMENT"] = "redshift bin centres of the z_pdf column"
            self.fh.write(zb.header.tostring().encode("ascii"))
            self.fh.write(data.tobytes() + b"\0" * ((-data.nbytes) % 2880))
        self.fh.flush()


def _arrow_fields(pa, first: dict) -> tuple[list, dict, int]:
    """Arrow fields of the id and scalar columns, the scalar columns' dtypes, PDF bin count."""
    ids = np.asarray(first["id"])
    fields = [pa.field("id", pa.int64() if ids.dtype.kind in "iu" else pa.string())]
    columns = _columns(first)
    fields += [pa.field(k, pa.from_numpy_dtype(np.dtype(dt))) for k, dt in columns.items()]
    return fields, columns, (first["z_pdf"].shape[1] if "z_pdf" in first else 0)


def _arrow_arrays(pa, rows: dict, columns: dict) -> list:
    """Arrow arrays of the id and scalar columns of a chunk of catalogue rows."""
    ids = np.asarray(rows["id"])
    cols = [pa.array(ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str))]
    return cols + [pa.array(np.asarray(rows[k])) for k in columns]


class _ParquetSink:
    def __init__(self, tmp: Path, first: dict, centres: np.ndarray | None, meta: dict):
        import pyarrow as pa
        import pyarrow.parquet as pq
        self.pa = pa
        fields, self.columns, self.nbins = _arrow_fields(pa, first)
        if self.nbins:
            fields.append(pa.field("z_pdf", pa.list_(pa.float32(), self.nbins)))
        md = {"mtopnet_version": __version__, **{k: str(v) for k, v in meta.items()}}
        if self.nbins and centres is not None:
            md["z_bin_centres"] = json.dumps([float(c) for c in centres])
        self.schema = pa.schema(fields, metadata={k.encode(): v.encode() for k, v in md.items()})
        self.writer = pq.ParquetWriter(str(tmp), self.schema)

    def write(self, rows: dict) -> None:
        pa = self.pa
        cols = _arrow_arrays(pa, rows, self.columns)
        if self.nbins:
            flat = pa.array(np.ascontiguousarray(rows["z_pdf"], dtype=np.float32).ravel())
            cols.append(pa.FixedSizeListArray.from_arrays(flat, self.nbins))
        self.writer.write_table(pa.Table.from_arrays(cols, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


class _CsvSink:
    def __init__(self, tmp: Path, first: dict, centres: np.ndarray | None, meta: dict):
        import pyarrow as pa
        import pyarrow.csv as pcsv
        self.pa = pa
        fields, self.columns, self.nbins = _arrow_fields(pa, first)
        if self.nbins:
            centres = centres if centres is not None else np.arange(self.nbins, dtype=float)
            fields += [pa.field(f"pdf_z{c:.6f}", pa.float32()) for c in centres]
        self.schema = pa.schema(fields)
        self.writer = pcsv.CSVWriter(str(tmp), self.schema)

    def write(self, rows: dict) -> None:
        pa = self.pa
        cols = _arrow_arrays(pa, rows, self.columns)
        if self.nbins:
            cols += [pa.array(np.ascontiguousarray(rows["z_pdf"][:, j])) for j in range(self.nbins)]
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
    """A catalogue written by ``mtopnet predict`` (FITS, Parquet or CSV) as column arrays."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    fmt = catalogue_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq
            table = pq.read_table(path)
            out = {}
            for name in table.column_names:
                col = table.column(name)
                out[name] = (np.asarray(col.combine_chunks().flatten()).reshape(len(col), -1)
                             if name == "z_pdf" else col.to_numpy())
            return out
        from astropy.table import Table
        table = Table.read(path, format="fits" if fmt == "fits" else "ascii.csv")
        out = {name: np.asarray(table[name]) for name in table.colnames if not name.startswith("pdf_z")}
        pdf_cols = [n for n in table.colnames if n.startswith("pdf_z")]
        if pdf_cols:
            out["z_pdf"] = np.stack([np.asarray(table[n]) for n in pdf_cols], axis=1)
        if "id" in out and out["id"].dtype.kind == "S":
            out["id"] = out["id"].astype(str)
        return out
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: cannot read the catalogue ({str(exc).splitlines()[0]})") from None


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
            names = fh.readline().strip().split(",")
        centres = [float(n.strip('"')[len("pdf_z"):]) for n in names if n.strip('"').startswith("pdf_z")]
        return np.asarray(centres) if centres else None
    except (OSError, ValueError, KeyError):
        return None


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


__all__ = ["ZWarn", "MIN_VALID_FRACTION", "CATALOGUE_COLUMNS", "CATALOGUE_DTYPES", "REFINE_COLUMNS", "REFINE_DTYPES",
           "SCAN_COLUMNS", "SCAN_DTYPES",
           "catalogue_format", "CatalogueWriter", "OutputLock", "temp_name", "write_catalogue", "read_catalogue",
           "read_zbin_centres", "read_truth", "match_ids"]
