"""Simulate a spectrum store: galaxy population x instrument -> HDF5, parallel and resumable.

The run is cut into shards of ``shard_size`` objects (``--shard-size``, default
``SHARD_SIZE``). Shard ``i`` draws its galaxies and noise from ``SeedSequence([seed, i])``
alone, so the output does not depend on the number of workers or where they run, and a
shard is written (atomically) to ``OUT.shards/shard_NNNNN.h5`` as soon as it is done. The
shards run as tasks of :func:`mtopnet.cluster.run_tasks`: in this process (``--workers 1``),
on a Dask LocalCluster (``--workers N``) or on a Dask cluster (``--scheduler ADDRESS``). A
run killed at any moment loses at most the shards in flight: a re-run with the same
arguments skips the shards already there. When all are done, ``OUT`` is written as a
virtual store over them (:func:`mtopnet.store.write_virtual_store`: the labels copied, the
spectra not), and ``OUT.shards/`` stays beside it as its data; ``--consolidate`` instead
copies everything into one self-contained ``OUT`` and removes the shard folder. Same seed,
arguments and shard size, same arrays (and, given the same output name, the same bytes).

Two populations (``--population``): ``survey`` (docs/galaxies.md, a survey-like mix, for
evaluation) and ``training`` (an even-coverage prior, ``galaxies.population.TrainingPrior``);
and two kinds of observation (``--nuisance``): ``fixed`` (the exposure's conditions for
every object) and ``randomised`` (``instruments.nuisance``). The default, survey + fixed,
writes exactly what it always wrote; the other modes add the labels listed in
``mtopnet.store`` (quiescent, sfh_family, max_line_flux, line_snr, nu_*).

Over 500 lines: the spec, the physics of one shard (population, observation, truth labels)
and the run over shards with its command-line options are one workflow; the parts that
stand alone live in ``galaxies``, ``instruments``, ``store`` and ``cluster``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from . import __version__
from .catalogue import OutputLock
from .cluster import Task, check_workers, run_tasks
from .config import Exposure, UserError, parse_duration
from .galaxies import (
    GalaxyModel,
    GalaxyParams,
    TrainingPrior,
    filter_range,
    line_multipliers,
    load_grids,
    sample_params,
    sample_training_params,
)
from .galaxies.model import C_KMS, FLUX_UNIT
from .galaxies.sps import DLOGLAM_REST
from .instruments import (
    Instrument,
    light_fraction,
    load_instrument,
    observe_arm,
    observe_arm_conditions,
    source_sigma,
)
from .instruments.nuisance import GROUP_SIZE, NUISANCES, Conditions, draw_conditions, nominal_conditions
from .logs import progress_bar, progress_enabled
from .store import (
    COMPRESSIONS,
    SpectraBatch,
    check_writable,
    merge_stores,
    remove_partial,
    store_info,
    write_error,
    write_store,
    write_virtual_store,
)

log = logging.getLogger(__name__)

SHARD_SIZE = 500
"""Default objects per shard (``--shard-size``): a task of ~10 s to a minute on one core."""
SUB_BATCH = 128
DEFAULT_BAND = "twomass-H"
"""Selection band of the magnitude range; its magnitude is stored as ``labels/hmag``. Any
other band's magnitude is stored as ``labels/mag`` (the band is in the provenance)."""
HMAG_LIMITS = (14.0, 30.0)
Z_LIMITS = (0.0, 4.0)
LYA = 1215.67
POPULATIONS = ("survey", "training")
NUISANCE_MODES = ("fixed", "randomised")
SNR_LINES = (3727.09, 3729.87, 3869.86, 4102.89, 4341.69, 4862.68, 4960.29, 5008.24, 6549.86, 6564.61,
             6585.27, 6718.29, 6732.68)
"""Vacuum rest wavelengths (A) of the lines whose S/N gives ``labels/line_snr``: [OII],
[NeIII], Hdelta, Hgamma, Hbeta, [OIII], [NII], Halpha, [SII]."""
LINE_DETECTED_SNR = 3.0
"""A spectrum "has a detectable emission line" when labels/line_snr >= this."""


