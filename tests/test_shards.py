"""Sharded, resumable prediction (mtopnet.shards) and its Dask execution."""
from __future__ import annotations

import numpy as np
import pytest

import mtopnet.predict as predict_mod
from mtopnet.catalogue import OutputLock, read_catalogue
from mtopnet.cli import main
from mtopnet.config import UserError
from mtopnet.io import write_text
from mtopnet.predict import predict_store
from mtopnet.provenance import without_date
from mtopnet.shards import plan_shards
from mtopnet.store import read_store
from mtopnet.testing import toy_batch
from mtopnet.trained import load_model


def _same(a, b) -> None:
    ca, cb = read_catalogue(a), read_catalogue(b)
    assert list(ca) == list(cb)
    for k in ca:
        assert np.array_equal(ca[k], cb[k], equal_nan=ca[k].dtype.kind == "f"), k


@pytest.fixture
def spy(monkeypatch):
    """Shard indices computed by predict_store; at ``spy.fail_at`` the run is interrupted (Ctrl-C),
    which, like a kill, leaves the shards done for the next run."""
    real = predict_mod._predict_shard

    class Spy:
        computed: list[int] = []
        fail_at: int | None = None

        @staticmethod
        def shard(job, shard, info):
            if shard.index == Spy.fail_at:
                raise KeyboardInterrupt
            Spy.computed.append(shard.index)
            yield from real(job, shard, info)

    Spy.computed = []
    monkeypatch.setattr(predict_mod, "_predict_shard", Spy.shard)
    return Spy


def test_plan_cuts_stores_by_rows_and_files_by_groups(toy_stores, tmp_path, toy_waves):
    texts = []
    for i in range(5):
        path = tmp_path / f"obj{i}.txt"
        write_text(path, toy_batch(1, toy_waves, seed=i, start_id=i), arm="A")
        texts.append(path)
    shards = plan_shards([toy_stores[2], *texts, toy_stores[1]], None, 16, {"a": 1})
    sizes = [(s.n_rows, len(s.units)) for s in shards]
    assert sizes == [(16, 1), (16, 1), (8, 1), (None, 5)] + [(16, 1)] * 7 + [(8, 1)]
    assert [s.units[0].rows for s in shards[:3]] == [(0, 16), (16, 32), (32, 40)]
    assert len({s.fingerprint for s in shards}) == len(shards)
    again = plan_shards([toy_stores[2], *texts, toy_stores[1]], None, 16, {"a": 2})
    assert all(a.fingerprint != b.fingerprint for a, b in zip(shards, again, strict=True))
    rows = np.concatenate([b.ids for s in shards[:3] for b in s.batches(5)])
    assert np.array_equal(rows, read_store(toy_stores[2]).ids)
    with pytest.raises(UserError, match="shard size"):
        plan_shards([toy_stores[2]], None, 0, {})


@pytest.mark.parametrize("ext", [".fits", ".parquet"])
def test_resumed_run_redoes_only_the_missing_shards_and_equals_one_run(tiny_model_path, toy_stores, tmp_path,
                                                                      spy, ext):
    model = load_model(tiny_model_path)
    inputs = [toy_stores[2], toy_stores[1]]  # 40 + 120 rows: shards 16, 16, 8, 16 x 7, 8
    ref = tmp_path / f"ref{ext}"
    assert predict_store(model, inputs, ref, batch_size=8, shard_size=16, with_pdf=True) == 160
    assert spy.computed == list(range(11))
    assert not (tmp_path / f"ref{ext}.shards").exists() and not (tmp_path / f"ref{ext}.shards.lock").exists()
    out = tmp_path / f"cat{ext}"
    spy.computed, spy.fail_at = [], 5
    with pytest.raises(KeyboardInterrupt):
        predict_store(model, inputs, out, batch_size=8, shard_size=16, with_pdf=True)
    assert not out.exists()
    work = tmp_path / f"cat{ext}.shards"
    assert sorted(p.name for p in work.glob("*.json")) == [f"shard_{i:05d}.json" for i in range(5)]
    spy.computed, spy.fail_at = [], None
    predict_store(model, inputs, out, batch_size=8, shard_size=16, with_pdf=True)
    assert spy.computed == list(range(5, 11))
    if ext == ".fits":
        assert without_date(out.read_bytes()) == without_date(ref.read_bytes())
    _same(out, ref)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cat")) == [out.name]


def test_changed_options_are_not_taken_for_done_shards(tiny_model_path, toy_stores, tmp_path, spy):
    model = load_model(tiny_model_path)
    out = tmp_path / "cat.fits"
    spy.fail_at = 2
    with pytest.raises(KeyboardInterrupt):
        predict_store(model, [toy_stores[1]], out, batch_size=8, shard_size=16)
    spy.computed, spy.fail_at = [], None
    predict_store(model, [toy_stores[1]], out, batch_size=8, shard_size=16, refine=False)
    assert spy.computed == list(range(8))  # the two shards done were refined: redone
    ref = tmp_path / "ref.fits"
    predict_store(model, [toy_stores[1]], ref, batch_size=8, shard_size=16, refine=False)
    assert without_date(out.read_bytes()) == without_date(ref.read_bytes())


