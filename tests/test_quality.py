"""PDF statistics, calibration of p_dz01 and QOP thresholds on synthetic PDFs."""
from __future__ import annotations

import numpy as np
import pytest

from mtopnet.model import ZBinning
from mtopnet.quality import QualityCalibration, choose_qop_thresholds, fit_calibration, pdf_summary


def _synthetic(n, rng, zb):
    """PDFs whose reliability varies: Gaussian peaks of random width, some offset, plus decoys."""
    c = zb.centres
    zt = rng.uniform(0.7, 2.9, n)
    good = rng.random(n) < 0.7
    width = np.where(good, rng.uniform(0.001, 0.02, n), rng.uniform(0.005, 0.02, n))
    peak = np.where(good, zt + rng.normal(0, 0.5, n) * width, rng.uniform(0.6, 3.0, n))
    pdf = np.exp(-0.5 * ((c[None] - peak[:, None]) / width[:, None]) ** 2)
    decoy = rng.uniform(0.6, 3.0, n)
    amp = np.where(good, rng.uniform(0, 0.2, n), rng.uniform(0.3, 1.5, n))
    pdf += amp[:, None] * np.exp(-0.5 * ((c[None] - decoy[:, None]) / 0.01) ** 2)
    return pdf / pdf.sum(axis=1, keepdims=True), zt


def test_summary_of_a_narrow_gaussian():
    zb = ZBinning()
    pdf = np.exp(-0.5 * ((zb.centres - 1.5) / 0.004) ** 2)[None]
    s = pdf_summary(pdf, zb.edges)
    assert s["z"][0] == pytest.approx(1.5, abs=5e-4)
    assert s["z_mean"][0] == pytest.approx(1.5, abs=5e-4)
    assert s["z_hi68"][0] - s["z_lo68"][0] == pytest.approx(2 * 0.004, rel=0.15)
    assert s["z_hi95"][0] - s["z_lo95"][0] == pytest.approx(2 * 1.96 * 0.004, rel=0.15)
    assert s["p_window"][0] > 0.98 and s["n_peaks"][0] == 1


def test_two_peaks_are_counted_and_bad_rows_survive():
    zb = ZBinning()
    c = zb.centres
    pdf = np.stack([np.exp(-0.5 * ((c - 1.0) / 0.003) ** 2) + 0.8 * np.exp(-0.5 * ((c - 2.0) / 0.003) ** 2),
                    np.zeros_like(c), np.full_like(c, np.nan)])
    s = pdf_summary(pdf, zb.edges)
    assert s["n_peaks"][0] == 2 and s["z"][0] == pytest.approx(1.0, abs=2e-3)
    for v in s.values():
        assert np.all(np.isfinite(v))


def test_calibration_reaches_the_requested_purities(seed):
    rng = np.random.default_rng(0)
    zb = ZBinning(0.6, 3.0, 0.003)
    pdf, zt = _synthetic(6000, rng, zb)
    cal = fit_calibration(pdf_summary(pdf, zb.edges), zt)
    rep = cal.report
    assert rep["qop4"]["purity"] >= 0.99 and rep["qop4"]["n"] > 0
    assert rep["qop3"]["purity"] >= 0.90 and rep["qop3"]["n"] > 0
    assert rep["qop2"]["purity"] >= 0.50
    # on fresh PDFs from the same distribution: close to the targets, and p_dz01 is calibrated
    pdf2, zt2 = _synthetic(6000, rng, zb)
    s2 = pdf_summary(pdf2, zb.edges)
    p, qop = cal.apply(s2)
    ok = np.abs(s2["z"] - zt2) < 0.01
    assert ok[qop == 4].mean() >= 0.97 and ok[qop == 3].mean() >= 0.85
    assert abs(p.mean() - ok.mean()) < 0.03
    assert QualityCalibration.from_dict(cal.as_dict()) == cal


def test_thresholds_respect_ties_and_empty_classes():
    score = np.array([3, 3, 2, 2, 1, 1, 0, 0], float)
    success = np.array([1, 1, 1, 0, 1, 0, 0, 0], bool)
    # qop 4: the two 3s (all successes); qop 3: the longest run after them at >= 50%
    # (scores 2 and 1: 2 of 4); qop 2: nothing left reaches 40% -> same threshold as qop 3
    t4, t3, t2 = choose_qop_thresholds(score, success, (0.99, 0.5, 0.4), confidence_z=0.0)
    assert (t4, t3, t2) == (3, 1, 1)
    t = choose_qop_thresholds(score, np.zeros(8, bool))
    assert t == [np.inf, np.inf, np.inf]


def test_interval_levels_per_qop_class_hold_their_coverage():
    """Two classes: sharp PDFs centred on the truth and PDFs whose truth is often outside; the
    class levels give each class its own 68% coverage, and survive the checkpoint round trip."""
    from mtopnet.quality import QualityCalibration, fit_levels_by_class, interval_coverage
    rng = np.random.default_rng(3)
    edges = np.linspace(0.0, 3.0, 301)
    mid = 0.5 * (edges[1:] + edges[:-1])
    n = 400
    z_true = rng.uniform(0.5, 2.5, n)
    qop = np.where(np.arange(n) < n // 2, 4, 1)
    width = np.where(qop == 4, 0.02, 0.05)
    centre = z_true + np.where(qop == 4, 0.0, rng.normal(0, 0.1, n))
    pdf = np.exp(-0.5 * ((mid[None, :] - centre[:, None]) / width[:, None]) ** 2)
    pdf /= pdf.sum(1, keepdims=True)
    levels = fit_levels_by_class(pdf, edges, z_true, qop, min_objects=100)
    assert set(levels) == {"1", "4"}
    for q in ("1", "4"):
        sel = qop == int(q)
        assert abs(interval_coverage(pdf[sel], edges, z_true[sel], levels[q][0]) - 0.68) < 0.03
    assert levels["4"][0] < levels["1"][0]  # the well-centred class needs a smaller level
    raw = QualityCalibration(mean=(0.0,), std=(1.0,), coef=(1.0,), intercept=0.0, iso_x=(), iso_y=(),
                             thresholds=(1.0, 0.0, -1.0), interval_levels_by_qop=levels).as_dict()
    back = QualityCalibration.from_dict(raw)
    assert back.levels_for(4) == tuple(levels["4"]) and back.levels_for(2) == (0.68, 0.95)


def test_capped_p_and_qop_follow_the_flags():
    from mtopnet.columns import CAPPED_P_MAX, ZWarn, capped_p, capped_qop
    zwarn = np.array([0, int(ZWarn.OUT_OF_DOMAIN), int(ZWarn.FIT_OUTLIERS), int(ZWarn.NODATA),
                      int(ZWarn.NO_FEATURES), int(ZWarn.REFINE_DISAGREE)])
    p = np.array([0.99, 0.99, 0.99, 0.99, 0.3, 0.99], dtype=np.float32)
    assert np.array_equal(capped_qop(np.full(6, 4), zwarn), [4, 2, 3, 1, 2, 2])
    assert np.allclose(capped_p(p, zwarn), [0.99, CAPPED_P_MAX, 0.99, 0.0, 0.3, 0.99])
    assert capped_p(p, zwarn).dtype == np.float32
    assert np.allclose(capped_p(p, zwarn, caps=False), [0.99, 0.99, 0.99, 0.0, 0.3, 0.99])
