"""Figures of simulated spectra: examples with lines marked, continuum S/N against magnitude."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..config import Exposure  # noqa: E402
from ..constants import C_AA_PER_S, MASK_BAD, MASK_SKYLINE, MASK_TELLURIC  # noqa: E402
from ..instruments import Instrument, observe_arm  # noqa: E402

MAIN_LINES = {  # vacuum rest wavelengths, A
    "[OII]": 3728.5, "CaII K": 3934.8, "CaII H": 3969.6, "Hb": 4862.7, "[OIII]": 5008.2,
    "Mgb": 5176.7, "NaD": 5895.6, "Ha": 6564.6, "[SII]": 6725.5, "[SIII]": 9533.2, "HeI": 10833.3,
}


def flat_fnu_snr(inst: Instrument, mags: np.ndarray, exposure: Exposure, n: int = 16,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Median S/N per pixel of a flat f_nu point source, per arm and magnitude.

    S/N = noiseless calibrated flux x sqrt(ivar), over pixels with no mask bit set.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for arm in inst.arms:
        resp = arm.response(exposure.airmass, exposure.seeing, exposure.total / exposure.n_sub)
        vals = []
        for mag in mags:
            fnu = 10 ** (-0.4 * (mag + 48.6))
            src = np.tile(fnu * C_AA_PER_S / arm.fine_wave ** 2 / 1e-17, (n, 1))
            s = observe_arm(arm, src, exposure, rng)
            expected = arm.convolve_and_bin(src[:1] * resp.telluric_fine)[0] / resp.telluric_pixel
            good = s.mask[0] == 0
            vals.append(np.median(expected[good] * np.sqrt(s.ivar[0, good])))
        out[arm.name] = np.array(vals)
    return out


def continuum_snr(batch) -> np.ndarray:
    """(N,) median S/N per pixel over all arms' clean pixels (no mask bit set)."""
    snr = []
    for arm in batch.arms.values():
        clean = arm["mask"] == 0
        snr.append(np.where(clean, arm["flux"] * np.sqrt(arm["ivar"]), np.nan))
    return np.nanmedian(np.concatenate(snr, axis=1), axis=1)


def plot_examples(examples: list[dict], inst: Instrument, path: str | Path) -> None:
    """One panel per example: flux, 1-sigma noise, sky-subtraction residual level, lines.

    examples: dicts with 'z', 'hmag', 'arms' (arm -> dict(wave, flux, ivar, mask)), 'label'.
    """
    fig, axes = plt.subplots(len(examples), 1, figsize=(13, 3.2 * len(examples)), squeeze=False)
    for ax, ex in zip(axes[:, 0], examples, strict=False):
        top = 0.0
        for arm in inst.arms:
            d = ex["arms"][arm.name]
            resp = arm.response(ex["exposure"].airmass, ex["exposure"].seeing,
                                ex["exposure"].total / ex["exposure"].n_sub)
            w, f, iv, m = d["wave"], d["flux"], d["ivar"], d["mask"]
            good = (m & MASK_BAD) == 0
            sig = np.where(good & (iv > 0), 1 / np.sqrt(np.maximum(iv, 1e-30)), np.nan)
            calib = ex["exposure"].n_sub * resp.electrons_per_flux * arm.aperture_fraction(
                ex["exposure"].seeing, ex["exposure"].airmass, 0.0) * resp.telluric_pixel
            residual = ex["exposure"].sky_residual * ex["exposure"].n_sub * resp.sky_electrons / calib
            ax.plot(w, np.where(good, f, np.nan), lw=0.4, color="k")
            ax.plot(w, sig, lw=0.4, color="tab:orange", label="1-sigma noise" if arm is inst.arms[0] else None)
            ax.plot(w, -np.where(good, residual, np.nan), lw=0.4, color="tab:blue",
                    label=(f"sky residual ({ex['exposure'].sky_residual:.0%} of sky, 1 sigma)"
                           if arm is inst.arms[0] else None))
            flagged = (m & (MASK_SKYLINE | MASK_TELLURIC)) > 0
            ax.fill_between(w, -1e3, 1e3, where=flagged, color="0.9", lw=0, step="mid")
            clean = (m == 0)
            if clean.any():
                top = max(top, np.percentile(f[clean], 99.5))
        for name, rest in MAIN_LINES.items():
            obs = rest * (1 + ex["z"])
            if inst.wave_range[0] < obs < inst.wave_range[1]:
                ax.axvline(obs, color="tab:red", lw=0.6, ls=":")
                ax.text(obs, 1.02, name, transform=ax.get_xaxis_transform(), rotation=90, fontsize=7,
                        ha="center", va="bottom", color="tab:red")
        ax.set_ylim(-0.6 * top, 1.6 * top)
        ax.set_xlim(*inst.wave_range)
        ax.set_ylabel("flux [1e-17 erg/s/cm2/A]")
        ax.set_title(ex["label"], fontsize=9, loc="left", pad=22)
        ax.legend(loc="upper right", fontsize=7, frameon=False)
    axes[-1, 0].set_xlabel("vacuum wavelength [A]   (grey: strong sky lines and telluric bands, masked)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_snr_vs_mag(mags: np.ndarray, curves: dict[str, np.ndarray], path: str | Path,
                    galaxies: tuple[np.ndarray, np.ndarray] | None = None, title: str = "") -> None:
    """Median continuum S/N per pixel against H magnitude, per arm (+ galaxies if given)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, vals in curves.items():
        ax.plot(mags, vals, marker="o", ms=3, label=f"flat f_nu point source, {name} arm")
    if galaxies is not None:
        ax.scatter(galaxies[0], galaxies[1], s=3, color="0.5", alpha=0.5, label="simulated galaxies, all arms")
    ax.set_yscale("log")
    ax.set_xlabel("H (AB)")
    ax.set_ylabel("median continuum S/N per pixel")
    ax.axhline(1, color="k", lw=0.5)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
