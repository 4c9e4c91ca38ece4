"""Redrock priors files: written by ``mtopnet predict --priors-out``, read and used by Redrock itself."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

from mtopnet.catalogue import read_catalogue
from mtopnet.cli import main
from mtopnet.config import UserError
from mtopnet.predict import predict_store
from mtopnet.priors import (
    SIGMA_FLOOR,
    UNINFORMATIVE_QOP,
    UNINFORMATIVE_SIGMA,
    UNINFORMATIVE_ZWARN,
    check_priors_out,
    prior_columns,
    write_priors,
)
from mtopnet.trained import load_model

redrock_priors = pytest.importorskip("redrock.priors")


def test_predict_writes_a_priors_file_redrock_reads(tiny_model_path, toy_stores, tmp_path, capsys):
    cat_path, priors_path = tmp_path / "cat.fits", tmp_path / "priors.fits"
    assert main(["predict", str(toy_stores[2]), "--model", str(tiny_model_path), "--out", str(cat_path),
                 "--priors-out", str(priors_path), "--quiet"]) == 0
    assert "Redrock priors in" in capsys.readouterr().out
    cat = read_catalogue(cat_path)
    with contextlib.redirect_stdout(io.StringIO()):
        priors = redrock_priors.Priors(str(priors_path))
    assert priors._type == "gaussian"
    assert set(priors._param) == set(cat["TARGETID"].tolist())
    for tid, z, lo, hi, qop, zwarn in zip(cat["TARGETID"], cat["Z"], cat["Z_LO95"], cat["Z_HI95"], cat["QOP"],
                                          cat["ZWARN"], strict=True):
        assert priors.eval(tid, np.array([z]))[0] == pytest.approx(0.0)
        sigma = priors._param[tid]["SIGMA"]
        unknown = qop <= UNINFORMATIVE_QOP or (int(zwarn) & int(UNINFORMATIVE_ZWARN))  # (an uncalibrated model: QOP 1)
        assert sigma == pytest.approx(UNINFORMATIVE_SIGMA if unknown else max(0.25 * (hi - lo), SIGMA_FLOOR * (1 + z)))
        # one sigma away costs 1 in chi2, as Redrock's gaussian prior does
        assert priors.eval(tid, np.array([z + sigma]))[0] == pytest.approx(1.0)
    with pytest.raises(UserError, match="exists"):
        predict_store(load_model(tiny_model_path), [toy_stores[2]], tmp_path / "other.fits", priors_out=priors_path)


def test_redrock_fit_with_our_priors_file(tmp_path):
    """Redrock's zfind with priors files of ours on Redrock's own test template and target
    (z = 0.5): a prior at the right z keeps Redrock's answer there, a tight one elsewhere moves
    it (so Redrock reads and uses the file)."""
    from redrock.targets import DistTargetsCopy
    from redrock.templates import DistTemplate
    from redrock.test import util
    from redrock.zfind import zfind
    np.random.seed(1)
    answers = []
    for z0, sigma in ((0.5, 0.01), (0.25, 0.002)):
        path = tmp_path / f"priors-{z0}.fits"
        assert write_priors(path, [{"TARGETID": np.array([123]), "Z": np.array([z0]),
                                    "SIGMA": np.array([sigma])}]) == 1
        targets = DistTargetsCopy([util.get_target(0.5)])
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            template = DistTemplate(util.get_template(redshifts=np.linspace(0.0, 1.0, 200)), targets.wavegrids())
            _, zfit = zfind(targets, [template], mp_procs=1, priors=str(path))
        answers.append(float(zfit[zfit["znum"] == 0]["z"][0]))
    assert abs(answers[0] - 0.5) < 0.01
    assert abs(answers[1] - 0.25) < 0.02


def test_priors_need_integer_ids_and_fits(tmp_path):
    rows = {"TARGETID": np.array(["a", "b"]), "Z": np.ones(2), "Z_LO95": np.ones(2), "Z_HI95": np.ones(2)}
    with pytest.raises(UserError, match="integer ids"):
        prior_columns(rows)
    rows["TARGETID"] = np.array([1, 2])
    cols = prior_columns(rows)
    assert np.allclose(cols["SIGMA"], SIGMA_FLOOR * 2)  # a zero-width interval gets the floor
    with pytest.raises(UserError, match="use .fits"):
        write_priors(tmp_path / "p.csv", [cols])


@pytest.mark.parametrize("case", ["same-as-out", "same-as-input", "link-to-out", "not-fits", "folder",
                                  "folder-overwrite"])
def test_a_bad_priors_out_is_refused_before_anything_is_written(case, tmp_path, capsys):
    """--priors-out is checked up front (the model named does not even exist): one line, exit
    2, and no catalogue written."""
    inp = tmp_path / "in.fits"
    inp.write_bytes(b"not read: the checks come first")
    out = tmp_path / "cat.fits"
    priors, extra, expected = {
        "same-as-out": (out, [], "the same file as --out"),
        "same-as-input": (inp, ["--overwrite"], "the same file as the input"),
        "link-to-out": (tmp_path / "link.fits", [], "the same file as --out"),
        "not-fits": (tmp_path / "priors.csv", [], "use .fits"),
        "folder": (tmp_path / "dir.fits", [], "is a folder"),
        "folder-overwrite": (tmp_path / "dir.fits", ["--overwrite"], "is a folder"),
    }[case]
    if case == "link-to-out":
        priors.symlink_to(out)
    if case.startswith("folder"):
        priors.mkdir()
    before = inp.read_bytes()
    code = main(["predict", str(inp), "--model", str(tmp_path / "no-model.pt"), "--out", str(out),
                 "--priors-out", str(priors), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and inp.read_bytes() == before


def test_check_priors_out_expands_input_patterns(tmp_path):
    (tmp_path / "a.fits").write_bytes(b"x")
    with pytest.raises(UserError, match="the same file as the input"):
        check_priors_out(tmp_path / "a.fits", tmp_path / "cat.fits", [str(tmp_path / "*.fits")], overwrite=True)
    assert check_priors_out(tmp_path / "p.fits", tmp_path / "cat.fits", [str(tmp_path / "*.fits")]) \
        == tmp_path / "p.fits"