@dataclass(frozen=True)
class SimulationSpec:
    """Everything that determines a simulated store's content."""

    instrument: str
    exposure: Exposure
    n: int
    seed: int
    hmag_range: tuple[float, float] = (20.0, 25.5)
    z_range: tuple[float, float] = (0.6, 3.0)
    band: str = DEFAULT_BAND
    population: str = "survey"
    prior: TrainingPrior = TrainingPrior()
    nuisance: str = "fixed"
    nuisance_off: tuple[str, ...] = ()
    shard_size: int = SHARD_SIZE

    @property
    def extended(self) -> bool:
        """True for any mode other than the original survey + fixed (which adds no labels)."""
        return self.population != "survey" or self.nuisance != "fixed"

    @property
    def mag_label(self) -> str:
        """Name of the selection magnitude's label: ``hmag`` for 2MASS H, else ``mag``."""
        return "hmag" if self.band == DEFAULT_BAND else "mag"

    def validate(self, inst: Instrument) -> None:
        if self.population not in POPULATIONS:
            raise UserError(f"--population: one of {', '.join(POPULATIONS)}, got {self.population!r}")
        if self.nuisance not in NUISANCE_MODES:
            raise UserError(f"--nuisance: one of {', '.join(NUISANCE_MODES)}, got {self.nuisance!r}")
        unknown = sorted(set(self.nuisance_off) - set(NUISANCES))
        if unknown:
            raise UserError(f"--nuisance-off: unknown {', '.join(unknown)} (known: {', '.join(NUISANCES)})")
        if self.nuisance_off and self.nuisance != "randomised":
            raise UserError("--nuisance-off: only with --nuisance randomised")
        if self.population == "training":
            bad = self.prior.validate()
            if bad:
                raise UserError(bad[0])
        elif self.prior != TrainingPrior():
            raise UserError("--quiescent-fraction, --logm-range, --line-scale, --agn-fraction: "
                            "only with --population training")
        if self.n <= 0:
            raise UserError(f"--n: must be positive, got {self.n}")
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, (int, np.integer)) \
                or self.shard_size < 1:
            raise UserError(f"--shard-size: must be a positive integer, got {self.shard_size!r}")
        if self.seed < 0:
            raise UserError(f"--seed: must be >= 0, got {self.seed}")
        lo, hi = self.hmag_range
        if not (HMAG_LIMITS[0] <= lo < hi <= HMAG_LIMITS[1]):
            raise UserError(f"--hmag-range: need {HMAG_LIMITS[0]} <= LO < HI <= {HMAG_LIMITS[1]}, got {lo} {hi}")
        try:
            filter_range(self.band)
        except (ValueError, OSError, RuntimeError) as exc:
            raise UserError(f"--band: {self.band!r} is not a speclite filter name (e.g. sdss2010-r, "
                            f"twomass-H, decam2014-i): {str(exc).splitlines()[0]}") from None
        zlo, zhi = self.z_range
        if not (Z_LIMITS[0] <= zlo < zhi <= Z_LIMITS[1]):
            raise UserError(f"--z-range: the population priors cover {Z_LIMITS[0]}-{Z_LIMITS[1]}; "
                            f"need LO < HI inside it, got {zlo} {zhi}")
        for arm in inst.arms:  # sky coverage, curve files: fail now, not inside a worker
            arm.response(self.exposure.airmass, self.exposure.seeing, self.exposure.total / self.exposure.n_sub)
        wmin = inst.wave_range[0]
        if LYA * (1 + zhi) > wmin:
            raise UserError(f"--z-range: at z={zhi} Lyman-alpha falls at {LYA * (1 + zhi):.0f} A, inside "
                            f"{inst.name} (from {wmin:.0f} A); the simulator has no IGM absorption")

    def provenance(self) -> dict:
        source = load_instrument(self.instrument).config.source_path
        prov = {"instrument": self.instrument,
                "instrument_sha256": hashlib.sha256(Path(source).read_bytes()).hexdigest(),
                "exposure": self.exposure.as_dict(), "n": self.n,
                "seed": self.seed, "hmag_range": list(self.hmag_range), "z_range": list(self.z_range),
                "band": self.band, "shard_size": self.shard_size, "mtopnet_version": __version__}
        if self.extended:  # absent for survey + fixed, whose provenance is unchanged
            prov.update(population=self.population, nuisance=self.nuisance, nuisance_off=sorted(self.nuisance_off))
            if self.population == "training":
                prov["training_prior"] = self.prior.as_dict()
        return prov

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.provenance(), sort_keys=True).encode()).hexdigest()[:16]


