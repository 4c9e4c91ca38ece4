"""run a baseline redshift tool (Redrock) on a spectrum store, for comparison

``mtopnet baseline redrock STORE.h5 --out CATALOG.fits|.parquet|.csv`` runs DESI's Redrock
(Bailey et al., https://github.com/desihub/redrock) on every object of a store, with:

* the project's own galaxy templates (:mod:`mtopnet.baselines.make_templates`, shipped in
  ``mtopnet/data/templates``), a 10-vector PCA basis of the simulator's population;
* each arm as one Redrock ``Spectrum`` (band = arm name): flux and ivar as stored
  (1e-17 erg/s/cm2/A), ivar set to 0 where the mask has any bit set, and a band-diagonal
  resolution matrix holding the arm's Gaussian LSF (``Arm.lsf_sigma`` A divided by the
  local pixel width, +-5 sigma, rows normalised to 1);
* a redshift scan over 0.6 <= z <= 3.0 at Redrock's galaxy step (3e-4 in log10(1 + z);
  ``--z-step 1e-4`` samples MOONS's narrow lines better, at 3x the cost), refined around the
  three best minima (Redrock's ``zfind``), on ``--ncpu`` processes with one BLAS thread each.

The catalogue has one row per object, in the store's order, with its ids and Redrock's
``z, zerr, zwarn, deltachi2, chi2, npixels`` (ZWARN bits: ``redrock.zwarning.ZWarningMask``).
The header (FITS) or schema metadata (Parquet) records the Redrock and mtopnet versions, the
template file and its SHA-256, the instrument and the redshift grid. Files are written
under a temporary name and renamed.

Redrock is an optional dependency (``pip install redrock``; see docs/redrock.md).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import UserError
from ..instruments import load_instrument
from ..logs import progress_bar, progress_enabled
from ..store import check_writable, iter_store, store_info
from ..templates import default_template_path
from .make_templates import DLOG10Z, redshift_grid

COMMAND = "baseline"
log = logging.getLogger(__name__)

Z_RANGE = (0.6, 3.0)
LSF_HALF_WIDTH = 5.0
"""The resolution matrix extends to +-LSF_HALF_WIDTH sigma (at least one pixel)."""
CHUNK = 64
"""Objects per Redrock call: bounds the shared-memory copies of the spectra."""
COLUMNS = ("id", "z", "zerr", "zwarn", "deltachi2", "chi2", "npixels")


def _import_redrock():
    """Import Redrock quietly, or raise a one-line :class:`UserError`."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import redrock  # noqa: F401
            import redrock.templates  # noqa: F401
            import redrock.zfind  # noqa: F401
    except ImportError as exc:
        raise UserError(f"redrock is not installed ({exc}); install it with "
                        "`pip install redrock==0.21.0 numba llvmlite fitsio` (see docs/redrock.md)") from None
    return redrock


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def reap_children(before: frozenset = frozenset(), timeout: float = 30.0) -> None:
    """Wait for multiprocessing children not in ``before`` so that their CPU time is counted.

    Redrock starts worker processes without joining them; once joined (here) their usage is
    added to RUSAGE_CHILDREN. Children that existed before (``before``) are left alone.
    """
    import multiprocessing as mp
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        new = [p for p in mp.active_children() if p not in before]
        if not new:
            return
        for p in new:
            p.join(timeout=0.05)


def single_thread_blas():
    """Context limiting BLAS to one thread per process (as DESI runs Redrock, one per rank).

    Redrock's scan is many small matrix products; a multi-threaded BLAS spends ~10x more
    CPU on them (measured: 14 vs 1.1 CPU s per MOONS spectrum). Forked workers inherit the
    limit. threadpoolctl comes with the ``redrock`` extra (and with scikit-learn).
    """
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1, user_api="blas")


