"""From flux at the top of the atmosphere to a calibrated, sky-subtracted spectrum.

For each arm and object (vectorised over objects):

1. the source's flux density on the arm's fine grid is multiplied by the atmospheric
   transmission, convolved with the LSF and averaged onto pixels;
2. a fraction enters the fibre (seeing-limited PSF convolved with the source's size);
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
from .instrument import Arm


@dataclass
class ArmSpectra:
    """One arm's spectra of N objects.

    wave: (L,) vacuum A; flux, ivar: (N, L) float32, 1e-17 erg/s/cm2/A and its inverse
    variance; mask: (N, L) uint8 bits (see ``mtopnet.instruments.instrument``).
    """

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray


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
    fibre = arm.fibre_fraction(exposure.seeing, exposure.airmass, source_sigma)
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

    point_fibre = arm.fibre_fraction(exposure.seeing, exposure.airmass, 0.0)
    calib = n_sub * resp.electrons_per_flux * point_fibre * resp.telluric_pixel  # e- per flux unit
    variance = (n_sub * (obj_e + sky_e + dark_e) + n_sub * resp.read_noise ** 2
                + (exposure.sky_residual * n_sub * sky_e) ** 2)
    good = (resp.mask & MASK_BAD) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = np.where(good, net / calib, 0.0)
        ivar = np.where(good, calib ** 2 / variance, 0.0)
    mask = np.broadcast_to(resp.mask, flux.shape).copy()
    return ArmSpectra(arm.wave.copy(), flux.astype(np.float32), ivar.astype(np.float32), mask)