def rest_range(inst: Instrument, z_range: tuple[float, float], band: str) -> tuple[float, float]:
    """Rest-frame wavelength span (A) that the instrument and the magnitude band need."""
    lo = min(inst.wave_range[0], filter_range(band)[0])
    hi = max(inst.wave_range[1], filter_range(band)[1])
    margin = 1.02
    return lo / (1 + z_range[1]) / margin, hi / (1 + z_range[0]) * margin


def galaxy_model(inst: Instrument, z_range: tuple[float, float], band: str) -> GalaxyModel:
    lo, hi = rest_range(inst, z_range, band)
    # Round the span outwards so that nearby ranges share one cached grid.
    return GalaxyModel(load_grids(float(np.floor(lo / 50) * 50), float(np.ceil(hi / 50) * 50), DLOGLAM_REST))


def draw_population(model: GalaxyModel, n: int, rng: np.random.Generator, spec: SimulationSpec):
    """Draw galaxies from the priors until ``n`` fall inside the magnitude range.

    Returns (params, rest-frame model, magnitudes) of the accepted galaxies, in draw order.
    """
    kept_p, kept_r, kept_h, have, tries = [], [], [], 0, 0
    lo, hi = spec.hmag_range
    while have < n:
        if spec.population == "training":
            p = sample_training_params(SUB_BATCH * 2, rng, spec.z_range, spec.prior)
        else:
            p = sample_params(SUB_BATCH * 2, rng, spec.z_range)
        r = model.rest_frame(p)
        mult = line_multipliers(p, model.grids.line_wave, rng)
        if mult is not None:
            r.line_lum = r.line_lum * mult
        h = model.ab_magnitude(r, p.z, spec.band)
        ok = np.nonzero((h >= lo) & (h <= hi))[0][: n - have]
        tries += len(p)
        if ok.size:
            kept_p.append(p.subset(ok))
            kept_r.append(r.__class__(r.cont[ok], r.line_lum[ok], r.logmstar[ok], r.logsfr[ok], r.logsfr_inst[ok]))
            kept_h.append(h[ok])
            have += ok.size
        if tries > 200 * n + 20000 and have < 0.01 * tries:
            raise UserError(f"--hmag-range {lo} {hi}: fewer than 1% of the population's galaxies at "
                            f"z {spec.z_range[0]}-{spec.z_range[1]} fall in it; widen it")
    cat = lambda xs: np.concatenate(xs)  # noqa: E731
    params = GalaxyParams.concatenate(kept_p)
    rest = kept_r[0].__class__(*(cat([getattr(r, f) for r in kept_r]) for f in
                                 ("cont", "line_lum", "logmstar", "logsfr", "logsfr_inst")))
    return params, rest, cat(kept_h)