def resolution_matrix(wave: np.ndarray, lsf_sigma: float | np.ndarray,
                      half_width: float = LSF_HALF_WIDTH):
    """Band-diagonal resolution matrix of a Gaussian LSF on pixels centred at ``wave``.

    wave: (L,) A, increasing; lsf_sigma: scalar or (L,) Gaussian sigma in A. The sigma in
    pixels is ``lsf_sigma / (local pixel width)``; each row holds the Gaussian sampled at
    integer pixel offsets and is normalised to 1 (also at the edges, where part of the
    kernel falls off the array). Returns a ``scipy.sparse.dia_matrix`` (L, L): model pixels
    are ``R @ t`` with ``t`` the template averaged over each pixel (Redrock's trapz_rebin).
    """
    import scipy.sparse
    wave = np.asarray(wave, dtype=np.float64)
    n = len(wave)
    step = np.gradient(wave)
    sig_pix = np.broadcast_to(np.asarray(lsf_sigma, dtype=np.float64), wave.shape) / step  # (L,)
    half = max(1, int(np.ceil(half_width * sig_pix.max())))
    offsets = np.arange(-half, half + 1)
    rows = np.arange(n)
    # kernel of row i at column i + k, with the row's own sigma
    kern = np.exp(-0.5 * (offsets[None, :] / sig_pix[:, None]) ** 2)  # (L, K)
    cols = rows[:, None] + offsets[None, :]
    kern = np.where((cols >= 0) & (cols < n), kern, 0.0)
    kern /= kern.sum(axis=1, keepdims=True)
    # dia layout (scipy): data[d, j] = R[j - off_d, j]; here off_d = k (column j = row + k)
    data = np.zeros((len(offsets), n))
    for d, k in enumerate(offsets):
        j = rows + k
        ok = (j >= 0) & (j < n)
        data[d, j[ok]] = kern[rows[ok], d]
    return scipy.sparse.dia_matrix((data, offsets), shape=(n, n))


