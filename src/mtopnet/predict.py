"""predict redshift PDFs, stellar masses and SFRs -> catalogue (FITS, Parquet or CSV)

Library use::

    model = load_model("moons-lr")                  # shipped name, or a path to a .pt
    for rows in predict_batches(model, batches):    # any iterable of SpectraBatch
        ...                                         # dict column -> (n,) array per batch
    predict_store(model, ["a.h5"], "cat.fits")      # files -> catalogue, sharded, resumable
    predict_store(model, ["a.h5"], "cat.fits", workers=8)            # on a Dask LocalCluster

One catalogue row per input spectrum, in input order; the columns and the ZWARN bits are
:mod:`mtopnet.columns`' (docs/catalogue.md), the file formats :mod:`mtopnet.catalogue`'s.
The model comes from :mod:`mtopnet.trained`, the PDF statistics from :mod:`mtopnet.quality`,
the template refinement of z (the default; ``--no-refine`` skips it) from :mod:`mtopnet.refine`;
shards, resuming and Dask from :mod:`mtopnet.shards`, which this module gives its per-shard
computation; the domain check from :mod:`mtopnet.domain`.

Over 500 lines: the rows of a batch and the computation of one shard (with the job every
worker gets) are inference's one workflow; the generic parts (shards, fingerprints,
executors, assembly) live in :mod:`mtopnet.shards`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .catalogue import (
    CATALOGUE_DTYPES,
    MIN_VALID_FRACTION,
    REFINE_DTYPES,
    SCAN_DTYPES,
    catalogue_format,
)
from .cluster import ResumableError
from .columns import SMALL_DELTA_CHI2_LIMIT, ZInfo, ZWarn, capped_p, capped_qop
from .config import ConfigError, UserError
from .constants import C_KMS, SEPARATION_KMS, SUCCESS_DZ
from .devices import ForkedPool, forked_pool_possible, single_threaded_ops
from .domain import (
    DomainReport,
    DomainWarning,
    describe_arms,
    domain_check,
    domain_problem,
    expected_domain,
    layout_problem,
    sparse_coverage,
    sparse_description,
)
from .instruments import Instrument, load_instrument
from .io import FORMATS, input_passthrough, stack_passthrough
from .logs import progress_enabled
from .preprocess import apply_sky_masks
from .priors import check_priors_out, prior_columns, write_priors
from .provenance import catalogue_provenance
from .quality import central_intervals, pdf_summary, window_mass
from .refine import (
    NO_FEATURES_DCHI2,
    CoarseChi2,
    Refiner,
    ZScanner,
    combine_pdf,
    feature_evidence,
    network_gate,
    scan_on_bins,
    scan_summary,
    sky_residual_vectors,
)
from .shards import (
    SHARD_SIZE,
    Shard,
    ShardRun,
    drop_cached,
    file_digest,
    json_digest,
    plan_shards,
    run_sharded,
    seed_cache,
    worker_cached,
)
from .store import SpectraBatch, check_writable
from .trained import DEFAULT_MODEL, TrainedModel, load_model

COMMAND = "predict"
log = logging.getLogger(__name__)

BATCH_SIZE = 256
"""Default spectra per batch of prediction (``--batch-size``). Measured with the shipped model
on 4,000 held-out spectra, 2 batches at once on 2 cores (docs/benchmarks.md): 256 ran the
default path at 135 spectra/s with a peak of 1.1 GB, 1024 at 126/s with 1.6 GB; without
refinement 1,454/s and 0.7 GB against 949/s and 1.4 GB. Smaller batches also give a
shard more batches to run at once (``--threads``)."""


def _chunks(batches: Iterable[SpectraBatch], size: int | None) -> Iterator[SpectraBatch]:
    """The non-empty batches of ``batches``, those longer than ``size`` split."""
    for batch in batches:
        if len(batch) == 0:
            continue
        if size is None or len(batch) <= size:
            yield batch
        else:
            for start in range(0, len(batch), size):
                yield batch.subset(slice(start, start + size))


class _Scan:
    """The full-range template scan of a model calibrated with it (``model.scan``)."""

    def __init__(self, model: TrainedModel, refiner: Refiner):
        cfg = model.scan
        assert cfg is not None
        self.config = cfg
        self.clip_sigma = cfg.clip_sigma
        zb = model.zbins
        self.edges = zb.edges
        self.scanner = ZScanner.from_scan_config(refiner.basis, (zb.z_min, zb.z_max), cfg, sky=scan_sky(model))

    def __call__(self, x, pdf_net: np.ndarray, p_net: np.ndarray, usable: np.ndarray
                 ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, CoarseChi2 | None]:
        """Posterior PDFs (N, K), the scan's columns for the objects it selects, the weights
        (N, n_pix) the fits should use (x.ivar with the scan's clipped pixels at 0), and the
        scan's chi2 at every whole-pixel shift for the refinement's coarse stage (None where
        the scan's trials are not every pixel)."""
        n = len(pdf_net)
        cols = {"SCANNED": np.zeros(n, np.int16), "SCAN_Z": np.full(n, np.nan), "SCAN_DCHI2": np.full(n, np.nan)}
        sel = np.flatnonzero(usable & (p_net < self.config.select_below))
        pdf = pdf_net
        weights = x.ivar
        coarse = None
        if len(sel):
            res, chi2_bins, w = scan_on_bins(self.scanner, x.flux[sel], x.ivar[sel], self.edges, self.clip_sigma)
            if self.scanner.stride == 1:
                coarse = CoarseChi2.from_scan(self.scanner, res, sel, n)
            weights = x.ivar.copy()
            weights[sel] = np.where(w > 0, weights[sel], 0)
            pdf = pdf_net.copy()
            gate = network_gate(p_net[sel], self.config.gamma)
            pdf[sel] = combine_pdf(pdf_net[sel], chi2_bins, self.config.w_net, self.config.t, ok=res.ok, gate=gate)
            z_best, dchi2, _ = scan_summary(res)
            cols["SCANNED"][sel] = res.ok
            cols["SCAN_Z"][sel] = np.where(res.ok, z_best, np.nan)
            cols["SCAN_DCHI2"][sel] = np.where(res.ok, dchi2, np.nan)
        return pdf, cols, weights, coarse


def predict_batches(model: TrainedModel, batches: Iterable[SpectraBatch], *, with_pdf: bool = False,
                    batch_size: int | None = BATCH_SIZE, arm_resolution: dict[str, float] | None = None,
                    min_valid_fraction: float = MIN_VALID_FRACTION,
                    refine: bool | Refiner = True, with_net_pdf: bool = False,
                    domain_report: DomainReport | None = None,
                    sky_masks: bool = True, threads: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Catalogue rows for each batch (input order): dict column -> (n,) array (COEFF: (n, K)).

    Columns are :data:`CATALOGUE_COLUMNS`, then (with ``refine``) :data:`REFINE_COLUMNS`, then
    (for a model calibrated with the full-range scan, ``model.scan``) :data:`SCAN_COLUMNS`;
    with ``with_pdf`` also ``Z_PDF`` (n, n_bins) float32, the PDF the redshift comes from (the
    network's, or its combination with the scan); with ``with_net_pdf`` also ``z_pdf_net``
    (the network's alone) and the quality features (``q_<name>``, for calibration).
    Batches longer than ``batch_size`` are split. ``arm_resolution`` (arm -> R), when known,
    is checked against the training arms (ZWarn.OUT_OF_DOMAIN). ``refine``: True refines z
    with the shipped templates (:mod:`mtopnet.refine`), a :class:`~mtopnet.refine.Refiner`
    with its own basis or settings, False gives the network's estimates alone (no scan).
    Out-of-domain spectra give one :class:`DomainWarning` per distinct arm layout, or, with a
    ``domain_report``, none: they are counted there for one warning at the end of the run.
    ``sky_masks``: every batch first gets the training instrument's sky-line and telluric masks
    (:func:`~mtopnet.preprocess.apply_sky_masks`; :func:`training_instrument`), whatever it was
    read from, so that prediction and calibration see spectra as the training did: files and
    stores converted from them lose the pixels the training spectra lost, and the simulator's
    own stores, which carry these masks already, are unchanged (ZWARN_INFO SKY_MASKED where
    data were voided).

    ``threads``: None (the default) runs the batches one after the other with torch's and
    BLAS's thread settings as the caller left them. A number N runs up to N batches at once,
    every operation single-threaded (torch and BLAS set to one thread while the generator
    runs, restored after): the rows are then the same bytes for any N, and N cores are used.
    The N batches run in processes forked from this one (:class:`mtopnet.devices.ForkedPool`:
    they share the built model and tables, not the GIL; their warnings are raised again here)
    where :func:`mtopnet.devices.forked_pool_possible` (Linux, a CPU device, the main thread,
    not a daemonic process such as a Dask worker), else in threads of this process. Memory:
    about N batches' worth (docs/benchmarks.md). Iterate from the process's main thread:
    OpenBLAS takes its thread count only from there (:func:`mtopnet.devices.single_threaded_ops`).
    A forked process that dies under a batch ends the run with
    :class:`~mtopnet.cluster.ResumableError`.
    UserError: N < 1, or a ``refine``
    Refiner whose ``config.threads`` is more than 1 (it would change torch's threads under
    the other batches).
    """
    if threads is not None and threads < 1:
        raise UserError(f"threads: must be >= 1, got {threads}")
    run = _BatchPredictor(model, with_pdf=with_pdf, arm_resolution=arm_resolution,
                          min_valid_fraction=min_valid_fraction, refine=refine, with_net_pdf=with_net_pdf,
                          sky_masks=sky_masks)
    return _batch_rows(run, _chunks(batches, batch_size), domain_report, threads)


def _batch_rows(run: _BatchPredictor, chunks: Iterator[SpectraBatch], report: DomainReport | None,
                threads: int | None) -> Iterator[dict[str, np.ndarray]]:
    """:func:`predict_batches`' generator (its warnings name the line of the caller's loop)."""
    return _BatchRunner(run, threads).rows(chunks, report, keep=False)


class _BatchRunner:
    """A :class:`_BatchPredictor` and its pool: ``threads`` batches at once (forked processes
    where :func:`forked_pool_possible`, else threads; None or 1: one after the other). One
    runner serves several calls of :meth:`rows` (the shards of a run in one process), so that
    its processes are forked once; a call that ends early (an error, Ctrl-C, the generator
    closed) closes it."""

    def __init__(self, run: _BatchPredictor, threads: int | None):
        if threads is not None and run.refiner is not None and run.refiner.config.threads not in (None, 1):
            raise UserError(f"threads: a refinement with its own torch threads ({run.refiner.config.threads}) "
                            f"cannot run with batches at once; use RefineConfig(threads=1)")
        self.run, self.threads = run, threads
        self.closed = False
        self.pool: ThreadPoolExecutor | ForkedPool | None = None  # made at the first batch

    def _pool(self) -> ThreadPoolExecutor | ForkedPool | None:
        if self.pool is None and self.threads and self.threads > 1:
            if forked_pool_possible(self.run.device):
                self.pool = ForkedPool(self.threads, self.run)
                self.run.stop = self.pool.stop_event()  # before the first submit forks
            else:
                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mtopnet-predict")
        return self.pool

    def rows(self, chunks: Iterator[SpectraBatch], report: DomainReport | None,
             keep: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """Catalogue rows of each batch of ``chunks`` (non-empty), in order; ``keep``: the runner
        stays open for another call when this one ends normally (else it is closed)."""
        if self.closed:
            raise RuntimeError("predict: this batch runner was closed")
        run, threads, pool = self.run, self.threads, self._pool()
        cache: dict[bytes, tuple[bool, bool]] = {}
        pending: deque = deque()  # (future, layout_ok) in input order, at most `threads` in flight

        def oldest() -> tuple[dict[str, np.ndarray], list[str]]:
            future, layout_ok = pending.popleft()
            with _broken_pool_resumable():
                rows, sparse = pool.result(future) if isinstance(pool, ForkedPool) else future.result()
            return rows, run.report_sparse(sparse, layout_ok, report)

        done = False
        try:  # threads None: the caller's thread settings; a number: every operation on one thread
            with single_threaded_ops() if threads is not None else contextlib.nullcontext():
                if pool is None:
                    for batch in chunks:
                        layout_ok, foreign, said = run.layout_ok(batch, cache, report)
                        rows, sparse = run.rows(batch, layout_ok, foreign)
                        _warn_domain(said + run.report_sparse(sparse, layout_ok, report))
                        yield rows
                else:
                    for batch in chunks:
                        layout_ok, foreign, said = run.layout_ok(batch, cache, report)
                        _warn_domain(said)
                        with _broken_pool_resumable():
                            pending.append((pool.submit(run.rows, batch, layout_ok, foreign), layout_ok))
                        if len(pending) >= threads:
                            rows, said = oldest()
                            _warn_domain(said)
                            yield rows
                    while pending:
                        rows, said = oldest()
                        _warn_domain(said)
                        yield rows
            done = True
        finally:
            if not (done and keep):
                self.close()

    def close(self) -> None:
        """Stop the batches in flight (at their next stage) and end the pool."""
        self.closed = True
        if self.pool is None:
            return
        self.run.stop.set()
        while True:
            try:
                self.pool.shutdown(wait=True, cancel_futures=True)
                break
            except KeyboardInterrupt:  # another Ctrl-C: wait for threads (a second or two), end processes now
                if isinstance(self.pool, ForkedPool):
                    self.pool.kill()


@contextlib.contextmanager
def _broken_pool_resumable() -> Iterator[None]:
    """A forked batch process that died (killed, out of memory) ends the run as
    :class:`ResumableError`: the shards done are kept, and the same command continues."""
    try:
        yield
    except BrokenProcessPool:
        raise ResumableError("predict: a process computing batches ended abruptly (killed, out of memory, or its "
                             "result could not be sent back); re-run the same command to continue from the shards "
                             "done, or use --threads 1") from None


def _warn_domain(messages: list[str]) -> None:
    """One DomainWarning per message, naming the line of the loop over :func:`predict_batches`."""
    for message in messages:
        warnings.warn(DomainWarning(message), stacklevel=3)


class _Stopped(Exception):
    """A batch abandoned because its run ended (:attr:`_BatchPredictor.stop`)."""


@dataclasses.dataclass(frozen=True)
class _Sparse:
    """Objects of one batch whose valid data cover too little of the training wavelengths."""

    n_out_of_domain: int
    """Objects flagged OUT_OF_DOMAIN in the batch (layout or sparse coverage)."""
    n_sparse: int
    description: str | None
    """:func:`sparse_description` of the batch where ``n_sparse`` > 0."""


class _BatchPredictor:
    """What one :func:`predict_batches` run shares between its batches: the model, refiner,
    scan and calibration, read-only once built, so that batches may run at once (in threads, or
    in processes forked from this one: :class:`_BatchRunner`). The domain bookkeeping (a cache
    per arm layout, warnings, the report) stays with the caller's thread (:meth:`layout_ok`,
    :meth:`report_sparse`); :meth:`rows` does the rest."""

    def __init__(self, model: TrainedModel, *, with_pdf: bool, arm_resolution: dict[str, float] | None,
                 min_valid_fraction: float, refine: bool | Refiner, with_net_pdf: bool, sky_masks: bool):
        self.model = model
        self.with_pdf, self.with_net_pdf = with_pdf, with_net_pdf
        self.arm_resolution = arm_resolution
        self.min_valid_fraction = min_valid_fraction
        self.device = next(model.network.parameters()).device
        refiner = None
        if refine is True:
            refiner = Refiner.from_model(model)
        elif refine is not False and refine is not None:
            refiner = refine
        self.refiner = refiner
        self.scan = _Scan(model, refiner) if refiner is not None and model.scan is not None else None
        self.fitter = refiner.spectype_fitter() if refiner is not None else None  # built here, not in a thread
        # p_dz01 and QOP of the network's PDF alone (--no-refine) have a calibration of their own
        self.calibration = (model.calibration_net if refiner is None and model.calibration_net is not None
                            else model.calibration)
        self.instrument = training_instrument(model) if sky_masks else None
        self.stop = threading.Event()
        """Set when the run ends early: batches in flight in other threads (or forked processes, which get
        a shared flag instead: :meth:`mtopnet.devices.ForkedPool.stop_event`) stop at their next stage."""

    def _check(self) -> None:
        if self.stop.is_set():
            raise _Stopped

    def layout_ok(self, batch: SpectraBatch, cache: dict[bytes, tuple[bool, bool]], report: DomainReport | None
                  ) -> tuple[bool, bool, list[str]]:
        """Whether ``batch``'s arm layout is in the model's domain (checked once per layout),
        whether it is another instrument's altogether (:func:`~mtopnet.domain.layout_problem`:
        QOP 1), and the DomainWarning message for a new layout that is not in the domain
        (counted in ``report`` instead, when given)."""
        key = b"".join(a.encode() + np.asarray(d["wave"]).tobytes()[:64] + str(len(d["wave"])).encode()
                       for a, d in batch.arms.items())
        said = []
        if key not in cache:
            problem, foreign = layout_problem(self.model, batch, self.arm_resolution)
            cache[key] = (problem is None, foreign)
            if problem is not None:
                first = str(np.asarray(batch.ids)[0])
                what = (f"with arms {describe_arms(batch)} (first id {first}) are out of the model's domain: "
                        f"{problem}")
                if report is None:
                    said.append(f"spectra {what}; the model expects {expected_domain(self.model)}; ZWARN bit "
                                f"OUT_OF_DOMAIN ({int(ZWarn.OUT_OF_DOMAIN)}) set")
                else:
                    report.n_layouts += 1
                    report.layouts.append(hashlib.sha256(key).hexdigest()[:16])
                    report.first = report.first or what
        return (*cache[key], said)

    def report_sparse(self, sparse: _Sparse, layout_ok: bool, report: DomainReport | None) -> list[str]:
        """Count a batch's out-of-domain objects in ``report``; or the DomainWarning message of
        its sparse ones (none when its whole layout was out of the domain, said once already)."""
        if report is not None:
            report.n_spectra += sparse.n_out_of_domain
            if sparse.description is not None and report.first is None:
                report.first = sparse.description
        elif sparse.description is not None and layout_ok:
            return [f"{sparse.n_sparse} spectra {sparse.description}; ZWARN bit OUT_OF_DOMAIN "
                    f"({int(ZWarn.OUT_OF_DOMAIN)}) set"]
        return []

    def rows(self, batch: SpectraBatch, layout_ok: bool, foreign: bool = False
             ) -> tuple[dict[str, np.ndarray], _Sparse]:
        """The catalogue rows of one non-empty batch, and its sparse-coverage objects; ``foreign``:
        its arms are another instrument's (QOP 1)."""
        model, refiner, scan, fitter = self.model, self.refiner, self.scan, self.fitter
        net, pre, zb = model.network, model.preprocessor, model.zbins
        cal = self.calibration
        levels = tuple(cal.interval_levels) if cal is not None else (0.68, 0.95)
        m_mu, m_sd = model.label_norm["logmstar"]
        s_mu, s_sd = model.label_norm["logsfr"]
        if self.instrument is not None:
            batch = apply_sky_masks(batch, self.instrument)
        n = len(batch)
        x = pre(batch)
        self._check()
        with torch.inference_mode():
            out = net(torch.from_numpy(x.spectrum).to(self.device), torch.from_numpy(x.continuum).to(self.device))
            out = {k: v.cpu() for k, v in out.items()}  # the network's device; the rest on the CPU
            pdf_net = torch.softmax(out["z_logits"].double(), dim=1).numpy()
        summ_net = pdf_summary(pdf_net, zb.edges)
        unusable = (x.valid_fraction < self.min_valid_fraction) | (x.valid_fraction <= 0)
        pdf, summ, scan_cols, weights, coarse = pdf_net, summ_net, None, x.ivar, None
        self._check()
        if scan is not None:  # weights: without the pixels the scan clipped (the refinement clips its own)
            pdf, scan_cols, weights, coarse = scan(x, pdf_net, summ_net["p_window"], ~unusable)
            summ = pdf_summary(pdf, zb.edges)
        fit, evidence = None, None
        self._check()
        if refiner is not None:
            fit = refiner.refine(x.flux, x.ivar, pdf, summ["z"], skip=unusable,
                                 z_err_net=0.5 * (summ["z_hi68"] - summ["z_lo68"]), coarse=coarse)
            # p_dz01 and QOP describe the reported z: the PDF mass within +-0.01 of it
            summ = {**summ, "z": fit.z, "p_window": window_mass(pdf, zb.edges, fit.z, refiner.config.window)}
            arm_masks = [pre.coverage({a: d["wave"]}) for a, d in batch.arms.items()]
            if scan is not None:
                evidence = feature_evidence(scan.scanner, x.flux, weights, np.where(unusable, np.nan, fit.z),
                                            arm_masks)
        types = None
        self._check()
        if fitter is not None:  # QSO / star templates against the galaxy fit (SPECTYPE)
            types = fitter.classify(x.flux, weights, fit.z, fit.coeff, fitted=~unusable, arm_masks=arm_masks,
                                    threads=refiner.config.threads)
        # per object: the arms' layout, or valid data on too little of the training coverage
        sparse = sparse_coverage(model, x.ivar)
        out_of_domain = np.full(n, not layout_ok) | sparse
        sparse_info = _Sparse(int(out_of_domain.sum()), int(sparse.sum()),
                              sparse_description(model, x.ivar, batch.ids) if sparse.any() else None)
        features = {}
        if scan is not None:
            features = _fit_features(summ, summ_net, pdf_net, zb.edges, fit, scan_cols, x, out_of_domain, evidence)
        if cal is not None:
            p_dz01, qop = cal.apply({**summ, **features})
        else:
            p_dz01, qop = summ["p_window"], np.ones(n, dtype=np.int16)
        zwarn = np.zeros(n, dtype=np.int64)
        info = np.zeros(n, dtype=np.int32)
        zwarn |= np.where(x.valid_fraction < self.min_valid_fraction, int(ZWarn.LITTLE_COVERAGE), 0)
        all_masked = x.valid_fraction <= 0
        zwarn |= np.where(all_masked, int(ZWarn.NODATA), 0)
        info |= np.where(~x.continuum_detected & ~all_masked, int(ZInfo.LOW_SN), 0).astype(np.int32)
        zwarn |= np.where(x.bad_input, int(ZWarn.POORDATA), 0)
        if "noise_estimated" in batch.labels:
            est = np.asarray(batch.labels["noise_estimated"]).astype(bool)
            info |= np.where(est, int(ZInfo.NOISE_ESTIMATED), 0).astype(np.int32)
        zwarn |= np.where(out_of_domain, int(ZWarn.OUT_OF_DOMAIN), 0)
        info |= np.where(summ["n_peaks"] > 1, int(ZInfo.MULTI_PEAK), 0).astype(np.int32)
        zwarn |= np.where(p_dz01 < 0.5, int(ZWarn.LOW_PEAK_PROB), 0)
        if fit is not None:
            zwarn |= np.where(fit.disagree, int(ZWarn.REFINE_DISAGREE), 0)
            info |= np.where(fit.poor_fit, int(ZInfo.POOR_FIT), 0).astype(np.int32)
            zwarn |= np.where(np.isfinite(fit.rchi2) & (fit.refined < 0), int(ZWarn.BAD_MINFIT), 0)
        info |= np.where(x.outside_coverage, int(ZInfo.UNTRAINED_PIXELS), 0).astype(np.int32)
        if "sky_masked" in batch.labels:  # real input given the training instrument's sky masks
            sky_masked = np.asarray(batch.labels["sky_masked"], dtype=bool)
            info |= np.where(sky_masked, int(ZInfo.SKY_MASKED), 0).astype(np.int32)
        zwarn |= np.where(x.implausible_flux, int(ZWarn.IMPLAUSIBLE_FLUX), 0)
        if scan is not None:
            disagree = (features["scan_disagree"] > 0) & (np.nan_to_num(scan_cols["SCAN_DCHI2"]) > SCAN_DISAGREE_DCHI2)
            zwarn |= np.where(disagree, int(ZWarn.SCAN_DISAGREE), 0)
            z_rep = np.asarray(summ["z"], dtype=np.float64)
            at_limit = (z_rep - zb.z_min < SUCCESS_DZ) | (zb.z_max - z_rep < SUCCESS_DZ)
            zwarn |= np.where(at_limit, int(ZWarn.Z_FITLIMIT), 0)
            excluded = features["log_net_mass"] < np.log(NET_EXCLUDES_MASS)
            zwarn |= np.where(excluded, int(ZWarn.NET_EXCLUDES), 0)
        if evidence is not None:  # no redshift feature beyond a smooth continuum: the z is a guess
            zwarn |= np.where(np.isfinite(evidence) & (evidence < NO_FEATURES_DCHI2), int(ZWarn.NO_FEATURES), 0)
        if fit is not None:  # a few wild pixels dominated the fit (refitted without them): never qop 4
            zwarn |= np.where(fit.outlier_dominated, int(ZWarn.FIT_OUTLIERS), 0)
        spectype = types.spectype if types is not None else None
        qop = capped_qop(qop, zwarn, scan is not None, spectype)
        if foreign:  # another instrument's arms: no validation spectrum was like them
            qop = np.minimum(qop, 1).astype(np.int16)
        p_dz01 = capped_p(p_dz01, zwarn, scan is not None, spectype)  # outside the calibration's domain
        temperature = cal.interval_temperature if cal is not None else 1.0
        if cal is not None and cal.interval_levels_by_qop:  # each QOP class its own levels
            intervals = {k: np.empty(n) for k in ("z_lo68", "z_hi68", "z_lo95", "z_hi95")}
            for q in np.unique(qop):
                sel = qop == q
                part = central_intervals(pdf[sel], zb.edges, cal.levels_for(int(q)), temperature)
                for k in intervals:
                    intervals[k][sel] = part[k]
        else:
            intervals = summ if levels == (0.68, 0.95) and temperature == 1.0 else \
                central_intervals(pdf, zb.edges, levels, temperature)
        fitted = fit.refined >= 0 if fit is not None else np.zeros(n, bool)
        rows = _redrock_columns(batch, x, summ, intervals, fit, scan_cols, fitted)
        if types is not None:
            _with_spectype(rows, types)
        rows["ZWARN"] = zwarn | np.where(rows["DELTACHI2"] < SMALL_DELTA_CHI2_LIMIT, int(ZWarn.SMALL_DELTA_CHI2), 0)
        rows.update({"Z_MEAN": summ["z_mean"], **{k.upper(): intervals[k] for k in
                                                   ("z_lo68", "z_hi68", "z_lo95", "z_hi95")}})
        rows.update(P_DZ01=p_dz01, QOP=qop, ZWARN_INFO=info,
                    LOGMSTAR=out["logmstar_mean"].numpy() * m_sd + m_mu,
                    LOGMSTAR_ERR=np.exp(out["logmstar_logsigma"].numpy()) * m_sd,
                    LOGSFR=out["logsfr_mean"].numpy() * s_sd + s_mu,
                    LOGSFR_ERR=np.exp(out["logsfr_logsigma"].numpy()) * s_sd)
        for k, dt in CATALOGUE_DTYPES.items():
            keep_nan = k in ("CHI2", "DELTACHI2")  # NaN: no fit ran
            value = np.asarray(rows[k])
            rows[k] = value.astype(dt) if keep_nan or dt.kind == "U" else np.nan_to_num(value.astype(dt))
        if fit is not None:
            # Z_NET: the network's own estimate (fit.z_net is the PDF's the refinement started from)
            rows.update(Z_NET=summ_net["z"] if scan is not None else fit.z_net, RCHI2=fit.rchi2, REFINED=fit.refined,
                        FEATURE_DCHI2=evidence if evidence is not None else np.full(n, np.nan),
                        QSO_DCHI2=types.qso_dchi2 if types is not None else np.full(n, np.nan),
                        STAR_DCHI2=types.star_dchi2 if types is not None else np.full(n, np.nan))
            for k, dt in REFINE_DTYPES.items():
                rows[k] = np.asarray(rows[k]).astype(dt)
        if scan_cols is not None:
            for k, dt in SCAN_DTYPES.items():
                rows[k] = np.asarray(scan_cols[k]).astype(dt)
        if self.with_pdf:
            rows["Z_PDF"] = pdf.astype(np.float32)
        if self.with_net_pdf:
            rows["z_pdf_net"] = pdf_net.astype(np.float32)
            if not features:
                features = _fit_features(summ, summ_net, pdf_net, zb.edges, fit, scan_cols, x, out_of_domain,
                                         evidence)
            for k, v in {**summ, **features}.items():
                rows[f"q_{k}"] = np.asarray(v)
        return rows, sparse_info


def _redrock_columns(batch: SpectraBatch, x, summ: dict, intervals: dict, fit, scan_cols: dict | None,
                     fitted: np.ndarray) -> dict[str, np.ndarray]:
    """Redrock's columns (:data:`mtopnet.columns.REDROCK_SCHEMA`) of one batch, but ZWARN.

    DELTACHI2: the refinement's (chi2 of the best other PDF peak > SEPARATION_KMS away minus
    the best) where it fitted two peaks or more; else, where the full-range scan ran, the scan's
    (its best minimum > SEPARATION_KMS away minus its best) if the scan's best is within
    SEPARATION_KMS of Z, 0 if not (another z fits at least as well); NaN where no fit ran.
    """
    n = len(batch)
    rows: dict[str, np.ndarray] = {"TARGETID": np.asarray(batch.ids), "Z": summ["z"]}
    z = np.asarray(summ["z"], dtype=np.float64)
    rows["ZERR"] = np.where(fitted, fit.z_err, 0.5 * (intervals["z_hi68"] - intervals["z_lo68"])) \
        if fit is not None else 0.5 * (intervals["z_hi68"] - intervals["z_lo68"])
    dchi2 = np.full(n, np.nan)
    if fit is not None:
        k = np.clip(fit.refined, 0, None).astype(np.int64)
        rows["CHI2"] = np.where(fitted, fit.peak_chi2[np.arange(n), k], np.nan)
        rows["COEFF"] = np.where(fitted[:, None], fit.coeff, 0.0)
        rows["NPIXELS"] = fit.n_pixels
        dchi2 = np.where(fitted, fit.delta_chi2, np.nan)
    else:
        rows["CHI2"], rows["COEFF"] = np.full(n, np.nan), np.zeros((n, 1))
        rows["NPIXELS"] = (np.asarray(x.ivar) > 0).sum(axis=1)
    if scan_cols is not None:
        with np.errstate(invalid="ignore"):
            same = np.abs(np.log1p(scan_cols["SCAN_Z"]) - np.log1p(z)) <= SEPARATION_KMS / C_KMS
        from_scan = np.where(same, scan_cols["SCAN_DCHI2"], 0.0)
        dchi2 = np.where(np.isnan(dchi2) & (scan_cols["SCANNED"] > 0), from_scan, dchi2)
    rows["FITMETHOD"] = np.where(fitted, "PCA", "NONE")
    rows["SPECTYPE"], rows["SUBTYPE"] = np.full(n, "GALAXY"), np.full(n, "")
    rows["NCOEFF"] = np.where(fitted, rows["COEFF"].shape[1], 0)
    rows["DELTACHI2"] = dchi2
    return rows


def _with_spectype(rows: dict[str, np.ndarray], types) -> None:
    """Rows of QSO / STAR objects (:class:`mtopnet.refine.SpectypeResult`) take that fit's Z,
    ZERR, CHI2, NPIXELS, COEFF and its gain over the galaxy fit as DELTACHI2, as Redrock
    reports the best spectral type's; SPECTYPE and SUBTYPE for every row. In place."""
    other = types.spectype != "GALAXY"
    rows["SPECTYPE"], rows["SUBTYPE"] = types.spectype, types.subtype
    if not other.any():
        return
    rows["Z"] = np.where(other, types.z, rows["Z"])
    rows["ZERR"] = np.where(other, types.z_err, rows["ZERR"])
    rows["CHI2"] = np.where(other, types.chi2, rows["CHI2"])
    rows["NPIXELS"] = np.where(other, types.npix, rows["NPIXELS"])
    gain = np.where(types.spectype == "QSO", types.qso_dchi2, types.star_dchi2)
    rows["DELTACHI2"] = np.where(other, gain, rows["DELTACHI2"])
    coeff = np.asarray(rows["COEFF"], dtype=np.float64).copy()
    k = min(coeff.shape[1], types.coeff.shape[1])
    coeff[other] = 0.0
    coeff[other, :k] = types.coeff[other, :k]
    rows["COEFF"] = coeff
    rows["NCOEFF"] = np.where(other, (types.coeff != 0).sum(axis=1), rows["NCOEFF"])
    rows["FITMETHOD"] = np.where(other, "PCA", rows["FITMETHOD"])


NET_EXCLUDES_MASS = 1e-3
"""The network's PDF mass within +-0.01 of the reported z below which fit and PDF disagree (NET_EXCLUDES)."""
SCAN_DISAGREE_DCHI2 = 9.0
"""The scan's own best z, > 0.01 from the reported one, fits better by more than this: SCAN_DISAGREE."""


def _fit_features(summ: dict, summ_net: dict, pdf_net: np.ndarray, edges: np.ndarray, fit, scan_cols: dict | None,
                  x, out_of_domain: np.ndarray, evidence: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The :data:`mtopnet.quality.FIT_FEATURES` of one batch (N,) each."""
    n = len(summ["z"])
    z = np.asarray(summ["z"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        feats = {
            "log_rchi2": np.log(np.maximum(fit.rchi2, 1e-3)) if fit is not None else np.zeros(n),
            "net_disagree": (np.abs(summ_net["z"] - z) > SUCCESS_DZ).astype(np.float64),
            "log_net_mass": np.log(np.maximum(window_mass(pdf_net, edges, z), 1e-6)),
            "valid_fraction": np.asarray(x.valid_fraction, dtype=np.float64),
            "log_inv_snr": np.log10(np.maximum(x.noise, 1e-12) / np.maximum(x.scale, 1e-12)),
            "continuum_detected": np.asarray(x.continuum_detected, dtype=np.float64),
            "out_of_domain": np.asarray(out_of_domain, dtype=np.float64),
            "log_feature_dchi2": np.log1p(np.maximum(np.nan_to_num(evidence), 0.0)) if evidence is not None
            else np.zeros(n),
        }
        if scan_cols is not None:
            scanned = scan_cols["SCANNED"] > 0
            feats["scanned"] = scanned.astype(np.float64)
            feats["log_scan_dchi2"] = np.where(scanned, np.log1p(np.maximum(np.nan_to_num(scan_cols["SCAN_DCHI2"]),
                                                                            0)), 0.0)
            feats["scan_disagree"] = (scanned & (np.abs(np.nan_to_num(scan_cols["SCAN_Z"], nan=-9.0) - z)
                                                 > SUCCESS_DZ)).astype(np.float64)
    return {k: np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) for k, v in feats.items()}


# ----------------------------------------------------------------------------- files


_INTEGER_ID_FORMATS = ("desi", "hdf5")
"""Input formats whose ids are integers (DESI TARGETID, store ids); the others' are text."""


def _store_resolution(inputs: list[str | Path]) -> dict[str, float] | None:
    """Arm resolutions of the instrument named in the first HDF5 store among ``inputs``."""
    for path in inputs:
        if Path(path).is_file() and h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                name = f.attrs.get("instrument")
            if name is None:
                return None
            try:
                inst = load_instrument(name.decode() if isinstance(name, bytes) else str(name))
            except (UserError, ConfigError, OSError):
                return None
            return {a.name: float(a.config.resolution) for a in inst.arms}
    return None


def predict_store(model: TrainedModel, inputs: list[str | Path] | str | Path, out: str | Path, *,
                  batch_size: int = BATCH_SIZE, with_pdf: bool = False, overwrite: bool = False,
                  progress: bool = False, format: str | None = None, refine: bool | Refiner = True,
                  priors_out: str | Path | None = None, workers: int = 1, scheduler: str | None = None,
                  shard_size: int = SHARD_SIZE, threads: int = 1) -> int:
    """Predict for every spectrum of ``inputs`` into catalogue ``out``; returns the number of rows.

    :func:`predict_sharded` (same arguments), for a caller that needs only the row count.
    """
    return predict_sharded(model, inputs, out, batch_size=batch_size, with_pdf=with_pdf, overwrite=overwrite,
                           progress=progress, format=format, refine=refine, priors_out=priors_out, workers=workers,
                           scheduler=scheduler, shard_size=shard_size, threads=threads).n_rows


def predict_sharded(model: TrainedModel, inputs: list[str | Path] | str | Path, out: str | Path, *,
                    batch_size: int = BATCH_SIZE, with_pdf: bool = False, overwrite: bool = False,
                    progress: bool = False, format: str | None = None, refine: bool | Refiner = True,
                    priors_out: str | Path | None = None, workers: int = 1, scheduler: str | None = None,
                    shard_size: int = SHARD_SIZE, threads: int = 1) -> ShardRun:
    """Predict for every spectrum of ``inputs`` (stores or files mtopnet.io reads) into catalogue ``out``.

    Sharded and resumable (:mod:`mtopnet.shards`): the inputs are cut into shards of
    ``shard_size`` store rows or files, each written to ``OUT.shards/`` when done; a re-run
    with the same model, inputs and options skips the shards done, and the catalogue is
    assembled from the shards in input order. ``workers`` > 1 runs the shards on a Dask
    LocalCluster of that many processes, ``scheduler`` (an address) on a Dask cluster. Each
    process computes up to ``threads`` batches at once (:func:`predict_batches`), every
    operation single-threaded: the catalogue is the same bytes for any ``workers`` and
    ``threads`` (and a re-run with other counts reuses the shards done). ``threads``
    defaults to 1 here; the CLI's default is this machine's CPUs / ``workers``
    (:func:`default_threads`).
    Streams: memory stays flat in the number of objects. Returns the run's
    :class:`~mtopnet.shards.ShardRun` (rows written, shards reused and computed).
    Out-of-domain spectra give one :class:`DomainWarning` at the end, with their number. While
    it runs, a second run on ``out`` is refused. ``refine``: as in :func:`predict_batches`
    (True: template refinement of z, the default). ``priors_out``: also a Redrock priors file
    there (:mod:`mtopnet.priors`; integer ids only). FITS catalogues get the inputs' per-object
    tables (DESI FIBERMAP, SDSS SPECOBJ) as HDUs of those names, row for row with the
    catalogue (:mod:`mtopnet.io.passthrough`).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    catalogue_format(out)
    check_writable(out, overwrite)
    if priors_out is not None:
        check_priors_out(priors_out, out, inputs, overwrite)
    if batch_size < 1:
        raise UserError(f"batch size: must be >= 1, got {batch_size}")
    if threads < 1:
        raise UserError(f"threads: must be >= 1, got {threads}")
    for path in inputs:
        if not Path(path).exists() and not any(ch in str(path) for ch in "*?["):
            raise UserError(f"{path}: no such file")
    shipped_refiner = refine is True  # a worker builds it from the model: not sent with every shard
    if refine is True:
        refine = Refiner.from_model(model)
    meta = catalogue_provenance(model, list(inputs), refine if refine is not False and refine is not None else None)
    device = str(next(model.network.parameters()).device)
    loaded = {"model": file_digest(model.source), "device": device,  # what a worker loads, by content
              "refine": None if not refine else [repr(refine.config), refine.basis.meta]}
    settings = {**loaded, "batch_size": batch_size, "with_pdf": with_pdf, "format": format}
    shards = plan_shards(list(inputs), format, shard_size, settings)
    log.debug("%d shard(s); each process computes %d batch(es) of %d at once", len(shards), threads, batch_size)
    kinds = {unit.fmt in _INTEGER_ID_FORMATS for shard in shards for unit in shard.units}
    job = _ShardJob(model.source, device, batch_size, with_pdf, True if shipped_refiner else (refine or False),
                    threads, as_text=len(kinds) > 1,
                    arm_resolution=_store_resolution(list(inputs)), cache_key=f"predict-{json_digest(loaded)}")
    passthrough = _passthrough([u for shard in shards for u in shard.units]) if catalogue_format(out) == "fits" \
        else None
    priors: list[dict[str, np.ndarray]] = []
    seed_cache(job.cache_key, (model, refine or None))  # in this process: the model given, not a reload
    try:
        run = run_sharded(_predict_shard, job, shards, out, workers=workers, scheduler=scheduler,
                          overwrite=overwrite, progress=progress,
                          zbin_centres=model.zbins.centres if with_pdf else None, meta=meta, chunk_rows=batch_size,
                          passthrough=passthrough,
                          on_rows=(lambda rows: priors.append(prior_columns(rows))) if priors_out is not None
                          else None)
    finally:
        drop_cached(job.cache_key)
        if threading.current_thread() is threading.main_thread():  # the runner is the main thread's
            close_shard_runners()
    if priors_out is not None:
        write_priors(priors_out, priors)
    report = DomainReport()
    for info in run.infos:
        report.merge(DomainReport(**info.get("domain", {})))
    report.warn(model)  # once per run, with the count
    return run


def _passthrough(units: list) -> Callable[[list[dict]], dict[str, Any]] | None:
    """The inputs' per-object tables for the catalogue: read now, put in catalogue order by the
    run's shard infos (each shard's ``unit_rows``); None when no input has one."""
    tables = input_passthrough(units)
    if not any(tables):
        return None
    labels = [unit.label for unit in units]

    def in_catalogue_order(infos: list[dict]) -> dict[str, Any]:
        if any("unit_rows" not in info for info in infos):  # a shard computed by other code: no counts
            return {}
        return stack_passthrough(tables, [n for info in infos for n in info["unit_rows"]], labels)
    return in_catalogue_order


@dataclasses.dataclass(frozen=True)
class _ShardJob:
    """What every shard of one predict run shares (pickled to Dask workers): the model (path as
    :func:`load_model` takes it) and device, the options, the id type, the arms' resolution."""

    model: str
    device: str
    batch_size: int
    with_pdf: bool
    refine: bool | Refiner
    threads: int
    as_text: bool
    arm_resolution: dict[str, float] | None
    cache_key: str


def _load_for_job(job: _ShardJob) -> tuple[TrainedModel, Refiner | None]:
    model = load_model(job.model, device=job.device)
    refiner = Refiner.from_model(model) if job.refine is True else (job.refine or None)
    return model, refiner


def scan_sky(model: TrainedModel) -> np.ndarray | None:
    """The night sky of the training arms on the model grid (:func:`sky_residual_vectors`)
    when the model's scan fits it (``model.scan.sky``), else None. UserError if it does and
    the training instrument cannot be loaded."""
    if model.scan is None or not model.scan.sky:
        return None
    inst = training_instrument(model)
    if inst is None:
        name = (model.instrument or {}).get("name")
        raise UserError(f"the model's template scan fits the night sky of its training instrument "
                        f"({name!r}), which cannot be loaded here")
    return sky_residual_vectors(inst, model.preprocessor)


def training_instrument(model: TrainedModel) -> Instrument | None:
    """The instrument the model's training stores were simulated with (None if unknown or
    no longer loadable, e.g. a user's YAML that has moved, or its sky tables are missing)."""
    name = (model.instrument or {}).get("name")
    if not name:
        return None
    try:
        inst = load_instrument(str(name))
        inst.sky_mask(np.array([inst.wave_range[0]]))  # its sky tables load (moons1d installed)
    except (UserError, ConfigError, OSError):
        return None
    return inst


_RUNNERS: dict[str, _BatchRunner] = {}
"""The main thread's :class:`_BatchRunner` for the shards of the current in-process run (at
most one: its processes are forked once per run, not once per shard; closed by
:func:`predict_sharded` when the run ends)."""


def _runner_key(job: _ShardJob) -> str:
    return json_digest({"model": job.cache_key, "with_pdf": job.with_pdf, "threads": job.threads,
                        "arm_resolution": job.arm_resolution})


def _shard_runner(job: _ShardJob, model: TrainedModel, refiner: Refiner | None) -> _BatchRunner:
    """The runner for ``job``'s shards in this process, built at its first shard."""
    key = _runner_key(job)
    runner = _RUNNERS.get(key)
    if runner is None or runner.closed:
        close_shard_runners()
        runner = _RUNNERS[key] = _BatchRunner(_shard_predictor(job, model, refiner), job.threads)
    return runner


def _shard_predictor(job: _ShardJob, model: TrainedModel, refiner: Refiner | None) -> _BatchPredictor:
    return _BatchPredictor(model, with_pdf=job.with_pdf, arm_resolution=job.arm_resolution,
                           min_valid_fraction=MIN_VALID_FRACTION, refine=refiner or False,
                           with_net_pdf=False, sky_masks=True)


def close_shard_runners() -> None:
    """End this process's shard runner (its forked processes), if any."""
    while _RUNNERS:
        _RUNNERS.popitem()[1].close()


def _predict_shard(job: _ShardJob, shard: Shard, info: dict) -> Iterator[dict[str, np.ndarray]]:
    """Catalogue rows of one shard (:data:`mtopnet.shards.ComputeFn`); its DomainReport goes to ``info``."""
    model, refiner = worker_cached(job.cache_key, lambda: _load_for_job(job))  # once per worker process
    unit_rows = [0] * len(shard.units)
    batches = shard.batches(job.batch_size, unit_rows)
    if job.as_text:  # integer and text ids mixed (DESI + SDSS): one text id column
        batches = (dataclasses.replace(b, ids=np.asarray(b.ids).astype(str)) for b in batches)
    report = DomainReport()
    # job.threads batches at once, every operation single-threaded: the same bytes in-process and on a worker
    # in the main thread (an in-process run) one runner serves all the shards; in a Dask worker's
    # task threads, a runner per shard (as predict_batches)
    main = threading.current_thread() is threading.main_thread()
    runner = _shard_runner(job, model, refiner) if main else _BatchRunner(_shard_predictor(job, model, refiner),
                                                                          job.threads)
    yield from runner.rows(_chunks(batches, job.batch_size), report, keep=main)
    info["domain"] = dataclasses.asdict(report)
    info["unit_rows"] = unit_rows  # catalogue rows per input unit (pass-through tables)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="spectrum stores or files: HDF5 stores, moons1d, DESI, SDSS, FITS tables or images, "
                        "text (docs/readers.md)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"shipped model name or checkpoint path (default {DEFAULT_MODEL})")
    p.add_argument("--out", required=True, help="catalogue: .fits, .parquet or .csv")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"spectra per batch (default {BATCH_SIZE})")
    p.add_argument("--pdf", action="store_true", help="also write the full redshift PDF and the bin centres")
    p.add_argument("--format", default=None,
                   help=f"input format: {', '.join(FORMATS)} (default: detected from each file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing catalogue")
    p.add_argument("--priors-out", default=None, metavar="FILE.fits",
                   help="also write a Redrock priors file (rrdesi --priors FILE; integer ids only)")
    p.add_argument("--no-refine", action="store_true",
                   help="report the network's z alone (no template refinement, see docs/refine.md)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes: 1 (default) runs in this process, N > 1 on a Dask LocalCluster (docs/scale.md)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the shards on the Dask cluster of this scheduler (e.g. tcp://host:8786)")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE,
                   help=f"store rows, or objects of other inputs (a file, or the files of one moons1d object), "
                        f"per shard (default {SHARD_SIZE}); a re-run skips the shards done")
    p.add_argument("--threads", type=int, default=None,
                   help="batches computed at once by each process, every operation single-threaded: in processes "
                        "it forks (Linux, --device cpu, --workers 1 without --scheduler), else in threads (default: "
                        "this machine's CPUs / --workers, at least 1; 1 with --scheduler); the catalogue's rows are "
                        "the same for any --threads and --workers")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the network runs: cpu (default) or cuda (error without a GPU); "
                        "preprocessing and refinement run on the CPU")


