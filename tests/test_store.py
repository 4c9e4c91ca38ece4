"""The HDF5 store: round trips, string ids, streaming merge, bad files."""
from __future__ import annotations

import numpy as np
import pytest

from mtopnet.config import UserError
from mtopnet.store import SpectraBatch, iter_store, merge_stores, read_store, write_store


def _batch(ids, n_pix=7, seed=0) -> SpectraBatch:
    rng = np.random.default_rng(seed)
    n = len(ids)
    arm = lambda w0: {"wave": w0 + np.arange(n_pix, dtype=float),  # noqa: E731
                      "flux": rng.normal(size=(n, n_pix)).astype(np.float32),
                      "ivar": rng.uniform(0, 2, size=(n, n_pix)).astype(np.float32),
                      "mask": rng.integers(0, 8, size=(n, n_pix)).astype(np.uint8)}
    return SpectraBatch(ids=np.asarray(ids), arms={"A": arm(5000.0), "B": arm(9000.0)},
                        labels={"z": rng.uniform(0.6, 3, n)})


@pytest.mark.parametrize("ids", [[3, 1, 2], ["spec-0280-51612-0117", "b", "c"]])
def test_round_trip_is_exact(tmp_path, ids):
    b = _batch(ids)
    write_store(tmp_path / "s.h5", b)
    r = read_store(tmp_path / "s.h5")
    assert list(r.ids) == list(b.ids)
    for a in ("A", "B"):
        for k in ("wave", "flux", "ivar", "mask"):
            assert np.array_equal(r.arms[a][k], b.arms[a][k])
    assert np.array_equal(r.labels["z"], b.labels["z"])
    assert not (tmp_path / "s.h5.tmp").exists()


def test_bytes_do_not_depend_on_when_python_frees_the_datasets(tmp_path, monkeypatch):
    """A store's bytes are the same whether each dataset object is freed at once or held until
    the file closes (as a garbage-collection cycle can do): with HDF5's chunk cache a chunk was
    placed in the file when its dataset closed, and 2-worker simulations differed from 1-worker
    ones in where the second arm's mask chunk lay."""
    import h5py
    b = _batch([1, 2, 3, 4], n_pix=3000, seed=1)
    write_store(tmp_path / "freed.h5", b)
    held = []
    create = h5py.Group.create_dataset

    def hold_first_mask(self, name, *args, **kwargs):
        ds = create(self, name, *args, **kwargs)
        if name == "mask" and not held:
            held.append(ds)
        return ds

    monkeypatch.setattr(h5py.Group, "create_dataset", hold_first_mask)
    write_store(tmp_path / "held.h5", b)
    assert held and (tmp_path / "held.h5").read_bytes() == (tmp_path / "freed.h5").read_bytes()


def test_merge_streams_parts_in_order(tmp_path):
    parts = [_batch([0, 1], seed=1), _batch([2, 3, 4], seed=2)]
    paths = []
    for i, p in enumerate(parts):
        paths.append(tmp_path / f"p{i}.h5")
        write_store(paths[-1], p)
    merge_stores(paths, tmp_path / "all.h5", {"seed": 5})
    whole = SpectraBatch.concatenate(parts)
    got = SpectraBatch.concatenate(list(iter_store(tmp_path / "all.h5", batch_size=2)))
    assert list(got.ids) == [0, 1, 2, 3, 4]
    assert np.array_equal(got.arms["B"]["flux"], whole.arms["B"]["flux"])


def test_mismatched_lengths_refused(tmp_path):
    b = _batch([1, 2])
    b.arms["A"]["ivar"] = b.arms["A"]["ivar"][:, :-1]
    with pytest.raises(UserError, match="ivar"):
        write_store(tmp_path / "s.h5", b)
    assert not any(tmp_path.iterdir())


def test_not_a_store(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    with pytest.raises(UserError, match="not an HDF5 file"):
        read_store(bad)
    with pytest.raises(UserError, match="no such file"):
        read_store(tmp_path / "missing.h5")
