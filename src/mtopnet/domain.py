"""Is a spectrum like the model's training data? The domain check of ``mtopnet predict``.

A batch is out of the model's domain (ZWarn.OUT_OF_DOMAIN, QOP <= 2) when its arms cover other
wavelengths than the training arms, sample them much more finely or coarsely, or have another
resolution (:func:`domain_problem`). A spectrum is, whatever its arms' extent, when it has
valid data (unmasked, ivar > 0) on less than :data:`MIN_UNMASKED_COVERAGE` of the wavelengths
the model was trained on (:func:`sparse_coverage`): masks count, not only the arms' range.
:class:`DomainWarning` says so, once per arm layout or, with a :class:`DomainReport`, once per
run with the count.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from .columns import ZWarn
from .store import SpectraBatch
from .trained import TrainedModel


class DomainWarning(UserWarning):
    """Spectra unlike the model's training data (their ZWARN has OUT_OF_DOMAIN); the message
    names the model's expected arms, coverage and resolution."""


@dataclasses.dataclass
class DomainReport:
    """Out-of-domain spectra of one run, collected for one :class:`DomainWarning` at its end.

    n_spectra: spectra that got OUT_OF_DOMAIN; n_layouts: distinct arm layouts among them;
    first: the first such layout's description and problem (None if none); layouts: a digest
    of each layout (to count distinct ones over the shards of a run).
    """

    n_spectra: int = 0
    n_layouts: int = 0
    first: str | None = None
    layouts: list[str] = dataclasses.field(default_factory=list)

    def merge(self, other: "DomainReport") -> None:
        """Add another part's report (a shard's): layouts met in both count once."""
        self.n_spectra += other.n_spectra
        self.layouts += [k for k in other.layouts if k not in self.layouts]
        self.n_layouts = len(self.layouts)
        self.first = self.first or other.first

    def warn(self, model: TrainedModel) -> None:
        """One DomainWarning for the whole run (nothing if no spectrum was out of the domain)."""
        if not self.n_spectra:
            return
        layouts = f" in {self.n_layouts} arm layouts; the first," if self.n_layouts > 1 else ""
        warnings.warn(DomainWarning(
            f"{self.n_spectra} spectra{layouts} {self.first}; the model expects {expected_domain(model)}; "
            f"ZWARN bit OUT_OF_DOMAIN ({int(ZWarn.OUT_OF_DOMAIN)}) set"), stacklevel=2)


def expected_domain(model: TrainedModel) -> str:
    """What the model was trained on, in words: instrument, arms (range, R) and grid range."""
    info = model.instrument or {}
    arms = []
    for tarm in info.get("arms", []):
        if tarm.get("wave_min") is None:
            continue
        res = f", R {tarm['resolution']:.0f}" if tarm.get("resolution") else ""
        arms.append(f"{tarm['name']} {tarm['wave_min']:.0f}-{tarm['wave_max']:.0f} A{res}")
    pre = model.preprocessor.config
    name = Path(str(info["name"])).stem if info.get("name") else "its training data"
    return (f"{name} ({'; '.join(arms) or 'arms unknown'}), read on {pre.wave_min:.0f}-{pre.wave_max:.0f} A")


def domain_problem(model: TrainedModel, batch: SpectraBatch, arm_resolution: dict[str, float] | None = None,
                   tolerance: float = 0.05) -> str | None:
    """Why ``batch``'s arms differ from what the model was trained on (None if they match).

    Out of domain if the covered grid pixels differ from the training coverage by more than
    ``tolerance`` (of the training coverage), if an arm's log-wavelength sampling differs from
    the overlapping training arm's by more than a factor 2, or if a given resolution
    (``arm_resolution``: arm name -> R) differs from the overlapping training arm's by > 25%.
    """
    return layout_problem(model, batch, arm_resolution, tolerance)[0]


