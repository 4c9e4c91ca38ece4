"""Readers (mtopnet.io): real SDSS/DESI files, moons1d layout, generic FITS/text round trips,
air -> vacuum, malformed files, noise estimation and sanitising."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mtopnet.config import UserError
from mtopnet.constants import C_AA_PER_S
from mtopnet.instruments.instrument import MASK_BAD, MASK_SKYLINE
from mtopnet.io import (
    FORMATS,
    NoiseEstimatedWarning,
    ReaderWarning,
    detect_format,
    estimate_noise,
    from_specutils,
    read_file,
    read_spectra,
    sanitize,
    write_fits,
    write_text,
)
from mtopnet.io._core import RawArm, build_block
from mtopnet.store import SpectraBatch, write_store

DATA = Path(__file__).parent / "data"
SDSS = sorted((DATA / "sdss").glob("spec-*.fits"))
DESI_COADDS = sorted((DATA / "desi").glob("coadd-*.fits"))
DESI_REDROCK = sorted((DATA / "desi").glob("redrock-*.fits"))

# Rest-frame vacuum wavelengths (A) and their standard air values.
LINES_VAC_AIR = {"OIII5007": (5008.240, 5006.843), "Hbeta": (4862.683, 4861.333),
                 "Halpha": (6564.614, 6562.801)}


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def _one_line(exc: pytest.ExceptionInfo, name: str) -> str:
    text = str(exc.value)
    assert "\n" not in text
    assert name in text
    return text


def _line_centroid(wave, flux, center):
    """Flux-weighted centroid of the emission peak nearest ``center`` (7 pixels)."""
    k0 = np.searchsorted(wave, center)
    k = k0 - 6 + int(np.argmax(flux[k0 - 6:k0 + 6]))
    continuum = np.median(np.r_[flux[k - 40:k - 10], flux[k + 10:k + 40]])
    excess = flux[k - 3:k + 4] - continuum
    return float((wave[k - 3:k + 4] * excess).sum() / excess.sum())


# ----------------------------------------------------------------------------- SDSS


def test_sdss_spectra_ids_wavelengths_units_masks():
    batches = list(read_spectra([str(p) for p in SDSS]))
    assert [b.ids[0] for b in batches] == ["0280-51612-0117", "0295-51585-0596", "1599-53089-0469"]
    for path, batch in zip(SDSS, batches, strict=False):
        with fits.open(path) as hdul:
            coadd = hdul["COADD"].data
            specobj = hdul["SPECOBJ"].data
            assert hdul[0].header["VACUUM"] is True
            assert hdul[0].header["BUNIT"].startswith("1E-17")
        plate, mjd, fiber = (int(v) for v in batch.ids[0].split("-"))
        assert (plate, mjd, fiber) == (specobj["PLATE"][0], specobj["MJD"][0], specobj["FIBERID"][0])
        arm = batch.arms["ALL"]
        assert list(batch.arms) == ["ALL"]
        assert arm["wave"].dtype == np.float64 and arm["flux"].dtype == np.float32
        assert arm["ivar"].dtype == np.float32 and arm["mask"].dtype == np.uint8
        # Vacuum wavelengths straight from loglam (snapped to the exact 1e-4 dex grid).
        np.testing.assert_allclose(arm["wave"], 10.0 ** coadd["loglam"].astype(np.float64), rtol=2e-6)
        np.testing.assert_allclose(np.diff(np.log10(arm["wave"])), 1e-4, rtol=1e-9)
        assert 3780 < arm["wave"][0] < 3800 and 9180 < arm["wave"][-1] < 9210
        # Flux unchanged (already 1e-17 erg/s/cm2/A); ivar kept where and_mask is clear.
        np.testing.assert_array_equal(arm["flux"][0], coadd["flux"])
        bad = coadd["and_mask"] != 0
        np.testing.assert_array_equal((arm["mask"][0] & MASK_BAD) != 0, bad)
        np.testing.assert_array_equal(arm["ivar"][0][~bad], coadd["ivar"][~bad])
        assert np.all(arm["ivar"][0][bad] == 0)
        brightsky = (coadd["and_mask"].astype(np.int64) & (1 << 23)) != 0
        np.testing.assert_array_equal((arm["mask"][0] & MASK_SKYLINE) != 0, brightsky)
        assert not batch.labels["noise_estimated"][0]


def test_sdss_lines_sit_at_vacuum_wavelengths_for_the_survey_redshift():
    # 0280-51612-0117 has strong narrow [OIII] and Hbeta; air wavelengths would be ~1.7 A off.
    batch = read_file(DATA / "sdss" / "spec-0280-51612-0117.fits")
    z = float(fits.getdata(DATA / "sdss" / "spec-0280-51612-0117.fits", "SPECOBJ")["Z"][0])
    arm = batch.arms["ALL"]
    for name in ("OIII5007", "Hbeta"):
        vac, air = LINES_VAC_AIR[name]
        found = _line_centroid(arm["wave"], arm["flux"][0].astype(float), vac * (1 + z))
        assert abs(found - vac * (1 + z)) < 0.5, name
        assert abs(found - air * (1 + z)) > 1.2, name


# ----------------------------------------------------------------------------- DESI


def test_desi_coadds_ids_match_redrock_and_arms_are_right():
    batches = list(read_spectra([str(p) for p in DESI_COADDS]))
    assert len(batches) == 1  # same B/R/Z grids: one batch
    batch = batches[0]
    assert batch.ids.dtype == np.int64
    redrock_ids = [int(fits.getdata(p, "REDSHIFTS")["TARGETID"][0]) for p in DESI_REDROCK]
    assert list(batch.ids) == redrock_ids == [39633345008634465, 39089837499744649]
    expected = {"B": (3600.0, 5800.0, 2751), "R": (5760.0, 7620.0, 2326), "Z": (7520.0, 9824.0, 2881)}
    assert list(batch.arms) == ["B", "R", "Z"]
    for row, path in enumerate(DESI_COADDS):
        with fits.open(path) as hdul:
            for arm, (lo, hi, n) in expected.items():
                got = batch.arms[arm]
                assert got["wave"].shape == (n,)
                assert got["wave"][0] == pytest.approx(lo) and got["wave"][-1] == pytest.approx(hi)
                np.testing.assert_allclose(np.diff(got["wave"]), 0.8, rtol=1e-9)
                assert hdul[f"{arm}_FLUX"].header["BUNIT"] == "10**-17 erg/(s cm2 Angstrom)"
                np.testing.assert_array_equal(got["flux"][row], hdul[f"{arm}_FLUX"].data[0])
                np.testing.assert_array_equal(got["ivar"][row], hdul[f"{arm}_IVAR"].data[0])
                assert np.all(got["mask"][row] == 0) and np.all(hdul[f"{arm}_MASK"].data == 0)


def test_desi_galaxy_lines_sit_at_vacuum_wavelengths():
    batch = read_file(DESI_COADDS[0])
    z = float(fits.getdata(DESI_REDROCK[0], "REDSHIFTS")["Z"][0])
    assert batch.ids[0] == 39633345008634465 and z == pytest.approx(0.36874, abs=1e-4)
    for name, arm_name in (("OIII5007", "R"), ("Hbeta", "R"), ("Halpha", "Z")):
        vac, air = LINES_VAC_AIR[name]
        arm = batch.arms[arm_name]
        found = _line_centroid(arm["wave"], arm["flux"][0].astype(float), vac * (1 + z))
        assert abs(found - vac * (1 + z)) < 0.5, name
        assert abs(found - air * (1 + z)) > 1.5, name


def test_folder_input_skips_redrock_tables_and_keeps_order():
    with pytest.warns(ReaderWarning, match="skipped 2 file"):
        batches = list(read_spectra([str(DATA / "sdss" / "spec-0295-51585-0596.fits"), str(DATA / "desi"),
                                     str(DATA / "sdss" / "spec-0280-51612-0117.fits")]))
    ids = [i for b in batches for i in b.ids.tolist()]
    assert ids == ["0295-51585-0596", 39633345008634465, 39089837499744649, "0280-51612-0117"]


def test_batch_size_splits_rows_in_order():
    batches = list(read_spectra([str(p) for p in DESI_COADDS], batch_size=1))
    assert [len(b) for b in batches] == [1, 1]
    assert [int(b.ids[0]) for b in batches] == [39633345008634465, 39089837499744649]


def test_formats_are_detected_from_content(tmp_path):
    assert detect_format(SDSS[0]) == "sdss"
    assert detect_format(DESI_COADDS[0]) == "desi"
    renamed = tmp_path / "whatever.dat"
    shutil.copy(DESI_COADDS[0], renamed)
    assert detect_format(renamed) == "desi"
    assert set(FORMATS) == {"moons1d", "desi", "sdss", "fits", "text", "hdf5", "specutils"}


def test_a_redshift_catalogue_named_as_input_says_so():
    """DESI's redrock-*.fits beside its coadds (picked up by a shell glob) is named for what it is."""
    redrock = sorted((DATA / "desi").glob("redrock-*.fits"))[0]
    with pytest.raises(UserError, match="a redshift catalogue .*REDSHIFTS.*leave it out"):
        detect_format(redrock)


