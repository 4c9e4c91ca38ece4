"""Metrics against the truth: matching by id and numbers that could be wrong."""
from __future__ import annotations

import numpy as np
import pytest

from mtopnet.evaluate import compute_metrics, match_ids, metrics_markdown


def test_match_ids_handles_order_missing_and_strings():
    assert list(match_ids(np.array([5, 3, 9]), np.array([3, 4, 5]))) == [2, 0, -1]
    assert list(match_ids(np.array(["b", "x"]), np.array(["a", "b"]))) == [1, -1]


def test_metrics_on_a_known_catalogue():
    n = 100
    truth = {"id": np.arange(n), "z": np.full(n, 1.0), "hmag": np.linspace(20.5, 25.4, n),
             "logmstar": np.full(n, 10.0), "logsfr": np.full(n, 1.0), "type": np.r_[np.zeros(50), np.ones(50)]}
    z = np.full(n, 1.0)
    z[:10] = 1.2  # 10% catastrophic failures
    cat = {"TARGETID": np.arange(n)[::-1].copy(), "Z": z[::-1].copy(), "Z_LO68": np.full(n, 0.99),
           "Z_HI68": np.full(n, 1.01), "Z_LO95": np.full(n, 0.9), "Z_HI95": np.full(n, 1.1),
           "QOP": np.where(z[::-1] == 1.0, 4, 1), "P_DZ01": np.where(z[::-1] == 1.0, 0.95, 0.05),
           "LOGMSTAR": np.full(n, 10.1), "LOGMSTAR_ERR": np.full(n, 0.2),
           "LOGSFR": np.full(n, 1.0), "LOGSFR_ERR": np.full(n, 0.1)}
    m = compute_metrics(cat, truth)
    r = m["redshift"]["all"]
    assert r["frac_dz01"] == pytest.approx(0.9) and r["catastrophic"] == pytest.approx(0.1)
    assert r["qop4"]["purity"] == 1.0 and r["qop4"]["completeness"] == 1.0
    assert r["coverage68"] == 1.0 and r["coverage95"] == 1.0  # the intervals all bracket z_true = 1
    assert m["logmstar"]["all"]["bias"] == pytest.approx(0.1) and m["logmstar"]["all"]["coverage68"] == 1.0
    assert m["logsfr"]["star-forming"]["n"] == 50
    assert sum(b["n"] for b in m["redshift_by_hmag"].values()) == n
    assert "| all | 100 |" in metrics_markdown(m)


def test_properties_are_graded_against_the_light_in_the_spectrum():
    """With labels/light_fraction, the truth of LOGMSTAR / LOGSFR is the light the spectrum
    holds (mtopnet.store.spectrum_property); without it, the whole galaxy's."""
    n = 40
    truth = {"id": np.arange(n), "z": np.full(n, 1.0), "hmag": np.full(n, 22.0), "logmstar": np.full(n, 10.0),
             "logsfr": np.full(n, 1.0), "type": np.zeros(n)}
    cat = {"TARGETID": np.arange(n), "Z": np.full(n, 1.0), "LOGMSTAR": np.full(n, 9.7), "LOGMSTAR_ERR": np.full(n, 0.1),
           "LOGSFR": np.full(n, 0.7), "LOGSFR_ERR": np.full(n, 0.1)}
    whole = compute_metrics(cat, truth)
    assert whole["logmstar"]["all"]["bias"] == pytest.approx(-0.3)
    half = compute_metrics(cat, {**truth, "light_fraction": np.full(n, 10 ** -0.3)})
    assert half["logmstar"]["all"]["bias"] == pytest.approx(0.0, abs=1e-6)
    assert half["logsfr"]["star-forming"]["bias"] == pytest.approx(0.0, abs=1e-6)


def test_spectrum_property():
    from mtopnet.store import spectrum_property
    lab = {"logmstar": np.array([10.0, 11.0, np.nan]), "light_fraction": np.array([1.0, 0.1, 0.5])}
    assert np.allclose(spectrum_property(lab, "logmstar"), [10.0, 10.0, np.nan], equal_nan=True)
    assert np.array_equal(spectrum_property({"logsfr": np.array([1.5])}, "logsfr"), [1.5])
    assert np.isnan(spectrum_property({"logsfr": np.array([1.0]), "light_fraction": np.array([0.0])}, "logsfr")[0])
    with pytest.raises(ValueError, match="hmag"):
        spectrum_property(lab, "hmag")
    with pytest.warns(UserWarning, match="add_light_fraction"):  # simulated before the label existed
        assert spectrum_property({"logmstar": np.array([10.0]), "r_e": np.array([0.3])}, "logmstar")[0] == 10.0
