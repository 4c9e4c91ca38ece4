"""Pieces shared by all readers: checking, sanitising, noise estimation and units.

Every reader turns a file into *raw arms* (wavelength, flux, noise as given, mask already in
the package's bits) and hands them to :func:`build_block`, which applies the same rules to
every format:

* wavelengths must be finite, positive and strictly monotonic (a decreasing axis is
  reversed); air wavelengths are converted to vacuum once, here;
* shapes must agree (otherwise a one-line :class:`~mtopnet.config.UserError`);
* NaN/inf flux, NaN/inf/negative ivar and values beyond float32 become ``flux = 0``,
  ``ivar = 0`` and mask bit ``MASK_BAD``, and are counted per object in
  ``SpectraBatch.n_bad_pixels`` (:func:`count_corrupt`) so that prediction can flag them;
  a pixel with ``MASK_BAD`` carries ``ivar = 0`` and
  a pixel with ``ivar = 0`` carries ``MASK_BAD``;
* an arm without any usable noise has it estimated from the spectrum
  (:func:`estimate_noise`) and the object is flagged in ``labels['noise_estimated']``;
* zero-length arms are dropped with a warning (an object with no arm left is an error).
"""
from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..config import UserError
from ..constants import MASK_ALL, MASK_BAD
from ..store import SpectraBatch

FLUX_UNIT_CGS = 1e-17
"""The package's flux density unit: 1e-17 erg/s/cm2/A (ivar in its inverse square)."""

MASK_KNOWN = MASK_ALL
_F32_MAX = float(np.finfo(np.float32).max)

NOISE_WINDOW = 201
"""Pixels in the running median of :func:`estimate_noise` (shrunk for shorter spectra)."""
NOISE_CLIP = 5.0
"""Second differences above this many local medians (~3.4 sigma) are left out (lines, spikes)."""
NOISE_MIN_PIXELS = 10
"""Fewer usable pixels than this: the noise cannot be estimated (ivar = 0, MASK_BAD)."""
DER_SNR_SCALE = 1.482602 / np.sqrt(6.0)
"""sigma = DER_SNR_SCALE * median|2 f_i - f_(i-2) - f_(i+2)| for white Gaussian noise."""


class NoiseEstimatedWarning(UserWarning):
    """A spectrum had no usable noise; it was estimated from the spectrum itself."""


class ReaderWarning(UserWarning):
    """A reader skipped something (a file of unknown format in a folder, an empty arm)."""


def fail(source: Any, problem: str) -> UserError:
    """A one-line :class:`UserError` naming the input and the problem."""
    text = f"{source}: {problem}"
    return UserError(" ".join(text.split()))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its class name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class RawArm:
    """One arm as a reader found it, before the common rules are applied.

    wave: (L,) Angstrom (air if the block says so), any monotonic order;
    flux: (N, L) in 1e-17 erg/s/cm2/A (readers convert units first, see :func:`flux_factor`);
    noise: (N, L) ``ivar`` or 1-sigma ``error`` in the same unit, or None;
    mask: (N, L) package bits (readers map their own bits first), or None.
    """

    wave: np.ndarray
    flux: np.ndarray
    noise: np.ndarray | None = None
    noise_kind: str = "ivar"  # "ivar" or "error"
    mask: np.ndarray | None = None


def make_ids(ids: Sequence[Any] | np.ndarray) -> np.ndarray:
    """(N,) int64 if every id is an integer, else (N,) str: the ids' type is the reader's."""
    arr = np.asarray(ids)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    values = list(arr.tolist()) if arr.ndim else [arr.item()]
    if values and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=str)


