"""M-TOPnet: a multi-task 1D residual CNN (Ginolfi et al. 2025).

Spectrum (B, 2, n_pix) -> stem -> residual stages (each halves the length) -> flattened map;
a line-template path (:mod:`.template_head`, our addition) reads the map after stage
``template_stage`` and adds translation-equivariant evidence to the redshift logits;
continuum features (B, n_cont) -> dense branch; the line-location MLP branch reads the
flattened map and its hidden layer joins both branches in the shared latent layer;
separate MLP heads give the redshift logits and Gaussian (mean, log sigma) of standardised
log M* and log SFR.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, from_mapping, to_mapping
from .blocks import ResBlock1d, Stem, mlp
from .line_head import LineLocationHead
from .property_head import GaussianHead
from .redshift_head import RedshiftHead
from .template_head import LineTemplateHead
from .zbins import log_bin_centres


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. ``n_pix``, ``n_continuum_features`` and ``n_z_bins`` come from the
    preprocessing and the z binning; the rest are choices (defaults: ~1.6 M parameters).

    stem_channels, stem_kernel, stem_stride: first strided convolution.
    stage_channels: output channels of each residual stage; each stage halves the length.
    blocks_per_stage: residual blocks per stage (the first one strided).
    kernel: convolution kernel of the residual blocks.
    line_factor: input pixels per output position of the line-location map (P = n_pix / factor).
    line_hidden: width of the line-location branch's hidden layer (joins the latent layer).
    continuum_hidden: width of the dense continuum branch.
    latent: width of the shared latent ("information") layer.
    z_hidden, property_hidden: hidden widths of the redshift and M*/SFR heads.
    dropout: dropout in the latent layer and heads.
    norm: normalisation in the encoder, "batch" or "none" (see :mod:`.blocks`).
    input_asinh: feed asinh(residual) instead of the residual (faint spectra have residuals
        of ~6 sigma units, bright ones lines of ~100 continuum units: asinh keeps both in range).
    template_stage: stage whose output feeds the line-template redshift path
        (:mod:`.template_head`; None disables it); template_hidden: its hidden channels.
    scale_free_z: the flux-scale feature (``log10(scale)``, index ``scale_feature`` of the
        continuum input) is withheld from the shared latent layer and given to the M* and
        SFR heads only, so the redshift cannot depend on the flux scale (with a
        preprocessing whose other inputs are scale-free: ``scale_free_noise``).
    scale_feature: index of that feature (derived from the preprocessing).
    wave_min, dloglam, z_min, z_max, line_waves: the grid, z bins and line list, copied from
        the preprocessing / training config (derived, like n_pix) so the template path can
        be rebuilt from the checkpoint alone.
    """

    n_pix: int = 4096
    n_continuum_features: int = 259
    n_z_bins: int = 1222
    stem_channels: int = 24
    stem_kernel: int = 8
    stem_stride: int = 8
    stage_channels: tuple[int, ...] = (32, 48, 64, 96)
    blocks_per_stage: int = 1
    kernel: int = 5
    line_factor: int = 8
    line_hidden: int = 128
    continuum_hidden: int = 64
    latent: int = 256
    z_hidden: int = 256
    property_hidden: int = 64
    dropout: float = 0.1
    norm: str = "none"
    input_asinh: bool = True
    template_stage: int | None = 0
    template_hidden: int = 48
    scale_free_z: bool = False
    scale_feature: int = 256
    wave_min: float = 6470.0
    dloglam: float = 2.4981e-4
    z_min: float = 0.6
    z_max: float = 3.0
    line_waves: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.stage_channels:
            raise ConfigError("model.stage_channels: needs at least one stage")
        if self.line_factor < 1 or self.n_pix % self.line_factor:
            raise ConfigError(f"model.line_factor: must divide n_pix ({self.n_pix}), got {self.line_factor}")
        if self.n_pix % (self.stem_stride * 2 ** len(self.stage_channels)):
            raise ConfigError(f"model.stage_channels: n_pix ({self.n_pix}) must be divisible by "
                              f"stem_stride * 2^stages = {self.stem_stride * 2 ** len(self.stage_channels)}")
        for name in ("stem_channels", "stem_kernel", "stem_stride", "blocks_per_stage", "kernel", "line_hidden",
                     "continuum_hidden", "latent", "z_hidden", "property_hidden", "n_z_bins", "n_continuum_features"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}: must be >= 1, got {getattr(self, name)}")
        if self.template_stage is not None and not 0 <= self.template_stage < len(self.stage_channels):
            raise ConfigError(f"model.template_stage: must index stage_channels (0-{len(self.stage_channels) - 1}) "
                              f"or be null, got {self.template_stage}")
        if self.norm not in ("batch", "none"):
            raise ConfigError(f"model.norm: must be 'batch' or 'none', got {self.norm!r}")
        if self.scale_free_z and not 0 <= self.scale_feature < self.n_continuum_features:
            last = self.n_continuum_features - 1
            raise ConfigError(f"model.scale_feature: must index the continuum input (0-{last}), "
                              f"got {self.scale_feature}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout: must be within [0, 1), got {self.dropout}")

    @property
    def final_length(self) -> int:
        return self.n_pix // (self.stem_stride * 2 ** len(self.stage_channels))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "model") -> "ModelConfig":
        return from_mapping(cls, raw, where)

    def as_dict(self) -> dict:
        return to_mapping(self)


