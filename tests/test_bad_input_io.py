"""Bad input and bad days in the readers, preprocessing, checkpoints and the simulator.

Each test names the item of issue 13 ("Bad input and bad days") that it covers. Inputs are
built in code; the shared bug cases (``../shared/data/bugcases``) are used when present.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from mtopnet.config import UserError
from mtopnet.preprocess import PreprocessConfig, Preprocessor, rebin_matrix
from mtopnet.store import SpectraBatch

BUGCASES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bugcases"
if not BUGCASES.is_dir():
    BUGCASES = Path("/work/shared/data/bugcases")


def _one_arm(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, arm: str = "ALL") -> SpectraBatch:
    return SpectraBatch(ids=np.arange(flux.shape[0]),
                        arms={arm: {"wave": wave, "flux": flux.astype(np.float32), "ivar": ivar.astype(np.float32),
                                    "mask": np.zeros(flux.shape, np.uint8)}})


# --- issue 13 item 2: a gap inside an arm --------------------------------------------------------

def test_gap_inside_an_arm_is_missing_data_not_a_stretched_pixel():
    """Issue 13 item 2: pixels dropped from an arm (a 980 A hole) must leave the grid empty there.

    Before the fix the pixel next to the gap was stretched over half of it, so one noisy pixel
    (flux -30 on a continuum of 2) filled ~490 A of the grid.
    """
    wave = np.arange(9340.0, 13500.0, 0.98)
    flux = np.full((1, wave.size), 2.0)
    ivar = np.full((1, wave.size), 100.0)
    keep = np.ones(wave.size, bool)
    keep[2000:3000] = False
    edge = 3000  # first pixel after the gap: one wild, noisy value
    flux[0, edge], ivar[0, edge] = -30.0, 0.1
    pre = Preprocessor(PreprocessConfig())
    g_flux, g_ivar, _ = pre.rebin(_one_arm(wave[keep], flux[:, keep], ivar[:, keep]))
    grid = PreprocessConfig().wave
    hole = (grid > wave[2000] + 3) & (grid < wave[2999] - 3)
    assert hole.sum() > 200
    assert np.all(g_ivar[0, hole] == 0)  # the gap is missing data
    # the noisy edge pixel touches at most ~2 grid pixels, not hundreds
    low = (g_ivar[0] > 0) & (g_flux[0] < 1.0)
    assert low.sum() <= 3


def test_merged_three_arm_table_keeps_the_inter_arm_gap_empty():
    """Issue 13 item 2: one merged table holding RI+YJ+H (as a text file or a specutils object
    gives) must not stretch the arms' end pixels over the 1000 A YJ-H gap."""
    ri = np.arange(6470.0, 9340.0, 0.70)
    yj = np.arange(9340.5, 13500.0, 0.98)
    h = np.arange(14520.0, 18000.0, 0.90)
    wave = np.concatenate([ri, yj, h])
    m = rebin_matrix(wave, PreprocessConfig().wave_edges)
    grid = PreprocessConfig().wave
    covered = np.asarray(m.sum(axis=1)).ravel() > 0
    gap = (grid > 13510) & (grid < 14510)
    assert gap.sum() > 50 and not covered[gap].any()
    # the RI/YJ junction (0.9 A apart) is not a gap
    junction = (grid > 9300) & (grid < 9380)
    assert covered[junction].all()
    # every native pixel still lands fully (weights sum to one) away from the grid ends
    frac = np.asarray(m.sum(axis=0)).ravel()
    assert np.allclose(frac[1:-1], 1.0)


def test_single_dropped_pixels_do_not_open_holes():
    """Issue 13 item 2: a pixel dropped here and there (spacing twice the typical) is not a gap."""
    wave = np.arange(8000.0, 9000.0, 1.0)
    keep = np.ones(wave.size, bool)
    keep[100:900:7] = False
    m = rebin_matrix(wave[keep], PreprocessConfig().wave_edges)
    grid = PreprocessConfig().wave
    inside = (grid > 8005) & (grid < 8995)
    assert (np.asarray(m.sum(axis=1)).ravel()[inside] > 0).all()


