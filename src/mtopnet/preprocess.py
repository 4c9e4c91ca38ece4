"""Spectra -> network inputs. ONE module, shared by training and inference.

From a :class:`~mtopnet.store.SpectraBatch` (any arms, any wavelength grids) to the arrays
M-TOPnet reads, on one logarithmic wavelength grid spanning the model's range:

1. **Rebinning.** Each arm is rebinned onto the grid by inverse-variance weighting, with a
   sparse overlap matrix (the fraction of each native pixel that falls in each grid pixel).
   A native pixel gets zero weight if any of ``mask_bits`` is set, if ``ivar <= 0``, or if
   flux or ivar are not finite (or absurd: ``|flux| >= 1e12``, ``ivar >= 1e12``). Overlapping
   arms combine by the same weighting; grid pixels no arm covers (arm gaps) stay empty, and so
   do gaps inside an arm or a merged table (pixels dropped): a native pixel reaches at most one
   typical local spacing from its centre (:func:`_native_bounds`).
2. **Continuum.** Per object, medians of the valid grid pixels in blocks of
   ``continuum_window_kms`` (half-overlapping), linearly interpolated between block centres.
   A block median ignores lines narrower than about half a block, so emission and absorption
   lines survive in the residual; a break (D4000, Balmer) turns into a ramp of one block's
   width in the residual and a step in the continuum input.
3. **Scale.** ``scale`` = median of the block medians, floored by the noise of a block median
   (``1.25 * sigma / sqrt(block)``, sigma the typical per-pixel noise) and by 1e-6, in
   1e-17 erg/s/cm2/A. It normalises both inputs; ``log10(scale)`` is given to the network,
   since the absolute flux carries stellar mass and SFR.
4. **Channels** of the spectrum input, (N, 2, n_pix):
   (0) ``(flux - continuum) / scale``, zero where invalid, clipped to +-``residual_clip``;
   (1) the weight ``s / (1 + s)`` with ``s = sqrt(ivar) * scale`` (the per-pixel S/N of a
   signal at the continuum level), zero where invalid: 0 masked, -> 1 well measured.
5. **Continuum input**, (N, 2 * n_continuum + 3): the continuum / scale averaged in
   ``n_continuum`` equal segments of the grid, the fraction of valid pixels in each segment,
   ``log10(scale)``, ``log10(sigma)`` (``log10(sigma / scale)`` with ``scale_free_noise``)
   and the valid fraction of the whole grid. Everything but ``log10(scale)`` (and, without
   ``scale_free_noise``, ``log10(sigma)``) is unchanged when flux and noise are multiplied
   by a constant.

No NaN or inf is ever emitted, whatever the input (NaN flux, negative ivar, empty arms,
all-masked objects). Per-object ``valid_fraction`` and ``bad_input`` let the caller flag
unusable objects. The constants live in :class:`PreprocessConfig`, which checkpoints store.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from .config import ConfigError, UserError, from_mapping
from .constants import C_KMS, MASK_ALL
from .store import SpectraBatch

if TYPE_CHECKING:
    from .instruments import Instrument

FLUX_MAX = 1e12  # |flux| above this (1e-17 erg/s/cm2/A) is treated as corrupt
IVAR_MAX = 1e12  # so that float32 sums of ivar^2 cannot overflow
SCALE_MIN = 1e-6  # 1e-17 erg/s/cm2/A
SCALE_MAX = 1e5
"""A continuum above this (1e-17 erg/s/cm2/A; ~1e-12 cgs, AB ~ 8 at 1 micron) is brighter than
any galaxy through a fibre, even a nearby bulge: the flux unit is wrong, or the data are not a
galaxy's. See :attr:`NetInputs.implausible_flux`."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Constants of the preprocessing; a checkpoint stores them (``asdict``).

    wave_min, wave_max: grid range, vacuum Angstrom (pixel edges at both ends).
    n_pix: pixels of the log-wavelength grid (4096 over MOONS LR: ~75 km/s per pixel,
        about one resolution element).
    mask_bits: store mask bits that void a pixel (1 bad, 2 sky line, 4 telluric).
    continuum_window_kms: width of a continuum block median.
    n_continuum: number of segments of the continuum input; must divide ``n_pix``.
    residual_clip: the residual channel is clipped to +-this (in units of ``scale``).
    min_block_valid: a block's median is used if at least this fraction of it is valid.
    scale_free_noise: if true, the continuum input's noise feature is ``log10(sigma / scale)``
        (the inverse S/N, unchanged when the spectrum is multiplied by a constant) instead of
        ``log10(sigma)``; then ``log10(scale)`` is the only input that carries the flux
        scale, and a network built with ``scale_free_z`` keeps it away from the redshift.
        False in checkpoints made before this option existed.
