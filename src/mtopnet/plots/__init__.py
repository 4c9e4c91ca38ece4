"""Figures, one function per figure: :mod:`.simulation` (simulated spectra, S/N vs magnitude)
and :mod:`.evaluation` (the evaluation report)."""
from __future__ import annotations

from .simulation import continuum_snr, flat_fnu_snr, plot_examples, plot_snr_vs_mag

__all__ = ["continuum_snr", "flat_fnu_snr", "plot_examples", "plot_snr_vs_mag"]