@pytest.mark.skipif(not (BUGCASES / "gap-stretch").is_dir(), reason="shared bug cases not present")
def test_bugcase_gap_stretch_dropped_equals_masked(tmp_path):
    """Issue 13 item 2 (bug case gap-stretch): the same spectrum with YJ pixels 2000-2999 dropped
    or masked gives the same stellar mass (was 1.20 vs 9.06 dex)."""
    import warnings

    from mtopnet.io import read_spectra
    from mtopnet.predict import load_model, predict_batches
    case = BUGCASES / "gap-stretch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model("moons-lr")
        parts = list(predict_batches(model, read_spectra([str(case / "moons_r8_noisyedge_dropped.fits"),
                                                          str(case / "moons_r8_noisyedge_masked.fits")])))
    rows = {k: np.concatenate([p[k] for p in parts]) for k in ("Z", "LOGMSTAR", "LOGSFR", "ZWARN")}
    assert abs(rows["LOGMSTAR"][0] - rows["LOGMSTAR"][1]) < 0.3
    assert abs(rows["LOGSFR"][0] - rows["LOGSFR"][1]) < 0.5
    assert abs(rows["Z"][0] - rows["Z"][1]) < 0.002


@pytest.mark.parametrize("factor, expected", [(1.0, False), (1e-6, True), (1e7, True), (1e-3, False)])
def test_implausible_flux_scale_is_flagged(factor, expected):
    """Issue 13 item 2: a flux scale no galaxy can have (a continuum of 2e-6 detected at high S/N,
    fainter than a 10^6 M_sun galaxy, or one 1e7 times too bright: a wrong flux unit) is flagged
    per object in ``implausible_flux``; a faint but possible one (2e-3) is not."""
    rng = np.random.default_rng(1)
    wave = np.arange(6500.0, 17900.0, 1.0)
    flux = (2.0 + 0.1 * rng.standard_normal((1, wave.size))) * factor
    ivar = np.full((1, wave.size), min(100.0 / factor ** 2, 1e11))
    x = Preprocessor(PreprocessConfig())(_one_arm(wave, flux, ivar))
    assert x.continuum_detected[0]
    assert x.implausible_flux.tolist() == [expected]


def test_merged_table_preprocesses_like_separate_arms():
    """Issue 13 item 2: the three MOONS arms given as one merged table give the same network
    input as the three arms given apart (was: masses 0.3-4 dex low from the stretched gaps)."""
    rng = np.random.default_rng(3)
    waves = {"RI": np.arange(6470.0, 9340.0, 0.70), "YJ": np.arange(9340.5, 13500.0, 0.98),
             "H": np.arange(14520.0, 18000.0, 0.90)}
    arms = {}
    for name, w in waves.items():
        flux = 1.0 + 0.3 * rng.standard_normal((2, w.size))
        arms[name] = {"wave": w, "flux": flux.astype(np.float32), "ivar": np.full(flux.shape, 11.0, np.float32),
                      "mask": np.zeros(flux.shape, np.uint8)}
    apart = SpectraBatch(ids=np.arange(2), arms=arms)
    merged = SpectraBatch(ids=np.arange(2), arms={"ALL": {k: np.concatenate([a[k] for a in arms.values()], axis=-1)
                                                          for k in ("wave", "flux", "ivar", "mask")}})
    pre = Preprocessor(PreprocessConfig())
    a, b = pre(apart), pre(merged)
    diff = np.abs(b.spectrum - a.spectrum)
    assert (diff > 2e-4).sum(axis=(1, 2)).max() <= 6  # only the grid pixels at the two junctions
    assert diff.max() < 0.05
    np.testing.assert_allclose(b.scale, a.scale, rtol=1e-4)


# --- issue 13 item 3: damaged model weights ------------------------------------------------------

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "src" / "mtopnet" / "models" / "moons-lr.pt"


def _flip_bytes_in_largest_member(src: Path, dst: Path, n_values: int = 1000) -> None:
    """Flip an exponent bit of ``n_values`` float32 values inside the largest zip member (a tensor),
    as the bug case corrupt-checkpoint-weights does; the zip's CRC no longer matches."""
    import struct
    import zipfile
    with zipfile.ZipFile(src) as z:
        big = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(src.read_bytes())
    n, e = struct.unpack("<HH", data[big.header_offset + 26: big.header_offset + 30])
    start = big.header_offset + 30 + n + e
    for k in range(0, 4 * n_values, 4):
        data[start + 1000 + k + 3] ^= 0x40
    dst.write_bytes(bytes(data))


