"""Redshift bins, line targets, network shapes, and a tiny network that learns."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, TINY_PRE, TINY_Z
from mtopnet.config import ConfigError
from mtopnet.lines import line_waves
from mtopnet.model import LossWeights, ModelConfig, MTopNet, ZBinning, count_parameters, multitask_loss
from mtopnet.model.line_head import line_target
from mtopnet.preprocess import PreprocessConfig, Preprocessor
from mtopnet.testing import toy_batch


@pytest.mark.parametrize("z_min,z_max,width", [(0.6, 3.0, 0.003), (0.0, 1.5, 0.002), (0.6, 3.0, 0.01)])
def test_zbins_uniform_in_log_and_never_wider_than_requested(z_min, z_max, width):
    zb = ZBinning(z_min, z_max, width)
    e = zb.edges
    assert e[0] == pytest.approx(z_min) and e[-1] == pytest.approx(z_max)
    assert np.allclose(np.diff(np.log1p(e)), zb.dlog)
    assert np.diff(e).max() <= width + 1e-12
    assert ZBinning(z_min, z_max, width * 1.0001).n_bins <= zb.n_bins  # the fewest such bins
    assert np.diff(e).max() > width * (zb.n_bins - 1) / zb.n_bins * 0.999


def test_moons_default_bins_and_indexing():
    zb = ZBinning()
    assert zb.n_bins == 1222
    idx = zb.index(np.array([0.6, 1.0, 3.0, 0.5, np.nan, 3.1]))
    assert idx[0] == 0 and idx[2] == zb.n_bins - 1 and list(idx[3:]) == [-1, -1, -1]
    assert zb.edges[idx[1]] <= 1.0 < zb.edges[idx[1] + 1]


def test_line_target_marks_redshifted_lines():
    cfg = PreprocessConfig()
    z = torch.tensor([1.0], dtype=torch.float64)
    t = line_target(z, torch.tensor(line_waves(), dtype=torch.float64), cfg.wave_min, cfg.dloglam, cfg.n_pix, 1, 5.0)
    ha = 6564.61 * 2.0
    pix = int(np.searchsorted(cfg.wave_edges, ha)) - 1
    assert t[0, pix] == 1 and t[0, pix - 5] == 1 and t[0, pix + 5] == 1
    # no listed line within 7 pixels of 15000 A at z=1 (7500 A rest)
    far = int(np.searchsorted(cfg.wave_edges, 15000.0)) - 1
    rest = line_waves() * 2
    assert np.min(np.abs(np.log(rest / 15000.0))) / cfg.dloglam > 7 and t[0, far] == 0


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_forward_shapes(batch, norm, seed):
    cfg = dataclasses.replace(TINY_MODEL, n_pix=TINY_PRE.n_pix, n_continuum_features=TINY_PRE.n_continuum_features,
                              n_z_bins=TINY_Z.n_bins, norm=norm)
    net = MTopNet(cfg).eval()
    out = net(torch.randn(batch, 2, cfg.n_pix), torch.randn(batch, cfg.n_continuum_features))
    assert out["z_logits"].shape == (batch, TINY_Z.n_bins)
    assert out["line_logits"].shape == (batch, cfg.n_pix // cfg.line_factor)
    for k in ("logmstar_mean", "logmstar_logsigma", "logsfr_mean", "logsfr_logsigma"):
        assert out[k].shape == (batch,)


def test_default_model_size():
    n = count_parameters(MTopNet(ModelConfig()))
    assert 1_000_000 <= n <= 2_500_000


def test_model_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.line_factor"):
        ModelConfig(n_pix=4096, line_factor=3)
    with pytest.raises(ConfigError, match="model.stage_channels"):
        ModelConfig(n_pix=4000)


@pytest.mark.slow  # 120 optimiser steps: ~20-75 s on two cores
def test_tiny_network_overfits_tiny_set(toy_waves, seed):
    b = toy_batch(24, toy_waves, seed=7, sky_fraction=0.0)
    x = Preprocessor(TINY_PRE)(b)
    cfg = dataclasses.replace(TINY_MODEL, n_pix=TINY_PRE.n_pix, n_continuum_features=TINY_PRE.n_continuum_features,
                              n_z_bins=TINY_Z.n_bins)
    net = MTopNet(cfg)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    s, c = torch.from_numpy(x.spectrum), torch.from_numpy(x.continuum)
    zi = torch.from_numpy(TINY_Z.index(b.labels["z"]))
    z = torch.tensor(b.labels["z"], dtype=torch.float32)
    lt = line_target(z, torch.tensor(line_waves(), dtype=torch.float32), TINY_PRE.wave_min, TINY_PRE.dloglam,
                     TINY_PRE.n_pix, cfg.line_factor, 5.0)
    m = torch.tensor((b.labels["logmstar"] - 10.5) / 0.6, dtype=torch.float32)
    sfr = torch.tensor(b.labels["logsfr"] - 1.0, dtype=torch.float32)
    losses = []
    for _ in range(120):
        loss, parts = multitask_loss(net(s, c), zi, lt, m, sfr, LossWeights())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts)
    first, last = losses[0], losses[-1]
    assert last["z"] < 0.3 * first["z"]
    assert last["line"] < first["line"]
    assert last["logmstar"] < first["logmstar"]


def test_template_positions_follow_the_redshifted_lines():
    from mtopnet.model.template_head import template_positions
    cfg = PreprocessConfig()
    zb = ZBinning()
    factor = 16
    i0, frac, valid = template_positions(np.array([6564.61, 3727.09]), zb.centres, cfg.wave_min, cfg.dloglam,
                                         factor, cfg.n_pix // factor)
    k = int(np.argmin(np.abs(zb.centres - 2.0)))
    assert valid[k, 1] and not valid[k, 0]  # H-alpha at z=2 lies beyond 18000 A; [OII] does not
    pixel_oii = np.interp(np.log(3727.09 * (1 + zb.centres[k])), np.log(cfg.wave_edges), np.arange(cfg.n_pix + 1)) - 0.5
    assert (i0[k, 1] + frac[k, 1]) * factor + (factor - 1) / 2 == pytest.approx(pixel_oii, abs=1e-6)
    assert 6564.61 * (1 + zb.centres[k]) > cfg.wave_max


def test_template_path_is_built_from_the_resolved_config():
    from mtopnet.train import TrainConfig
    cfg = TrainConfig.from_dict({"preprocess": {"n_pix": 1024, "n_continuum": 32},
                                 "model": {"stem_stride": 4, "stage_channels": [8, 8, 8], "line_factor": 8}})
    net = MTopNet(cfg.model).eval()
    assert net.template is not None and len(cfg.model.line_waves) > 40
    out = net(torch.randn(2, 2, 1024), torch.randn(2, cfg.model.n_continuum_features))
    assert out["z_logits"].shape == (2, cfg.redshift.n_bins)
    # no template without a line list (or with template_stage null)
    assert MTopNet(dataclasses.replace(cfg.model, template_stage=None)).template is None


def _scaled(batch, factor: float):
    """``batch`` with flux multiplied by ``factor`` and ivar by ``factor**-2`` (same S/N)."""
    arms = {name: {**arm, "flux": arm["flux"] * factor, "ivar": arm["ivar"] / factor ** 2}
            for name, arm in batch.arms.items()}
    return dataclasses.replace(batch, arms=arms)


def test_redshift_does_not_depend_on_the_flux_scale(toy_waves):
    """With scale_free_noise + scale_free_z, x0.3 and x3 give the same z logits (M* moves)."""
    pre_cfg = dataclasses.replace(TINY_PRE, scale_free_noise=True)
    cfg = dataclasses.replace(TINY_MODEL, n_pix=pre_cfg.n_pix, n_continuum_features=pre_cfg.n_continuum_features,
                              n_z_bins=TINY_Z.n_bins, scale_free_z=True, scale_feature=pre_cfg.scale_feature)
    torch.manual_seed(0)
    net = MTopNet(cfg).eval()
    pre = Preprocessor(pre_cfg)
    batch = toy_batch(8, toy_waves, seed=11)
    outs = []
    for factor in (1.0, 0.3, 3.0):
        x = pre(_scaled(batch, factor))
        with torch.no_grad():
            outs.append(net(torch.from_numpy(x.spectrum), torch.from_numpy(x.continuum)))
    for other in outs[1:]:
        assert torch.allclose(other["z_logits"], outs[0]["z_logits"], atol=1e-4)
        assert torch.equal(other["z_logits"].argmax(1), outs[0]["z_logits"].argmax(1))
    # the mass head still sees the scale: x3 in flux is +0.48 dex in log10(scale)
    assert not torch.allclose(outs[2]["logmstar_mean"], outs[0]["logmstar_mean"], atol=1e-4)
    # without the option the redshift does see it (the test above could fail)
    torch.manual_seed(0)
    plain = MTopNet(dataclasses.replace(cfg, scale_free_z=False)).eval()
    with torch.no_grad():
        a = plain(*(torch.from_numpy(v) for v in (pre(batch).spectrum, pre(batch).continuum)))["z_logits"]
        b = plain(*(torch.from_numpy(v) for v in (pre(_scaled(batch, 3.0)).spectrum,
                                                  pre(_scaled(batch, 3.0)).continuum)))["z_logits"]
    assert not torch.allclose(a, b, atol=1e-4)
