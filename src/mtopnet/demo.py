"""the main job on the shipped defaults: simulate, figures, predict and evaluate (`make demo`)

1. simulate a fresh, seeded test set of MOONS LR 8-hour spectra (H 20-25.5, z 0.6-3.0);
2. figures of the simulator: example spectra at H = 21, 23, 25 and continuum S/N vs H;
3. if a trained model is shipped: predict with it, evaluate, and print where the report is.

    mtopnet demo --out demo-output [--n 2000] [--seed 424242]
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from .config import Exposure, UserError
from .evaluate import evaluate
from .galaxies.population import N_OLD_BINS, GalaxyParams
from .instruments import load_instrument, observe_arm, source_sigma
from .logs import progress_enabled
from .plots import continuum_snr, flat_fnu_snr, plot_examples, plot_snr_vs_mag
from .predict import predict_store
from .simulate import SimulationSpec, galaxy_model, simulate
from .store import read_store
from .trained import load_model

COMMAND = "demo"
log = logging.getLogger(__name__)
DEMO_SEED = 424242
"""Seed of the demo's test set; never used for training (training uses 1001/1002)."""


def example_galaxy(z: float = 1.4) -> GalaxyParams:
    """A main-sequence star-forming galaxy (log M* = 10.3, SFR ~ 20 M_sun/yr)."""
    one = lambda v: np.array([v], dtype=float)  # noqa: E731
    return GalaxyParams(z=one(z), logmstar=one(10.3), quiescent=np.array([False]), logsfr100_target=one(1.3),
                        inst_ratio=one(0.0), sfh_logratio=np.zeros((1, N_OLD_BINS - 1)), quench_age=one(0.0),
                        log_zsol=one(-0.2), log_u=one(-2.7), av=one(0.8), eta=one(2.0), sigma_v=one(90.0),
                        r_e=one(0.35))


def simulator_figures(out: Path, instrument: str = "moons-lr", exposure: Exposure | None = None,
                      store: Path | None = None, seed: int = DEMO_SEED) -> list[Path]:
    """Example spectra at H = 21, 23, 25 and the continuum S/N-magnitude relation."""
    inst = load_instrument(instrument)
    obs = inst.config.observing
    exposure = exposure or Exposure(8 * 3600, obs.sub_exposure, obs.airmass, obs.seeing, obs.sky_residual)
    model = galaxy_model(inst, (0.6, 3.0), "twomass-H")
    rng = np.random.default_rng(seed)
    p = example_galaxy()
    examples = []
    for hmag in (21.0, 23.0, 25.0):
        rest = model.scale_to_magnitude(model.rest_frame(p), p.z, hmag)
        arms = {}
        for arm in inst.arms:
            fine = model.observed(rest, p, arm.fine_wave, arm.fine_edges)
            s = observe_arm(arm, fine, exposure, rng, source_sigma(p.r_e))
            arms[arm.name] = {"wave": s.wave, "flux": s.flux[0], "ivar": s.ivar[0], "mask": s.mask[0]}
        examples.append({"z": p.z[0], "hmag": hmag, "arms": arms, "exposure": exposure,
                         "label": f"{inst.name}, {exposure.total / 3600:.0f} h: star-forming galaxy, z = {p.z[0]:.2f}, "
                                  f"H = {hmag:.0f}, log M* = {rest.logmstar[0]:.2f}, log SFR = {rest.logsfr[0]:.2f}"})
    out.mkdir(parents=True, exist_ok=True)
    ex_path, snr_path = out / "simulated_examples.png", out / "snr_vs_hmag.png"
    plot_examples(examples, inst, ex_path)
    mags = np.arange(20.0, 26.01, 0.5)
    curves = flat_fnu_snr(inst, mags, exposure, seed=seed)
    galaxies = None
    if store is not None:
        b = read_store(store, 0, 2000)
        galaxies = (b.labels["hmag"], continuum_snr(b))
    plot_snr_vs_mag(mags, curves, snr_path, galaxies,
                    title=f"{inst.name}, {exposure.n_sub} x {exposure.total / exposure.n_sub:.0f} s, airmass "
                          f"{exposure.airmass}, seeing {exposure.seeing}\"")
    return [ex_path, snr_path]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--n", type=int, default=2000, help="spectra to simulate (default 2000)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help=f"simulation seed (default {DEMO_SEED})")
    p.add_argument("--workers", type=int, default=2, help="simulation workers (default 2)")


def run_cli(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = out / "test.h5"
    spec = SimulationSpec(instrument="moons-lr", exposure=Exposure(8 * 3600), n=args.n, seed=args.seed)
    if not store.exists():
        simulate(spec, store, workers=args.workers, progress=progress_enabled())
    figures = simulator_figures(out, store=store, seed=args.seed)
    report, summary = _network_report(out, store)
    print(f"simulated {args.n} MOONS LR 8 h spectra: {store}")
    for f in figures:
        print(f"figure: {f}")
    if report:
        print(f"catalogue: {out / 'catalogue.fits'}")
        print(f"report: {report}")
        print(summary)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


def _network_report(out: Path, store: Path) -> tuple[Path | None, str]:
    """Predict with the shipped model and evaluate, if the model is shipped: the report's
    metrics.md (None without a model) and a one-line summary of it."""
    try:
        model = load_model(None)
    except UserError as exc:
        log.warning("no network report: %s", exc)
        return None, ""
    catalogue = out / "catalogue.fits"
    predict_store(model, [store], catalogue, overwrite=True)
    report = out / "report"
    r = evaluate(catalogue, store, report)["redshift"]["all"]
    q4 = r["qop4"]
    summary = (f"redshifts right to |dz| < 0.01: {r['frac_dz01']:.3f} of {r['n']}; QOP 4: {q4['purity']:.3f} right "
               f"on {q4['fraction']:.0%} of the spectra")
    return report / "metrics.md", summary

