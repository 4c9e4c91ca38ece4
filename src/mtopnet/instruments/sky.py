"""Night-sky emission and atmospheric transmission.

``skycalc-paranal``: Cerro Paranal, 3000-18000 A, in two halves joined at 6000 A.

* 6000-18000 A: the ESO SkyCalc sky model (Noll et al. 2012, A&A 543, A92; Jones et al.
  2013, A&A 560, A91) as tabulated by the MOONS consortium in the ``moons1d`` package
  (``models/Skymodel/SkyTemplate_ESO_a<airmass>.fits``): 0.1 A steps, vacuum wavelengths,
  airmass 1.0 to 2.0 in steps of 0.2, a half Moon 45 degrees from the target. Between
  tabulated airmasses the emission and the transmission are interpolated linearly.
* 3000-6000 A (:func:`paranal_optical`), built from published components listed with their
  sources in ``data/sky/paranal-optical.yaml``: transmission ``10 ** (-0.4 k X)`` with
  ``k`` = Rayleigh scattering at Paranal's pressure + ozone (Huggins, Chappuis bands) +
  aerosols (Patat et al. 2011); emission = a continuum through Patat's (2003) dark-time U,
  B, V sky brightness (the V band's lines taken out), extrapolated to 6000 A with the B-V
  slope, scaled by one factor per airmass so that it meets SkyCalc's continuum (median over
  :data:`PARANAL_MATCH_RANGE`: SkyCalc's Moon brightens it ~2x over the dark sky), and
  below 3600 A dimmed with the atmosphere's transmission; plus the airglow lines
  [OI] 5577, Na D and [NI] 5200 (Gaussians of :data:`PARANAL_LINE_SIGMA`), proportional
  to airmass and extinguished. The continuity at 6000 A is tested.

An arm is read only from the half that holds it (:meth:`SkySpectrum.from_wave`): arms
redwards of 6000 A see SkyCalc's numbers exactly as before the blue half existed.

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
import yaml
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
PARANAL_JOIN = 6000.0
"""skycalc-paranal: SkyCalc's tables start here (A); bluewards, :func:`paranal_optical`."""
PARANAL_BLUE_LIMIT = 3000.0
"""skycalc-paranal: the blue half starts here (A); the ozone cut-off leaves < 5% below."""
PARANAL_BLUE_STEP = 0.1
"""skycalc-paranal: wavelength step of the blue half (A), SkyCalc's."""
PARANAL_MATCH_RANGE = (6000.0, 6100.0)
"""skycalc-paranal: the blue continuum is scaled to SkyCalc's median emission over this range (A)."""
PARANAL_LINE_SIGMA = 0.15
"""skycalc-paranal: Gaussian sigma (A) of the airglow lines of the blue half (unresolved)."""
RAYLEIGH_PHOTONS = 1e6 / (4.0 * np.pi) / 4.254517e10
"""One Rayleigh in photons/s/cm2/arcsec2 (1e6 / 4 pi photons/s/cm2/sr; 4.2545e10 arcsec2/sr)."""


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
    joins: tuple[float, ...] = ()
    """Wavelengths (A) where one source table ends and the next begins (see from_wave)."""

    def from_wave(self, wave_min: float) -> "SkySpectrum":
        """The sky from the last join at or below ``wave_min`` (A) on: an arm is integrated
        over the one table that holds it, so a table added bluewards leaves it unchanged."""
        cuts = [j for j in self.joins if j <= wave_min]
        if not cuts:
            return self
        start = int(np.searchsorted(self.wave, max(cuts)))
        return SkySpectrum(self.wave[start:], self.emission[start:], self.transmission[start:], self.airmass,
                           tuple(j for j in self.joins if j > max(cuts)))


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


@lru_cache(maxsize=1)
def paranal_components() -> dict:
    """The published components of Paranal's sky below 6000 A (``data/sky/paranal-optical.yaml``)."""
    path = sky_data_path("paranal-optical.yaml")
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"sky data file {path}: cannot read ({exc})") from None


def paranal_extinction(wave: np.ndarray) -> np.ndarray:
    """Paranal's extinction coefficient k (mag/airmass) at ``wave`` (A, 3000-6000 A).

    Rayleigh (Hansen & Travis 1974 at Paranal's pressure) + ozone (cross-section x column)
    + aerosols (Patat et al. 2011): see ``data/sky/paranal-optical.yaml``.
    """
    comp = paranal_components()
    site, ray = comp["site"], comp["rayleigh"]
    lam = np.asarray(wave, dtype=np.float64) / 1e4  # um
    tau_r = (ray["a"] * lam ** -(ray["b"] + ray["c"] * lam + ray["d"] / lam) * site["pressure_hpa"] / 1013.25)
    table = np.asarray(comp["ozone_cross_section"], dtype=np.float64)
    sigma = 10.0 ** np.interp(lam * 1e4, table[:, 0], np.log10(table[:, 1]))
    tau_o3 = sigma * site["ozone_du"] * 2.6867e16  # 1 DU = 2.6867e16 molecules/cm2
    k_aer = site["aerosol_k0"] * lam ** site["aerosol_alpha"]
    return 2.5 * np.log10(np.e) * (tau_r + tau_o3) + k_aer