def default_threads(workers: int, scheduler: str | None) -> int:
    """``--threads`` when not given: the CPUs this process may use, shared by ``workers``
    local processes (at least 1); 1 for a ``scheduler``'s workers, whose cores are not known here."""
    if scheduler is not None:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(workers, 1))


def run_cli(args: argparse.Namespace) -> int:
    catalogue_format(args.out)
    check_writable(args.out, args.overwrite)
    if args.priors_out is not None:  # before the model loads and anything is written
        check_priors_out(args.priors_out, args.out, args.inputs, args.overwrite)
    if args.batch_size < 1:
        raise UserError(f"--batch-size: must be >= 1, got {args.batch_size}")
    for name in ("workers", "shard_size", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    model = load_model(args.model, device=args.device)
    log.debug("model %s on %s", model.source, args.device)
    run = predict_sharded(model, args.inputs, args.out, batch_size=args.batch_size, with_pdf=args.pdf,
                          overwrite=args.overwrite, progress=progress_enabled(), format=args.format,
                          refine=not args.no_refine, priors_out=args.priors_out, workers=args.workers,
                          scheduler=args.scheduler, shard_size=args.shard_size,
                          threads=args.threads or default_threads(args.workers, args.scheduler))
    resumed = f" ({run.n_reused} of {run.n_shards} shards from an earlier run)" if run.n_reused else ""
    priors = f"; Redrock priors in {args.priors_out}" if args.priors_out else ""
    print(f"{args.out}: {run.n_rows} rows{resumed}{priors}")  # the command's result line (stdout)
    return 0


__all__ = ["BATCH_SIZE", "TrainedModel", "load_model",
           "predict_batches", "domain_check", "domain_problem", "expected_domain",
           "DomainWarning", "DomainReport", "predict_store", "predict_sharded", "COMMAND", "add_arguments", "run_cli"]
