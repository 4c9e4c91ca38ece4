"""Redshift bins: uniform in log(1 + z), no wider than ``max_width`` in z anywhere."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import ConfigError


def log_bin_centres(z_min: float, z_max: float, n_bins: int) -> np.ndarray:
    """(n_bins,) centres in z of ``n_bins`` bins uniform in ln(1 + z) over ``z_min``-``z_max``
    (geometric in 1 + z): the one formula, for :class:`ZBinning` and the network's heads."""
    dlog = math.log((1 + z_max) / (1 + z_min)) / n_bins
    return (1 + z_min) * np.exp(dlog * (np.arange(n_bins) + 0.5)) - 1


@dataclass(frozen=True)
class ZBinning:
    """Redshift classification bins covering ``z_min <= z <= z_max``.

    Bins are uniform in ln(1 + z), so their width in z grows as (1 + z); the number of bins
    is the smallest that keeps the widest (the last) at most ``max_width`` in z. For the
    MOONS default (0.6-3.0, 0.003) that is 1222 bins of 7.5e-4 in ln(1 + z), 0.0012 wide in
    z at z = 0.6 and 0.0030 at z = 3.
    """

    z_min: float = 0.6
    z_max: float = 3.0
    max_width: float = 0.003

    def __post_init__(self) -> None:
        if not -0.5 < self.z_min < self.z_max:
            raise ConfigError(f"redshift.z_max: must exceed z_min > -0.5, got {self.z_min}-{self.z_max}")
        if not 0 < self.max_width < self.z_max - self.z_min:
            raise ConfigError(f"redshift.max_width: must be within (0, z_max - z_min), got {self.max_width}")

    @property
    def n_bins(self) -> int:
        span = math.log((1 + self.z_max) / (1 + self.z_min))
        return int(math.ceil(span * (1 + self.z_max) / self.max_width - 1e-9))

    @property
    def dlog(self) -> float:
        """Bin width in ln(1 + z)."""
        return math.log((1 + self.z_max) / (1 + self.z_min)) / self.n_bins

    @property
    def edges(self) -> np.ndarray:
        """(n_bins + 1,) bin edges in z."""
        return (1 + self.z_min) * np.exp(self.dlog * np.arange(self.n_bins + 1)) - 1

    @property
    def centres(self) -> np.ndarray:
        """(n_bins,) bin centres in z (geometric in 1 + z)."""
        return log_bin_centres(self.z_min, self.z_max, self.n_bins)

    def index(self, z: np.ndarray) -> np.ndarray:
        """Bin index of each z: (N,) int64, -1 outside [z_min, z_max] or not finite."""
        z = np.asarray(z, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            idx = np.floor(np.log((1 + z) / (1 + self.z_min)) / self.dlog)
        inside = np.isfinite(idx) & (z >= self.z_min) & (z <= self.z_max)
        return np.where(inside, np.clip(np.nan_to_num(idx), 0, self.n_bins - 1), -1).astype(np.int64)


__all__ = ["ZBinning", "log_bin_centres"]