# ----------------------------------------------------------------------------- moons1d


def _write_moons1d(path: Path, band: str, wave_min: float, dispersion: float, flux_cgs, error_cgs,
                   sky_mask, z: float = 1.2):
    """A file laid out as moons1d's Simulation.SavetoFits writes it (simulator.py)."""
    hdu = fits.PrimaryHDU()
    for key, value in (("INST", "MOONS_SIM"), ("R_MODE", "LR"), ("OBS_MODE", "STARE"), ("BAND", band),
                       ("OBNAME", "test"), ("NDIT", 1), ("DIT", 1800.0), ("SEEING", 0.8), ("R", 4200.0),
                       ("SAMPLING", 2.7), ("SKY_AP", 1.1), ("TEL_AP", 8.2), ("TEMPLATE", "t.fits"),
                       ("TYPE", "point-source"), ("Z", z), ("MAG", 22.0), ("MAGTYPE", "AB"), ("WAVE", "H")):
        hdu.header[key] = value
    hdu1 = fits.ImageHDU(data=np.asarray(flux_cgs, dtype=np.float64))
    hdu1.header["NAME"] = "DATA_" + band
    hdu1.header["CRVAL1"] = wave_min
    hdu1.header["CDELT1"] = dispersion
    hdu1.header["CRPIX1"] = 1.0
    hdu1.header["TUNIT1"] = "AA"
    hdu1.header["TUNIT2"] = (u.erg / u.s / u.cm ** 2 / u.AA).to_string("fits")
    hdu2 = fits.ImageHDU(data=np.asarray(error_cgs, dtype=np.float64), header=hdu1.header.copy())
    hdu2.header["NAME"] = "ERR_" + band
    hdu3 = fits.ImageHDU(data=np.asarray(sky_mask).astype(int), header=hdu1.header.copy())
    hdu3.header["NAME"] = "QUAL_" + band
    hdu3.header["TUNIT2"] = ""
    hdu4 = fits.ImageHDU(data=np.ones(len(flux_cgs)), header=hdu1.header.copy())
    hdu4.header["NAME"] = "Sky"
    fits.HDUList([hdu, hdu1, hdu2, hdu3, hdu4]).writeto(path)


