"""The project's HDF5 spectrum store.

Layout (one file, N objects, one group per spectrograph arm)::

    /ids                      (N,) int64        object identifiers, unique in the file
                                                (or fixed-length UTF-8 bytes for string ids)
    /labels/<name>            (N,)              per-object truth or metadata, e.g.
                                                z, logmstar, logsfr, logsfr_inst, hmag,
                                                halpha_flux, oiii_flux, type, ...
                              simulate --population training / --nuisance randomised add:
                                quiescent (bool), agn (bool), line_scale,
                                sfh_family (int8: 0 continuity, 1 delayed-tau, 2 constant,
                                  3 rising, 4 recent burst, 5 post-starburst,
                                  6 recently quenched; galaxies.population.SFH_FAMILIES),
                                max_line_flux (erg/s/cm2, max of Halpha and [OIII] 5008,
                                  attenuated), line_snr (matched-filter S/N of the
                                  strongest emission line in the noisy spectrum),
                                nu_airmass, nu_seeing (arcsec), nu_exposure_h,
                                nu_sky_residual, nu_xsw (int8), nu_throughput (0 worst -
                                  1 best), nu_source_r_e (arcsec), nu_lsf_scale,
                                nu_wave_shift_pix, nu_telluric_left,
                                nu_fluxcal_offset_<ARM>, nu_fluxcal_amp_<ARM>
                                (docs/simulator.md)
                              every simulate run adds:
                                light_fraction (share of the galaxy's light that the
                                  point-source-calibrated spectrum holds, 1 for a point
                                  source; instruments.light_fraction). logmstar and
                                  logsfr stay the whole galaxy's; what a spectrum shows
                                  is spectrum_property()
    /arms/<ARM>/wave          (L,) float64      vacuum Angstrom, pixel centres
    /arms/<ARM>/flux          (N, L) float32    1e-17 erg/s/cm2/A
    /arms/<ARM>/ivar          (N, L) float32    1/(1e-17 erg/s/cm2/A)^2, 0 = no information
    /arms/<ARM>/mask          (N, L) uint8      bits: 1 bad pixel, 2 strong sky line,
                                                4 deep telluric band
    attrs (root)              mtopnet_version, schema_version, instrument, arms (list),
                              provenance (JSON: config, seed, arguments, input hashes)

A store may also be *virtual* (:func:`write_virtual_store`; what ``mtopnet simulate`` writes):
``ids``, ``labels`` and ``wave`` are stored in it, and every arm's ``flux``, ``ivar`` and
``mask`` is an HDF5 virtual dataset that maps row ranges of store files beside it (the
shards, named by paths relative to the store's folder, so the store and its shard folder
move together). Readers see one store; the root attribute ``virtual_sources`` (JSON:
``[[relative path, bytes], ...]``) lets :func:`open_store` refuse, with one line, a store
whose shard file is missing or changed size (HDF5 itself would read zeros for it).
:func:`consolidate_store` copies any store into one self-contained file.

The arms' datasets are chunked by rows, (<= 256, L), so that a batch of rows reads whole
chunks. The masks are always gzip-compressed (:data:`MASK_COMPRESSION`); flux and ivar only
when a writer is given ``compression`` (``gzip`` or ``lzf``, after the byte shuffle), since
noisy floats shrink little (docs/scale.md has the measured sizes and read speeds). Nothing
reads a store by memory map (training builds its own cache), so any layout reads the same.

Files are written under a temporary name and renamed when complete (:func:`write_store`),
so a reader never sees a half-written store. Writing is deterministic: the same content
gives the same bytes (no timestamps). :func:`write_store` builds the file in memory and
writes its bytes with plain file I/O, so a full disk, a read-only folder or a missing
permission ends as one-line :class:`UserError` (:func:`write_error`) with the temporary file
removed, never inside the HDF5 library (which, failing mid-write, can crash the process).

Over 500 lines: the schema and every way of writing it (one file, a merge, a virtual store
over shard files) and of reading it back (with the checks of a virtual store's sources) are
one format, kept in one place.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import h5py
import numpy as np

from . import __version__
from .config import UserError

SCHEMA_VERSION = 1


@dataclass
class SpectraBatch:
    """N objects' spectra, per arm, with labels. The in-memory twin of a store file.

    ids: (N,) int64; labels: name -> (N,) array; arms: arm name -> dict with
    ``wave`` (L,), ``flux``/``ivar`` (N, L) float32 and ``mask`` (N, L) uint8.
    n_bad_pixels: (N,) int64, pixels per object that a reader found corrupt and cleaned (NaN or
    inf flux, NaN/inf/negative ivar or error, outside any bad-pixel mask the file gave); zeros
    when not given. Prediction sets ZWARN bit POORDATA where it is > 0. Not stored in the HDF5 file.
    """

    ids: np.ndarray
    arms: dict[str, dict[str, np.ndarray]]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    n_bad_pixels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.n_bad_pixels is None:
            self.n_bad_pixels = np.zeros(len(self.ids), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def validate(self) -> None:
        n = len(self.ids)
        for name, arm in self.arms.items():
            wave = arm["wave"]
            for key in ("flux", "ivar", "mask"):
                if arm[key].shape != (n, len(wave)):
                    raise UserError(f"arm {name}: {key} has shape {arm[key].shape}, "
                                    f"expected ({n}, {len(wave)})")
        for key, value in self.labels.items():
            if len(value) != n:
                raise UserError(f"label {key}: has {len(value)} rows, expected {n}")
        if len(self.n_bad_pixels) != n:
            raise UserError(f"n_bad_pixels: has {len(self.n_bad_pixels)} rows, expected {n}")

    def subset(self, index: np.ndarray | slice) -> "SpectraBatch":
        return SpectraBatch(
            ids=self.ids[index],
            arms={a: {"wave": d["wave"], "flux": d["flux"][index], "ivar": d["ivar"][index],
                      "mask": d["mask"][index]} for a, d in self.arms.items()},
            labels={k: v[index] for k, v in self.labels.items()},
            n_bad_pixels=np.asarray(self.n_bad_pixels)[index],
        )

    @staticmethod
    def concatenate(parts: list["SpectraBatch"]) -> "SpectraBatch":
        first = parts[0]
        return SpectraBatch(
            ids=np.concatenate([p.ids for p in parts]),
            arms={a: {"wave": first.arms[a]["wave"],
                      **{k: np.concatenate([p.arms[a][k] for p in parts]) for k in ("flux", "ivar", "mask")}}
                  for a in first.arms},
            labels={k: np.concatenate([p.labels[k] for p in parts]) for k in first.labels},
            n_bad_pixels=np.concatenate([np.asarray(p.n_bad_pixels) for p in parts]),
        )


def encode_ids(ids: np.ndarray) -> np.ndarray:
    """Ids as stored: int64 when integral, else fixed-length UTF-8 bytes."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    return np.char.encode(ids.astype(str), "utf-8")


