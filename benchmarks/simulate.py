"""Throughput of `mtopnet simulate`: spectra per second, end to end (galaxies, three arms at
native pixels, noise, HDF5 shards and the virtual store over them).

    python benchmarks/simulate.py [--n 2000] [--workers 2] [--instrument moons-lr]
                                  [--population survey|training] [--nuisance fixed|randomised]

Target (issue 2): >= 100 spectra/s for MOONS LR with --workers 2 on a 2-core machine.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from mtopnet.config import Exposure
from mtopnet.galaxies import load_grids
from mtopnet.instruments import load_instrument
from mtopnet.simulate import SimulationSpec, galaxy_model, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--instrument", default="moons-lr")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--population", default="survey", choices=("survey", "training"))
    ap.add_argument("--nuisance", default="fixed", choices=("fixed", "randomised"))
    args = ap.parse_args()
    inst = load_instrument(args.instrument)
    t0 = time.perf_counter()
    galaxy_model(inst, (0.6, 3.0), "twomass-H")  # grids, as every run pays once per process
    setup = time.perf_counter() - t0
    spec = SimulationSpec(instrument=args.instrument, exposure=Exposure(8 * 3600), n=args.n, seed=args.seed,
                          population=args.population, nuisance=args.nuisance)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.h5")
        t0 = time.perf_counter()
        simulate(spec, out, workers=args.workers, progress=False)
        elapsed = time.perf_counter() - t0
        shards = out + ".shards"  # the virtual store's data
        size = os.path.getsize(out) + sum(os.path.getsize(os.path.join(shards, f)) for f in os.listdir(shards))
    npix = sum(a.npix for a in inst.arms)
    print(f"instrument {args.instrument}: {len(inst.arms)} arms, {npix} pixels per spectrum; "
          f"population {args.population}, nuisance {args.nuisance}")
    print(f"grid setup (once per process): {setup:.1f} s")
    print(f"simulated {args.n} spectra with {args.workers} workers in {elapsed:.1f} s "
          f"-> {args.n / elapsed:.0f} spectra/s ({size / args.n / 1e3:.0f} kB per spectrum on disk)")
    load_grids.cache_clear()


if __name__ == "__main__":
    main()
