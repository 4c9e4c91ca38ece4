"""The constants of the refinement (:class:`RefineConfig`) and of the full-range scan that
informs the network's PDF (:class:`ScanConfig`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..config import ConfigError, from_mapping
from ..constants import SUCCESS_DZ


def _check(where: str, config: Any, checks: list[tuple[str, bool]]) -> None:
    """ConfigError naming the first field whose check failed (``where.name: invalid value``)."""
    for name, ok in checks:
        if not ok:
            raise ConfigError(f"{where}.{name}: invalid value {getattr(config, name)!r}")


@dataclass(frozen=True)
class RefineConfig:
    """Constants of the refinement.

    max_peaks: PDF peaks refined per object (the main one always).
    min_peak_mass: a secondary peak is refined if its +-``window`` PDF mass is at least this.
    window: half-width in z of the coarse scan around each peak (and of the PDF mass windows).
    oversample: table sub-steps per model pixel (the fine redshift step).
    fine_half, fine_step: fine trials every ``fine_step`` sub-steps within +-``fine_half``
        sub-steps of the coarse minimum (a parabola through the best three gives z).
    coarse_templates: continuum vectors used by the coarse scan (the first, largest ones).
    near_dchi2: within a peak, the chi2 minimum nearest the PDF's peak is kept unless the
        best one elsewhere in the +-window scan fits better by at least this.
    lines: add :data:`LINE_GROUPS` to the basis of the fine stage.
    line_sigma_kms: intrinsic Gaussian sigma of the line vectors (the population's median).
    z_err_scale: ``z_err`` is the chi2-curvature error (chi2_min + 1) times this. On
        data/val.h5 the pulls (z - z_true) / curvature error of successes had a robust
        scatter of 3.1 (3.7 at H < 22, 2.6 at H 25-25.5), with both models: template
        mismatch, the one-LSF approximation and the noise correlated between adjacent
        pixels by the rebinning are not in the formal error.
    lsf_sigma_kms: line-spread function sigma; None = from the model's training arms.
    switch_dchi2, switch_mass_ratio: a secondary peak replaces the PDF's main peak only if
        its chi2 is lower by at least ``switch_dchi2`` and it holds at least
        ``switch_mass_ratio`` times the main peak's PDF mass. The default (1.0) keeps the
        main peak unless a secondary one is as probable: on validation data the chi2 alone
        picked the wrong peak more often than the right one (docs/refine.md).
    disagree_dchi2: a secondary peak fitting better than the reported one by at least this
        sets REFINE_DISAGREE.
    max_rchi2: above this reduced chi2 of the best fit, the templates miss part of the
        spectrum (ZWARN_INFO POOR_FIT; not a warning: REFINE_DISAGREE up to model 0.4 included).
    min_density_ratio: a fit is rejected (the network's z reported, REFINE_DISAGREE) if its
        fine scan holds no chi2 minimum, or if it lands where the PDF density is below this
        fraction of its value at the starting peak (off by default: the trained model's
        PDFs are sharper than its errors, and 1e-3 rejected 4% of good fits),
    max_shift, move_dchi2: ... or if it moves z by more than ``max_shift`` in dz/(1+z)
        (300 km/s, 4x the network's sigma_NMAD) from the peak it started from while the
        chi2 there is higher by less than ``move_dchi2`` (unambiguous data may move z
        anywhere in the scan).
    min_valid_pixels: objects with fewer valid pixels are not refined.
    clip_sigma: after the fit, pixels more than this many sigma from the best-fit model get
        zero weight and the fit is redone once (a single wild pixel must not move z); None:
        no clipping. The full-range scan clips the same way against its own best fit.
    dominated_fraction: the fit was dominated by a few pixels (ZWarn.FIT_OUTLIERS, qop <= 3)
        when the clipped pixels held more than this fraction of the first fit's chi2.
    spectype: also fit QSO and star templates and set SPECTYPE QSO / STAR where they fit much
        better than the galaxy basis (:mod:`mtopnet.refine.spectype`).
    chunk_rows: (object, peak) rows per batched product (memory ~ chunk_rows x 60 MB / 64).
    threads: torch threads while refining (restored after); None keeps torch's setting.
        Refinement is many medium-size products: with 2 threads on 2 busy cores they ran
        3.5x slower than with 1 (OpenMP threads spinning), so 1 is the default.
    """

    max_peaks: int = 3
    min_peak_mass: float = 0.05
    window: float = SUCCESS_DZ
    oversample: int = 16
    fine_half: int = 12
    fine_step: int = 3
    coarse_templates: int = 10
    near_dchi2: float = 100.0
    lines: bool = True
    line_sigma_kms: float = 100.0
    z_err_scale: float = 3.0
    lsf_sigma_kms: float | None = None
    switch_dchi2: float = 100.0
    switch_mass_ratio: float = 1.0
    disagree_dchi2: float = 25.0
    max_rchi2: float = 3.0
    min_density_ratio: float = 0.0
    max_shift: float = 1e-3
    move_dchi2: float = 1000.0
    min_valid_pixels: int = 100
    clip_sigma: float | None = 10.0
    dominated_fraction: float = 0.5
    spectype: bool = True
    chunk_rows: int = 64
    threads: int | None = 1

    def __post_init__(self) -> None:
        checks = [("max_peaks", self.max_peaks >= 1), ("min_peak_mass", 0 <= self.min_peak_mass <= 1),
                  ("window", self.window > 0), ("oversample", 1 <= self.oversample <= 64),
                  ("fine_half", self.fine_half >= 1), ("fine_step", 1 <= self.fine_step <= self.fine_half),
                  ("coarse_templates", self.coarse_templates >= 1), ("near_dchi2", self.near_dchi2 >= 0),
                  ("line_sigma_kms", self.line_sigma_kms > 0), ("z_err_scale", self.z_err_scale > 0),
                  ("lsf_sigma_kms", self.lsf_sigma_kms is None or self.lsf_sigma_kms >= 0),
                  ("switch_dchi2", self.switch_dchi2 >= 0), ("switch_mass_ratio", self.switch_mass_ratio >= 0),
                  ("disagree_dchi2", self.disagree_dchi2 >= 0),
                  ("max_rchi2", self.max_rchi2 > 0), ("min_density_ratio", 0 <= self.min_density_ratio < 1),
                  ("max_shift", self.max_shift > 0), ("move_dchi2", self.move_dchi2 >= 0),
                  ("min_valid_pixels", self.min_valid_pixels >= 1),
                  ("clip_sigma", self.clip_sigma is None or self.clip_sigma > 0),
                  ("dominated_fraction", 0 < self.dominated_fraction <= 1),
                  ("chunk_rows", self.chunk_rows >= 1), ("threads", self.threads is None or self.threads >= 1)]
        _check("refine", self, checks)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScanConfig:
    """How prediction runs the full-range template scan and combines it with the network.

    A checkpoint calibrated with the scan stores this (``payload["scan"]``); a model without
    it is run as before (the network's PDF, refined within its peaks).

    n_templates: continuum (PCA) vectors of the refinement basis scanned (the largest ones).
    lines: the basis's emission-line groups scanned with free amplitudes (names of
        :data:`mtopnet.lines.LINE_GROUPS`; () = none). Each adds a vector to every fit: with
        6 PCA vectors, none cost 1.4 ms per object here, three ([OII], [OIII], Halpha) 2.3 ms,
        all 16 19 ms. All 10 PCA vectors and no line groups make a better scan alone (right
        within 0.01 (1+z), first 1,000 spectra of each validation set: cross-simulator
        calibration set 0.918 -> 0.934, quiescent 0.752 -> 0.799; training-prior validation
        0.553 -> 0.568; survey-population held-out 0.872 -> 0.872; same cost), but once
        calibrated with the network (``mtopnet calibrate --scan``) the validation success is
        unchanged (0.6873 against 0.6870), so the default stays. Checked again with model
        0.4.1's network and calibration (``--scan-templates 10 --scan-lines none``): the
        combination's fit 0.798 against 0.796 (mean of the two validation sets' success), the
        full prediction on the validation data 0.6467 against 0.6478: no gain either way.
    n_poly: Legendre polynomials in observed wavelength added to the fit (flux-calibration
        errors); 0 = none.
    sky: also fit the night sky of each of the training instrument's arms with a free
        amplitude (:func:`mtopnet.refine.sky_residual_vectors`: a sky-subtraction residual,
        which the templates would otherwise fit with lines at a wrong redshift). On validation
        data it raised the scan's own success from 0.552 to 0.584 (own simulator) and from 0.909
        to 0.920 (cross-simulator), and the combination's on our own simulator, at no cost on
        the other (``benchmarks/scan_basis.py``, docs/zscan.md). Off for checkpoints calibrated
        before it existed.
    stride: scan every ``stride``-th whole-pixel shift (1 or 2).
    smooth: box-average the scanned vectors over this many pixels (see ZScanner).
    select_below: scan the objects whose network PDF holds less than this within +-0.01 of
        its point estimate (1.0 = every usable object; > 1 scans all, including certain ones).
    w_net, t, gamma: ``log posterior = w_net ln p_net - t (1 - p)^gamma chi2 / (2 s)``
        (+ const; p the network PDF's mass within +-0.01 of its estimate, s the scan's
        reduced chi2), fitted on validation data (:func:`mtopnet.refine.fit_combination`).
    clip_sigma: after the first scan, pixels this many robust sigma from its best fit get
        zero weight and the spectrum is scanned again (wild pixels). Higher than the
        refinement's: the scan's few vectors miss real lines (H-beta, [NII], [SII]...) by
        10-30 sigma in bright galaxies; at 10, 57% of held-out spectra were scanned twice
        for no gain in the scan's own success, at 30, 15%.
    """

    n_templates: int = 6
    lines: tuple[str, ...] = ("[OII]", "[OIII]", "Halpha")
    n_poly: int = 0
    sky: bool = False
    stride: int = 1
    smooth: float = 0.0
    select_below: float = 2.0
    w_net: float = 1.0
    t: float = 1.0
    gamma: float = 0.0
    clip_sigma: float = 30.0

    def __post_init__(self) -> None:
        checks = [("n_templates", self.n_templates >= 1), ("n_poly", 0 <= self.n_poly <= 8),
                  ("clip_sigma", self.clip_sigma > 0),
                  ("stride", self.stride in (1, 2)), ("smooth", self.smooth >= 0),
                  ("select_below", self.select_below >= 0), ("w_net", self.w_net >= 0), ("t", self.t >= 0),
                  ("gamma", self.gamma >= 0)]
        _check("scan", self, checks)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "scan") -> "ScanConfig":
        return from_mapping(cls, raw, where)


__all__ = ["RefineConfig", "ScanConfig"]
