"""Night-sky emission and atmospheric transmission.

``skycalc-paranal``: the ESO SkyCalc sky model (Noll et al. 2012, A&A 543, A92; Jones et al.
2013, A&A 560, A91) for Cerro Paranal, as tabulated by the MOONS consortium in the ``moons1d``
package (``models/Skymodel/SkyTemplate_ESO_a<airmass>.fits``): 6000-18000 A in 0.1 A steps,
vacuum wavelengths, airmass 1.0 to 2.0 in steps of 0.2. Between tabulated airmasses the
emission and the transmission are interpolated linearly.

``sdss-apo``: an optical-to-near-infrared sky for the Apache Point / Kitt Peak sites,
3500-18000 A, built from files shipped in ``mtopnet/data/sky`` (provenance in their headers,
in docs/instruments.md, and ``scripts/make_sky_sdss_apo.py`` regenerates them):

* emission below 6000 A: the SDSS pipeline's sky spectrum (median of three SDSS fibres,
  ``sdss-apo-sky.txt``: zenith surface brightness at the telescope, at SDSS resolution
  R ~ 2000), held at its blue-end median (first 50 pixels) from 3790 A down to 3500 A and
  scaled proportionally to airmass;
* emission above 6000 A: the SkyCalc Paranal sky at the airmass, times one constant that
  makes its 6200-9100 A integral equal to the SDSS sky's (APO is brighter than Paranal);
  SkyCalc gives the line shapes at full resolution beyond the SDSS spectra's 9200 A;
* transmission below 6000 A: the KPNO mean extinction curve (``kpno-extinction.txt``,
  IRAF's ``kpnoextinct.dat``), ``10 ** (-0.4 k(lambda) X)``; above 6000 A SkyCalc's, which
  resolves the O2 and H2O bands;
* between 6000 and 6200 A the two halves are cross-faded linearly.

Like ``skycalc-paranal`` it needs the ``moons1d`` package's SkyCalc files (``make install``).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..config import SKY_MODELS, ConfigError

SKYCALC_AIRMASSES = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)
SDSS_APO_JOIN = (6000.0, 6200.0)
"""sdss-apo: below the first wavelength the SDSS/KPNO half, above the second SkyCalc (A)."""
SDSS_APO_BLUE_LIMIT = 3500.0
"""sdss-apo: the SDSS sky's blue-end level is held down to this wavelength (A)."""
SDSS_APO_SCALE_RANGE = (6200.0, 9100.0)
"""sdss-apo: SkyCalc is scaled to the SDSS sky's integral over this range (A)."""
H_PLANCK_C = 1.98644586e-8  # erg A


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


def sky_data_path(name: str) -> Path:
    """Path of a file in the package's ``data/sky`` folder."""
    return Path(str(resources.files("mtopnet") / "data" / "sky" / name))


@lru_cache(maxsize=4)
def read_sky_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(wave, value) columns of a two-column text table in ``data/sky`` (``#`` comments)."""
    path = sky_data_path(name)
    try:
        table = np.loadtxt(path, comments="#", ndmin=2)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"sky data file {path}: cannot read ({exc})") from None
    return table[:, 0].copy(), table[:, 1].copy()


def kpno_transmission(wave: np.ndarray, airmass: float) -> np.ndarray:
    """Atmospheric transmission from the KPNO mean extinction curve: 10**(-0.4 k X)."""
    ext_wave, k = read_sky_table("kpno-extinction.txt")
    return 10.0 ** (-0.4 * np.interp(wave, ext_wave, k) * airmass)


def _sdss_zenith_photons() -> tuple[np.ndarray, np.ndarray]:
    """SDSS zenith sky extended to SDSS_APO_BLUE_LIMIT: wave (A), photons/s/cm2/A/arcsec2."""
    wave, sb = read_sky_table("sdss-apo-sky.txt")
    step = np.log10(wave[1] / wave[0])
    n_ext = int(np.ceil(np.log10(wave[0] / SDSS_APO_BLUE_LIMIT) / step))
    ext_wave = wave[0] * 10.0 ** (-step * np.arange(n_ext, 0, -1))
    wave = np.concatenate([ext_wave, wave])
    sb = np.concatenate([np.full(n_ext, np.median(sb[:50])), sb])
    return wave, sb * 1e-17 * wave / H_PLANCK_C


@lru_cache(maxsize=1)
def sdss_apo_skycalc_scale() -> float:
    """Factor that brings SkyCalc's zenith emission to the SDSS sky over SDSS_APO_SCALE_RANGE."""
    sdss_wave, sdss = _sdss_zenith_photons()
    sc_wave, sc, _ = _read_skycalc(1.0)
    lo, hi = SDSS_APO_SCALE_RANGE
    a = (sdss_wave >= lo) & (sdss_wave <= hi)
    b = (sc_wave >= lo) & (sc_wave <= hi)
    return _trapezoid(sdss[a], sdss_wave[a]) / _trapezoid(sc[b], sc_wave[b])


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def _sdss_apo(airmass: float) -> SkySpectrum:
    sc = _skycalc(airmass)
    sdss_wave, sdss = _sdss_zenith_photons()
    join_lo, join_hi = SDSS_APO_JOIN
    blue = sdss_wave < join_lo
    blue_wave = sdss_wave[blue]
    red_wave = sc.wave[sc.wave >= join_lo]
    fade = np.clip((red_wave - join_lo) / (join_hi - join_lo), 0.0, 1.0)
    red_sc = sc.wave >= join_lo
    red_em = (fade * sdss_apo_skycalc_scale() * sc.emission[red_sc]
              + (1 - fade) * np.interp(red_wave, sdss_wave, sdss) * airmass)
    red_tr = fade * sc.transmission[red_sc] + (1 - fade) * kpno_transmission(red_wave, airmass)
    wave = np.concatenate([blue_wave, red_wave])
    emission = np.concatenate([sdss[blue] * airmass, red_em])
    transmission = np.concatenate([kpno_transmission(blue_wave, airmass), red_tr])
    return SkySpectrum(wave, emission, transmission, airmass)


def _skycalc(airmass: float) -> SkySpectrum:
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


def load_sky(model: str, airmass: float) -> SkySpectrum | None:
    """Sky emission and transmission for ``model`` at ``airmass`` (None for model 'none')."""
    if model == "none":
        return None
    if model == "skycalc-paranal":
        return _skycalc(airmass)
    if model == "sdss-apo":
        return _sdss_apo(airmass)
    raise ConfigError(f"sky_model: unknown sky model {model!r} (known: {', '.join(SKY_MODELS)})")
