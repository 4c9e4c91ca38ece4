"""The one configuration loader (mtopnet.config.from_mapping / load_config)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mtopnet.config import ConfigError, UserError, from_mapping, load_config, to_mapping


@dataclass(frozen=True)
class Inner:
    width: float = 1.0
    kind: Literal["box", "gauss"] = "box"


@dataclass(frozen=True)
class Outer:
    n: int = 3
    name: str | None = None
    flags: tuple[bool, ...] = ()
    pair: tuple[int, float] = (1, 2.0)
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n: must be >= 0")


def test_values_are_converted_to_the_resolved_annotations():
    cfg = from_mapping(Outer, {"n": 4.0, "name": None, "flags": [True, False], "pair": [2, 3],
                               "inner": {"width": "2.5", "kind": "gauss"}}, "outer")
    assert cfg == Outer(n=4, name=None, flags=(True, False), pair=(2, 3.0), inner=Inner(2.5, "gauss"))
    assert isinstance(cfg.n, int) and isinstance(cfg.pair[1], float)
    assert from_mapping(Outer, to_mapping(cfg), "outer") == cfg  # round trip


@pytest.mark.parametrize(("raw", "message"), [
    ({"m": 1}, "outer.m: unknown field"),
    ({"n": 2.5}, "outer.n: expected an integer"),
    ({"name": 3}, "outer.name: expected a string"),
    ({"flags": [1]}, r"outer.flags\[0\]: expected true or false"),
    ({"pair": [1, 2, 3]}, "outer.pair: expected 2 values"),
    ({"inner": {"kind": "tophat"}}, "outer.inner.kind: must be one of 'box', 'gauss'"),
    ({"inner": {"width": "wide"}}, "outer.inner.width: expected a number"),
    ({"n": -1}, "outer: n: must be >= 0"),
])
def test_errors_name_the_field(raw, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(Outer, raw, "outer")


def test_load_config_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner: {width: wide}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: inner.width: expected a number"):
        load_config(Outer, path)
    path.write_text("")
    assert load_config(Outer, path) == Outer()
    assert issubclass(ConfigError, UserError)  # the command line reports both as one line, exit 2