def test_moons1d_header_walk_reads_what_astropy_reads(tmp_path, rng):
    """Plain moons1d files are read by walking their headers (no astropy); the arm equals
    astropy's reading, also for a QUAL image astropy scales (BZERO: walked files fall back), and
    a truncated file still ends as a one-line error."""
    from mtopnet.io import moons1d as m1
    from mtopnet.io._fits import open_fits, read_data, walk_fits
    n = 300
    flux, err = rng.normal(2e-18, 1e-19, n), np.full(n, 1e-19)
    sky = np.zeros(n, bool)
    sky[10:14] = True
    plain, scaled, cut = tmp_path / "a_YJ.fits", tmp_path / "b_YJ.fits", tmp_path / "c_YJ.fits"
    _write_moons1d(plain, "YJ", 9340.0, 0.96, flux, err, sky)
    _write_moons1d(scaled, "YJ", 9340.0, 0.96, flux, err, sky)
    with fits.open(scaled, mode="update") as hdul:  # unsigned 16-bit: BZERO = 32768
        hdul[3].data = sky.astype(np.uint16)
    assert [h.header.get("NAME") for h in walk_fits(str(plain))[1:]] == ["DATA_YJ", "ERR_YJ", "QUAL_YJ", "Sky"]
    assert walk_fits(str(scaled))[3].header.get("BZERO") == 32768
    for path in (plain, scaled):
        band, arm = m1._read_arm(str(path))
        with open_fits(str(path)) as hdul:
            def data(i, hdul=hdul, path=str(path)):
                return read_data(hdul, i, path)
            ref_band, ref = m1._arm_from(str(path), [h.header for h in hdul], data)
        assert band == ref_band == "YJ"
        for key in ("wave", "flux", "noise", "mask"):
            np.testing.assert_array_equal(getattr(arm, key), getattr(ref, key), err_msg=key)
        assert detect_format(path) == "moons1d"
    cut.write_bytes(plain.read_bytes()[:-2880])
    assert walk_fits(str(cut)) is None
    assert detect_format(cut) == "moons1d"  # from the primary header alone; the damage is found on reading
    with pytest.raises(UserError, match="truncated or damaged") as exc:
        read_file(cut)
    assert "\n" not in str(exc.value)


def _set_card(path: Path, key: str, card: str, occurrence: int = 0) -> None:
    """Replace the ``occurrence``-th card of keyword ``key`` in ``path`` by ``card`` (raw text)."""
    data = bytearray(path.read_bytes())
    at, start = -1, 0
    for _ in range(occurrence + 1):
        at = data.index(key.ljust(8).encode(), start)
        start = at + 80
    data[at:at + 80] = card.ljust(80).encode()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("key, card, occurrence", [
    ("CRVAL1", "CRVAL1  =             9.34D+03 / Fortran exponent", 0),
    ("SKY_AP", "SKY_AP  =                      / undefined", 0),
    ("CRVAL1", "crval1  =                9340.", 0),  # a lower-case keyword
    ("TUNIT2", "TUNIT2  = 'erg/s/cm2/A'", 0),  # A: the Angstrom, not the ampere
    ("BAND", "BAND    =", 0),
])
def test_moons1d_header_walk_odd_cards(tmp_path, rng, key, card, occurrence):
    """Cards that astropy reads (or that a spectrum means) read the same by the header walk."""
    from mtopnet.io import moons1d as m1
    from mtopnet.io._fits import open_fits, read_data
    path = tmp_path / "a_YJ.fits"
    _write_moons1d(path, "YJ", 9340.0, 0.96, rng.normal(2e-18, 1e-19, 100), np.full(100, 1e-19), np.zeros(100, bool))
    reference = m1._read_arm(str(path))
    _set_card(path, key, card, occurrence)
    band, arm = m1._read_arm(str(path))
    with open_fits(str(path)) as hdul:
        def data(i, hdul=hdul):
            return read_data(hdul, i, str(path))
        ref_band, ref = m1._arm_from(str(path), [h.header for h in hdul], data)
    assert band == ref_band == "YJ"
    for name in ("wave", "flux", "noise", "mask"):
        np.testing.assert_array_equal(getattr(arm, name), getattr(ref, name), err_msg=name)
        if key != "SKY_AP":
            np.testing.assert_allclose(getattr(arm, name), getattr(reference[1], name), rtol=1e-12, err_msg=name)