def load_template(path: str | Path | None = None, z_range: tuple[float, float] = Z_RANGE,
                  dlog10z: float | None = None):
    """A Redrock ``Template`` from a template file (default: the shipped one).

    Its redshift grid is replaced by ``z_range`` at step ``dlog10z`` in log10(1 + z)
    (default: the file's own step).
    """
    _import_redrock()
    from redrock.templates import Template

    path = Path(path) if path is not None else default_template_path()
    if not path.is_file():
        raise UserError(f"{path}: no such template file (build it with "
                        "`mtopnet make-templates --out DIR`)")
    if not z_range[0] < z_range[1]:
        raise UserError(f"--z-range: need LO < HI, got {z_range[0]} {z_range[1]}")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            tx = Template(str(path))
        except (KeyError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a Redrock template file ({exc})") from None
    if dlog10z is None:
        zz = np.asarray(tx.redshifts, dtype=np.float64)
        dlog10z = float(np.median(np.diff(np.log10(1 + zz)))) if len(zz) > 1 else DLOG10Z
    tx._redshifts = redshift_grid(z_range, dlog10z)
    return tx


def _check_coverage(template, dwave: dict[str, np.ndarray]) -> None:
    from redrock.rebin import centers2edges
    zz = template.redshifts
    lo = min(centers2edges(w)[0] for w in dwave.values())
    hi = max(centers2edges(w)[-1] for w in dwave.values())
    if template.minwave * (1 + zz.max()) > lo or template.maxwave * (1 + zz.min()) < hi:
        zmax = lo / template.minwave - 1
        zmin = hi / template.maxwave - 1
        raise UserError(f"--z-range {zz.min():.3f}-{zz.max():.3f}: the templates "
                        f"({template.minwave:.0f}-{template.maxwave:.0f} A rest) cover the data "
                        f"({lo:.0f}-{hi:.0f} A) only for {zmin:.3f} <= z <= {zmax:.3f}")


@dataclass
class RedrockCatalogue:
    """Redrock's best fit per object (all (N,) arrays, in input order) and provenance."""

    ids: np.ndarray
    z: np.ndarray
    zerr: np.ndarray
    zwarn: np.ndarray
    deltachi2: np.ndarray
    chi2: np.ndarray
    npixels: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def columns(self) -> dict[str, np.ndarray]:
        return {c: getattr(self, "ids" if c == "id" else c) for c in COLUMNS}

    @staticmethod
    def empty() -> "RedrockCatalogue":
        f, i = np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
        return RedrockCatalogue(ids=i, z=f, zerr=f, zwarn=i, deltachi2=f, chi2=f, npixels=i)

    @staticmethod
    def concatenate(parts: list["RedrockCatalogue"]) -> "RedrockCatalogue":
        cols = {c: np.concatenate([getattr(p, c) for p in parts]) for c in
                ("ids", "z", "zerr", "zwarn", "deltachi2", "chi2", "npixels")}
        return RedrockCatalogue(**cols, meta=dict(parts[0].meta) if parts else {})


class RedrockRunner:
    """Redrock set up once for a set of arms (templates rebinned once), then run on batches.

    arms: arm name -> (wave (L,) A, lsf_sigma scalar or (L,) A). ncpu: worker processes.
    """

    def __init__(self, arms: dict[str, tuple[np.ndarray, float | np.ndarray]],
                 template_path: str | Path | None = None, z_range: tuple[float, float] = Z_RANGE,
                 ncpu: int = 2, verbose: bool = False, z_step: float | None = None):
        _import_redrock()
        from redrock.templates import DistTemplate
        if ncpu < 1:
            raise UserError(f"--ncpu: must be >= 1, got {ncpu}")
        self.ncpu = ncpu
        self.verbose = verbose
        self._meta: dict | None = None
        if z_step is not None and not 0 < z_step < 0.05:
            raise UserError(f"--z-step: must be within (0, 0.05) in log10(1 + z), got {z_step}")
        self.template = load_template(template_path, z_range, z_step)
        self.template_path = Path(self.template.filename)
        self.arms = {name: (np.asarray(w, dtype=np.float64), s) for name, (w, s) in arms.items()}
        self.resolution = {name: resolution_matrix(w, s) for name, (w, s) in self.arms.items()}
        self.dwave = {name: w for name, (w, _) in self.arms.items()}
        _check_coverage(self.template, self.dwave)
        with self._quiet():
            self.dtemplates = [DistTemplate(self.template, self.dwave, mp_procs=ncpu)]

    def _quiet(self):
        return contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())

    @property
    def meta(self) -> dict:
        """Provenance for the catalogue header: versions, template file and hash, scan grid."""
        if self._meta is None:
            import redrock
            zz = self.template.redshifts
            self._meta = {
                "RRVER": redrock.__version__, "MTOPNET": __version__,
                "TEMNAM00": self.template.full_type, "TEMVER00": self.template.version,
                "TEMFIL00": self.template_path.name,
                "TEMSHA00": hashlib.sha256(self.template_path.read_bytes()).hexdigest(),
                "ZMIN": float(zz.min()), "ZMAX": float(zz.max()), "NZSCAN": int(len(zz)),
                "ZSTEP": float(np.round(np.median(np.diff(np.log10(1 + zz))), 8)),
                "ARMS": ",".join(self.arms), "NCPU": self.ncpu,
            }
        return dict(self._meta)

    def targets(self, batch) -> list:
        """Redrock ``Target`` objects (targetid = row index) for a :class:`SpectraBatch`."""
        from redrock.targets import Spectrum, Target
        missing = [a for a in self.arms if a not in batch.arms]
        if missing:
            raise UserError(f"input has no arm {missing[0]!r} (it has {', '.join(batch.arms)})")
        out = []
        for i in range(len(batch)):
            spectra = []
            for name, (wave, _) in self.arms.items():
                arm = batch.arms[name]
                if len(arm["wave"]) != len(wave) or not np.allclose(arm["wave"], wave, rtol=0, atol=1e-6):
                    raise UserError(f"arm {name}: the input's wavelengths differ from the instrument's grid")
                flux = np.nan_to_num(np.asarray(arm["flux"][i], dtype=np.float64))
                ivar = np.asarray(arm["ivar"][i], dtype=np.float64).copy()
                ivar[(arm["mask"][i] != 0) | ~np.isfinite(ivar) | (ivar < 0)] = 0.0
                spectra.append(Spectrum(wave, flux, ivar, self.resolution[name], None, band=name))
            out.append(Target(i, spectra))
        return out

    def run(self, batch) -> RedrockCatalogue:
        """Redrock's best fit for every object of ``batch`` (a :class:`SpectraBatch`)."""
        import multiprocessing as mp

        from redrock.targets import DistTargetsCopy
        from redrock.zfind import zfind
        parts = []
        for start in range(0, len(batch), CHUNK):
            sub = batch.subset(slice(start, start + CHUNK))
            targets = DistTargetsCopy(self.targets(sub))
            before = frozenset(mp.active_children())
            with self._quiet(), single_thread_blas():
                _, zfit = zfind(targets, self.dtemplates, mp_procs=min(self.ncpu, len(sub)), nminima=3)
            reap_children(before)
            best = zfit[zfit["znum"] == 0]
            order = np.argsort(np.asarray(best["targetid"]))
            best = best[order]
            if not np.array_equal(np.asarray(best["targetid"]), np.arange(len(sub))):
                raise RuntimeError("redrock returned an unexpected set of targets")
            parts.append(RedrockCatalogue(
                ids=np.asarray(sub.ids), z=np.asarray(best["z"], dtype=np.float64),
                zerr=np.asarray(best["zerr"], dtype=np.float64),
                zwarn=np.asarray(best["zwarn"], dtype=np.int64),
                deltachi2=np.asarray(best["deltachi2"], dtype=np.float64),
                chi2=np.asarray(best["chi2"], dtype=np.float64),
                npixels=np.asarray(best["npixels"], dtype=np.int64), meta=self.meta))
        if not parts:
            out = RedrockCatalogue.empty()
            out.meta = self.meta
            return out
        return RedrockCatalogue.concatenate(parts)


