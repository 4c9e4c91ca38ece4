"""Pass-through of the inputs' per-object tables (DESI FIBERMAP, SDSS SPECOBJ) to FITS catalogues."""
from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import mtopnet.predict as predict_mod
from mtopnet.io import ReaderWarning, stack_passthrough, write_text
from mtopnet.io._fits import scan_tables
from mtopnet.io.passthrough import append_tables
from mtopnet.io.sdss import read_specobj
from mtopnet.predict import predict_store
from mtopnet.testing import toy_batch
from mtopnet.trained import load_model

DATA = Path(__file__).resolve().parent / "data"
SDSS = sorted(str(p) for p in (DATA / "sdss").glob("spec-*.fits"))
DESI = sorted(str(p) for p in (DATA / "desi").glob("coadd-*.fits"))


@pytest.mark.parametrize("path,name", [*((p, "SPECOBJ") for p in SDSS), *((p, "FIBERMAP") for p in DESI)])
def test_header_walk_reads_what_astropy_reads(path, name):
    rows = scan_tables(path, (name, "NOSUCH"))[name]
    ref = np.array(fits.getdata(path, name))
    assert rows.dtype == ref.dtype and len(rows) == len(ref)
    for col in ref.dtype.names:
        np.testing.assert_array_equal(rows[col], ref[col], err_msg=col)


