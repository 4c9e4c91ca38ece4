"""Full-range FFT redshift scan (mtopnet.refine.scan): exactness, redshift recovery, masks, scale, combination."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from mtopnet.config import ConfigError, UserError
from mtopnet.model import ZBinning
from mtopnet.preprocess import PreprocessConfig
from mtopnet.refine import (
    RefineConfig,
    Refiner,
    ScanConfig,
    ZScanner,
    build_basis,
    chi2_on_bins,
    combine_pdf,
    fit_combination,
    scan_summary,
    smooth_length,
)
from mtopnet.templates import read_templates

C_KMS = 299792.458
LSF_KMS = 30.0
PRE = PreprocessConfig()  # MOONS LR grid: 4096 pixels, 6470-18000 A
Z_RANGE = (0.5, 3.3)
# strong emission lines (vacuum A): masked in the "no line" spectra, so z must come from the continuum
LINES = (1908.7, 3727.1, 3729.9, 3869.9, 4102.9, 4341.7, 4862.7, 4960.3, 5008.2, 6549.9, 6564.6, 6585.3,
         6718.3, 6732.7, 9071.1, 9533.2, 10833.3, 10941.1)


@pytest.fixture(scope="module")
def basis():
    return build_basis(PRE, Z_RANGE, LSF_KMS, RefineConfig(lines=False))


def continuum_spectrum(z: float, coef=(1.0, 0.3, -0.2)) -> np.ndarray:
    """(n_pix,) a PCA combination at z built without the scanner's table: the LSF-convolved rest
    templates interpolated at 32 points per pixel and averaged (z need not be on the lattice)."""
    wave, flux = read_templates()
    dln = math.log(wave[1] / wave[0])
    rest = gaussian_filter1d(np.tensordot(coef, flux[:len(coef)], 1), LSF_KMS / C_KMS / dln, mode="nearest")
    edges = PRE.wave_edges
    sub = np.exp(np.log(edges[:-1])[:, None] + (np.arange(32) + 0.5)[None, :] / 32 * PRE.dloglam)
    return np.interp(np.log(sub / (1 + z)), np.log(wave), rest).mean(axis=1) * 300.0


def line_mask(z: float, half_kms: float = 600.0) -> np.ndarray:
    """(n_pix,) bool: pixels within +-half_kms of a strong emission line at z."""
    ln_pix = np.log(PRE.wave)
    near = np.zeros(PRE.n_pix, bool)
    for lam in LINES:
        near |= np.abs(ln_pix - math.log(lam * (1 + z))) < half_kms / C_KMS
    return near


def small_scanner(n_poly: int = 0, stride: int = 1, weight_floor: float = 1e-6) -> ZScanner:
    """P = 256 pixels, K = 3 smooth vectors (no compact features, so no vector is ever a sliver)."""
    u = 600
    x = np.linspace(0, 20, u)
    table = np.stack([1 + 0.3 * np.sin(x), np.cos(3 * x), np.exp(-((x - 10) / 3) ** 2)], 1)
    dl, ln0 = 1e-3, math.log(6000.0)
    x0 = ln0 + 0.5 * dl - math.log(1.5) - 100 * dl
    return ZScanner(table, x0, dl, ln0, 256, (0.3, 0.6), n_poly=n_poly, stride=stride, weight_floor=weight_floor)


def direct_chi2(sc: ZScanner, table: np.ndarray, flux: np.ndarray, ivar: np.ndarray) -> np.ndarray:
    """Brute-force chi2 (N, S) on the scanner's grid (increasing z) by weighted least squares."""
    p = sc.n_pix
    shifts = sc.shift_lo + sc.stride * np.arange(sc.n_trial)[::-1]
    poly = np.polynomial.legendre.legvander(np.linspace(-1, 1, p), sc.n_poly - 1) if sc.n_poly else np.zeros((p, 0))
    out = np.zeros((len(flux), len(shifts)))
    for i in range(len(flux)):
        sw = np.sqrt(ivar[i].astype(np.float64))
        y = flux[i] * sw
        for si, s in enumerate(shifts):
            rows = np.arange(p) + s
            t = np.zeros((p, table.shape[1]))
            inside = (rows >= 0) & (rows < len(table))
            t[inside] = table[rows[inside]]
            m = np.concatenate([t, poly], 1) * sw[:, None]
            c, *_ = np.linalg.lstsq(m, y, rcond=None)
            out[i, si] = ((y - m @ c) ** 2).sum()
    return out


