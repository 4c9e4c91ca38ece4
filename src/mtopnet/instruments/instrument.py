"""The observation model: arms, pixel grids, line-spread function, throughput and sky.

An :class:`Instrument` is built from an :class:`~mtopnet.config.InstrumentConfig` and owns
everything that turns a flux density arriving at the top of the atmosphere into what the
detector records. Nothing else in the package knows instrument numbers.

Conventions
-----------
* Wavelengths are vacuum Angstrom; flux densities are in units of 1e-17 erg/s/cm2/A.
* Each arm has a linear pixel grid, ``dispersion = central_wave / (R * sampling)``, and a
  Gaussian line-spread function of FWHM ``central_wave / R`` (constant across the arm), or
  (``pixel_grid: log``) a grid of constant ``d ln(lambda) = 1 / (R * sampling)`` and an LSF
  of FWHM ``lambda / R`` (constant in velocity).
* The collecting area is that of the primary mirror less the central obstruction
  (``telescope.obscuration``, a diameter in m).
* Sources are handed to :meth:`Arm.observe_expected` on the arm's *fine grid*
  (``FINE_PER_PIXEL`` sub-pixels per detector pixel, padded on both sides for the LSF):
  the atmosphere's transmission is applied there, at full resolution, before the LSF.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ..config import ArmConfig, ConfigError, CurveSpec, InstrumentConfig
from ..constants import MASK_BAD, MASK_SKYLINE, MASK_TELLURIC  # noqa: F401 (re-exported)
from .aperture import FWHM_PER_SIGMA, Aperture
from .sky import SkySpectrum, load_sky, moons1d_path

FINE_PER_PIXEL = 3
"""Sub-pixels per detector pixel on which sources, sky and atmosphere are combined."""

H_PLANCK_C = 1.98644586e-8
"""h*c in erg Angstrom: the energy of a photon of wavelength lambda [A] is H_PLANCK_C / lambda."""

FLUX_UNIT = 1e-17
"""The package's flux density unit, erg/s/cm2/A."""


SKYLINE_CONTRAST = 5.0
SKYLINE_WINDOW = 151  # pixels, running median for the sky continuum
TELLURIC_DEEP = 0.5
TELLURIC_OPAQUE = 0.05
THROUGHPUT_MIN = 0.01

_WAVE_UNIT = {"A": 1.0, "nm": 10.0, "um": 1e4}


def read_curve(spec: CurveSpec, wave: np.ndarray) -> np.ndarray:
    """Evaluate an efficiency curve at ``wave`` (A); zero outside a tabulated range."""
    if spec.constant is not None:
        return np.full(wave.shape, spec.constant)
    path = moons1d_path(spec.file[len("moons1d:"):]) if spec.file.startswith("moons1d:") else spec.file
    try:
        with open(path, newline="") as handle:
            text = handle.read().replace("\r", "\n")
        table = np.loadtxt(text.splitlines(), ndmin=2)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"curve file {spec.file}: cannot read ({exc})") from None
    if table.shape[1] < spec.column + 2:
        raise ConfigError(f"curve file {spec.file}: has no value column {spec.column}")
    x = table[:, 0] * _WAVE_UNIT[spec.wave_unit]
    y = table[:, 1 + spec.column] * spec.scale
    order = np.argsort(x)
    return np.interp(wave, x[order], y[order], left=0.0, right=0.0)


