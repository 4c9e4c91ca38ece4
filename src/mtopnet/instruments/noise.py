"""From flux at the top of the atmosphere to a calibrated, sky-subtracted spectrum.

For each arm and object (vectorised over objects):

1. the source's flux density on the arm's fine grid is multiplied by the atmospheric
   transmission, convolved with the LSF and averaged onto pixels;
2. a fraction enters the fibre or slit (seeing-limited PSF convolved with the source's size,
   :mod:`mtopnet.instruments.aperture`);
3. it is converted to electrons (collecting area, telescope x instrument x detector
   efficiency, pixel width, photon energy at the pixel's wavelength);
4. over ``n_sub`` sub-exposures the object, sky and dark electrons are drawn from a Poisson
   law and read noise from a normal law;
5. the sky is subtracted with a model that is wrong by a fraction ``eps`` of the sky,
   ``eps ~ N(0, sky_residual)`` per object and arm (the sky-subtraction residual), and the
   dark current is subtracted;
6. the result is flux-calibrated for a point source (fibre loss of a point source, telluric
   transmission) back to 1e-17 erg/s/cm2/A. ``ivar`` is the inverse of the expected variance,
   including the residual term ``(sky_residual * sky)**2``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import Exposure
from ..constants import MASK_BAD
from .aperture import source_sigma
from .instrument import FINE_PER_PIXEL, Arm, aperture_fraction
from .nuisance import Conditions, fluxcal_factor


@dataclass
class ArmSpectra:
    """One arm's spectra of N objects.

    wave: (L,) vacuum A; flux, ivar: (N, L) float32, 1e-17 erg/s/cm2/A and its inverse
    variance; mask: (N, L) uint8 bits (see ``mtopnet.instruments.instrument``).
    gain: (N, L) or None, what a source's flux density at the top of the atmosphere is
    multiplied by in the calibrated spectrum (fibre loss relative to a point source,
    uncorrected telluric absorption, flux-calibration error); set by
    :func:`observe_arm_conditions` only. sky_error: (N, L) or None, 1-sigma of the
    sky-subtraction scale error in flux units (sky_residual x sky); fully correlated along
    an arm (one error per object and arm), included in ``ivar`` as if independent.
    """

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    gain: np.ndarray | None = None
    sky_error: np.ndarray | None = None


def expected_pixel_flux(arm: Arm, fine_flux: np.ndarray, airmass: float, seeing: float,
                        t_sub: float) -> np.ndarray:
    """Noiseless flux density on pixels after atmosphere and LSF, before the fibre.

    fine_flux: (N, Lf) on ``arm.fine_wave``, 1e-17 erg/s/cm2/A -> (N, L).
    """
    resp = arm.response(airmass, seeing, t_sub)
    return arm.convolve_and_bin(fine_flux * resp.telluric_fine)


def observe_arm(arm: Arm, fine_flux: np.ndarray, exposure: Exposure, rng: np.random.Generator,
                source_sigma: np.ndarray | float = 0.0) -> ArmSpectra:
    """Simulate the calibrated spectra of N objects in one arm.

    fine_flux: (N, Lf) flux density on ``arm.fine_wave`` at the top of the atmosphere,
    1e-17 erg/s/cm2/A. source_sigma: (N,) or scalar, Gaussian sigma of each source's light
    profile in arcsec (0 = point source).
    """
    fine_flux = np.atleast_2d(fine_flux)
    n_sub = exposure.n_sub
    t_sub = exposure.total / n_sub
    resp = arm.response(exposure.airmass, exposure.seeing, t_sub)
    pixel_flux = arm.convolve_and_bin(fine_flux * resp.telluric_fine)  # (N, L)
    fibre = arm.aperture_fraction(exposure.seeing, exposure.airmass, source_sigma)
    fibre = np.broadcast_to(fibre, pixel_flux.shape)
    # Sources emit non-negative flux; clipping only removes round-off of the convolution.
    obj_e = np.clip(pixel_flux, 0, None) * fibre * resp.electrons_per_flux  # per sub-exposure
    sky_e = resp.sky_electrons
    dark_e = resp.dark_electrons
    n = pixel_flux.shape[0]

    raw = rng.poisson(n_sub * (obj_e + sky_e + dark_e)).astype(np.float64)
    raw += rng.normal(0.0, np.sqrt(n_sub) * resp.read_noise, size=raw.shape) if resp.read_noise else 0.0
    eps = rng.normal(0.0, exposure.sky_residual, size=(n, 1)) if exposure.sky_residual else 0.0
    net = raw - n_sub * sky_e * (1.0 + eps) - n_sub * dark_e

    point_fibre = arm.aperture_fraction(exposure.seeing, exposure.airmass, 0.0)
    calib = n_sub * resp.electrons_per_flux * point_fibre * resp.telluric_pixel  # e- per flux unit
    variance = (n_sub * (obj_e + sky_e + dark_e) + n_sub * resp.read_noise ** 2
                + (exposure.sky_residual * n_sub * sky_e) ** 2)
    good = (resp.mask & MASK_BAD) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = np.where(good, net / calib, 0.0)
        ivar = np.where(good, calib ** 2 / variance, 0.0)
    mask = np.broadcast_to(resp.mask, flux.shape).copy()
    return ArmSpectra(arm.wave.copy(), flux.astype(np.float32), ivar.astype(np.float32), mask)


def light_fraction(inst, seeing: np.ndarray | float, airmass: np.ndarray | float,
                   source_re: np.ndarray | float, step: int = 16) -> np.ndarray:
    """Share of each source's light that its calibrated spectrum holds: (N,) in (0, 1].

    The aperture (fibre or slit) passes a fraction of a source's light; the flux
    calibration corrects the fraction a point source loses (as :func:`observe_arm` and
    :func:`observe_arm_conditions` do), so the spectrum of an extended source holds
    ``fraction(source) / fraction(point source)`` of the galaxy's light, 1 for a point
    source. Averaged over every ``step``-th pixel of every arm of ``inst`` (an
    :class:`~mtopnet.instruments.Instrument`; the ratio changes slowly with wavelength).
    seeing: arcsec FWHM at 500 nm at zenith; airmass; source_re: half-light radius in
    arcsec (a 2D Gaussian profile); scalars or (N,) arrays.
    """
    seeing, airmass, source_re = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.float64))
                                                       for v in (seeing, airmass, source_re)))
    parts = []
    for arm in inst.arms:
        source, point = aperture_fractions(inst, arm.wave[::step], seeing, airmass[:, None], source_re)
        parts.append(source / point)
    return np.concatenate(parts, axis=1).mean(axis=1)


def aperture_fractions(inst, wave: np.ndarray, seeing: np.ndarray, airmass: np.ndarray | float,
                       source_re: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fractions of each source's light, and of a point source's, that enter the aperture
    (fibre or slit) of ``inst`` at ``wave`` (L,) A: two (N, L) arrays. seeing (N,): arcsec
    FWHM at 500 nm at zenith; airmass: scalar or (N, 1); source_re (N,): half-light radius in
    arcsec of a 2D Gaussian light profile (:func:`~mtopnet.instruments.instrument.aperture_fraction`)."""
    seeing, wave = seeing[:, None], wave[None, :]
    return (aperture_fraction(inst, wave, seeing, airmass, source_sigma(source_re)[:, None]),
            aperture_fraction(inst, wave, seeing, airmass, 0.0))


