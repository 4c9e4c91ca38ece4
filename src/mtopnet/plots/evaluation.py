"""Figures of an evaluation (:func:`mtopnet.evaluate.evaluate`): one function per figure.

Each takes the matched catalogue and truth arrays (equal length, row i of one is row i of
the other) and writes one PNG (matplotlib Agg), returning its path.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..constants import SUCCESS_DZ  # noqa: E402
from ..lines import LINES  # noqa: E402
from ..store import read_store, spectrum_property, write_file_atomic  # noqa: E402

PAPER_CURVE_H = np.array([20.0, 23.9, 24.1, 24.3, 24.5, 24.7, 24.9, 25.1, 25.3, 25.5, 25.7, 25.9])
PAPER_CURVE_FRAC = np.array([0.93, 0.93, 0.91, 0.88, 0.84, 0.79, 0.74, 0.66, 0.59, 0.51, 0.43, 0.38])
"""The prototype's success fraction (|dz| < 0.01, before screening) vs H AB (PAPER.md);
0.91-0.95 for H 20-23.9, drawn as 0.93 with a band."""


def _save(fig: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()  # rendered in memory, written atomically: a full disk is a one-line UserError
    try:
        fig.savefig(buffer, dpi=110, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    write_file_atomic(path, buffer.getbuffer())
    return path


def success_vs_mag(ok: np.ndarray, qop: np.ndarray, mag: np.ndarray, band_name: str, out: Path) -> Path:
    """Success fraction (|dz| < 0.01) vs the selection magnitude, all and QOP >= 3, in 0.25 mag
    bins of >= 5 objects; with the paper's prototype curve for H. ``success_vs_hmag.png`` (H)
    or ``success_vs_mag.png``."""
    hmag = mag
    is_h = band_name == "H"
    fig, ax = plt.subplots(figsize=(6, 4))
    finite = np.isfinite(hmag)
    if finite.any():
        edges = np.arange(np.floor(np.nanmin(hmag[finite]) * 4) / 4, np.nanmax(hmag[finite]) + 0.25, 0.25)
        if len(edges) >= 2:
            which = np.digitize(hmag, edges) - 1
            centres = 0.5 * (edges[1:] + edges[:-1])
            frac = [ok[which == i].mean() if (which == i).sum() >= 5 else np.nan for i in range(len(centres))]
            frac_q = [ok[(which == i) & (qop >= 3)].mean() if ((which == i) & (qop >= 3)).sum() >= 5 else np.nan
                      for i in range(len(centres))]
            ax.plot(centres, frac, "o-", label="M-TOPnet (all)")
            ax.plot(centres, frac_q, "s--", label="M-TOPnet (qop >= 3)")
    if is_h:
        ax.plot(PAPER_CURVE_H, PAPER_CURVE_FRAC, "k:", lw=2, label="paper prototype")
        ax.fill_between([20.0, 23.9], 0.91, 0.95, color="k", alpha=0.1)
    ax.set(xlabel=f"{band_name} (AB)", ylabel="fraction |dz| < 0.01", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return _save(fig, out / ("success_vs_hmag.png" if is_h else "success_vs_mag.png"))


def dz_vs_z(z: np.ndarray, zt: np.ndarray, qop: np.ndarray, out: Path, max_points: int = 20000) -> Path:
    """z - z_true against z_true coloured by QOP (at most ``max_points``, a fixed random subset). ``dz_vs_z.png``."""
    sub = np.random.default_rng(0).permutation(len(z))[:max_points]
    fig, ax = plt.subplots(figsize=(6, 4))
    sc = ax.scatter(zt[sub], (z - zt)[sub], c=qop[sub], s=3, cmap="viridis", vmin=1, vmax=4)
    ax.axhline(SUCCESS_DZ, color="r", lw=0.5)
    ax.axhline(-SUCCESS_DZ, color="r", lw=0.5)
    ax.set(xlabel="z true", ylabel="z - z true", yscale="symlog")
    ax.set_yscale("symlog", linthresh=0.01)
    fig.colorbar(sc, label="qop")
    return _save(fig, out / "dz_vs_z.png")


def screening(p: np.ndarray, ok: np.ndarray, qop: np.ndarray, out: Path) -> Path:
    """Purity vs completeness of a p_dz01 threshold, with the QOP >= 3 and QOP 4 selections. ``screening.png``."""
    order = np.argsort(-p)
    cum = np.cumsum(ok[order])
    purity = cum / np.arange(1, len(p) + 1)
    completeness = cum / max(ok.sum(), 1)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(completeness, purity, label="p_dz01 threshold")
    for name, sel, mk in (("qop >= 3", qop >= 3, "o"), ("qop 4", qop == 4, "s")):
        if sel.any():
            ax.plot([(ok & sel).sum() / max(ok.sum(), 1)], [ok[sel].mean()], mk, label=name)
    ax.set(xlabel="completeness (of successes)", ylabel="purity (|dz| < 0.01)", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return _save(fig, out / "screening.png")


def reliability(p: np.ndarray, ok: np.ndarray, out: Path) -> Path:
    """Observed success fraction against the mean p_dz01 in 10 bins of p_dz01. ``reliability.png``."""
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p, edges) - 1, 0, 9)
    pm = [p[which == i].mean() if (which == i).any() else np.nan for i in range(10)]
    ob = [ok[which == i].mean() if (which == i).any() else np.nan for i in range(10)]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:")
    ax.plot(pm, ob, "o-")
    ax.set(xlabel="predicted p_dz01", ylabel="observed fraction |dz| < 0.01", xlim=(0, 1), ylim=(0, 1))
    return _save(fig, out / "reliability.png")


def coverage(c: dict[str, np.ndarray], t: dict[str, np.ndarray], sf: np.ndarray, out: Path) -> Path:
    """Nominal vs observed coverage of the z intervals and of the log M* / log SFR errors
    (log SFR on star-forming ``sf`` objects). ``coverage.png``."""
    z, zt = c["Z"], t["z"].astype(float)
    labels, nominal, observed = [], [], []
    for lv, nom in (("68", 0.68), ("95", 0.95)):
        if f"Z_LO{lv}" in c:
            labels.append(f"z {lv}%")
            nominal.append(nom)
            observed.append(np.mean((c[f"Z_LO{lv}"] <= zt) & (zt <= c[f"Z_HI{lv}"])))
    for key, sel in (("logmstar", np.ones(len(z), bool)), ("logsfr", sf)):
        if key.upper() in c and key in t:
            tt = spectrum_property(t, key)
            s = sel & np.isfinite(tt)
            if s.any():
                pull = np.abs(c[key.upper()][s] - tt[s]) / np.maximum(c[f"{key.upper()}_ERR"][s], 1e-6)
                for k, nom in ((1.0, 0.6827), (2.0, 0.9545)):
                    labels.append(f"{key} {int(k)}s")
                    nominal.append(nom)
                    observed.append(np.mean(pull <= k))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, nominal, 0.4, label="nominal")
    ax.bar(x + 0.2, observed, 0.4, label="observed")
    ax.set_xticks(x, labels, rotation=30, fontsize=8)
    ax.set(ylabel="coverage", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    return _save(fig, out / "coverage.png")


def properties(c: dict[str, np.ndarray], t: dict[str, np.ndarray], sf: np.ndarray, out: Path) -> list[Path]:
    """Predicted vs true log M* (all) and log SFR (star-forming ``sf``), the truth of the light in the
    spectrum (:func:`mtopnet.store.spectrum_property`). ``logmstar.png``, ``logsfr.png``."""
    z = c["Z"]
    files = []
    for key, sel, label in (("logmstar", np.ones(len(z), bool), "log M* [Msun]"),
                            ("logsfr", sf, "log SFR [Msun/yr] (star-forming)")):
        if key.upper() in c and key in t:
            tt, pred = spectrum_property(t, key), c[key.upper()]
            s = sel & np.isfinite(tt)
            fig, ax = plt.subplots(figsize=(4.5, 4.5))
            if s.any():
                ax.hexbin(tt[s], pred[s], gridsize=50, mincnt=1, bins="log", cmap="Blues")
                lo, hi = np.percentile(np.concatenate([tt[s], pred[s]]), [0.5, 99.5])
                ax.plot([lo, hi], [lo, hi], "k:")
            ax.set(xlabel=f"true {label}, light in the spectrum", ylabel=f"predicted {label}")
            files.append(_save(fig, out / f"{key}.png"))
    return files


def pdf_zoom(centres: np.ndarray, pdf: np.ndarray, marks: tuple[float, ...] = (), floor: float = 0.01,
             margin: float = 0.02, min_span: float = 0.06) -> tuple[float, float]:
    """z range of a PDF panel: the bins holding >= ``floor`` of the PDF's maximum (its peaks) and
    the redshifts ``marks`` (e.g. true and predicted z), with ``margin``, at least ``min_span`` wide."""
    centres, pdf = np.asarray(centres, dtype=float), np.asarray(pdf, dtype=float)
    pts = np.concatenate([centres[pdf >= floor * np.nanmax(pdf)] if np.nanmax(pdf) > 0 else centres[[0, -1]],
                          [m for m in marks if np.isfinite(m)]])
    lo, hi = pts.min() - margin, pts.max() + margin
    mid, half = 0.5 * (lo + hi), max(0.5 * (hi - lo), 0.5 * min_span)
    return max(mid - half, centres[0]), min(mid + half, centres[-1])


def examples(picks: list[tuple[int, str]], c: dict[str, np.ndarray], zt: np.ndarray, mag: np.ndarray,
             band_name: str, store_rows: np.ndarray, truth_path: Path, zbin_centres: np.ndarray | None,
             out: Path) -> Path:
    """Example spectra (rows ``picks``: (matched row, title)), lines marked at the predicted z,
    beside their PDFs zoomed on the peaks (:func:`pdf_zoom`; intervals without a PDF); spectra
    read from the truth store at ``store_rows``. ``examples.png``."""
    z, qop, hmag = c["Z"].astype(float), c.get("QOP", np.ones(len(c["Z"]), int)), mag
    fig, axes = plt.subplots(len(picks), 2, figsize=(11, 2.5 * len(picks)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1]}, layout="constrained")
    for row, (i, title) in enumerate(picks):
        store_row = int(store_rows[i])
        b = read_store(truth_path, store_row, store_row + 1)
        ax = axes[row, 0]
        for arm in b.arms.values():
            f, iv, mk = arm["flux"][0], arm["ivar"][0], arm["mask"][0]
            good = (iv > 0) & (mk == 0) & np.isfinite(f)
            ff = np.where(good, f, np.nan)
            k = 5
            smooth = np.convolve(np.nan_to_num(ff), np.ones(k) / k, mode="same")
            ax.plot(arm["wave"], np.where(good, smooth, np.nan), lw=0.5, color="k")
        lo, hi = ax.get_xlim()
        for line in LINES:
            w = line.wave * (1 + z[i])
            if lo < w < hi:
                ax.axvline(w, color="tab:red" if line.kind == "emission" else "tab:blue", lw=0.4, alpha=0.6)
        ax.set_title(f"{title}: TARGETID {c['TARGETID'][i]}, {band_name}={hmag[i]:.1f}, z={zt[i]:.4f}, "
                     f"z_pred={z[i]:.4f}, qop {qop[i]}", fontsize=8, loc="left")
        ax.set_ylabel("flux [1e-17]", fontsize=7)
        ax2 = axes[row, 1]
        if "Z_PDF" in c and zbin_centres is not None and len(zbin_centres) == c["Z_PDF"].shape[1]:
            ax2.plot(zbin_centres, c["Z_PDF"][i], lw=0.8)
            ax2.set_xlim(*pdf_zoom(zbin_centres, c["Z_PDF"][i], (zt[i], z[i])))
            ax2.set_ylabel("p per bin", fontsize=7)
        else:
            ax2.axvspan(c["Z_LO95"][i], c["Z_HI95"][i], alpha=0.2, label="95%")
            ax2.axvspan(c["Z_LO68"][i], c["Z_HI68"][i], alpha=0.3, label="68%")
        ax2.axvline(zt[i], color="g", lw=1, label="true")
        ax2.axvline(z[i], color="r", lw=1, ls="--", label="pred")
        ax2.set_xlabel("z", fontsize=7)
        ax2.tick_params(labelsize=7)
        ax2.legend(fontsize=6)
    axes[-1, 0].set_xlabel("wavelength [A]")
    return _save(fig, out / "examples.png")


__all__ = ["PAPER_CURVE_H", "PAPER_CURVE_FRAC", "success_vs_mag", "dz_vs_z", "screening", "reliability", "coverage",
           "properties", "pdf_zoom", "examples"]
