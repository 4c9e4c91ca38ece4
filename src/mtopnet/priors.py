"""Redrock priors files from mtopnet's redshift PDFs (``mtopnet predict --priors-out FILE``).

Redrock (``rrdesi --priors FILE``, ``redrock.zfind.zfind(..., priors=FILE)``) reads an HDU
``PRIORS`` with TARGETID, FUNCTION, Z and SIGMA (``redrock.priors.Priors``) and adds, for a
``gaussian`` prior, ((z - Z) / SIGMA)^2 to the chi2 of its coarse redshift scan before it
picks the minima it refines; its fine fits are the data's alone. One row per catalogue row::

    TARGETID  int64    the catalogue's TARGETID (Redrock's ids are integers)
    FUNCTION  str      "gaussian"
    Z         float64  the catalogue's Z
    SIGMA     float64  max(a quarter of the central 95% interval, SIGMA_FLOOR x (1 + Z)):
                       about the PDF's sigma for a single peak, wide enough to hold every
                       peak of a multi-peaked PDF, and never narrower than Redrock's coarse
                       redshift steps, so that the prior picks a minimum without moving it;
                       UNINFORMATIVE_SIGMA (a chi2 penalty below 1e-4 anywhere in z 0-10:
                       no constraint) where mtopnet does not know the redshift: QOP <=
                       UNINFORMATIVE_QOP, a ZWARN bit of UNINFORMATIVE_ZWARN (out of the
                       model's domain, no or too little data), SPECTYPE not GALAXY, or Z not
                       finite (then Z = 0)

The file is written atomically (a temporary name in the same folder, then renamed).
:func:`check_priors_out` refuses a bad ``--priors-out`` before anything is written: a name
that is not FITS, a folder, an existing file without ``--overwrite``, or the same file as the
catalogue or as an input (which the priors would replace).
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .columns import ZWarn
from .config import UserError
from .store import check_writable, remove_partial, write_error

SIGMA_FLOOR = 0.002
"""Smallest prior SIGMA per unit (1 + z): a few of Redrock's coarse steps (~3e-4 in log10(1 + z))."""
FUNCTION = "gaussian"
UNINFORMATIVE_SIGMA = 1000.0
"""SIGMA of a prior that does not constrain Redrock: ((z - Z) / SIGMA)^2 < 1e-4 for |z - Z| < 10."""
UNINFORMATIVE_QOP = 1
"""Objects with QOP at or below this get an uninformative prior (QOP 1: P_DZ01 < 0.5)."""
UNINFORMATIVE_ZWARN = ZWarn.OUT_OF_DOMAIN | ZWarn.NODATA | ZWarn.LITTLE_COVERAGE
"""ZWARN bits that give an uninformative prior: the network's PDF says nothing about such spectra."""


def prior_columns(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TARGETID, Z, SIGMA (n,) of catalogue rows (TARGETID, Z, Z_LO95, Z_HI95; QOP, ZWARN and
    SPECTYPE where present: the module docstring's rule for an uninformative prior). UserError
    for text ids, which Redrock cannot match."""
    ids = np.asarray(rows["TARGETID"])
    if ids.dtype.kind not in "iu":
        raise UserError("--priors-out: Redrock priors need integer ids (TARGETID); these inputs have text ids")
    z = np.asarray(rows["Z"], dtype=np.float64)
    width = 0.25 * (np.asarray(rows["Z_HI95"], dtype=np.float64) - np.asarray(rows["Z_LO95"], dtype=np.float64))
    sigma = np.maximum(np.nan_to_num(width, nan=np.inf), SIGMA_FLOOR * (1 + z))
    unknown = ~np.isfinite(z) | ~np.isfinite(sigma)
    if "QOP" in rows:
        unknown |= np.asarray(rows["QOP"]) <= UNINFORMATIVE_QOP
    if "ZWARN" in rows:
        unknown |= (np.asarray(rows["ZWARN"]).astype(np.int64) & int(UNINFORMATIVE_ZWARN)) != 0
    if "SPECTYPE" in rows:
        unknown |= np.char.strip(np.asarray(rows["SPECTYPE"]).astype(str)) != "GALAXY"
    z = np.where(np.isfinite(z), z, 0.0)
    sigma = np.where(unknown, UNINFORMATIVE_SIGMA, sigma)
    return {"TARGETID": ids.astype(np.int64), "Z": z, "SIGMA": sigma}


def _check_fits_name(path: Path) -> None:
    if not path.name.lower().endswith((".fits", ".fit")):
        raise UserError(f"{path}: a Redrock priors file is FITS; use .fits")


def _same_file(a: str | Path, b: str | Path) -> bool:
    """Whether paths ``a`` and ``b`` name one file (symbolic links resolved; hard links too
    where both exist)."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_priors_out(path: str | Path, out: str | Path, inputs: Iterable[str | Path] = (),
                     overwrite: bool = False) -> Path:
    """Check ``--priors-out`` before anything is written; returns it as a Path.

    UserError (one line): not a .fits/.fit name; the same file as the catalogue ``out`` or as
    one of ``inputs`` (glob patterns expanded); a folder; an existing file without
    ``overwrite``; a folder that cannot be written in (:func:`mtopnet.store.check_writable`).
    """
    path = Path(path)
    _check_fits_name(path)
    if _same_file(path, out):
        raise UserError(f"--priors-out {path}: the same file as --out; name another file for the priors")
    for name in inputs:
        matches = glob.glob(str(name)) if any(ch in str(name) for ch in "*?[") else [name]
        if any(_same_file(path, m) for m in matches):
            raise UserError(f"--priors-out {path}: the same file as the input {name}; name another file")
    return check_writable(path, overwrite)


def write_priors(path: str | Path, columns: list[dict[str, np.ndarray]]) -> int:
    """Write :func:`prior_columns` chunks as a Redrock priors FITS file; returns the row count.
    UserError: the name is not .fits, or the write failed (the temporary file is removed)."""
    from astropy.io import fits
    path = Path(path)
    _check_fits_name(path)
    cols = {k: np.concatenate([c[k] for c in columns]) if columns else np.zeros(0, dt)
            for k, dt in (("TARGETID", np.int64), ("Z", np.float64), ("SIGMA", np.float64))}
    n = len(cols["Z"])
    hdu = fits.BinTableHDU.from_columns([
        fits.Column("TARGETID", "K", array=cols["TARGETID"]),
        fits.Column("FUNCTION", f"{len(FUNCTION)}A", array=np.full(n, FUNCTION)),
        fits.Column("Z", "D", array=cols["Z"]), fits.Column("SIGMA", "D", array=cols["SIGMA"])], name="PRIORS")
    hdu.header["COMMENT"] = "mtopnet redshift priors for Redrock (docs/catalogue.md)"
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    except OSError as exc:
        remove_partial(tmp)
        raise write_error(path, exc) from None
    return n


__all__ = ["SIGMA_FLOOR", "FUNCTION", "UNINFORMATIVE_SIGMA", "UNINFORMATIVE_QOP", "UNINFORMATIVE_ZWARN",
           "prior_columns", "check_priors_out", "write_priors"]