def _shift_fine(fine: np.ndarray, shift_fine: np.ndarray) -> np.ndarray:
    """Shift each row by ``shift_fine`` (N,) fine pixels, |shift| <= 1, by linear interpolation.

    A positive shift moves features to larger pixel index (the recorded wavelength of a
    feature is then too large).
    """
    d = shift_fine[:, None]
    prev = np.concatenate([fine[:, :1], fine[:, :-1]], axis=1)
    nxt = np.concatenate([fine[:, 1:], fine[:, -1:]], axis=1)
    return (1.0 - np.abs(d)) * fine + np.clip(d, 0, None) * prev + np.clip(-d, 0, None) * nxt


def observe_arm_conditions(arm: Arm, arm_index: int, fine_flux: np.ndarray, sub_exposure: float,
                           cond: Conditions, rng: np.random.Generator) -> ArmSpectra:
    """Simulate one arm's calibrated spectra of N objects, each under its own conditions.

    fine_flux: (N, Lf) on ``arm.fine_wave`` at the top of the atmosphere, 1e-17
    erg/s/cm2/A. cond: the N objects' :class:`~mtopnet.instruments.nuisance.Conditions`;
    ``cond.airmass`` and ``cond.lsf_scale`` must be the same for all N (a group).
    sub_exposure: s. The steps of :func:`observe_arm`, with these differences:

    * the source (times the atmosphere) is shifted by ``wave_shift`` pixels before the LSF,
      whose width is ``lsf_scale`` x the arm's (the sky keeps the nominal LSF: it is
      subtracted with the same shape, so only its noise would change);
    * the efficiency is ``worst + throughput x (best - worst)`` (where the arm has both);
      the pipeline calibrates with the true efficiency (a standard star sees it);
    * aperture (fibre or slit) losses use each object's seeing and source size; the calibration assumes a
      point source at that seeing;
    * STARE: the sky model is wrong by ``eps ~ N(0, sky_residual)`` per object and arm, and
      ivar includes ``(sky_residual x sky)^2``. XSW: the sky is measured in another fibre
      position for as long as the object, so the subtracted sky carries its own Poisson,
      dark and read noise (variance of sky, dark and read noise doubled, drawn here as a
      normal law) and there is no scale error (eps = 0);
    * the telluric correction divides by ``1 - (1 - telluric_left) (1 - T)``, leaving that
      fraction of the absorption in the flux (the mask is not changed);
    * flux and ivar are multiplied by the flux-calibration error g and 1/g^2.
    """
    fine_flux = np.atleast_2d(fine_flux)
    if np.ptp(cond.airmass) > 0 or np.ptp(cond.lsf_scale) > 0:
        raise ValueError("observe_arm_conditions: airmass and lsf_scale must be shared by the group")
    n = fine_flux.shape[0]
    airmass, lsf_scale = float(cond.airmass[0]), float(cond.lsf_scale[0])
    resp = arm.response(airmass, 0.8, sub_exposure)  # seeing only sets resp.psf_sigma, unused here
    src = fine_flux * resp.telluric_fine
    if np.any(cond.wave_shift):
        src = _shift_fine(src, cond.wave_shift * FINE_PER_PIXEL)
    pixel_flux = arm.convolve_and_bin(src, lsf_scale)  # (N, L)
    fibre, point = aperture_fractions(arm.instrument, arm.wave, cond.seeing, airmass, cond.source_re)  # or slit
    ratio = arm.best_throughput_ratio
    thr = 1.0 + cond.throughput[:, None] * (ratio[None, :] - 1.0) if ratio is not None else np.ones((n, 1))
    epf = resp.electrons_per_flux * thr  # (N, L) per sub-exposure
    obj_e = np.clip(pixel_flux, 0, None) * fibre * epf
    sky_e = resp.sky_electrons * thr
    dark_e = resp.dark_electrons
    n_sub = cond.n_sub[:, None].astype(np.float64)

    raw = rng.poisson(n_sub * (obj_e + sky_e + dark_e)).astype(np.float64)
    if resp.read_noise:
        raw += rng.normal(0.0, 1.0, size=raw.shape) * (np.sqrt(n_sub) * resp.read_noise)
    eps = rng.normal(0.0, 1.0, size=(n, 1)) * cond.sky_residual[:, None]
    eps = np.where(cond.xsw[:, None], 0.0, eps)
    background_var = n_sub * (sky_e + dark_e) + n_sub * resp.read_noise ** 2  # (N, L)
    xsw = np.nonzero(cond.xsw)[0]
    if xsw.size:
        raw[xsw] += rng.normal(0.0, 1.0, size=(xsw.size, raw.shape[1])) * np.sqrt(background_var[xsw])
    net = raw - n_sub * sky_e * (1.0 + eps) - n_sub * dark_e

    t_corr = 1.0 - (1.0 - cond.telluric_left[:, None]) * (1.0 - resp.telluric_pixel[None, :])
    calib = n_sub * epf * point * t_corr
    variance = (n_sub * (obj_e + sky_e + dark_e) + n_sub * resp.read_noise ** 2
                + (cond.sky_residual[:, None] * n_sub * sky_e) ** 2
                + np.where(cond.xsw[:, None], background_var, 0.0))
    cal = fluxcal_factor(cond, arm_index, arm.wave)  # (N, L)
    good = (resp.mask & MASK_BAD) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = np.where(good, net / calib * cal, 0.0)
        ivar = np.where(good, calib ** 2 / variance / cal ** 2, 0.0)
        gain = np.where(good, fibre / point * resp.telluric_pixel[None, :] / t_corr * cal, 0.0)
        sky_error = np.where(good, cond.sky_residual[:, None] * n_sub * sky_e / calib * cal, 0.0)
    mask = np.broadcast_to(resp.mask, flux.shape).copy()
    return ArmSpectra(arm.wave.copy(), flux.astype(np.float32), ivar.astype(np.float32), mask,
                      gain.astype(np.float32), sky_error.astype(np.float32))
