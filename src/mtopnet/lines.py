"""Rest-frame spectral lines the network is taught to locate (vacuum Angstrom).

The auxiliary line-location task of M-TOPnet marks where each of these lines falls once
redshifted. The list follows the paper's prototype (42 lines from Ly-alpha to HeI 10830,
emission and absorption) and adds the Paschen lines that MOONS sees at z < 1.

Wavelengths are vacuum values (NIST / SDSS line lists); for lines usually quoted in air the
air value is noted in the comment and converted with the IAU (Morton 1991) relation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Line:
    """One rest-frame line: ``name``, ``wave`` (vacuum Angstrom), ``kind`` ('emission'|'absorption')."""

    name: str
    wave: float
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ("emission", "absorption"):
            raise ValueError(f"line {self.name}: kind must be 'emission' or 'absorption', got {self.kind!r}")
        if not self.wave > 0:
            raise ValueError(f"line {self.name}: wave must be > 0, got {self.wave}")


_E, _A = "emission", "absorption"

LINES: tuple[Line, ...] = (
    Line("Lya", 1215.67, _E),
    Line("CIV_1549", 1549.48, _E),  # doublet blend 1548.19 + 1550.77
    Line("HeII_1640", 1640.42, _E),
    Line("CIII]_1909", 1908.73, _E),
    Line("MgII_2796", 2796.35, _A),  # absorption in galaxies, emission in AGN
    Line("MgII_2804", 2803.53, _A),
    Line("[NeV]_3427", 3426.85, _E),
    Line("[OII]_3727", 3727.09, _E),  # air 3726.03
    Line("[OII]_3730", 3729.88, _E),  # air 3728.82
    Line("[NeIII]_3870", 3869.86, _E),  # air 3868.76
    Line("H8_3890", 3890.17, _E),  # air 3889.06 (blend with HeI 3889)
    Line("CaII_K", 3934.78, _A),  # air 3933.66
    Line("CaII_H", 3969.59, _A),  # air 3968.47 (blend with H-epsilon 3971.20)
    Line("Hdelta", 4102.89, _A),  # air 4101.74; Balmer absorption in post-starbursts
    Line("G_band_4305", 4305.6, _A),  # CH G band, air ~4304.4 (a band, not a line)
    Line("Hgamma", 4341.68, _E),  # air 4340.47
    Line("[OIII]_4364", 4364.44, _E),  # air 4363.21
    Line("HeII_4687", 4687.02, _E),  # air 4685.71
    Line("Hbeta", 4862.68, _E),  # air 4861.33
    Line("[OIII]_4960", 4960.30, _E),  # air 4958.91
    Line("[OIII]_5008", 5008.24, _E),  # air 5006.84
    Line("MgI_5169", 5168.76, _A),  # air 5167.32 (Mg b triplet)
    Line("MgI_5174", 5174.13, _A),  # air 5172.68
    Line("MgI_5185", 5185.05, _A),  # air 5183.60
    Line("HeI_5877", 5877.25, _E),  # air 5875.62
    Line("NaI_D2", 5891.58, _A),  # air 5889.95
    Line("NaI_D1", 5897.56, _A),  # air 5895.92
    Line("[OI]_6302", 6302.05, _E),  # air 6300.30
    Line("[OI]_6366", 6365.54, _E),  # air 6363.78
    Line("[NII]_6550", 6549.86, _E),  # air 6548.05
    Line("Halpha", 6564.61, _E),  # air 6562.80
    Line("[NII]_6585", 6585.27, _E),  # air 6583.45
    Line("[SII]_6718", 6718.29, _E),  # air 6716.44
    Line("[SII]_6733", 6732.67, _E),  # air 6730.82
    Line("TiO_7055", 7055.0, _A),  # TiO bandhead of cool stars, approximate
    Line("[ArIII]_7138", 7137.77, _E),  # air 7135.79
    Line("CaII_8500", 8500.36, _A),  # air 8498.02 (calcium triplet)
    Line("CaII_8544", 8544.44, _A),  # air 8542.09
    Line("CaII_8665", 8664.52, _A),  # air 8662.14
    Line("[SIII]_9071", 9071.1, _E),  # air 9068.6
    Line("[SIII]_9533", 9533.2, _E),  # air 9530.6
    Line("Pa_delta", 10052.13, _E),  # air 10049.37
    Line("HeI_10833", 10833.31, _E),  # air 10830.34
    Line("Pa_gamma", 10941.09, _E),  # air 10938.09
    Line("Pa_beta", 12821.59, _E),  # air 12818.08
)
"""The default line list (45 lines), sorted by wavelength."""


def line_waves(lines: tuple[Line, ...] = LINES) -> np.ndarray:
    """Rest-frame vacuum wavelengths of ``lines``: (K,) float64, Angstrom."""
    return np.array([line.wave for line in lines], dtype=np.float64)


def lines_as_records(lines: tuple[Line, ...] = LINES) -> list[dict]:
    """Plain dicts (name, wave, kind), e.g. to store in a checkpoint."""
    return [{"name": line.name, "wave": float(line.wave), "kind": line.kind} for line in lines]


def lines_from_records(records: list[dict]) -> tuple[Line, ...]:
    """Inverse of :func:`lines_as_records`."""
    return tuple(Line(str(r["name"]), float(r["wave"]), str(r["kind"])) for r in records)


def air_to_vacuum(wave_air: np.ndarray | float) -> np.ndarray:
    """Air -> vacuum wavelength (Angstrom), IAU standard (Morton 1991), valid above 2000 A."""
    wave_air = np.asarray(wave_air, dtype=np.float64)
    sigma2 = (1e4 / wave_air) ** 2
    return wave_air * (1.0 + 6.4328e-5 + 2.94981e-2 / (146.0 - sigma2) + 2.5540e-4 / (41.0 - sigma2))


def _wave(name: str) -> float:
    """Vacuum wavelength of the line ``name`` of :data:`LINES`."""
    return next(line.wave for line in LINES if line.name == name)


CIII_1907 = 1906.68
"""[CIII] 1906.68 A (vacuum), the forbidden partner of CIII] 1908.73: not a line the network
locates (it is blended with CIII] at the network's resolution), but a member of the CIII]
group of the refinement."""

LINE_GROUPS: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = (
    ("CIII]", ((CIII_1907, 1.0), (_wave("CIII]_1909"), 0.7))),
    ("[OII]", ((_wave("[OII]_3727"), 0.74), (_wave("[OII]_3730"), 1.0))),  # ratio of a low-density HII region
    ("[NeIII]", ((_wave("[NeIII]_3870"), 1.0),)),
    ("Hdelta", ((_wave("Hdelta"), 1.0),)),
    ("Hgamma", ((_wave("Hgamma"), 1.0),)),
    ("Hbeta", ((_wave("Hbeta"), 1.0),)),
    ("[OIII]", ((_wave("[OIII]_4960"), 1.0), (_wave("[OIII]_5008"), 2.98))),  # fixed by atomic physics
    ("Halpha", ((_wave("Halpha"), 1.0),)),
    ("[NII]", ((_wave("[NII]_6550"), 1.0), (_wave("[NII]_6585"), 2.94))),  # fixed by atomic physics
    ("HeI5877", ((_wave("HeI_5877"), 1.0),)),
    ("[OI]", ((_wave("[OI]_6302"), 1.0), (_wave("[OI]_6366"), 0.33))),  # fixed by atomic physics
    ("[SII]", ((_wave("[SII]_6718"), 1.0), (_wave("[SII]_6733"), 0.75))),  # low density
    ("[ArIII]", ((_wave("[ArIII]_7138"), 1.0),)),
    ("[SIII]", ((_wave("[SIII]_9071"), 1.0), (_wave("[SIII]_9533"), 2.47))),  # fixed by atomic physics
    ("HeI", ((_wave("HeI_10833"), 1.0),)),
    ("Paschen", ((_wave("Pa_delta"), 0.33), (_wave("Pa_gamma"), 0.55), (_wave("Pa_beta"), 1.0))),  # case B
)
"""Emission-line basis vectors: name, ((vacuum A, relative flux), ...). Lines closer than a
few resolution elements share one vector (fixed ratios), so their free amplitudes cannot
trade against the redshift; resolved lines whose ratios vary across the population (Halpha
and [NII], Hbeta and [OIII]) get separate vectors. The PCA templates carry lines too, tied
to each other and to the continuum in the population's average ratios (a dusty galaxy's
CIII] is far weaker than average); a free-signed line vector can add to or cancel each one,
while the PCA's lines keep the shapes of the population's line widths."""


__all__ = ["Line", "LINES", "LINE_GROUPS", "CIII_1907", "line_waves", "lines_as_records", "lines_from_records",
           "air_to_vacuum"]
