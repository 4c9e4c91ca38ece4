"""The generic FITS spectrum format: one object per file, one binary table per arm.

Layout::

    PRIMARY  header: OBJID (optional; else the file stem is the id),
                     AIRORVAC = 'vac' | 'air' (optional, default 'vac'),
                     NOISEEST = T when the noise was estimated (written by mtopnet)
    <ARM>    BINTABLE, EXTNAME = arm name; columns
               WAVELENGTH  Angstrom (TUNIT may give another length unit)
               FLUX        1e-17 erg/s/cm2/A (TUNIT may give another flux unit)
               IVAR or ERROR (optional: without them the noise is estimated)
               MASK        optional integer: package bits 1|2|4, any other bit -> bad

:func:`write_fits` writes this format from one row of a SpectraBatch (float64 wavelengths,
float32 flux and ivar, uint8 mask), so a write-then-read round trip is exact.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import __version__
from ..store import SpectraBatch, check_writable
from ._core import RawArm, build_block, fail, flux_factor, parse_unit, wave_to_angstrom
from ._fits import column, open_fits, read_data, table_columns

FLUX_TUNIT = "1e-17 erg/(s cm2 Angstrom)"
IVAR_TUNIT = "(1e-17 erg/(s cm2 Angstrom))**-2"


def arm_tables(hdul) -> list[int]:
    """Indices of extension HDUs that are binary tables with WAVELENGTH and FLUX columns."""
    found = []
    for index in range(1, len(hdul)):
        names = table_columns(hdul, index)
        if "WAVELENGTH" in names and "FLUX" in names:
            found.append(index)
    return found


def read_generic_fits(path: str) -> Iterator[SpectraBatch]:
    """One SpectraBatch with one row from a generic FITS spectrum."""
    with open_fits(path) as hdul:
        header = hdul[0].header
        tables = arm_tables(hdul)
        if not tables:
            listing = ", ".join(f"{h.name or i}({type(h).__name__})" for i, h in enumerate(hdul))
            raise fail(path, f"no BINTABLE HDU with WAVELENGTH and FLUX columns (HDUs: {listing})")
        airorvac = str(header.get("AIRORVAC", "vac")).strip().lower()
        if airorvac not in ("air", "vac", "vacuum"):
            raise fail(path, f"AIRORVAC = {airorvac!r}: expected 'air' or 'vac'")
        arms: dict[str, RawArm] = {}
        for index in tables:
            hdu = hdul[index]
            name = str(hdu.name).strip() or f"ARM{index}"
            if name in arms:
                raise fail(path, f"two HDUs named {name}")
            names = table_columns(hdul, index)
            data = read_data(hdul, index, path)
            units = {str(c.name).upper(): c.unit for c in hdu.columns}
            wave = column(data, names, "WAVELENGTH", path, name).astype(np.float64)
            flux = column(data, names, "FLUX", path, name).astype(np.float64)
            if wave.ndim != 1 or flux.ndim != 1:
                # Array-valued cells: one row holding the whole spectrum.
                if wave.ndim == 2 and flux.ndim == 2 and len(wave) == 1:
                    wave, flux = wave[0], flux[0]
                else:
                    raise fail(path, f"HDU {name}: WAVELENGTH/FLUX have shapes {wave.shape}/{flux.shape}")
            wave = wave_to_angstrom(wave, parse_unit(units.get("WAVELENGTH"), path, f"{name}.WAVELENGTH"), path)
            factor = flux_factor(parse_unit(units.get("FLUX"), path, f"{name}.FLUX"), wave, path) \
                if flux.size == wave.size else 1.0
            noise, kind = None, "ivar"
            if "IVAR" in names:
                noise = _cell(column(data, names, "IVAR", path, name)) / np.asarray(factor) ** 2
            elif "ERROR" in names:
                noise, kind = _cell(column(data, names, "ERROR", path, name)) * factor, "error"
            mask = _cell(column(data, names, "MASK", path, name)) if "MASK" in names else None
            arms[name] = RawArm(wave=wave, flux=(flux * factor)[None, :],
                                noise=None if noise is None else noise[None, :], noise_kind=kind,
                                mask=None if mask is None else mask[None, :])
        object_id = header.get("OBJID")
        if object_id is None or str(object_id).strip() == "":
            object_id = Path(path).name.split(".")[0]
        flag = np.array([bool(header.get("NOISEEST", False))])
        yield build_block(path, [str(object_id).strip()], arms, air=airorvac == "air", noise_estimated=flag)


def _cell(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return values[0] if values.ndim == 2 and len(values) == 1 else values


def write_fits(path: str | Path, batch: SpectraBatch, row: int = 0, overwrite: bool = False) -> Path:
    """Write row ``row`` of ``batch`` as a generic FITS spectrum (vacuum, IVAR, MASK).

    Written atomically (``path.tmp`` then rename). Returns the path.
    """
    from astropy.io import fits

    path = check_writable(path, overwrite)
    batch.validate()
    if not 0 <= row < len(batch):
        raise IndexError(f"row {row} outside a batch of {len(batch)}")
    primary = fits.PrimaryHDU()
    primary.header["OBJID"] = (str(batch.ids[row]), "object identifier")
    primary.header["AIRORVAC"] = ("vac", "wavelengths are in vacuum")
    noise_flag = batch.labels.get("noise_estimated")
    primary.header["NOISEEST"] = (bool(noise_flag[row]) if noise_flag is not None else False,
                                  "noise estimated from the spectrum")
    primary.header["CREATOR"] = (f"mtopnet {__version__}", "software that wrote this file")
    hdus = [primary]
    for name, arm in batch.arms.items():
        cols = [
            fits.Column(name="WAVELENGTH", format="D", unit="Angstrom", array=np.asarray(arm["wave"], np.float64)),
            fits.Column(name="FLUX", format="E", unit=FLUX_TUNIT, array=np.asarray(arm["flux"][row], np.float32)),
            fits.Column(name="IVAR", format="E", unit=IVAR_TUNIT, array=np.asarray(arm["ivar"][row], np.float32)),
            fits.Column(name="MASK", format="B", array=np.asarray(arm["mask"][row], np.uint8)),
        ]
        table = fits.BinTableHDU.from_columns(cols, name=name)
        hdus.append(table)
    tmp = path.with_name(path.name + ".tmp")
    fits.HDUList(hdus).writeto(tmp, overwrite=True)
    os.replace(tmp, path)
    return path