def instrument_arms(instrument: str, arm_names: list[str] | None = None) -> dict:
    """arm name -> (pixel centres, LSF sigma in A) of a shipped or YAML instrument."""
    inst = load_instrument(instrument)
    names = arm_names or inst.arm_names
    out = {}
    for name in names:
        try:
            arm = inst.arm(name)
        except KeyError:
            raise UserError(f"instrument {instrument} has no arm {name!r} "
                            f"(arms: {', '.join(inst.arm_names)})") from None
        out[name] = (arm.wave, arm.lsf_sigma)
    return out


def run_store(inputs: list[str | Path], out: str | Path | None = None, instrument: str | None = None,
              template_path: str | Path | None = None, z_range: tuple[float, float] = Z_RANGE,
              ncpu: int = 2, overwrite: bool = False, verbose: bool = False,
              progress: bool = False, z_step: float | None = None) -> RedrockCatalogue:
    """Run Redrock on every object of the stores ``inputs`` and write ``out`` (if given)."""
    import json

    if out is not None:
        out = check_writable(out, overwrite)
        _format_of(out)
    import h5py
    for p in inputs:
        if Path(p).is_file() and not h5py.is_hdf5(p):
            raise UserError(f"{p}: not an HDF5 spectrum store; the Redrock baseline reads stores (`mtopnet simulate`, "
                            "or benchmarks/cross_sim.py --store-out for moons1d files); for DESI or SDSS files run "
                            "Redrock itself (rrdesi)")
    infos = [store_info(p) for p in inputs]
    if instrument is None:
        names = {str(i["attrs"].get("instrument", "moons-lr")) for i in infos}
        if len(names) > 1:
            raise UserError(f"inputs come from different instruments ({', '.join(sorted(names))}); pass --instrument")
        instrument = names.pop()
    arm_names = list(infos[0]["arms"])
    for p, info in zip(inputs, infos, strict=False):
        if list(info["arms"]) != arm_names:
            raise UserError(f"{p}: arms {list(info['arms'])} differ from {inputs[0]}'s {arm_names}")
    runner = RedrockRunner(instrument_arms(instrument, arm_names), template_path, z_range, ncpu, verbose, z_step)
    parts = []
    with progress_bar(total=sum(i["n"] for i in infos), desc="redrock", unit="spec", progress=progress) as bar:
        for path in inputs:
            for batch in iter_store(path, batch_size=max(CHUNK, 256)):
                parts.append(runner.run(batch))
                bar.update(len(batch))
    cat = RedrockCatalogue.concatenate(parts) if parts else RedrockCatalogue.empty()
    cat.meta = {**runner.meta, "INSTRUME": instrument,
                "INPUTS": json.dumps([str(Path(p).name) for p in inputs])}
    if out is not None:
        write_catalogue(cat, out)
    return cat


def _format_of(path: Path) -> str:
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    fmt = {".fits": "fits", ".fit": "fits", ".fits.gz": "fits", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}.get(suffix.lower())
    if fmt is None:
        raise UserError(f"--out {path}: unknown catalogue format (use .fits, .parquet or .csv)")
    return fmt