def test_sdss_specobj_row_and_the_astropy_fallback(tmp_path):
    """The SPECOBJ row of an SDSS spec file (plug-map columns included); a gzipped copy, which
    the header walk leaves to astropy, gives the same row."""
    rows = read_specobj(SDSS[0])["SPECOBJ"]
    assert len(rows) == 1
    assert (int(rows["PLATE"][0]), int(rows["MJD"][0]), int(rows["FIBERID"][0])) == (280, 51612, 117)
    assert np.isfinite(rows["PLUG_RA"][0]) and np.isfinite(rows["PLUG_DEC"][0])
    gz = tmp_path / "spec-0280-51612-0117.fits.gz"
    with open(SDSS[0], "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert scan_tables(str(gz), ("SPECOBJ",)) is None
    again = read_specobj(str(gz))["SPECOBJ"]
    for col in rows.dtype.names:
        np.testing.assert_array_equal(again[col], rows[col], err_msg=col)


def _table(values, dtype):
    return np.array([(v,) for v in values], dtype=[("A", dtype)])


def test_stack_fills_rows_of_other_sources_with_nulls_that_no_real_row_holds():
    i16 = np.iinfo(np.int16)
    per_unit = [{"T": _table([i16.min, 5], np.int16)}, {}, {"T": _table([7], np.int16)}]
    out = stack_passthrough(per_unit, [2, 3, 1])["T"]
    assert isinstance(out, Table) and len(out) == 6
    assert list(out["A"].mask) == [False, False, True, True, True, False]
    assert out["A"].fill_value == i16.max  # the dtype's min is a real value here
    assert list(out["A"][[0, 1, 5]]) == [i16.min, 5, 7]
    full = stack_passthrough([{"T": _table([1, 2], "u1")}, {"T": _table([3], "u1")}], [2, 1])["T"]
    assert isinstance(full, np.ndarray) and list(full["A"]) == [1, 2, 3]  # every row present: plain rows
    assert stack_passthrough([{}, {}], [4, 2]) == {}


def test_null_rows_round_trip_through_fits(tmp_path):
    """Every column kind: real rows read back as written, null rows masked (astropy), the
    integer nulls (vector columns too) outside the real values, logical nulls F."""
    rows = np.array([(True, 1.5, b"ab", [-32768, 2], 7, 255)],
                    dtype=[("B", "?"), ("F", ">f4"), ("S", "S2"), ("V", ">i2", (2,)), ("K", ">i8"), ("U", "u1")])
    path = tmp_path / "t.fits"
    fits.writeto(path, np.zeros(1))
    append_tables(path, stack_passthrough([{}, {"T": rows}], [2, 1]))
    back = Table.read(path, hdu="T")
    for name in ("F", "S", "V", "K", "U"):
        mask = np.ma.getmaskarray(back[name]).reshape(3, -1)
        assert mask[:2].all() and not mask[2].any(), name
        want = rows[name][0].decode() if name == "S" else rows[name][0]
        assert np.array_equal(np.asarray(back[name][2]), want), name
    raw = fits.getdata(path, "T")
    header = fits.getheader(path, "T")
    assert header["TNULL4"] == 32767 and header["TNULL6"] == 0  # -32768 and 255 are real values
    assert list(raw["B"]) == [False, False, True]


def test_stack_leaves_out_what_does_not_fit_with_a_warning():
    with pytest.warns(ReaderWarning, match=r"b\.fits: T has 2 rows for 1 spectra"):
        out = stack_passthrough([{"T": _table([1], np.int32)}, {"T": _table([2, 3], np.int32)}], [1, 1],
                                ["a.fits", "b.fits"])
    assert list(out["T"]["A"].mask) == [False, True]
    vec = np.zeros(1, dtype=[("A", np.int32, (3,))])
    with pytest.warns(ReaderWarning, match="T not copied"):
        assert stack_passthrough([{"T": _table([1], np.int32)}, {"T": vec}], [1, 1]) == {}
    with pytest.raises(ValueError):
        stack_passthrough([{}], [1, 2])


def test_mixed_inputs_sharded_and_resumed_keep_every_table_row_for_row(tiny_model_path, toy_stores, toy_waves,
                                                                       tmp_path, monkeypatch):
    """SDSS, DESI, generic text files and a store in one run, two inputs per shard, the run
    interrupted after its first shard and resumed: HDU SPECOBJ holds the SDSS rows and HDU
    FIBERMAP the DESI rows, each with one row per REDSHIFTS row (others null)."""
    texts = []
    for i in range(2):
        texts.append(tmp_path / f"obj{i}.txt")
        write_text(texts[-1], toy_batch(1, toy_waves, seed=i, start_id=900 + i), arm="A")
    inputs = [SDSS[0], texts[0], DESI[0], str(toy_stores[2]), SDSS[1], DESI[1], texts[1]]
    model = load_model(tiny_model_path)
    out = tmp_path / "mixed.fits"
    real = predict_mod._predict_shard
    calls = []

    def interrupted(job, shard, info):
        calls.append(shard.index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        yield from real(job, shard, info)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # out of the tiny model's domain
        monkeypatch.setattr(predict_mod, "_predict_shard", interrupted)
        with pytest.raises(KeyboardInterrupt):
            predict_store(model, inputs, out, refine=False, shard_size=2)
        monkeypatch.setattr(predict_mod, "_predict_shard", real)
        run = predict_mod.predict_sharded(model, inputs, out, refine=False, shard_size=2)
    assert run.n_reused == 1 and run.n_shards > 2
    with fits.open(out) as hdul:
        assert [h.name for h in hdul][1:] == ["REDSHIFTS", "SPECOBJ", "FIBERMAP"]
        ids = [str(i) for i in hdul["REDSHIFTS"].data["TARGETID"]]
    specobj = Table.read(out, hdu="SPECOBJ")
    fibermap = Table.read(out, hdu="FIBERMAP")
    n_desi = [len(fits.getdata(p, "FIBERMAP")) for p in DESI]
    assert len(ids) == 1 + 1 + n_desi[0] + 40 + 1 + n_desi[1] + 1 == len(specobj) == len(fibermap)
    sdss_rows = [0, 2 + n_desi[0] + 40]
    desi_rows = [*range(2, 2 + n_desi[0]), *range(3 + n_desi[0] + 40, 3 + n_desi[0] + 40 + n_desi[1])]
    for table, rows, col in ((specobj, sdss_rows, "FIBERID"), (fibermap, desi_rows, "TARGETID")):
        masked = np.ma.getmaskarray(table[col])
        assert sorted(np.nonzero(~masked)[0]) == rows, col
    for row, path in zip(sdss_rows, SDSS[:2], strict=True):
        ref = fits.getdata(path, "SPECOBJ")[0]
        assert ids[row] == f"{ref['PLATE']:04d}-{ref['MJD']:05d}-{ref['FIBERID']:04d}"
        for col in ("PLATE", "MJD", "FIBERID", "PLUG_RA", "PLUG_DEC", "OBJID", "CLASS", "Z"):
            want, got = ref[col], specobj[col][row]
            assert (str(got).strip() == want.strip()) if isinstance(want, str) else np.array_equal(got, want), col
    np.testing.assert_array_equal(np.asarray(fibermap["TARGETID"][desi_rows]).astype(str),
                                  [ids[r] for r in desi_rows])
    # the nulls as written: integer TNULLs no real row holds, NaN floats
    with fits.open(out) as hdul:
        raw, header = hdul["SPECOBJ"].data, hdul["SPECOBJ"].header
        for i, name in enumerate(raw.columns.names, start=1):
            if f"TNULL{i}" in header:
                assert not np.any(np.asarray(raw[name])[sdss_rows] == header[f"TNULL{i}"]), name
        assert np.isnan(raw["PLUG_RA"][1])
