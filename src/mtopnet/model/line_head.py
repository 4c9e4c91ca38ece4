"""The auxiliary line-location task: where do redshifted lines of the list fall?

The head reads the encoder's flattened feature map and predicts, per position of the input
grid downsampled by ``factor``, whether a line of the list falls within +-``half_width``
input pixels. Its hidden layer also feeds the shared latent layer.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class LineLocationHead(nn.Module):
    """An MLP branch: flattened encoder features (B, n_in) -> logits (B, P) and hidden (B, hidden).

    The hidden layer (the branch's intermediate output) joins the shared latent layer. A
    dense map (rather than a convolution) lets the head use the whole spectrum's context:
    most lines of the list are too faint to see, and only the redshift places them.
    """

    def __init__(self, n_in: int, hidden: int, n_out: int, dropout: float = 0.0):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU())
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(hidden, n_out)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(features)  # (B, hidden)
        return self.out(self.drop(h)), h  # (B, P), (B, hidden)


def line_positions(z: torch.Tensor, rest_waves: torch.Tensor, wave_min: float, dloglam: float) -> torch.Tensor:
    """Fractional input-grid pixel of each redshifted line: z (B,), rest_waves (K,) A -> (B, K)."""
    return (torch.log(rest_waves[None, :] * (1 + z[:, None]) / wave_min)) / dloglam - 0.5


def line_target(z: torch.Tensor, rest_waves: torch.Tensor, wave_min: float, dloglam: float,
                n_pix: int, factor: int, half_width: float) -> torch.Tensor:
    """Line-location target on the downsampled grid: (B, n_pix // factor) float {0, 1}.

    Input pixel i is 1 if some line lies within +-``half_width`` pixels of it; a position of
    the downsampled grid is 1 if any of its ``factor`` input pixels is. Non-finite z -> all 0.
    """
    z = torch.nan_to_num(z, nan=-0.99).clamp(min=-0.99)
    pos = line_positions(z, rest_waves, wave_min, dloglam)  # (B, K)
    p = n_pix // factor
    lo = torch.floor((pos - half_width) / factor).clamp(-1, p)  # first covered position
    hi = torch.floor((pos + half_width) / factor).clamp(-1, p)
    grid = torch.arange(p, device=z.device, dtype=pos.dtype)
    hit = (grid[None, None, :] >= lo[..., None]) & (grid[None, None, :] <= hi[..., None])  # (B, K, P)
    return hit.any(dim=1).float()


def line_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of (B, P) logits against (B, P) targets."""
    return F.binary_cross_entropy_with_logits(logits, target)


def line_target_numpy(z: np.ndarray, rest_waves: np.ndarray, wave_min: float, dloglam: float,
                      n_pix: int, factor: int, half_width: float) -> np.ndarray:
    """:func:`line_target` for numpy arrays (for plots and tests)."""
    out = line_target(torch.as_tensor(z, dtype=torch.float64), torch.as_tensor(rest_waves, dtype=torch.float64),
                      wave_min, dloglam, n_pix, factor, half_width)
    return out.numpy()


__all__ = ["LineLocationHead", "line_positions", "line_target", "line_loss", "line_target_numpy"]