def observe_galaxies(inst: Instrument, model: GalaxyModel, params: GalaxyParams, rest,
                     exposure: Exposure, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Per-arm flux/ivar/mask of galaxies (rows in the order given)."""
    arms: dict[str, dict[str, list]] = {a.name: {"flux": [], "ivar": [], "mask": []} for a in inst.arms}
    src_sigma = source_sigma(params.r_e)
    for start in range(0, len(params), SUB_BATCH):
        sl = slice(start, start + SUB_BATCH)
        p = params.subset(sl)
        r = rest.__class__(rest.cont[sl], rest.line_lum[sl], rest.logmstar[sl], rest.logsfr[sl], rest.logsfr_inst[sl])
        for arm in inst.arms:
            fine = model.observed(r, p, arm.fine_wave, arm.fine_edges)
            spec = observe_arm(arm, fine, exposure, rng, src_sigma[sl])
            for key in ("flux", "ivar", "mask"):
                arms[arm.name][key].append(getattr(spec, key))
    return {a: {"wave": inst.arm(a).wave, **{k: np.concatenate(v) for k, v in d.items()}}
            for a, d in arms.items()}


def _sub_rest(rest, sl):
    return rest.__class__(rest.cont[sl], rest.line_lum[sl], rest.logmstar[sl], rest.logsfr[sl], rest.logsfr_inst[sl])


def observe_galaxies_conditions(inst: Instrument, model: GalaxyModel, params: GalaxyParams, rest,
                                cond: Conditions, sub_exposure: float, rng: np.random.Generator
                                ) -> dict[str, dict[str, np.ndarray]]:
    """Per-arm spectra of galaxies, each observed under its own conditions.

    Objects are observed in groups of at most GROUP_SIZE that share an airmass and an LSF
    width (``cond`` is drawn so); returns arm -> wave, flux, ivar, mask, gain, sky_error
    (see ``instruments.noise.ArmSpectra``).
    """
    keys = ("flux", "ivar", "mask", "gain", "sky_error")
    arms: dict[str, dict[str, list]] = {a.name: {k: [] for k in keys} for a in inst.arms}
    for start in range(0, len(params), SUB_BATCH):
        sl = slice(start, start + SUB_BATCH)
        p, r = params.subset(sl), _sub_rest(rest, sl)
        stop = min(start + SUB_BATCH, len(params))
        # groups: runs of equal (airmass, lsf_scale), at most GROUP_SIZE long
        bounds = [0] + [i for i in range(1, stop - start) if (start + i) % GROUP_SIZE == 0
                        or cond.airmass[start + i] != cond.airmass[start + i - 1]
                        or cond.lsf_scale[start + i] != cond.lsf_scale[start + i - 1]] + [stop - start]
        for k, arm in enumerate(inst.arms):
            fine = model.observed(r, p, arm.fine_wave, arm.fine_edges)
            for g0, g1 in zip(bounds[:-1], bounds[1:], strict=True):
                spec = observe_arm_conditions(arm, k, fine[g0:g1], sub_exposure,
                                              cond.subset(slice(start + g0, start + g1)), rng)
                for key in keys:
                    arms[arm.name][key].append(getattr(spec, key))
    return {a: {"wave": inst.arm(a).wave, **{k: np.concatenate(v) for k, v in d.items()}}
            for a, d in arms.items()}


def line_snr(inst: Instrument, model: GalaxyModel, params: GalaxyParams, rest,
             arms: dict[str, dict[str, np.ndarray]], cond: Conditions) -> np.ndarray:
    """(N,) integrated S/N of each object's strongest emission line in its noisy spectrum.

    For each line of SNR_LINES inside an arm: F / sigma_F of the matched-filter flux
    estimate ``F_hat = sum_i d_i phi_i ivar_i / A``, ``A = sum_i phi_i^2 ivar_i``, with F the
    line's flux as it arrives in the calibrated spectrum (top-of-atmosphere flux times the
    arm's ``gain`` at the line) and phi the line's profile per pixel (Gaussian of the
    velocity dispersion and the LSF, 1/A). sigma_F^2 = [sum_i phi_i^2 ivar_i^2 (1/ivar_i -
    e_i^2) + (sum_i e_i phi_i ivar_i)^2] / A^2 counts the sky-subtraction error e (one scale
    error per arm, so correlated across the line) coherently; without it sigma_F^2 = 1/A.
    Masked pixels (ivar 0) add nothing. The maximum over lines and arms; 0 without lines.
    Checked against the scatter of F_hat over noise realisations (within ~10%).
    """
    g = model.grids
    idx = np.array([int(np.argmin(np.abs(g.line_wave - w))) for w in SNR_LINES])
    flux = model.line_fluxes(rest, params.z)[:, idx]  # (N, M) 1e-17 erg/s/cm2
    centre = g.line_wave[idx][None, :] * (1 + params.z)[:, None]  # (N, M) A
    best = np.zeros(len(params))
    rows = np.arange(len(params))[:, None, None]
    for arm in inst.arms:
        d = arms[arm.name]
        wave, ivar, gain = arm.wave, d["ivar"].astype(np.float64), d["gain"].astype(np.float64)
        err = d["sky_error"].astype(np.float64)
        disp = float(np.median(np.diff(wave)))  # A per pixel (window size only)
        lsf = float(np.median(np.atleast_1d(arm.lsf_sigma))) * cond.lsf_scale
        sigma = np.hypot(centre * (params.sigma_v / C_KMS)[:, None], lsf[:, None])  # (N, M) A
        half = int(np.ceil(5 * sigma.max() / disp)) + 1
        c = np.searchsorted(wave, centre)
        pix = np.clip(c[:, :, None] + np.arange(-half, half + 1)[None, None, :], 0, len(wave) - 1)  # (N, M, W)
        inside = (centre > wave[0]) & (centre < wave[-1])
        phi = np.exp(-0.5 * ((wave[pix] - centre[:, :, None]) / sigma[:, :, None]) ** 2) \
            / (np.sqrt(2 * np.pi) * sigma[:, :, None])
        iv, e = ivar[rows, pix], err[rows, pix]
        a = (phi ** 2 * iv).sum(axis=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            independent = np.where(iv > 0, np.clip(1.0 / iv - e ** 2, 0.0, None), 0.0)
            var = ((phi * iv) ** 2 * independent).sum(axis=2) + ((e * phi * iv).sum(axis=2)) ** 2
            f_line = flux * gain[np.arange(len(params))[:, None], np.clip(c, 0, len(wave) - 1)]
            snr = np.where(var > 0, f_line * a / np.sqrt(var), 0.0)
        best = np.maximum(best, np.where(inside, snr, 0.0).max(axis=1))
    return best


def labels_for(model: GalaxyModel, params: GalaxyParams, rest, hmag: np.ndarray,
               mag_label: str = "hmag") -> dict[str, np.ndarray]:
    """Truth labels; the selection magnitude ``hmag`` (AB) is stored under ``mag_label``."""
    g = model.grids
    fluxes = model.line_fluxes(rest, params.z)
    ha = int(np.argmin(np.abs(g.line_wave - 6564.61)))
    oiii = int(np.argmin(np.abs(g.line_wave - 5008.24)))
    return {
        "z": params.z, "logmstar": rest.logmstar, "logsfr": rest.logsfr, "logsfr_inst": rest.logsfr_inst,
        mag_label: hmag, "halpha_flux": fluxes[:, ha], "oiii_flux": fluxes[:, oiii],
        "type": params.quiescent.astype(np.int8), "av": params.av, "eta": params.eta,
        "log_zsol": params.log_zsol, "log_u": params.log_u, "sigma_v": params.sigma_v, "r_e": params.r_e,
    }


def extra_labels(inst: Instrument, model: GalaxyModel, params: GalaxyParams, rest,
                 arms: dict[str, dict[str, np.ndarray]], cond: Conditions, sub_exposure: float
                 ) -> dict[str, np.ndarray]:
    """Labels of the training / randomised modes (documented in mtopnet.store)."""
    g = model.grids
    fluxes = model.line_fluxes(rest, params.z)
    ha = int(np.argmin(np.abs(g.line_wave - 6564.61)))
    oiii = int(np.argmin(np.abs(g.line_wave - 5008.24)))
    family = params.sfh_family if params.sfh_family is not None else np.zeros(len(params), np.int8)
    agn = params.agn if params.agn is not None else np.zeros(len(params), bool)
    scale = params.line_scale if params.line_scale is not None else np.ones(len(params))
    out = {"quiescent": params.quiescent.astype(bool), "sfh_family": family.astype(np.int8),
           "agn": agn.astype(bool), "line_scale": scale,
           "max_line_flux": np.maximum(fluxes[:, ha], fluxes[:, oiii]) * FLUX_UNIT,
           "line_snr": line_snr(inst, model, params, rest, arms, cond)}
    out.update(cond.labels(inst.arm_names, sub_exposure))
    return out


def simulate_shard(spec: SimulationSpec, shard: int) -> SpectraBatch:
    """Objects [shard * spec.shard_size, ...) of the run, from their own seed.

    BLAS runs single-threaded here: on some CPUs (OpenBLAS's Haswell kernels, for one) a matrix
    product's float32 result depends on the number of threads, so the same shard made in this
    process and on a single-threaded Dask worker would differ in the last bits.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _simulate_shard(spec, shard)


def _simulate_shard(spec: SimulationSpec, shard: int) -> SpectraBatch:
    inst = load_instrument(spec.instrument)
    model = galaxy_model(inst, spec.z_range, spec.band)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, shard]))
    n = min(spec.shard_size, spec.n - shard * spec.shard_size)
    params, rest, hmag = draw_population(model, n, rng, spec)
    labels = labels_for(model, params, rest, hmag, spec.mag_label)
    if spec.extended:
        if spec.nuisance == "randomised":
            sub = spec.exposure.sub_exposure
            cond = draw_conditions(n, len(inst.arms), spec.exposure, params.r_e, rng, spec.nuisance_off)
        else:
            sub = spec.exposure.total / spec.exposure.n_sub
            cond = nominal_conditions(n, len(inst.arms), spec.exposure, params.r_e)
        arms = observe_galaxies_conditions(inst, model, params, rest, cond, sub, rng)
        labels.update(extra_labels(inst, model, params, rest, arms, cond, sub))
        for d in arms.values():
            d.pop("gain"), d.pop("sky_error")
        labels["light_fraction"] = light_fraction(inst, cond.seeing, cond.airmass, cond.source_re)
    else:
        arms = observe_galaxies(inst, model, params, rest, spec.exposure, rng)
        labels["light_fraction"] = light_fraction(inst, spec.exposure.seeing, spec.exposure.airmass, params.r_e)
    ids = shard * spec.shard_size + np.arange(n, dtype=np.int64)
    labels = {k: np.asarray(v, dtype=np.float32 if v.dtype.kind == "f" else v.dtype)
              for k, v in labels.items()}
    labels["z"] = params.z.astype(np.float64)
    return SpectraBatch(ids=ids, arms=arms, labels=labels)