def _rezip_without_crc_error(src: Path, dst: Path) -> None:
    """Rewrite a damaged archive with fresh CRCs: only a hash of the weights can tell."""
    import zipfile
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            with zin.open(info) as handle:
                handle._expected_crc = None  # read past the CRC check
                zout.writestr(info, handle.read())


def test_shipped_checkpoint_with_flipped_weight_bytes_is_refused(tmp_path):
    """Issue 13 item 3 (bug case corrupt-checkpoint-weights): bytes flipped inside a tensor of a
    checkpoint without a stored hash are found by the archive's CRCs: one-line UserError."""
    from mtopnet.checkpoint import read_checkpoint
    bad = tmp_path / "weights_flip.pt"
    _flip_bytes_in_largest_member(SHIPPED_MODEL, bad)
    with pytest.raises(UserError, match="damaged") as info:
        read_checkpoint(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    read_checkpoint(SHIPPED_MODEL)  # the intact shipped model still loads


def test_weights_hash_is_stored_and_verified(tmp_path):
    """Issue 13 item 3: a saved checkpoint stores a SHA-256 of its weights; weights changed
    behind the archive's back (fresh CRCs) are refused with a one-line UserError."""
    import torch

    from mtopnet.checkpoint import read_checkpoint, save_checkpoint, weights_sha256
    state = {"a.weight": torch.arange(4096, dtype=torch.float32).reshape(64, 64), "a.bias": torch.zeros(64),
             "n": torch.tensor(3)}
    payload = {"state_dict": state, "model_config": {}, "preprocess": {}, "z_bins": {}, "label_norm": {}}
    good = tmp_path / "good.pt"
    save_checkpoint(good, payload)
    loaded = read_checkpoint(good)
    assert loaded["weights_sha256"] == weights_sha256(state)
    flipped, rezipped = tmp_path / "flip.pt", tmp_path / "rezip.pt"
    _flip_bytes_in_largest_member(good, flipped, n_values=10)
    _rezip_without_crc_error(flipped, rezipped)
    with pytest.raises(UserError, match="rezip.pt: model weights are damaged"):
        read_checkpoint(rezipped)


# --- issue 13 item 5: damaged compressed files ---------------------------------------------------

def _three_arm_fits_gz(tmp_path: Path) -> Path:
    """A generic three-arm FITS spectrum, gzip-compressed (built in code)."""
    import gzip

    from mtopnet.io import write_fits
    rng = np.random.default_rng(5)
    arms = {}
    for name, (lo, hi, step) in {"RI": (6470, 9340, 0.7), "YJ": (9340.5, 13500, 0.98),
                                 "H": (14520, 18000, 0.9)}.items():
        w = np.arange(lo, hi, step)
        arms[name] = {"wave": w, "flux": (1 + 0.2 * rng.standard_normal((1, w.size))).astype(np.float32),
                      "ivar": np.full((1, w.size), 25.0, np.float32), "mask": np.zeros((1, w.size), np.uint8)}
    plain = write_fits(tmp_path / "spec.fits", SpectraBatch(ids=np.array([7]), arms=arms))
    packed = tmp_path / "spec.fits.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
    return packed


@pytest.mark.parametrize("damage", ["cut30", "cut60", "cut95", "flip"])
def test_truncated_or_damaged_fits_gz_is_refused(tmp_path, damage):
    """Issue 13 item 5: a .fits.gz cut short (or with a damaged byte) is refused with one line,
    like the plain .fits cut the same way (was: read as far as it went, a confident row)."""
    from mtopnet.io import read_file, read_spectra
    packed = _three_arm_fits_gz(tmp_path)
    assert len(read_file(packed).arms) == 3
    data = bytearray(packed.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: int(len(data) * int(damage[3:]) / 100)]
    bad = tmp_path / "cut.fits.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match="truncated or damaged") as info:
        list(read_spectra([str(bad)]))
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="truncated or damaged"):
        list(read_spectra([str(bad)], format="fits"))


# --- issue 13 item 7: BAD_INPUT never set ---------------------------------------------------------

