"""The entrance aperture: how much of a source's light a fibre or a slit lets through.

The image of a source is a centred circular Gaussian of variance ``total_var`` (arcsec2):
the seeing-limited PSF (FWHM from :func:`~mtopnet.instruments.instrument.image_quality`)
convolved with a Gaussian light profile of the source (``source_sigma``; 0 for a point
source), so ``total_var = psf_sigma**2 + source_sigma**2``.

* A **fibre** of diameter ``d`` passes ``1 - exp(-(d/2)**2 / (2 total_var))`` (the
  encircled energy of a 2-D Gaussian), and sees the sky of ``pi (d/2)**2`` arcsec2.
* A **slit** of width ``w``, of which a length ``h`` along the slit is extracted into the
  1-D spectrum (``extraction``), passes ``erf(w / (2 sqrt(2 total_var))) x
  erf(h / (2 sqrt(2 total_var)))``: the two axes of a Gaussian separate. The slit loss at a
  given seeing is one minus that. An extended source of uniform surface brightness ``S``
  gives ``S w`` per arcsec of slit length, so the sky in a spectrum is that of ``w h``
  arcsec2 (:attr:`Aperture.sky_area`).

A Gaussian PSF is the convention of the fibre model (and of the MOONS consortium
simulator); a Moffat PSF's wings would lose a few per cent more light at the same FWHM.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf

from ..config import ApertureConfig

FWHM_PER_SIGMA = 2.3548
"""FWHM / sigma of a Gaussian (the rounding used throughout the fibre model)."""
HALF_LIGHT_PER_SIGMA = 1.1774
"""Half-light radius / sigma of a circular 2D Gaussian light profile (sqrt(2 ln 2))."""


def source_sigma(r_e):
    """The Gaussian sigma (arcsec; scalar or array, as given) of a source whose half-light
    radius is ``r_e`` arcsec: the size the aperture model takes (0 for a point source)."""
    return r_e / HALF_LIGHT_PER_SIGMA


class Aperture:
    """A fibre or a slit, from its :class:`~mtopnet.config.ApertureConfig`."""

    def __init__(self, config: ApertureConfig):
        self.config = config
        self.kind = config.kind

    def __repr__(self) -> str:
        c = self.config
        if self.kind == "fibre":
            return f"Aperture(fibre, diameter {c.diameter} arcsec)"
        return f"Aperture(slit, {c.width} x {c.length} arcsec, {c.extraction} arcsec extracted)"

    @property
    def sky_area(self) -> float:
        """Sky solid angle in one spectrum, arcsec2: the fibre's area, or slit width x extraction."""
        c = self.config
        if self.kind == "fibre":
            return float(np.pi * (0.5 * c.diameter) ** 2)
        return float(c.width * c.extraction)

    def fraction(self, total_var: np.ndarray | float) -> np.ndarray:
        """Fraction of a centred Gaussian image of variance ``total_var`` (arcsec2) that passes.

        total_var: any shape, > 0 -> the same shape, in [0, 1].
        """
        total_var = np.asarray(total_var, dtype=np.float64)
        c = self.config
        if self.kind == "fibre":
            return -np.expm1(-0.5 * (0.5 * c.diameter) ** 2 / total_var)
        scale = 1.0 / (2.0 * np.sqrt(2.0 * total_var))
        return erf(c.width * scale) * erf(c.extraction * scale)

    def slit_loss(self, seeing_fwhm: np.ndarray | float) -> np.ndarray:
        """Fraction of a point source's light lost for an image of FWHM ``seeing_fwhm`` (arcsec)."""
        sigma = np.asarray(seeing_fwhm, dtype=np.float64) / FWHM_PER_SIGMA
        return 1.0 - self.fraction(sigma ** 2)


__all__ = ["Aperture", "FWHM_PER_SIGMA"]