def _run_shard(spec: SimulationSpec, shard: int, path: str, compression: str | None = None) -> int:
    """Simulate shard ``shard`` into the store file ``path`` (atomically); its number of objects."""
    batch = simulate_shard(spec, shard)
    write_store(path, batch, {"run_key": spec.key(), "shard": shard}, compression=compression)
    return len(batch)


def _shard_rows(spec: SimulationSpec, shard: int) -> int:
    return min(spec.shard_size, spec.n - shard * spec.shard_size)


def simulate(spec: SimulationSpec, out: str | Path, workers: int = 1, overwrite: bool = False,
             progress: bool = True, *, scheduler: str | None = None, consolidate: bool = False,
             compression: str | None = None) -> Path:
    """Run a whole simulation into the store ``out``; resumes from ``out.shards/`` if present.

    workers: 1 simulates the shards in this process; more run them on a Dask LocalCluster of
    that many single-threaded processes; scheduler: a Dask scheduler's address (``workers`` is
    then ignored; the workers must see ``out``'s folder). consolidate: write one self-contained
    ``out`` and remove the shards (else ``out`` is a virtual store over ``out.shards/``, which
    must stay beside it). compression: of the shard files' spectra, and of a consolidated
    ``out`` (``mtopnet.store.COMPRESSIONS``). Returns ``out``.

    UserError: a bad spec or option, ``out`` exists without ``overwrite``, ``out.shards/`` holds
    another run's shards without ``overwrite``, another run writes ``out``, a failed write;
    mtopnet.cluster.ResumableError: the Dask workers died (the shards done stay).
    """
    inst = load_instrument(spec.instrument)
    spec.validate(inst)
    workers = check_workers(workers)
    if compression not in COMPRESSIONS:
        raise UserError(f"--compression: one of none, gzip, lzf; got {compression!r}")
    out = check_writable(out, overwrite)
    shard_dir = out.with_name(out.name + ".shards")
    n_shards = (spec.n + spec.shard_size - 1) // spec.shard_size
    parts = [shard_dir / f"shard_{i:05d}.h5" for i in range(n_shards)]
    with OutputLock(shard_dir):
        try:
            shard_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise write_error(shard_dir, exc) from None
        for partial in shard_dir.glob("*.tmp"):  # shards in flight when an earlier run was killed
            remove_partial(partial)
        todo, key = [], spec.key()
        for i, path in enumerate(parts):
            if path.exists():
                try:
                    info = store_info(path)
                except UserError:
                    info = None
                if info and info["attrs"].get("run_key") == key:
                    continue
                if info and not overwrite:
                    raise UserError(f"{shard_dir}: holds shards of another run; remove it or pass --overwrite")
            todo.append(Task(path.stem, f"mtopnet-simulate-{key}-{path.stem}",
                             (spec, i, os.path.abspath(path), compression)))
        done_n = spec.n - sum(_shard_rows(spec, t.args[1]) for t in todo)
        log.debug("%s: %d shards of %d spectra, %d done before, %d worker(s)", out, n_shards, spec.shard_size,
                  n_shards - len(todo), workers)
        bar = progress_bar(total=spec.n, initial=done_n, unit="spec", desc=f"simulate {out.name}", progress=progress)
        try:
            run_tasks(_run_shard, todo, lambda task, count: bar.update(count), workers=workers, scheduler=scheduler)
        except BaseException:
            for partial in shard_dir.glob("*.tmp"):  # a shard stopped mid-write; finished shards stay
                remove_partial(partial)
            if not any(shard_dir.iterdir()):  # nothing done (e.g. no scheduler): nothing left behind
                shard_dir.rmdir()
            raise
        finally:
            bar.close()
        attrs = {"instrument": spec.instrument, "provenance": spec.provenance()}
        if consolidate:
            merge_stores(parts, out, attrs, compression=compression)
            shutil.rmtree(shard_dir)
        else:
            keep = set(parts)
            for stale in shard_dir.glob("shard_*.h5"):  # an earlier, longer run's (--overwrite)
                if stale not in keep:
                    remove_partial(stale)
            write_virtual_store(out, parts, attrs)
    return out


