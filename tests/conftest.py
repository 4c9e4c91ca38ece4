"""Shared fixtures for the network tests: toy stores, tiny configs, a tiny trained model.

Everything is built in code and kept tiny (256-pixel grid, ~200 spectra) so the tests run
in seconds on two CPU cores.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtopnet.model import ModelConfig, ZBinning
from mtopnet.preprocess import PreprocessConfig
from mtopnet.store import write_store
from mtopnet.testing import toy_arm_waves, toy_batch
from mtopnet.train import OptimConfig, TrainConfig

TINY_PRE = PreprocessConfig(wave_min=6400.0, wave_max=18100.0, n_pix=256, n_continuum=16, continuum_window_kms=9000.0)
TINY_Z = ZBinning(0.6, 3.0, 0.02)
TINY_MODEL = ModelConfig(stem_channels=8, stem_kernel=4, stem_stride=2, stage_channels=(8, 16, 16),
                         line_factor=4, line_hidden=16, continuum_hidden=16, latent=32, z_hidden=32,
                         property_hidden=16, dropout=0.0)


@pytest.fixture(autouse=True)
def seed() -> int:
    """Every test starts from the same global random state (numpy's legacy generator, torch);
    a test that needs the seed's value asks for ``seed``."""
    np.random.seed(0)
    torch.manual_seed(0)
    return 0


def tiny_train_config(epochs: int = 2) -> TrainConfig:
    return TrainConfig(seed=0, preprocess=TINY_PRE, redshift=TINY_Z, model=TINY_MODEL,
                       optim=OptimConfig(epochs=epochs, batch_size=32, lr=3e-3, final_lr=1e-5, patience=3,
                                         eval_batch_size=128)).resolved()


@pytest.fixture(scope="session")
def toy_waves() -> dict[str, np.ndarray]:
    return toy_arm_waves(300)


@pytest.fixture(scope="session")
def toy_stores(tmp_path_factory, toy_waves):
    """(train, val, test) toy stores of 160, 120 and 40 objects."""
    root = tmp_path_factory.mktemp("stores")
    paths = []
    for name, n, s, start in (("train", 160, 1, 0), ("val", 120, 2, 1000), ("test", 40, 3, 2000)):
        path = root / f"{name}.h5"
        write_store(path, toy_batch(n, toy_waves, seed=s, start_id=start), {"instrument": "toy"})
        paths.append(path)
    return tuple(paths)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, toy_stores):
    """A tiny model trained for 2 epochs on the toy store (model.pt, calibrated)."""
    from mtopnet.train import train
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(2)
    train(toy_stores[0], toy_stores[1], out, tiny_train_config(), progress=False)
    return out / "model.pt"
