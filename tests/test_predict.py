"""Checkpoints, inference, zwarn bits and the catalogue writers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtopnet.catalogue import (
    CATALOGUE_COLUMNS,
    CATALOGUE_DTYPES,
    ZInfo,
    ZWarn,
    read_catalogue,
    read_zbin_centres,
    write_catalogue,
)
from mtopnet.config import UserError
from mtopnet.predict import DomainWarning, predict_batches, predict_store
from mtopnet.refine import RefineConfig, Refiner
from mtopnet.store import SpectraBatch, read_store
from mtopnet.testing import toy_batch
from mtopnet.trained import load_model


def test_checkpoint_round_trip_rebuilds_the_model(tiny_model_path, toy_stores):
    payload = torch.load(tiny_model_path, weights_only=True)  # safe loading works
    for key in ("state_dict", "model_config", "train_config", "preprocess", "z_bins", "lines", "label_norm",
                "instrument", "calibration", "mtopnet_version", "coverage"):
        assert key in payload, key
    model = load_model(tiny_model_path)
    assert model.calibration is not None and model.zbins.n_bins == payload["z_bins"]["n_bins"]
    for name, param in model.network.state_dict().items():
        assert torch.equal(param, payload["state_dict"][name])
    b = read_store(toy_stores[2], 0, 5)
    a1 = next(predict_batches(model, [b]))
    a2 = next(predict_batches(load_model(tiny_model_path), [b]))
    assert np.allclose(a1["Z"], a2["Z"]) and np.allclose(a1["LOGMSTAR"], a2["LOGMSTAR"])


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_corrupt_or_foreign_checkpoint_is_one_line_user_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_truncated_and_foreign_torch_files(tmp_path, tiny_model_path):
    data = tiny_model_path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError):
        load_model(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not an mtopnet checkpoint"):
        load_model(tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not shipped"):
        load_model("no-such-model")


def test_predictions_columns_and_zwarn_bits(tiny_model_path, toy_waves):
    model = load_model(tiny_model_path)
    b = toy_batch(5, toy_waves, seed=11)
    for arm in b.arms.values():
        arm["ivar"][1] = 0  # all masked
    b.arms["A"]["flux"][2, :10] = np.nan  # bad input
    b.arms["B"]["ivar"][3, 5] = -1.0
    b.labels["noise_estimated"] = np.array([0, 0, 0, 0, 1], bool)
    rows = next(predict_batches(model, [b], with_pdf=True))
    assert set(CATALOGUE_COLUMNS) <= set(rows)
    for k, dt in CATALOGUE_DTYPES.items():
        assert rows[k].dtype == dt, k
        if dt.kind == "f" and k not in ("CHI2", "DELTACHI2"):  # those two are NaN where no fit ran
            assert np.all(np.isfinite(rows[k])), k
    zw, info = rows["ZWARN"], rows["ZWARN_INFO"]
    assert zw[1] & ZWarn.NODATA and zw[1] & ZWarn.LITTLE_COVERAGE and rows["QOP"][1] == 1
    assert rows["P_DZ01"][1] == 0 and rows["FITMETHOD"][1] == "NONE" and rows["NCOEFF"][1] == 0
    assert np.isnan(rows["DELTACHI2"][1]) and not zw[1] & ZWarn.SMALL_DELTA_CHI2  # no fit: no DELTACHI2
    assert zw[2] & ZWarn.POORDATA and zw[3] & ZWarn.POORDATA and not zw[0] & ZWarn.POORDATA
    assert info[4] & ZInfo.NOISE_ESTIMATED and not info[0] & ZInfo.NOISE_ESTIMATED  # informational: not in ZWARN
    assert not np.any(zw & ZWarn.OUT_OF_DOMAIN)
    assert np.all(rows["SPECTYPE"] == "GALAXY") and np.array_equal(rows["TARGETID"], b.ids)
    fitted = rows["FITMETHOD"] == "PCA"
    assert np.all(np.isfinite(rows["CHI2"][fitted])) and np.all(np.isfinite(rows["DELTACHI2"][fitted]))
    small = np.where(np.isnan(rows["DELTACHI2"]), False, rows["DELTACHI2"] < 9)
    assert np.array_equal((zw & ZWarn.SMALL_DELTA_CHI2) != 0, small)
    assert np.all(rows["NCOEFF"][fitted] == rows["COEFF"].shape[1]) and np.all(rows["COEFF"][~fitted] == 0)
    assert np.allclose(rows["Z_PDF"].sum(axis=1), 1, atol=1e-4)
    assert np.all(rows["Z_LO95"] <= rows["Z_LO68"]) and np.all(rows["Z_HI68"] <= rows["Z_HI95"])
    assert ZWarn.names(int(zw[1]))[:2] == ["LITTLE_COVERAGE", "NODATA"]


def test_other_coverage_is_out_of_domain(tiny_model_path, toy_waves):
    model = load_model(tiny_model_path)
    b = toy_batch(2, {"A": toy_waves["A"]}, seed=1)
    a_lo, a_hi = toy_waves["A"][0], toy_waves["A"][-1]
    # the warning names the object's arms and the model's expected arms and grid
    with pytest.warns(DomainWarning, match=rf"arms A {a_lo:.0f}-{a_hi:.0f} A .*covers \d+% of the model's "
                                           rf"wavelengths.*expects .*A {a_lo:.0f}-{a_hi:.0f} A.*read on 6400-18100 A"):
        rows = next(predict_batches(model, [b]))
    assert np.all(rows["ZWARN"] & ZWarn.OUT_OF_DOMAIN)
    finer = {a: np.linspace(w[0], w[-1], 5 * len(w)) for a, w in toy_waves.items()}
    with pytest.warns(DomainWarning, match="pixels are 0.20 x the width"):
        rows = next(predict_batches(model, [toy_batch(2, finer, seed=1)]))
    assert np.all(rows["ZWARN"] & ZWarn.OUT_OF_DOMAIN)


def test_in_domain_spectra_raise_no_domain_warning(tiny_model_path, toy_waves):
    import warnings
    model = load_model(tiny_model_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        rows = next(predict_batches(model, [toy_batch(3, toy_waves, seed=2)]))
    assert not np.any(rows["ZWARN"] & ZWarn.OUT_OF_DOMAIN)


def _rows(n, with_pdf, string_ids=False):
    rng = np.random.default_rng(0)
    ids = np.array([f"obj-{i}" for i in range(n)]) if string_ids else np.arange(n, dtype=np.int64) + 7
    rows = {"TARGETID": ids, "COEFF": rng.normal(size=(n, 4))}
    for k, dt in CATALOGUE_DTYPES.items():
        text = {"FITMETHOD": ["PCA", "NONE"], "SPECTYPE": ["GALAXY"], "SUBTYPE": ["", "ELG"]}
        rows[k] = rng.choice(text.get(k, [""]), n) if dt.kind == "U" else \
            rng.integers(0, 1 << 20, n).astype(dt) if dt.kind == "i" else rng.uniform(0.6, 3, n).astype(dt)
    if with_pdf:
        rows["Z_PDF"] = rng.random((n, 6)).astype(np.float32)
    return rows


@pytest.mark.parametrize("ext", ["fits", "parquet", "csv"])
@pytest.mark.parametrize("with_pdf", [False, True])
@pytest.mark.parametrize("string_ids", [False, True])
def test_writers_round_trip(tmp_path, ext, with_pdf, string_ids):
    a, b = _rows(5, with_pdf, string_ids), _rows(3, with_pdf, string_ids)
    path = tmp_path / f"cat.{ext}"
    centres = np.linspace(1, 2, 6)
    assert write_catalogue(path, [a, b], centres, {"model": "x"}) == 8
    assert not (tmp_path / f"cat.{ext}.tmp").exists()
    back = read_catalogue(path)
    assert list(back)[: len(CATALOGUE_COLUMNS)] == list(CATALOGUE_COLUMNS)
    for k in CATALOGUE_COLUMNS:
        expect = np.concatenate([a[k], b[k]])
        if k == "TARGETID" or expect.dtype.kind == "U":
            assert [str(x) for x in back[k]] == [str(x) for x in expect], k
        else:
            assert np.allclose(back[k], expect, rtol=1e-6), k
    if with_pdf:
        assert np.allclose(back["Z_PDF"], np.concatenate([a["Z_PDF"], b["Z_PDF"]]), rtol=1e-6)
        assert np.allclose(read_zbin_centres(path), centres, atol=1e-6)
    else:
        assert read_zbin_centres(path) is None
    if ext == "fits" and with_pdf:
        from astropy.io import fits
        with fits.open(path) as hdul:
            hdul.verify("exception")
            assert np.allclose(hdul["ZBINS"].data, centres)


def test_predict_store_streams_and_refuses_overwrite(tiny_model_path, toy_stores, tmp_path):
    model = load_model(tiny_model_path)
    out = tmp_path / "cat.parquet"
    n = predict_store(model, [toy_stores[2], toy_stores[1]], out, batch_size=16)
    cat = read_catalogue(out)
    ids = np.concatenate([read_store(toy_stores[2]).ids, read_store(toy_stores[1]).ids])
    assert n == len(ids) and np.array_equal(cat["TARGETID"], ids)
    with pytest.raises(UserError, match="exists"):
        predict_store(model, [toy_stores[2]], out)
    with pytest.raises(UserError, match="format"):
        predict_store(model, [toy_stores[2]], tmp_path / "cat.txt")


def test_empty_batches_give_an_empty_catalogue(tiny_model_path, tmp_path, toy_waves):
    model = load_model(tiny_model_path)
    empty = toy_batch(0, toy_waves)
    assert isinstance(empty, SpectraBatch)
    assert write_catalogue(tmp_path / "e.fits", predict_batches(model, [empty])) == 0
    assert len(read_catalogue(tmp_path / "e.fits")["TARGETID"]) == 0


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert list(ra) == list(rb)
        for k in ra:
            va, vb = np.asarray(ra[k]), np.asarray(rb[k])
            assert va.dtype == vb.dtype and va.shape == vb.shape and va.tobytes() == vb.tobytes(), k


def test_batches_in_threads_give_the_same_bytes_in_input_order(tiny_model_path, toy_stores, toy_waves):
    model = load_model(tiny_model_path)
    batches = [read_store(toy_stores[2], i, i + 7) for i in range(0, 40, 7)]  # 6 batches, the last of 5
    batches.insert(2, toy_batch(2, {"A": toy_waves["A"]}, seed=1, start_id=900))  # out of the model's domain
    before = torch.get_num_threads()
    runs = {}
    for threads in (1, 3):
        with pytest.warns(DomainWarning) as caught:
            runs[threads] = list(predict_batches(model, batches, threads=threads, with_pdf=True))
        assert len([w for w in caught if issubclass(w.category, DomainWarning)]) == 1
        assert torch.get_num_threads() == before  # restored
    _same_rows(runs[3], runs[1])
    ids = np.concatenate([r["TARGETID"] for r in runs[3]])
    assert ids.tolist() == np.concatenate([np.asarray(b.ids) for b in batches]).tolist()
    assert np.all(runs[3][2]["ZWARN"] & ZWarn.OUT_OF_DOMAIN) and not np.any(runs[3][1]["ZWARN"] & ZWarn.OUT_OF_DOMAIN)


def test_threaded_run_closed_early_stops_cleanly(tiny_model_path, toy_stores):
    model = load_model(tiny_model_path)
    before = torch.get_num_threads()
    gen = predict_batches(model, (read_store(toy_stores[2], i, i + 4) for i in range(0, 40, 4)), threads=2)
    first = next(gen)
    gen.close()  # the rest cancelled or finished, the pool shut down, torch's threads restored
    assert len(first["Z"]) == 4 and torch.get_num_threads() == before
    with pytest.raises(UserError, match="threads"):  # when called, not at the first batch
        predict_batches(model, [read_store(toy_stores[2], 0, 4)], threads=0)
    own = Refiner.from_model(model, RefineConfig(threads=2))
    with pytest.raises(UserError, match="RefineConfig"):
        predict_batches(model, [read_store(toy_stores[2], 0, 4)], threads=2, refine=own)


def test_batches_at_once_run_in_processes_forked_once_per_run(tiny_model_path, toy_stores, tmp_path, monkeypatch):
    """On Linux the batches at once run in forked processes (no shared GIL), forked once for all
    the shards of a run (not once per shard), and none is left when the run ends."""
    import multiprocessing

    from astropy.io import fits

    import mtopnet.predict as predict_mod
    from mtopnet.devices import ForkedPool, forked_pool_possible
    if not forked_pool_possible():
        pytest.skip("forked processes need Linux")
    assert not forked_pool_possible("cuda")  # CUDA cannot be used again in a forked child
    made = []

    class Counting(ForkedPool):
        def __init__(self, n, owner):
            made.append(n)
            super().__init__(n, owner)

    monkeypatch.setattr(predict_mod, "ForkedPool", Counting)
    model = load_model(tiny_model_path)
    out = tmp_path / "cat.fits"
    predict_store(model, [toy_stores[1]], out, batch_size=8, shard_size=16, threads=2)  # 8 shards
    assert made == [2]
    assert not multiprocessing.active_children() and not predict_mod._RUNNERS
    one = tmp_path / "one.fits"
    predict_store(model, [toy_stores[1]], one, batch_size=8, shard_size=16, threads=1)
    assert fits.getdata(out).tobytes() == fits.getdata(one).tobytes()


def test_a_batch_process_that_dies_ends_the_run_resumably(tiny_model_path, toy_stores, tmp_path, monkeypatch):
    """A forked batch process killed under a batch (the OOM killer, a batch system) ends the run
    with ResumableError: the shards done are kept, and the same call continues from them."""
    import os

    import mtopnet.predict as predict_mod
    from mtopnet.cluster import ResumableError
    from mtopnet.devices import forked_pool_possible
    if not forked_pool_possible():
        pytest.skip("forked processes need Linux")
    real = predict_mod._BatchPredictor.rows

    def rows(self, batch, *args):  # dies at shard 4 (the val store's ids start at 1000; shards of 16)
        if int(np.asarray(batch.ids)[0]) == 1064:
            os._exit(9)
        return real(self, batch, *args)

    monkeypatch.setattr(predict_mod._BatchPredictor, "rows", rows)
    model = load_model(tiny_model_path)
    out = tmp_path / "cat.fits"
    with pytest.raises(ResumableError, match="re-run the same command"):
        predict_mod.predict_sharded(model, [toy_stores[1]], out, batch_size=8, shard_size=16, threads=2)
    assert not out.exists()
    monkeypatch.setattr(predict_mod._BatchPredictor, "rows", real)
    run = predict_mod.predict_sharded(model, [toy_stores[1]], out, batch_size=8, shard_size=16, threads=2)
    assert (run.n_reused, run.n_computed, run.n_rows) == (4, 4, 120)


def test_warnings_of_forked_calls_are_raised_in_the_parent():
    from mtopnet.devices import ForkedPool, forked_pool_possible
    if not forked_pool_possible():
        pytest.skip("forked processes need Linux")

    class Owner:
        def warns(self, text):
            import warnings
            warnings.warn(text, UserWarning, stacklevel=2)
            return len(text)

    owner = Owner()
    pool = ForkedPool(2, owner)
    try:
        futures = [pool.submit(owner.warns, text) for text in ("first", "second!")]
        with pytest.warns(UserWarning) as caught:
            assert [pool.result(f) for f in futures] == [5, 7]
        assert sorted(str(w.message) for w in caught) == ["first", "second!"]
    finally:
        pool.shutdown()


def test_no_forked_processes_inside_a_daemonic_process():
    """A Dask worker is a daemonic process, which may not have children: its batches at once
    run in threads."""
    import multiprocessing

    from mtopnet.devices import forked_pool_possible
    if not forked_pool_possible():
        pytest.skip("forked processes need Linux")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_report_forked_pool_possible, args=(queue,), daemon=True)
    child.start()
    assert queue.get(timeout=60) is False
    child.join(60)


def _report_forked_pool_possible(queue) -> None:
    from mtopnet.devices import forked_pool_possible
    queue.put(forked_pool_possible())


def test_a_batch_stops_at_its_next_stage_once_its_run_has_ended(tiny_model_path, toy_stores):
    from mtopnet.predict import _BatchPredictor, _Stopped
    model = load_model(tiny_model_path)
    run = _BatchPredictor(model, with_pdf=False, arm_resolution=None, min_valid_fraction=0.2, refine=True,
                          with_net_pdf=False, sky_masks=True)
    rows, _ = run.rows(read_store(toy_stores[2], 0, 3), True)
    assert len(rows["Z"]) == 3
    run.stop.set()
    with pytest.raises(_Stopped):
        run.rows(read_store(toy_stores[2], 0, 3), True)


@pytest.mark.parametrize("threads", [None, 2])
def test_domain_warnings_name_the_callers_line(tiny_model_path, toy_waves, threads):
    model = load_model(tiny_model_path)
    with pytest.warns(DomainWarning) as caught:
        for _ in predict_batches(model, [toy_batch(2, {"A": toy_waves["A"]}, seed=1)], threads=threads):
            pass
    assert {w.filename for w in caught if issubclass(w.category, DomainWarning)} == {__file__}


def test_overlapping_single_threaded_blocks_keep_one_thread_until_the_last_ends():
    import threading

    from threadpoolctl import threadpool_info

    from mtopnet.devices import single_threaded_ops

    def blas() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    torch.set_num_threads(2)
    seen = {}
    other_in, main_out = threading.Event(), threading.Event()

    def other():  # a second run in another thread, still running when this thread's ends
        with single_threaded_ops():
            other_in.set()
            main_out.wait(10)
            seen["inside"] = (torch.get_num_threads(), blas())

    with single_threaded_ops():
        assert torch.get_num_threads() == 1 and all(n == 1 for n in blas())
        thread = threading.Thread(target=other)
        thread.start()
        other_in.wait(10)
    assert torch.get_num_threads() == 2  # this thread's own setting, restored
    main_out.set()
    thread.join(20)
    assert seen["inside"][0] == 1 and all(n == 1 for n in seen["inside"][1])  # not restored under the other
    with single_threaded_ops():  # one block in this (the main) thread: BLAS's count set and restored here
        assert all(n == 1 for n in blas())
    assert torch.get_num_threads() == 2