COMMAND = "simulate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instrument", default="moons-lr", help="shipped name (see `mtopnet instruments`) or a YAML path")
    p.add_argument("--exposure", default="8h", help="total exposure, e.g. 8h, 90min, 1800s")
    p.add_argument("--sub-exposure", default=None, help="length of each sub-exposure (default: the instrument's)")
    p.add_argument("--airmass", type=float, default=None)
    p.add_argument("--seeing", type=float, default=None, help="arcsec FWHM at 500 nm")
    p.add_argument("--sky-residual", type=float, default=None, help="sky-subtraction error, fraction of the sky")
    p.add_argument("--n", type=int, required=True, help="number of spectra")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="output HDF5 store")
    p.add_argument("--workers", type=int, default=1,
                   help="1: simulate in this process (default); N: on a Dask LocalCluster of N processes")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the shards on the Dask cluster at ADDRESS (e.g. tcp://host:8786); its workers "
                        "must see --out's folder")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, metavar="N",
                   help=f"objects per shard, the unit of work and of resuming (default {SHARD_SIZE}); part of "
                        f"the seeding, so the same --shard-size gives the same spectra")
    p.add_argument("--consolidate", action="store_true",
                   help="write one self-contained store (a copy) instead of a virtual store over OUT.shards/")
    p.add_argument("--compression", default="none", choices=("none", "gzip", "lzf"),
                   help="compress the spectra of the shard files (and of a --consolidate store): see "
                        "docs/scale.md for sizes and read speeds (default none)")
    p.add_argument("--hmag-range", "--mag-range", dest="hmag_range", type=float, nargs=2, default=(20.0, 25.5),
                   metavar=("LO", "HI"), help="AB magnitude range in --band (default 20 25.5)")
    p.add_argument("--band", default=DEFAULT_BAND,
                   help=f"speclite filter of the magnitude selection (default {DEFAULT_BAND}; e.g. sdss2010-r "
                        f"for optical instruments); stored as labels/hmag for {DEFAULT_BAND}, else labels/mag")
    p.add_argument("--z-range", type=float, nargs=2, default=(0.6, 3.0), metavar=("LO", "HI"))
    p.add_argument("--population", default="survey", choices=POPULATIONS,
                   help="survey: the survey-like population of docs/galaxies.md (default; for evaluation); "
                        "training: the even-coverage training prior (log M* uniform at every z, quiescent share, "
                        "SFH families, full dust/metallicity/dispersion ranges, AGN-like line ratios)")
    d = TrainingPrior()
    p.add_argument("--quiescent-fraction", type=float, default=d.quiescent_fraction, metavar="F",
                   help=f"training: share of quiescent galaxies, log sSFR -13...-11 (default {d.quiescent_fraction})")
    p.add_argument("--logm-range", type=float, nargs=2, default=d.logm_range, metavar=("LO", "HI"),
                   help=f"training: log M* drawn uniformly in LO-HI at every z (default {d.logm_range[0]:g} "
                        f"{d.logm_range[1]:g}); the magnitude range then cuts what is too bright or faint")
    p.add_argument("--line-scale", type=float, nargs=2, default=d.line_scale, metavar=("LO", "HI"),
                   help=f"training: every emission line of an object times one log-uniform factor in LO-HI "
                        f"(default {d.line_scale[0]:g} {d.line_scale[1]:g}; 1 1 keeps the nebular grid's strengths)")
    p.add_argument("--agn-fraction", type=float, default=d.agn_fraction, metavar="F",
                   help=f"training: share with AGN-like narrow-line ratios (default {d.agn_fraction})")
    p.add_argument("--nuisance", default="fixed", choices=NUISANCE_MODES,
                   help="fixed: every object under the exposure's conditions (default); randomised: per object "
                        "sky residual, source size, seeing, airmass, throughput, exposure time, flux calibration, "
                        "LSF width, wavelength zero point, STARE/XSW, telluric residual (docs/simulator.md); "
                        "--exposure, --airmass, --seeing, --sky-residual then apply only to those switched off")
    p.add_argument("--nuisance-off", nargs="+", default=(), metavar="NAME",
                   help=f"randomised: keep these nuisances at their nominal value ({', '.join(NUISANCES)})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def exposure_from_args(inst: Instrument, args: argparse.Namespace) -> Exposure:
    obs = inst.config.observing
    return Exposure(
        total=parse_duration(args.exposure),
        sub_exposure=parse_duration(args.sub_exposure) if args.sub_exposure else obs.sub_exposure,
        airmass=obs.airmass if args.airmass is None else args.airmass,
        seeing=obs.seeing if args.seeing is None else args.seeing,
        sky_residual=obs.sky_residual if args.sky_residual is None else args.sky_residual,
    )


def run_cli(args: argparse.Namespace) -> int:
    inst = load_instrument(args.instrument)
    spec = SimulationSpec(instrument=args.instrument, exposure=exposure_from_args(inst, args), n=args.n,
                          seed=args.seed, hmag_range=tuple(args.hmag_range), z_range=tuple(args.z_range),
                          band=args.band, population=args.population,
                          prior=TrainingPrior(quiescent_fraction=args.quiescent_fraction,
                                              logm_range=tuple(args.logm_range), line_scale=tuple(args.line_scale),
                                              agn_fraction=args.agn_fraction),
                          nuisance=args.nuisance, nuisance_off=tuple(args.nuisance_off), shard_size=args.shard_size)
    out = simulate(spec, args.out, workers=args.workers, overwrite=args.overwrite, progress=progress_enabled(),
                   scheduler=args.scheduler, consolidate=args.consolidate,
                   compression=None if args.compression == "none" else args.compression)
    print(f"wrote {spec.n} spectra to {out}")  # the command's result line
    return 0