def write_catalogue(cat: RedrockCatalogue, path: str | Path) -> Path:
    """Write ``cat`` to FITS (HDU ``REDSHIFTS``), Parquet or CSV by extension, atomically."""
    path = Path(path)
    fmt = _format_of(path)
    cols = cat.columns()
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "fits":
        from astropy.io import fits
        from astropy.table import Table
        table = Table({("TARGETID" if k == "id" else k.upper()): v for k, v in cols.items()})  # Redrock's names
        hdu = fits.BinTableHDU(table, name="REDSHIFTS")
        for key, value in cat.meta.items():
            hdu.header[key[:8].upper()] = value
        primary = fits.PrimaryHDU()
        for key in ("RRVER", "MTOPNET", "TEMFIL00", "TEMSHA00"):
            if key in cat.meta:
                primary.header[key] = cat.meta[key]
        with open(tmp, "wb") as fh:
            fits.HDUList([primary, hdu]).writeto(fh)
    elif fmt == "parquet":
        import json

        import pyarrow as pa
        import pyarrow.parquet as pq
        table = pa.table({k: pa.array(v) for k, v in cols.items()})
        table = table.replace_schema_metadata({b"mtopnet_redrock": json.dumps(cat.meta).encode()})
        pq.write_table(table, tmp)
    else:
        with open(tmp, "w") as fh:
            fh.write(",".join(cols) + "\n")
            for row in zip(*cols.values(), strict=False):
                fh.write(",".join(_csv_value(v) for v in row) + "\n")
    os.replace(tmp, path)
    return path


def _csv_value(v) -> str:
    if isinstance(v, (np.floating, float)):
        return repr(float(v))
    return str(v)


def read_catalogue(path: str | Path) -> dict[str, np.ndarray]:
    """Read a catalogue written by :func:`write_catalogue` -> column name -> (N,) array."""
    path = Path(path)
    fmt = _format_of(path)
    if fmt == "fits":
        from astropy.table import Table
        t = Table.read(path, hdu="REDSHIFTS")
        return {("id" if c == "TARGETID" else c.lower()): np.asarray(t[c]) for c in t.colnames}
    if fmt == "parquet":
        import pyarrow.parquet as pq
        t = pq.read_table(path)
        return {c: t[c].to_numpy() for c in t.column_names}
    data = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    return {c: np.atleast_1d(data[c]) for c in data.dtype.names}


# --- CLI ------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tool", required=True, metavar="TOOL")
    r = sub.add_parser("redrock", help="Redrock with the project's galaxy templates (see docs/redrock.md)")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="spectrum store(s), HDF5")
    r.add_argument("--out", required=True, help="output catalogue: .fits, .parquet or .csv")
    r.add_argument("--templates", default=None, help="Redrock template file (default: the shipped one)")
    r.add_argument("--instrument", default=None,
                   help="instrument whose LSF to use (default: the store's, else moons-lr)")
    r.add_argument("--z-range", type=float, nargs=2, default=Z_RANGE, metavar=("LO", "HI"))
    r.add_argument("--z-step", type=float, default=None,
                   help="scan step in log10(1 + z) (default: the template file's, Redrock's galaxy step 3e-4)")
    r.add_argument("--ncpu", type=int, default=2, help="worker processes (default 2)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run_cli(args: argparse.Namespace) -> int:
    if args.tool != "redrock":  # argparse already restricts the choices
        raise UserError(f"unknown baseline {args.tool!r}")
    c0, t0 = cpu_seconds(), time.monotonic()
    cat = run_store(args.inputs, args.out, args.instrument, args.templates, tuple(args.z_range),
                    args.ncpu, args.overwrite,
                    verbose=log.isEnabledFor(logging.DEBUG),  # --verbose: Redrock's own log too
                    progress=progress_enabled(), z_step=args.z_step)
    cpu = cpu_seconds() - c0
    good = int(np.sum((cat.zwarn == 0) & (cat.deltachi2 > 9)))
    print(f"wrote {len(cat)} redshifts to {args.out} ({good} with ZWARN == 0 and DELTACHI2 > 9; "
          f"{cpu / max(len(cat), 1):.2f} CPU s per spectrum, {time.monotonic() - t0:.0f} s wall)")
    return 0