def test_unparsable_card_in_a_compressed_file_is_one_line(tmp_path):
    """astropy parses a card when its value is asked for; its VerifyError becomes one line."""
    import gzip
    path = tmp_path / "a_YJ.fits"
    _write_moons1d(path, "YJ", 9340.0, 0.96, np.ones(100), np.ones(100), np.zeros(100, bool))
    _set_card(path, "CRVAL1", "CRVAL1  = NAN")
    packed = tmp_path / "a_YJ.fits.gz"
    packed.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
    with pytest.raises(UserError, match="a header card cannot be read") as exc:
        read_file(packed)
    assert "\n" not in str(exc.value)


def test_moons1d_negative_naxis_is_one_line(tmp_path, rng):
    """astropy loops for ever on a negative NAXIS1; the header walk says the file is damaged."""
    path = tmp_path / "a_YJ.fits"
    _write_moons1d(path, "YJ", 9340.0, 0.96, np.ones(100), np.ones(100), np.zeros(100, bool))
    _set_card(path, "NAXIS1", "NAXIS1  =                -2880", 3)
    with pytest.raises(UserError, match="negative NAXISn"):
        read_file(path)


def test_moons1d_files_grouped_per_object(tmp_path, rng):
    arms = {"RI": (6470.0, 0.78, 3700), "YJ": (9340.0, 0.96, 4300), "H": (15210.0, 0.62, 1900)}
    truth = {}
    for target in ("gal001", "gal002"):
        for band, (w0, dw, n) in arms.items():
            if target == "gal002" and band != "H":
                continue  # gal002 was simulated in one arm only
            flux = rng.normal(2e-18, 1e-19, n)
            err = np.full(n, 1e-19)
            sky = np.zeros(n, bool)
            sky[100:105] = True
            err[7] = 0.0  # a zero error: no information
            _write_moons1d(tmp_path / f"{target}_{band}.fits", band, w0, dw, flux, err, sky)
            truth[target, band] = (w0, dw, flux, err, sky)
    assert detect_format(tmp_path / "gal001_RI.fits") == "moons1d"
    batches = list(read_spectra([str(tmp_path)]))
    assert [b.ids.tolist() for b in batches] == [["gal001"], ["gal002"]]
    assert list(batches[0].arms) == ["RI", "YJ", "H"] and list(batches[1].arms) == ["H"]
    for batch in batches:
        target = batch.ids[0]
        for band, arm in batch.arms.items():
            w0, dw, flux, err, sky = truth[target, band]
            np.testing.assert_allclose(arm["wave"], w0 + dw * np.arange(flux.size), rtol=1e-12)
            np.testing.assert_allclose(arm["flux"][0], flux * 1e17, rtol=1e-6)
            ok = err > 0
            np.testing.assert_allclose(arm["ivar"][0][ok], 1.0 / (err[ok] * 1e17) ** 2, rtol=1e-6)
            assert arm["ivar"][0][7] == 0 and arm["mask"][0][7] & MASK_BAD
            np.testing.assert_array_equal((arm["mask"][0] & MASK_SKYLINE) != 0, sky)
    # An extended source: moons1d writes surface brightness; the reader gives the fibre's flux.
    ext = tmp_path / "ext"
    ext.mkdir()
    flux = np.full(50, 1e-18)
    _write_moons1d(ext / "blob_RI.fits", "RI", 6470.0, 0.78, flux, flux / 10, np.zeros(50, bool))
    with fits.open(ext / "blob_RI.fits", mode="update") as hdul:
        for hdu in hdul[1:3]:
            hdu.header["TUNIT2"] = (u.erg / u.s / u.cm ** 2 / u.AA / u.arcsec ** 2).to_string("fits")
    area = np.pi * (1.1 / 2) ** 2
    np.testing.assert_allclose(read_file(ext / "blob_RI.fits").arms["RI"]["flux"][0], 0.1 * area, rtol=1e-6)
    # One arm file alone is one object too.
    single = read_file(tmp_path / "gal001_YJ.fits")
    assert single.ids.tolist() == ["gal001"] and list(single.arms) == ["YJ"]


