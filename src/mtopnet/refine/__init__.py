"""Template refinement of the network's redshift: a chi2 fit at fine steps inside the PDF's peaks.

The network's PDF is a softmax over bins 0.0012-0.003 wide; its point estimate is good to
a few 1e-4 in dz/(1+z). A template fitter gets 1e-5 but scans the whole redshift range.
Refinement does the fitter's work only where the PDF puts its mass:

1. **Peaks.** For each object, the PDF's main peak (the window of +-0.01 holding the most
   mass, as :func:`mtopnet.quality.pdf_summary` defines ``z``) and up to ``max_peaks - 1``
   further local maxima of the window mass holding >= ``min_peak_mass`` each.
2. **Basis.** Rest-frame templates (the Redrock PCA basis that
   :mod:`mtopnet.baselines.make_templates` builds from the simulator's population: 10
   vectors) plus emission-line groups with free amplitudes (:data:`mtopnet.lines.LINE_GROUPS`), each
   convolved with the instrument's line-spread function (and the lines with an intrinsic
   width), then box-integrated over one pixel of the model's log-lambda grid at every
   1/``oversample`` pixel offset. A trial redshift is a shift in log-lambda, so the model at
   any trial is a gather from this table: no interpolation in the hot path.
3. **Scan.** On the data rebinned to the model grid (:meth:`Preprocessor.rebin`), chi2 of
   the linear least-squares fit, ``chi2 = sum w f^2 - b^T A^-1 b`` with
   ``b = sum w f t``, ``A = sum w t t^T``. Coarse: every pixel step (75 km/s for MOONS LR)
   within +-``window`` in z of each peak, with the continuum vectors only; ``A`` and ``b``
   for all shifts of one (object, peak) come out of one matrix product of a Toeplitz
   arrangement of the data with the pixel-aligned table, batched over all (object, peak)
   pairs (or, given the full-range scan's chi2 at every shift, :class:`CoarseChi2`, read from
   it); its minimum is that of ``chi2 - 2 ln p(z)``. Fine: every ``fine_step``
   1/``oversample``-pixel sub-steps within +-``fine_half`` of two candidates (the coarse
   minimum, and the coarse local minimum nearest the peak), with the full basis (continuum
   + lines), batched over (row, candidate, trial). A parabola through the fine minimum
   gives z; its curvature gives ``z_err`` (``chi2_min + 1``).
4. **Combination** (:func:`combine`): the main peak's refined z is reported, unless another
   peak fits better by ``switch_dchi2`` and holds ``switch_mass_ratio`` times the main
   peak's PDF mass. A fit is rejected (the network's z is kept, ``refined = -1``) if its
   fine scan has no minimum, if it leaves the PDF's support, or if it moves z by more than
   ``max_shift`` without a chi2 gain of ``move_dchi2``. ``REFINE_DISAGREE`` is set for a
   rejected fit and for a better-fitting peak that was not reported (by ``disagree_dchi2``);
   ``poor_fit`` (ZWARN_INFO POOR_FIT) when the best fit's reduced chi2 exceeds ``max_rchi2``
   (template mismatch, which grows with S/N: on validation data such redshifts were right,
   and QOP is not capped for it). ``p_dz01`` is recomputed by
   the caller for the reported z (PDF mass within +-0.01 of it, through the calibration).

Everything is vectorised over objects, peaks and trials (torch batched matrix products);
the only Python loops run over chunks of rows (memory) and over the <= 3 peak columns.

Library use::

    refiner = Refiner.from_model(model)                     # model: trained.TrainedModel
    res = refiner.refine(flux, ivar, pdf, z_net)            # RefineResult of (N,) arrays

The package: :mod:`.settings` (RefineConfig), :mod:`.basis` (the tabulated basis),
:mod:`.kernels` (chi2 of the basis at trial offsets), :mod:`.fit` (scans, parabola,
combination), :mod:`.scan` (the full-range FFT scan of the basis) and :mod:`.combine` (its
summaries and its combination with the network's PDF) and :mod:`.spectype` (QSO and star
fits against the galaxy fit: SPECTYPE). The PDF statistics it uses (peaks, window
mass) are :mod:`mtopnet.quality`'s.
Recalibration of a model's p_dz01 / QOP with refinement applied is ``mtopnet calibrate``
(:mod:`mtopnet.calibrate`). See docs/refine.md for the choices and the measured figures.
"""
from __future__ import annotations

from .basis import RefineBasis, build_basis, sky_residual_vectors
from .combine import (
                      NO_FEATURES_DCHI2,
                      chi2_on_bins,
                      combine_pdf,
                      feature_evidence,
                      fit_combination,
                      network_gate,
                      scan_dispersion,
                      scan_on_bins,
                      scan_summary,
)
from .fit import Refiner, RefineResult, combine, parabola_vertex
from .kernels import CoarseChi2, coarse_chi2, fine_chi2
from .scan import ZScanner, ZScanResult, smooth_length
from .settings import RefineConfig, ScanConfig
from .spectype import SpectypeConfig, SpectypeFitter, SpectypeResult

__all__ = ["NO_FEATURES_DCHI2", "CoarseChi2", "sky_residual_vectors",
           "feature_evidence", "RefineConfig", "ScanConfig", "RefineBasis", "RefineResult", "Refiner", "build_basis",
           "coarse_chi2",
           "fine_chi2", "combine", "parabola_vertex", "ZScanner", "ZScanResult", "smooth_length", "scan_summary",
           "chi2_on_bins", "scan_dispersion", "scan_on_bins", "network_gate", "combine_pdf", "fit_combination",
           "SpectypeConfig", "SpectypeFitter", "SpectypeResult"]