class MTopNet(nn.Module):
    """The network. ``forward(spectrum, continuum)`` with

    spectrum: (B, 2, n_pix) float32 (residual, weight channels of :mod:`mtopnet.preprocess`)
    continuum: (B, n_continuum_features) float32
    returns a dict of tensors:
      ``z_logits`` (B, n_z_bins); ``line_logits`` (B, n_pix // line_factor);
      ``logmstar_mean``, ``logmstar_logsigma``, ``logsfr_mean``, ``logsfr_logsigma`` (B,),
      on standardised labels.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.stem = Stem(2, c.stem_channels, c.stem_kernel, c.stem_stride, c.norm)
        stages = []
        c_in = c.stem_channels
        for c_out in c.stage_channels:
            blocks = [ResBlock1d(c_in, c_out, c.kernel, stride=2, norm=c.norm)]
            blocks += [ResBlock1d(c_out, c_out, c.kernel, norm=c.norm) for _ in range(c.blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        n_flat = c.stage_channels[-1] * c.final_length
        self.line_head = LineLocationHead(n_flat, c.line_hidden, c.n_pix // c.line_factor, c.dropout)
        self.continuum = mlp([c.n_continuum_features, 2 * c.continuum_hidden, c.continuum_hidden])
        self.continuum_act = nn.GELU()
        self.latent = nn.Sequential(nn.Linear(n_flat + c.line_hidden + c.continuum_hidden, c.latent), nn.GELU(),
                                    nn.Dropout(c.dropout))
        self.redshift = RedshiftHead(c.latent, c.z_hidden, c.n_z_bins, c.dropout)
        self.template: LineTemplateHead | None = None
        if c.template_stage is not None and c.line_waves:
            factor = c.stem_stride * 2 ** (c.template_stage + 1)
            centres = log_bin_centres(c.z_min, c.z_max, c.n_z_bins)
            self.template = LineTemplateHead(c.stage_channels[c.template_stage], c.template_hidden,
                                             np.asarray(c.line_waves), centres, c.wave_min, c.dloglam, factor,
                                             c.n_pix // factor)
        n_prop = c.latent + (1 if c.scale_free_z else 0)
        self.logmstar = GaussianHead(n_prop, c.property_hidden, c.dropout)
        self.logsfr = GaussianHead(n_prop, c.property_hidden, c.dropout)

    def forward(self, spectrum: torch.Tensor, continuum: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.config.input_asinh:
            spectrum = torch.cat([torch.asinh(spectrum[:, :1]), spectrum[:, 1:]], dim=1)
        x = self.stem(spectrum)  # (B, stem_channels, n_pix / stem_stride)
        z_template = None
        for i, stage in enumerate(self.stages):
            x = stage(x)  # (B, stage_channels[i], L / 2)
            if self.template is not None and i == self.config.template_stage:
                z_template = self.template(x)  # (B, n_z_bins)
        flat = x.flatten(1)  # (B, stage_channels[-1] * final_length)
        line_logits, line_hidden = self.line_head(flat)  # (B, n_pix / line_factor), (B, line_hidden)
        if self.config.scale_free_z:
            k = self.config.scale_feature
            prop_scale = continuum[:, k:k + 1]  # (B, 1) log10(scale)
            continuum = torch.cat([continuum[:, :k], torch.zeros_like(prop_scale), continuum[:, k + 1:]], dim=1)
        cont = self.continuum_act(self.continuum(continuum))  # (B, continuum_hidden)
        latent = self.latent(torch.cat([flat, line_hidden, cont], dim=1))  # (B, latent)
        prop_in = latent if not self.config.scale_free_z else torch.cat([latent, prop_scale], dim=1)
        m_mean, m_logsig = self.logmstar(prop_in)
        s_mean, s_logsig = self.logsfr(prop_in)
        z_logits = self.redshift(latent)  # (B, n_z_bins)
        if z_template is not None:
            z_logits = z_logits + z_template
        return {"z_logits": z_logits, "line_logits": line_logits,
                "logmstar_mean": m_mean, "logmstar_logsigma": m_logsig,
                "logsfr_mean": s_mean, "logsfr_logsigma": s_logsig}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ModelConfig", "MTopNet", "count_parameters"]
