"""The instrument's sky masks on real input, and the domain check's unmasked coverage."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from mtopnet.catalogue import ZInfo, ZWarn, read_catalogue
from mtopnet.constants import MASK_BAD, MASK_SKYLINE, MASK_TELLURIC
from mtopnet.domain import MIN_UNMASKED_COVERAGE, unmasked_coverage
from mtopnet.instruments import SKY_MASK_BITS, load_instrument, resample_mask
from mtopnet.io import write_text
from mtopnet.predict import DomainWarning, predict_batches, predict_store
from mtopnet.preprocess import apply_sky_masks
from mtopnet.testing import toy_batch
from mtopnet.trained import load_model


def test_sky_mask_on_an_arms_own_pixels_is_the_simulators_mask():
    inst = load_instrument("moons-lr")
    obs = inst.config.observing
    for arm in inst.arms:
        resp = arm.response(obs.airmass, obs.seeing, obs.sub_exposure)
        np.testing.assert_array_equal(inst.sky_mask(arm.wave), resp.mask & SKY_MASK_BITS)
        assert np.any(resp.mask & MASK_SKYLINE)
    assert not np.any(inst.sky_mask(np.linspace(3000, 6000, 50)))  # outside every arm: nothing


def test_a_coarser_grid_gets_the_bits_of_every_pixel_it_overlaps():
    edges = np.arange(11, dtype=np.float64) + 1000.0  # ten 1-A pixels
    bits = np.zeros(10, dtype=np.uint8)
    bits[3] = MASK_SKYLINE
    bits[6] = MASK_TELLURIC | MASK_BAD
    coarse = 1001.0 + 2.0 * np.arange(5)  # 2-A pixels [1000, 1002), [1002, 1004), ...
    np.testing.assert_array_equal(resample_mask(edges, bits, coarse),
                                  [0, MASK_SKYLINE, 0, MASK_TELLURIC | MASK_BAD, 0])
    fine = 1000.25 + 0.5 * np.arange(20)  # 0.5-A pixels: the two halves of each pixel
    np.testing.assert_array_equal(resample_mask(edges, bits, fine), np.repeat(bits, 2))
    assert not resample_mask(edges, bits, np.array([900.0, 901.0])).any()


def test_apply_sky_masks_ors_the_bits_and_says_where_they_voided_data():
    inst = load_instrument("moons-lr")
    batch = toy_batch(3, seed=4, sky_fraction=0.0)
    batch.arms["A"]["ivar"][2] = 0.0  # object 2 has no data in A ...
    for arm in ("B", "C"):
        batch.arms[arm]["ivar"][2] = 0.0  # ... nor anywhere: nothing the masks could void
    out = apply_sky_masks(batch, inst)
    for name, arm in out.arms.items():
        sky = inst.sky_mask(arm["wave"])
        np.testing.assert_array_equal(arm["mask"], batch.arms[name]["mask"] | sky[None, :])
    assert np.any(out.arms["C"]["mask"] & MASK_SKYLINE)
    assert list(out.labels["sky_masked"]) == [True, True, False]
    assert not np.any(batch.arms["A"]["mask"])  # the input is not changed


def test_predict_gives_files_and_stores_the_same_sky_masks(tiny_model_path, tmp_path, monkeypatch):
    """Every input gets the training instrument's sky masks (ZWARN_INFO SKY_MASKED where they
    voided data): the same spectra as files or as a store give the same catalogue rows, so a
    model calibrated on a store behaves the same on the files it was made from."""
    import mtopnet.predict as predict_module
    from mtopnet.store import write_store
    monkeypatch.setattr(predict_module, "training_instrument", lambda model: load_instrument("moons-lr"))
    model = load_model(tiny_model_path)
    batch = toy_batch(2, seed=5, sky_fraction=0.0)
    one_arm = dataclasses.replace(batch, arms={"C": batch.arms["C"]})
    files = [write_text(tmp_path / f"obj{i}.txt", batch, row=i, arm="C") for i in range(2)]
    write_store(tmp_path / "same.h5", one_arm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DomainWarning)  # one arm of three: out of domain
        predict_store(model, [str(f) for f in files], tmp_path / "files.csv", refine=False, progress=False)
        predict_store(model, [str(tmp_path / "same.h5")], tmp_path / "store.csv", refine=False, progress=False)
    files_cat = read_catalogue(tmp_path / "files.csv")
    store_cat = read_catalogue(tmp_path / "store.csv")
    assert np.all(np.asarray(files_cat["ZWARN_INFO"]) & ZInfo.SKY_MASKED)
    assert np.array_equal(np.asarray(files_cat["ZWARN_INFO"]), np.asarray(store_cat["ZWARN_INFO"]))
    assert np.allclose(np.asarray(files_cat["Z"], float), np.asarray(store_cat["Z"], float))


def _mask_fraction(batch, obj: int, fraction: float) -> None:
    """Mask (bit 1) the first ``fraction`` of every arm's pixels of object ``obj``."""
    for arm in batch.arms.values():
        arm["mask"][obj, :int(fraction * arm["mask"].shape[1])] |= MASK_BAD


