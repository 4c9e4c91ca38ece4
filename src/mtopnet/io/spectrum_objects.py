"""specutils ``Spectrum`` (formerly ``Spectrum1D``) objects handed over from Python.

The spectral axis may be in any spectral unit (length, frequency, energy) and is converted
to Angstrom (a decreasing axis is reversed); the flux (1-D, or 2-D for several objects on
one axis) is converted to 1e-17 erg/s/cm2/A with astropy's ``spectral_density``
equivalency, so f_nu (Jy, ...) works. The uncertainty (StdDev, Variance or InverseVariance)
becomes ivar in the same unit; without one the noise is estimated. ``mask`` True -> bad.
specutils does not record air/vacuum: pass ``air=True`` for air wavelengths.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..store import SpectraBatch
from ._core import RawArm, build_block, fail, flux_factor

ARM = "ALL"


def is_spectrum(obj: Any) -> bool:
    """Duck test for a specutils Spectrum/Spectrum1D (without importing specutils)."""
    return hasattr(obj, "spectral_axis") and hasattr(obj, "flux") and not isinstance(obj, (str, bytes))


def from_specutils(spectrum: Any, ids: Sequence[Any] | None = None, arm: str = ARM, air: bool = False,
                   source: str = "Spectrum") -> SpectraBatch:
    """A SpectraBatch from one specutils Spectrum (N = 1, or the rows of a 2-D flux).

    ids: one id per row; default ``meta['id']`` (or OBJID/TARGETID), else ``source`` (with
    ``_<row>`` appended for 2-D spectra).
    """
    import astropy.units as u
    from astropy.nddata import StdDevUncertainty

    if not is_spectrum(spectrum):
        raise fail(source, f"expected a specutils Spectrum, got {type(spectrum).__name__}")
    axis_index = getattr(spectrum, "spectral_axis_index", None)
    flux_q = u.Quantity(spectrum.flux)
    if flux_q.ndim not in (1, 2):
        raise fail(source, f"flux has {flux_q.ndim} dimensions; only 1-D or 2-D (objects x pixels) spectra")
    transpose = flux_q.ndim == 2 and axis_index == 0
    try:
        wave = u.Quantity(spectrum.spectral_axis).to_value(u.AA, equivalencies=u.spectral())
    except u.UnitConversionError:
        raise fail(source, f"spectral axis unit {spectrum.spectral_axis.unit} is not a spectral unit") from None
    wave = np.asarray(wave, dtype=np.float64)
    flux = np.asarray(flux_q.value, dtype=np.float64)
    if transpose:
        flux = flux.T
    flux = np.atleast_2d(flux)
    if flux.shape[-1] != wave.size:
        raise fail(source, f"flux has {flux.shape[-1]} pixels but the spectral axis {wave.size} (mismatched lengths)")
    factor = flux_factor(flux_q.unit if flux_q.unit != u.dimensionless_unscaled else None, wave, source)
    noise = None
    uncertainty = getattr(spectrum, "uncertainty", None)
    if uncertainty is not None:
        try:
            std = uncertainty if isinstance(uncertainty, StdDevUncertainty) \
                else uncertainty.represent_as(StdDevUncertainty)
        except (TypeError, ValueError, AttributeError, NotImplementedError) as exc:
            raise fail(source, f"cannot use its uncertainty ({type(uncertainty).__name__}: {exc})") from None
        sigma = np.asarray(std.array, dtype=np.float64)
        if transpose:
            sigma = sigma.T
        sigma_unit = std.unit if std.unit is not None else flux_q.unit
        sigma_factor = factor if sigma_unit == flux_q.unit else \
            flux_factor(sigma_unit if sigma_unit != u.dimensionless_unscaled else None, wave, source)
        noise = np.atleast_2d(sigma) * sigma_factor
    mask = getattr(spectrum, "mask", None)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        mask = np.atleast_2d(mask.T if transpose else mask)
    n = flux.shape[0]
    if ids is None:
        meta = getattr(spectrum, "meta", None) or {}
        base = next((meta[k] for k in ("id", "ID", "OBJID", "objid", "TARGETID", "targetid") if k in meta), None)
        if base is not None and np.ndim(base) == 1 and len(base) == n:
            ids = list(base)
        else:
            base = source if base is None else base
            ids = [base] if n == 1 else [f"{base}_{i}" for i in range(n)]
    elif len(ids) != n:
        raise fail(source, f"{len(ids)} ids for {n} spectra")
    raw = RawArm(wave=wave, flux=flux * factor, noise=noise, noise_kind="error", mask=mask)
    return build_block(source, list(ids), {arm: raw}, air=air)