def bin_mean(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of y(x) over each bin [edges[i], edges[i+1]] (trapezoid rule, flux conserving).

    x, y: (M,), x increasing; edges: (K+1,) -> (K,). Outside x, y is held at its end values.
    """
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (y[1:] + y[:-1]) * np.diff(x))])
    integral = np.interp(edges, x, cum)
    integral += -np.clip(x[0] - edges, 0, None) * y[0] + np.clip(edges - x[-1], 0, None) * y[-1]
    return np.diff(integral) / np.diff(edges)


def image_quality(seeing: float, wave: np.ndarray, airmass: float, diameter: float) -> np.ndarray:
    """PSF FWHM (arcsec) at ``wave`` (A) for zenith ``seeing`` at 500 nm.

    The ESO ETC formula (outer scale 46 m, Kolmogorov-Tokovinin correction, telescope
    diffraction), as used by the MOONS consortium simulator.
    """
    wave_nm = wave / 10.0
    r0 = 0.100 / seeing * (wave_nm / 500.0) ** 1.2 * airmass ** -0.6
    fwhm_atm = seeing * airmass ** 0.6 * (wave_nm / 500.0) ** -0.2
    fwhm_atm = fwhm_atm * np.sqrt(1.0 - 0.981644 * 2.183 * (r0 / 46.0) ** 0.356)
    fwhm_tel = 0.000212 * wave_nm / diameter
    return np.hypot(fwhm_tel, fwhm_atm)


def aperture_fraction(inst: "Instrument", wave: np.ndarray, seeing: np.ndarray | float,
                      airmass: np.ndarray | float, source_sigma: np.ndarray | float) -> np.ndarray:
    """Fraction of a source's light entering the aperture (fibre or slit) of ``inst`` at
    ``wave`` (A): a centred Gaussian PSF of the seeing-limited image quality
    (:func:`image_quality`; ``seeing`` arcsec FWHM at 500 nm at zenith) convolved with a
    Gaussian source of ``source_sigma`` arcsec (0 for a point source), through the
    instrument's :class:`~mtopnet.instruments.aperture.Aperture`. All arguments broadcast
    together (e.g. wave (1, L) with seeing and source_sigma (N, 1) -> (N, L))."""
    psf_var = (image_quality(seeing, wave, airmass, inst.config.telescope_diameter) / FWHM_PER_SIGMA) ** 2
    return inst.aperture.fraction(psf_var + np.asarray(source_sigma, dtype=np.float64) ** 2)


def running_median(values: np.ndarray, window: int) -> np.ndarray:
    from scipy.ndimage import median_filter
    return median_filter(values, size=window, mode="nearest")


def pixel_mask(efficiency: np.ndarray, telluric_pixel: np.ndarray, sky_electrons: np.ndarray) -> np.ndarray:
    """The instrument's mask bits of one arm's pixels: (L,) arrays -> (L,) uint8.

    MASK_BAD where the efficiency is below THROUGHPUT_MIN of its peak or the atmosphere
    transmits < TELLURIC_OPAQUE; MASK_TELLURIC where it transmits < TELLURIC_DEEP;
    MASK_SKYLINE where the sky exceeds SKYLINE_CONTRAST x its running median (over
    SKYLINE_WINDOW pixels). The simulator's spectra carry these bits; real spectra get the
    sky ones through :meth:`Instrument.sky_mask`.
    """
    mask = np.zeros(len(efficiency), dtype=np.uint8)
    mask[(efficiency < THROUGHPUT_MIN * efficiency.max()) | (telluric_pixel < TELLURIC_OPAQUE)] |= MASK_BAD
    mask[telluric_pixel < TELLURIC_DEEP] |= MASK_TELLURIC
    if sky_electrons.any():
        continuum = running_median(sky_electrons, SKYLINE_WINDOW)
        mask[sky_electrons > SKYLINE_CONTRAST * np.maximum(continuum, 1e-30)] |= MASK_SKYLINE
    return mask


SKY_MASK_BITS = MASK_SKYLINE | MASK_TELLURIC
"""The bits of :func:`pixel_mask` that come from the night sky (applied to real spectra too)."""


def pixel_edges(wave: np.ndarray) -> np.ndarray:
    """(L+1,) pixel edges of pixel centres ``wave`` (L,), increasing: midpoints, ends mirrored."""
    wave = np.asarray(wave, dtype=np.float64)
    if len(wave) == 1:
        return np.array([wave[0] - 0.5, wave[0] + 0.5])
    mid = 0.5 * (wave[1:] + wave[:-1])
    return np.concatenate([[wave[0] - (mid[0] - wave[0])], mid, [wave[-1] + (wave[-1] - mid[-1])]])


def resample_mask(src_edges: np.ndarray, src_mask: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """Mask bits on pixels centred on ``wave`` (L,): the OR of the bits of every source pixel
    (edges (M+1,), bits (M,)) that overlaps each; 0 where none does. -> (L,) uint8."""
    out = np.zeros(len(wave), dtype=np.uint8)
    if len(wave) == 0 or len(src_mask) == 0:
        return out
    edges = pixel_edges(wave)
    lo, hi = np.minimum(edges[:-1], edges[1:]), np.maximum(edges[:-1], edges[1:])
    shrink = 1e-6 * (hi - lo)  # a shared edge, up to round-off, is no overlap
    lo, hi = lo + shrink, hi - shrink
    first = np.clip(np.searchsorted(src_edges, lo, side="right") - 1, 0, len(src_mask) - 1)
    last = np.clip(np.searchsorted(src_edges, hi, side="left") - 1, 0, len(src_mask) - 1)
    overlaps = (hi > src_edges[0]) & (lo < src_edges[-1])
    for bit in (1, 2, 4, 8, 16, 32, 64, 128):
        hit = (src_mask & bit) != 0
        if not hit.any():
            continue
        cum = np.concatenate([[0], np.cumsum(hit)])
        out[overlaps & (cum[last + 1] - cum[first] > 0)] |= bit
    return out


@dataclass
class ArmResponse:
    """Per-pixel constants of one arm for one set of observing conditions.

    All arrays are (L,) on the arm's pixels, per sub-exposure of ``t_sub`` seconds.
    """

    electrons_per_flux: np.ndarray  # e- per (1e-17 erg/s/cm2/A) before aperture loss and telluric
    sky_electrons: np.ndarray  # e- from the sky in the fibre (or slit width x extraction length)
    dark_electrons: float  # e- from dark current
    read_noise: float  # e- rms
    telluric_fine: np.ndarray  # (Lf,) transmission on the fine grid
    telluric_pixel: np.ndarray  # (L,) LSF-convolved transmission on pixels
    psf_sigma: np.ndarray  # (L,) PSF Gaussian sigma, arcsec
    mask: np.ndarray  # (L,) uint8 instrument mask bits


class Arm:
    """One spectrograph arm: pixel grid, fine grid, LSF and efficiencies."""

    def __init__(self, config: ArmConfig, instrument: "Instrument"):
        self.config = config
        self.name = config.name
        self.instrument = instrument
        self.central_wave = 0.5 * (config.wave_min + config.wave_max)
        self.pixel_grid = config.pixel_grid
        if config.pixel_grid == "log":
            self._init_log_grid(config)
        else:
            self._init_linear_grid(config)
        self._responses: dict[tuple, ArmResponse] = {}

    def _init_linear_grid(self, config: ArmConfig) -> None:
        self.dispersion = self.central_wave / (config.resolution * config.sampling)  # A/pixel
        self.lsf_fwhm = self.central_wave / config.resolution  # A
        self.lsf_sigma = self.lsf_fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # A
        npix = int(np.floor((config.wave_max - config.wave_min) / self.dispersion))
        self.wave_edges = config.wave_min + self.dispersion * np.arange(npix + 1)
        self.wave = 0.5 * (self.wave_edges[1:] + self.wave_edges[:-1])
        self.fine_step = self.dispersion / FINE_PER_PIXEL
        self.lsf_sigma_fine = self.lsf_sigma / self.fine_step
        self.fine_pad = int(np.ceil(5 * self.lsf_sigma_fine)) + FINE_PER_PIXEL
        idx = np.arange(-self.fine_pad, npix * FINE_PER_PIXEL + self.fine_pad)
        self.fine_wave = config.wave_min + (idx + 0.5) * self.fine_step
        self.fine_edges = config.wave_min + np.arange(-self.fine_pad, npix * FINE_PER_PIXEL
                                                      + self.fine_pad + 1) * self.fine_step

    def _init_log_grid(self, config: ArmConfig) -> None:
        """Pixels of constant width ``dloglam`` in ln(lambda); LSF of constant velocity width.

        ``dispersion``, ``lsf_fwhm``, ``lsf_sigma`` and ``fine_step`` are then (L,) or (Lf,)
        arrays in A; ``lsf_sigma_fine`` (fine pixels) is a constant.
        """
        self.dloglam = 1.0 / (config.resolution * config.sampling)  # ln(lambda) per pixel
        npix = int(np.floor(np.log(config.wave_max / config.wave_min) / self.dloglam))
        self.wave_edges = config.wave_min * np.exp(self.dloglam * np.arange(npix + 1))
        self.wave = np.sqrt(self.wave_edges[1:] * self.wave_edges[:-1])
        self.dispersion = np.diff(self.wave_edges)  # (L,) A/pixel
        self.lsf_fwhm = self.wave / config.resolution  # (L,) A
        self.lsf_sigma = self.lsf_fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # (L,) A
        fine_dloglam = self.dloglam / FINE_PER_PIXEL
        self.lsf_sigma_fine = 1.0 / config.resolution / (2.0 * np.sqrt(2.0 * np.log(2.0))) / fine_dloglam
        self.fine_pad = int(np.ceil(5 * self.lsf_sigma_fine)) + FINE_PER_PIXEL
        self.fine_edges = config.wave_min * np.exp(
            fine_dloglam * np.arange(-self.fine_pad, npix * FINE_PER_PIXEL + self.fine_pad + 1))
        self.fine_wave = np.sqrt(self.fine_edges[1:] * self.fine_edges[:-1])
        self.fine_step = np.diff(self.fine_edges)  # (Lf,) A

    @property
    def npix(self) -> int:
        return len(self.wave)

    @cached_property
    def efficiency(self) -> np.ndarray:
        """(L,) throughput x detector QE x telescope efficiency, without fibre loss."""
        cfg = self.config
        return (read_curve(cfg.throughput, self.wave) * read_curve(cfg.qe, self.wave)
                * read_curve(self.instrument.config.telescope_efficiency, self.wave))

    @cached_property
    def best_throughput_ratio(self) -> np.ndarray | None:
        """(L,) best / worst throughput, where the arm's throughput file has a ``_best`` twin.

        moons1d ships ``throughput_<ARM>_worst.txt`` and ``throughput_<ARM>_best.txt``; the
        shipped MOONS descriptions use the worst. None when there is no such pair.
        """
        spec = self.config.throughput
        if spec.file is None or "_worst" not in spec.file:
            return None
        from dataclasses import replace
        try:
            best = read_curve(replace(spec, file=spec.file.replace("_worst", "_best")), self.wave)
        except ConfigError:
            return None
        worst = read_curve(spec, self.wave)
        return np.where(worst > 0, best / np.maximum(worst, 1e-30), 1.0)

    def convolve_and_bin(self, fine: np.ndarray, lsf_scale: float = 1.0) -> np.ndarray:
        """LSF-convolve values on the fine grid and average them onto pixels.

        fine: (..., Lf) -> (..., L). Conserves flux: a pixel holds the mean flux density
        over its width. lsf_scale: width of the LSF relative to the arm's.
        """
        smooth = gaussian_filter1d(np.asarray(fine, dtype=np.float64), self.lsf_sigma_fine * lsf_scale,
                                   axis=-1, mode="nearest", truncate=5.0)
        core = smooth[..., self.fine_pad:self.fine_pad + self.npix * FINE_PER_PIXEL]
        return core.reshape(core.shape[:-1] + (self.npix, FINE_PER_PIXEL)).mean(axis=-1)

    def aperture_fraction(self, seeing: float, airmass: float,
                          source_sigma: np.ndarray | float = 0.0) -> np.ndarray:
        """Fraction of a source's light entering the fibre or slit, per pixel.

        A centred Gaussian PSF of the seeing-limited image quality convolved with a Gaussian
        source of ``source_sigma`` arcsec (0 for a point source), through the instrument's
        aperture (:class:`~mtopnet.instruments.aperture.Aperture`).
        source_sigma: scalar or (N,) -> (L,) or (N, L) (:func:`aperture_fraction`).
        """
        src = np.asarray(source_sigma, dtype=np.float64)
        return aperture_fraction(self.instrument, self.wave, seeing, airmass, src[..., None] if src.ndim else src)

    def response(self, airmass: float, seeing: float, t_sub: float) -> ArmResponse:
        """Per-pixel constants for these conditions (cached)."""
        key = (round(airmass, 4), round(seeing, 4), round(t_sub, 3))
        if key in self._responses:
            return self._responses[key]
        inst = self.instrument
        area_cm2 = np.pi * (50.0 * inst.config.telescope_diameter) ** 2
        if inst.config.telescope_obscuration > 0:
            area_cm2 *= 1.0 - (inst.config.telescope_obscuration / inst.config.telescope_diameter) ** 2
        photons_per_flux = FLUX_UNIT * self.wave / H_PLANCK_C  # photons/s/cm2/A per flux unit
        eff = self.efficiency
        electrons_per_flux = photons_per_flux * area_cm2 * eff * self.dispersion * t_sub
        sky = inst.sky(airmass)
        if sky is None:
            telluric_fine = np.ones_like(self.fine_wave)
            sky_electrons = np.zeros_like(self.wave)
        else:
            lo, hi = sky.wave[0], sky.wave[-1]
            if self.config.wave_min < lo - 1.0 or self.config.wave_max > hi + 1.0:
                raise ConfigError(
                    f"arms.{self.name}: {self.config.wave_min:.0f}-{self.config.wave_max:.0f} A "
                    f"lies outside the sky model {inst.config.sky_model} ({lo:.0f}-{hi:.0f} A)")
            sky = sky.from_wave(self.fine_edges[0])  # the sky table that holds the arm
            telluric_fine = bin_mean(sky.wave, sky.transmission, self.fine_edges)
            sky_fine = bin_mean(sky.wave, sky.emission, self.fine_edges)  # ph/s/cm2/A/arcsec2
            sky_electrons = (self.convolve_and_bin(sky_fine) * inst.aperture.sky_area * area_cm2 * eff
                             * self.dispersion * t_sub)
        telluric_pixel = self.convolve_and_bin(telluric_fine)
        mask = pixel_mask(eff, telluric_pixel, sky_electrons)
        psf_sigma = image_quality(seeing, self.wave, airmass, inst.config.telescope_diameter) / FWHM_PER_SIGMA
        out = ArmResponse(electrons_per_flux, sky_electrons, self.config.dark * t_sub / 3600.0,
                          self.config.read_noise, telluric_fine, telluric_pixel, psf_sigma, mask)
        self._responses[key] = out
        return out


class Instrument:
    """A multi-arm fibre or slit spectrograph, built from its YAML description."""

    def __init__(self, config: InstrumentConfig):
        self.config = config
        self.name = config.name
        self.aperture = Aperture(config.aperture)
        self.arms = [Arm(a, self) for a in config.arms]
        self._sky: dict[float, SkySpectrum | None] = {}

    def __repr__(self) -> str:
        arms = ", ".join(f"{a.name} {a.config.wave_min:.0f}-{a.config.wave_max:.0f} A R={a.config.resolution:.0f}"
                         for a in self.arms)
        return f"Instrument({self.name}: {arms})"

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms]

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"instrument {self.name} has no arm {name!r} (arms: {self.arm_names})")

    @property
    def wave_range(self) -> tuple[float, float]:
        """(min, max) wavelength over all arms, vacuum A."""
        return (min(a.config.wave_min for a in self.arms), max(a.config.wave_max for a in self.arms))

    @property
    def max_resolution(self) -> float:
        return max(a.config.resolution for a in self.arms)

    def sky_mask(self, wave: np.ndarray, airmass: float | None = None) -> np.ndarray:
        """The night-sky bits (:data:`SKY_MASK_BITS`) of the arms' masks on any grid.

        wave: (L,) vacuum A, increasing (a real spectrum's arm) -> (L,) uint8. Each pixel
        gets the sky-line and telluric bits of the instrument's pixels it overlaps, as the
        simulator sets them (:func:`pixel_mask`) at ``airmass`` (default: the observing
        airmass of the YAML) and the YAML's seeing and sub-exposure. 0 outside every arm.
        """
        obs = self.config.observing
        airmass = obs.airmass if airmass is None else airmass
        out = np.zeros(len(wave), dtype=np.uint8)
        for arm in self.arms:
            resp = arm.response(airmass, obs.seeing, obs.sub_exposure)
            out |= resample_mask(arm.wave_edges, resp.mask & SKY_MASK_BITS, np.asarray(wave, dtype=np.float64))
        return out

    def sky(self, airmass: float) -> SkySpectrum | None:
        key = round(float(airmass), 4)
        if key not in self._sky:
            self._sky[key] = load_sky(self.config.sky_model, key)
        return self._sky[key]