"""

    wave_min: float = 6470.0
    wave_max: float = 18000.0
    n_pix: int = 4096
    mask_bits: int = MASK_ALL
    continuum_window_kms: float = 5000.0
    n_continuum: int = 128
    residual_clip: float = 200.0
    min_block_valid: float = 0.25
    scale_free_noise: bool = False

    def __post_init__(self) -> None:
        if not (self.wave_min > 0 and self.wave_max > self.wave_min):
            raise ConfigError(f"preprocess.wave_max: must exceed wave_min > 0, got {self.wave_min}-{self.wave_max}")
        if self.n_pix < 64:
            raise ConfigError(f"preprocess.n_pix: must be >= 64, got {self.n_pix}")
        if self.n_continuum < 1 or self.n_pix % self.n_continuum:
            raise ConfigError(f"preprocess.n_continuum: must divide n_pix ({self.n_pix}), got {self.n_continuum}")
        if not 0 <= self.mask_bits < 256:
            raise ConfigError(f"preprocess.mask_bits: must be within 0-255, got {self.mask_bits}")
        if not self.residual_clip > 0:
            raise ConfigError(f"preprocess.residual_clip: must be > 0, got {self.residual_clip}")
        if not 0 < self.min_block_valid <= 1:
            raise ConfigError(f"preprocess.min_block_valid: must be within (0, 1], got {self.min_block_valid}")
        if not 4 <= self.block_pixels <= self.n_pix:
            raise ConfigError(f"preprocess.continuum_window_kms: gives {self.block_pixels} pixels; "
                              f"must be 4-{self.n_pix}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "preprocess") -> "PreprocessConfig":
        """Build from a mapping (YAML or checkpoint), naming unknown or bad fields."""
        return from_mapping(cls, raw, where)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def dloglam(self) -> float:
        """Natural-log width of a grid pixel."""
        return float(np.log(self.wave_max / self.wave_min) / self.n_pix)

    @property
    def pixel_kms(self) -> float:
        """Velocity width of a grid pixel, km/s."""
        return C_KMS * self.dloglam

    @property
    def block_pixels(self) -> int:
        """Continuum block width in grid pixels (even)."""
        return max(4, 2 * int(round(self.continuum_window_kms / self.pixel_kms / 2)))

    @property
    def wave_edges(self) -> np.ndarray:
        """(n_pix + 1,) grid pixel edges, vacuum Angstrom."""
        return self.wave_min * np.exp(self.dloglam * np.arange(self.n_pix + 1))

    @property
    def wave(self) -> np.ndarray:
        """(n_pix,) grid pixel centres (geometric), vacuum Angstrom."""
        return self.wave_min * np.exp(self.dloglam * (np.arange(self.n_pix) + 0.5))

    @property
    def n_continuum_features(self) -> int:
        return 2 * self.n_continuum + 3

    @property
    def scale_feature(self) -> int:
        """Index of ``log10(scale)`` in the continuum input (the flux-scale feature)."""
        return 2 * self.n_continuum

    def key(self) -> str:
        """A short hash of the constants (for cache keys)."""
        return hashlib.blake2b(repr(sorted(self.as_dict().items())).encode(), digest_size=8).hexdigest()


@dataclass
class NetInputs:
    """The network's inputs for N objects, plus per-object diagnostics.

    spectrum: (N, 2, n_pix) float32 -- residual and weight channels (see module docstring).
    continuum: (N, 2 * n_continuum + 3) float32 -- continuum features.
    valid_fraction: (N,) float32 -- fraction of grid pixels with valid data.
    scale: (N,) float64 -- normalisation, 1e-17 erg/s/cm2/A.
    noise: (N,) float64 -- typical per-grid-pixel sigma, 1e-17 erg/s/cm2/A (0 if none).
    bad_input: (N,) bool -- NaN/inf flux or ivar, or negative ivar, seen in unmasked pixels
        here or counted by the reader that cleaned them (``SpectraBatch.n_bad_pixels``).
    continuum_detected: (N,) bool -- the median continuum exceeds the noise floor of ``scale``.
    implausible_flux: (N,) bool -- the flux scale is physically impossible for a galaxy: the
        continuum is brighter than SCALE_MAX, or detected below LEVEL_MIN (fainter than a
        10^6 M_sun galaxy): the flux unit is wrong, and masses and SFRs are meaningless.
        (Fluxes so small that their ivar exceeds IVAR_MAX are void pixels: NODATA. A
        negative continuum is not flagged: sky over-subtraction makes it common for faint
        galaxies.)
    outside_coverage: (N,) bool -- the input had valid data on grid pixels outside the
        model's training coverage; those pixels were voided before anything else.
    flux, ivar: (N, n_pix) float32 -- the rebinned data on the model grid (after that
        voiding), 1e-17 erg/s/cm2/A and its inverse variance: what template fits use.
    """

    spectrum: np.ndarray
    continuum: np.ndarray
    valid_fraction: np.ndarray
    scale: np.ndarray
    noise: np.ndarray
    bad_input: np.ndarray
    continuum_detected: np.ndarray
    implausible_flux: np.ndarray | None = None
    outside_coverage: np.ndarray | None = None
    flux: np.ndarray | None = None
    ivar: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.implausible_flux is None:
            self.implausible_flux = np.zeros(len(self.valid_fraction), dtype=bool)
        if self.outside_coverage is None:
            self.outside_coverage = np.zeros(len(self.valid_fraction), dtype=bool)

    def __len__(self) -> int:
        return len(self.valid_fraction)


LEVEL_MIN = 1e-5
"""A continuum detected below this (1e-17 erg/s/cm2/A, 1e-22 cgs, AB ~ 31 at 1.6 micron) is
fainter than a 10^6 M_sun galaxy at z = 0.6 (~4e-6) and beyond any telescope's continuum
detection: the flux unit is wrong. See :attr:`NetInputs.implausible_flux`."""
GAP_WINDOW = 15
"""Native spacings in the running median that gives a pixel's typical local spacing."""


