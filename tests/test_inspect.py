"""mtopnet inspect: the best fit, the PDF zoom, the page's files, and the page in headless Chromium."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mtopnet.catalogue import read_catalogue
from mtopnet.cli import main
from mtopnet.columns import ZInfo
from mtopnet.config import UserError
from mtopnet.inspect import NativeBasis, best_fit, catalogue_table, pdf_zoom, write_inspection
from mtopnet.predict import predict_store
from mtopnet.store import SpectraBatch
from mtopnet.trained import load_model

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _batch_from_basis(basis: NativeBasis, z: np.ndarray, coef: np.ndarray, seed: int = 0) -> SpectraBatch:
    """Two arms whose flux is the basis at z times coef, with noise 0.01 and a masked run."""
    rng = np.random.default_rng(seed)
    arms = {}
    for name, (lo, hi, n_pix) in {"B": (4000.0, 6000.0, 1500), "R": (5900.0, 9000.0, 2000)}.items():
        wave = np.geomspace(lo, hi, n_pix)
        t, _ = basis.design(wave, z)
        flux = np.einsum("nlk,nk->nl", t, coef).astype(np.float32)
        ivar = np.full_like(flux, 1e4)
        mask = np.zeros(flux.shape, np.uint8)
        mask[:, 100:120] = 2
        flux[:, 100:120] = 1e6  # masked: must not pull the fit
        arms[name] = {"wave": wave, "flux": flux + rng.normal(0, 0.01, flux.shape).astype(np.float32),
                      "ivar": ivar, "mask": mask}
    return SpectraBatch(ids=np.arange(len(z)), arms=arms)


def test_best_fit_recovers_a_model_built_from_the_basis():
    basis = NativeBasis()
    z = np.array([0.1, 0.45, 0.8])
    k = len(basis.names)
    coef = np.zeros((3, k))
    coef[:, 0] = [3.0, 5.0, 2.0]
    coef[:, 1] = [0.5, -1.0, 0.3]
    coef[:, basis.names.index("[OII]")] = [4.0, 0.0, 6.0]
    batch = _batch_from_basis(basis, z, coef)
    models, rchi2 = best_fit(basis, batch, z)
    for name, arm in batch.arms.items():
        t, _ = basis.design(arm["wave"], z)
        truth = np.einsum("nlk,nk->nl", t, coef)
        good = arm["mask"] == 0
        assert np.nanmax(np.abs(models[name] - truth)[good]) < 0.05  # noise 0.01 per pixel
    assert np.all((rchi2 > 0.8) & (rchi2 < 1.2))
    # at a wrong z the same data fit far worse
    _, rchi2_wrong = best_fit(basis, batch, z + 0.05)
    assert np.all(rchi2_wrong > 10 * rchi2)


def test_best_fit_is_nan_outside_the_templates_and_without_data():
    basis = NativeBasis()
    z = np.array([0.2, 0.2])
    batch = _batch_from_basis(basis, z, np.ones((2, len(basis.names))))
    batch.arms["R"]["ivar"][1] = 0  # no valid pixel in arm R for object 1
    batch.arms["B"]["ivar"][1] = 0
    models, rchi2 = best_fit(basis, batch, np.array([0.2, 0.2]))
    assert np.isfinite(rchi2[0]) and np.isnan(rchi2[1])
    assert np.isnan(models["B"][1]).all() and np.isfinite(models["B"][0]).all()
    far = best_fit(basis, batch.subset(slice(0, 1)), np.array([4.0]))[0]  # rest < 1560 A everywhere
    assert np.isnan(far["B"]).all()


def test_pdf_zoom_shows_the_peaks_not_the_full_range():
    centres = np.linspace(0.0, 3.0, 1501)
    pdf = np.exp(-0.5 * ((centres - 1.0) / 0.004) ** 2) + 0.4 * np.exp(-0.5 * ((centres - 1.3) / 0.004) ** 2)
    single = np.exp(-0.5 * ((centres - 2.0) / 0.003) ** 2)
    pdfs = np.stack([pdf / pdf.sum(), single / single.sum()])
    peak_z, peak_mass, lo, hi = pdf_zoom(pdfs, centres, np.array([1.0, 2.0]))
    assert abs(peak_z[0, 0] - 1.0) < 2e-3 and abs(peak_z[0, 1] - 1.3) < 2e-3 and peak_mass[0, 1] > 0.2
    assert lo[0] < 1.0 - 0.01 and hi[0] > 1.3 + 0.01 and hi[0] - lo[0] < 0.5
    assert np.isnan(peak_z[1, 1:]).all()
    assert hi[1] - lo[1] == pytest.approx(0.06) and lo[1] < 2.0 < hi[1]


def test_evaluate_pdf_panels_zoom_on_the_peaks():
    from mtopnet.plots.evaluation import pdf_zoom as panel_zoom
    centres = np.linspace(0.6, 3.0, 1201)
    pdf = np.exp(-0.5 * ((centres - 1.5) / 0.003) ** 2)
    lo, hi = panel_zoom(centres, pdf, (1.5, 1.51))
    assert lo < 1.5 < 1.51 < hi and hi - lo < 0.1
    lo, hi = panel_zoom(centres, pdf, (2.2,))  # a true z far from the PDF stays in view
    assert lo < 1.5 and hi > 2.2 and hi - lo < 1.0


def test_catalogue_columns_are_found_in_any_case():
    cat = {"TARGETID": np.arange(2), "Z": np.ones(2), "QOP": np.ones(2), "ZWARN": np.zeros(2),
           "P_DZ01": np.ones(2), "LOGMSTAR": np.ones(2), "LOGSFR": np.ones(2), "ZERR": np.ones(2),
           "SPECTYPE": np.array(["GALAXY", "QSO"])}
    table = catalogue_table(cat)
    assert set(table) == {"id", "z", "qop", "zwarn", "p_dz01", "logmstar", "logsfr", "z_err", "spectype"}
    with pytest.raises(UserError, match=r"no column QOP, LOGSFR \(is it from"):  # today's names
        catalogue_table({k: v for k, v in cat.items() if k not in ("QOP", "LOGSFR")})


def test_a_damaged_catalogue_is_one_line(toy_catalogues, toy_stores, tmp_path, capsys):
    """A truncated FITS catalogue: one error line naming it unreadable, exit 2, no astropy
    warnings; a readable file without mtopnet's columns: the columns named as they are now."""
    cat_path, _ = toy_catalogues
    data = cat_path.read_bytes()
    for n in (3000, len(data) // 2):  # inside the first header; inside the rows
        bad = tmp_path / f"cut{n}.fits"
        bad.write_bytes(data[:n])
        capsys.readouterr()
        assert main(["inspect", str(bad), str(toy_stores[2]), "--out", str(tmp_path / f"p{n}")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "not a readable catalogue" in err, err
        assert not (tmp_path / f"p{n}").exists()
    redrock = Path(__file__).parent / "data" / "desi" / "redrock-4-80613-thru20210324.fits"
    assert main(["inspect", str(redrock), str(toy_stores[2]), "--out", str(tmp_path / "rr")]) == 2
    err = capsys.readouterr().err
    assert "no column QOP, P_DZ01, LOGMSTAR, LOGSFR" in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def toy_catalogues(tmp_path_factory, tiny_model_path, toy_stores):
    """A FITS catalogue with PDFs and a CSV one without, of the toy test store."""
    root = tmp_path_factory.mktemp("inspect")
    model = load_model(tiny_model_path)
    with_pdf, without = root / "cat.fits", root / "cat.csv"
    predict_store(model, toy_stores[2], with_pdf, with_pdf=True)
    predict_store(model, toy_stores[2], without)
    return with_pdf, without


def test_the_page_files(toy_catalogues, toy_stores, tmp_path):
    cat_path, csv_path = toy_catalogues
    info = write_inspection(cat_path, toy_stores[2], tmp_path / "page")
    n = len(read_catalogue(cat_path)["TARGETID"])
    assert info["n_objects"] == info["n_with_spectra"] == n and info["has_pdf"]
    page = tmp_path / "page"
    assert {p.name for p in page.iterdir()} == {"index.html", "inspect.js", "inspect.css", "catalogue.js", "objects"}
    assert len(list((page / "objects").glob("*.js"))) == n
    text = (page / "objects" / "0.js").read_text()
    assert text.startswith("MTOP.object(0,{") and text.rstrip().endswith("});")
    assert '"model":[' in text and '"pdf":{' in text and '"zoom":[' in text
    index = (page / "catalogue.js").read_text()
    assert index.startswith("MTOP.catalogue({") and '"OUT_OF_DOMAIN"' in index
    assert '"key":"spectype"' in index and '"zwarn_info_bits":{' in index and '"NOISE_ESTIMATED"' in index
    with pytest.raises(UserError, match="holds an inspection page"):
        write_inspection(cat_path, toy_stores[2], page)
    # a catalogue without PDFs: the index says so; the CLI writes it and reports the sizes
    assert main(["inspect", str(csv_path), str(toy_stores[2]), "--out", str(tmp_path / "nopdf")]) == 0
    assert '"zbins":null' in (tmp_path / "nopdf" / "catalogue.js").read_text()
    assert main(["inspect", str(csv_path), str(tmp_path / "missing.h5"), "--out", str(tmp_path / "x")]) == 2


def _chromium(args: list[str], url: str, tmp: Path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=20000", "--window-size=1400,1000", *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"chromium exit {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def _selftest(page: Path, tmp: Path) -> str:
    dom = _chromium(["--dump-dom"], (page / "index.html").resolve().as_uri() + "#selftest", tmp)
    found = re.search(r'<span id="selftest-result"[^>]*>([^<]*)</span>', dom)
    assert found, "the page's self-test left no result (did inspect.js load?)"
    return html.unescape(found.group(1))


@pytest.mark.skipif(CHROMIUM is None, reason="headless browser test needs Chromium (Debian package `chromium`)")
def test_the_page_in_headless_chromium(toy_catalogues, toy_stores, tmp_path):
    """The page's own self-test (#selftest) runs in Chromium: it sorts and filters the table,
    clicks the first object, waits for objects/ROW.js, checks that the spectrum and the PDF
    were drawn and that the VI CSV and localStorage work, and fails on any JavaScript error
    or console.error. A screenshot of the object view is saved."""
    cat_path, csv_path = toy_catalogues
    write_inspection(cat_path, toy_stores[2], tmp_path / "page")
    write_inspection(csv_path, toy_stores[2], tmp_path / "nopdf", fit=False)
    assert _selftest(tmp_path / "page", tmp_path) == "SELFTEST PASS"
    assert _selftest(tmp_path / "nopdf", tmp_path) == "SELFTEST PASS"
    # a QSO and a star among the galaxies, with ZWARN_INFO bits: the self-test checks the
    # SPECTYPE filter, sort and marks and the decoded bits, and ends on the QSO's panel
    shutil.copytree(tmp_path / "page", tmp_path / "types")
    index = tmp_path / "types" / "catalogue.js"
    blob = json.loads(index.read_text()[len("MTOP.catalogue("):-len(");\n")])
    assert blob["data"]["spectype"] == ["GALAXY"] * blob["n"]
    blob["data"]["spectype"][1], blob["data"]["spectype"][2], blob["data"]["subtype"][2] = "QSO", "STAR", "K"
    blob["data"]["zwarn_info"][1] = int(ZInfo.LOW_SN | ZInfo.MULTI_PEAK)
    index.write_text("MTOP.catalogue(" + json.dumps(blob) + ");\n")
    dom = _chromium(["--dump-dom"], (tmp_path / "types" / "index.html").resolve().as_uri() + "#selftest", tmp_path)
    assert "SELFTEST PASS" in dom, re.search(r'id="selftest-result"[^>]*>([^<]*)<', dom).group(1)
    props = html.unescape(re.search(r'<div id="obj-props">(.*?)</div>', dom, re.S).group(1))
    assert re.search(r"<b>SPECTYPE</b> QSO", props) and "<b>ZWARN_INFO</b> LOW_SN MULTI_PEAK (6)" in props, props
    assert "not a galaxy redshift" in dom
    shot = tmp_path / "object.png"
    _chromium([f"--screenshot={shot}"], (tmp_path / "page" / "index.html").resolve().as_uri() + "#selftest", tmp_path)
    assert shot.is_file() and shot.stat().st_size > 20_000
    # a JavaScript error is caught: a broken object file makes the self-test fail
    for js in (tmp_path / "page" / "objects").glob("*.js"):
        js.write_text("MTOP.object(" + js.stem + ", {arms: [{}]});\n")
    assert _selftest(tmp_path / "page", tmp_path).startswith("SELFTEST FAIL")


def test_a_catalogue_paired_with_other_spectra_is_said(toy_catalogues, toy_stores, tmp_path):
    """evaluate --truth and inspect's inputs are checked against the input hashes the catalogue
    records: another store with the same ids (any two simulated stores' ids are 0..N-1) is
    warned of, and so is a truth store that holds only some of the catalogue's ids; the store the
    catalogue was made from (or a copy of it) is not."""
    import shutil
    import warnings

    from mtopnet.evaluate import evaluate
    from mtopnet.store import read_store, store_info, write_store
    cat_path, csv_path = toy_catalogues
    n = store_info(toy_stores[2])["n"]
    copy = tmp_path / "copy.h5"
    shutil.copy(toy_stores[2], copy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate(cat_path, copy, tmp_path / "r0", plots=False)["warnings"] == []
        write_inspection(cat_path, copy, tmp_path / "p0", fit=False)
        assert evaluate(csv_path, copy, tmp_path / "r1", plots=False)["warnings"] == []  # CSV records no inputs
    other = tmp_path / "other.h5"  # the same ids and spectra, written again: another file
    batch = read_store(toy_stores[2], 0, n)
    batch.labels["z"] = batch.labels["z"] + 0.3
    write_store(other, batch, {"instrument": "toy"})
    with pytest.warns(UserWarning, match="not a file the catalogue was predicted from"):
        m = evaluate(cat_path, other, tmp_path / "r2", plots=False)
    assert m["n_matched"] == n and len(m["warnings"]) == 1
    with pytest.warns(UserWarning, match="not a file the catalogue was predicted from"):
        write_inspection(cat_path, other, tmp_path / "p2", fit=False)
    half = tmp_path / "half.h5"
    write_store(half, read_store(toy_stores[2], 0, n // 2), {"instrument": "toy"})
    with pytest.warns(UserWarning, match=f"only {n // 2} of {n} catalogue rows"):
        evaluate(csv_path, half, tmp_path / "r3", plots=False)


def test_a_failed_evaluation_leaves_no_report_folder(toy_catalogues, toy_stores, tmp_path):
    from mtopnet.evaluate import evaluate
    from mtopnet.store import read_store, write_store
    batch = read_store(toy_stores[2], 0, 3)
    batch.ids = np.asarray(batch.ids) + 10 ** 6  # no id in common
    store = tmp_path / "elsewhere.h5"
    write_store(store, batch, {"instrument": "toy"})
    with pytest.raises(UserError, match="no catalogue id matches"):
        evaluate(toy_catalogues[1], store, tmp_path / "report", plots=False)
    assert not (tmp_path / "report").exists()
