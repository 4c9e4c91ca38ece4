"""evaluate a catalogue against the truth store: metrics.json, metrics.md and plots

``evaluate(catalogue, truth_store, report_dir)`` matches catalogue rows to the store's
objects by ``id`` and reports, overall and per bin of the selection magnitude (H for
stores simulated in 2MASS H, ``labels/hmag``; the band of ``simulate --band`` otherwise,
``labels/mag``, in 0.5 mag bins; the metrics' ``selection_band`` names it):

* redshift: fraction with |dz| < 0.01 (also 0.0025, 0.005, 0.1), catastrophic fraction
  (|dz| / (1 + z) > 0.05), sigma_NMAD of dz / (1 + z) among |dz| < 0.01, coverage of the
  68% and 95% intervals, purity and completeness of the QOP >= 3 and QOP 4 selections,
  and the reliability of ``p_dz01`` (mean predicted vs observed success per bin);
* log M*: bias (median of predicted - true), robust scatter (1.4826 x MAD), coverage of
  +-1 sigma and +-2 sigma; log SFR: the same for star-forming objects (``type == 0``).

Plots (PNG, matplotlib Agg): success fraction vs H with the paper's prototype curve
(``success_vs_hmag.png``; ``success_vs_mag.png`` without the curve for another band),
dz vs z, purity vs completeness of the p_dz01 screening, p_dz01 reliability, interval
coverage, predicted vs true log M* and log SFR, and example spectra with their PDFs.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .config import UserError  # noqa: E402
from .lines import LINES  # noqa: E402
from .catalogue import match_ids, read_catalogue, read_truth, read_zbin_centres  # noqa: E402
from .constants import SUCCESS_DZ  # noqa: E402
from .store import open_store, read_store  # noqa: E402

COMMAND = "evaluate"
HMAG_EDGES = (20.0, 21.0, 22.0, 23.0, 24.0, 24.5, 25.0, 25.5, 26.0)
ISSUE_BINS = (("H<=24", -math.inf, 24.0), ("24<H<=25", 24.0, 25.0), ("25<H<=25.5", 25.0, 25.5))
PAPER_CURVE_H = np.array([20.0, 23.9, 24.1, 24.3, 24.5, 24.7, 24.9, 25.1, 25.3, 25.5, 25.7, 25.9])
PAPER_CURVE_FRAC = np.array([0.93, 0.93, 0.91, 0.88, 0.84, 0.79, 0.74, 0.66, 0.59, 0.51, 0.43, 0.38])
"""The prototype's success fraction (|dz| < 0.01, before screening) vs H AB (PAPER.md);
0.91-0.95 for H 20-23.9, drawn as 0.93 with a band."""


def read_band(path: str | Path) -> str | None:
    """The selection band a simulated store records in its provenance (None if absent)."""
    with open_store(path) as f:
        raw = f.attrs.get("provenance")
    try:
        return json.loads(raw).get("band") if raw is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


def selection_magnitude(truth: dict[str, np.ndarray], band: str | None = None
                        ) -> tuple[np.ndarray, str, list[tuple[str, float, float]], list[tuple[str, float, float]]]:
    """The selection magnitude of the matched truth rows and how to bin it.

    Returns (mag (N,), short band name, bins [(name, lo, hi)], issue bins [(name, lo, hi)]):
    H with :data:`HMAG_EDGES` and :data:`ISSUE_BINS` for ``hmag``; for ``mag`` (another band)
    0.5 mag bins over its range and no issue bins.
    """
    n = len(truth["z"])
    if "hmag" in truth or "mag" not in truth:
        mag = np.asarray(truth.get("hmag", np.full(n, np.nan)), dtype=np.float64)
        bins = [(f"{lo:g}<H<={hi:g}", lo, hi) for lo, hi in zip(HMAG_EDGES[:-1], HMAG_EDGES[1:])]
        return mag, "H", bins, list(ISSUE_BINS)
    mag = np.asarray(truth["mag"], dtype=np.float64)
    short = (band or "mag").split("-")[-1]
    finite = mag[np.isfinite(mag)]
    if not len(finite):
        return mag, short, [], []
    edges = np.arange(np.floor(finite.min() * 2) / 2, np.ceil(finite.max() * 2) / 2 + 0.25, 0.5)
    bins = [(f"{lo:g}<{short}<={hi:g}", float(lo), float(hi)) for lo, hi in zip(edges[:-1], edges[1:])]
    return mag, short, bins, []


# ----------------------------------------------------------------------------- metrics


def _f(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def redshift_metrics(z: np.ndarray, z_true: np.ndarray, cat: dict[str, np.ndarray], sel: np.ndarray) -> dict:
    """Redshift metrics of the rows ``sel`` (bool mask)."""
    n = int(sel.sum())
    if n == 0:
        return {"n": 0}
    dz = z[sel] - z_true[sel]
    ok = np.abs(dz) < SUCCESS_DZ
    rel = dz / (1 + z_true[sel])
    good_rel = rel[ok]
    nmad = 1.4826 * np.median(np.abs(good_rel - np.median(good_rel))) if len(good_rel) else np.nan
    out: dict[str, Any] = {
        "n": n,
        "frac_dz01": float(ok.mean()),
        "frac_dz0025": float(np.mean(np.abs(dz) < 0.0025)),
        "frac_dz005": float(np.mean(np.abs(dz) < 0.005)),
        "frac_dz1": float(np.mean(np.abs(dz) < 0.1)),
        "catastrophic": float(np.mean(np.abs(rel) > 0.05)),
        "sigma_nmad": _f(nmad),
    }
    for level in ("68", "95"):
        lo, hi = cat.get(f"z_lo{level}"), cat.get(f"z_hi{level}")
        if lo is not None and hi is not None:
            out[f"coverage{level}"] = float(np.mean((lo[sel] <= z_true[sel]) & (z_true[sel] <= hi[sel])))
    if "qop" in cat:
        qop = cat["qop"][sel]
        n_ok = max(int(ok.sum()), 1)
        for name, chosen in (("qop>=3", qop >= 3), ("qop4", qop == 4)):
            k = int(chosen.sum())
            out[name] = {"n": k, "fraction": float(k / n), "purity": _f(ok[chosen].mean()) if k else None,
                         "completeness": float((ok & chosen).sum() / n_ok)}
    if "p_dz01" in cat:
        p = cat["p_dz01"][sel]
        out["p_dz01_mean"] = float(p.mean())
        out["brier"] = float(np.mean((p - ok) ** 2))
    return out


def property_metrics(pred: np.ndarray, err: np.ndarray, true: np.ndarray, sel: np.ndarray) -> dict:
    """Bias, robust scatter and +-1/2 sigma coverage of a log quantity over rows ``sel``."""
    sel = sel & np.isfinite(true) & np.isfinite(pred)
    n = int(sel.sum())
    if n == 0:
        return {"n": 0}
    d = pred[sel] - true[sel]
    pull = np.abs(d) / np.maximum(err[sel], 1e-6)
    return {"n": n, "bias": float(np.median(d)), "scatter": float(1.4826 * np.median(np.abs(d - np.median(d)))),
            "rms": float(np.sqrt(np.mean(d ** 2))), "coverage68": float(np.mean(pull <= 1.0)),
            "coverage95": float(np.mean(pull <= 2.0)), "median_err": float(np.median(err[sel]))}


def compute_metrics(cat: dict[str, np.ndarray], truth: dict[str, np.ndarray], band: str | None = None) -> dict:
    """All metrics of catalogue ``cat`` against ``truth`` (both dicts of column arrays).

    band: the selection band of a ``labels/mag`` store (for naming its bins)."""
    idx = match_ids(cat["id"], truth["id"])
    matched = idx >= 0
    if not matched.any():
        raise UserError("no catalogue id matches the truth store's ids")
    c = {k: v[matched] for k, v in cat.items() if k != "z_pdf"}
    t = {k: np.asarray(v)[idx[matched]] for k, v in truth.items()}
    z_true = t["z"].astype(np.float64)
    z = c["z"].astype(np.float64)
    everyone = np.ones(len(z), dtype=bool)
    hmag, band_name, mag_bins, issue_bins = selection_magnitude(t, band)
    sf = t["type"] == 0 if "type" in t else everyone
    out: dict[str, Any] = {"n_catalogue": int(len(cat["id"])), "n_matched": int(matched.sum()),
                           "selection_band": band_name,
                           "redshift": {"all": redshift_metrics(z, z_true, c, everyone)}}
    for name, lo, hi in issue_bins:
        out["redshift"][name] = redshift_metrics(z, z_true, c, (hmag > lo) & (hmag <= hi))
    out["redshift_by_hmag"] = {name: redshift_metrics(z, z_true, c, (hmag > lo) & (hmag <= hi))
                               for name, lo, hi in mag_bins}
    if "logmstar" in c and "logmstar" in t:
        pm = {"all": property_metrics(c["logmstar"], c["logmstar_err"], t["logmstar"].astype(float), everyone)}
        for name, lo, hi in issue_bins:
            pm[name] = property_metrics(c["logmstar"], c["logmstar_err"], t["logmstar"].astype(float),
                                        (hmag > lo) & (hmag <= hi))
        out["logmstar"] = pm
    if "logsfr" in c and "logsfr" in t:
        ps = {"star-forming": property_metrics(c["logsfr"], c["logsfr_err"], t["logsfr"].astype(float), sf)}
        for name, lo, hi in issue_bins:
            ps[name] = property_metrics(c["logsfr"], c["logsfr_err"], t["logsfr"].astype(float),
                                        sf & (hmag > lo) & (hmag <= hi))
        out["logsfr"] = ps
    if "p_dz01" in c:
        ok = np.abs(z - z_true) < SUCCESS_DZ
        edges = np.linspace(0, 1, 11)
        which = np.clip(np.digitize(c["p_dz01"], edges) - 1, 0, 9)
        out["reliability"] = [{"p_lo": float(edges[i]), "p_hi": float(edges[i + 1]), "n": int((which == i).sum()),
                               "p_mean": _f(c["p_dz01"][which == i].mean()) if (which == i).any() else None,
                               "success": _f(ok[which == i].mean()) if (which == i).any() else None}
                              for i in range(10)]
    return out


# ----------------------------------------------------------------------------- report


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def metrics_markdown(m: dict) -> str:
    """The metrics as Markdown tables."""
    lines = ["# M-TOPnet evaluation", "", f"{m['n_matched']} of {m['n_catalogue']} catalogue rows matched to the truth.",
             "", "## Redshift", "",
             "| selection | n | \\|dz\\|<0.01 | \\|dz\\|<0.005 | catastrophic | sigma_NMAD | cov68 | cov95 | "
             "qop>=3 frac | qop>=3 purity | qop>=3 compl. | qop4 frac | qop4 purity | qop4 compl. |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = list(m["redshift"].items()) + list(m["redshift_by_hmag"].items())
    for name, r in rows:
        if not r.get("n"):
            lines.append(f"| {name} | 0 | - | - | - | - | - | - | - | - | - | - | - | - |")
            continue
        q3, q4 = r.get("qop>=3", {}), r.get("qop4", {})
        lines.append(f"| {name} | {r['n']} | {_fmt(r['frac_dz01'])} | {_fmt(r['frac_dz005'])} | "
                     f"{_fmt(r['catastrophic'])} | {_fmt(r['sigma_nmad'], 5)} | {_fmt(r.get('coverage68'))} | "
                     f"{_fmt(r.get('coverage95'))} | {_fmt(q3.get('fraction'))} | {_fmt(q3.get('purity'))} | "
                     f"{_fmt(q3.get('completeness'))} | {_fmt(q4.get('fraction'))} | {_fmt(q4.get('purity'))} | "
                     f"{_fmt(q4.get('completeness'))} |")
    for key, title in (("logmstar", "log M*"), ("logsfr", "log SFR (star-forming, type 0)")):
        if key not in m:
            continue
        lines += ["", f"## {title}", "", "| selection | n | bias | scatter (1.4826 MAD) | rms | cov68 | cov95 |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in m[key].items():
            if not r.get("n"):
                lines.append(f"| {name} | 0 | - | - | - | - | - |")
                continue
            lines.append(f"| {name} | {r['n']} | {_fmt(r['bias'])} | {_fmt(r['scatter'])} | {_fmt(r['rms'])} | "
                         f"{_fmt(r['coverage68'])} | {_fmt(r['coverage95'])} |")
    if "reliability" in m:
        lines += ["", "## p_dz01 reliability", "", "| p_dz01 bin | n | mean p_dz01 | observed \\|dz\\|<0.01 |",
                  "|---|---|---|---|"]
        for r in m["reliability"]:
            lines.append(f"| {r['p_lo']:.1f}-{r['p_hi']:.1f} | {r['n']} | {_fmt(r['p_mean'])} | {_fmt(r['success'])} |")
    return "\n".join(lines) + "\n"


def _plots(cat: dict[str, np.ndarray], truth: dict[str, np.ndarray], truth_path: Path, out: Path,
           zbin_centres: np.ndarray | None = None, max_points: int = 20000, band: str | None = None) -> list[Path]:
    idx = match_ids(cat["id"], truth["id"])
    m = idx >= 0
    c = {k: v[m] for k, v in cat.items()}
    t = {k: np.asarray(v)[idx[m]] for k, v in truth.items()}
    z, zt = c["z"].astype(float), t["z"].astype(float)
    ok = np.abs(z - zt) < SUCCESS_DZ
    hmag, band_name, _, _ = selection_magnitude(t, band)
    is_h = band_name == "H"
    qop = c.get("qop", np.ones(len(z), int))
    files = []

    def save(fig: plt.Figure, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        files.append(path)

    # success fraction vs H
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
    save(fig, "success_vs_hmag.png" if is_h else "success_vs_mag.png")

    # dz vs z
    sub = np.random.default_rng(0).permutation(len(z))[:max_points]
    fig, ax = plt.subplots(figsize=(6, 4))
    sc = ax.scatter(zt[sub], (z - zt)[sub], c=qop[sub], s=3, cmap="viridis", vmin=1, vmax=4)
    ax.axhline(SUCCESS_DZ, color="r", lw=0.5)
    ax.axhline(-SUCCESS_DZ, color="r", lw=0.5)
    ax.set(xlabel="z true", ylabel="z - z true", yscale="symlog")
    ax.set_yscale("symlog", linthresh=0.01)
    fig.colorbar(sc, label="qop")
    save(fig, "dz_vs_z.png")

    # purity vs completeness of the p_dz01 screening
    if "p_dz01" in c:
        p = c["p_dz01"].astype(float)
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
        save(fig, "screening.png")

        edges = np.linspace(0, 1, 11)
        which = np.clip(np.digitize(p, edges) - 1, 0, 9)
        pm = [p[which == i].mean() if (which == i).any() else np.nan for i in range(10)]
        ob = [ok[which == i].mean() if (which == i).any() else np.nan for i in range(10)]
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], "k:")
        ax.plot(pm, ob, "o-")
        ax.set(xlabel="predicted p_dz01", ylabel="observed fraction |dz| < 0.01", xlim=(0, 1), ylim=(0, 1))
        save(fig, "reliability.png")

    # interval coverage
    labels, nominal, observed = [], [], []
    for lv, nom in (("68", 0.68), ("95", 0.95)):
        if f"z_lo{lv}" in c:
            labels.append(f"z {lv}%")
            nominal.append(nom)
            observed.append(np.mean((c[f"z_lo{lv}"] <= zt) & (zt <= c[f"z_hi{lv}"])))
    sf = t["type"] == 0 if "type" in t else np.ones(len(z), bool)
    for key, sel in (("logmstar", np.ones(len(z), bool)), ("logsfr", sf)):
        if key in c and key in t:
            tt = t[key].astype(float)
            s = sel & np.isfinite(tt)
            if s.any():
                pull = np.abs(c[key][s] - tt[s]) / np.maximum(c[f"{key}_err"][s], 1e-6)
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
    save(fig, "coverage.png")

    # predicted vs true properties
    for key, sel, label in (("logmstar", np.ones(len(z), bool), "log M* [Msun]"),
                            ("logsfr", sf, "log SFR [Msun/yr] (star-forming)")):
        if key in c and key in t:
            tt = t[key].astype(float)
            s = sel & np.isfinite(tt)
            fig, ax = plt.subplots(figsize=(4.5, 4.5))
            if s.any():
                ax.hexbin(tt[s], c[key][s], gridsize=50, mincnt=1, bins="log", cmap="Blues")
                lo, hi = np.percentile(np.concatenate([tt[s], c[key][s]]), [0.5, 99.5])
                ax.plot([lo, hi], [lo, hi], "k:")
            ax.set(xlabel=f"true {label}", ylabel=f"predicted {label}")
            save(fig, f"{key}.png")

    # example spectra with their PDFs
    picks = _example_rows(ok, qop, hmag, band_name)
    if picks:
        fig, axes = plt.subplots(len(picks), 2, figsize=(11, 2.3 * len(picks)), squeeze=False,
                                 gridspec_kw={"width_ratios": [3, 1]})
        for row, (i, title) in enumerate(picks):
            store_row = int(idx[m][i])
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
            ax.set_title(f"{title}: id {c['id'][i]}, {band_name}={hmag[i]:.1f}, z={zt[i]:.4f}, z_pred={z[i]:.4f}, "
                         f"qop {qop[i]}", fontsize=8)
            ax.set_ylabel("flux [1e-17]", fontsize=7)
            ax2 = axes[row, 1]
            if "z_pdf" in c and zbin_centres is not None and len(zbin_centres) == c["z_pdf"].shape[1]:
                ax2.plot(zbin_centres, c["z_pdf"][i], lw=0.8)
                ax2.set_ylabel("p per bin", fontsize=7)
            else:
                ax2.axvspan(c["z_lo95"][i], c["z_hi95"][i], alpha=0.2, label="95%")
                ax2.axvspan(c["z_lo68"][i], c["z_hi68"][i], alpha=0.3, label="68%")
            ax2.axvline(zt[i], color="g", lw=1, label="true")
            ax2.axvline(z[i], color="r", lw=1, ls="--", label="pred")
            ax2.set_xlabel("z", fontsize=7)
            ax2.legend(fontsize=6)
        axes[-1, 0].set_xlabel("wavelength [A]")
        save(fig, "examples.png")
    return files


def _example_rows(ok: np.ndarray, qop: np.ndarray, hmag: np.ndarray, band_name: str = "H") -> list[tuple[int, str]]:
    picks = []
    if band_name == "H":
        faint = ("faint (H > 25)", hmag > 25)
    else:
        cut = np.nanpercentile(hmag, 90) if np.isfinite(hmag).any() else np.inf
        faint = (f"faint ({band_name} > {cut:.1f})", hmag > cut)
    for title, sel in (("qop 4 success", ok & (qop == 4)), ("qop 3", qop == 3), ("failure", ~ok), faint):
        cand = np.flatnonzero(sel)
        if len(cand):
            picks.append((int(cand[len(cand) // 2]), title))
    return picks


def evaluate(catalogue: str | Path, truth: str | Path, report_dir: str | Path, plots: bool = True) -> dict:
    """Metrics of ``catalogue`` against ``truth`` into ``report_dir`` (metrics.json/.md, PNGs)."""
    cat = read_catalogue(catalogue)
    for col in ("id", "z"):
        if col not in cat:
            raise UserError(f"{catalogue}: no column {col!r}")
    tr = read_truth(truth)
    band = read_band(truth)
    out = Path(report_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(cat, tr, band)
    metrics["catalogue"] = str(catalogue)
    metrics["truth"] = str(truth)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "metrics.md").write_text(metrics_markdown(metrics))
    if plots:
        metrics["plots"] = [str(p) for p in _plots(cat, tr, Path(truth), out, read_zbin_centres(catalogue),
                                                   band=band)]
    return metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("catalogue", help="catalogue from `mtopnet predict` (.fits, .parquet, .csv)")
    p.add_argument("--truth", required=True, help="the store holding the true labels (HDF5)")
    p.add_argument("--report", required=True, help="output folder for metrics and plots")
    p.add_argument("--no-plots", action="store_true", help="metrics only")


def run_cli(args: argparse.Namespace) -> int:
    m = evaluate(args.catalogue, args.truth, args.report, plots=not args.no_plots)
    r = m["redshift"]["all"]
    print(f"{m['n_matched']} objects: |dz|<0.01 {r['frac_dz01']:.3f}, catastrophic {r['catastrophic']:.3f}; "
          f"report in {args.report}")
    return 0


__all__ = ["HMAG_EDGES", "ISSUE_BINS", "PAPER_CURVE_H", "PAPER_CURVE_FRAC", "read_catalogue", "read_zbin_centres", "read_truth", "read_band", "selection_magnitude",
           "match_ids", "redshift_metrics", "property_metrics", "compute_metrics", "metrics_markdown", "evaluate",
           "COMMAND", "add_arguments", "run_cli"]