def sanitize(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make (flux, ivar, mask) safe to compute with; returns new float32/float32/uint8 arrays.

    flux, ivar: (N, L) or (L,), any float or int dtype, may hold NaN/inf/negative ivar;
    mask: same shape, any integer or bool dtype (bits outside 1|2|4 become MASK_BAD), or None.
    Afterwards every value is finite, ``ivar >= 0``, ``ivar == 0`` exactly where mask has
    MASK_BAD, and bad pixels have ``flux == 0``.
    """
    flux = np.array(flux, dtype=np.float64, copy=True)
    ivar = np.array(ivar, dtype=np.float64, copy=True)
    if flux.shape != ivar.shape:
        raise ValueError(f"flux shape {flux.shape} != ivar shape {ivar.shape}")
    out_mask = map_mask(mask, flux.shape)
    with np.errstate(invalid="ignore"):
        bad_flux = ~np.isfinite(flux) | (np.abs(flux) > _F32_MAX)
        bad_ivar = ~np.isfinite(ivar) | (ivar < 0) | (ivar > _F32_MAX)
    bad = bad_flux | bad_ivar
    flux[bad_flux] = 0.0
    ivar[bad] = 0.0
    out_mask[bad] |= MASK_BAD
    ivar[(out_mask & MASK_BAD) != 0] = 0.0
    ivar32 = ivar.astype(np.float32)
    out_mask[ivar32 == 0] |= MASK_BAD  # includes ivar that underflows float32
    return flux.astype(np.float32), ivar32, out_mask


def count_corrupt(flux: np.ndarray, noise: np.ndarray | None, mask: np.ndarray | None,
                  noise_kind: str = "ivar") -> np.ndarray:
    """(N,) int64: pixels per row with corrupt values that :func:`sanitize` will clean.

    flux: (N, L); noise: (N, L) ivar or 1-sigma error (``noise_kind``), or None; mask: (N, L)
    package bits or None. Corrupt: flux NaN/inf or beyond float32; noise NaN; ivar inf or
    negative; error negative or -inf. A pixel the file's own mask marks bad (MASK_BAD) is not
    counted, nor is ivar 0 or error +inf (the usual ways of saying "no data").
    """
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        corrupt = ~np.isfinite(flux) | (np.abs(flux) > _F32_MAX)
        if noise is not None:
            noise = np.atleast_2d(np.asarray(noise, dtype=np.float64))
            if noise_kind == "ivar":
                corrupt |= ~np.isfinite(noise) | (noise < 0)
            else:
                corrupt |= np.isnan(noise) | (noise < 0)
    if mask is not None:
        corrupt &= (np.atleast_2d(np.asarray(mask)) & MASK_BAD) == 0
    return corrupt.sum(axis=-1).astype(np.int64)


def map_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Any integer/bool mask -> package bits: bits 1|2|4 kept, any other set bit -> MASK_BAD."""
    if mask is None:
        return np.zeros(shape, dtype=np.uint8)
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"mask shape {m.shape} != flux shape {tuple(shape)}")
    if m.dtype == bool:
        return np.where(m, MASK_BAD, 0).astype(np.uint8)
    if m.dtype.kind == "f":
        m = np.where(np.isfinite(m), m, 1).astype(np.int64)
    m = m.astype(np.int64)
    out = (m & MASK_KNOWN).astype(np.uint8)
    out[(m & ~MASK_KNOWN) != 0] |= MASK_BAD
    return out


