"""Typed, frozen configuration objects loaded from YAML, and the errors a user can cause.

One mechanism: a configuration is a frozen dataclass; :func:`from_mapping` builds it from a
YAML/checkpoint mapping, converting each value to the field's annotation (resolved with
``typing.get_type_hints``, so ``from __future__ import annotations`` is fine): int, float,
bool, str, ``Literal[...]``, ``X | None``, tuples (``tuple[int, ...]`` or fixed length),
nested dataclasses; :func:`load_config` does the same from a YAML file. Every problem is a
:class:`ConfigError` whose message names the field (``train.optim.lr: expected a number``)
and, from a file, the file (``bad.yaml: redshift.z_max: ...``). The instrument files, whose
curves may be a number or a table, have their own ``from_yaml`` on the same errors.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

SKY_MODELS = ("skycalc-paranal", "sdss-apo", "none")
"""Sky models an instrument's ``sky_model`` may name (see mtopnet.instruments.sky)."""


class UserError(ValueError):
    """An error a user can cause (bad path, bad range); the CLI prints it as one line, exit 2."""


class ConfigError(UserError):
    """A configuration value is missing or invalid; the message names the field (and the file)."""


def _require(mapping: dict, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ConfigError(f"{where}.{key}: missing")
    return mapping[key]


def _number(value: Any, where: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if out != out:
        raise ConfigError(f"{where}: is NaN")
    if positive and not out > 0:
        raise ConfigError(f"{where}: must be > 0, got {out}")
    if nonneg and out < 0:
        raise ConfigError(f"{where}: must be >= 0, got {out}")
    return out


@dataclass(frozen=True)
class CurveSpec:
    """A wavelength-dependent efficiency: either a constant or a two-column table.

    ``file`` may start with ``moons1d:`` to point inside the installed ``moons1d`` package's
    ``models/`` folder; ``wave_unit`` is the unit of the file's first column (A, nm, um);
    ``column`` picks the value column (0-based, after the wavelength); ``scale`` multiplies
    the values (0.01 for percent).
    """

    constant: float | None = None
    file: str | None = None
    wave_unit: str = "A"
    column: int = 0
    scale: float = 1.0

    @classmethod
    def from_yaml(cls, raw: Any, where: str) -> "CurveSpec":
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return cls(constant=_number(raw, where, nonneg=True))
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a number or a mapping with 'file'")
        if "constant" in raw:
            return cls(constant=_number(raw["constant"], f"{where}.constant", nonneg=True))
        path = _require(raw, "file", where)
        unit = str(raw.get("wave_unit", "A"))
        if unit not in ("A", "nm", "um"):
            raise ConfigError(f"{where}.wave_unit: must be one of A, nm, um, got {unit!r}")
        return cls(file=str(path), wave_unit=unit, column=int(raw.get("column", 0)),
                   scale=_number(raw.get("scale", 1.0), f"{where}.scale", positive=True))


def _check_keys(raw: dict, known: set[str], where: str) -> None:
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown field (known: {', '.join(sorted(known))})")


PIXEL_GRIDS = ("linear", "log")


@dataclass(frozen=True)
class ArmConfig:
    """One spectrograph arm. Wavelengths in vacuum Angstrom.

    ``pixel_grid: linear`` (default; the convention of the MOONS consortium simulator and of
    DESI): pixels of constant width ``dispersion = central_wave / (resolution * sampling)``
    and a Gaussian line-spread function of constant FWHM ``central_wave / resolution``
    across the arm. ``pixel_grid: log`` (SDSS/BOSS): pixels of constant width in
    log-wavelength, ``d ln(lambda) = 1 / (resolution * sampling)``, and a Gaussian LSF of
    constant velocity width, FWHM ``lambda / resolution`` at every wavelength.
    """

    name: str
    wave_min: float
    wave_max: float
    resolution: float
    sampling: float
    read_noise: float  # e- rms per pixel per sub-exposure
    dark: float  # e- per pixel per hour
    throughput: CurveSpec
    qe: CurveSpec
    pixel_grid: str = "linear"

    @classmethod
    def from_yaml(cls, name: str, raw: dict, where: str) -> "ArmConfig":
        w = f"{where}.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{w}: expected a mapping")
        _check_keys(raw, {"wave_min", "wave_max", "resolution", "sampling", "read_noise", "dark", "throughput",
                          "qe", "pixel_grid"}, w)
        grid = raw.get("pixel_grid", "linear")
        if grid not in PIXEL_GRIDS:
            raise ConfigError(f"{w}.pixel_grid: must be one of {', '.join(PIXEL_GRIDS)}, got {grid!r}")
        wmin = _number(_require(raw, "wave_min", w), f"{w}.wave_min", positive=True)
        wmax = _number(_require(raw, "wave_max", w), f"{w}.wave_max", positive=True)
        if wmax <= wmin:
            raise ConfigError(f"{w}.wave_max: must exceed wave_min ({wmin})")
        return cls(
            name=name,
            wave_min=wmin,
            wave_max=wmax,
            resolution=_number(_require(raw, "resolution", w), f"{w}.resolution", positive=True),
            sampling=_number(raw.get("sampling", 2.7), f"{w}.sampling", positive=True),
            read_noise=_number(raw.get("read_noise", 0.0), f"{w}.read_noise", nonneg=True),
            dark=_number(raw.get("dark", 0.0), f"{w}.dark", nonneg=True),
            throughput=CurveSpec.from_yaml(raw.get("throughput", 1.0), f"{w}.throughput"),
            qe=CurveSpec.from_yaml(raw.get("qe", 1.0), f"{w}.qe"),
            pixel_grid=grid,
        )


@dataclass(frozen=True)
class ObservingConfig:
    """Default observing conditions; each can be overridden per simulation."""

    airmass: float = 1.2
    seeing: float = 0.8  # arcsec FWHM at 500 nm, zenith
    sub_exposure: float = 1800.0  # s
    sky_residual: float = 0.01  # fractional sky-subtraction error (1 sigma)


APERTURE_KINDS = ("fibre", "slit")
"""What an instrument's ``aperture.kind`` may be (see :class:`ApertureConfig`)."""


@dataclass(frozen=True)
class ApertureConfig:
    """The entrance aperture on the sky: a fibre or a slit. Lengths in arcsec.

    ``kind: fibre``: a circle of ``diameter``. ``kind: slit``: ``width`` across the
    dispersion, ``length`` along it, and ``extraction`` (default: the smaller of the length
    and 2 arcsec), the length along the slit summed into the 1-D spectrum; the sky in a
    spectrum is that of ``width x extraction`` arcsec2. The light of a point source that
    passes is computed in :mod:`mtopnet.instruments.aperture`.
    """

    kind: str = "fibre"
    diameter: float = 1.1
    width: float = 0.0
    length: float = 0.0
    extraction: float = 0.0

    @classmethod
    def from_yaml(cls, raw: Any, where: str = "aperture") -> "ApertureConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping with 'kind' (fibre or slit)")
        kind = raw.get("kind")
        if kind not in APERTURE_KINDS:
            raise ConfigError(f"{where}.kind: must be one of {', '.join(APERTURE_KINDS)}, got {kind!r}")
        if kind == "fibre":
            _check_keys(raw, {"kind", "diameter"}, where)
            return cls(kind="fibre", diameter=_number(_require(raw, "diameter", where), f"{where}.diameter",
                                                      positive=True))
        _check_keys(raw, {"kind", "width", "length", "extraction"}, where)
        width = _number(_require(raw, "width", where), f"{where}.width", positive=True)
        length = _number(_require(raw, "length", where), f"{where}.length", positive=True)
        if width > length:
            raise ConfigError(f"{where}.width: a slit is narrower than it is long, got width {width} > "
                              f"length {length} arcsec")
        extraction = _number(raw.get("extraction", min(length, 2.0)), f"{where}.extraction", positive=True)
        if extraction > length:
            raise ConfigError(f"{where}.extraction: cannot exceed the slit length ({length} arcsec), "
                              f"got {extraction}")
        return cls(kind="slit", diameter=0.0, width=width, length=length, extraction=extraction)


