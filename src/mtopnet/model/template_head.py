"""A translation-equivariant redshift path: learned line detectors read at each bin's lines.

In log-wavelength a redshift is a shift, so a line at rest wavelength ``lambda_j`` falls at
position ``ln(lambda_j (1 + z_k) / wave_min) / dloglam`` for redshift bin ``k``. The head
turns encoder features (B, C, P) into one evidence map per line (B, K, P) and scores every
bin as the sum over lines of the evidence at that line's position (linear interpolation
between positions; lines off the grid contribute nothing):

    logit_k = sum_j evidence_j(pos(j, k))

This is a learned cross-correlation with a line template (the idea of a redshift scan, made
differentiable). Its logits are added to the MLP redshift head's: the template path learns
from few examples because its weights are shared across all redshifts, the MLP path adds
context (continuum shape, breaks, line ratios).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn


def template_positions(line_waves: np.ndarray, z_centres: np.ndarray, wave_min: float, dloglam: float,
                       factor: int, n_positions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fractional map positions of every (bin, line): (n_bins, K) index, fraction, valid.

    Map position p averages input pixels [p * factor, (p + 1) * factor); its centre is at
    input pixel p * factor + (factor - 1) / 2, input pixel i at ln(wave_min) + (i + 0.5) dloglam.
    """
    pix = np.log(line_waves[None, :] * (1 + z_centres[:, None]) / wave_min) / dloglam - 0.5
    u = (pix - (factor - 1) / 2) / factor
    valid = (u >= 0) & (u <= n_positions - 1)
    u = np.clip(u, 0, n_positions - 1)
    i0 = np.minimum(np.floor(u).astype(np.int64), max(n_positions - 2, 0))
    return i0, (u - i0).astype(np.float32), valid


class LineTemplateHead(nn.Module):
    """Encoder features (B, c_in, P) -> z logits (B, n_bins).

    line_waves: (K,) rest wavelengths (A); z_centres: (n_bins,); wave_min (A), dloglam and
    factor (input pixels per position) place the bins' lines on the P positions.
    """

    def __init__(self, c_in: int, hidden: int, line_waves: np.ndarray, z_centres: np.ndarray, wave_min: float,
                 dloglam: float, factor: int, n_positions: int):
        super().__init__()
        k = len(line_waves)
        self.n_lines, self.n_positions = k, n_positions
        self.evidence = nn.Sequential(nn.Conv1d(c_in, hidden, 5, padding=2), nn.ReLU(), nn.Conv1d(hidden, k, 1))
        i0, frac, valid = template_positions(np.asarray(line_waves, float), np.asarray(z_centres, float), wave_min,
                                             dloglam, factor, n_positions)
        # a sparse (n_bins, K * P) interpolation matrix: column j * P + p is line j at position p
        n_bins = len(z_centres)
        col0 = i0 + np.arange(k)[None, :] * n_positions
        rows = np.repeat(np.arange(n_bins)[:, None], k, axis=1)
        keep = valid.ravel()
        r = np.concatenate([rows.ravel()[keep], rows.ravel()[keep]])
        c = np.concatenate([col0.ravel()[keep], col0.ravel()[keep] + 1])
        v = np.concatenate([(1 - frac).ravel()[keep], frac.ravel()[keep]]).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            coo = torch.sparse_coo_tensor(torch.from_numpy(np.stack([r, c])), torch.from_numpy(v),
                                          (n_bins, k * n_positions)).coalesce()
            self.register_buffer("interp", coo.to_sparse_csr(), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        ev = self.evidence(features).flatten(1)  # (B, K * P)
        return torch.sparse.mm(self.interp, ev.t()).t()  # (B, n_bins)


__all__ = ["LineTemplateHead", "template_positions"]
