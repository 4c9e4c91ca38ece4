"""Log lines, warnings and progress bars of a command: one set-up, used by the ``mtopnet`` CLI.

Every module logs through its own ``logging.getLogger(__name__)`` (children of the
``mtopnet`` logger) and configures nothing; :func:`cli_logging` is the one place that does,
for the length of one command:

- log lines go to stderr, one line each, as ``mtopnet COMMAND: MESSAGE`` (INFO),
  ``mtopnet COMMAND: warning: MESSAGE`` (WARNING, ERROR likewise) and
  ``mtopnet COMMAND: debug: LOGGER: MESSAGE`` (DEBUG);
- the level of the ``mtopnet`` loggers is the command's (``--verbose``: DEBUG, default INFO,
  ``--quiet``: WARNING); other libraries' loggers stay at WARNING;
- Python warnings become log records of the ``py.warnings`` logger (as
  ``logging.captureWarnings`` does, but one line: the message alone);
- while it is active, log lines are written with ``tqdm.write`` (``logging_redirect_tqdm``),
  so they print above any progress bar instead of through it.

Progress bars (:func:`progress_bar`) always have a total, write to stderr, and are shown
only where the caller asks (``progress=``); the CLI asks when INFO is shown
(:func:`progress_enabled`), so ``--quiet`` hides them.

stdout is left to what a command exists to print (a table, a JSON report, the one line that
says what it wrote); nothing here writes there.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

ROOT = "mtopnet"
"""The package's top logger; every module's logger is a child of it."""

LEVELS = {"verbose": logging.DEBUG, "default": logging.INFO, "quiet": logging.WARNING}
"""The CLI's ``--verbose`` / (no option) / ``--quiet`` levels."""


class OneLineFormatter(logging.Formatter):
    """``mtopnet COMMAND: [LEVEL: ][LOGGER: ]MESSAGE``: the prefix names the command; INFO has no
    level word (nor has a record logged with ``extra={"bare": True}``), DEBUG also names the
    logger; a message's own line breaks become ``; ``."""

    def __init__(self, command: str):
        super().__init__()
        self.prefix = f"mtopnet {command}: " if command else "mtopnet: "

    def format(self, record: logging.LogRecord) -> str:
        message = "; ".join(line.strip() for line in record.getMessage().splitlines() if line.strip())
        if record.exc_info and not message:
            message = self.formatException(record.exc_info).splitlines()[-1]
        if getattr(record, "bare", False):  # extra={"bare": True}: no level word
            return f"{self.prefix}{message}"
        if record.levelno >= logging.WARNING:
            return f"{self.prefix}{record.levelname.lower()}: {message}"
        if record.levelno < logging.INFO:
            return f"{self.prefix}debug: {record.name}: {message}"
        return f"{self.prefix}{message}"


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` replacement: the message alone, as a WARNING of ``py.warnings``."""
    logging.getLogger("py.warnings").warning("%s", message)


def _ours_or_warning(record: logging.LogRecord) -> bool:
    """mtopnet's records and Python warnings at the chosen level; other libraries' (Dask's
    scheduler and workers log every start and stop at INFO) only from WARNING up."""
    ours = record.name == ROOT or record.name.startswith(ROOT + ".") or record.name == "py.warnings"
    return ours or record.levelno >= logging.WARNING


@contextlib.contextmanager
def cli_logging(command: str, level: int = logging.INFO) -> Iterator[logging.Handler]:
    """Configure logging for one command (see the module docstring); undone on exit.

    command: the subcommand's name (the prefix of every line); level: a ``logging`` level for
    the ``mtopnet`` loggers. Yields the stderr handler. The handler writes to ``sys.stderr``
    as it is on entry (a test's capture included).
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(command))
    handler.addFilter(_ours_or_warning)
    root = logging.getLogger()
    ours = logging.getLogger(ROOT)
    py_warnings = logging.getLogger("py.warnings")
    saved = (ours.level, py_warnings.level, warnings.showwarning)
    root.addHandler(handler)
    ours.setLevel(level)
    py_warnings.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _log_warning
            with logging_redirect_tqdm():
                yield handler
    finally:
        root.removeHandler(handler)
        ours.setLevel(saved[0])
        py_warnings.setLevel(saved[1])
        warnings.showwarning = saved[2]


def progress_enabled() -> bool:
    """Whether INFO lines of the ``mtopnet`` loggers are shown (the CLI shows progress bars then)."""
    return logging.getLogger(ROOT).isEnabledFor(logging.INFO)


def progress_bar(iterable: Iterable | None = None, *, total: int, desc: str, unit: str, progress: bool = True,
                 **kwargs: Any) -> Any:
    """A tqdm progress bar on stderr with a ``total`` (required: the bar shows a fraction and a
    time left); ``progress=False`` disables it (nothing is drawn). Other ``kwargs`` go to tqdm
    (``initial``, ``delay``, ...). Use it as a context manager or close it."""
    from tqdm import tqdm
    if total is None:
        raise ValueError("progress_bar: total is required")
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not progress, file=sys.stderr,
                dynamic_ncols=True, **kwargs)


__all__ = ["ROOT", "LEVELS", "OneLineFormatter", "cli_logging", "progress_enabled", "progress_bar"]