@dataclass(frozen=True)
class InstrumentConfig:
    """A whole instrument, as written in ``data/instruments/<name>.yaml``."""

    name: str
    description: str
    telescope_diameter: float  # m
    telescope_efficiency: CurveSpec
    fibre_diameter: float  # arcsec; 0 for a slit (see ``aperture``)
    sky_model: str
    site: str
    observing: ObservingConfig
    arms: tuple[ArmConfig, ...]
    telescope_obscuration: float = 0.0  # m, diameter of the central obstruction
    source_path: str = ""
    aperture: ApertureConfig = ApertureConfig()

    @classmethod
    def from_yaml(cls, raw: Any, source_path: str = "") -> "InstrumentConfig":
        if not isinstance(raw, dict):
            raise ConfigError("instrument: the file must hold a mapping")
        _check_keys(raw, {"name", "description", "site", "sky_model", "fibre_diameter", "aperture", "telescope",
                          "observing", "arms"}, "instrument")
        if "aperture" in raw and "fibre_diameter" in raw:
            raise ConfigError("fibre_diameter: give either fibre_diameter or aperture, not both")
        if "aperture" in raw:
            aperture = ApertureConfig.from_yaml(raw["aperture"])
        else:  # the short form of a fibre
            aperture = ApertureConfig(diameter=_number(raw.get("fibre_diameter", 1.1), "fibre_diameter",
                                                       positive=True))
        name = str(_require(raw, "name", "instrument"))
        tel = _require(raw, "telescope", "instrument")
        if not isinstance(tel, dict):
            raise ConfigError("telescope: expected a mapping with 'diameter'")
        _check_keys(tel, {"diameter", "obscuration", "efficiency"}, "telescope")
        diameter = _number(_require(tel, "diameter", "telescope"), "telescope.diameter", positive=True)
        obscuration = _number(tel.get("obscuration", 0.0), "telescope.obscuration", nonneg=True)
        if obscuration >= diameter:
            raise ConfigError(f"telescope.obscuration: must be smaller than the diameter ({diameter} m), "
                              f"got {obscuration}")
        arms_raw = _require(raw, "arms", "instrument")
        if not isinstance(arms_raw, dict) or not arms_raw:
            raise ConfigError("instrument.arms: expected a non-empty mapping of arm name -> arm")
        arms = tuple(ArmConfig.from_yaml(str(k), v, "arms") for k, v in arms_raw.items())
        obs_raw = raw.get("observing", {}) or {}
        if not isinstance(obs_raw, dict):
            raise ConfigError("observing: expected a mapping")
        obs_known = {f.name for f in fields(ObservingConfig)}
        for key in obs_raw:
            if key not in obs_known:
                raise ConfigError(f"observing.{key}: unknown field (known: {sorted(obs_known)})")
        obs = ObservingConfig(**{k: _number(v, f"observing.{k}", nonneg=True) for k, v in obs_raw.items()})
        if not 1.0 <= obs.airmass <= 3.0:
            raise ConfigError(f"observing.airmass: must be within 1-3, got {obs.airmass}")
        sky = raw.get("sky_model", "skycalc-paranal")
        if sky not in SKY_MODELS:
            raise ConfigError(f"sky_model: unknown sky model {sky!r} (known: {', '.join(SKY_MODELS)})")
        return cls(
            name=name,
            description=str(raw.get("description", "")),
            telescope_diameter=diameter,
            telescope_efficiency=CurveSpec.from_yaml(tel.get("efficiency", 1.0), "telescope.efficiency"),
            fibre_diameter=aperture.diameter,
            sky_model=sky,
            site=str(raw.get("site", "")),
            observing=obs,
            arms=arms,
            telescope_obscuration=obscuration,
            source_path=source_path,
            aperture=aperture,
        )


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning I/O and syntax problems into one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