def _native_bounds(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edges, each (L,), of native pixels with (L,) increasing centres (A).

    An edge lies half-way to the neighbouring centre, but a pixel reaches at most one typical
    local spacing from its centre (the running median of ``GAP_WINDOW`` neighbouring
    spacings, itself capped at four times the spectrum's median relative spacing). So where
    pixels were dropped (a gap inside an arm, or the gaps between the arms of one merged table)
    the pixels next to the gap keep about their own width and the gap stays without data; a
    single dropped pixel (twice the typical spacing) still closes up. End pixels mirror their
    one neighbour's spacing. Without gaps the edges are exactly the half-way points.
    """
    n = len(wave)
    if n == 1:
        return np.array([wave[0] * (1 - 1e-4)]), np.array([wave[0] * (1 + 1e-4)])
    step = np.diff(wave)  # (L - 1,) > 0
    if n > 2:
        from scipy.ndimage import median_filter
        typical = median_filter(step, size=min(GAP_WINDOW, len(step) | 1), mode="nearest")
        typical = np.minimum(typical, 4.0 * np.median(step / wave[:-1]) * wave[:-1])
    else:
        typical = step.copy()
    mid = 0.5 * (wave[1:] + wave[:-1])
    gap = 0.5 * step > typical
    upper = np.empty(n)
    lower = np.empty(n)
    upper[:-1] = np.where(gap, wave[:-1] + typical, mid)
    lower[1:] = np.where(gap, wave[1:] - typical, mid)
    lower[0] = 2 * wave[0] - upper[0]  # ends mirror their neighbour's spacing
    upper[-1] = 2 * wave[-1] - lower[-1]
    return lower, upper


def rebin_matrix(wave: np.ndarray, edges: np.ndarray) -> sp.csr_matrix:
    """Overlap matrix from native pixels (centres ``wave`` (L,)) to grid bins (``edges`` (G+1,)).

    Returns (G, L) CSR: entry [k, p] is the fraction of native pixel p lying in grid pixel k.
    Native pixels with non-finite centres get no weight; gaps in the native sampling stay
    without data (see :func:`_native_bounds`). Raises :class:`UserError` if the finite
    centres are not strictly increasing.
    """
    wave = np.asarray(wave, dtype=np.float64)
    n_grid, n_native = len(edges) - 1, len(wave)
    good = np.flatnonzero(np.isfinite(wave) & (wave > 0))
    if len(good) == 0:
        return sp.csr_matrix((n_grid, n_native))
    w = wave[good]
    if np.any(np.diff(w) <= 0):
        raise UserError("arm wavelengths must be strictly increasing")
    lower, upper = _native_bounds(w)
    # one edge sequence with a placeholder piece (owner -1) for every hole between pixels
    hole = lower[1:] > upper[:-1]
    owners = np.repeat(np.arange(len(w)), np.where(np.append(hole, False), 2, 1))
    owners[np.flatnonzero(np.append(hole, False)) + np.arange(1, hole.sum() + 1)] = -1
    nat = np.empty(len(owners) + 1)
    nat[0] = lower[0]
    nat[1:] = np.where(owners >= 0, upper[np.maximum(owners, 0)], 0.0)
    holes = np.flatnonzero(owners < 0)
    nat[holes + 1] = lower[owners[holes + 1]]
    lo, hi = max(nat[0], edges[0]), min(nat[-1], edges[-1])
    if not hi > lo:
        return sp.csr_matrix((n_grid, n_native))
    cuts = np.union1d(nat[(nat > lo) & (nat < hi)], edges[(edges > lo) & (edges < hi)])
    cuts = np.concatenate([[lo], cuts, [hi]])
    length = np.diff(cuts)
    mid = 0.5 * (cuts[1:] + cuts[:-1])
    piece = np.clip(np.searchsorted(nat, mid) - 1, 0, len(owners) - 1)
    k = np.clip(np.searchsorted(edges, mid) - 1, 0, n_grid - 1)
    p = owners[piece]
    frac = length / (upper - lower)[np.maximum(p, 0)]
    keep = (frac > 0) & (p >= 0)
    return sp.csr_matrix((frac[keep], (k[keep], good[p[keep]])), shape=(n_grid, n_native))


def masked_block_median(values: np.ndarray, valid: np.ndarray, block: int, stride: int,
                        min_valid: float) -> tuple[np.ndarray, np.ndarray]:
    """Median of valid values in sliding blocks along the last axis.

    values, valid: (N, G); returns medians (N, B) float32 and usable (N, B) bool, where
    B = (G - block) // stride + 1 and a block is usable if >= ``min_valid`` of it is valid.
    """
    vals = np.where(valid, values, np.inf).astype(np.float32)
    win = np.lib.stride_tricks.sliding_window_view(vals, block, axis=-1)[:, ::stride]
    n_valid = np.lib.stride_tricks.sliding_window_view(valid, block, axis=-1)[:, ::stride].sum(-1)
    srt = np.sort(win, axis=-1)
    lo = np.clip((n_valid - 1) // 2, 0, block - 1)[..., None]
    hi = np.clip(n_valid // 2, 0, block - 1)[..., None]
    med = 0.5 * (np.take_along_axis(srt, lo, -1)[..., 0] + np.take_along_axis(srt, hi, -1)[..., 0])
    usable = n_valid >= max(1, int(np.ceil(min_valid * block)))
    return np.where(usable, med, 0.0).astype(np.float32), usable


@dataclass(frozen=True)
class _Gather:
    """A rebinning matrix as a gather: grid pixels ``rows`` (R,) from native ``index`` (R, J)
    with weights ``weight`` (R, J) (zero-padded)."""

    rows: np.ndarray
    index: np.ndarray
    weight: np.ndarray


def _as_gather(m: sp.csr_matrix) -> _Gather:
    counts = np.diff(m.indptr)
    rows = np.flatnonzero(counts)
    j = int(counts.max()) if len(rows) else 0
    index = np.zeros((len(rows), j), dtype=np.intp)
    weight = np.zeros((len(rows), j), dtype=np.float32)
    for slot in range(j):
        has = counts[rows] > slot
        pos = m.indptr[rows[has]] + slot
        index[has, slot] = m.indices[pos]
        weight[has, slot] = m.data[pos]
        index[~has, slot] = index[~has, slot - 1] if slot else 0
    return _Gather(rows=rows, index=index, weight=weight)


class Preprocessor:
    """Turns :class:`SpectraBatch` objects into :class:`NetInputs` for one :class:`PreprocessConfig`.

    Holds a cache of rebinning matrices per arm wavelength array (instance state only).

    coverage: optional (n_pix,) bool -- the grid pixels the model saw data on in training
    (a checkpoint's ``coverage``). Valid data on any other grid pixel (e.g. a near-IR
    spectrum covering the gap between two MOONS arms) is voided after rebinning, before
    the continuum, scale and network inputs are formed, and the object is marked in
    :attr:`NetInputs.outside_coverage`. None: nothing is voided.
    """

    def __init__(self, config: PreprocessConfig | None = None, coverage: np.ndarray | None = None):
        self.config = config or PreprocessConfig()
        if coverage is not None:
            coverage = np.asarray(coverage, dtype=bool)
            if coverage.shape != (self.config.n_pix,):
                raise ConfigError(f"coverage: must have shape ({self.config.n_pix},), got {coverage.shape}")
            coverage = None if coverage.all() else coverage
        self.train_coverage = coverage
        self._edges = self.config.wave_edges
        self._gathers: dict[bytes, _Gather] = {}

    def _gather(self, wave: np.ndarray) -> _Gather:
        wave = np.ascontiguousarray(wave, dtype=np.float64)
        key = hashlib.blake2b(wave.tobytes(), digest_size=16).digest()
        gather = self._gathers.get(key)
        if gather is None:  # a local first: batches in threads may clear the cache in between
            gather = _as_gather(rebin_matrix(wave, self._edges))
            if len(self._gathers) > 64:
                self._gathers.clear()
            self._gathers[key] = gather
        return gather

    def coverage(self, arm_waves: dict[str, np.ndarray]) -> np.ndarray:
        """(n_pix,) bool: grid pixels that at least one arm covers (ignoring masks)."""
        covered = np.zeros(self.config.n_pix, dtype=bool)
        for wave in arm_waves.values():
            if len(wave):
                gather = self._gather(np.asarray(wave))
                covered[gather.rows[gather.weight.sum(axis=1) > 0]] = True
        return covered

    def rebin(self, batch: SpectraBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inverse-variance rebinning of all arms.

        Returns flux (N, n_pix) float32 [1e-17 erg/s/cm2/A], ivar (N, n_pix) float32
        (0 = no valid data) and bad_input (N,) bool: corrupt values in unmasked pixels, or
        pixels that a reader cleaned (``batch.n_bad_pixels > 0``).
        """
        n, g = len(batch), self.config.n_pix
        num = np.zeros((n, g), dtype=np.float32)
        den = np.zeros((n, g), dtype=np.float32)
        den2 = np.zeros((n, g), dtype=np.float32)
        counted = getattr(batch, "n_bad_pixels", None)
        bad = np.zeros(n, dtype=bool) if counted is None else np.asarray(counted).reshape(n) > 0
        for name, arm in batch.arms.items():
            wave = np.asarray(arm["wave"])
            if wave.ndim != 1:
                raise UserError(f"arm {name}: wave must be 1-D, got shape {wave.shape}")
            flux = np.asarray(arm["flux"])
            ivar = np.asarray(arm["ivar"])
            mask = np.asarray(arm["mask"])
            if flux.shape != (n, len(wave)) or ivar.shape != flux.shape or mask.shape != flux.shape:
                raise UserError(f"arm {name}: flux/ivar/mask shapes {flux.shape}/{ivar.shape}/{mask.shape} "
                                f"do not match ({n}, {len(wave)})")
            if n == 0 or len(wave) == 0:
                continue
            flux = flux.astype(np.float32, copy=False)
            ivar = ivar.astype(np.float32, copy=False)
            unmasked = (mask & self.config.mask_bits) == 0 if mask.dtype.kind in "ui" else \
                (mask.astype(np.int64) & self.config.mask_bits) == 0
            with np.errstate(invalid="ignore", over="ignore"):
                finite = np.isfinite(flux) & np.isfinite(ivar)
                corrupt = ~finite | (ivar < 0)
                valid = unmasked & finite & (ivar > 0) & (np.abs(flux) < FLUX_MAX) & (ivar < IVAR_MAX)
            bad |= (corrupt & unmasked).any(axis=1)
            gather = self._gather(wave)
            if len(gather.rows) == 0:
                continue
            wiv = np.where(valid, ivar, np.float32(0))
            wivf = wiv * np.where(valid, flux, np.float32(0))
            shape = (n,) + gather.index.shape
            a = np.take(wiv, gather.index.ravel(), axis=1).reshape(shape)
            b = np.take(wivf, gather.index.ravel(), axis=1).reshape(shape)
            w = gather.weight
            rows = gather.rows
            if rows[-1] - rows[0] + 1 == len(rows):  # contiguous: a slice is 40x faster
                rows = slice(int(rows[0]), int(rows[-1]) + 1)
            num[:, rows] += np.einsum("nrj,rj->nr", b, w)
            den[:, rows] += np.einsum("nrj,rj->nr", a, w)
            den2[:, rows] += np.einsum("nrj,rj->nr", a, w * w)
        good = (den > 0) & (den2 > 0)
        flux_g = np.divide(num, den, out=np.zeros_like(num), where=good)
        ivar_g = np.divide(den * den, den2, out=np.zeros_like(den), where=good)
        return flux_g, ivar_g, bad

    def __call__(self, batch: SpectraBatch) -> NetInputs:
        """Preprocess ``batch`` -> :class:`NetInputs` (see the module docstring)."""
        cfg = self.config
        flux, ivar, bad = self.rebin(batch)
        n, g = flux.shape
        outside = np.zeros(n, dtype=bool)
        if self.train_coverage is not None:
            foreign = ~self.train_coverage
            outside = (ivar[:, foreign] > 0).any(axis=1)
            ivar[:, foreign] = 0
            flux[:, foreign] = 0
        valid = ivar > 0
        n_valid = valid.sum(axis=1)
        valid_fraction = (n_valid / g).astype(np.float32)

        # typical per-pixel noise: 1/sqrt(mean ivar over valid pixels)
        mean_ivar = np.divide(ivar.sum(axis=1, dtype=np.float64), n_valid, out=np.zeros(n), where=n_valid > 0)
        noise = np.divide(1.0, np.sqrt(mean_ivar), out=np.zeros(n), where=mean_ivar > 0)

        block = cfg.block_pixels
        stride = block // 2
        med, usable = masked_block_median(flux, valid, block, stride, cfg.min_block_valid)
        centres = np.arange(med.shape[1]) * stride + 0.5 * (block - 1)
        pix = np.arange(g)
        continuum = np.zeros((n, g), dtype=np.float32)
        floor = np.maximum(1.25 * noise / np.sqrt(block), SCALE_MIN)
        scale = floor.copy()
        detected = np.zeros(n, dtype=bool)
        implausible = np.zeros(n, dtype=bool)
        for i in np.flatnonzero(usable.any(axis=1)):
            use = usable[i]
            continuum[i] = np.interp(pix, centres[use], med[i, use])
            level = float(np.median(med[i, use]))
            detected[i] = level > floor[i]
            scale[i] = max(level, floor[i])
            implausible[i] = level > SCALE_MAX or (detected[i] and level < LEVEL_MIN)

        inv = (1.0 / scale).astype(np.float32)[:, None]
        spectrum = np.zeros((n, 2, g), dtype=np.float32)
        clip = np.float32(cfg.residual_clip)
        resid = np.clip((flux - continuum) * inv, -clip, clip)
        spectrum[:, 0] = np.where(valid, resid, np.float32(0))
        snr = np.sqrt(ivar) * scale.astype(np.float32)[:, None]
        spectrum[:, 1] = snr / (np.float32(1) + snr)  # 0 where ivar == 0

        seg = g // cfg.n_continuum
        feats = np.zeros((n, cfg.n_continuum_features), dtype=np.float32)
        cont_norm = np.clip(continuum * inv, -clip, clip)
        feats[:, :cfg.n_continuum] = cont_norm.reshape(n, cfg.n_continuum, seg).mean(axis=2)
        feats[:, cfg.n_continuum:2 * cfg.n_continuum] = valid.reshape(n, cfg.n_continuum, seg).mean(axis=2)
        feats[:, -3] = np.log10(scale)
        if cfg.scale_free_noise:
            feats[:, -2] = np.log10(np.maximum(noise, SCALE_MIN * 1e-6) / scale)
        else:
            feats[:, -2] = np.log10(np.maximum(noise, SCALE_MIN))
        feats[:, -1] = valid_fraction
        np.nan_to_num(spectrum, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        np.nan_to_num(feats, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return NetInputs(spectrum=spectrum, continuum=feats, valid_fraction=valid_fraction,
                         scale=scale, noise=noise, bad_input=bad, continuum_detected=detected,
                         implausible_flux=implausible, outside_coverage=outside, flux=flux, ivar=ivar)


def apply_sky_masks(batch: SpectraBatch, instrument: Instrument) -> SpectraBatch:
    """``batch`` with ``instrument``'s night-sky mask bits (sky lines, telluric bands) OR-ed into
    every arm's mask, as the simulator sets them (:meth:`Instrument.sky_mask`): real spectra
    then lose the pixels the training spectra lost. ``labels['sky_masked']`` (N,) bool: a
    pixel with data (ivar > 0) that the file had not masked got a sky bit (ZInfo.SKY_MASKED).
    """
    arms, hit = {}, np.zeros(len(batch), dtype=bool)
    for name, arm in batch.arms.items():
        sky = instrument.sky_mask(np.asarray(arm["wave"], dtype=np.float64))
        mask = np.asarray(arm["mask"])
        with np.errstate(invalid="ignore"):
            hit |= ((sky[None, :] != 0) & (mask == 0) & (np.asarray(arm["ivar"]) > 0)).any(axis=1)
        arms[name] = {**arm, "mask": (mask | sky[None, :].astype(mask.dtype)) if sky.any() else mask}
    return dataclasses.replace(batch, arms=arms, labels={**batch.labels, "sky_masked": hit})


def preprocess(batch: SpectraBatch, config: PreprocessConfig | None = None) -> NetInputs:
    """One-shot convenience: ``Preprocessor(config)(batch)``."""
    return Preprocessor(config)(batch)


__all__ = ["PreprocessConfig", "NetInputs", "Preprocessor", "preprocess", "rebin_matrix",
           "masked_block_median", "apply_sky_masks"]