def layout_problem(model: TrainedModel, batch: SpectraBatch, arm_resolution: dict[str, float] | None = None,
                   tolerance: float = 0.05) -> tuple[str | None, bool]:
    """:func:`domain_problem`'s reason (None if the arms match), and whether the arms are another
    instrument's altogether: their wavelengths miss more than half of the training coverage
    (1 - :data:`MIN_UNMASKED_COVERAGE`) or lie more than half outside it, or an arm's sampling
    or resolution differs as above. Such spectra get QOP 1: no validation spectrum is like them
    (100 simulated SDSS BOSS spectra at z 0.05-1.0 through the MOONS model: 38 right, none of
    the 57 below its z range; docs/quality.md), while a MOONS spectrum with an arm missing keeps
    QOP <= 2."""
    waves = {a: np.asarray(d["wave"], dtype=np.float64) for a, d in batch.arms.items()}
    cov = model.preprocessor.coverage(waves)
    train = model.coverage
    n_train = max(int(train.sum()), 1)
    missing, extra = (train & ~cov).sum() / n_train, (cov & ~train).sum() / n_train
    foreign = max(missing, extra) > 1 - MIN_UNMASKED_COVERAGE
    if missing > tolerance:
        return f"covers {100 * (1 - missing):.0f}% of the model's wavelengths", foreign
    if extra > tolerance:
        return f"{100 * extra:.0f}% of its coverage is where the model saw no data", foreign
    for name, wave in waves.items():
        w = wave[np.isfinite(wave)]
        if len(w) < 2:
            continue
        dll = float(np.median(np.diff(np.log(w))))
        for tarm in model.instrument.get("arms", []):
            if tarm.get("wave_min") is None or tarm["wave_max"] < w[0] or tarm["wave_min"] > w[-1]:
                continue
            if tarm.get("dloglam") and not 0.5 <= dll / tarm["dloglam"] <= 2.0:
                return (f"arm {name}'s pixels are {dll / tarm['dloglam']:.2f} x the width of the training "
                        f"arm {tarm['name']}'s"), True
            res = (arm_resolution or {}).get(name)
            if res and tarm.get("resolution") and abs(res / tarm["resolution"] - 1) > 0.25:
                return (f"arm {name} has R {res:.0f}, the training arm {tarm['name']} R "
                        f"{tarm['resolution']:.0f}"), True
    return None, False


MIN_UNMASKED_COVERAGE = 0.5
"""A spectrum with valid data on less than this fraction of the model's training coverage is
out of the domain. The MOONS held-out spectra have 0.95 (the simulator's sky masks, 5%)."""


def unmasked_coverage(model: TrainedModel, ivar: np.ndarray) -> np.ndarray:
    """(N,) fraction of the grid pixels the training arms cover that hold valid data.

    ivar: (N, n_pix) on the model's grid, 0 where masked or empty (``NetInputs.ivar``).
    """
    cover = np.asarray(model.coverage, dtype=bool)
    return (np.asarray(ivar)[:, cover] > 0).sum(axis=1) / max(int(cover.sum()), 1)


def sparse_coverage(model: TrainedModel, ivar: np.ndarray) -> np.ndarray:
    """(N,) bool: valid data on < :data:`MIN_UNMASKED_COVERAGE` of the training coverage, but
    some (an all-masked spectrum is NODATA instead)."""
    frac = unmasked_coverage(model, ivar)
    return (frac < MIN_UNMASKED_COVERAGE) & (frac > 0)


def sparse_description(model: TrainedModel, ivar: np.ndarray, ids: np.ndarray) -> str:
    """The spectra of :func:`sparse_coverage` in words (the first's id and coverage), to follow
    "N spectra"."""
    sparse = sparse_coverage(model, ivar)
    first = int(np.argmax(sparse))
    frac = unmasked_coverage(model, ivar)[first]
    return (f"with valid data on less than {100 * MIN_UNMASKED_COVERAGE:.0f}% of the model's wavelengths "
            f"(masked or empty pixels; the first, id {np.asarray(ids)[first]}, on {100 * frac:.0f}%) are out of "
            f"the model's domain")


def domain_check(model: TrainedModel, batch: SpectraBatch, arm_resolution: dict[str, float] | None = None,
                 tolerance: float = 0.05) -> bool:
    """True if ``batch``'s arms match what the model was trained on (see :func:`domain_problem`)."""
    return domain_problem(model, batch, arm_resolution, tolerance) is None


def describe_arms(batch: SpectraBatch) -> str:
    """The arms of ``batch`` in words: name and wavelength range each."""
    parts = []
    for name, arm in batch.arms.items():
        w = np.asarray(arm["wave"], dtype=np.float64)
        w = w[np.isfinite(w)]
        parts.append(f"{name} {w[0]:.0f}-{w[-1]:.0f} A" if len(w) else f"{name} (empty)")
    return ", ".join(parts)


__all__ = ["DomainWarning", "DomainReport", "expected_domain", "domain_problem", "layout_problem", "domain_check",
           "describe_arms", "MIN_UNMASKED_COVERAGE", "unmasked_coverage", "sparse_coverage", "sparse_description"]
