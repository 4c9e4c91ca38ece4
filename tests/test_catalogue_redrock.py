"""The catalogue as a Redrock REDSHIFTS table: names and dtypes, ZWARN bits, units, descriptions,
provenance, and old catalogues read in today's layout."""
from __future__ import annotations

import hashlib
import sys
import types
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from mtopnet.catalogue import CATALOGUE_COLUMNS, read_catalogue
from mtopnet.columns import ALL_COLUMNS, REDROCK_SCHEMA, ZInfo, ZWarn, upgrade_legacy
from mtopnet.predict import predict_store
from mtopnet.trained import load_model


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, tiny_model_path, toy_stores):
    """A FITS catalogue of the toy test store, with the PDF."""
    out = tmp_path_factory.mktemp("redshifts") / "cat.fits"
    predict_store(load_model(tiny_model_path), [toy_stores[2]], out, with_pdf=True)
    return out


def _fake_desi_modules(monkeypatch) -> None:
    """desiutil and desispec stand-ins with the names redrock.external.desi imports (neither is
    installed); write_zbest uses only add_dependencies, setdep and annotate_fibermap of them."""
    names = {"desiutil": {}, "desiutil.io": {"encode_table": lambda t: t},
             "desiutil.depend": {"add_dependencies": lambda header: None,
                                 "setdep": lambda header, key, value: header.__setitem__(key[:8], str(value))},
             "desispec": {}, "desispec.resolution": {"Resolution": object},
             "desispec.coaddition": {"coadd_fibermap": None}, "desispec.specscore": {"compute_coadd_tsnr_scores": None},
             "desispec.maskbits": {"fibermask": None}, "desispec.io": {},
             "desispec.io.util": {"get_tempfilename": None}, "desispec.io.fibermap": {"annotate_fibermap": lambda h: h}}
    for name, attrs in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "redrock.external.desi", raising=False)


