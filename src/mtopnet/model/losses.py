"""The multi-task loss: weighted sum of the four tasks' losses."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError
from .line_head import line_loss
from .property_head import gaussian_nll
from .redshift_head import redshift_loss


@dataclass(frozen=True)
class LossWeights:
    """Weights of the task losses. Defaults follow the paper (z 1, line mask 10, M* 1, SFR 1).

    The scales are comparable: the z cross-entropy starts at ln(n_bins) ~ 7 and ends ~1-2;
    the line-mask BCE starts ~0.3-0.7 and ends ~0.05-0.15 (x10 -> 0.5-1.5); the Gaussian NLLs
    of standardised labels start ~1.4 and end below 0. We keep the paper's weights.
    """

    z: float = 1.0
    line: float = 10.0
    logmstar: float = 1.0
    logsfr: float = 1.0

    def __post_init__(self) -> None:
        for name in ("z", "line", "logmstar", "logsfr"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss_weights.{name}: must be >= 0, got {getattr(self, name)}")


def task_losses(out: dict[str, torch.Tensor], z_index: torch.Tensor, line_target: torch.Tensor,
                logmstar: torch.Tensor, logsfr: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each task's loss (scalar tensors with gradients), keyed ``z``, ``line``, ``logmstar``, ``logsfr``.

    Each is a mean over the batch's usable entries: ``z`` over z_index >= 0, ``line`` over all
    B * P pixels, ``logmstar`` and ``logsfr`` over finite labels. Arguments as :func:`multitask_loss`.
    """
    return {
        "z": redshift_loss(out["z_logits"], z_index),
        "line": line_loss(out["line_logits"], line_target),
        "logmstar": gaussian_nll(out["logmstar_mean"], out["logmstar_logsigma"], logmstar),
        "logsfr": gaussian_nll(out["logsfr_mean"], out["logsfr_logsigma"], logsfr),
    }


def multitask_loss(out: dict[str, torch.Tensor], z_index: torch.Tensor, line_target: torch.Tensor,
                   logmstar: torch.Tensor, logsfr: torch.Tensor,
                   weights: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts.

    out: the network's output dict; z_index: (B,) int64 bin (-1 = ignore);
    line_target: (B, P) float; logmstar, logsfr: (B,) standardised labels (NaN = ignore).
    """
    parts = task_losses(out, z_index, line_target, logmstar, logsfr)
    total = sum(getattr(weights, k) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


__all__ = ["LossWeights", "task_losses", "multitask_loss"]
