"""Fuzz test of reading and predicting (issue 13, acceptance): random text spectra through
:mod:`mtopnet.io` and :func:`mtopnet.predict.predict_batches` with the tiny model.

Random arm counts and gaps, NaN/inf/zero/negative values, single outliers, unit strings
(valid and not) and truncated files. Properties: no traceback (only UserError/ConfigError,
or rows), no hang (hypothesis deadline), no NaN in a row without a zwarn bit, and no
qop >= 3 for pure noise. The default suite runs ~50 examples; the slow suite 10,000.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtopnet.config import UserError
from mtopnet.io import read_spectra
from mtopnet.predict import predict_batches
from mtopnet.trained import load_model

UNITS = {"": 1.0, "[Angstrom]": 1.0, "[nm]": 0.1, "[um]": 1e-4, "[furlong]": 1.0}
FLUX_UNITS = {"": 1.0, "[1e-17 erg/s/cm2/A]": 1.0, "[erg/s/cm2/A]": 1e-17, "[W/m2/nm]": 1e-17 * 1e-3 * 10,
              "[bananas]": 1.0}

spectra = st.fixed_dictionaries({
    "n_arms": st.integers(1, 3),
    "n_pix": st.integers(5, 600),
    "gap": st.floats(0.0, 0.5),
    "signal": st.booleans(),
    "z": st.floats(0.6, 2.9),
    "bad": st.lists(st.sampled_from(["nan", "inf", "-inf", "zero", "negative", "outlier", "zero_err",
                                     "neg_err"]), max_size=4),
    "wave_unit": st.sampled_from(sorted(UNITS)),
    "flux_unit": st.sampled_from(sorted(FLUX_UNITS)),
    "truncate": st.one_of(st.none(), st.floats(0.0, 1.0)),
    "seed": st.integers(0, 2**31 - 1),
})


def _text(spec: dict) -> tuple[str, bool]:
    """A text spectrum file of ``spec`` (its content) and whether it holds signal."""
    rng = np.random.default_rng(spec["seed"])
    lo, hi = 6500.0, 18000.0
    edges = np.linspace(lo, hi, spec["n_arms"] + 1)
    waves = []
    for a in range(spec["n_arms"]):
        width = edges[a + 1] - edges[a]
        start = edges[a] + 0.5 * spec["gap"] * width
        waves.append(np.linspace(start, edges[a + 1], max(spec["n_pix"] // spec["n_arms"], 2)))
    wave = np.concatenate(waves)
    sigma = np.full(len(wave), 0.5)
    flux = rng.normal(0.0, sigma)
    if spec["signal"]:
        flux += 2.0 + 40.0 * np.exp(-0.5 * ((wave - 6564.6 * (1 + spec["z"])) / 8.0) ** 2)
        flux += 30.0 * np.exp(-0.5 * ((wave - 5008.2 * (1 + spec["z"])) / 8.0) ** 2)
    err = sigma.copy()
    for kind in spec["bad"]:
        j = int(rng.integers(len(wave)))
        if kind in ("nan", "inf", "-inf"):
            flux[j] = float(kind)
        elif kind == "zero":
            flux[j] = 0.0
        elif kind == "negative":
            flux[j] = -abs(flux[j]) - 50.0
        elif kind == "outlier":
            flux[j] = 1e6
        elif kind == "zero_err":
            err[j] = 0.0
        else:
            err[j] = -1.0
    wave_out = wave * UNITS[spec["wave_unit"]]
    fscale = FLUX_UNITS[spec["flux_unit"]]
    lines = [f"wave{spec['wave_unit']} flux{spec['flux_unit']} err{spec['flux_unit']}"]
    lines += [f"{w:.6f} {f * fscale:.6e} {e * fscale:.6e}" for w, f, e in zip(wave_out, flux, err, strict=True)]
    text = "\n".join(lines) + "\n"
    if spec["truncate"] is not None:
        text = text[: int(spec["truncate"] * len(text))]
    return text, spec["signal"]


def _check(model, spec: dict) -> None:
    text, signal = _text(spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spectrum.txt"
        path.write_text(text)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows = [r for batch_rows in [list(predict_batches(model, read_spectra([str(path)])))]
                        for r in batch_rows]
        except UserError:  # ConfigError is a UserError: a one-line refusal is a valid answer
            return
    for r in rows:
        zwarn = np.asarray(r["ZWARN"])
        for name in ("Z", "Z_MEAN", "P_DZ01", "LOGMSTAR", "LOGSFR", "Z_LO68", "Z_HI68"):
            nan = ~np.isfinite(np.asarray(r[name], dtype=np.float64))
            assert not np.any(nan & (zwarn == 0)), (name, spec)
        if not signal and not any(k == "outlier" for k in spec["bad"]):
            assert np.all(np.asarray(r["QOP"]) < 3), (r["QOP"], r["ZWARN"], spec)


@pytest.fixture(scope="module")
def fuzz_model(tiny_model_path):
    return load_model(tiny_model_path)


@settings(max_examples=50, deadline=20_000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(spec=spectra)
def test_fuzz_read_and_predict(fuzz_model, spec):
    """Issue 13 (acceptance): random bad text spectra: a row or a one-line UserError, no NaN
    without a flag, no qop >= 3 without signal (50 examples)."""
    _check(fuzz_model, spec)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=20_000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
@given(spec=spectra)
def test_fuzz_read_and_predict_10000(fuzz_model, spec):
    """Issue 13 (acceptance): as test_fuzz_read_and_predict, 10,000 examples (slow suite)."""
    _check(fuzz_model, spec)