# ----------------------------------------------------------------------------- generic FITS and text


def _synthetic_batch(rng, arms=("RI", "YJ"), object_id="obj-7", estimated=False) -> SpectraBatch:
    raw = {}
    for k, name in enumerate(arms):
        n = 500 + 37 * k
        wave = np.sort(rng.uniform(6000 + 4000 * k, 9000 + 4000 * k, n))
        flux = rng.normal(1.0, 0.3, n).astype(np.float32)
        ivar = rng.uniform(0.5, 20, n).astype(np.float32)
        mask = np.zeros(n, np.uint8)
        mask[10:14] = MASK_SKYLINE
        mask[50] = MASK_BAD
        mask[60] = 4
        raw[name] = RawArm(wave=wave, flux=flux[None], noise=ivar[None], mask=mask[None])
    return build_block("synthetic", [object_id], raw, noise_estimated=np.array([estimated]))


def _assert_batches_equal(a: SpectraBatch, b: SpectraBatch):
    assert a.ids.tolist() == b.ids.tolist()
    assert list(a.arms) == list(b.arms)
    for name in a.arms:
        for key in ("wave", "flux", "ivar", "mask"):
            assert a.arms[name][key].dtype == b.arms[name][key].dtype, (name, key)
            np.testing.assert_array_equal(a.arms[name][key], b.arms[name][key])
    np.testing.assert_array_equal(a.labels["noise_estimated"], b.labels["noise_estimated"])


def test_generic_fits_round_trip_is_exact(tmp_path, rng):
    batch = _synthetic_batch(rng, estimated=True)
    path = write_fits(tmp_path / "spec.fits", batch)
    assert detect_format(path) == "fits"
    back = read_file(path)
    _assert_batches_equal(batch, back)
    assert back.ids.tolist() == ["obj-7"]
    with pytest.raises(UserError, match="exists"):
        write_fits(tmp_path / "spec.fits", batch)


def test_text_round_trip_is_exact(tmp_path, rng):
    batch = _synthetic_batch(rng, arms=("ALL",), object_id="0295-51585-0596")
    path = write_text(tmp_path / "spec.txt", batch)
    assert detect_format(path) == "text"
    _assert_batches_equal(batch, read_file(path))
    # A real spectrum through text keeps every float32 bit too.
    sdss = read_file(SDSS[1])
    _assert_batches_equal(sdss, read_file(write_text(tmp_path / "sdss.txt", sdss)))