def test_a_run_that_ends_in_an_error_leaves_nothing(tiny_model_path, toy_stores, tmp_path, monkeypatch):
    real = predict_mod._predict_shard

    def failing(job, shard, info):
        if shard.index == 2:
            raise UserError("unreadable")
        yield from real(job, shard, info)

    monkeypatch.setattr(predict_mod, "_predict_shard", failing)
    with pytest.raises(UserError, match="unreadable"):
        predict_store(load_model(tiny_model_path), [toy_stores[1]], tmp_path / "cat.fits", batch_size=8,
                      shard_size=16)
    assert list(tmp_path.iterdir()) == []


def test_second_run_on_the_same_output_is_refused(tiny_model_path, toy_stores, tmp_path, capsys):
    out = tmp_path / "cat.fits"
    with OutputLock(tmp_path / "cat.fits.shards"):
        with pytest.raises(UserError, match="another mtopnet run"):
            predict_store(load_model(tiny_model_path), [toy_stores[2]], out)
        code = main(["predict", str(toy_stores[2]), "--model", str(tiny_model_path), "--out", str(out), "--quiet"])
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "cat.fits.shards").exists()


@pytest.mark.parametrize("option", ["--workers", "--shard-size"])
def test_bad_worker_or_shard_counts_are_one_line(tiny_model_path, toy_stores, tmp_path, capsys, option):
    out = tmp_path / "cat.fits"
    code = main(["predict", str(toy_stores[2]), "--model", str(tiny_model_path), "--out", str(out), option, "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and option in err[0]
    assert list(tmp_path.iterdir()) == []


def test_two_dask_workers_give_the_single_process_catalogue(tiny_model_path, toy_stores, tmp_path):
    pytest.importorskip("distributed")
    model = load_model(tiny_model_path)
    one = tmp_path / "one.fits"
    two = tmp_path / "two.fits"
    predict_store(model, [toy_stores[2], toy_stores[1]], one, batch_size=8, shard_size=16)
    n = predict_store(model, [toy_stores[2], toy_stores[1]], two, batch_size=8, shard_size=16, workers=2)
    assert n == 160
    _same(two, one)
    assert without_date(two.read_bytes()) == without_date(one.read_bytes())


def test_cli_rerun_says_how_many_shards_it_reused(tiny_model_path, toy_stores, tmp_path, spy, capsys):
    out = tmp_path / "cat.fits"
    args = ["predict", str(toy_stores[1]), "--model", str(tiny_model_path), "--out", str(out), "--quiet",
            "--batch-size", "8", "--shard-size", "16"]
    spy.fail_at = 3
    assert main(args) == 130
    assert capsys.readouterr().err.strip() == "mtopnet predict: interrupted"
    spy.computed, spy.fail_at = [], None
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == f"{out}: 120 rows (3 of 8 shards from an earlier run)"
    assert spy.computed == list(range(3, 8))


def test_threads_give_the_same_bytes_and_a_rerun_with_other_threads_resumes(tiny_model_path, toy_stores, tmp_path,
                                                                            spy, capsys):
    one = tmp_path / "one.fits"
    predict_store(load_model(tiny_model_path), [toy_stores[1]], one, batch_size=8, shard_size=16)
    out = tmp_path / "cat.fits"
    args = ["predict", str(toy_stores[1]), "--model", str(tiny_model_path), "--out", str(out), "--quiet",
            "--batch-size", "8", "--shard-size", "16"]
    spy.fail_at = 3
    assert main([*args, "--threads", "3"]) == 130
    spy.computed, spy.fail_at = [], None
    assert main([*args, "--threads", "2"]) == 0  # other threads: the shards done are the same bytes
    assert capsys.readouterr().out.strip() == f"{out}: 120 rows (3 of 8 shards from an earlier run)"
    assert spy.computed == list(range(3, 8))
    assert without_date(out.read_bytes()) == without_date(one.read_bytes())


def test_default_threads_share_this_machines_cpus(monkeypatch):
    monkeypatch.setattr(predict_mod.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert predict_mod.default_threads(1, None) == 8
    assert predict_mod.default_threads(3, None) == 2
    assert predict_mod.default_threads(16, None) == 1
    assert predict_mod.default_threads(1, "tcp://host:8786") == 1


def test_scheduler_address_runs_the_shards_on_that_cluster(tiny_model_path, toy_stores, tmp_path):
    distributed = pytest.importorskip("distributed")
    model = load_model(tiny_model_path)
    one, via = tmp_path / "one.parquet", tmp_path / "via.parquet"
    predict_store(model, [toy_stores[2]], one, batch_size=8, shard_size=16)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        assert predict_store(model, [toy_stores[2]], via, batch_size=8, shard_size=16,
                             scheduler=cluster.scheduler_address) == 40
    _same(via, one)


def test_shards_of_other_code_are_redone(toy_stores, monkeypatch):
    """A development checkout changed between a killed run and its re-run: the fingerprints differ."""
    import mtopnet.shards as shards_mod
    before = plan_shards([toy_stores[2]], None, 16, {"a": 1})
    monkeypatch.setattr(shards_mod, "code_digest", lambda: "other code")
    after = plan_shards([toy_stores[2]], None, 16, {"a": 1})
    assert all(a.fingerprint != b.fingerprint for a, b in zip(before, after, strict=True))
