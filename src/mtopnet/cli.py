"""mtopnet: redshift PDFs, stellar masses and SFRs of galaxy spectra (M-TOPnet), and its simulator.

The command's subcommands are thin layers over library functions.

Every error a user can cause ends as one line on stderr and exit code 2. Log lines, warnings
and progress bars go to stderr (``-v/--verbose`` adds debug lines, ``-q/--quiet`` keeps
warnings and errors only and hides the bars; :mod:`mtopnet.logs`); stdout holds what a
command exists to print.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

from . import __version__
from .config import UserError
from .instruments import available_instruments, load_instrument
from .logs import LEVELS, cli_logging

log = logging.getLogger(__name__)


def _cmd_instruments(args: argparse.Namespace) -> int:
    for name in available_instruments():
        inst = load_instrument(name)
        arms = ", ".join(f"{a.name} {a.config.wave_min:.0f}-{a.config.wave_max:.0f} A R={a.config.resolution:.0f}"
                         for a in inst.arms)
        print(f"{name:12s} {inst.config.description}\n{'':12s} {arms}")
    return 0


MODULES = {"simulate": "simulate", "train": "train", "predict": "predict", "evaluate": "evaluate",
           "inspect": "inspect", "calibrate": "calibrate", "baseline": "baselines.redrock",
           "make-templates": "baselines.make_templates", "demo": "demo"}
"""Subcommand -> its module in this package (each module's ``COMMAND`` names it; a test checks
they agree), imported only when that subcommand runs or the top-level help lists them all: a
run of ``mtopnet predict`` need not import the simulator, the training or the plots (~1.5 s)."""

SUBCOMMANDS: dict[str, tuple] = {}
"""name -> (add_arguments(parser), run(args) -> int, help) of the subcommands loaded."""


def _load(name: str) -> None:
    """Register subcommand ``name`` (importing its module; again on each call, cheaply)."""
    if name == "instruments":
        SUBCOMMANDS[name] = (lambda p: None, _cmd_instruments, "list the shipped instruments")
        return
    mod = importlib.import_module(f"{__package__}.{MODULES[name]}")
    help_ = "simulate a spectrum store" if name == "simulate" else mod.__doc__.splitlines()[0]
    SUBCOMMANDS[name] = (mod.add_arguments, mod.run_cli, help_)


def _chosen(argv: list[str] | None) -> str | None:
    """The subcommand ``argv`` runs (its first word that is not an option), or None."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    return words[0] if words and (words[0] in MODULES or words[0] == "instruments") else None


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_log_options(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """``-v/--verbose`` and ``-q/--quiet`` (one of them) into ``log_level``, on ``parser`` and on
    every subcommand parser below it: ``mtopnet -q predict ...`` and ``mtopnet predict ... -q``
    are the same. Only the top parser has a default (INFO), so a subcommand's does not hide it."""
    default = LEVELS["default"] if top else argparse.SUPPRESS
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=LEVELS["verbose"],
                       default=default, help="also debug lines on stderr")
    group.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=LEVELS["quiet"],
                       default=default, help="only warnings and errors on stderr; no progress bars")
    for action in parser._actions:  # nested subcommands (mtopnet baseline redrock)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                add_log_options(child)


def build_parser(argv: list[str] | None = ()) -> argparse.ArgumentParser:
    """The parser of ``mtopnet``, with every subcommand's arguments; given the ``argv`` to
    parse (None: sys.argv), only the subcommand it runs is imported and filled in (the others
    are listed by name and help)."""
    chosen = None if argv == () else _chosen(argv)
    names = ["simulate", "instruments"] + [n for n in MODULES if n != "simulate"]
    for name in names if chosen is None else [chosen]:
        _load(name)
    parser = OneLineParser(prog="mtopnet", description=__doc__.splitlines()[0])
    from . import __version__
    parser.add_argument("--version", action="version", version=f"mtopnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name in names:
        if name not in SUBCOMMANDS:
            sub.add_parser(name)
            continue
        add, run, help_ = SUBCOMMANDS[name]
        p = sub.add_parser(name, help=help_)
        add(p)
        p.set_defaults(_run=run)
    add_log_options(parser, top=True)
    return parser



def _os_message(exc: OSError) -> str:
    """One line for an OSError: ``PATH: reason`` when the error names a file."""
    reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"{exc.filename}: {reason}" if exc.filename else reason


def _exit_now(code: int) -> None:
    """Flush the log handlers and the standard streams, then end the process at once: no exit
    handlers, no C++ static destructors. After batches had run in threads (``--threads``), a
    second Ctrl-C while the first unwound made the interpreter's shutdown abort (SIGABRT,
    "terminate called without an active exception"). Not used when a Dask cluster ran the
    work: its shutdown frees what multiprocessing allocated."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run ``mtopnet ARGV``; the one place where logging is configured (:func:`mtopnet.logs.cli_logging`)
    and where user errors become one line and exit code 2 (UserError, ConfigError, OSError);
    warnings are one log line each. Returns the exit code."""
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line already printed)
        return int(exc.code or 0)
    with cli_logging(args.command, args.log_level):
        log.debug("mtopnet %s, arguments: %s", __version__, " ".join(sys.argv[1:] if argv is None else argv))
        try:
            return int(args._run(args) or 0)
        except UserError as exc:  # ConfigError included
            log.error("%s", exc)
            return 2
        except OSError as exc:  # a file the user named cannot be read or written
            log.error("%s", _os_message(exc))
            return 2
        except KeyboardInterrupt:
            log.error("interrupted", extra={"bare": True})  # no "error:": the user stopped it
            in_process = getattr(args, "workers", 1) == 1 and getattr(args, "scheduler", None) is None
            if argv is None and in_process:  # the program itself, its work in its own threads: end now, as
                _exit_now(130)  # a kill would (what is done is on disk, the same command resumes); see _exit_now
            return 130


if __name__ == "__main__":
    sys.exit(main())