def estimate_noise(flux: np.ndarray, good: np.ndarray | None = None,
                   window: int = NOISE_WINDOW) -> np.ndarray:
    """1-sigma noise of a spectrum from its own pixel-to-pixel scatter.

    flux: (L,) any unit; good: (L,) bool, pixels to use (default: finite flux).
    Returns sigma: (L,) float64 in the unit of ``flux``, NaN where it cannot be estimated.

    The estimator is DER_SNR (Stoehr et al. 2008, ASP Conf. Ser. 394, 505) made local:
    ``sigma = 1.482602 / sqrt(6) * median |2 f_i - f_(i-2) - f_(i+2)|`` taken in a running
    window of ``window`` usable pixels (mirrored at the ends), then smoothed over half a
    window. The second difference cancels a linearly varying continuum; the median ignores
    narrow lines. Differences above ``NOISE_CLIP`` local medians (strong lines, cosmic rays)
    are left out and the median retaken. Pixel-correlated noise (spectra resampled onto a new
    grid) makes the estimate low: there the estimate is a lower bound.
    """
    from scipy.ndimage import median_filter, uniform_filter1d

    flux = np.asarray(flux, dtype=np.float64)
    sigma = np.full(flux.shape, np.nan)
    ok = np.isfinite(flux) if good is None else (np.asarray(good, bool) & np.isfinite(flux))
    idx = np.flatnonzero(ok)
    if idx.size < NOISE_MIN_PIXELS:
        return sigma
    f = flux[idx]
    resid = np.abs(2.0 * f[2:-2] - f[:-4] - f[4:])  # (n - 4,)
    pos = idx[2:-2].astype(np.float64)
    keep = np.ones(resid.size, dtype=bool)
    local = np.zeros(resid.size)
    for _ in range(3):
        kept = resid[keep]
        size = max(1, min(window, kept.size) | 1)
        med = median_filter(kept, size=size, mode="mirror")
        med = uniform_filter1d(med, size=max(1, size // 2), mode="mirror")
        local = np.interp(pos, pos[keep], med)
        new_keep = resid <= NOISE_CLIP * local
        if new_keep.sum() < NOISE_MIN_PIXELS or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    sigma_pos = DER_SNR_SCALE * local
    sigma[:] = np.interp(np.arange(flux.size, dtype=np.float64), pos, sigma_pos)
    return sigma


def air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    """Air -> vacuum wavelengths, both in Angstrom, with specutils' ``air_to_vac``.

    specutils' default: the inverse of the refractive index of standard air of
    Morton (2000, ApJS 130, 403), as used by the IAU and SDSS.
    """
    import astropy.units as u
    from specutils.utils.wcs_utils import air_to_vac
    return np.asarray(air_to_vac(np.asarray(wave_air, dtype=np.float64) * u.AA).to_value(u.AA))


def parse_unit(text: str | None, source: Any, what: str):
    """An astropy unit from a FITS/text unit string; None or blank -> None.

    UserError naming ``source`` and ``what`` if no reading of the string is a unit."""
    if text is None or not str(text).strip():
        return None
    raw = str(text).strip()
    unit = _unit_from_text(raw)
    if unit is None:
        raise fail(source, f"{what}: cannot read the unit {raw!r}")
    return unit


@functools.lru_cache(maxsize=256)
def _unit_from_text(raw: str):
    """The first reading of ``raw`` that astropy knows as a unit, or None. Cached: a survey's
    files repeat a few unit strings, and astropy's parser takes ~2 ms a string (units are
    immutable, so sharing them is safe)."""
    import astropy.units as u

    # a lone "A" in a spectrum's unit is the Angstrom (astropy reads it as the ampere)
    angstrom = re.sub(r"(?<![A-Za-z])A(?![A-Za-z])", "Angstrom", raw)
    candidates = [angstrom, angstrom.replace("^", ""), raw.replace("Ang", "Angstrom").replace("^", ""),
                  raw.replace("AA", "Angstrom")]
    for cand in candidates:
        for fmt in ("fits", None):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    unit = u.Unit(cand, format=fmt) if fmt else u.Unit(cand)
                if not isinstance(unit, u.UnrecognizedUnit):
                    return unit
            except (ValueError, TypeError):
                continue
    return None


def wave_to_angstrom(values: np.ndarray, unit, source: Any) -> np.ndarray:
    """Spectral axis values in ``unit`` (length, frequency, energy; None = A) -> Angstrom."""
    import astropy.units as u

    values = np.asarray(values, dtype=np.float64)
    if unit is None or unit == u.AA:
        return values
    try:
        return np.asarray((values * unit).to_value(u.AA, equivalencies=u.spectral()))
    except u.UnitConversionError:
        raise fail(source, f"wavelength unit {unit} is not a spectral unit") from None


@functools.lru_cache(maxsize=1)
def _flux_target():
    import astropy.units as u

    return FLUX_UNIT_CGS * u.erg / u.s / u.cm ** 2 / u.AA


@functools.lru_cache(maxsize=64)
def _per_wavelength_factor(unit) -> float | None:
    """The scalar taking ``unit`` to 1e-17 erg/s/cm2/A, or None if it is not a flux density
    per wavelength (cached: composing and converting units costs ~0.5 ms, once per arm of
    every file otherwise)."""
    import astropy.units as u

    try:
        return float(unit.to(_flux_target()))
    except u.UnitConversionError:
        return None


def flux_factor(unit, wave_angstrom: np.ndarray, source: Any, aperture_arcsec2: float | None = None):
    """Factor (scalar or (L,)) taking flux in ``unit`` to 1e-17 erg/s/cm2/A (None -> 1).

    f_nu and photon units are converted with astropy's spectral_density at each wavelength.
    A surface brightness (per arcsec2) is multiplied by ``aperture_arcsec2`` when given.
    """
    import astropy.units as u

    if unit is None:
        return 1.0
    scalar = _per_wavelength_factor(unit)
    if scalar is not None:  # a flux density per wavelength: one scalar, no per-pixel equivalency
        return 1.0 if abs(scalar - 1.0) < 1e-12 else np.asarray(scalar)
    target = _flux_target()
    equiv = u.spectral_density(np.asarray(wave_angstrom, dtype=np.float64) * u.AA)
    try:
        factor = np.asarray((1.0 * unit).to_value(target, equivalencies=equiv))
        if factor.ndim == 0 and abs(float(factor) - 1.0) < 1e-12:
            return 1.0  # the package's own unit: leave the numbers untouched
        return factor
    except u.UnitConversionError:
        if aperture_arcsec2 is not None:
            try:
                return np.asarray((aperture_arcsec2 * u.arcsec ** 2 * unit).to_value(target, equivalencies=equiv))
            except u.UnitConversionError:
                pass
        raise fail(source, f"flux unit {unit} cannot be converted to 1e-17 erg/s/cm2/A") from None


def _check_wave(name: str, wave: np.ndarray, source: Any) -> bool:
    """Validate an arm's wavelengths; True if they must be reversed (decreasing axis)."""
    if wave.ndim != 1:
        raise fail(source, f"arm {name}: wavelength array has shape {wave.shape}, expected 1-D")
    if not np.all(np.isfinite(wave)) or np.any(wave <= 0):
        raise fail(source, f"arm {name}: wavelengths are not all finite and positive")
    if wave.size < 2:
        return False
    step = np.diff(wave)
    if np.all(step > 0):
        return False
    if np.all(step < 0):
        return True
    raise fail(source, f"arm {name}: wavelengths are not strictly monotonic")


def build_block(source: Any, ids: Sequence[Any] | np.ndarray, arms: dict[str, RawArm], *,
                air: bool = False, estimate_if_unusable: bool = True,
                noise_estimated: np.ndarray | None = None) -> SpectraBatch:
    """Apply the common rules to one file's (or object's) arms; returns a SpectraBatch.

    ids: (N,) object ids; arms: arm name -> :class:`RawArm` with N rows; air: wavelengths
    are in air; estimate_if_unusable: also estimate the noise of rows whose given noise has no
    finite positive value (file formats where a zero ivar everywhere means "no noise given",
    not "no data"); noise_estimated: (N,) flags carried over from the file (text/FITS writers).
    """
    ids = make_ids(ids)
    n = len(ids)
    estimated = np.zeros(n, dtype=bool) if noise_estimated is None else np.asarray(noise_estimated, bool).copy()
    estimated_now = np.zeros(n, dtype=bool)
    n_bad = np.zeros(n, dtype=np.int64)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, raw in arms.items():
        wave = np.asarray(raw.wave, dtype=np.float64)
        if wave.ndim != 1:
            raise fail(source, f"arm {name}: wavelength array has shape {wave.shape}, expected 1-D")
        flux = np.asarray(raw.flux)
        if flux.ndim == 1 and n == 1:
            flux = flux[None, :]
        arrays = {"flux": flux}
        if raw.noise is not None:
            arrays["ivar" if raw.noise_kind == "ivar" else "error"] = np.asarray(raw.noise)
        if raw.mask is not None:
            arrays["mask"] = np.asarray(raw.mask)
        for key, arr in arrays.items():
            if arr.ndim == 1 and n == 1:
                arr = arr[None, :]
                arrays[key] = arr
            if arr.shape != (n, wave.size):
                raise fail(source, f"arm {name}: {key} has shape {arr.shape}, expected ({n}, {wave.size}) "
                                   f"from {n} object(s) and {wave.size} wavelengths (mismatched lengths)")
        if wave.size == 0:
            warnings.warn(ReaderWarning(f"{source}: arm {name} has no pixels; dropped"), stacklevel=2)
            continue
        reverse = _check_wave(name, wave, source)
        if reverse:
            wave = wave[::-1]
            arrays = {k: v[:, ::-1] for k, v in arrays.items()}
        if air:
            wave = air_to_vacuum(wave)
        flux = np.asarray(arrays["flux"], dtype=np.float64)
        mask = map_mask(arrays.get("mask"), flux.shape)
        kind = "ivar" if "ivar" in arrays else "error"
        n_bad += count_corrupt(flux, arrays.get(kind), mask, kind)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            flux_ok = np.isfinite(flux) & (np.abs(flux) <= _F32_MAX)
            if "ivar" in arrays:
                ivar = np.asarray(arrays["ivar"], dtype=np.float64)
                usable = np.isfinite(ivar) & (ivar > 0)
            elif "error" in arrays:
                err = np.asarray(arrays["error"], dtype=np.float64)
                usable = np.isfinite(err) & (err > 0)
                ivar = np.where(usable, 1.0 / np.where(usable, err, 1.0) ** 2, np.where(np.isinf(err), 0.0, np.nan))
            else:
                ivar = np.zeros(flux.shape)
                usable = np.zeros(flux.shape, dtype=bool)
        no_noise = ~usable.any(axis=1) if ("ivar" not in arrays and "error" not in arrays) or estimate_if_unusable \
            else np.zeros(n, dtype=bool)
        # A row with nothing usable in the flux has nothing to estimate from: leave it bad.
        estimable = flux_ok & ((mask & MASK_BAD) == 0)
        no_noise &= estimable.any(axis=1)
        for row in np.flatnonzero(no_noise):
            good = estimable[row]
            sigma = estimate_noise(flux[row], good)
            with np.errstate(invalid="ignore", divide="ignore"):
                ivar[row] = np.where(good & np.isfinite(sigma) & (sigma > 0), 1.0 / sigma ** 2, 0.0)
            estimated[row] = estimated_now[row] = True
        flux32, ivar32, mask8 = sanitize(flux, ivar, mask)
        out[name] = {"wave": wave, "flux": flux32, "ivar": ivar32, "mask": mask8}
    if not out:
        raise fail(source, "no spectrum data (every arm is empty)")
    if estimated_now.any():
        warnings.warn(NoiseEstimatedWarning(
            f"{source}: no usable noise (ivar/error) for {int(estimated_now.sum())} object(s); estimated "
            "from the spectrum's pixel-to-pixel scatter and flagged in labels['noise_estimated']"), stacklevel=2)
    return SpectraBatch(ids=ids, arms=out, labels={"noise_estimated": estimated}, n_bad_pixels=n_bad)
