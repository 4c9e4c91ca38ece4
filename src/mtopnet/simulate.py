"""Simulate a spectrum store: galaxy population x instrument -> HDF5, parallel and resumable.

The run is cut into shards of ``SHARD_SIZE`` objects. Shard ``i`` draws its galaxies and
noise from ``SeedSequence([seed, i])`` alone, so the output does not depend on the number of
workers, and a shard is written (atomically) to ``OUT.shards/`` as soon as it is done. A
re-run with the same arguments skips the shards already there; when all are done they are
merged into ``OUT`` and the shard folder is removed. Same seed and arguments, same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .config import Exposure, UserError, parse_duration
from .galaxies import GalaxyModel, GalaxyParams, filter_range, load_grids, sample_params
from .galaxies.sps import DLOGLAM_REST
from .instruments import Instrument, load_instrument, observe_arm
from .store import (SpectraBatch, check_writable, merge_stores, remove_partial, store_info, write_error,
                    write_store)

SHARD_SIZE = 500
SUB_BATCH = 128
DEFAULT_BAND = "twomass-H"
"""Selection band of the magnitude range; its magnitude is stored as ``labels/hmag``. Any
other band's magnitude is stored as ``labels/mag`` (the band is in the provenance)."""
HMAG_LIMITS = (14.0, 30.0)
Z_LIMITS = (0.0, 4.0)
LYA = 1215.67


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

    @property
    def mag_label(self) -> str:
        """Name of the selection magnitude's label: ``hmag`` for 2MASS H, else ``mag``."""
        return "hmag" if self.band == DEFAULT_BAND else "mag"

    def validate(self, inst: Instrument) -> None:
        if self.n <= 0:
            raise UserError(f"--n: must be positive, got {self.n}")
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
        return {"instrument": self.instrument,
                "instrument_sha256": hashlib.sha256(Path(source).read_bytes()).hexdigest(),
                "exposure": self.exposure.as_dict(), "n": self.n,
                "seed": self.seed, "hmag_range": list(self.hmag_range), "z_range": list(self.z_range),
                "band": self.band, "shard_size": SHARD_SIZE, "mtopnet_version": __version__}

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
        p = sample_params(SUB_BATCH * 2, rng, spec.z_range)
        r = model.rest_frame(p)
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
    params = GalaxyParams(**{f: cat([getattr(p, f) for p in kept_p]) for f in GalaxyParams.__dataclass_fields__})
    rest = kept_r[0].__class__(*(cat([getattr(r, f) for r in kept_r]) for f in
                                 ("cont", "line_lum", "logmstar", "logsfr", "logsfr_inst")))
    return params, rest, cat(kept_h)