def _paranal_dark_continuum(wave: np.ndarray) -> np.ndarray:
    """Zenith dark-time continuum (photons/s/cm2/A/arcsec2) through Patat's U, B, V; below U's
    wavelength dimmed with the atmosphere's transmission, above V on the B-V slope."""
    comp = paranal_components()
    bands, lines = comp["bands"], comp["lines"]
    anchors = []
    for name in ("U", "B", "V"):
        b = bands[name]
        flam = b["zero_point"] * 1e-9 * 10.0 ** (-0.4 * b["mag"])  # erg/s/cm2/A/arcsec2
        inside = [ln for ln in lines if abs(ln["wave"] - b["wave"]) < 0.5 * b["fwhm"]]
        flam -= sum(ln["rayleigh"] * RAYLEIGH_PHOTONS * H_PLANCK_C / ln["wave"] for ln in inside) / b["fwhm"]
        anchors.append((b["wave"], flam * b["wave"] / H_PLANCK_C))
    x = np.log([a[0] for a in anchors])
    y = np.log([a[1] for a in anchors])
    lw = np.log(np.asarray(wave, dtype=np.float64))
    out = np.interp(lw, x, y)
    red = lw > x[-1]
    out[red] = y[-1] + (lw[red] - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2])
    cont = np.exp(out)
    blue = lw < x[0]
    k, k_u = paranal_extinction(np.asarray(wave)[blue]), paranal_extinction(np.array([anchors[0][0]]))[0]
    cont[blue] = np.exp(y[0]) * 10.0 ** (-0.4 * (k - k_u))
    return cont


def paranal_optical(airmass: float, red: SkySpectrum) -> SkySpectrum:
    """Paranal's sky from :data:`PARANAL_BLUE_LIMIT` to :data:`PARANAL_JOIN` at ``airmass``,
    its continuum scaled to meet ``red`` (SkyCalc at the same airmass; module docstring)."""
    n = int(round((PARANAL_JOIN - PARANAL_BLUE_LIMIT) / PARANAL_BLUE_STEP))
    wave = PARANAL_BLUE_LIMIT + PARANAL_BLUE_STEP * np.arange(n)
    k = paranal_extinction(wave)
    transmission = 10.0 ** (-0.4 * k * airmass)
    continuum = _paranal_dark_continuum(wave)
    lo, hi = PARANAL_MATCH_RANGE
    match = (red.wave >= lo) & (red.wave < hi)
    level = float(np.median(red.emission[match]))
    model_level = float(np.median(_paranal_dark_continuum(red.wave[match])))
    emission = continuum * (level / model_level)
    # zenith line intensities (as measured at the ground), x airmass, x the extra extinction
    line_scale = airmass * 10.0 ** (-0.4 * k * (airmass - 1.0))
    for line in paranal_components()["lines"]:
        profile = np.exp(-0.5 * ((wave - line["wave"]) / PARANAL_LINE_SIGMA) ** 2)
        profile /= np.sqrt(2.0 * np.pi) * PARANAL_LINE_SIGMA
        emission = emission + line["rayleigh"] * RAYLEIGH_PHOTONS * line_scale * profile
    return SkySpectrum(wave, emission, transmission, airmass)


def _paranal(airmass: float) -> SkySpectrum:
    red = _skycalc(airmass)
    blue = paranal_optical(airmass, red)
    return SkySpectrum(np.concatenate([blue.wave, red.wave]), np.concatenate([blue.emission, red.emission]),
                       np.concatenate([blue.transmission, red.transmission]), airmass, (PARANAL_JOIN,))


def load_sky(model: str, airmass: float) -> SkySpectrum | None:
    """Sky emission and transmission for ``model`` at ``airmass`` (None for model 'none')."""
    if model == "none":
        return None
    if model == "skycalc-paranal":
        return _paranal(airmass)
    if model == "sdss-apo":
        return _sdss_apo(airmass)
    raise ConfigError(f"sky_model: unknown sky model {model!r} (known: {', '.join(SKY_MODELS)})")