def _text_spectrum(path: Path, flux: np.ndarray, ivar: np.ndarray) -> Path:
    wave = np.linspace(8000.0, 9000.0, flux.size)
    rows = zip(wave, flux, ivar, strict=True)
    lines = ["wavelength flux ivar"] + [f"{float(w)!r} {float(f)!r} {float(i)!r}" for w, f, i in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_readers_count_the_pixels_they_clean(tmp_path):
    """Issue 13 item 7: NaN/inf flux, inf ivar and negative ivar cleaned by a reader are counted
    per object in ``SpectraBatch.n_bad_pixels`` and make ``bad_input`` (ZWARN bit POORDATA) true;
    a clean file counts zero. (Before: the readers cleaned them silently, so the bit was never set.)"""
    from mtopnet.io import read_file, read_spectra
    rng = np.random.default_rng(2)
    flux = 1 + 0.1 * rng.standard_normal(400)
    ivar = np.full(400, 100.0)
    clean = read_file(_text_spectrum(tmp_path / "clean.txt", flux, ivar))
    assert clean.n_bad_pixels.tolist() == [0]
    flux[[3, 50]] = [np.nan, np.inf]
    ivar[[7, 8, 9]] = [-1.0, np.inf, np.nan]
    dirty = read_file(_text_spectrum(tmp_path / "dirty.txt", flux, ivar))
    assert dirty.n_bad_pixels.tolist() == [5]
    both = list(read_spectra([str(tmp_path / "clean.txt"), str(tmp_path / "dirty.txt")]))
    assert len(both) == 1 and both[0].n_bad_pixels.tolist() == [0, 5]
    x = Preprocessor(PreprocessConfig())(both[0])
    assert x.bad_input.tolist() == [False, True]
    assert both[0].subset(slice(1, 2)).n_bad_pixels.tolist() == [5]


def test_store_reader_counts_cleaned_pixels(tmp_path):
    """Issue 13 item 7: NaN in an HDF5 store is counted too; a batch built in code counts zeros."""
    from mtopnet.io import read_spectra
    from mtopnet.store import write_store
    wave = np.linspace(8000.0, 9000.0, 100)
    flux = np.ones((3, 100), np.float32)
    flux[1, :10] = np.nan
    batch = _one_arm(wave, flux, np.ones((3, 100)))
    assert batch.n_bad_pixels.tolist() == [0, 0, 0]
    write_store(tmp_path / "s.h5", batch)
    read = list(read_spectra([str(tmp_path / "s.h5")]))[0]
    assert read.n_bad_pixels.tolist() == [0, 10, 0]


@pytest.mark.skipif(not (BUGCASES / "bad-input-bit-never-set").is_dir(), reason="shared bug cases not present")
def test_bugcase_bad_input_bit_is_set():
    """Issue 13 item 7 (bug case bad-input-bit-never-set): 10% NaN flux and 20 inf ivar -> POORDATA (once BAD_INPUT)."""
    import warnings

    from mtopnet.io import read_spectra
    from mtopnet.predict import ZWarn, load_model, predict_batches
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = list(read_spectra([str(BUGCASES / "bad-input-bit-never-set" / "moons-nan10pct.fits")]))[0]
        assert batch.n_bad_pixels[0] > 1000
        rows = list(predict_batches(load_model("moons-lr"), [batch]))[0]
    assert rows["ZWARN"][0] & int(ZWarn.POORDATA)


# --- issue 13 item 11: a silent misread of plain text ---------------------------------------------

def _columns_file(path: Path, *columns: np.ndarray, header: str | None = None) -> Path:
    lines = [header] if header else []
    lines += [" ".join(repr(float(v)) for v in row) for row in zip(*columns, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _noisy_spectrum(n: int = 600, sigma: float = 0.1):
    rng = np.random.default_rng(11)
    wave = np.linspace(8000.0, 9000.0, n)
    flux = 1.0 + 0.3 * np.sin(wave / 80.0) + sigma * rng.standard_normal(n)
    return wave, flux, rng


@pytest.mark.parametrize("third", ["mask01", "zeros", "unrelated"])
def test_unnamed_third_column_that_is_not_an_error_is_refused(tmp_path, third):
    """Issue 13 item 11: wave, flux and an unnamed third column holding a 0/1 mask, zeros, or values
    unrelated to the flux scatter (100x it: a sky or continuum column) are refused with a message
    that says how to name the columns (was: read as wave, flux, error without a warning)."""
    from mtopnet.io import read_file
    wave, flux, rng = _noisy_spectrum()
    column = {"mask01": (rng.random(wave.size) < 0.1).astype(float), "zeros": np.zeros(wave.size),
              "unrelated": np.full(wave.size, 10.0) + rng.random(wave.size)}[third]
    path = _columns_file(tmp_path / "three.txt", wave, flux, column)
    with pytest.raises(UserError, match="wave flux err") as info:
        read_file(path)
    assert "column 3" in str(info.value) and "\n" not in str(info.value)


def test_unnamed_error_column_and_named_mask_column_are_read(tmp_path):
    """Issue 13 item 11: a true 1-sigma error as the unnamed third column is read as such; the
    same file with a header ``wave flux mask`` reads the 0/1 column as a mask."""
    from mtopnet.io import read_file
    wave, flux, rng = _noisy_spectrum()
    good = read_file(_columns_file(tmp_path / "err.txt", wave, flux, np.full(wave.size, 0.1)))
    np.testing.assert_allclose(good.arms["ALL"]["ivar"][0], 100.0, rtol=1e-5)
    mask = (rng.random(wave.size) < 0.1).astype(float)
    named = read_file(_columns_file(tmp_path / "mask.txt", wave, flux, mask, header="wave flux mask"))
    assert ((named.arms["ALL"]["mask"][0] & 1) != 0).sum() >= mask.sum()
    assert named.labels["noise_estimated"][0]


# --- issue 13 item 10: error wording --------------------------------------------------------------

@pytest.mark.parametrize("name, content, expected", [
    ("empty.txt", b"", "file is empty"),
    ("header_only.txt", b"wavelength flux ivar\n", "no data rows"),
    ("comments_only.txt", b"# id: 3\n# just a comment\n\n", "no data rows"),
    ("damaged.fits", b"SIMPL\x00\x17\xff" + bytes(range(256)) * 4, "not a spectrum file"),
    ("words.txt", b"hello world\nthis is prose\n", "no numeric columns"),
])
def test_unreadable_files_say_what_is_wrong(tmp_path, name, content, expected):
    """Issue 13 item 10: empty, header-only and damaged files get a line saying what is wrong with
    the file, and the option is named as the CLI spells it (--format), not 'pass format='."""
    from mtopnet.io import read_spectra
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=expected) as info:
        read_spectra([str(path)])
    message = str(info.value)
    assert "\n" not in message and "pass format=" not in message and str(path) in message


def test_bom_prefixed_text_is_read(tmp_path):
    """Issue 13 item 10: a UTF-8 text spectrum that starts with a byte-order mark is simply read."""
    from mtopnet.io import read_file
    wave, flux, _ = _noisy_spectrum()
    plain = _columns_file(tmp_path / "plain.txt", wave, flux, np.full(wave.size, 0.1), header="wave flux err")
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    a, b = read_file(plain), read_file(bom)
    np.testing.assert_array_equal(a.arms["ALL"]["flux"], b.arms["ALL"]["flux"])
    np.testing.assert_array_equal(a.arms["ALL"]["ivar"], b.arms["ALL"]["ivar"])


# --- issue 13 item 9: memory grows with the number of targets in one file --------------------------

def _synthetic_desi_coadd(path: Path, n: int, n_pix: int = 300) -> Path:
    """A DESI-like coadd (B and R arms, FIBERMAP) with ``n`` targets, built in code."""
    from astropy.io import fits
    rng = np.random.default_rng(9)
    hdus = [fits.PrimaryHDU(),
            fits.BinTableHDU.from_columns([fits.Column("TARGETID", "K", array=np.arange(n) + 1000)],
                                          name="FIBERMAP")]
    for arm, lo in (("B", 3600.0), ("R", 5760.0)):
        wave = lo + 0.8 * np.arange(n_pix)
        flux = (1 + 0.1 * rng.standard_normal((n, n_pix))).astype(np.float32)
        hdus += [fits.ImageHDU(wave, name=f"{arm}_WAVELENGTH"),
                 fits.ImageHDU(flux, name=f"{arm}_FLUX"),
                 fits.ImageHDU(np.full((n, n_pix), 100.0, np.float32), name=f"{arm}_IVAR"),
                 fits.ImageHDU(np.zeros((n, n_pix), np.int32), name=f"{arm}_MASK")]
        hdus[-3].header["BUNIT"] = "10**-17 erg/(s cm2 Angstrom)"
    fits.HDUList(hdus).writeto(path)
    return path


def test_multi_target_desi_coadd_is_read_in_chunks(tmp_path):
    """Issue 13 item 9: a DESI coadd with many targets is read in chunks of targets (so memory stays
    flat in the number of targets), and the chunks together equal the whole file."""
    from mtopnet.io import read_spectra
    from mtopnet.io.desi import read_desi
    path = _synthetic_desi_coadd(tmp_path / "coadd-many.fits", 50)
    blocks = list(read_desi(str(path), chunk_rows=16))
    assert [len(b) for b in blocks] == [16, 16, 16, 2]
    batches = read_spectra([str(path)], batch_size=16)
    first = next(batches)
    assert len(first) == 16
    rest = list(batches)
    assert [len(b) for b in rest] == [16, 16, 2]
    whole = list(read_spectra([str(path)], batch_size=1000))[0]
    np.testing.assert_array_equal(np.concatenate([b.ids for b in [first] + rest]), whole.ids)
    np.testing.assert_array_equal(np.concatenate([b.arms["R"]["flux"] for b in [first] + rest]),
                                  whole.arms["R"]["flux"])


# --- issue 13 item 8: orphaned workers ----------------------------------------------------------

_POOL_SCRIPT = """
import time
from mtopnet.cluster import Task, run_tasks

def work(i):
    time.sleep(120)
    return i

if __name__ == "__main__":
    print("ready", flush=True)
    run_tasks(work, [Task(f"t{i}", f"t{i}", (i,)) for i in range(2)], lambda task, result: None, workers=2)
"""
"""Two tasks on the Dask LocalCluster of ``mtopnet.cluster`` (what simulate and predict use)."""

_FORKED_SCRIPT = """
import time
from mtopnet.devices import ForkedPool

class Owner:
    def nap(self):
        time.sleep(120)

if __name__ == "__main__":
    owner = Owner()
    pool = ForkedPool(2, owner)
    futures = [pool.submit(owner.nap) for _ in range(2)]
    print("ready", flush=True)
    time.sleep(120)
"""
"""Two calls in the forked processes of ``mtopnet.devices.ForkedPool`` (predict's batches at once)."""


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("script_text", [_POOL_SCRIPT, _FORKED_SCRIPT], ids=["dask", "forked"])
def test_simulate_workers_die_with_their_parent(tmp_path, script_text):
    """Issue 13 item 8: SIGKILL of the process that started the worker processes (simulate's,
    predict's Dask LocalCluster, predict's forked processes for batches at once) ends the
    workers within seconds, silently (was: they ran to the end, with broken-pipe tracebacks)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    script = tmp_path / "pool.py"
    script.write_text(script_text)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    workers: list[int] = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.time() + 60  # spawned processes, on a busy machine
        while len(workers) < 2 and time.time() < deadline:
            workers = [p for p in _children(proc.pid) if _alive(p)]
            time.sleep(0.1)
        assert len(workers) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.time() + 10
        while any(_alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers)
        assert "Traceback" not in proc.stderr.read()
    finally:
        for p in workers + _children(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


# --- issue 13 item 4: full disk ----------------------------------------------------------------

def _disk_full_after(monkeypatch, n_bytes: int) -> list[Path]:
    """Make the store writer's file writes fail with ENOSPC after ``n_bytes`` bytes (the partial
    file stays, as on a real full disk). Returns the list of paths it was asked to write."""
    import errno

    import mtopnet.store as store
    seen: list[Path] = []

    def full(path, data):
        seen.append(Path(path))
        with open(path, "wb") as handle:
            handle.write(bytes(data[:n_bytes]))
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store, "_write_bytes", full)
    return seen


def test_store_writer_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    """Issue 13 item 4: a full disk while writing a store ends in one-line UserError naming the
    file and the reason, and leaves neither the store nor its partial temporary file."""
    from mtopnet.store import write_store
    wave = np.linspace(8000.0, 9000.0, 50)
    batch = _one_arm(wave, np.ones((4, 50)), np.ones((4, 50)))
    seen = _disk_full_after(monkeypatch, 1000)
    with pytest.raises(UserError, match="No space left on device") as info:
        write_store(tmp_path / "s.h5", batch)
    assert "s.h5" in str(info.value) and "\n" not in str(info.value)
    assert seen and list(tmp_path.iterdir()) == []


def test_simulate_on_a_full_disk_exits_cleanly_and_resumes(tmp_path, monkeypatch):
    """Issue 13 item 4: simulate on a full disk: one-line UserError (CLI exit 2), no partial shard
    left, and the re-run (disk freed) completes with the same content as an uninterrupted run."""
    import mtopnet.simulate as sim
    from mtopnet.config import Exposure
    from mtopnet.store import read_store
    from mtopnet.testing import toy_arm_waves, toy_batch

    waves = toy_arm_waves(50)

    def tiny_shard(spec, shard):
        n = min(spec.shard_size, spec.n - shard * spec.shard_size)
        return toy_batch(n, waves, seed=spec.seed * 1000 + shard, start_id=shard * spec.shard_size)

    monkeypatch.setattr(sim, "simulate_shard", tiny_shard)
    spec = sim.SimulationSpec(instrument="moons-lr", exposure=Exposure(total=3600.0, sub_exposure=600.0,
                                                                        airmass=1.2, seeing=0.8,
                                                                        sky_residual=0.01), n=12, seed=4,
                              shard_size=5)
    reference = sim.simulate(spec, tmp_path / "ref.h5", progress=False)
    with monkeypatch.context() as m:
        _disk_full_after(m, 500)
        with pytest.raises(UserError, match="No space left on device"):
            sim.simulate(spec, tmp_path / "out.h5", progress=False)
    shards = tmp_path / "out.h5.shards"
    assert not (tmp_path / "out.h5").exists()
    assert not any(p.name.endswith(".tmp") for p in shards.iterdir()) if shards.exists() else True
    assert not any(p.name.endswith(".h5") for p in shards.iterdir()) if shards.exists() else True
    out = sim.simulate(spec, tmp_path / "out.h5", progress=False)
    a, b = read_store(reference), read_store(out)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.arms["RI"]["flux"] if "RI" in a.arms else next(iter(a.arms.values()))["flux"],
                                  b.arms["RI"]["flux"] if "RI" in b.arms else next(iter(b.arms.values()))["flux"])


def test_simulate_ignores_a_truncated_shard(tmp_path, monkeypatch):
    """Issue 13 item 4: a shard file cut short (a copy interrupted, a disk that filled) is not taken
    for finished work: the re-run simulates it again."""
    import mtopnet.simulate as sim
    from mtopnet.config import Exposure
    from mtopnet.store import read_store
    from mtopnet.testing import toy_arm_waves, toy_batch
    waves = toy_arm_waves(50)
    calls: list[int] = []

    def tiny_shard(spec, shard):
        calls.append(shard)
        n = min(spec.shard_size, spec.n - shard * spec.shard_size)
        return toy_batch(n, waves, seed=shard, start_id=shard * spec.shard_size)

    monkeypatch.setattr(sim, "simulate_shard", tiny_shard)
    spec = sim.SimulationSpec(instrument="moons-lr", exposure=Exposure(total=3600.0, sub_exposure=600.0,
                                                                        airmass=1.2, seeing=0.8,
                                                                        sky_residual=0.01), n=10, seed=4,
                              shard_size=5)
    shard_dir = tmp_path / "out.h5.shards"
    shard_dir.mkdir()
    good = tmp_path / "good.h5"
    from mtopnet.store import write_store
    write_store(good, tiny_shard(spec, 0), {"run_key": spec.key(), "shard": 0})
    data = good.read_bytes()
    (shard_dir / "shard_00000.h5").write_bytes(data[: len(data) // 2])
    calls.clear()
    sim.simulate(spec, tmp_path / "out.h5", progress=False)
    assert sorted(calls) == [0, 1]
    assert len(read_store(tmp_path / "out.h5")) == 10