def observe_galaxies(inst: Instrument, model: GalaxyModel, params: GalaxyParams, rest,
                     exposure: Exposure, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Per-arm flux/ivar/mask of galaxies (rows in the order given)."""
    arms: dict[str, dict[str, list]] = {a.name: {"flux": [], "ivar": [], "mask": []} for a in inst.arms}
    source_sigma = params.r_e / 1.1774  # half-light radius of a 2D Gaussian = 1.1774 sigma
    for start in range(0, len(params), SUB_BATCH):
        sl = slice(start, start + SUB_BATCH)
        p = params.subset(sl)
        r = rest.__class__(rest.cont[sl], rest.line_lum[sl], rest.logmstar[sl], rest.logsfr[sl], rest.logsfr_inst[sl])
        for arm in inst.arms:
            fine = model.observed(r, p, arm.fine_wave, arm.fine_edges)
            spec = observe_arm(arm, fine, exposure, rng, source_sigma[sl])
            for key in ("flux", "ivar", "mask"):
                arms[arm.name][key].append(getattr(spec, key))
    return {a: {"wave": inst.arm(a).wave, **{k: np.concatenate(v) for k, v in d.items()}}
            for a, d in arms.items()}


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


def simulate_shard(spec: SimulationSpec, shard: int) -> SpectraBatch:
    """Objects [shard * SHARD_SIZE, ...) of the run, from their own seed."""
    inst = load_instrument(spec.instrument)
    model = galaxy_model(inst, spec.z_range, spec.band)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, shard]))
    n = min(SHARD_SIZE, spec.n - shard * SHARD_SIZE)
    params, rest, hmag = draw_population(model, n, rng, spec)
    arms = observe_galaxies(inst, model, params, rest, spec.exposure, rng)
    ids = shard * SHARD_SIZE + np.arange(n, dtype=np.int64)
    labels = {k: np.asarray(v, dtype=np.float32 if v.dtype.kind == "f" else v.dtype)
              for k, v in labels_for(model, params, rest, hmag, spec.mag_label).items()}
    labels["z"] = params.z.astype(np.float64)
    return SpectraBatch(ids=ids, arms=arms, labels=labels)


def _init_worker(parent: int | None = None) -> None:
    """Pool initializer: a worker dies with the process that started it, and leaves Ctrl-C to it.

    On Linux the kernel sends the worker SIGTERM when its parent dies (``prctl`` with
    ``PR_SET_PDEATHSIG``); elsewhere a daemon thread polls ``os.getppid()`` once a second.
    SIGTERM ends the worker at once and silently (``os._exit``), so a killed run leaves no
    workers running on and no broken-pipe tracebacks; SIGINT is ignored (the parent stops
    the pool). ``parent``: the pid of the process that started the pool (default: the current
    parent).
    """
    parent = os.getppid() if parent is None else parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(1))
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)
    if not armed:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)
        threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _run_shard(args: tuple[SimulationSpec, int, str]) -> int:
    spec, shard, path = args
    batch = simulate_shard(spec, shard)
    write_store(path, batch, {"run_key": spec.key(), "shard": shard})
    return len(batch)


def simulate(spec: SimulationSpec, out: str | Path, workers: int = 1, overwrite: bool = False,
             progress: bool = True) -> Path:
    """Run a whole simulation into ``out``; resumes from ``out.shards/`` if present."""
    inst = load_instrument(spec.instrument)
    spec.validate(inst)
    if workers < 1:
        raise UserError(f"--workers: must be >= 1, got {workers}")
    out = check_writable(out, overwrite)
    shard_dir = out.with_name(out.name + ".shards")
    n_shards = (spec.n + SHARD_SIZE - 1) // SHARD_SIZE
    todo = []
    try:
        shard_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise write_error(shard_dir, exc) from None
    for i in range(n_shards):
        path = shard_dir / f"shard_{i:05d}.h5"
        if path.exists():
            try:
                info = store_info(path)
            except UserError:
                info = None
            if info and info["attrs"].get("run_key") == spec.key():
                continue
            if info and not overwrite:
                raise UserError(f"{shard_dir}: holds shards of another run; remove it or pass --overwrite")
        todo.append((spec, i, str(path)))
    from tqdm import tqdm
    done_n = sum(min(SHARD_SIZE, spec.n - i * SHARD_SIZE) for i in range(n_shards)) - \
        sum(min(SHARD_SIZE, spec.n - t[1] * SHARD_SIZE) for t in todo)
    bar = tqdm(total=spec.n, initial=done_n, unit="spec", desc=f"simulate {out.name}", disable=not progress)
    try:
        if workers == 1 or len(todo) <= 1:
            for task in todo:
                bar.update(_run_shard(task))
        else:
            ctx = mp.get_context("fork")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
                for count in pool.imap_unordered(_run_shard, todo):
                    bar.update(count)
    except BaseException:
        for partial in shard_dir.glob("*.tmp"):  # a worker stopped mid-write; finished shards stay
            remove_partial(partial)
        raise
    finally:
        bar.close()
    parts = [shard_dir / f"shard_{i:05d}.h5" for i in range(n_shards)]
    merge_stores(parts, out, {"instrument": spec.instrument, "provenance": spec.provenance()})
    shutil.rmtree(shard_dir)
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
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--hmag-range", "--mag-range", dest="hmag_range", type=float, nargs=2, default=(20.0, 25.5),
                   metavar=("LO", "HI"), help="AB magnitude range in --band (default 20 25.5)")
    p.add_argument("--band", default=DEFAULT_BAND,
                   help=f"speclite filter of the magnitude selection (default {DEFAULT_BAND}; e.g. sdss2010-r "
                        f"for optical instruments); stored as labels/hmag for {DEFAULT_BAND}, else labels/mag")
    p.add_argument("--z-range", type=float, nargs=2, default=(0.6, 3.0), metavar=("LO", "HI"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


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
                          band=args.band)
    out = simulate(spec, args.out, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {spec.n} spectra to {out}")
    return 0
