"""Provenance of a catalogue: versions, model, recipe, inputs, command line and date, as FITS cards.

:func:`catalogue_provenance` gives an ordered dict FITS keyword -> (value, comment) that
:class:`mtopnet.catalogue.CatalogueWriter` writes into both FITS headers (and the Parquet
schema metadata)::

    MTOPVER                 mtopnet version (added by the writer)
    NUMPYVER TORCHVER ASTROVER H5PYVER   dependency versions
    MODEL MODELSHA          checkpoint file name and the SHA-256 of its bytes
    MODELVER                mtopnet version that wrote the checkpoint
    RECIPE                  training recipe id: first 16 hex of the SHA-256 of the checkpoint's
                            train_config (sorted JSON); "unknown" without one
    INSTRUME                instrument the model was trained for
    REFINE RFTEMPL          refinement settings (JSON of RefineConfig; "none" with --no-refine), templates
    INFILEnn INHASHnn       input file names and their hashes (:func:`file_hash`)
    COMMAND DATE            command line, UTC date of the run
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__

FULL_HASH_BYTES = 64 << 20
"""Files up to this size are hashed whole; larger ones partially (:func:`file_hash`)."""
PARTIAL_BYTES = 1 << 20
MAX_RECORDED_INPUTS = 100
"""A catalogue records the names and hashes of its first this many input files."""
STORE_SUFFIXES = (".h5", ".hdf5", ".hdf")
"""Names of HDF5 stores among a catalogue's recorded inputs (:func:`inputs_mismatch`)."""


def file_hash(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes if it has at most :data:`FULL_HASH_BYTES`, else
    ``sha256-partial:<hex>``: the SHA-256 of its size and its first and last :data:`PARTIAL_BYTES`
    (cheap for survey-sized stores; it changes with any append or truncation, not with every edit).
    OSError: the file cannot be read."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
            return f"sha256:{digest.hexdigest()}"
        digest.update(str(size).encode())
        digest.update(fh.read(PARTIAL_BYTES))
        fh.seek(size - PARTIAL_BYTES)
        digest.update(fh.read(PARTIAL_BYTES))
    return f"sha256-partial:{digest.hexdigest()}"


def recipe_id(train_config: dict | None) -> str:
    """First 16 hex of the SHA-256 of a training recipe (sorted JSON), "unknown" without one."""
    if not train_config:
        return "unknown"
    text = json.dumps(train_config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def catalogue_provenance(model: Any, inputs: list[str | Path], refiner: Any | None,
                         argv: list[str] | None = None) -> dict[str, tuple[Any, str]]:
    """FITS keyword -> (value, comment) for a catalogue of ``model`` (a TrainedModel) on
    ``inputs`` (paths; patterns or missing files get no hash), refined by ``refiner`` (a
    :class:`mtopnet.refine.Refiner`, or None), run as ``argv`` (default ``sys.argv``)."""
    cards: dict[str, tuple[Any, str]] = {
        "NUMPYVER": (_version("numpy"), "numpy version"), "TORCHVER": (_version("torch"), "torch version"),
        "ASTROVER": (_version("astropy"), "astropy version"), "H5PYVER": (_version("h5py"), "h5py version"),
    }
    source = Path(model.source)
    cards["MODEL"] = (source.name, "checkpoint file")
    if source.is_file():
        cards["MODELSHA"] = (file_hash(source).split(":", 1)[1], "SHA-256 of the checkpoint file")
    cards["MODELVER"] = (str(model.meta.get("mtopnet_version")), "mtopnet version that wrote the model")
    cards["RECIPE"] = (recipe_id(model.meta.get("train_config")), "training recipe id (sha256 of train_config)")
    cards["INSTRUME"] = (str((model.instrument or {}).get("name", "unknown")), "instrument of the model")
    if refiner is None:
        cards["REFINE"] = ("none", "template refinement settings")
    else:
        settings = json.dumps(dataclasses.asdict(refiner.config), sort_keys=True, default=str)
        cards["REFINE"] = (settings, "template refinement settings (RefineConfig)")
        cards["RFTEMPL"] = (Path(refiner.basis.meta.get("templates", "")).name, "refinement templates")
    for i, path in enumerate(inputs[:MAX_RECORDED_INPUTS]):
        cards[f"INFILE{i:02d}"] = (Path(path).name, "input file")
        if Path(path).is_file():
            cards[f"INHASH{i:02d}"] = (file_hash(path), "input hash (mtopnet.provenance.file_hash)")
    cards["COMMAND"] = (" ".join(argv if argv is not None else sys.argv), "command line")
    cards["DATE"] = (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC date of the run")
    return cards


def inputs_mismatch(meta: dict[str, str], paths: list[str | Path], what: str, limit: int = 20,
                    same_inputs: bool = False) -> str | None:
    """Why ``paths`` (files given beside a catalogue, e.g. ``--truth``) may not be the files the
    catalogue was predicted from, or None. ``meta``: the catalogue's recorded provenance
    (:func:`mtopnet.catalogue.read_catalogue_meta`; its INFILEnn / INHASHnn). A message when the
    catalogue was predicted from HDF5 stores alone and none of the first ``limit`` of ``paths``
    has one of their hashes (the ids of two simulated stores, 0..N-1 both, would pair different
    objects without a word); None when one matches, when the catalogue records no hash (CSV,
    another tool's catalogue), or when it was predicted from spectra files (whose truth may be a
    table of its own)."""
    recorded = {v for k, v in meta.items() if k.startswith("INHASH")}
    names = [v for k, v in sorted(meta.items()) if k.startswith("INFILE")]
    if not recorded or len(names) >= MAX_RECORDED_INPUTS:
        return None  # no hash, or not every input recorded
    if not same_inputs and not all(Path(n).suffix.lower() in STORE_SUFFIXES for n in names):
        return None  # spectra files: the truth may well be a table of its own
    files = [Path(p) for p in paths[:limit] if Path(p).is_file()]
    try:
        if not files or any(file_hash(p) in recorded for p in files):
            return None
    except OSError:
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"{what} {files[0].name}{' ...' if len(files) > 1 else ''} is not a file the catalogue was "
            f"predicted from ({shown}; no recorded input hash matches): its ids may pair other objects")


def header_cards(meta: dict) -> list[tuple[str, Any, str]]:
    """FITS cards (keyword, value, comment) of ``meta``: keyword -> value or (value, comment).
    Keywords longer than 8 characters become HIERARCH cards; long strings CONTINUE cards."""
    cards = [("MTOPVER", __version__, "mtopnet version")]
    for key, value in meta.items():
        value, comment = value if isinstance(value, tuple) else (value, "")
        if value is None:
            continue
        if not isinstance(value, (bool, int, float)):
            value = str(value)
            comment = comment if len(value) + len(comment) <= 60 else ""  # long values: CONTINUE cards, no comment
        cards.append((key.upper() if len(key) <= 8 else f"HIERARCH {key}", value, comment))
    return cards


def without_date(data: bytes) -> bytes:
    """A FITS catalogue's bytes with the DATE card's value blanked: two runs on the same inputs
    with the same model and options give equal bytes apart from the date of the run."""
    import re
    return re.sub(rb"(DATE    = ')\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d'", rb"\1XXXX-XX-XXTXX:XX:XX'", data)


__all__ = ["without_date", "inputs_mismatch", "FULL_HASH_BYTES", "PARTIAL_BYTES", "MAX_RECORDED_INPUTS",
           "STORE_SUFFIXES", "file_hash", "recipe_id", "catalogue_provenance", "header_cards"]