def test_text_csv_with_header_error_and_units(tmp_path):
    path = tmp_path / "spec.csv"
    path.write_text("# id: mygal\n# wave_unit: nm\n"
                    "wavelength,flux,err,mask\n"
                    "650.0,1.5,0.5,0\n650.1,nan,0.5,0\n650.2,2.0,-1,0\n650.3,2.5,0.25,8\n")
    batch = read_file(path)
    arm = batch.arms["ALL"]
    assert batch.ids.tolist() == ["mygal"]
    np.testing.assert_allclose(arm["wave"], [6500.0, 6501.0, 6502.0, 6503.0])
    np.testing.assert_array_equal(arm["flux"][0], np.float32([1.5, 0.0, 2.0, 2.5]))
    np.testing.assert_array_equal(arm["ivar"][0], np.float32([4.0, 0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(arm["mask"][0], [0, MASK_BAD, MASK_BAD, MASK_BAD])


def test_text_positional_columns_and_flux_unit(tmp_path):
    path = tmp_path / "spec.dat"
    path.write_text("# flux_unit: erg/(s cm2 Angstrom)\n5000 2e-17 1e-17\n5001 4e-17 2e-17\n5002 3e-17 1e-17\n")
    arm = read_file(path).arms["ALL"]
    np.testing.assert_allclose(arm["flux"][0], [2.0, 4.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(arm["ivar"][0], [1.0, 0.25, 1.0], rtol=1e-6)


# ----------------------------------------------------------------------------- air -> vacuum


def test_air_wavelengths_are_converted_to_vacuum(tmp_path, rng):
    from specutils.utils.wcs_utils import air_to_vac

    air = np.array([4861.333, 5006.843, 6562.801, 8000.0, 12000.0])
    flux = rng.normal(1, 0.1, air.size)
    primary = fits.PrimaryHDU()
    primary.header["AIRORVAC"] = "air"
    table = fits.BinTableHDU.from_columns([fits.Column(name="WAVELENGTH", format="D", array=air),
                                           fits.Column(name="FLUX", format="D", array=flux),
                                           fits.Column(name="ERROR", format="D", array=np.full(air.size, 0.1))],
                                          name="VIS")
    fits.HDUList([primary, table]).writeto(tmp_path / "air.fits")
    wave = read_file(tmp_path / "air.fits").arms["VIS"]["wave"]
    np.testing.assert_allclose(wave, air_to_vac(air * u.AA).to_value(u.AA), rtol=1e-12)
    # Independent check: the standard vacuum wavelengths of Hbeta, [OIII] and Halpha.
    np.testing.assert_allclose(wave[:3], [4862.683, 5008.240, 6564.614], atol=0.01)
    # Text: the same through a comment.
    text = tmp_path / "air.txt"
    text.write_text("# airorvac: air\n" + "\n".join(f"{w} {f}" for w, f in zip(air, flux, strict=False)))
    with pytest.warns(NoiseEstimatedWarning):
        np.testing.assert_allclose(read_file(text).arms["ALL"]["wave"], wave, rtol=1e-12)


# ----------------------------------------------------------------------------- specutils Spectrum


def test_specutils_spectrum_fnu_with_uncertainty_and_mask(tmp_path):
    from astropy.nddata import StdDevUncertainty
    from specutils import Spectrum

    wave = np.linspace(5000, 6000, 200)
    fnu = np.full((2, 200), 1e-3)  # Jy
    mask = np.zeros((2, 200), bool)
    mask[1, 5] = True
    spec = Spectrum(spectral_axis=wave * u.AA, flux=fnu * u.Jy,
                    uncertainty=StdDevUncertainty(np.full((2, 200), 1e-4) * u.Jy), mask=mask)
    batch = from_specutils(spec, ids=["a", "b"])
    # f_lambda = f_nu c / lambda^2; 1 Jy = 1e-23 erg/s/cm2/Hz.
    expected = 1e-3 * 1e-23 * C_AA_PER_S / wave ** 2 / 1e-17
    arm = batch.arms["ALL"]
    np.testing.assert_allclose(arm["flux"][0], expected, rtol=1e-6)
    np.testing.assert_allclose(arm["ivar"][0], 1.0 / (0.1 * expected) ** 2, rtol=1e-5)
    assert arm["mask"][1, 5] & MASK_BAD and arm["ivar"][1, 5] == 0
    # Spectrum objects and files in one stream, in input order.
    ids = [i for b in read_spectra([spec, str(SDSS[0])]) for i in b.ids.tolist()]
    assert ids == ["Spectrum #1_0", "Spectrum #1_1", "0280-51612-0117"]


# ----------------------------------------------------------------------------- the project store


def test_store_files_are_read_with_their_labels(tmp_path, rng):
    n, length = 5, 50
    batch = SpectraBatch(ids=np.arange(10, 10 + n, dtype=np.int64),
                         arms={"RI": {"wave": np.linspace(6500, 9000, length),
                                      "flux": rng.normal(size=(n, length)).astype(np.float32),
                                      "ivar": np.ones((n, length), np.float32),
                                      "mask": np.zeros((n, length), np.uint8)}},
                         labels={"z": np.linspace(0.5, 2.5, n)})
    write_store(tmp_path / "s.h5", batch)
    assert detect_format(tmp_path / "s.h5") == "hdf5"
    batches = list(read_spectra([str(tmp_path / "s.h5")], batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert np.concatenate([b.ids for b in batches]).tolist() == list(range(10, 15))
    np.testing.assert_array_equal(np.concatenate([b.labels["z"] for b in batches]), batch.labels["z"])
    assert not np.concatenate([b.labels["noise_estimated"] for b in batches]).any()


# ----------------------------------------------------------------------------- malformed input


def test_truncated_file_is_a_one_line_user_error(tmp_path):
    raw = SDSS[0].read_bytes()
    for size in (100, 30000, len(raw) - 5000):
        path = tmp_path / f"spec-0280-51612-0117-{size}.fits"
        path.write_bytes(raw[:size])
        with pytest.raises(UserError) as exc:
            list(read_spectra([str(path)], format="sdss"))
        _one_line(exc, path.name)
        with pytest.raises(UserError) as exc:
            list(read_spectra([str(path)]))
        _one_line(exc, path.name)


def test_wrong_hdu_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="no COADD HDU") as exc:
        list(read_spectra([str(DESI_COADDS[0])], format="sdss"))
    _one_line(exc, DESI_COADDS[0].name)
    with pytest.raises(UserError, match="_WAVELENGTH") as exc:
        list(read_spectra([str(SDSS[0])], format="desi"))
    _one_line(exc, SDSS[0].name)
    # A generic FITS file whose arm is an image, not a table.
    path = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones(10), name="VIS")]).writeto(path)
    with pytest.raises(UserError, match="no BINTABLE") as exc:
        list(read_spectra([str(path)], format="fits"))
    _one_line(exc, path.name)


def test_mismatched_lengths_are_one_line_user_errors(tmp_path):
    # DESI: a flux array one pixel shorter than its wavelengths.
    path = tmp_path / "coadd-bad.fits"
    with fits.open(DESI_COADDS[0]) as hdul:
        hdul["B_FLUX"].data = hdul["B_FLUX"].data[:, :-1].copy()
        hdul.writeto(path)
    with pytest.raises(UserError, match="mismatched lengths") as exc:
        list(read_spectra([str(path)]))
    _one_line(exc, path.name)
    # DESI: two spectra for one FIBERMAP row.
    path2 = tmp_path / "coadd-rows.fits"
    with fits.open(DESI_COADDS[0]) as hdul:
        for arm in "BRZ":
            for key in ("FLUX", "IVAR", "MASK"):
                hdul[f"{arm}_{key}"].data = np.repeat(hdul[f"{arm}_{key}"].data, 2, axis=0)
        hdul.writeto(path2)
    with pytest.raises(UserError, match="FIBERMAP rows") as exc:
        list(read_spectra([str(path2)]))
    _one_line(exc, path2.name)
    # Text: a short row.
    path3 = tmp_path / "ragged.txt"
    path3.write_text("5000 1 0.1\n5001 1\n5002 1 0.1\n")
    with pytest.raises(UserError, match="line 2") as exc:
        list(read_spectra([str(path3)]))
    _one_line(exc, path3.name)


def test_unknown_format_and_missing_files(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 8)
    notes = tmp_path / "README.md"
    notes.write_text("# Notes\nThese are spectra.\n")
    for path in (junk, notes):
        with pytest.raises(UserError, match="not a moons1d, DESI, SDSS, generic FITS or text spectrum") as exc:
            read_spectra([str(path)])
        _one_line(exc, path.name)
    with pytest.raises(UserError, match="no such file") as exc:
        read_spectra([str(tmp_path / "absent.fits")])
    _one_line(exc, "absent.fits")
    with pytest.raises(UserError, match="no files match"):
        read_spectra([str(tmp_path / "*.fits")])
    with pytest.raises(UserError, match="unknown format 'fitz'"):
        read_spectra([str(SDSS[0])], format="fitz")
    with pytest.raises(UserError, match="no spectra found"), pytest.warns(ReaderWarning):
        read_spectra([str(tmp_path)])


# ----------------------------------------------------------------------------- noise


def test_missing_noise_is_estimated_within_20_percent_and_flagged(tmp_path, rng):
    n = 4000
    wave = np.linspace(6000.0, 9000.0, n)
    sigma = 0.5 + (wave - 6000.0) / 3000.0  # noise rising by x3 across the spectrum
    continuum = 10 + 3 * np.sin(wave / 300.0)
    lines = sum(a * np.exp(-0.5 * ((wave - c) / 3.0) ** 2) for a, c in ((50, 6563), (30, 7000), (80, 8500)))
    flux = continuum + lines + rng.normal(0, sigma)
    for k in range(2):
        np.savetxt(tmp_path / f"s{k}.txt", np.c_[wave, flux], header="wavelength flux")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(read_spectra([str(tmp_path / "s0.txt"), str(tmp_path / "s1.txt")]))
    noise_warnings = [w for w in caught if issubclass(w.category, NoiseEstimatedWarning)]
    assert len(noise_warnings) == 1  # once per stream
    batch = batches[0]
    assert batch.labels["noise_estimated"].tolist() == [True, True]
    estimated = 1.0 / np.sqrt(batch.arms["ALL"]["ivar"][0].astype(np.float64))
    ratio = estimated / sigma
    assert np.median(np.abs(ratio - 1)) < 0.1
    assert np.percentile(np.abs(ratio - 1), 90) < 0.2
    # The function itself, with some pixels masked out.
    good = np.ones(n, bool)
    good[1000:1100] = False
    est = estimate_noise(flux, good)
    assert np.all(np.isfinite(est)) and np.median(np.abs(est / sigma - 1)) < 0.1


def test_given_noise_is_not_flagged_and_unusable_noise_is_estimated(tmp_path, rng):
    wave = np.linspace(5000, 6000, 300)
    flux = rng.normal(5, 1, 300)
    given_ = tmp_path / "given.txt"
    np.savetxt(given_, np.c_[wave, flux, np.ones(300)])
    assert not read_file(given_).labels["noise_estimated"][0]
    unusable = tmp_path / "unusable.txt"
    np.savetxt(unusable, np.c_[wave, flux, np.full(300, np.nan)])
    with pytest.warns(NoiseEstimatedWarning):
        batch = read_file(unusable)
    assert batch.labels["noise_estimated"][0]
    assert np.median(1 / np.sqrt(batch.arms["ALL"]["ivar"][0])) == pytest.approx(1.0, rel=0.2)


def test_estimated_noise_agrees_with_the_pipeline_noise_of_real_spectra():
    for path in (SDSS[1], DESI_COADDS[0]):
        batch = read_file(path)
        for arm in batch.arms.values():
            good = arm["ivar"][0] > 0
            ratio = estimate_noise(arm["flux"][0], good)[good] * np.sqrt(arm["ivar"][0][good])
            assert abs(np.median(ratio) - 1) < 0.2, path.name


# ----------------------------------------------------------------------------- sanitising (property tests)

_bad_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                        st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 0.0, 1e39, -1e39, 1e-46]))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(0, 40)), elements=_bad_floats),
       st.data())
