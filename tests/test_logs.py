"""The CLI's logging: -v / -q levels, warnings as log records, log lines above progress bars."""
from __future__ import annotations

import logging
import re
import warnings

import pytest

import mtopnet.cli as cli
from mtopnet.logs import progress_bar, progress_enabled

log = logging.getLogger("mtopnet.fake")


def _fake_command(args) -> int:
    """A command that logs at every level and warns half-way through a progress bar."""
    log.debug("a debug line")
    log.info("an info line")
    with progress_bar(total=4, desc="work", unit="item", progress=progress_enabled()) as bar:
        for i in range(4):
            if i == 2:
                warnings.warn("something odd in item 2", UserWarning, stacklevel=1)
            bar.update(1)
    log.warning("a warning line")
    return 0


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(cli, "_cmd_instruments", _fake_command)  # the parser is built on each call


def _segments(err: str) -> list[str]:
    """stderr cut at carriage returns and newlines (a bar redraws itself after a \\r)."""
    return [s.strip() for s in re.split(r"[\r\n]", err) if s.strip()]


@pytest.mark.parametrize("argv", [["-q", "instruments"], ["instruments", "--quiet"]])
def test_quiet_shows_warnings_only_and_no_bar(fake, capsys, argv):
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    lines = _segments(captured.err)
    assert lines == ["mtopnet instruments: warning: something odd in item 2",
                     "mtopnet instruments: warning: a warning line"], captured.err
    assert captured.out == ""


def test_default_shows_info_and_the_bar_and_no_debug(fake, capsys):
    assert cli.main(["instruments"]) == 0
    err = capsys.readouterr().err
    lines = _segments(err)
    assert "mtopnet instruments: an info line" in lines
    assert not any("debug" in line for line in lines)
    assert any(re.search(r"work: 100%.*4/4", line) for line in lines), err  # a bar with its total


@pytest.mark.parametrize("argv", [["-v", "instruments"], ["instruments", "--verbose"]])
def test_verbose_adds_debug_lines(fake, capsys, argv):
    assert cli.main(argv) == 0
    lines = _segments(capsys.readouterr().err)
    assert "mtopnet instruments: debug: mtopnet.fake: a debug line" in lines
    assert any(line.startswith("mtopnet instruments: debug: mtopnet.cli: mtopnet ") for line in lines)


def test_verbose_and_quiet_exclude_each_other(capsys):
    assert cli.main(["-v", "-q", "instruments"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_warning_during_a_bar_goes_through_the_logger_above_the_bar(fake, capsys, caplog):
    """The warning is a record of the ``py.warnings`` logger, and its line stands alone: the bar
    is cleared before it and redrawn after it (not ``...| 2/4 [..]mtopnet ...: warning``)."""
    with caplog.at_level(logging.INFO):
        assert cli.main(["instruments"]) == 0
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("py.warnings", logging.WARNING, "something odd in item 2") in records
    assert ("mtopnet.fake", logging.INFO, "an info line") in records
    err = capsys.readouterr().err
    line = "mtopnet instruments: warning: something odd in item 2"
    assert line in _segments(err)
    before = err[:err.index(line)]
    assert "/4 [" in before and before.endswith("\r"), repr(before[-80:])  # the bar drawn, then cleared
    assert "4/4" in err[err.index(line):]  # and redrawn below it


def test_logging_is_undone_after_the_command(fake, capsys):
    handlers = list(logging.getLogger().handlers)
    show = warnings.showwarning
    cli.main(["-v", "instruments"])
    assert logging.getLogger().handlers == handlers and warnings.showwarning is show
    assert logging.getLogger("mtopnet").level == logging.NOTSET


def test_errors_are_log_lines_too_and_quiet_keeps_them(monkeypatch, capsys):
    def fail(args):
        raise cli.UserError("bad thing\nsecond line")
    monkeypatch.setattr(cli, "_cmd_instruments", fail)
    assert cli.main(["-q", "instruments"]) == 2
    assert capsys.readouterr().err == "mtopnet instruments: error: bad thing; second line\n"


def test_progress_bar_needs_a_total():
    with pytest.raises(TypeError):
        progress_bar(desc="x", unit="item")  # type: ignore[call-arg]


def test_predict_quiet_and_verbose(tiny_model_path, toy_stores, tmp_path, capsys):
    """A real run: -q leaves stderr without info lines or a bar (the result line stays on
    stdout); -v adds the shards' and the model's debug lines."""
    out = tmp_path / "q.fits"
    assert cli.main(["-q", "predict", str(toy_stores[2]), "--model", str(tiny_model_path), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "40 rows" in captured.out
    assert all(": warning: " in line for line in _segments(captured.err)), captured.err
    out = tmp_path / "v.fits"
    assert cli.main(["predict", str(toy_stores[2]), "--model", str(tiny_model_path), "--out", str(out), "-v"]) == 0
    lines = _segments(capsys.readouterr().err)
    assert any(line.startswith("mtopnet predict: debug: mtopnet.shards: ") and "1 shard(s)" in line
               for line in lines), lines
    assert any(line.startswith("mtopnet predict: debug: mtopnet.predict: model ") for line in lines), lines


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_other_libraries_info_lines_stay_out(capsys, level):
    """Dask logs every scheduler and worker start at INFO: only its warnings reach the user,
    even with -v; mtopnet's own lines follow the chosen level."""
    from mtopnet.logs import cli_logging
    dask_logger = logging.getLogger("distributed")
    saved = dask_logger.level
    dask_logger.setLevel(logging.INFO)  # as distributed's own configuration does on import
    try:
        with cli_logging("predict", level):
            logging.getLogger("distributed.scheduler").info("State start")
            logging.getLogger("distributed.nanny").warning("worker restarted")
            logging.getLogger("mtopnet.shards").info("our line")
    finally:
        dask_logger.setLevel(saved)
    err = capsys.readouterr().err
    assert "State start" not in err
    assert "worker restarted" in err and "our line" in err
