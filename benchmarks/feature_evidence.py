"""FEATURE_DCHI2 (evidence for redshift features, mtopnet.refine.feature_evidence) on spectra
with no galaxy in them and on simulated galaxies: the numbers behind NO_FEATURES_DCHI2.

    python benchmarks/feature_evidence.py --template-store data/val.h5 [--truth-store STORE.h5 ...]
                                          [--n 300] [--model moons-lr] [--threshold 50]

Garbage spectra (half pure noise, half featureless power laws at S/N 0.3-30 per pixel:
mtopnet.calibrate.garbage_batch) are made on the first N spectra of --template-store (their
wavelengths, noise and masks); their FEATURE_DCHI2 percentiles are printed. For each
--truth-store (a store with true z), the first N spectra are predicted and the fractions of
right (|dz| / (1 + z) < 0.01) and wrong redshifts below the threshold are printed, with
the same for wrong ones. Never run this on the test seeds to choose the threshold.
"""
from __future__ import annotations

import argparse

import numpy as np

from mtopnet.calibrate import garbage_batch
from mtopnet.constants import SUCCESS_DZ
from mtopnet.predict import NO_FEATURES_DCHI2, predict_batches
from mtopnet.store import read_store
from mtopnet.trained import load_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--template-store", required=True)
    p.add_argument("--truth-store", nargs="*", default=[])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--model", default="moons-lr")
    p.add_argument("--threshold", type=float, default=NO_FEATURES_DCHI2)
    p.add_argument("--seed", type=int, default=5)
    args = p.parse_args(argv)
    model = load_model(args.model)
    junk = garbage_batch(read_store(args.template_store, 0, args.n), np.random.default_rng(args.seed), 0)
    rows = next(predict_batches(model, [junk], batch_size=None))
    e = rows["feature_dchi2"][np.isfinite(rows["feature_dchi2"])]
    pct = np.percentile(e, [50, 90, 99])
    print(f"garbage ({len(e)} fitted): FEATURE_DCHI2 median {pct[0]:.1f}, 90% {pct[1]:.1f}, 99% {pct[2]:.1f}, "
          f"max {e.max():.1f}; qop >= 3: {(rows['qop'] >= 3).sum()}")
    for path in args.truth_store:
        batch = read_store(path, 0, args.n)
        rows = next(predict_batches(model, [batch], batch_size=None))
        z = np.asarray(batch.labels["z"], dtype=np.float64)
        right = np.abs(rows["z"] - z) / (1 + z) < SUCCESS_DZ
        low = rows["feature_dchi2"] < args.threshold
        print(f"{path}: {len(z)} spectra; below {args.threshold:g}: right {(right & low).sum()} of {right.sum()} "
              f"(now qop <= 2: NO_FEATURES), "
              f"wrong {(~right & low).sum()} of {(~right).sum()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
