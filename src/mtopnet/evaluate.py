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
  Both against the stars and star formation whose light the spectrum holds
  (:func:`mtopnet.store.spectrum_property`: the whole galaxy's when the store has no
  ``light_fraction``).

Plots (PNG, matplotlib Agg): success fraction vs H with the paper's prototype curve
(``success_vs_hmag.png``; ``success_vs_mag.png`` without the curve for another band),
dz vs z, purity vs completeness of the p_dz01 screening, p_dz01 reliability, interval
coverage, predicted vs true log M* and log SFR, and example spectra with their PDFs.
"""
from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .catalogue import match_ids, read_catalogue, read_catalogue_meta, read_truth, read_zbin_centres
from .config import UserError
from .constants import SUCCESS_DZ
from .plots import evaluation as figures
from .provenance import inputs_mismatch
from .store import open_store, spectrum_property, write_error, write_file_atomic

COMMAND = "evaluate"
HMAG_EDGES = (20.0, 21.0, 22.0, 23.0, 24.0, 24.5, 25.0, 25.5, 26.0)
ISSUE_BINS = (("H<=24", -math.inf, 24.0), ("24<H<=25", 24.0, 25.0), ("25<H<=25.5", 25.0, 25.5))


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
        bins = [(f"{lo:g}<H<={hi:g}", lo, hi) for lo, hi in zip(HMAG_EDGES[:-1], HMAG_EDGES[1:], strict=False)]
        return mag, "H", bins, list(ISSUE_BINS)
    mag = np.asarray(truth["mag"], dtype=np.float64)
    short = (band or "mag").split("-")[-1]
    finite = mag[np.isfinite(mag)]
    if not len(finite):
        return mag, short, [], []
    edges = np.arange(np.floor(finite.min() * 2) / 2, np.ceil(finite.max() * 2) / 2 + 0.25, 0.5)
    bins = [(f"{lo:g}<{short}<={hi:g}", float(lo), float(hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=False)]
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
        lo, hi = cat.get(f"Z_LO{level}"), cat.get(f"Z_HI{level}")
        if lo is not None and hi is not None:
            out[f"coverage{level}"] = float(np.mean((lo[sel] <= z_true[sel]) & (z_true[sel] <= hi[sel])))
    if "QOP" in cat:
        qop = cat["QOP"][sel]
        n_ok = max(int(ok.sum()), 1)
        for name, chosen in (("qop>=3", qop >= 3), ("qop4", qop == 4)):
            k = int(chosen.sum())
            out[name] = {"n": k, "fraction": float(k / n), "purity": _f(ok[chosen].mean()) if k else None,
                         "completeness": float((ok & chosen).sum() / n_ok)}
    if "P_DZ01" in cat:
        p = cat["P_DZ01"][sel]
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
    idx = match_ids(cat["TARGETID"], truth["id"])
    matched = idx >= 0
    if not matched.any():
        raise UserError("no catalogue id matches the truth store's ids")
    c = {k: v[matched] for k, v in cat.items() if k != "Z_PDF"}
    t = {k: np.asarray(v)[idx[matched]] for k, v in truth.items()}
    z_true = t["z"].astype(np.float64)
    z = c["Z"].astype(np.float64)
    everyone = np.ones(len(z), dtype=bool)
    hmag, band_name, mag_bins, issue_bins = selection_magnitude(t, band)
    sf = t["type"] == 0 if "type" in t else everyone
    out: dict[str, Any] = {"n_catalogue": int(len(cat["TARGETID"])), "n_matched": int(matched.sum()),
                           "selection_band": band_name,
                           "redshift": {"all": redshift_metrics(z, z_true, c, everyone)}}
    for name, lo, hi in issue_bins:
        out["redshift"][name] = redshift_metrics(z, z_true, c, (hmag > lo) & (hmag <= hi))
    out["redshift_by_hmag"] = {name: redshift_metrics(z, z_true, c, (hmag > lo) & (hmag <= hi))
                               for name, lo, hi in mag_bins}
    if "LOGMSTAR" in c and "logmstar" in t:
        true_m = spectrum_property(t, "logmstar")
        pm = {"all": property_metrics(c["LOGMSTAR"], c["LOGMSTAR_ERR"], true_m, everyone)}
        for name, lo, hi in issue_bins:
            pm[name] = property_metrics(c["LOGMSTAR"], c["LOGMSTAR_ERR"], true_m, (hmag > lo) & (hmag <= hi))
        out["logmstar"] = pm
    if "LOGSFR" in c and "logsfr" in t:
        true_s = spectrum_property(t, "logsfr")
        ps = {"star-forming": property_metrics(c["LOGSFR"], c["LOGSFR_ERR"], true_s, sf)}
        for name, lo, hi in issue_bins:
            ps[name] = property_metrics(c["LOGSFR"], c["LOGSFR_ERR"], true_s, sf & (hmag > lo) & (hmag <= hi))
        out["logsfr"] = ps
    if "P_DZ01" in c:
        ok = np.abs(z - z_true) < SUCCESS_DZ
        edges = np.linspace(0, 1, 11)
        which = np.clip(np.digitize(c["P_DZ01"], edges) - 1, 0, 9)
        out["reliability"] = [{"p_lo": float(edges[i]), "p_hi": float(edges[i + 1]), "n": int((which == i).sum()),
                               "p_mean": _f(c["P_DZ01"][which == i].mean()) if (which == i).any() else None,
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
    lines = ["# M-TOPnet evaluation", "",
             f"{m['n_matched']} of {m['n_catalogue']} catalogue rows matched to the truth.",
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
    for key, title in (("logmstar", "log M* of the light in the spectrum"),
                       ("logsfr", "log SFR of the light in the spectrum (star-forming, type 0)")):
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
    """Every figure of the report (:mod:`mtopnet.plots.evaluation`), on the matched rows."""
    idx = match_ids(cat["TARGETID"], truth["id"])
    m = idx >= 0
    c = {k: v[m] for k, v in cat.items()}
    t = {k: np.asarray(v)[idx[m]] for k, v in truth.items()}
    z, zt = c["Z"].astype(float), t["z"].astype(float)
    ok = np.abs(z - zt) < SUCCESS_DZ
    mag, band_name, _, _ = selection_magnitude(t, band)
    qop = c.get("QOP", np.ones(len(z), int))
    sf = t["type"] == 0 if "type" in t else np.ones(len(z), bool)
    files = [figures.success_vs_mag(ok, qop, mag, band_name, out), figures.dz_vs_z(z, zt, qop, out, max_points)]
    if "P_DZ01" in c:
        p = c["P_DZ01"].astype(float)
        files += [figures.screening(p, ok, qop, out), figures.reliability(p, ok, out)]
    files.append(figures.coverage(c, t, sf, out))
    files += figures.properties(c, t, sf, out)
    picks = _example_rows(ok, qop, mag, band_name)
    if picks:
        files.append(figures.examples(picks, c, zt, mag, band_name, idx[m], truth_path, zbin_centres, out))
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
    for col in ("TARGETID", "Z"):
        if col not in cat:
            raise UserError(f"{catalogue}: no column {col!r}")
    tr = read_truth(truth)
    band = read_band(truth)
    out = Path(report_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    metrics = compute_metrics(cat, tr, band)  # before the report folder: a failure leaves none
    metrics["catalogue"] = str(catalogue)
    metrics["truth"] = str(truth)
    said = [inputs_mismatch(read_catalogue_meta(catalogue), [truth], "--truth")]
    if metrics["n_matched"] < metrics["n_catalogue"]:
        said.append(f"only {metrics['n_matched']} of {metrics['n_catalogue']} catalogue rows have an id in "
                    f"{Path(truth).name}: the metrics are of those alone")
    metrics["warnings"] = [text for text in said if text]
    for text in metrics["warnings"]:
        warnings.warn(text, UserWarning, stacklevel=2)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from None
    write_file_atomic(out / "metrics.json", json.dumps(metrics, indent=1).encode())
    write_file_atomic(out / "metrics.md", metrics_markdown(metrics).encode())
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


__all__ = ["HMAG_EDGES", "ISSUE_BINS", "read_band", "selection_magnitude", "redshift_metrics", "property_metrics",
           "compute_metrics", "metrics_markdown", "evaluate", "COMMAND", "add_arguments", "run_cli"]
