"""Stellar-mass and SFR tasks: a Gaussian (mean, sigma) on a standardised label."""
from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import mlp

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -6.0, 3.0


class GaussianHead(nn.Module):
    """(B, latent) -> (mean (B,), log_sigma (B,)) of a standardised label."""

    def __init__(self, latent: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = mlp([latent, hidden, 2], dropout)

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(latent)
        return out[:, 0], out[:, 1].clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)


def gaussian_nll(mean: torch.Tensor, log_sigma: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood over finite targets; (B,) each -> scalar.

    ``0.5 * ((target - mean) / sigma)^2 + log(sigma) + 0.5 * log(2 pi)``; non-finite targets
    are skipped (0 with a gradient if none is finite).
    """
    ok = torch.isfinite(target)
    if not bool(ok.any()):
        return mean.sum() * 0.0
    t = torch.where(ok, target, torch.zeros_like(target))
    nll = 0.5 * ((t - mean) * torch.exp(-log_sigma)) ** 2 + log_sigma + 0.5 * math.log(2 * math.pi)
    return nll[ok].mean()


__all__ = ["GaussianHead", "gaussian_nll"]
