"""Frozen dataclasses from YAML/checkpoint mappings, validated with field names in errors.

``from_mapping(ModelConfig, {"latent": 192}, "model")`` checks every key against the
dataclass's fields and converts each value to the field's annotated type (int, float, bool,
str, tuples of int/float, optional variants), raising :class:`~mtopnet.config.ConfigError`
naming ``model.latent`` if a value is missing, unknown or of the wrong type.
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .config import ConfigError
from .config import _number as parse_number

T = TypeVar("T")


def _convert(value: Any, typ: str, where: str) -> Any:
    typ = typ.replace(" ", "")
    if typ.endswith("|None") or typ.startswith("None|"):
        if value is None:
            return None
        typ = typ.replace("|None", "").replace("None|", "")
    if typ.startswith("tuple["):
        inner = typ[len("tuple["):-1].split(",")[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if typ == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if typ == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if typ in ("int", "float"):
        number = parse_number(value, where)
        if typ == "int":
            if number != int(number):
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            return int(number)
        return number
    return value  # nested dataclasses are handled by the caller


def from_mapping(cls: type[T], raw: Any, where: str, nested: dict[str, type] | None = None) -> T:
    """Instantiate dataclass ``cls`` from mapping ``raw``; ``where`` prefixes error messages.

    ``nested`` maps field names to dataclass types built recursively. Missing fields take
    their defaults; ``ValueError`` raised by ``__post_init__`` is re-raised as ConfigError.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    nested = nested or {}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown field (known: {', '.join(sorted(known))})")
        if key in nested:
            kwargs[key] = from_mapping(nested[key], value, f"{where}.{key}")
        else:
            kwargs[key] = _convert(value, str(known[key].type), f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_mapping(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict of builtins (tuples become lists), safe for YAML and torch.save."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(obj)


__all__ = ["from_mapping", "to_mapping"]