@pytest.mark.parametrize("n_poly", [0, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_fft_chi2_equals_direct(n_poly, stride):
    rng = np.random.default_rng(11)
    sc = small_scanner(n_poly, stride)
    u = 600
    x = np.linspace(0, 20, u)
    table = np.stack([1 + 0.3 * np.sin(x), np.cos(3 * x), np.exp(-((x - 10) / 3) ** 2)], 1)
    flux = (rng.normal(size=(3, 256)) + 2).astype(np.float32)
    ivar = rng.uniform(0.5, 2, (3, 256)).astype(np.float32)
    ivar[1, :100] = 0
    ivar[2, rng.random(256) < 0.3] = 0
    res = sc.scan(flux, ivar)
    ref = direct_chi2(sc, table, flux, ivar)
    assert res.chi2.shape == ref.shape == (3, sc.n_trial)
    np.testing.assert_allclose(res.chi2, ref, rtol=1e-4)
    np.testing.assert_array_equal(res.best, np.argmin(ref, axis=1))
    np.testing.assert_array_equal(sc.scan(flux, ivar, chunk=2).chi2, res.chi2)  # a partial last chunk
    np.testing.assert_allclose(res.chi2_zero, (ivar * flux.astype(np.float64) ** 2).sum(1), rtol=1e-6)
    # amplitudes at the minimum: the least-squares solution there
    i = 0
    s = sc.shift_lo + sc.stride * (sc.n_trial - 1 - res.best[i])
    t = table[np.arange(256) + s]
    poly = np.polynomial.legendre.legvander(np.linspace(-1, 1, 256), n_poly - 1) if n_poly else np.zeros((256, 0))
    m = np.concatenate([t, poly], 1)
    sw = np.sqrt(ivar[i].astype(np.float64))
    coef, *_ = np.linalg.lstsq(m * sw[:, None], flux[i] * sw, rcond=None)
    np.testing.assert_allclose(res.coeff[i], coef, rtol=1e-4, atol=1e-6)
    # the normal equations themselves, at that shift (shift order: index n_trial - 1 - best)
    a_all, b_all, wsum = sc.correlations(ivar[:1], flux[:1])
    ms = m * ivar[i][:, None]
    np.testing.assert_allclose(a_all[0, sc.n_trial - 1 - res.best[i]].numpy(), ms.T @ m, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(b_all[0, sc.n_trial - 1 - res.best[i]].numpy(), ms.T @ flux[i], rtol=1e-4, atol=1e-3)
    assert float(wsum[0]) == pytest.approx(float(ivar[i].sum()), rel=1e-6)


def test_grid_and_config():
    sc = small_scanner(stride=2)
    assert np.all(np.diff(np.log1p(sc.z)) == pytest.approx(2e-3))
    assert sc.z[0] <= 0.3 + 1e-9 and sc.z[-1] >= 0.6 - 2e-3
    for n in (1, 97, 8313):
        m = smooth_length(n)
        assert m >= n and m < 1.1 * n + 2
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        assert m == 1
    with pytest.raises(ConfigError):
        small_scanner(stride=3)
    with pytest.raises(UserError):
        sc.scan(np.zeros((2, 10)), np.zeros((2, 10)))


@pytest.mark.parametrize("stride", [1, 2])
def test_noiseless_continuum_without_lines(basis, stride):
    """A PCA combination at known z (off the lattice), every emission line masked: within 0.001."""
    sc = ZScanner.from_refine_basis(basis, Z_RANGE, n_templates=6, stride=stride)
    zs = np.array([0.71234, 1.30071, 1.98765, 2.60113])
    flux = np.stack([continuum_spectrum(z) for z in zs]).astype(np.float32)
    ivar = np.stack([np.where(line_mask(z), 0.0, 1.0) for z in zs]).astype(np.float32)
    res = sc.scan(flux, ivar)
    z_best, dchi2, n_min = scan_summary(res)
    assert np.all(np.abs(z_best - zs) < 1e-3), z_best - zs
    assert np.all(dchi2 > 9) and np.all(n_min >= 1)
    assert np.all(res.ok) and np.all(np.isfinite(res.chi2))


def test_noisy_continuum(basis):
    """S/N ~ 5 per pixel, lines masked, 5% random pixels masked: within 0.003 in z."""
    rng = np.random.default_rng(3)
    sc = ZScanner.from_refine_basis(basis, Z_RANGE, n_templates=6)
    zs = rng.uniform(0.65, 2.9, 6)
    model = np.stack([continuum_spectrum(z, (1.0, rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2))) for z in zs])
    sigma = np.abs(model).mean(axis=1, keepdims=True) / 5.0
    flux = (model + rng.normal(size=model.shape) * sigma).astype(np.float32)
    ivar = np.broadcast_to(1 / sigma ** 2, flux.shape).astype(np.float32).copy()
    ivar[np.stack([line_mask(z) for z in zs]) | (rng.random(flux.shape) < 0.05)] = 0
    res = sc.scan(flux, ivar)
    z_best, dchi2, _ = scan_summary(res)
    assert np.all(np.abs(z_best - zs) < 3e-3), z_best - zs
    assert np.all(np.isfinite(dchi2))


def test_masks_and_empty_objects(basis):
    sc = ZScanner.from_refine_basis(basis, Z_RANGE, n_templates=5, stride=2)
    flux = np.stack([continuum_spectrum(1.4)] * 4).astype(np.float32)
    ivar = np.ones_like(flux)
    ivar[0, 1000:2500] = 0  # a large gap
    ivar[1] = 0  # all masked
    flux[2, ::7] = np.nan  # NaN flux counts as masked
    ivar[3, :] = 0
    ivar[3, :5] = 1  # too few pixels to fit
    res = sc.scan(flux, ivar)
    assert np.all(np.isfinite(res.chi2)) and np.all(np.isfinite(res.coeff))
    assert res.ok.tolist() == [True, False, True, False]
    assert res.npix[1] == 0 and res.npix[3] == 5
    np.testing.assert_array_equal(res.chi2[1], 0.0)
    np.testing.assert_allclose(res.chi2[3], res.chi2_zero[3])
    z_best, dchi2, n_min = scan_summary(res)
    assert np.all(np.abs(z_best[[0, 2]] - 1.4) < 1e-3)
    assert np.isnan(z_best[1]) and np.isnan(dchi2[1]) and n_min[1] == 0
    assert np.all(np.isfinite(dchi2[[0, 2]]))


def test_flux_scale_invariance(basis):
    rng = np.random.default_rng(5)
    sc = ZScanner.from_refine_basis(basis, Z_RANGE, n_templates=6, stride=2)
    model = continuum_spectrum(2.05)
    sigma = np.abs(model).mean() / 5
    flux = (model + rng.normal(size=model.shape) * sigma)[None].astype(np.float32)
    ivar = np.full_like(flux, 1 / sigma ** 2)
    ref = sc.scan(flux, ivar)
    for scale in (0.3, 3.0):
        res = sc.scan(flux * scale, ivar / scale ** 2)
        np.testing.assert_allclose(res.chi2, ref.chi2, rtol=1e-4)
        assert res.best[0] == ref.best[0]
        np.testing.assert_allclose(res.coeff, ref.coeff * scale, rtol=1e-4, atol=1e-6)


def test_chi2_on_bins():
    z_scan = np.expm1(np.linspace(np.log1p(0.5), np.log1p(1.0), 101))
    chi2 = np.abs(np.arange(101) - 40.0)[None, :] + 1.0
    edges = np.array([0.4, 0.55, 0.7, 0.7002, 0.9, 1.1])  # one bin below, one too narrow to hold a trial
    out = chi2_on_bins(z_scan, chi2, edges)
    inside = (z_scan >= 0.55) & (z_scan < 0.7)
    assert out[0, 1] == chi2[0, inside].min()
    j = np.searchsorted(z_scan, 0.7001)
    assert chi2[0, j - 1] >= out[0, 2] >= chi2[0, j] - 1e-9 or chi2[0, j] >= out[0, 2] >= chi2[0, j - 1] - 1e-9
    assert out[0, 0] <= chi2[0, z_scan < 0.55].min()  # partly covered: the trials inside count
    assert out[0, 4] == chi2[0, z_scan >= 0.9].min()


def test_combination_limits_and_fit():
    zb = ZBinning()
    edges, centres = zb.edges, zb.centres
    rng = np.random.default_rng(9)
    n = 200
    z_true = rng.uniform(0.7, 2.9, n)
    # the network is right for half the objects, otherwise peaked at a wrong z
    z_net = np.where(np.arange(n) % 2 == 0, z_true, rng.uniform(0.7, 2.9, n))
    pdf = np.exp(-0.5 * ((centres[None, :] - z_net[:, None]) / 0.004) ** 2) + 1e-6
    pdf /= pdf.sum(axis=1, keepdims=True)
    # template chi2: minimum at the truth, over-dispersed (noise of 20 on the curve)
    chi2 = 3000 + 5e6 * ((centres[None, :] - z_true[:, None]) / (1 + z_true[:, None])) ** 2
    chi2 = np.minimum(chi2, 3000 + 400 + rng.normal(0, 20, chi2.shape))
    post = combine_pdf(pdf, chi2, w_net=0.0, t=1.0)
    np.testing.assert_array_equal(np.argmax(post, 1), np.argmin(chi2, 1))
    post = combine_pdf(pdf, chi2, w_net=1.0, t=0.0)
    np.testing.assert_allclose(post, pdf, rtol=1e-4, atol=1e-10)
    np.testing.assert_allclose(post.sum(1), 1.0)
    # objects without a fit keep the network's PDF whatever t is
    ok = np.ones(n, bool)
    ok[:3] = False
    post = combine_pdf(pdf, chi2, w_net=1.0, t=1.0, ok=ok)
    np.testing.assert_allclose(post[:3], pdf[:3], rtol=1e-4, atol=1e-10)
    w, t, info = fit_combination(pdf, chi2, edges, z_true)
    assert info["n"] == n and t > 0
    assert info["mean_log_post"] > info["start_mean_log_post"]
    post = combine_pdf(pdf, chi2, w, t)
    hit = np.abs(centres[np.argmax(post, 1)] - z_true) < 0.01
    assert hit.mean() > 0.9
    with pytest.raises(UserError):
        fit_combination(pdf, chi2, edges, np.full(n, 5.0))


def test_refine_basis_conventions(basis):
    """The scanner's trials are the refinement table's whole-pixel offsets; options are checked."""
    sc = ZScanner.from_refine_basis(basis, Z_RANGE, n_templates=4)
    shifts = sc.shift_lo + np.arange(sc.n_trial)[::-1]
    np.testing.assert_allclose(np.log1p(sc.z), basis.lnz1(basis.oversample * shifts), rtol=0, atol=1e-12)
    assert sc.z[0] <= Z_RANGE[0] and sc.z[-1] >= Z_RANGE[1] and sc.names == ("pca0", "pca1", "pca2", "pca3")
    smooth = ZScanner.from_refine_basis(basis, Z_RANGE, n_templates=4, smooth=1.0)
    assert smooth.n_trial == sc.n_trial
    with pytest.raises(ConfigError):
        ZScanner.from_refine_basis(basis, Z_RANGE, n_templates=11)
    with pytest.raises(ConfigError):
        ZScanner.from_refine_basis(basis, Z_RANGE, lines=("Halpha",))  # this basis has no line vectors


def test_combination_fit_weighs_each_validation_set_the_same():
    """A large validation set where the network is right must not outvote a small one (made
    another way) where the templates are: with ``groups`` each set weighs the same."""
    zb = ZBinning()
    edges, centres = zb.edges, zb.centres
    rng = np.random.default_rng(4)
    n_a, n_b = 900, 100
    n = n_a + n_b
    z_true = rng.uniform(0.7, 2.9, n)
    z_wrong = np.where(z_true > 1.8, z_true - 0.5, z_true + 0.5)
    # set A: the network right; the templates' minimum wrong for 30%. Set B: the network wrong.
    z_net = np.where(np.arange(n) < n_a, z_true, z_wrong)
    z_tpl = np.where((np.arange(n) < n_a) & (rng.uniform(size=n) < 0.3), z_wrong, z_true)
    pdf = np.exp(-0.5 * ((centres[None, :] - z_net[:, None]) / 0.004) ** 2) + 1e-6
    pdf /= pdf.sum(axis=1, keepdims=True)
    chi2 = 3000 + np.minimum(5e6 * ((centres[None, :] - z_tpl[:, None]) / (1 + z_tpl[:, None])) ** 2, 400)
    groups = (np.arange(n) >= n_a).astype(int)
    _, t_pooled, pooled = fit_combination(pdf, chi2, edges, z_true, objective="success")
    w, t, grouped = fit_combination(pdf, chi2, edges, z_true, objective="success", groups=groups)
    assert t_pooled == 0.0 and pooled["success_fraction"] == pytest.approx(0.9)  # the network alone
    assert t > 0 and grouped["n_by_group"] == [n_a, n_b]
    assert grouped["success_by_group"][1] > 0.9 and grouped["success_fraction"] > 0.8
    assert grouped["success_fraction"] == pytest.approx(np.mean(grouped["success_by_group"]))
    _, _, few = fit_combination(pdf, chi2, edges, z_true, objective="success", groups=groups, max_objects=400)
    assert few["n_by_group"] == [200, 100]  # an equal share each, all of a smaller set
    with pytest.raises(UserError, match="groups"):
        fit_combination(pdf, chi2, edges, z_true, groups=groups[:10])


def test_observed_vectors_fit_a_sky_residual_at_fixed_wavelengths():
    """Observed-frame vectors (the arms' night sky) are fitted with free amplitudes beside the
    basis: the chi2 equals a direct least-squares fit with them, and a strong residual of them
    no longer decides the redshift."""
    u = 600
    x = np.linspace(0, 20, u)
    table = np.stack([1 + 0.3 * np.sin(x), np.cos(3 * x), np.exp(-((x - 10) / 3) ** 2)], 1)
    dl, ln0 = 1e-3, math.log(6000.0)
    x0 = ln0 + 0.5 * dl - math.log(1.5) - 100 * dl
    sky = np.zeros((2, 256))
    sky[0, 20:120:9] = 1.0  # "sky lines" of two arms at fixed pixels
    sky[1, 140:250:7] = 1.0
    plain = ZScanner(table, x0, dl, ln0, 256, (0.3, 0.6))
    with_sky = ZScanner(table, x0, dl, ln0, 256, (0.3, 0.6), observed=sky)
    assert (plain.n_basis, with_sky.n_basis, with_sky.n_obs) == (3, 5, 2)
    rng = np.random.default_rng(5)
    s_true = plain.shift_lo + 40  # a trial on the lattice
    truth = table[np.arange(256) + s_true] @ np.array([1.0, 0.5, 2.0])
    flux = (truth + 3.0 * sky[0] - 2.0 * sky[1] + rng.normal(0, 0.05, 256))[None].astype(np.float32)
    ivar = np.full((1, 256), 400.0, np.float32)
    res = with_sky.scan(flux, ivar)
    shifts = with_sky.shift_lo + np.arange(with_sky.n_trial)[::-1]  # increasing z
    assert shifts[res.best[0]] == s_true
    np.testing.assert_allclose(res.coeff[0, 3:], [3.0, -2.0], atol=0.05)  # the residual's amplitudes
    # chi2 at every trial equals a direct fit of the templates and the observed vectors
    sw = np.sqrt(ivar[0].astype(np.float64))
    for si in (0, res.best[0], with_sky.n_trial - 1):
        m = np.concatenate([table[np.arange(256) + shifts[si]], sky.T], 1) * sw[:, None]
        c, *_ = np.linalg.lstsq(m, flux[0] * sw, rcond=None)
        direct = ((flux[0] * sw - m @ c) ** 2).sum()  # float32 FFTs: to ~1e-5 of sum w f^2
        assert res.chi2[0, si] == pytest.approx(direct, rel=1e-4, abs=2e-5 * res.chi2_zero[0])
    assert res.chi2[0].min() < plain.scan(flux, ivar).chi2[0].min() / 10  # the residual is absorbed
    with pytest.raises(ConfigError, match="observed"):
        ZScanner(table, x0, dl, ln0, 256, (0.3, 0.6), observed=np.ones((1, 100)))


def test_the_sky_vectors_of_the_training_arms():
    from mtopnet.predict import scan_sky, training_instrument
    from mtopnet.refine import sky_residual_vectors
    from mtopnet.trained import load_model

    model = load_model("moons-lr")
    sky = sky_residual_vectors(training_instrument(model), model.preprocessor)
    assert sky.shape == (3, model.preprocessor.config.n_pix)
    assert np.allclose(np.abs(sky).max(axis=1), 1.0)
    wave = model.preprocessor.config.wave
    for row, (lo, hi) in zip(sky, [(6470, 9340), (9340, 13500), (14520, 18000)], strict=True):
        inside = (wave > lo + 20) & (wave < hi - 20)
        assert (row[~((wave > lo - 20) & (wave < hi + 20))] == 0).all() and (row[inside] > 0).mean() > 0.9
    assert (scan_sky(model) is None) == (not model.scan.sky)
    # a model whose scan fits the sky needs its training instrument: a one-line error without it
    import dataclasses

    lost = dataclasses.replace(model, scan=dataclasses.replace(model.scan, sky=True), instrument={"name": "no-such"})
    with pytest.raises(UserError, match="'no-such'"):
        scan_sky(lost)
    with pytest.raises(ConfigError, match="sky"):
        ZScanner.from_scan_config(Refiner.from_model(model).basis, (0.6, 3.0), ScanConfig(sky=True))