def test_sanitize_never_lets_nan_or_inf_through(flux, data):
    ivar = data.draw(hnp.arrays(np.float64, flux.shape, elements=_bad_floats))
    mask = data.draw(hnp.arrays(np.int64, flux.shape, elements=st.integers(0, 2 ** 40)))
    f, i, m = sanitize(flux, ivar, mask)
    assert f.dtype == np.float32 and i.dtype == np.float32 and m.dtype == np.uint8
    assert np.all(np.isfinite(f)) and np.all(np.isfinite(i)) and np.all(i >= 0)
    with np.errstate(invalid="ignore"):
        bad_in = ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar < 0)
    assert np.all(m[bad_in] & MASK_BAD)
    np.testing.assert_array_equal(i == 0, (m & MASK_BAD) != 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 60), st.sampled_from(["ivar", "error", None]), st.data())
def test_readers_sanitising_handles_random_bad_arrays(length, kind, data):
    wave = np.linspace(4000, 5000, length)
    flux = data.draw(hnp.arrays(np.float64, (2, length), elements=_bad_floats | st.floats(-10, 10)))
    noise = None if kind is None else data.draw(
        hnp.arrays(np.float64, (2, length), elements=_bad_floats | st.floats(0, 10)))
    arms = {"A": RawArm(wave=wave, flux=flux, noise=noise, noise_kind=kind or "ivar"),
            "B": RawArm(wave=np.linspace(5000, 6000, 5), flux=np.ones((2, 5)), noise=np.ones((2, 5)))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = build_block("random", ["x", "y"], arms)
    assert ("A" in batch.arms) == (length > 0)  # zero-length arms are dropped, not propagated
    for arm in batch.arms.values():
        for key in ("wave", "flux", "ivar"):
            assert np.all(np.isfinite(arm[key]))
        assert np.all(arm["ivar"] >= 0)
        np.testing.assert_array_equal(arm["ivar"] == 0, (arm["mask"] & MASK_BAD) != 0)
    batch.validate()


def test_only_empty_arms_is_an_error():
    with pytest.raises(UserError, match="no spectrum data"), pytest.warns(ReaderWarning):
        build_block("empty.fits", ["x"], {"A": RawArm(wave=np.zeros(0), flux=np.zeros((1, 0)))})


# ----------------------------------------------------------------------------- specutils


def test_a_format_only_specutils_knows_is_read_through_its_registry(tmp_path, rng):
    """A 1-D FITS image with a wavelength WCS (IRAF, many archives): none of mtopnet's readers
    knows it, specutils' ``wcs1d-fits`` loader does; read through SpectrumList.read."""
    n = 3000
    flux = rng.normal(2.0, 0.1, n).astype(np.float32)
    h = fits.Header()
    h.update(CRVAL1=6500.0, CDELT1=3.8, CRPIX1=1, CTYPE1="WAVE", CUNIT1="Angstrom",
             BUNIT="1e-17 erg / (s cm2 Angstrom)")
    path = tmp_path / "iraf.fits"
    fits.PrimaryHDU(flux, header=h).writeto(path)
    assert detect_format(path) == "specutils"
    batch = read_file(path)
    arm = next(iter(batch.arms.values()))
    np.testing.assert_allclose(arm["wave"], 6500.0 + 3.8 * np.arange(n), rtol=1e-9)
    np.testing.assert_allclose(arm["flux"][0], flux, rtol=1e-6)
    assert read_file(path, format="specutils").ids.tolist() == batch.ids.tolist()


def test_moons1d_reader_registered_with_specutils(tmp_path, rng):
    import warnings

    from specutils import Spectrum

    import mtopnet.io.specutils_io as sio
    n = 400
    flux = rng.normal(2e-18, 1e-19, n)
    err = np.full(n, 1e-19)
    sky = np.zeros(n, bool)
    sky[10:12] = True
    path = tmp_path / "gal7_YJ.fits"
    _write_moons1d(path, "YJ", 9340.0, 0.96, flux, err, sky)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = Spectrum.read(str(path))  # identified by content: mtopnet's loader
        named = Spectrum.read(str(path), format=sio.MOONS1D_LOADER)
    np.testing.assert_allclose(spec.spectral_axis.to_value(u.AA), 9340.0 + 0.96 * np.arange(n), rtol=1e-12)
    np.testing.assert_allclose(spec.flux.to_value(u.erg / u.s / u.cm ** 2 / u.AA), flux, rtol=1e-6)
    assert spec.meta["band"] == "YJ" and spec.meta["id"] == "gal7"
    assert np.array_equal(spec.mask[10:12], [True, True]) and not spec.mask[0]
    np.testing.assert_allclose(named.flux.value, spec.flux.value)
    sio.register_moons1d()  # a second registration is a no-op
