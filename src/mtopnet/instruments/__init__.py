"""Instruments: YAML descriptions turned into observation models.

``load_instrument("moons-lr")`` reads a shipped description from ``mtopnet/data/instruments``;
a path to a ``.yaml`` file reads a user's own.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..config import ConfigError, InstrumentConfig, UserError, load_yaml
from .aperture import Aperture, source_sigma
from .instrument import (
    MASK_BAD,
    MASK_SKYLINE,
    MASK_TELLURIC,
    SKY_MASK_BITS,
    Arm,
    Instrument,
    bin_mean,
    image_quality,
    pixel_mask,
    resample_mask,
)
from .noise import ArmSpectra, light_fraction, observe_arm, observe_arm_conditions

__all__ = ["Instrument", "Arm", "ArmSpectra", "observe_arm", "observe_arm_conditions", "light_fraction",
           "load_instrument", "available_instruments", "MASK_BAD", "MASK_SKYLINE", "MASK_TELLURIC", "bin_mean",
           "image_quality", "Aperture", "SKY_MASK_BITS", "pixel_mask", "resample_mask", "source_sigma"]


def _shipped_dir() -> Path:
    return Path(str(resources.files("mtopnet") / "data" / "instruments"))


def available_instruments() -> list[str]:
    """Names of the shipped instrument descriptions."""
    return sorted(p.stem for p in _shipped_dir().glob("*.yaml"))


@lru_cache(maxsize=16)
def load_instrument(name_or_path: str) -> Instrument:
    """An :class:`Instrument` from a shipped name (``moons-lr``) or a YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        source = path
    else:
        source = _shipped_dir() / f"{name_or_path}.yaml"
        if not source.is_file():
            raise UserError(f"unknown instrument {name_or_path!r}: known are "
                            f"{', '.join(available_instruments())}, or give a path to a .yaml file")
    raw = load_yaml(source)
    try:
        return Instrument(InstrumentConfig.from_yaml(raw, str(source)))
    except ConfigError as exc:  # the file and the field, as every config file's errors
        raise ConfigError(f"{source}: {exc}") from None
