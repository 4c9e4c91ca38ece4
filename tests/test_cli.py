"""The train / predict / evaluate subcommands: happy path and one-line errors (exit 2)."""
from __future__ import annotations

import pytest

from mtopnet.cli import main


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_and_evaluate_end_to_end(tiny_model_path, toy_stores, tmp_path, capsys):
    cat = tmp_path / "cat.fits"
    code, out, err = _run(["predict", str(toy_stores[2]), "--model", str(tiny_model_path), "--out", str(cat),
                           "--pdf", "--quiet"], capsys)
    assert code == 0 and "40 rows" in out
    report = tmp_path / "report"
    code, out, err = _run(["evaluate", str(cat), "--truth", str(toy_stores[2]), "--report", str(report)], capsys)
    assert code == 0
    for name in ("metrics.json", "metrics.md", "success_vs_hmag.png", "dz_vs_z.png", "screening.png",
                 "reliability.png", "coverage.png", "logmstar.png", "logsfr.png", "examples.png"):
        assert (report / name).is_file(), name


@pytest.mark.parametrize("argv,message", [
    (["predict", "{missing}", "--model", "{model}", "--out", "{tmp}/c.fits"], "no such file"),
    (["predict", "{store}", "--model", "{model}", "--out", "{tmp}/c.txt"], "unknown catalogue format"),
    (["predict", "{store}", "--model", "{tmp}/nothing.pt", "--out", "{tmp}/c.fits"], "no such model file"),
    (["predict", "{store}", "--model", "{garbage}", "--out", "{tmp}/c.fits"], "not a readable mtopnet checkpoint"),
    (["predict", "{store}", "--model", "{model}", "--out", "{tmp}/c.fits", "--batch-size", "0"], "batch-size"),
    (["train", "--train", "{missing}", "--val", "{store}", "--out", "{tmp}/run"], "no such file"),
    (["train", "--train", "{store}", "--val", "{store}", "--out", "{tmp}/run", "--config", "{badcfg}"],
     "optim.epochs"),
    (["evaluate", "{missing}", "--truth", "{store}", "--report", "{tmp}/r"], "no such file"),
    (["evaluate", "{garbage}", "--truth", "{store}", "--report", "{tmp}/r"], "unknown catalogue format"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tiny_model_path, toy_stores, tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not torch")
    badcfg = tmp_path / "bad.yaml"
    badcfg.write_text("optim: {epochs: 0}\n")
    fill = {"missing": tmp_path / "missing.h5", "model": tiny_model_path, "tmp": tmp_path, "store": toy_stores[2],
            "garbage": garbage, "badcfg": badcfg}
    code, out, err = _run([a.format(**fill) for a in argv], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


@pytest.mark.parametrize("error,message", [
    (FileNotFoundError(2, "No such file or directory", "/data/x.h5"), "/data/x.h5: No such file or directory"),
    (PermissionError(13, "Permission denied", "/out"), "/out: Permission denied"),
])
def test_os_errors_are_one_line_too(monkeypatch, capsys, error, message):
    import mtopnet.cli as cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_cmd_instruments", fail)  # the parser is built on each call
    code, out, err = _run(["instruments"], capsys)
    assert code == 2 and err == f"mtopnet instruments: error: {message}\n"


def test_exit_now_flushes_the_streams_and_skips_exit_handlers():
    import subprocess
    import sys
    code = ("import atexit, logging, sys\n"
            "from mtopnet.cli import _exit_now\n"
            "atexit.register(lambda: print('exit handler ran'))\n"
            "logging.basicConfig(stream=sys.stderr)\n"
            "logging.getLogger().error('logged')\n"
            "print('printed', end='')\n"
            "_exit_now(130)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130
    assert proc.stdout == "printed" and "logged" in proc.stderr and "exit handler" not in proc.stdout + proc.stderr


def test_subcommands_are_imported_only_when_they_run():
    """``mtopnet.cli.MODULES`` names each subcommand's module, whose COMMAND agrees; a run of
    one subcommand imports neither the others nor the simulator's galaxy models."""
    import importlib
    import subprocess
    import sys

    from mtopnet.cli import MODULES, build_parser
    for name, module in MODULES.items():
        assert name == importlib.import_module(f"mtopnet.{module}").COMMAND
    full = build_parser()  # no argv: every subcommand, as the top-level help lists them
    sub = next(a for a in full._actions if a.dest == "command")
    assert set(sub.choices) == set(MODULES) | {"instruments"}
    code = ("import sys; from mtopnet.cli import main; rc = main(['predict', '--help']); "
            "print(sorted(m for m in ('mtopnet.demo', 'mtopnet.simulate', 'mtopnet.train', 'mtopnet.galaxies') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: mtopnet predict" in out and out.strip().endswith("[]")


def test_version_and_make_templates_into_a_new_folder(tmp_path, capsys):
    """``mtopnet --version`` prints the version; ``make-templates --out`` makes a folder that
    does not exist yet (as every other --out does), after the work."""
    from mtopnet import __version__
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"mtopnet {__version__}"
    out = tmp_path / "new" / "templates"
    assert main(["-q", "make-templates", "--out", str(out), "--n-galaxies", "12", "--n-components", "3"]) == 0
    assert (out / "templates-default.txt").is_file() and len(list(out.glob("rrtemplate-*.fits"))) == 1
    (tmp_path / "file").write_text("x")
    assert main(["-q", "make-templates", "--out", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