@pytest.fixture
def redrock_file(tmp_path, monkeypatch):
    """A REDSHIFTS file written by Redrock 0.21's own ``write_zbest``, on a zfind result of
    Redrock's test template and target, turned into its zbest table exactly as ``rrdesi``
    does (redrock/external/desi.py: drop zz/zzchi2/znum, upper-case names, FITMETHOD U4)."""
    pytest.importorskip("redrock")
    _fake_desi_modules(monkeypatch)
    from redrock.external.desi import write_zbest
    from redrock.targets import DistTargetsCopy
    from redrock.templates import DistTemplate
    from redrock.test import util
    from redrock.zfind import zfind
    np.random.seed(0)
    template = util.get_template(subtype="")
    targets = DistTargetsCopy([util.get_target(0.5)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, zfit = zfind(targets, [DistTemplate(template, targets.wavegrids())], mp_procs=1)
    zbest = zfit[zfit["znum"] == 0]
    zbest.remove_columns(["zz", "zzchi2", "znum"])
    for name in zbest.colnames:
        if name.islower():
            zbest.rename_column(name, name.upper())
    zbest["FITMETHOD"] = zbest["FITMETHOD"].astype("U4")
    header = types.SimpleNamespace(full_type="GALAXY", version="test", filename="rrtemplate-test.fits")
    out = tmp_path / "redrock.fits"
    write_zbest(str(out), zbest, Table({"TARGETID": [123]}), Table({"TARGETID": [123]}), Table({"TARGETID": [123]}),
                [header])
    return out


def test_redshifts_hdu_has_redrocks_names_and_dtypes(catalogue, redrock_file):
    """Compared with a file written by ``redrock.external.desi.write_zbest`` itself (redrock
    0.21.0; desiutil/desispec, which it imports but this path does not use, are stand-ins)."""
    with fits.open(redrock_file) as theirs, fits.open(catalogue) as ours:
        rr, mt = theirs["REDSHIFTS"].columns, ours["REDSHIFTS"].columns
        assert ours[1].name == "REDSHIFTS"
        assert mt.names[:len(rr.names)] == rr.names == [c.name for c in REDROCK_SCHEMA]
        for name in rr.names:
            a, b = rr[name].format, mt[name].format
            if name == "COEFF":  # a vector of doubles; its length is the number of basis vectors
                assert a.endswith("D") and b.endswith("D") and mt[name].dim is not None, (a, b)
            else:
                assert a == b, (name, a, b)


def test_every_column_has_a_unit_and_a_description(catalogue, tmp_path, tiny_model_path, toy_stores):
    for col in ALL_COLUMNS.values():
        assert 0 < len(col.description) <= 68, col.name  # a TCOMM card
        if col.unit:
            from astropy import units as u
            u.Unit(col.unit, format="fits")  # parses as a FITS unit
    with fits.open(catalogue) as hdul:
        header = hdul["REDSHIFTS"].header
        for i, name in enumerate(hdul["REDSHIFTS"].columns.names, start=1):
            assert header[f"TCOMM{i}"] == ALL_COLUMNS[name].description
            assert header.get(f"TUNIT{i}", "") == ALL_COLUMNS[name].unit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unit astropy cannot parse
        table = Table.read(catalogue, hdu="REDSHIFTS")
    assert str(table["COEFF"].unit) == "1e-17 erg / (Angstrom s cm2)" and table["Z"].unit is None
    import pyarrow.parquet as pq
    parquet = tmp_path / "cat.parquet"
    predict_store(load_model(tiny_model_path), [toy_stores[2]], parquet)
    schema = pq.read_schema(parquet)
    assert schema.names == [n for n in fits.getdata(catalogue, "REDSHIFTS").names if n != "Z_PDF"]
    for field in schema:
        assert field.metadata[b"description"].decode() == ALL_COLUMNS[field.name].description
        assert field.metadata[b"unit"].decode() == ALL_COLUMNS[field.name].unit


def test_header_provenance(catalogue, tiny_model_path, toy_stores):
    with fits.open(catalogue) as hdul:
        for header in (hdul[0].header, hdul["REDSHIFTS"].header):
            assert header["MODELSHA"] == hashlib.sha256(tiny_model_path.read_bytes()).hexdigest()
            assert header["INHASH00"] == "sha256:" + hashlib.sha256(toy_stores[2].read_bytes()).hexdigest()
            assert header["INFILE00"] == toy_stores[2].name and len(header["RECIPE"]) == 16
            for key in ("MTOPVER", "NUMPYVER", "TORCHVER", "ASTROVER", "H5PYVER", "INSTRUME", "REFINE", "COMMAND",
                        "DATE"):
                assert header[key], key
            assert '"clip_sigma"' in header["REFINE"]  # the refinement settings, whole (CONTINUE cards)


def test_zwarn_uses_redrocks_bits_and_keeps_ours_in_16_to_23():
    ZWarningMask = pytest.importorskip("redrock.zwarning").ZWarningMask
    redrock = dict(ZWarningMask.flags())
    for bit in ZWarn:
        if bit.name in redrock:
            assert int(bit) == redrock[bit.name], bit.name
        else:
            assert 16 <= int(bit).bit_length() - 1 <= 23, bit.name
            assert not bit.name.startswith("RESERVED")
    assert {n for n in redrock if not n.startswith("RESERVED")} <= {b.name for b in ZWarn}
    assert not {b.name for b in ZWarn} & {b.name for b in ZInfo}


def test_old_catalogues_are_read_in_todays_layout(tmp_path):
    old = Table({"id": np.array([5, 6]), "z": [1.0, 2.0], "qop": np.array([4, 1], np.int16),
                 "zwarn": np.array([(1 << 4) | (1 << 2), (1 << 1) | (1 << 13) | (1 << 6)], np.int32),
                 "p_dz01": [0.9, 0.1], "delta_chi2": [np.nan, 30.0], "z_err": [1e-4, 2e-3],
                 "scan_dchi2": [50.0, 60.0], "z_pdf": np.ones((2, 3))})
    path = tmp_path / "old.fits"
    old.write(path)
    cat = read_catalogue(path)
    assert {"TARGETID", "Z", "QOP", "ZWARN", "ZWARN_INFO", "P_DZ01", "DELTACHI2", "ZERR", "SCAN_DCHI2",
            "Z_PDF"} <= set(cat)
    assert list(cat["ZWARN"]) == [0, int(ZWarn.NODATA | ZWarn.Z_FITLIMIT)]
    assert list(cat["ZWARN_INFO"]) == [int(ZInfo.NOISE_ESTIMATED | ZInfo.LOW_SN), int(ZInfo.MULTI_PEAK)]
    assert cat["Z_PDF"].shape == (2, 3)
    # the Redrock baseline's catalogues keep their (Redrock) bits
    rr = upgrade_legacy({"id": np.array([1]), "z": np.array([1.0]), "zwarn": np.array([4])})
    assert list(rr["ZWARN"]) == [4] and "ZWARN_INFO" not in rr


def test_csv_and_parquet_have_the_fits_names(tmp_path, tiny_model_path, toy_stores, catalogue):
    model = load_model(tiny_model_path)
    fits_cat = read_catalogue(catalogue)
    for ext in ("csv", "parquet"):
        path = tmp_path / f"cat.{ext}"
        predict_store(model, [toy_stores[2]], path, with_pdf=True)
        cat = read_catalogue(path)
        assert list(cat) == list(fits_cat), ext
        assert list(cat)[:len(CATALOGUE_COLUMNS)] == list(CATALOGUE_COLUMNS)
        for name in ("FITMETHOD", "SPECTYPE", "SUBTYPE"):
            assert list(cat[name]) == list(fits_cat[name]), (ext, name)
        np.testing.assert_allclose(cat["COEFF"], fits_cat["COEFF"], rtol=1e-12)
        np.testing.assert_array_equal(cat["ZWARN"], fits_cat["ZWARN"])


def test_docs_table_has_every_bit_and_column():
    """docs/catalogue.md is the one table of bits and columns: every name, at its value."""
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "catalogue.md").read_text()
    for column, flags in (("ZWARN", ZWarn), ("ZWARN_INFO", ZInfo)):
        for bit in flags:
            assert f"| {column} | {int(bit).bit_length() - 1} | {int(bit)} | {bit.name} |" in text, bit.name
    for name in ALL_COLUMNS:
        assert name in text, name


def test_desi_fibermap_is_passed_through(tiny_model_path, tmp_path):
    """The two DESI coadds of tests/data: HDU FIBERMAP holds their FIBERMAP rows, in the
    catalogue's order; in Parquet there is none (mixed inputs: tests/test_passthrough.py)."""
    from pathlib import Path
    data = Path(__file__).resolve().parent / "data"
    desi = sorted(str(p) for p in (data / "desi").glob("coadd-*.fits"))
    model = load_model(tiny_model_path)
    out = tmp_path / "desi.fits"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # out of the tiny model's domain
        predict_store(model, desi, out)
        with fits.open(out) as hdul:
            ids = hdul["REDSHIFTS"].data["TARGETID"]
            fibermap = hdul["FIBERMAP"].data
            inputs = [fits.getdata(p, "FIBERMAP") for p in desi]
            common = [n for n in inputs[0].columns.names if all(n in t.columns.names for t in inputs)]
            assert list(fibermap.columns.names) == common and len(common) > 10  # the columns all files have
            np.testing.assert_array_equal(fibermap["TARGETID"], ids)
            for name in ("TARGETID", "TARGET_RA", "TARGET_DEC", "OBJTYPE"):
                np.testing.assert_array_equal(fibermap[name], np.concatenate([t[name] for t in inputs]))
        predict_store(model, desi, tmp_path / "desi.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # REDSHIFTS read by name: no "multiple tables are present"
        np.testing.assert_array_equal(read_catalogue(out)["TARGETID"], ids)
    assert len(read_catalogue(tmp_path / "desi.parquet")["TARGETID"]) == len(ids)


def test_fits_catalogue_is_read_from_its_redshifts_hdu(tmp_path):
    """The HDU REDSHIFTS wherever it is; a file without one (an older catalogue): its first
    table. Neither makes astropy warn about the other tables."""
    rows = fits.table_to_hdu(Table({"TARGETID": np.array([1, 2]), "Z": [0.5, 1.0]}))
    other = fits.table_to_hdu(Table({"TARGETID": np.array([9]), "Z": [7.0]}))
    for first, second, name in ((other, rows, "FIBERMAP"), (rows, other, "SPECOBJ")):
        first.name, second.name = (name, "REDSHIFTS") if first is other else ("CATALOGUE", name)
        path = tmp_path / f"{name}.fits"
        fits.HDUList([fits.PrimaryHDU(), first.copy(), second.copy()]).writeto(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cat = read_catalogue(path)
        assert list(cat["TARGETID"]) == [1, 2] and list(cat["Z"]) == [0.5, 1.0], name