def test_a_spectrum_spanning_the_arms_but_mostly_masked_is_out_of_domain(tiny_model_path, toy_waves):
    model = load_model(tiny_model_path)
    batch = toy_batch(3, toy_waves, seed=6)
    _mask_fraction(batch, 1, 0.8)
    _mask_fraction(batch, 2, 0.3)
    with pytest.warns(DomainWarning, match=r"1 spectra with valid data on less than 50% of the model's "
                                           r"wavelengths \(masked or empty pixels; the first, id 1, on \d+%\)"):
        rows = next(predict_batches(model, [batch], refine=False))
    flagged = (rows["ZWARN"] & ZWarn.OUT_OF_DOMAIN) != 0
    assert list(flagged) == [False, True, False]
    assert not np.any(rows["ZWARN"] & ZWarn.NODATA)
    x = model.preprocessor(batch)
    cover = unmasked_coverage(model, x.ivar)
    assert cover[1] < MIN_UNMASKED_COVERAGE < cover[2] < cover[0]
    # its extent alone matches the training arms: the check of the extent passes it
    from mtopnet.domain import domain_problem
    assert domain_problem(model, batch) is None


def test_all_masked_is_nodata_not_out_of_domain(tiny_model_path, toy_waves):
    model = load_model(tiny_model_path)
    batch = toy_batch(2, toy_waves, seed=7)
    _mask_fraction(batch, 0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        rows = next(predict_batches(model, [batch], refine=False))
    assert rows["ZWARN"][0] & ZWarn.NODATA and not rows["ZWARN"][0] & ZWarn.OUT_OF_DOMAIN
    assert not rows["ZWARN"][1] & ZWarn.OUT_OF_DOMAIN


def test_a_run_reports_its_mostly_masked_spectra_once(tiny_model_path, toy_waves, tmp_path):
    from mtopnet.store import write_store
    batch = toy_batch(4, toy_waves, seed=8)
    _mask_fraction(batch, 1, 0.9)
    _mask_fraction(batch, 3, 0.9)
    write_store(tmp_path / "masked.h5", batch, {"instrument": "toy"})
    with pytest.warns(DomainWarning) as record:
        predict_store(load_model(tiny_model_path), [tmp_path / "masked.h5"], tmp_path / "cat.csv", refine=False)
    messages = [str(r.message) for r in record if issubclass(r.category, DomainWarning)]
    assert len(messages) == 1 and messages[0].startswith("2 spectra with valid data on less than 50%")
    zwarn = np.asarray(read_catalogue(tmp_path / "cat.csv")["ZWARN"])
    assert list((zwarn & ZWarn.OUT_OF_DOMAIN) != 0) == [False, True, False, True]