def decode_ids(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_ids`: int64 or str."""
    return np.char.decode(ids, "utf-8") if ids.dtype.kind == "S" else ids


PROPERTY_LABELS = ("logmstar", "logsfr")
"""The labels of the network's property heads (log10 Msun and log10 Msun/yr)."""


def spectrum_property(labels: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """Label ``name`` (one of :data:`PROPERTY_LABELS`) for the light the spectrum holds.

    ``labels[name] + log10(labels["light_fraction"])``: a spectrum that holds 60% of a
    galaxy's light (a fibre on an extended source) shows the stars and star formation of 60%
    of the galaxy. The network is trained on, and evaluated against, this quantity; a store
    without ``light_fraction`` (spectra that hold all the light, as aperture-corrected ones
    do) gives ``labels[name]`` -- with a UserWarning where the labels hold ``r_e`` (a store
    ``mtopnet simulate`` wrote before it recorded ``light_fraction``: extended galaxies whose
    spectra hold part of their light). Returns (N,) float64 (NaN where the label is NaN).
    Raises KeyError if ``labels`` has no ``name``, ValueError for a name not in
    :data:`PROPERTY_LABELS`.
    """
    if name not in PROPERTY_LABELS:
        raise ValueError(f"spectrum_property: {name!r} is not one of {PROPERTY_LABELS}")
    value = np.asarray(labels[name], dtype=np.float64)
    if "light_fraction" not in labels:
        if "r_e" in labels:  # galaxies of known size: a store mtopnet simulate wrote before the label
            warnings.warn("a simulated store without labels/light_fraction: its log M* and log SFR are read as "
                          "the whole galaxy's, not the light in the spectrum; add the label with "
                          "python scripts/add_light_fraction.py STORE", UserWarning, stacklevel=2)
        return value
    frac = np.asarray(labels["light_fraction"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return value + np.where(frac > 0, np.log10(frac), np.nan)


def check_writable(path: str | Path, overwrite: bool) -> Path:
    """Refuse a folder, an existing output unless ``overwrite``, and an unwritable folder to write in."""
    path = Path(path)
    if path.is_dir():  # before "exists": --overwrite would not help
        raise UserError(f"{path}: is a folder; name a file to write")
    if path.exists() and not overwrite:
        raise UserError(f"{path}: exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{parent}: no such directory")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{parent}: not writable")
    return path


_WRITE_HINTS = {errno.ENOSPC: "the disk is full; free space and run again",
                errno.EDQUOT: "the disk quota is exceeded; free space and run again",
                errno.EROFS: "the file system is read-only; choose another output",
                errno.EACCES: "no permission to write there; choose another output",
                errno.EPERM: "no permission to write there; choose another output"}


def write_error(path: str | Path, exc: BaseException) -> UserError:
    """One-line :class:`UserError` for a failed write of ``path``: the reason (errno from the
    exception, or from an HDF5 message's ``errno = N``) and what to do; partial output removed."""
    code = getattr(exc, "errno", None)
    if not code:
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    reason = os.strerror(code) if code else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    hint = _WRITE_HINTS.get(code or -1, "nothing was written")
    return UserError(f"{path}: cannot write ({reason}); {hint}")


def remove_partial(path: str | Path) -> None:
    """Remove a partial output file if there is one (ignoring a failure to remove it)."""
    with contextlib.suppress(OSError):
        Path(path).unlink(missing_ok=True)


def write_file_atomic(path: str | Path, data: memoryview | bytes) -> None:
    """Write ``data`` to ``path`` atomically (``path.tmp``, then rename) with plain file I/O.

    Any OSError (full disk, read-only folder, permission) removes ``path.tmp`` and raises
    :func:`write_error`'s one-line :class:`UserError`; an existing ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_bytes(tmp, data)
        os.replace(tmp, path)
    except OSError as exc:
        remove_partial(tmp)
        raise write_error(path, exc) from None


def _write_root_attrs(f: h5py.File, arms: list[str], attrs: dict | None) -> None:
    """A store's root attributes: versions, the arm names, then ``attrs`` (str/int/float as
    they are, anything else as sorted JSON)."""
    f.attrs["mtopnet_version"] = __version__
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["arms"] = json.dumps(arms)
    for key, value in (attrs or {}).items():
        f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value, sort_keys=True)


def _write_bytes(path: Path, data: memoryview | bytes) -> None:
    """Write ``data`` to a new file ``path`` (plain file I/O; OSError on failure)."""
    with open(path, "wb") as handle:
        handle.write(data)


COMPRESSIONS = (None, "gzip", "lzf")
"""Compressions of the arms' flux and ivar: none, gzip (level 4) or lzf, each after HDF5's
byte shuffle; h5py's built-ins, so any h5py reads them. None by default: on MOONS spectra
they save 20-30% of the disk for several times the reading time (docs/scale.md)."""

MASK_COMPRESSION = {"compression": "gzip", "compression_opts": 4}
"""The arms' masks are always stored compressed: mostly zeros, they shrink ~18x (13 kB to
0.7 kB per MOONS spectrum, a tenth of the file) for ~25 us of reading per spectrum."""


def _compression_kw(compression: str | None, key: str = "flux") -> dict:
    """h5py ``create_dataset`` keywords of arm dataset ``key`` under a :data:`COMPRESSIONS`
    entry (``mask``: :data:`MASK_COMPRESSION` whatever the entry); UserError for another entry."""
    if compression not in (*COMPRESSIONS, "none"):
        raise UserError(f"compression: one of none, gzip, lzf; got {compression!r}")
    if key == "mask":
        return dict(MASK_COMPRESSION)
    if compression in (None, "none"):
        return {}
    return dict(compression=compression, shuffle=True, **({"compression_opts": 4} if compression == "gzip" else {}))


def write_store(path: str | Path, batch: SpectraBatch, attrs: dict | None = None,
                compression: str | None = None) -> None:
    """Write ``batch`` to ``path`` atomically (``path.tmp`` then rename).

    compression: None, ``gzip`` or ``lzf`` for the arms' flux and ivar (:data:`COMPRESSIONS`); the
    masks are compressed in any case (:data:`MASK_COMPRESSION`).
    The file is built in memory (about the size of the batch's arrays) and written with one
    plain write; any OSError (full disk, read-only folder, permission) removes ``path.tmp``
    and raises :func:`write_error`'s one-line :class:`UserError`.
    """
    path = Path(path)
    batch.validate()
    tmp = path.with_name(path.name + ".tmp")
    kw = dict(track_times=False)
    _compression_kw(compression)
    buffer = io.BytesIO()
    # no chunk cache: each chunk is placed in the file when it is written, in call order; with
    # the cache, a chunk is placed when its dataset closes, i.e. whenever Python frees the
    # dataset object (a garbage-collection cycle can delay it), and the bytes would depend on that
    with h5py.File(buffer, "w", track_order=True, rdcc_nbytes=0) as f:
        _write_root_attrs(f, list(batch.arms), attrs)
        f.create_dataset("ids", data=encode_ids(batch.ids), **kw)
        lab = f.create_group("labels", track_order=True)
        for key, value in batch.labels.items():
            lab.create_dataset(key, data=np.asarray(value), **kw)
        arms = f.create_group("arms", track_order=True)
        for name, arm in batch.arms.items():
            g = arms.create_group(name, track_order=True)
            n, length = arm["flux"].shape
            chunks = (max(1, min(n, 256)), length) if n else None
            g.create_dataset("wave", data=np.asarray(arm["wave"], dtype=np.float64), **kw)
            for key, dtype in (("flux", np.float32), ("ivar", np.float32), ("mask", np.uint8)):
                g.create_dataset(key, data=np.asarray(arm[key], dtype=dtype), chunks=chunks,
                                 **(dict(kw, **_compression_kw(compression, key)) if n else kw))
    try:
        _write_bytes(tmp, buffer.getbuffer())
        os.replace(tmp, path)
    except OSError as exc:
        remove_partial(tmp)
        raise write_error(path, exc) from None


def open_store(path: str | Path) -> h5py.File:
    """Open a store for reading, with a one-line error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path}: not an HDF5 file (or truncated)") from None
    if "ids" not in f or "arms" not in f:
        f.close()
        raise UserError(f"{path}: not an mtopnet store (no /ids or /arms)")
    try:
        _check_sources(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _check_sources(f: h5py.File, path: Path) -> None:
    """UserError (one line) if a virtual store's source file is missing or not its recorded size.

    HDF5 reads the fill value (zeros) for a virtual dataset's missing source, silently; this
    refuses the store instead. The sources are those ``virtual_sources`` lists with their sizes
    (:func:`write_virtual_store`'s stores: a stat per file, milliseconds for thousands), else
    those of every virtual arm dataset (existence only; slower: ~0.1 ms per mapping), resolved
    as HDF5 resolves them: relative to the store's folder.
    """
    recorded = f.attrs.get("virtual_sources")
    expected: dict[str, int | None] = {}
    if recorded is not None:
        expected.update({name: int(size) for name, size in json.loads(recorded)})
    else:
        for arm in f["arms"].values():
            for key in ("flux", "ivar", "mask"):
                d = arm.get(key)
                if isinstance(d, h5py.Dataset) and d.is_virtual:
                    for source in d.virtual_sources():
                        if source.file_name != ".":
                            expected.setdefault(source.file_name, None)
    folder = Path(os.path.abspath(path)).parent  # as HDF5 resolves: the folder of the name opened,
    prefix = os.environ.get("HDF5_VDS_PREFIX")  # after this environment variable's folder if set
    roots = ([Path(prefix.replace("${ORIGIN}", str(folder)))] if prefix else []) + [folder]
    for name, size in expected.items():
        source = next((r / name for r in roots if (r / name).exists()), folder / name)
        try:
            actual = source.stat().st_size
        except OSError:
            raise UserError(f"{path}: its data file {source} is missing; a virtual store needs its "
                            f"shard folder beside it (or use a consolidated copy)") from None
        if size is not None and actual != size:
            raise UserError(f"{path}: its data file {source} has {actual} bytes, not the {size} it was "
                            f"written with; the shard folder was changed, simulate the store again")


def store_info(path: str | Path) -> dict:
    """Number of objects, arms with their wavelengths, label names and root attributes."""
    with open_store(path) as f:
        return _info(f)


def _info(f: h5py.File) -> dict:
    """:func:`store_info` of an open store."""
    return {
        "n": int(f["ids"].shape[0]),
        "arms": {a: np.asarray(f["arms"][a]["wave"]) for a in json.loads(f.attrs["arms"])},
        "labels": list(f["labels"]) if "labels" in f else [],
        "attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()},
    }


def read_store(path: str | Path, start: int = 0, stop: int | None = None,
               labels: bool = True) -> SpectraBatch:
    """Read rows [start, stop) of a store into memory."""
    with open_store(path) as f:
        n = f["ids"].shape[0]
        stop = n if stop is None else min(stop, n)
        sl = slice(start, stop)
        arms = {}
        for a in json.loads(f.attrs["arms"]):
            g = f["arms"][a]
            arms[a] = {"wave": np.asarray(g["wave"]), "flux": g["flux"][sl], "ivar": g["ivar"][sl],
                       "mask": g["mask"][sl]}
        lab = {k: f["labels"][k][sl] for k in f["labels"]} if labels and "labels" in f else {}
        return SpectraBatch(ids=decode_ids(f["ids"][sl]), arms=arms, labels=lab)


def iter_store(path: str | Path, batch_size: int = 4096) -> Iterator[SpectraBatch]:
    """Stream a store in batches of ``batch_size`` rows (memory flat in N)."""
    n = store_info(path)["n"]
    for start in range(0, n, batch_size):
        yield read_store(path, start, start + batch_size)


def _check_parts(parts: list[str | Path]) -> list[dict]:
    """The parts' :func:`store_info`; UserError if their arms, wavelengths or label names differ."""
    if not parts:
        raise UserError("no store files to merge")
    infos = [store_info(p) for p in parts]
    for p, info in zip(parts, infos, strict=True):
        _check_like(p, info, parts[0], infos[0])
    return infos


def _check_like(path: str | Path, info: dict, first_path: str | Path, first: dict) -> None:
    """UserError unless store ``info`` has ``first``'s arms, wavelengths and label names."""
    if list(info["arms"]) != list(first["arms"]) or info["labels"] != first["labels"] or \
            any(not np.array_equal(w, first["arms"][a]) for a, w in info["arms"].items()):
        raise UserError(f"{path}: arms, wavelengths or labels differ from {first_path}")


def merge_stores(parts: list[str | Path], path: str | Path, attrs: dict | None = None,
                 chunk_rows: int = 256, compression: str | None = None) -> None:
    """Concatenate store files into ``path`` (atomically), streaming: memory flat in N.

    The parts (plain or virtual stores) must share arms, wavelengths and label names; their
    root attributes are replaced by ``attrs``. compression: as :func:`write_store`'s. Refused
    (UserError) when the disk lacks the room of the uncompressed arrays; a write that fails
    anyway removes ``path.tmp`` and raises :func:`write_error`'s UserError.
    """
    path = Path(path)
    _compression_kw(compression)
    infos = _check_parts(parts)
    first = infos[0]
    n = sum(i["n"] for i in infos)
    tmp = path.with_name(path.name + ".tmp")
    need = max(sum(Path(p).stat().st_size for p in parts),  # the parts' bytes, or (virtual parts) their
               n * sum(len(w) * 8 for w in first["arms"].values()))  # uncompressed flux and ivar
    try:
        free = shutil.disk_usage(path.parent if str(path.parent) else ".").free
    except OSError:
        free = need
    if free < need:  # HDF5 failing mid-write can crash the process: refuse before writing
        raise UserError(f"{path}: cannot write ({os.strerror(errno.ENOSPC)}: the merged store needs "
                        f"~{need / 1e6:.0f} MB, {free / 1e6:.0f} MB are free); {_WRITE_HINTS[errno.ENOSPC]}")
    try:
        _merge_into(tmp, parts, infos, n, attrs, chunk_rows, compression)
        os.replace(tmp, path)
    except OSError as exc:
        remove_partial(tmp)
        raise write_error(path, exc) from None


def _merge_into(tmp: Path, parts: list[str | Path], infos: list[dict], n: int, attrs: dict | None,
                chunk_rows: int, compression: str | None) -> None:
    """The body of :func:`merge_stores`: write the concatenation of ``parts`` to ``tmp``,
    ``chunk_rows`` rows at a time (memory flat in the parts' sizes)."""
    first = infos[0]
    kw = dict(track_times=False)
    with h5py.File(tmp, "w", track_order=True) as out:
        _write_root_attrs(out, list(first["arms"]), attrs)
        with h5py.File(parts[0], "r") as f0:
            id_dtype = f0["ids"].dtype
            if id_dtype.kind == "S":  # the longest id of all parts
                id_dtype = np.dtype(f"S{max(h5py.File(p, 'r')['ids'].dtype.itemsize for p in parts)}")
            out.create_dataset("ids", shape=(n,), dtype=id_dtype, **kw)
            lab = out.create_group("labels", track_order=True)
            for k in first["labels"]:
                lab.create_dataset(k, shape=(n,), dtype=f0["labels"][k].dtype, **kw)
            arms = out.create_group("arms", track_order=True)
            for a, wave in first["arms"].items():
                g = arms.create_group(a, track_order=True)
                g.create_dataset("wave", data=wave, **kw)
                for key, dtype in (("flux", np.float32), ("ivar", np.float32), ("mask", np.uint8)):
                    g.create_dataset(key, shape=(n, len(wave)), dtype=dtype,
                                     chunks=(max(1, min(n, chunk_rows)), len(wave)) if n else None,
                                     **(dict(kw, **_compression_kw(compression, key)) if n else kw))
        row = 0
        for p, info in zip(parts, infos, strict=True):
            with open_store(p) as f:
                m = info["n"]
                out["ids"][row:row + m] = f["ids"][:]
                for k in first["labels"]:
                    out["labels"][k][row:row + m] = f["labels"][k][:]
                for a in first["arms"]:
                    for key in ("flux", "ivar", "mask"):
                        for start in range(0, m, chunk_rows):  # whole chunks of the output at a time
                            stop = min(start + chunk_rows, m)
                            out["arms"][a][key][row + start:row + stop] = f["arms"][a][key][start:stop]
            row += m


def consolidate_store(path: str | Path, out: str | Path, compression: str | None = None) -> None:
    """Copy store ``path`` (e.g. a virtual one) into the self-contained store ``out`` (atomically).

    The root attributes are kept, but ``virtual_sources``. compression: as :func:`write_store`'s.
    UserError as :func:`merge_stores`.
    """
    attrs = {k: v for k, v in store_info(path)["attrs"].items()
             if k not in ("mtopnet_version", "schema_version", "arms", "virtual_sources")}
    merge_stores([path], out, attrs, compression=compression)


def _virtual_dataset(group: h5py.Group, key: str, dtype: np.dtype, length: int, files: list[str],
                     rows: list[int], source: str) -> None:
    """Create ``group[key]``: a (sum(rows), length) virtual dataset of ``dtype`` whose consecutive
    row ranges map dataset ``source`` of each of ``files`` (rows[i] rows each); fill value 0, no
    modification time (the same content gives the same bytes)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    dcpl.set_fill_value(np.zeros(1, dtype=dtype))
    space = h5py.h5s.create_simple((sum(rows), length))
    start = 0
    for name, m in zip(files, rows, strict=True):
        if m:
            space.select_hyperslab((start, 0), (m, length))
            dcpl.set_virtual(space, name.encode(), source.encode(), h5py.h5s.create_simple((m, length)))
        start += m
    space.select_all()
    h5py.h5d.create(group.id, key.encode(), h5py.h5t.py_create(np.dtype(dtype), logical=1), space, dcpl=dcpl)


def write_virtual_store(path: str | Path, parts: list[str | Path], attrs: dict | None = None) -> None:
    """Write ``path`` (atomically): the concatenation of the store files ``parts``, without copying
    their spectra.

    ``ids``, ``labels`` and every arm's ``wave`` are copied into ``path`` (tens of bytes per
    object); every arm's ``flux``, ``ivar`` and ``mask`` is a virtual dataset whose rows map the
    parts' rows in order, each part named by its path relative to ``path``'s folder (so the
    parts must stay where they are relative to it: move the folder, or both, together). The
    root attribute ``virtual_sources`` records each part's relative path and size
    (:func:`open_store` checks them). The parts' root attributes are replaced by ``attrs``.
    UserError: parts that differ in arms, wavelengths or labels, or a part on another drive
    (Windows: no relative path); a failed write as :func:`write_store`'s.
    """
    path = Path(path)
    if not parts:
        raise UserError(f"{path}: no store files to map")
    folder = Path(os.path.abspath(path)).parent
    try:
        names = [Path(os.path.relpath(os.path.abspath(p), folder)).as_posix() for p in parts]
    except ValueError:
        raise UserError(f"{path}: its parts must be on the same drive") from None
    infos, ids, labels, dtypes = [], [], [], {}
    for p in parts:  # each part opened once: ids and labels are copied, the rest is mapped
        with open_store(p) as f:
            infos.append(_info(f))
            _check_like(p, infos[-1], parts[0], infos[0])
            ids.append(f["ids"][:])
            labels.append({k: f["labels"][k][:] for k in infos[-1]["labels"]})
            dtypes = dtypes or {(a, k): f["arms"][a][k].dtype for a in infos[0]["arms"]
                                for k in ("flux", "ivar", "mask")}
    first = infos[0]
    kw = dict(track_times=False)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", track_order=True) as out:
        _write_root_attrs(out, list(first["arms"]), attrs)
        sizes = [Path(p).stat().st_size for p in parts]
        out.attrs["virtual_sources"] = json.dumps([list(x) for x in zip(names, sizes, strict=True)])
        id_dtype = max((i.dtype for i in ids), key=lambda d: d.itemsize)
        out.create_dataset("ids", data=np.concatenate(ids).astype(id_dtype), **kw)
        lab = out.create_group("labels", track_order=True)
        for k in first["labels"]:
            lab.create_dataset(k, data=np.concatenate([part[k] for part in labels]), **kw)
        arms = out.create_group("arms", track_order=True)
        for a, wave in first["arms"].items():
            g = arms.create_group(a, track_order=True)
            g.create_dataset("wave", data=wave, **kw)
            for key in ("flux", "ivar", "mask"):
                _virtual_dataset(g, key, dtypes[a, key], len(wave), names, [i["n"] for i in infos], f"arms/{a}/{key}")
    write_file_atomic(path, buffer.getbuffer())
