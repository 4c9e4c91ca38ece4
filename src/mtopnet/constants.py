"""Physical constants and survey-wide thresholds: the one home of each number.

Nothing here imports anything from mtopnet; every other module may import it.
"""
from __future__ import annotations

C_KMS = 299792.458
"""Speed of light, km/s."""

C_AA_PER_S = 2.99792458e18
"""Speed of light, Angstrom/s (f_lambda = f_nu * C_AA_PER_S / lambda^2)."""

SEPARATION_KMS = 1000.0
"""Two redshift solutions closer than this (in dz / (1 + z), as a velocity) are one solution:
DELTACHI2 is measured against the best minimum farther away (Redrock's convention)."""

SUCCESS_DZ = 0.01
"""A redshift is a success when |z - z_true| < SUCCESS_DZ (the MOONS/M-TOPnet criterion);
also the half-width of the PDF windows behind ``p_dz01``."""

# Mask bits of a pixel in a store or a SpectraBatch (documented in docs/store.md).
MASK_BAD = 1
"""No usable signal: outside the throughput curve, the atmosphere is opaque, or a reader found it bad."""
MASK_SKYLINE = 2
"""A strong sky emission line: sky more than SKYLINE_CONTRAST x the local sky continuum."""
MASK_TELLURIC = 4
"""A deep telluric band: LSF-convolved atmospheric transmission below TELLURIC_DEEP."""
MASK_ALL = MASK_BAD | MASK_SKYLINE | MASK_TELLURIC
"""Every bit the package defines (a pixel with any of them is voided by the preprocessing)."""

__all__ = ["C_KMS", "C_AA_PER_S", "SEPARATION_KMS", "SUCCESS_DZ", "MASK_BAD", "MASK_SKYLINE", "MASK_TELLURIC",
           "MASK_ALL"]
