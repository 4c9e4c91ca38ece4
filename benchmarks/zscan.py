"""Speed and accuracy of the full-range template scan (mtopnet.zscan) on MOONS LR-like spectra.

Builds the refinement basis of the shipped templates on the default 4096-pixel grid, makes
N spectra from random positive combinations of the first three PCA vectors at random z in
0.6-3.0 (no lines), adds Gaussian noise at a given S/N per pixel and masks 5% of the pixels,
then times ``ZScanner.scan`` with torch.set_num_threads(2) for several bases. Prints ms per
object (wall and process CPU) and the fraction of objects whose scan minimum lies within
0.001 (1 + z) of the truth. Writes nothing.

    PYTHONPATH=src python benchmarks/zscan.py [--n 512] [--snr 5] [--z-range 0.5 3.3]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from mtopnet.preprocess import PreprocessConfig
from mtopnet.refine import RefineConfig, build_basis
from mtopnet.zscan import ZScanner, scan_summary


def make_spectra(scanner: ZScanner, table: np.ndarray, n: int, snr: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """flux, ivar (n, n_pix) and true z (n,): whole-pixel shifts of the scanner's own lattice,
    so the test is of the scan, not of sub-pixel interpolation."""
    idx = rng.integers(0, scanner.n_trial, n)
    z = scanner.z[idx]
    shifts = scanner.shift_lo + scanner.stride * (scanner.n_trial - 1 - idx)
    coef = np.stack([rng.uniform(0.7, 1.3, n), rng.uniform(-0.4, 0.4, n), rng.uniform(-0.3, 0.3, n)], 1)
    rows = shifts[:, None] + np.arange(scanner.n_pix)[None, :]
    rows_c = np.clip(rows, 0, len(table) - 1)
    model = np.einsum("npk,nk->np", table[rows_c][:, :, :3], coef) * ((rows >= 0) & (rows < len(table)))
    sigma = np.abs(model).mean(axis=1, keepdims=True) / snr
    flux = model + rng.normal(size=model.shape) * sigma
    ivar = np.broadcast_to(1 / sigma ** 2, flux.shape).copy()
    ivar[rng.random(ivar.shape) < 0.05] = 0
    return flux.astype(np.float32), ivar.astype(np.float32), z


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--snr", type=float, default=5.0)
    p.add_argument("--z-range", type=float, nargs=2, default=(0.5, 3.3))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--scan-threads", type=int, default=1, help="threads inside the scan (0: keep --threads)")
    args = p.parse_args()
    args.scan_threads = args.scan_threads or None
    torch.set_num_threads(args.threads)
    pre = PreprocessConfig()
    t0 = time.perf_counter()
    basis = build_basis(pre, tuple(args.z_range), 30.0, RefineConfig(lines=False))
    print(f"basis: {basis.table.shape} in {time.perf_counter() - t0:.2f} s")
    for k, q, stride, double in ((10, 0, 1, False), (10, 0, 2, False), (6, 0, 1, False), (6, 0, 2, False),
                                 (5, 0, 2, False), (6, 3, 1, False), (6, 3, 2, False), (10, 3, 2, False),
                                 (6, 0, 1, True)):
        t0 = time.perf_counter()
        sc = ZScanner.from_refine_basis(basis, tuple(args.z_range), n_templates=k, n_poly=q, fft_double=double,
                                        stride=stride)
        setup = time.perf_counter() - t0
        flux, ivar, z_true = make_spectra(sc, basis.table[::basis.oversample], args.n, args.snr,
                                          np.random.default_rng(7))
        sc.scan(flux[:8], ivar[:8], threads=args.scan_threads)  # warm-up
        w0, c0 = time.perf_counter(), time.process_time()
        res = sc.scan(flux, ivar, chunk=args.chunk, threads=args.scan_threads)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        z_best, dchi2, n_min = scan_summary(res)
        good = np.abs(z_best - z_true) / (1 + z_true) < 1e-3
        print(f"K={k:2d} poly={q} stride={stride} fft={'f64' if double else 'f32'}: S={sc.n_trial} L={sc.fft_len} "
              f"setup {setup:.2f} s; {1e3 * wall / args.n:.2f} ms/object wall, {1e3 * cpu / args.n:.2f} ms CPU "
              f"({args.threads} threads); |dz|/(1+z)<1e-3: {good.mean():.3f}; median dchi2 {np.median(dchi2):.0f}")
    print(f"load average: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
