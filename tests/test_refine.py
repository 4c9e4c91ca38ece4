"""Template refinement of the network's z (mtopnet.refine): precision, peak choice, structure."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d
from scipy.special import erf

import mtopnet.refine.fit as refine_fit
from mtopnet.calibrate import recalibrate
from mtopnet.catalogue import CATALOGUE_COLUMNS, REFINE_COLUMNS, ZWarn, read_catalogue
from mtopnet.checkpoint import read_checkpoint
from mtopnet.cli import main
from mtopnet.config import ConfigError
from mtopnet.constants import C_KMS
from mtopnet.lines import LINE_GROUPS
from mtopnet.model import ZBinning
from mtopnet.predict import predict_store
from mtopnet.preprocess import PreprocessConfig
from mtopnet.quality import pdf_peaks, pdf_summary, window_mass
from mtopnet.refine import RefineConfig, Refiner, build_basis
from mtopnet.templates import read_templates
from mtopnet.trained import load_model

LSF_KMS = 30.0
PRE = PreprocessConfig()  # the MOONS LR grid of the shipped model: 4096 pixels, 6470-18000 A
ZB = ZBinning()


@pytest.fixture(scope="module")
def basis():
    return build_basis(PRE, (ZB.z_min, ZB.z_max), LSF_KMS)


def refiner(basis, **overrides) -> Refiner:
    return Refiner(basis, ZB.edges, RefineConfig(lsf_sigma_kms=LSF_KMS, **overrides))


def noiseless_spectrum(z: float, coef=(1.0, 0.25, -0.15), halpha: float = 0.0, oiii: float = 0.0) -> np.ndarray:
    """(n_pix,) flux of a template combination plus lines at z, built without the refiner's table:
    the LSF-convolved rest templates interpolated at 32 points per pixel and averaged, lines as
    Gaussians (sigma 100 km/s + LSF) integrated exactly over each pixel."""
    wave, flux = read_templates()
    dln = math.log(wave[1] / wave[0])
    rest = gaussian_filter1d(np.tensordot(coef, flux[:len(coef)], 1), LSF_KMS / C_KMS / dln, mode="nearest")
    edges = PRE.wave_edges
    sub = np.exp(np.log(edges[:-1])[:, None] + (np.arange(32) + 0.5)[None, :] / 32 * PRE.dloglam)
    spec = np.interp(np.log(sub / (1 + z)), np.log(wave), rest).mean(axis=1) * 300.0
    sig = math.hypot(100.0, LSF_KMS) / C_KMS
    for amp, (_, members) in ((halpha, LINE_GROUPS[[g[0] for g in LINE_GROUPS].index("Halpha")]),
                              (oiii, LINE_GROUPS[[g[0] for g in LINE_GROUPS].index("[OIII]")])):
        for lam, ratio in members:
            mu = math.log(lam * (1 + z))
            lo, hi = np.log(edges[:-1]), np.log(edges[1:])
            spec += amp * ratio * 0.5 * (erf((hi - mu) / (math.sqrt(2) * sig)) - erf((lo - mu) / (math.sqrt(2) * sig)))
    return spec


def gaussian_pdf(*peaks: tuple[float, float, float]) -> np.ndarray:
    """(1, n_bins) PDF: a mixture of (weight, z, sigma) Gaussians over the z bins."""
    centres = ZB.centres
    p = sum(w * np.exp(-0.5 * ((centres - z) / s) ** 2) * np.diff(ZB.edges) / s for w, z, s in peaks)
    return (p / p.sum())[None, :]


def run(ref: Refiner, flux: np.ndarray, pdf: np.ndarray):
    flux = np.atleast_2d(flux).astype(np.float32)
    ivar = np.full_like(flux, 100.0)  # S/N ~ 10 per pixel on the continuum (the flux has no noise)
    z_net = pdf_summary(pdf, ZB.edges)["z"]
    return ref.refine(flux, ivar, pdf, z_net)


@pytest.mark.parametrize("z_true", [0.83, 1.62, 2.47])
@pytest.mark.parametrize("offset", [-0.01, -0.004, 0.0, 0.006, 0.0099])
def test_noiseless_spectrum_is_refined_to_2e5_from_a_peak_up_to_001_away(basis, z_true, offset):
    flux = noiseless_spectrum(z_true, halpha=2.0, oiii=3.0)
    pdf = gaussian_pdf((1.0, z_true + offset, 0.006))
    res = run(refiner(basis), flux, pdf)
    assert res.refined[0] == 0 and not res.disagree[0]
    assert abs(res.z[0] - z_true) < 2e-5, (res.z[0], z_true)
    assert abs(res.z_net[0] - (z_true + offset)) < 0.003  # the network's estimate is kept
    assert 0 < res.z_err[0] < 1e-4


def test_continuum_only_spectrum_is_refined_too(basis):
    z_true = 1.234
    res = run(refiner(basis), noiseless_spectrum(z_true), gaussian_pdf((1.0, z_true - 0.007, 0.005)))
    assert abs(res.z[0] - z_true) < 2e-5


def test_two_peak_pdf_picks_the_peak_the_data_support(basis):
    z_true, z_wrong = 1.48, 2.05
    flux = noiseless_spectrum(z_true, halpha=2.0, oiii=3.0)
    pdf = gaussian_pdf((0.6, z_wrong, 0.004), (0.4, z_true + 0.003, 0.004))  # the PDF prefers the wrong one
    # allowed to switch when the other peak holds >= half the main peak's mass
    res = run(refiner(basis, switch_mass_ratio=0.5, switch_dchi2=100.0), flux, pdf)
    assert abs(res.peak_z[0, 0] - z_wrong) < 0.011 and abs(res.peak_z[0, 1] - z_true) < 2e-5
    assert res.refined[0] == 1 and abs(res.z[0] - z_true) < 2e-5 and not res.disagree[0]
    assert res.delta_chi2[0] > 100
    # never allowed to switch: the main peak is reported (refined there, or the fit rejected and
    # the network's z kept, depending on how the basis fits the wrong z), and the disagreement is flagged
    res = run(refiner(basis, switch_mass_ratio=1.01), flux, pdf)
    assert res.refined[0] in (0, -1) and abs(res.z[0] - z_wrong) < 0.011 and res.disagree[0]
    # the data support the main peak: it is kept whatever the switching rule
    flux = noiseless_spectrum(z_wrong, halpha=2.0, oiii=3.0)
    res = run(refiner(basis, switch_mass_ratio=0.5), flux, pdf)
    assert res.refined[0] == 0 and abs(res.z[0] - z_wrong) < 2e-5 and not res.disagree[0]


def test_refining_n_objects_calls_the_chi2_kernels_a_fixed_number_of_times(basis, monkeypatch):
    calls = {"coarse": 0, "fine": 0}
    coarse, fine = refine_fit.coarse_chi2, refine_fit.fine_chi2

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(refine_fit, "coarse_chi2", count("coarse", coarse))
    monkeypatch.setattr(refine_fit, "fine_chi2", count("fine", fine))
    rng = np.random.default_rng(1)
    ref = refiner(basis, chunk_rows=1024)
    counts = []
    for n in (3, 17):
        z = rng.uniform(0.7, 2.9, n)
        flux = np.stack([noiseless_spectrum(zi, halpha=1.0) for zi in z])
        pdf = np.concatenate([gaussian_pdf((1.0, zi + 0.0045, 0.004), (0.3, zi + 0.2, 0.004)) for zi in z])
        calls.update(coarse=0, fine=0)
        res = ref.refine(flux.astype(np.float32), np.full(flux.shape, 100.0, np.float32), pdf,
                         pdf_summary(pdf, ZB.edges)["z"])
        # all objects and peaks in one call each (fine: at most twice more, for the few fits whose
        # minimum sat at an end of the scan, and for fits that moved far from their peak)
        assert calls["coarse"] == 1 and 1 <= calls["fine"] <= 3, (n, calls)
        counts.append(calls["fine"])
        assert np.all(np.abs(res.z - z) < 5e-5)
    assert counts[0] == counts[1]


def test_objects_without_data_are_not_refined(basis):
    flux = np.stack([noiseless_spectrum(1.1), noiseless_spectrum(1.1)]).astype(np.float32)
    ivar = np.full_like(flux, 100.0)
    ivar[1] = 0.0
    pdf = np.concatenate([gaussian_pdf((1.0, 1.1, 0.004))] * 2)
    z_net = pdf_summary(pdf, ZB.edges)["z"]
    res = refiner(basis).refine(flux, ivar, pdf, z_net, skip=np.array([False, False]), z_err_net=np.array([1., 2.]))
    assert res.refined.tolist() == [0, -1] and res.z[1] == z_net[1] and res.z_err[1] == 2.0
    assert np.isnan(res.rchi2[1]) and not res.disagree[1]


def test_pdf_peaks_and_window_mass():
    pdf = gaussian_pdf((0.7, 1.0, 0.002), (0.2, 2.0, 0.003), (0.1, 2.5, 0.003))
    z, mass = pdf_peaks(pdf, ZB.edges, max_peaks=3, min_mass=0.05)
    assert np.allclose(z[0], [1.0, 2.0, 2.5], atol=2e-3) and np.allclose(mass[0], [0.7, 0.2, 0.1], atol=0.02)
    z, mass = pdf_peaks(pdf, ZB.edges, max_peaks=3, min_mass=0.15)
    assert np.isnan(z[0, 2]) and mass[0, 2] == 0
    flat_top = gaussian_pdf((1.0, 1.5, 0.0005))  # narrower than a window: one peak, not several
    z, _ = pdf_peaks(flat_top, ZB.edges, max_peaks=3)
    assert np.isfinite(z[0, 0]) and np.isnan(z[0, 1:]).all()
    summ = pdf_summary(pdf, ZB.edges)
    assert np.allclose(window_mass(pdf, ZB.edges, summ["z"]), summ["p_window"], atol=1e-9)


def test_basis_tabulation(basis):
    """Rows advance by 1/oversample pixel; the offset <-> z mapping is exact; lines sit where they should."""
    assert basis.table.shape[1] == basis.n_continuum + len(LINE_GROUPS)
    for z in (0.6, 1.3, 3.0):
        assert abs(np.expm1(basis.lnz1(basis.offset(z))) - z) < 1e-12
    lo, hi = basis.offset_range
    assert lo <= basis.offset(3.0 + 0.02) and basis.offset(0.6 - 0.02) <= hi
    # Halpha's column peaks at the table row of its rest wavelength
    col = basis.n_continuum + [g[0] for g in LINE_GROUPS].index("Halpha")
    row = int(np.argmax(basis.table[:, col]))
    assert abs(basis.x0 + row * basis.step - math.log(6564.61)) <= basis.step


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="refine.max_peaks"):
        RefineConfig(max_peaks=0)
    with pytest.raises(ConfigError, match="refine.fine_step"):
        RefineConfig(fine_step=0)


def test_predict_refines_by_default_and_no_refine_keeps_the_network(tiny_model_path, toy_stores, tmp_path):
    model = load_model(tiny_model_path)
    a, b = tmp_path / "ref.fits", tmp_path / "net.parquet"
    predict_store(model, [toy_stores[2]], a)
    predict_store(model, [toy_stores[2]], b, refine=False)
    ref, net = read_catalogue(a), read_catalogue(b)
    assert list(ref)[:len(CATALOGUE_COLUMNS) + len(REFINE_COLUMNS)] == list(CATALOGUE_COLUMNS + REFINE_COLUMNS)
    assert not set(REFINE_COLUMNS) & set(net)
    assert np.allclose(ref["Z_NET"], net["Z"])
    moved = ref["REFINED"] >= 0
    reach = 0.01 + 2 * (1 + ref["Z_NET"]) * model.preprocessor.config.dloglam  # window + pixel rounding
    assert np.all(np.abs(ref["Z"][moved] - ref["Z_NET"][moved]) <= reach[moved])
    assert np.array_equal(ref["Z"][~moved], ref["Z_NET"][~moved])
    assert np.array_equal(ref["FITMETHOD"] == "PCA", moved) and np.all(net["FITMETHOD"] == "NONE")
    assert np.all(np.isnan(net["CHI2"])) and np.all(np.isfinite(ref["CHI2"][moved]))
    # the bits refinement may change
    same = ~int(ZWarn.LOW_PEAK_PROB | ZWarn.REFINE_DISAGREE | ZWarn.FIT_OUTLIERS | ZWarn.SMALL_DELTA_CHI2
                | ZWarn.BAD_MINFIT)
    assert np.array_equal(ref["ZWARN"] & same, net["ZWARN"] & same)
    # a poor fit (reduced chi2 > 3) is information, never a warning
    from mtopnet.columns import ZInfo
    poor = (ref["ZWARN_INFO"] & int(ZInfo.POOR_FIT)) != 0
    assert np.array_equal(poor, np.nan_to_num(ref["RCHI2"]) > RefineConfig().max_rchi2)
    assert not np.any(net["ZWARN_INFO"] & int(ZInfo.POOR_FIT))


def test_recalibrate_writes_a_refined_calibration(tiny_model_path, toy_stores, tmp_path):
    out = tmp_path / "recal.pt"
    report = recalibrate(tiny_model_path, toy_stores[1], out)
    payload = read_checkpoint(out)
    assert payload["provenance"]["calibration"]["refined"] is True
    assert payload["calibration"]["report"]["n_validation"] == 120
    assert set(report) == {"before", "after"}
    assert load_model(out).calibration is not None


def test_recalibrate_cli_errors_are_one_line(tmp_path, capsys):
    code = main(["calibrate", str(tmp_path / "none.pt"), str(tmp_path / "none.h5"), "--out", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no such file" in err


def test_smooth_basis_is_per_arm_and_zero_elsewhere():
    import numpy as np

    from mtopnet.refine.kernels import smooth_basis
    a = np.zeros(400, bool)
    a[10:200] = True
    b = np.zeros(400, bool)
    b[150:390] = True
    s = smooth_basis([a, b], degree=3)
    assert s.shape == (400, 8)
    assert np.all(s[:10] == 0) and np.all(s[390:] == 0)
    assert np.all(s[~a, :4] == 0) and np.all(s[~b, 4:] == 0)
    assert np.allclose(s[10:200, 0], 1.0)


def test_feature_dchi2_sees_features_not_smooth_continua():
    """A Gaussian absorption line and a step are features; a steep power law and a flux offset
    between arms are not, whatever the S/N."""
    import numpy as np
    import torch

    from mtopnet.refine.kernels import feature_dchi2, smooth_basis
    rng = np.random.default_rng(0)
    j = 1000
    x = np.arange(j)
    arms = [x < 520, x >= 480]
    smooth = torch.from_numpy(smooth_basis(arms))
    line = -np.exp(-0.5 * ((x - 300) / 4.0) ** 2)
    step = np.where(x > 700, 1.0, 0.0)
    templates = torch.from_numpy(np.stack([line, step], 1)[None].repeat(4, 0))
    law = (1 + x / 300.0) ** -2.5 * 50 * np.where(x >= 480, 1.1, 1.0)  # offset between arms
    sigma = 0.2
    noise = sigma * rng.standard_normal((4, j))
    f = np.stack([law, law + 1.0 * line, law + 0.5 * step, np.zeros(j)]) + noise  # line S/N ~13
    w = np.full((4, j), 1 / sigma ** 2)
    ev = feature_dchi2(templates, torch.from_numpy(w), torch.from_numpy(f), smooth).numpy()
    assert ev[0] < 15 and ev[3] < 15  # 2 template vectors: chi2 with 2 degrees of freedom
    assert ev[1] > 100 and ev[2] > 100


def test_coarse_stage_reads_the_full_range_scan_and_finds_the_same_z(basis, monkeypatch):
    """Given the chi2 of a full-range scan with the coarse stage's own vectors (the first
    ``coarse_templates`` continuum vectors, no lines), the coarse stage reads it instead of
    fitting (no coarse_chi2 call) and the refined z are the same; rows the scan did not fit
    fall back to coarse_chi2."""
    from mtopnet.refine import CoarseChi2, ZScanner
    ref = refiner(basis)
    rng = np.random.default_rng(4)
    z = rng.uniform(0.7, 2.9, 6)
    flux = np.stack([noiseless_spectrum(zi, halpha=1.0) for zi in z]).astype(np.float32)
    flux += rng.normal(0, 0.1, flux.shape).astype(np.float32)
    ivar = np.full(flux.shape, 100.0, np.float32)
    pdf = np.concatenate([gaussian_pdf((1.0, zi + 0.004, 0.004), (0.3, zi + 0.2, 0.004)) for zi in z])
    z_net = pdf_summary(pdf, ZB.edges)["z"]
    own = ref.refine(flux, ivar, pdf, z_net)
    scanner = ZScanner.from_refine_basis(basis, (ZB.z_min, ZB.z_max), n_templates=ref.config.coarse_templates)
    res = scanner.scan(flux, ivar)
    calls = []
    real = refine_fit.coarse_chi2
    monkeypatch.setattr(refine_fit, "coarse_chi2", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    known = CoarseChi2.from_scan(scanner, res, np.arange(len(z)), len(z))
    read = ref.refine(flux, ivar, pdf, z_net, coarse=known)
    assert calls == []
    assert np.allclose(read.z, own.z, atol=2e-6) and np.all(np.abs(read.z - z) < 3e-4)
    # object 2 not scanned: its rows alone (one per PDF peak it has, up to 3) go to coarse_chi2
    known.have[2] = False
    again = ref.refine(flux, ivar, pdf, z_net, coarse=known)
    assert len(calls) == 1 and 1 <= calls[0] <= 3 and np.allclose(again.z, own.z, atol=2e-6)
    with pytest.raises(ValueError, match="stride"):
        CoarseChi2.from_scan(ZScanner.from_refine_basis(basis, (ZB.z_min, ZB.z_max), stride=2), res,
                             np.arange(len(z)), len(z))


def test_a_poor_fit_alone_is_information_not_disagreement():
    """A reduced chi2 above max_rchi2 sets poor_fit (ZWARN_INFO POOR_FIT), not REFINE_DISAGREE;
    a better-fitting peak left unreported still disagrees."""
    cfg = RefineConfig(max_rchi2=3.0, disagree_dchi2=25.0)
    n_valid = np.array([1000, 1000])
    peak_chi2 = np.array([[5000.0, np.inf], [900.0, 800.0]])  # rchi2 ~5 (one peak); ~0.8 with a better peak
    res = refine_fit.combine(np.array([[1.2, np.nan], [1.5, 2.0]]), np.full((2, 2), 1e-4), peak_chi2,
                             np.array([[1.0, 0.0], [0.7, 0.3]]), np.array([1.2, 1.5]), n_valid, 10, cfg,
                             np.full(2, np.nan))
    assert res.poor_fit.tolist() == [True, False]
    assert res.disagree.tolist() == [False, True]
