"""DESI spectra and coadd files (``coadd-*.fits``, ``spectra-*.fits``).

Read: for each arm prefix ``X`` with HDUs ``X_WAVELENGTH`` (vacuum Angstrom) and ``X_FLUX``
(N, L), also ``X_IVAR`` and ``X_MASK`` when present; ids are ``FIBERMAP['TARGETID']``
(int64), one row per fibermap row. Arms keep DESI's names (``B``, ``R``, ``Z``, or ``BRZ``
for a combined coadd). Flux units come from each ``X_FLUX`` header's BUNIT (DESI's is
``10**-17 erg/(s cm2 Angstrom)``, the package's own unit).

Mask (desispec ``specmask``): BRIGHTSKY (bit 5) -> MASK_SKYLINE; any other bit -> MASK_BAD
(so ``ivar = 0``, as Redrock does with DESI masks).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..constants import MASK_BAD, MASK_SKYLINE
from ..store import SpectraBatch
from ._core import RawArm, build_block, fail, flux_factor, parse_unit, wave_to_angstrom
from ._fits import column, hdu_names, open_fits, read_data, table_columns

SPECMASK_BRIGHTSKY = 1 << 5


def desi_arms(names: list[str]) -> list[str]:
    """Arm prefixes, in file order, that have both X_WAVELENGTH and X_FLUX HDUs."""
    arms = []
    for name in names:
        if name.endswith("_WAVELENGTH"):
            prefix = name[: -len("_WAVELENGTH")]
            if prefix and f"{prefix}_FLUX" in names:
                arms.append(prefix)
    return arms


def map_specmask(mask: np.ndarray) -> np.ndarray:
    """DESI specmask bits -> package bits (see module docstring)."""
    m = np.asarray(mask).astype(np.int64)
    out = np.where((m & ~SPECMASK_BRIGHTSKY) != 0, MASK_BAD, 0).astype(np.uint8)
    out[(m & SPECMASK_BRIGHTSKY) != 0] |= MASK_SKYLINE
    return out


def read_desi(path: str) -> Iterator[SpectraBatch]:
    """One SpectraBatch with every target of a DESI spectra/coadd file."""
    with open_fits(path) as hdul:
        names = hdu_names(hdul)
        arms = desi_arms(names)
        if not arms:
            raise fail(path, f"no <ARM>_WAVELENGTH and <ARM>_FLUX HDUs (HDUs: {', '.join(names)}); "
                             "not a DESI spectra/coadd file")
        if "FIBERMAP" not in names:
            raise fail(path, "no FIBERMAP HDU; cannot tell the targets' TARGETIDs")
        fm_cols = table_columns(hdul, "FIBERMAP")
        ids = column(read_data(hdul, "FIBERMAP", path), fm_cols, "TARGETID", path, "FIBERMAP").astype(np.int64)
        raw: dict[str, RawArm] = {}
        for arm in arms:
            wave_hdu = hdul[f"{arm}_WAVELENGTH"]
            wave = np.asarray(read_data(hdul, f"{arm}_WAVELENGTH", path), dtype=np.float64)
            wave = wave_to_angstrom(wave, parse_unit(wave_hdu.header.get("BUNIT"), path, f"{arm}_WAVELENGTH"), path)
            flux = np.atleast_2d(np.asarray(read_data(hdul, f"{arm}_FLUX", path), dtype=np.float64))
            unit = parse_unit(hdul[f"{arm}_FLUX"].header.get("BUNIT"), path, f"{arm}_FLUX BUNIT")
            factor = flux_factor(unit, wave, path) if flux.shape[-1] == wave.size else 1.0
            flux = flux * factor
            ivar = None
            if f"{arm}_IVAR" in names:
                ivar = np.atleast_2d(np.asarray(read_data(hdul, f"{arm}_IVAR", path), dtype=np.float64))
                ivar = ivar / np.asarray(factor) ** 2
            mask = None
            if f"{arm}_MASK" in names:
                mask = map_specmask(np.atleast_2d(read_data(hdul, f"{arm}_MASK", path)))
            raw[arm] = RawArm(wave=wave, flux=flux, noise=ivar, noise_kind="ivar", mask=mask)
            if flux.shape[0] != ids.size:
                raise fail(path, f"arm {arm}: {flux.shape[0]} spectra but {ids.size} FIBERMAP rows "
                                 "(mismatched lengths)")
        yield build_block(path, ids, raw, estimate_if_unusable=False)
