"""Night-sky emission and atmospheric transmission.

``skycalc-paranal``: the ESO SkyCalc sky model (Noll et al. 2012, A&A 543, A92; Jones et al.
2013, A&A 560, A91) for Cerro Paranal, as tabulated by the MOONS consortium in the ``moons1d``
package (``models/Skymodel/SkyTemplate_ESO_a<airmass>.fits``): 6000-18000 A in 0.1 A steps,
vacuum wavelengths, airmass 1.0 to 2.0 in steps of 0.2. Between tabulated airmasses the
emission and the transmission are interpolated linearly.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
import importlib.util
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..config import ConfigError

SKYCALC_AIRMASSES = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


def moons1d_path(relative: str) -> str:
    """Path of a file inside the installed ``moons1d`` package's ``models/`` folder."""
    # Locate the package without importing it: moons1d's own code needs astropy 4.3.
    spec = importlib.util.find_spec("moons1d")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("moons1d is not installed: run `pip install --no-deps moons1d==1.0.3` "
                          "(make install does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / relative
    if not path.is_file():
        raise ConfigError(f"moons1d data file not found: {relative}")
    return str(path)


@dataclass(frozen=True)
class SkySpectrum:
    """Sky on its native grid.

    wave: (L,) vacuum Angstrom; emission: (L,) photons/s/cm2/A/arcsec2;
    transmission: (L,) fraction of light that reaches the telescope.
    """

    wave: np.ndarray
    emission: np.ndarray
    transmission: np.ndarray
    airmass: float


@lru_cache(maxsize=8)
def _read_skycalc(airmass: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = moons1d_path(f"Skymodel/SkyTemplate_ESO_a{airmass:.1f}.fits")
    with fits.open(path) as hdul:
        head = hdul[0].header
        wave = head["CRVAL1"] + head["CDELT1"] * np.arange(head["NAXIS1"])
        if head.get("TUNIT1", "Angstroms") not in ("Angstroms", "A", "AA"):
            raise ConfigError(f"{path}: unexpected wavelength unit {head.get('TUNIT1')}")
        emission = np.asarray(hdul[0].data, dtype=np.float64)
        transmission = np.asarray(hdul[1].data, dtype=np.float64)
    return wave, emission, transmission


def load_sky(model: str, airmass: float) -> SkySpectrum | None:
    """Sky emission and transmission for ``model`` at ``airmass`` (None for model 'none')."""
    if model == "none":
        return None
    if model != "skycalc-paranal":
        raise ConfigError(f"sky_model: unknown sky model {model!r}")
    lo, hi = SKYCALC_AIRMASSES[0], SKYCALC_AIRMASSES[-1]
    if not lo <= airmass <= hi:
        raise ConfigError(f"airmass: the SkyCalc tables cover {lo}-{hi}, got {airmass}")
    grid = np.array(SKYCALC_AIRMASSES)
    i = int(np.clip(np.searchsorted(grid, airmass) - 1, 0, len(grid) - 2))
    frac = (airmass - grid[i]) / (grid[i + 1] - grid[i])
    wave, em0, tr0 = _read_skycalc(float(grid[i]))
    if frac <= 1e-9:
        return SkySpectrum(wave, em0, tr0, airmass)
    _, em1, tr1 = _read_skycalc(float(grid[i + 1]))
    return SkySpectrum(wave, (1 - frac) * em0 + frac * em1, (1 - frac) * tr0 + frac * tr1, airmass)
