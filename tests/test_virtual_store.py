"""Virtual stores over shard files (what ``mtopnet simulate`` writes), consolidation, compression."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

import mtopnet.simulate as sim
from conftest import TINY_PRE, tiny_train_config
from mtopnet.cli import main
from mtopnet.config import Exposure, UserError
from mtopnet.store import (
    SpectraBatch,
    consolidate_store,
    iter_store,
    merge_stores,
    read_store,
    store_info,
    write_store,
    write_virtual_store,
)
from mtopnet.testing import toy_arm_waves, toy_batch
from mtopnet.train import build_cache, train

SIZES = (40, 35, 0, 45, 40)
"""Rows of the toy shards: uneven, one empty."""


def _assert_same(a: SpectraBatch, b: SpectraBatch) -> None:
    assert np.array_equal(a.ids, b.ids) and list(a.labels) == list(b.labels) and list(a.arms) == list(b.arms)
    for k in a.labels:
        assert np.array_equal(a.labels[k], b.labels[k], equal_nan=True), k
    for arm in a.arms:
        for k in ("wave", "flux", "ivar", "mask"):
            assert a.arms[arm][k].dtype == b.arms[arm][k].dtype
            assert np.array_equal(a.arms[arm][k], b.arms[arm][k]), (arm, k)


@pytest.fixture
def shards(tmp_path, toy_waves):
    """(folder, shard paths, their batches): toy shard files in ``tmp_path/run/s.h5.shards``."""
    folder = tmp_path / "run" / "s.h5.shards"
    folder.mkdir(parents=True)
    paths, batches, start = [], [], 0
    for i, n in enumerate(SIZES):
        batches.append(toy_batch(n, toy_waves, seed=i, start_id=start) if n else
                       toy_batch(1, toy_waves, seed=i).subset(slice(0, 0)))
        paths.append(folder / f"shard_{i:05d}.h5")
        write_store(paths[-1], batches[-1], {"run_key": "k", "shard": i}, compression="lzf" if i % 2 else None)
        start += n
    return folder, paths, batches


def test_virtual_store_reads_as_its_consolidated_copy(shards, tmp_path):
    folder, paths, batches = shards
    virtual = folder.parent / "s.h5"
    write_virtual_store(virtual, paths, {"instrument": "toy", "provenance": {"seed": 1}})
    whole = SpectraBatch.concatenate(batches)
    _assert_same(read_store(virtual), whole)
    with h5py.File(virtual) as f:
        assert f["arms/A/flux"].is_virtual and not f["ids"].is_virtual
    assert virtual.stat().st_size < sum(p.stat().st_size for p in paths) / 4  # the spectra are not copied
    # rows across shard boundaries, in batches that do not line up with them
    streamed = SpectraBatch.concatenate(list(iter_store(virtual, batch_size=33)))
    _assert_same(streamed, whole)
    _assert_same(read_store(virtual, 30, 90), whole.subset(slice(30, 90)))
    for compression in (None, "gzip"):
        copy = tmp_path / f"copy-{compression}.h5"
        consolidate_store(virtual, copy, compression=compression)
        _assert_same(read_store(copy), whole)
        info = store_info(copy)["attrs"]
        assert "virtual_sources" not in info and info["provenance"] == '{"seed": 1}'
        with h5py.File(copy) as f:
            assert not f["arms/A/flux"].is_virtual and f["arms/A/flux"].compression == compression
            assert f["arms/A/mask"].compression == "gzip"  # always: mostly zeros


def test_the_store_and_its_shard_folder_move_together(shards, tmp_path):
    folder, paths, batches = shards
    write_virtual_store(folder.parent / "s.h5", paths)
    moved = tmp_path / "elsewhere" / "deeper"
    moved.parent.mkdir()
    shutil.move(folder.parent, moved)
    _assert_same(read_store(moved / "s.h5"), SpectraBatch.concatenate(batches))


def test_a_missing_or_changed_shard_is_one_line_not_zeros(shards):
    folder, paths, _ = shards
    virtual = folder.parent / "s.h5"
    write_virtual_store(virtual, paths)
    paths[3].rename(folder / "moved-away.h5")
    for read in (read_store, store_info, lambda p: list(iter_store(p))):
        with pytest.raises(UserError, match="shard_00003.h5 is missing") as info:
            read(virtual)
        assert "\n" not in str(info.value)
    (folder / "moved-away.h5").rename(paths[3])
    assert len(read_store(virtual)) == sum(SIZES)
    with open(paths[1], "ab") as fh:  # a shard file changed after the store was written
        fh.write(b"\0" * 10)
    with pytest.raises(UserError, match="shard_00001.h5 has .* bytes"):
        read_store(virtual)


def _virtual_and_copy(shards, tmp_path):
    """(virtual store over the shards, its consolidated copy)."""
    folder, paths, _ = shards
    virtual = folder.parent / "s.h5"
    write_virtual_store(virtual, paths, {"instrument": "toy"})
    copy = tmp_path / "copy.h5"
    consolidate_store(virtual, copy)
    return virtual, copy


def test_training_reads_a_virtual_store(shards, toy_stores, tmp_path):
    virtual, copy = _virtual_and_copy(shards, tmp_path)
    a = build_cache(virtual, TINY_PRE, tmp_path / "ca", progress=False)
    b = build_cache(copy, TINY_PRE, tmp_path / "cb", progress=False)
    assert np.array_equal(a.spectrum, b.spectrum) and np.array_equal(a.continuum, b.continuum)
    assert np.array_equal(a.ids, b.ids)
    result = train(virtual, toy_stores[1], tmp_path / "run", tiny_train_config(epochs=1), progress=False)
    assert result["epochs_run"] == 1 and (tmp_path / "run" / "model.pt").is_file()


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_stores_round_trip(tmp_path, toy_waves, compression):
    batch = toy_batch(30, toy_waves, seed=3)
    write_store(tmp_path / "c.h5", batch, compression=compression)
    _assert_same(read_store(tmp_path / "c.h5"), batch)
    merge_stores([tmp_path / "c.h5", tmp_path / "c.h5"], tmp_path / "m.h5", compression=compression)
    _assert_same(read_store(tmp_path / "m.h5"), SpectraBatch.concatenate([batch, batch]))
    with pytest.raises(UserError, match="compression"):
        write_store(tmp_path / "x.h5", batch, compression="zstd")


# --- mtopnet simulate: virtual or consolidated, resumable (toy shards in place of the physics) ----

def _toy_shard(spec, shard):
    n = min(spec.shard_size, spec.n - shard * spec.shard_size)
    return toy_batch(n, toy_arm_waves(40), seed=spec.seed * 1000 + shard, start_id=shard * spec.shard_size)


def _spec(**kw) -> sim.SimulationSpec:
    return sim.SimulationSpec(instrument="moons-lr", exposure=Exposure(total=3600.0), n=23, seed=4, shard_size=5, **kw)


def test_simulate_writes_a_virtual_store_or_a_consolidated_one(tmp_path, monkeypatch):
    monkeypatch.setattr(sim, "simulate_shard", _toy_shard)
    virtual = sim.simulate(_spec(), tmp_path / "v.h5", progress=False)
    single = sim.simulate(_spec(), tmp_path / "c.h5", progress=False, consolidate=True, compression="gzip")
    assert sorted(p.name for p in (tmp_path / "v.h5.shards").iterdir()) == [f"shard_{i:05d}.h5" for i in range(5)]
    assert not (tmp_path / "c.h5.shards").exists()
    _assert_same(read_store(virtual), read_store(single))
    _assert_same(read_store(virtual), SpectraBatch.concatenate([_toy_shard(_spec(), i) for i in range(5)]))
    assert store_info(virtual)["attrs"]["provenance"] == store_info(single)["attrs"]["provenance"]
    # --overwrite with fewer objects: the longer run's extra shard goes, the others are rewritten
    fewer = sim.SimulationSpec(instrument="moons-lr", exposure=Exposure(total=3600.0), n=12, seed=5, shard_size=5)
    with pytest.raises(UserError, match="exists"):
        sim.simulate(fewer, virtual, progress=False)
    sim.simulate(fewer, virtual, progress=False, overwrite=True)
    assert len(list((tmp_path / "v.h5.shards").iterdir())) == 3
    assert np.array_equal(read_store(virtual).ids, np.arange(12))


def test_simulate_cli_options(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sim, "simulate_shard", _toy_shard)
    out = tmp_path / "s.h5"
    argv = ["simulate", "--n", "12", "--seed", "2", "--out", str(out), "--quiet", "--shard-size", "4"]
    assert main([*argv, "--compression", "lzf", "--consolidate"]) == 0
    with h5py.File(out) as f:
        assert f["arms/A/flux"].compression == "lzf" and not f["arms/A/flux"].is_virtual
        assert '"shard_size": 4' in f.attrs["provenance"]
    assert main([*argv, "--shard-size", "0"]) == 2
    assert "--shard-size" in capsys.readouterr().err
    assert main([*argv, "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    before = sorted(p.name for p in tmp_path.iterdir())

    def no_cluster(*args, **kwargs):
        raise UserError("--scheduler tcp://nowhere:1: cannot connect (refused)")

    monkeypatch.setattr(sim, "run_tasks", no_cluster)
    assert main(["simulate", "--n", "12", "--seed", "2", "--out", str(tmp_path / "t.h5"), "--quiet",
                 "--scheduler", "tcp://nowhere:1"]) == 2
    assert "cannot connect" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no empty shard folder, no lock


def test_predict_reads_a_virtual_store_as_its_copy(shards, tiny_model_path, tmp_path):
    from mtopnet.catalogue import read_catalogue
    from mtopnet.predict import predict_store
    from mtopnet.trained import load_model
    virtual, copy = _virtual_and_copy(shards, tmp_path)
    model = load_model(tiny_model_path)
    for store, out in ((virtual, tmp_path / "v.parquet"), (copy, tmp_path / "c.parquet")):
        assert predict_store(model, [store], out, batch_size=32, shard_size=64) == sum(SIZES)
    a, b = read_catalogue(tmp_path / "v.parquet"), read_catalogue(tmp_path / "c.parquet")
    assert list(a) == list(b)
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


def test_the_check_follows_hdf5_vds_prefix_as_hdf5_does(shards, tmp_path, monkeypatch):
    """HDF5 looks for a virtual store's sources in $HDF5_VDS_PREFIX first: so does the check."""
    folder, paths, batches = shards
    virtual = folder.parent / "s.h5"
    write_virtual_store(virtual, paths)
    elsewhere = tmp_path / "prefix"
    elsewhere.mkdir()
    shutil.move(folder, elsewhere / folder.name)
    with pytest.raises(UserError, match="missing"):
        read_store(virtual)
    monkeypatch.setenv("HDF5_VDS_PREFIX", str(elsewhere))
    _assert_same(read_store(virtual), SpectraBatch.concatenate(batches))
