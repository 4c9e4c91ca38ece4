"""The full-range scan's basis compared on validation stores: the scan alone, and combined with the network.

    python benchmarks/scan_basis.py --stores data/val.h5 CALIB6001.h5 CALIB6002.h5 CALIB6003.h5 \\
                                    --n 3072 1000 1000 1000 [--model moons-lr] [--out DIR]

For each store (VALIDATION data only: never a test seed), the first N spectra are read as
prediction reads them (the training instrument's sky masks applied), the model's network gives
its PDF, and the scan (:class:`mtopnet.refine.ZScanner`, clipped as prediction clips it) runs
with each basis of :data:`BASES`. Printed per simulator (stores with the same provenance
``generator`` pooled, as ``mtopnet calibrate`` groups them): |dz| < 0.01 of the network alone,
of each basis's scan alone (the lowest chi2 bin), and of each basis combined with the network
at each weight set of :data:`WEIGHTS` (:func:`mtopnet.refine.combine_pdf` with the
:func:`mtopnet.refine.network_gate`). The table also goes to DIR/scan_basis.md with ``--out``.
docs/zscan.md quotes it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mtopnet.calibrate import simulator_groups
from mtopnet.catalogue import match_ids, read_truth
from mtopnet.constants import SUCCESS_DZ
from mtopnet.predict import training_instrument
from mtopnet.preprocess import apply_sky_masks
from mtopnet.quality import pdf_summary
from mtopnet.refine import (
    Refiner,
    ScanConfig,
    ZScanner,
    combine_pdf,
    network_gate,
    scan_on_bins,
    sky_residual_vectors,
)
from mtopnet.store import iter_store, store_info
from mtopnet.trained import load_model

LINES = ("[OII]", "[OIII]", "Halpha")
BASES = {
    "6 PCA + 3 line groups (0.4.1-0.4.2)": ScanConfig(n_templates=6, lines=LINES),
    "6 PCA + 3 line groups + sky (0.4.3)": ScanConfig(n_templates=6, lines=LINES, sky=True),
    "6 PCA + sky (0.4.4)": ScanConfig(n_templates=6, lines=(), sky=True),
    "10 PCA": ScanConfig(n_templates=10, lines=()),
}
"""The scan bases compared (the name says which shipped model used it)."""
WEIGHTS = ((1.4166666666666667, 1.0, 3.0), (0.8333333333333334, 1.0, 3.0))
"""(w_net, t, gamma) sets: model 0.4.2's and model 0.4.4's fitted weights."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stores", nargs="+", required=True, help="validation stores (with labels/z)")
    p.add_argument("--n", nargs="+", type=int, required=True, help="spectra read from each store (first N)")
    p.add_argument("--model", default="moons-lr", help="model name or checkpoint (its network and grid)")
    p.add_argument("--out", default=None, help="folder for scan_basis.md")
    args = p.parse_args()
    if len(args.n) != len(args.stores):
        raise SystemExit("--n: one count per store")
    torch.set_num_threads(1)
    model = load_model(args.model)
    refiner, zb, pre = Refiner.from_model(model), model.zbins, model.preprocessor
    inst = training_instrument(model)
    if inst is None:
        raise SystemExit("the model's training instrument cannot be loaded (its sky is needed)")
    sky = sky_residual_vectors(inst, pre)
    scanners = {name: ZScanner.from_scan_config(refiner.basis, (zb.z_min, zb.z_max), cfg, sky=sky)
                for name, cfg in BASES.items()}
    # one column per simulator, as `mtopnet calibrate` groups stores
    names, group_of = simulator_groups([store_info(s) for s in args.stores])
    centres = 0.5 * (zb.edges[1:] + zb.edges[:-1])
    hits: dict[tuple[int, str], list[np.ndarray]] = {}
    for store, n_max, group in zip(args.stores, args.n, group_of, strict=True):
        truth = read_truth(store)
        n = 0
        for batch in iter_store(store, 256):
            if n >= n_max:
                break
            batch = batch.subset(slice(0, min(len(batch), n_max - n)))
            z_true = np.asarray(truth["z"], float)[match_ids(np.asarray(batch.ids), truth["id"])]
            x = pre(apply_sky_masks(batch, inst))
            with torch.inference_mode():
                logits = model.network(torch.from_numpy(x.spectrum), torch.from_numpy(x.continuum))["z_logits"]
            pdf = torch.softmax(logits.double(), dim=1).numpy()
            summ = pdf_summary(pdf, zb.edges)
            right = {"network alone": np.abs(summ["z"] - z_true) < SUCCESS_DZ}
            for name, scanner in scanners.items():
                res, chi2, _ = scan_on_bins(scanner, x.flux, x.ivar, zb.edges, BASES[name].clip_sigma)
                chi2 = np.where(res.ok[:, None], chi2, 0.0)
                right[f"{name}: scan alone"] = np.abs(centres[chi2.argmin(1)] - z_true) < SUCCESS_DZ
                for w, t, g in WEIGHTS:
                    post = combine_pdf(pdf, chi2, w, t, gate=network_gate(summ["p_window"], g))
                    right[f"{name}: with the network, w_net {w:.2f} t {t:g} gamma {g:g}"] = \
                        np.abs(pdf_summary(post, zb.edges)["z"] - z_true) < SUCCESS_DZ
            for k, v in right.items():
                hits.setdefault((group, k), []).append(v)
            n += len(batch)
    groups = range(len(names))
    sizes = [int(sum(len(v) for v in hits[(g, "network alone")])) for g in groups]
    lines = ["| |dz| < 0.01 | " + " | ".join(f"{nm} ({sz})" for nm, sz in zip(names, sizes, strict=True)) + " |",
             "|---|" + "---:|" * len(groups)]
    for k in dict.fromkeys(k for _, k in hits):
        lines.append(f"| {k} | " + " | ".join(f"{np.concatenate(hits[(g, k)]).mean():.4f}" for g in groups) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "scan_basis.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
