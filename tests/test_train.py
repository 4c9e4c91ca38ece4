"""Training: cache reuse, resume, checkpoints, config validation."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_PRE, tiny_train_config
from mtopnet.config import ConfigError, UserError
from mtopnet.train import TrainConfig, build_cache, load_train_config, train


def test_shipped_recipe_loads_and_resolves():
    from pathlib import Path
    cfg = load_train_config(Path(__file__).parents[1] / "configs" / "train-moons-lr.yaml")
    assert cfg.model.n_pix == cfg.preprocess.n_pix == 4096
    assert cfg.model.n_z_bins == cfg.redshift.n_bins == 1222
    assert cfg.loss_weights.line == 10


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="train.optim.lr"):
        TrainConfig.from_dict({"optim": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="train.model.latnet"):
        TrainConfig.from_dict({"model": {"latnet": 3}})
    with pytest.raises(ConfigError, match="train.model.n_pix"):
        TrainConfig.from_dict({"model": {"n_pix": 1024}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("redshift: {z_min: 2, z_max: 1}\n")
    with pytest.raises(UserError, match="bad.yaml: redshift.z_max"):
        load_train_config(bad)


def test_cache_is_built_once(toy_stores, tmp_path):
    a = build_cache(toy_stores[2], TINY_PRE, tmp_path, progress=False)
    stamp = (a.path / "meta.json").stat().st_mtime_ns
    b = build_cache(toy_stores[2], TINY_PRE, tmp_path, progress=False)
    assert a.path == b.path and (b.path / "meta.json").stat().st_mtime_ns == stamp
    assert a.spectrum.dtype.name == "float16" and a.spectrum.shape == (40, 2, TINY_PRE.n_pix)


@pytest.mark.slow  # three short training runs: ~12 s on two busy cores
def test_resume_continues_and_refuses_a_fresh_start(toy_stores, tmp_path):
    cfg = tiny_train_config(epochs=2)
    out = tmp_path / "run"
    first = train(toy_stores[0], toy_stores[1], out, cfg, epochs=1, progress=False)
    assert first["epochs_run"] == 1
    with pytest.raises(UserError, match="--resume"):
        train(toy_stores[0], toy_stores[1], out, cfg, epochs=1, progress=False)
    with pytest.raises(UserError, match="different config"):
        train(toy_stores[0], toy_stores[1], out, cfg, epochs=2, resume=True, progress=False)
    again = train(toy_stores[0], toy_stores[1], out, cfg, epochs=1, resume=True, progress=False)
    assert again["epochs_run"] == 1  # nothing left to do: recalibrates only
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1]
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["kind"] == "training" and "optimizer" in last
    assert (out / "model.pt").is_file() and (out / "best.pt").is_file()


def test_stacked_caches_read_as_one(toy_stores, tmp_path):
    import numpy as np

    from mtopnet.train import Cache
    a = build_cache(toy_stores[2], TINY_PRE, tmp_path, progress=False)
    b = build_cache(toy_stores[1], TINY_PRE, tmp_path, progress=False)
    both = Cache.stack([a, b])
    assert len(both) == len(a) + len(b)
    idx = np.array([len(a) + 3, 0, len(a) - 1, len(a)])
    expect = np.concatenate([np.asarray(a.spectrum), np.asarray(b.spectrum)])[idx]
    assert np.array_equal(both.spectrum[idx], expect)
    assert np.array_equal(both.labels["z"][idx], np.concatenate([a.labels["z"], b.labels["z"]])[idx])


@pytest.mark.slow  # two short training runs: ~8 s
def test_two_training_stores_and_init_from_a_checkpoint(toy_stores, tmp_path):
    cfg = tiny_train_config(epochs=1)
    first = train([toy_stores[0], toy_stores[2]], toy_stores[1], tmp_path / "a", cfg, progress=False)
    ck = torch.load(first["model"], weights_only=True)
    assert ck["provenance"]["n_train"] == 160 + 40
    assert isinstance(ck["provenance"]["train_store"], list)
    tuned = train(toy_stores[0], toy_stores[1], tmp_path / "b", cfg, progress=False, init=first["model"])
    ck2 = torch.load(tuned["model"], weights_only=True)
    assert ck2["label_norm"] == ck["label_norm"]  # the heads keep the first run's standardisation
    assert "init" in ck2["provenance"]
    # a fine-tuning run resumes with the same --init (what `make model` passes after a kill)
    again = train(toy_stores[0], toy_stores[1], tmp_path / "b", cfg, progress=False, init=first["model"], resume=True)
    assert again["epochs_run"] == 1
    assert torch.load(again["model"], weights_only=True)["label_norm"] == ck["label_norm"]
    import dataclasses
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, latent=12))
    with pytest.raises(UserError, match="--init"):
        train(toy_stores[0], toy_stores[1], tmp_path / "c", other, progress=False, init=first["model"])


def test_cache_holds_the_properties_of_the_light_in_the_spectrum(toy_waves, tmp_path):
    """The property heads learn log M* and log SFR of the light the spectrum holds."""
    import numpy as np

    from mtopnet.store import write_store
    from mtopnet.testing import toy_batch
    batch = toy_batch(12, toy_waves, seed=5)
    frac = np.linspace(0.2, 1.0, 12).astype(np.float32)
    batch.labels["light_fraction"] = frac
    write_store(tmp_path / "s.h5", batch, {"instrument": "toy"})
    cache = build_cache(tmp_path / "s.h5", TINY_PRE, tmp_path / "cache", progress=False)
    for key in ("logmstar", "logsfr"):
        assert np.allclose(cache.labels[key], batch.labels[key] + np.log10(frac.astype(np.float64)))
