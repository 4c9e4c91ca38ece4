"""Speed and accuracy of the full-range template scan (mtopnet.zscan) on MOONS LR-like spectra.

Builds the refinement basis of the shipped templates on the default 4096-pixel grid, makes
N spectra from random positive combinations of the first three PCA vectors at random z in
0.6-3.0 (no lines), adds Gaussian noise at a given S/N per pixel and masks 5% of the pixels,
then times ``ZScanner.scan`` with torch.set_num_threads(2) for several bases. Prints ms per
object (wall and process CPU) and the fraction of objects whose scan minimum lies within
0.001 (1 + z) of the truth. Writes nothing.

    PYTHONPATH=src python benchmarks/zscan.py [--n 512] [--snr 5] [--z-range 0.5 3.3]

With ``--store FILE.h5`` it scans a store's spectra instead (rebinned by the model's
preprocessing, :meth:`Preprocessor.rebin`) and prints the scan's own success fraction
(|dz| < 0.01) overall, by ``labels/type`` and by max(Halpha, [OIII]) flux, per basis
configuration. Use a validation or benchmark store, never a test store to choose settings.

With ``--store FILE.h5 --model NAME`` it also runs the network (no refinement) for its PDFs,
fits (w_net, t) of :func:`combine_pdf` on the first half of the store (the validation
role) and prints, on the second half, the success of the network's z and of the
combined posterior's z (both the PDF summary ``z``), the share of objects whose answer
the scan changed (|dz| > 0.01), and the scan's cost.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from mtopnet.preprocess import PreprocessConfig
from mtopnet.refine import RefineConfig, ZScanner, build_basis, scan_summary


def make_spectra(scanner: ZScanner, table: np.ndarray, n: int, snr: float, rng: np.random.Generator,
                 tilt: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """flux, ivar (n, n_pix) and true z (n,): whole-pixel shifts of the scanner's own lattice,
    so the test is of the scan, not of sub-pixel interpolation. ``tilt``: a multiplicative
    flux-calibration error 1 + a x + b (x^2 - 1/3) across the grid (x in -1..1), a and b
    uniform in +-tilt, +-tilt/2, per object."""
    idx = rng.integers(0, scanner.n_trial, n)
    z = scanner.z[idx]
    shifts = scanner.shift_lo + scanner.stride * (scanner.n_trial - 1 - idx)
    coef = np.stack([rng.uniform(0.7, 1.3, n), rng.uniform(-0.4, 0.4, n), rng.uniform(-0.3, 0.3, n)], 1)
    rows = shifts[:, None] + np.arange(scanner.n_pix)[None, :]
    rows_c = np.clip(rows, 0, len(table) - 1)
    model = np.einsum("npk,nk->np", table[rows_c][:, :, :3], coef) * ((rows >= 0) & (rows < len(table)))
    x = np.linspace(-1, 1, scanner.n_pix)[None, :]
    model = model * (1 + rng.uniform(-tilt, tilt, (n, 1)) * x + rng.uniform(-tilt, tilt, (n, 1)) / 2 * (x ** 2 - 1 / 3))
    sigma = np.abs(model).mean(axis=1, keepdims=True) / snr
    flux = model + rng.normal(size=model.shape) * sigma
    ivar = np.broadcast_to(1 / sigma ** 2, flux.shape).copy()
    ivar[rng.random(ivar.shape) < 0.05] = 0
    return flux.astype(np.float32), ivar.astype(np.float32), z


def scan_store(path: str, basis, configs: list[tuple[int, int, int]], z_range: tuple[float, float],
               scan_threads: int | None, smooth: float = 0.0, lines: tuple[str, ...] = ()) -> None:
    """Success of the scan alone on a store's spectra, by type and line flux (see the module docstring)."""
    from mtopnet.preprocess import Preprocessor
    from mtopnet.store import iter_store

    pre = Preprocessor(PreprocessConfig())
    fluxes, ivars, labels = [], [], []
    for batch in iter_store(path, 1024):
        f, iv, _ = pre.rebin(batch)
        fluxes.append(f)
        ivars.append(iv)
        labels.append(batch.labels)
    flux, ivar = np.concatenate(fluxes), np.concatenate(ivars)
    lab = {k: np.concatenate([b[k] for b in labels]) for k in labels[0]}
    z_true = lab["z"]
    groups = {"all": np.ones(len(z_true), bool)}
    if "type" in lab:
        for t in np.unique(lab["type"]):
            groups[f"type={t.decode() if isinstance(t, bytes) else t}"] = lab["type"] == t
    if "halpha_flux" in lab and "oiii_flux" in lab:
        line = np.maximum(lab["halpha_flux"], lab["oiii_flux"])
        groups["line<1e-17"] = line < 1e-17
        groups["line>=1e-17"] = line >= 1e-17
    print(f"{path}: {len(z_true)} spectra; z {z_true.min():.2f}-{z_true.max():.2f}")
    for k, q, stride in configs:
        sc = ZScanner.from_refine_basis(basis, z_range, n_templates=k, n_poly=q, stride=stride,
                                        smooth=smooth * stride, lines=lines)
        c0 = time.process_time()
        res = sc.scan(flux, ivar, threads=scan_threads)
        cpu = time.process_time() - c0
        z_best, dchi2, _ = scan_summary(res)
        good = np.abs(z_best - z_true) < 0.01
        parts = ", ".join(f"{name} {good[sel].mean():.3f} ({sel.sum()})" for name, sel in groups.items() if sel.any())
        conf = dchi2 > 25
        print(f"K={k:2d}+{len(lines)} lines poly={q} stride={stride}: {1e3 * cpu / len(z_true):.2f} ms CPU/object; "
              f"|dz|<0.01: {parts}; "
              f"dchi2>25: {conf.mean():.3f} of objects, {good[conf].mean() if conf.any() else float('nan'):.3f} right")


