"""Preprocessing: rebinning, continuum, channels, and robustness to bad input."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import TINY_PRE
from mtopnet.config import ConfigError, UserError
from mtopnet.lines import LINES
from mtopnet.preprocess import PreprocessConfig, Preprocessor, rebin_matrix
from mtopnet.store import SpectraBatch
from mtopnet.testing import _EMISSION, toy_batch


def _flat_batch(n, waves, value=2.0, ivar=4.0):
    arms = {a: {"wave": w, "flux": np.full((n, len(w)), value, np.float32),
                "ivar": np.full((n, len(w)), ivar, np.float32), "mask": np.zeros((n, len(w)), np.uint8)}
            for a, w in waves.items()}
    return SpectraBatch(ids=np.arange(n), arms=arms)


def _assert_finite(x):
    for arr in (x.spectrum, x.continuum, x.valid_fraction, x.scale, x.noise):
        assert np.all(np.isfinite(arr))


def test_grid_is_logarithmic():
    cfg = PreprocessConfig()
    e = cfg.wave_edges
    assert len(e) == cfg.n_pix + 1 and e[0] == pytest.approx(6470) and e[-1] == pytest.approx(18000)
    assert np.allclose(np.diff(np.log(e)), cfg.dloglam)
    assert 60 < cfg.pixel_kms < 90


def test_rebin_matrix_conserves_native_pixels():
    wave = np.linspace(7000, 8000, 500)
    m = rebin_matrix(wave, PreprocessConfig().wave_edges)
    frac = np.asarray(m.sum(axis=0)).ravel()
    assert np.allclose(frac[1:-1], 1.0)  # every interior native pixel lands fully on the grid


def test_constant_spectrum_is_flat_and_ivar_adds(toy_waves):
    pre = Preprocessor(TINY_PRE)
    flux, ivar, bad = pre.rebin(_flat_batch(2, toy_waves))
    covered = ivar[0] > 0
    assert np.allclose(flux[0, covered], 2.0, rtol=1e-5)
    # ~ (grid pixel width / native pixel width) native pixels of ivar 4 each
    assert np.median(ivar[0, covered]) > 4.0
    assert not bad.any()
    x = pre(_flat_batch(2, toy_waves))
    assert x.scale[0] == pytest.approx(2.0, rel=1e-4)
    assert np.allclose(x.spectrum[0, 0], 0.0, atol=1e-5)  # no residual
    assert np.allclose(x.continuum[0, :TINY_PRE.n_continuum][x.continuum[0, TINY_PRE.n_continuum:-3] > 0.5], 1.0,
                       atol=1e-3)


def test_inverse_variance_weighting_of_overlapping_arms():
    w = np.linspace(9000, 9500, 200)
    b = _flat_batch(1, {"a": w, "b": w.copy() + 1e-6})
    b.arms["b"]["flux"][:] = 5.0
    b.arms["b"]["ivar"][:] = 12.0  # 3x the weight of arm a (ivar 4, flux 2)
    flux, ivar, _ = Preprocessor(TINY_PRE).rebin(b)
    covered = ivar[0] > 0
    assert np.allclose(np.median(flux[0, covered]), (2 * 4 + 5 * 12) / 16, rtol=1e-3)


def test_emission_lines_survive_in_the_residual(toy_waves):
    b = toy_batch(6, toy_waves, seed=4, noise=0.002, sky_fraction=0.0)
    cfg = TINY_PRE
    x = Preprocessor(cfg)(b)
    for i in np.flatnonzero(b.labels["type"] == 0):
        peak = cfg.wave[np.argmax(x.spectrum[i, 0])] / (1 + b.labels["z"][i])
        strong = [line.wave for line in LINES if line.name in _EMISSION]
        assert min(abs(peak - s) / s for s in strong) < 3 * cfg.dloglam


def test_masked_pixels_get_zero_weight(toy_waves):
    b = _flat_batch(1, toy_waves)
    b.arms["A"]["mask"][:] = 2
    b.arms["A"]["flux"][:] = 1e6  # would dominate if used
    x = Preprocessor(TINY_PRE)(b)
    assert x.scale[0] == pytest.approx(2.0, rel=1e-4)
    assert 0 < x.valid_fraction[0] < 0.8


def test_all_masked_empty_and_zero_objects(toy_waves):
    b = _flat_batch(3, toy_waves)
    b.arms["A"]["ivar"][1] = 0
    b.arms["B"]["ivar"][1] = 0
    b.arms["C"]["ivar"][1] = 0
    b.arms["A"]["flux"][2] = np.nan
    x = Preprocessor(TINY_PRE)(b)
    _assert_finite(x)
    assert x.valid_fraction[1] == 0 and np.all(x.spectrum[1] == 0)
    assert x.bad_input[2] and not x.bad_input[0]
    empty = SpectraBatch(ids=np.arange(2), arms={"A": {"wave": np.zeros(0), "flux": np.zeros((2, 0), np.float32),
                                                       "ivar": np.zeros((2, 0), np.float32),
                                                       "mask": np.zeros((2, 0), np.uint8)}})
    x = Preprocessor(TINY_PRE)(empty)
    _assert_finite(x)
    assert x.spectrum.shape == (2, 2, TINY_PRE.n_pix) and np.all(x.valid_fraction == 0)
    x = Preprocessor(TINY_PRE)(_flat_batch(0, toy_waves))
    assert x.spectrum.shape == (0, 2, TINY_PRE.n_pix)


def test_arm_outside_the_grid_is_ignored():
    x = Preprocessor(TINY_PRE)(_flat_batch(1, {"uv": np.linspace(3000, 4000, 100)}))
    assert x.valid_fraction[0] == 0
    _assert_finite(x)


def test_bad_shapes_and_waves_are_user_errors(toy_waves):
    b = _flat_batch(2, toy_waves)
    b.arms["A"]["ivar"] = b.arms["A"]["ivar"][:, :-1]
    with pytest.raises(UserError):
        Preprocessor(TINY_PRE)(b)
    b = _flat_batch(1, {"A": np.linspace(9000, 8000, 50)})
    with pytest.raises(UserError, match="increasing"):
        Preprocessor(TINY_PRE)(b)


def test_config_validation_names_fields():
    with pytest.raises(ConfigError, match="n_continuum"):
        PreprocessConfig(n_pix=4096, n_continuum=100)
    with pytest.raises(ConfigError, match="preprocess.bogus"):
        PreprocessConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="preprocess.n_pix"):
        PreprocessConfig.from_dict({"n_pix": "many"})


_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, -1.0, 1e30]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flux=hnp.arrays(np.float32, (3, 40), elements=_floats),
       ivar=hnp.arrays(np.float32, (3, 40), elements=_floats),
       mask=hnp.arrays(np.uint8, (3, 40), elements=st.integers(0, 255)))
def test_never_emits_nan_or_inf(flux, ivar, mask):
    wave = np.linspace(9000, 9400, 40)
    b = SpectraBatch(ids=np.arange(3), arms={"A": {"wave": wave, "flux": flux, "ivar": ivar, "mask": mask},
                                             "B": {"wave": wave + 5000, "flux": flux[::-1].copy(),
                                                   "ivar": ivar[::-1].copy(), "mask": mask}})
    x = Preprocessor(TINY_PRE)(b)
    _assert_finite(x)
    assert np.all((x.valid_fraction >= 0) & (x.valid_fraction <= 1))
    assert np.all(np.abs(x.spectrum[:, 0]) <= TINY_PRE.residual_clip)
    assert np.all((x.spectrum[:, 1] >= 0) & (x.spectrum[:, 1] <= 1))


def test_pixels_outside_the_training_coverage_are_voided_and_flagged(toy_waves):
    """A spectrum with data where the model saw none (e.g. between two arms) is cut back to the coverage."""
    cfg = TINY_PRE
    batch = toy_batch(4, toy_waves, seed=5, sky_fraction=0.0)
    plain = Preprocessor(cfg)
    coverage = plain.coverage({k: v["wave"] for k, v in batch.arms.items()})
    assert coverage.any() and not coverage.all()
    narrow = coverage.copy()
    narrow[: cfg.n_pix // 2] = False  # pretend the model never saw the blue half
    cut = Preprocessor(cfg, coverage=narrow)(batch)
    full = plain(batch)
    assert cut.outside_coverage.all() and not full.outside_coverage.any()
    assert (cut.spectrum[:, 1, : cfg.n_pix // 2] == 0).all()  # zero weight where voided
    assert (full.spectrum[:, 1, : cfg.n_pix // 2] > 0).any()
    same = Preprocessor(cfg, coverage=coverage)(batch)  # the training coverage itself changes nothing
    assert not same.outside_coverage.any()
    assert np.array_equal(same.spectrum, full.spectrum) and np.array_equal(same.continuum, full.continuum)
