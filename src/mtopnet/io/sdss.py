"""SDSS / BOSS ``spec-PLATE-MJD-FIBER.fits`` files (the COADD HDU).

Read: ``COADD`` columns ``loglam`` (log10 vacuum Angstrom), ``flux`` (1e-17 erg/s/cm2/A),
``ivar`` and ``and_mask``. One object per file, one arm named ``ALL``. The id is
``PLATE-MJD-FIBER`` from the file name (``spec-0280-51612-0117.fits`` -> ``0280-51612-0117``),
else from the primary header (PLATEID, MJD, FIBERID), else the file stem.

Mask: any ``and_mask`` bit -> MASK_BAD (so ``ivar = 0``); the BRIGHTSKY bit (23 of
SPPIXMASK, sky brighter than the object) also sets MASK_SKYLINE.

Pass-through (:func:`read_specobj`): the file's one-row ``SPECOBJ`` table (SDSS DR8-DR17:
the object's spAll row, with the plug-map columns PLATE, MJD, FIBERID, PLUG_RA, PLUG_DEC,
OBJID, the targeting bits and the SDSS pipeline's own Z, CLASS, ZWARNING) or, in SDSS-V
files, ``SPALL``; copied to FITS catalogues under the same HDU name (docs/catalogue.md).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..constants import MASK_BAD, MASK_SKYLINE
from ..store import SpectraBatch
from ._core import RawArm, build_block, fail, flux_factor, parse_unit
from ._fits import column, hdu_names, open_fits, read_data, scan_tables, table_columns, table_rows

ARM = "ALL"
SPPIXMASK_BRIGHTSKY = 1 << 23
_NAME = re.compile(r"^spec(?:lite)?-(\d+-\d+-\d+)(?:\.fits)?(?:\.gz)?$", re.IGNORECASE)


def sdss_id(path: str, header) -> str:
    """'0280-51612-0117' from the file name, else from the header, else the file stem."""
    match = _NAME.match(Path(path).name)
    if match:
        return match.group(1)
    try:
        return f"{int(header['PLATEID']):04d}-{int(header['MJD']):05d}-{int(header['FIBERID']):04d}"
    except (KeyError, ValueError, TypeError):
        return Path(path).name.split(".")[0]


def map_and_mask(and_mask: np.ndarray) -> np.ndarray:
    """SDSS SPPIXMASK and_mask -> package bits (see module docstring)."""
    m = np.asarray(and_mask).astype(np.int64)
    out = np.where(m != 0, MASK_BAD, 0).astype(np.uint8)
    out[(m & SPPIXMASK_BRIGHTSKY) != 0] |= MASK_SKYLINE
    return out


def read_sdss(path: str) -> Iterator[SpectraBatch]:
    """One SpectraBatch with one row, arm ``ALL``, from an SDSS/BOSS spec file."""
    with open_fits(path) as hdul:
        if "COADD" not in hdu_names(hdul):
            raise fail(path, f"no COADD HDU (HDUs: {', '.join(hdu_names(hdul))}); not an SDSS spec file")
        names = table_columns(hdul, "COADD")
        if not names:
            raise fail(path, "HDU COADD is not a binary table; not an SDSS spec file")
        data = read_data(hdul, "COADD", path)
        loglam = column(data, names, "loglam", path, "COADD").astype(np.float64)
        flux = column(data, names, "flux", path, "COADD")
        ivar = column(data, names, "ivar", path, "COADD") if "IVAR" in names else None
        and_mask = column(data, names, "and_mask", path, "COADD") if "AND_MASK" in names else None
        header = hdul[0].header
        loglam = _snap_loglam(loglam, header)
        wave = 10.0 ** loglam
        # SDSS spec files are vacuum (header VACUUM = T); honour an explicit VACUUM = F.
        air = header.get("VACUUM", True) is False
        unit = parse_unit(header.get("BUNIT"), path, "BUNIT") if header.get("BUNIT") else None
        factor = flux_factor(unit, wave, path)
        flux = np.asarray(flux, dtype=np.float64) * factor
        if ivar is not None:
            ivar = np.asarray(ivar, dtype=np.float64) / np.asarray(factor) ** 2
        mask = map_and_mask(and_mask) if and_mask is not None else None
        arm = RawArm(wave=wave, flux=flux[None, :], noise=None if ivar is None else ivar[None, :],
                     noise_kind="ivar", mask=None if mask is None else mask[None, :])
        yield build_block(path, [sdss_id(path, header)], {ARM: arm}, air=air, estimate_if_unusable=False)


PASSTHROUGH_HDUS = ("SPECOBJ", "SPALL")
"""The per-object tables of an SDSS spec file copied to FITS catalogues (one row per file)."""


def read_specobj(path: str) -> dict[str, np.ndarray]:
    """The pass-through tables of an SDSS spec file: HDU name -> (1,) structured array, for
    each of :data:`PASSTHROUGH_HDUS` the file has as a binary table ({} if none)."""
    quick = scan_tables(path, PASSTHROUGH_HDUS)
    if quick is not None:
        return quick
    with open_fits(path) as hdul:
        names = hdu_names(hdul)
        return {name: table_rows(hdul, name, path) for name in PASSTHROUGH_HDUS
                if name in names and str(hdul[name].header.get("XTENSION", "")).strip() == "BINTABLE"}


def _snap_loglam(loglam: np.ndarray, header) -> np.ndarray:
    """Undo float32 rounding of loglam: SDSS pixels sit exactly at COEFF0 + COEFF1 * i."""
    try:
        c0, c1 = float(header["COEFF0"]), float(header["COEFF1"])
    except (KeyError, ValueError, TypeError):
        return loglam
    if not (np.isfinite(c0) and np.isfinite(c1) and c1 > 0) or loglam.size == 0:
        return loglam
    steps = np.round((loglam - c0) / c1)
    snapped = c0 + c1 * steps
    # Only when every pixel agrees with the header's grid to float32 precision.
    if np.all(np.abs(snapped - loglam) < 1e-5):
        return snapped
    return loglam