def combine_store(path: str, model_name: str, basis, k: int, q: int, stride: int, z_range: tuple[float, float],
                  lines: tuple[str, ...] = ()) -> None:
    """Network PDF x template scan on a store: fit on the first half, report on the second."""
    from mtopnet.predict import load_model, predict_batches
    from mtopnet.quality import pdf_summary
    from mtopnet.refine import chi2_on_bins, combine_pdf, fit_combination
    from mtopnet.store import iter_store

    model = load_model(model_name)
    edges = model.zbins.edges
    rows = list(predict_batches(model, iter_store(path, 512), with_pdf=True, refine=False))
    pdf = np.concatenate([r["Z_PDF"] for r in rows]).astype(np.float64)
    z_net = np.concatenate([r["Z"] for r in rows])
    flux, ivar, z_true = [], [], []
    for batch in iter_store(path, 1024):
        f, iv, _ = model.preprocessor.rebin(batch)
        flux.append(f)
        ivar.append(iv)
        z_true.append(batch.labels["z"])
    flux, ivar, z_true = np.concatenate(flux), np.concatenate(ivar), np.concatenate(z_true)
    sc = ZScanner.from_refine_basis(basis, z_range, n_templates=k, n_poly=q, stride=stride, lines=lines)
    c0 = time.process_time()
    res = sc.scan(flux, ivar)
    cpu = time.process_time() - c0
    chi2_b = chi2_on_bins(res.z, res.chi2, edges)
    half = len(z_true) // 2
    fit, ev = slice(0, half), slice(half, None)
    w_net, t, info = fit_combination(pdf[fit], chi2_b[fit], edges, z_true[fit], ok=res.ok[fit])
    post = combine_pdf(pdf[ev], chi2_b[ev], w_net, t, ok=res.ok[ev])
    z_post = pdf_summary(post, edges)["z"]
    zt, zn = z_true[ev], z_net[ev]
    ok_net = np.abs(zn - zt) < 0.01
    ok_post = np.abs(z_post - zt) < 0.01
    changed = np.abs(z_post - zn) > 0.01
    print(f"K={k}+{len(lines)} lines poly={q} stride={stride}: fitted on {info['n']}: w_net={w_net:.3f} t={t:.4f} "
          f"(mean ln p(true bin) {info['start_mean_log_post']:.2f} at start -> {info['mean_log_post']:.2f})")
    print(f"  evaluated on {len(zt)}: network |dz|<0.01 {ok_net.mean():.3f}; combined {ok_post.mean():.3f}; "
          f"changed {changed.mean():.3f} ({(changed & ok_post).sum()} to right, "
          f"{(changed & ok_net).sum()} from right); "
          f"scan {1e3 * cpu / len(z_true):.2f} ms CPU/object")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--snr", type=float, default=5.0)
    p.add_argument("--z-range", type=float, nargs=2, default=(0.5, 3.3))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--tilt", type=float, default=0.0, help="flux-calibration error amplitude (0.2 = +-20%%)")
    p.add_argument("--configs", default="10:0:1,10:0:2,6:0:1,6:0:2,5:0:2,6:3:1,6:3:2,10:3:2",
                   help="K:n_poly:stride,... to time")
    p.add_argument("--smooth", type=float, default=0.0,
                   help="with --store: box-smooth the basis over this many trial steps")
    p.add_argument("--lines", nargs="*", default=[], help="with --store: line groups added to the basis")
    p.add_argument("--model", default=None, help="with --store: combine with this model's PDFs")
    p.add_argument("--store", default=None, help="scan this store's spectra instead of synthetic ones")
    p.add_argument("--scan-threads", type=int, default=1, help="threads inside the scan (0: keep --threads)")
    args = p.parse_args()
    args.scan_threads = args.scan_threads or None
    torch.set_num_threads(args.threads)
    pre = PreprocessConfig()
    t0 = time.perf_counter()
    basis = build_basis(pre, tuple(args.z_range), 30.0, RefineConfig(lines=bool(args.lines)))
    print(f"basis: {basis.table.shape} in {time.perf_counter() - t0:.2f} s")
    configs = [tuple(int(v) for v in c.split(":")) for c in args.configs.split(",")]
    if args.store and args.model:
        for k, q, stride in configs:
            combine_store(args.store, args.model, basis, k, q, stride, tuple(args.z_range), tuple(args.lines))
        return
    if args.store:
        scan_store(args.store, basis, configs, tuple(args.z_range), args.scan_threads, args.smooth,
                   tuple(args.lines))
        return
    for k, q, stride in configs:
        t0 = time.perf_counter()
        sc = ZScanner.from_refine_basis(basis, tuple(args.z_range), n_templates=k, n_poly=q,
                                        stride=stride)
        setup = time.perf_counter() - t0
        flux, ivar, z_true = make_spectra(sc, basis.table[::basis.oversample], args.n, args.snr,
                                          np.random.default_rng(7), args.tilt)
        sc.scan(flux[:8], ivar[:8], threads=args.scan_threads)  # warm-up
        w0, c0 = time.perf_counter(), time.process_time()
        res = sc.scan(flux, ivar, chunk=args.chunk, threads=args.scan_threads)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        z_best, dchi2, n_min = scan_summary(res)
        good = np.abs(z_best - z_true) / (1 + z_true) < 1e-3
        print(f"K={k:2d} poly={q} stride={stride}: S={sc.n_trial} L={sc.fft_len} "
              f"setup {setup:.2f} s; {1e3 * wall / args.n:.2f} ms/object wall, {1e3 * cpu / args.n:.2f} ms CPU "
              f"({args.threads} threads); |dz|/(1+z)<1e-3: {good.mean():.3f}; median dchi2 {np.median(dchi2):.0f}")
        if stride == 1 and q == 0:  # float32 FFTs against float64 ones on the same data
            ref = ZScanner.from_refine_basis(basis, tuple(args.z_range), n_templates=k, fft_double=True)
            r64 = ref.scan(flux[:32], ivar[:32])
            err = np.max(np.abs(res.chi2[:32] - r64.chi2) / r64.chi2_zero[:, None])
            rel = np.max(np.abs(res.chi2[:32] - r64.chi2) / np.maximum(r64.chi2, 1))
            print(f"  float32 vs float64 FFTs: max |dchi2| = {err:.1e} of chi2_zero, {rel:.1e} of chi2")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
