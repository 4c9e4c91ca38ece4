"""The redshift task: a probability distribution over :class:`~.zbins.ZBinning` bins."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import mlp


class RedshiftHead(nn.Module):
    """(B, latent) -> logits (B, n_bins); softmax gives the redshift PDF (mass per bin)."""

    def __init__(self, latent: int, hidden: int, n_bins: int, dropout: float = 0.0):
        super().__init__()
        self.net = mlp([latent, hidden, n_bins], dropout)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)


def redshift_loss(logits: torch.Tensor, bin_index: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, n_bins) logits against (B,) bin indices; index -1 is ignored.

    Returns 0 (with a gradient) when every index is -1.
    """
    if bool((bin_index >= 0).any()):
        return F.cross_entropy(logits, bin_index, ignore_index=-1)
    return logits.sum() * 0.0


__all__ = ["RedshiftHead", "redshift_loss"]
