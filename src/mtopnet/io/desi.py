"""DESI spectra and coadd files (``coadd-*.fits``, ``spectra-*.fits``).

Read: for each arm prefix ``X`` with HDUs ``X_WAVELENGTH`` (vacuum Angstrom) and ``X_FLUX``
(N, L), also ``X_IVAR`` and ``X_MASK`` when present; ids are ``FIBERMAP['TARGETID']``
(int64), one row per fibermap row. Arms keep DESI's names (``B``, ``R``, ``Z``, or ``BRZ``
for a combined coadd). Flux units come from each ``X_FLUX`` header's BUNIT (DESI's is
``10**-17 erg/(s cm2 Angstrom)``, the package's own unit).

Targets are read ``chunk_rows`` at a time (image sections), so memory does not grow with the
number of targets in the file.

Mask (desispec ``specmask``): BRIGHTSKY (bit 5) -> MASK_SKYLINE; any other bit -> MASK_BAD
(so ``ivar = 0``, as Redrock does with DESI masks).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..constants import MASK_BAD, MASK_SKYLINE
from ..store import SpectraBatch
from ._core import RawArm, build_block, fail, first_line, flux_factor, parse_unit, wave_to_angstrom
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


CHUNK_ROWS = 1024
"""Targets read at a time (memory flat in the number of targets in the file)."""


def _rows(hdul, name: str, start: int, stop: int, path: str) -> np.ndarray:
    """Rows [start, stop) of an image HDU, read from the file without loading the rest
    (``ImageHDU.section``); (stop - start, L) float64 or int array."""
    hdu = hdul[name]
    try:
        if len(hdu.shape) == 1:  # one target stored as a 1-D spectrum
            data = np.asarray(read_data(hdul, name, path))[None, :]
            return data[start:stop]
        return np.asarray(hdu.section[start:stop])
    except (OSError, ValueError, TypeError, IndexError, EOFError) as exc:
        raise fail(path, f"HDU {name!r} is truncated or corrupt ({first_line(exc)})") from None


def read_desi(path: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[SpectraBatch]:
    """SpectraBatch blocks of at most ``chunk_rows`` targets, in file order, covering every
    target of a DESI spectra/coadd file. Only one block's flux/ivar/mask is in memory at a time."""
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
        layout: dict[str, tuple[np.ndarray, Any]] = {}
        for arm in arms:
            wave_hdu = hdul[f"{arm}_WAVELENGTH"]
            wave = np.asarray(read_data(hdul, f"{arm}_WAVELENGTH", path), dtype=np.float64)
            wave = wave_to_angstrom(wave, parse_unit(wave_hdu.header.get("BUNIT"), path, f"{arm}_WAVELENGTH"), path)
            shape = hdul[f"{arm}_FLUX"].shape
            n_rows = shape[0] if len(shape) == 2 else 1
            if n_rows != ids.size:
                raise fail(path, f"arm {arm}: {n_rows} spectra but {ids.size} FIBERMAP rows "
                                 "(mismatched lengths)")
            unit = parse_unit(hdul[f"{arm}_FLUX"].header.get("BUNIT"), path, f"{arm}_FLUX BUNIT")
            factor = flux_factor(unit, wave, path) if shape[-1] == wave.size else 1.0
            layout[arm] = (wave, factor)
        for start in range(0, max(ids.size, 1), max(1, int(chunk_rows))):
            stop = min(start + max(1, int(chunk_rows)), ids.size)
            raw: dict[str, RawArm] = {}
            for arm, (wave, factor) in layout.items():
                flux = _rows(hdul, f"{arm}_FLUX", start, stop, path).astype(np.float64) * factor
                ivar = None
                if f"{arm}_IVAR" in names:
                    ivar = _rows(hdul, f"{arm}_IVAR", start, stop, path).astype(np.float64) / np.asarray(factor) ** 2
                mask = None
                if f"{arm}_MASK" in names:
                    mask = map_specmask(_rows(hdul, f"{arm}_MASK", start, stop, path))
                raw[arm] = RawArm(wave=wave, flux=flux, noise=ivar, noise_kind="ivar", mask=mask)
            yield build_block(path, ids[start:stop], raw, estimate_if_unusable=False)


def read_fibermap(path: str) -> np.ndarray:
    """The FIBERMAP HDU of a DESI file: (N,) structured array, one row per target in the order
    :func:`read_desi` reads them."""
    with open_fits(path) as hdul:
        return np.array(read_data(hdul, "FIBERMAP", path))