T = TypeVar("T")


def _convert(value: Any, typ: Any, where: str) -> Any:
    """``value`` as an instance of annotation ``typ`` (see the module docstring); ConfigError otherwise."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if typ is Any:
        return value
    if dataclasses.is_dataclass(typ):
        return from_mapping(typ, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(value, options[0], where)
        for option in options:
            try:
                return _convert(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is none of {', '.join(getattr(o, '__name__', str(o)) for o in options)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple or typ is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args, strict=False)))
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if typ in (int, float):
        number = _number(value, where)
        if typ is int:
            if number != int(number):
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            return int(number)
        return number
    if origin is dict or typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_mapping(cls: type[T], raw: Any, where: str) -> T:
    """Instantiate frozen dataclass ``cls`` from mapping ``raw``; ``where`` prefixes error messages.

    Every key must be a field; values are converted to the fields' annotations (nested
    dataclasses recursively); missing fields take their defaults. ``TypeError``/``ValueError``
    raised by ``__post_init__`` become ConfigError naming ``where``.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(f"{name}: unknown field (known: {', '.join(sorted(known))})")
        kwargs[key] = _convert(value, hints[key], name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None


def to_mapping(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict of builtins (tuples become lists), safe for YAML and torch.save."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(obj)


def load_config(cls: type[T], path: str | Path, where: str = "") -> T:
    """``cls`` from the YAML file ``path`` (an empty file gives the defaults); errors name the
    file and the field (``bad.yaml: redshift.z_max: ...``)."""
    raw = load_yaml(path)
    try:
        return from_mapping(cls, raw or {}, where)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|sec|min|m|h|hr)?\s*$")


def parse_duration(text: str | float) -> float:
    """'8h', '30min', '1800s' or a number of seconds -> seconds (> 0)."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise UserError(f"exposure: cannot read {text!r}; use e.g. 8h, 90min or 1800s")
        seconds = float(match.group(1)) * {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60,
                                           "h": 3600, "hr": 3600}[match.group(2)]
    if not seconds > 0:
        raise UserError(f"exposure: must be positive, got {text!r}")
    return seconds


@dataclass(frozen=True)
class Exposure:
    """Total exposure as ``n_sub`` sub-exposures of ``sub_exposure`` seconds each."""

    total: float  # s
    sub_exposure: float = 1800.0  # s
    airmass: float = 1.2
    seeing: float = 0.8
    sky_residual: float = 0.01

    def __post_init__(self) -> None:
        if not self.total > 0:
            raise UserError(f"exposure: must be positive, got {self.total}")
        if not self.sub_exposure > 0:
            raise UserError(f"sub-exposure: must be positive, got {self.sub_exposure}")
        if not 1.0 <= self.airmass <= 2.0:
            raise UserError(f"airmass: the sky model covers 1.0-2.0, got {self.airmass}")
        if not 0.2 <= self.seeing <= 3.0:
            raise UserError(f"seeing: must be within 0.2-3 arcsec, got {self.seeing}")
        if not 0 <= self.sky_residual < 1:
            raise UserError(f"sky residual: must be within [0, 1), got {self.sky_residual}")

    @property
    def n_sub(self) -> int:
        """Number of sub-exposures (at least one; the last may be shorter in reality)."""
        return max(1, int(round(self.total / self.sub_exposure)))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


__all__ = ["from_mapping", "to_mapping", "load_config", "SKY_MODELS", "PIXEL_GRIDS", "APERTURE_KINDS",
           "ApertureConfig", "ConfigError", "UserError",
           "CurveSpec", "ArmConfig", "ObservingConfig", "InstrumentConfig", "Exposure", "load_yaml", "parse_duration"]
