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
