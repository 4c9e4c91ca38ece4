"""The ``mtopnet`` command: thin subcommands over library functions.

Every error a user can cause ends as one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from . import calibrate, demo, evaluate, inspect, predict, simulate, train
from .baselines import make_templates, redrock
from .config import UserError
from .instruments import available_instruments, load_instrument


def _cmd_instruments(args: argparse.Namespace) -> int:
    for name in available_instruments():
        inst = load_instrument(name)
        arms = ", ".join(f"{a.name} {a.config.wave_min:.0f}-{a.config.wave_max:.0f} A R={a.config.resolution:.0f}"
                         for a in inst.arms)
        print(f"{name:12s} {inst.config.description}\n{'':12s} {arms}")
    return 0


SUBCOMMANDS: dict[str, tuple] = {}
"""name -> (add_arguments(parser), run(args) -> int, help). Modules register themselves below."""


def _register() -> None:
    SUBCOMMANDS["simulate"] = (simulate.add_arguments, simulate.run_cli, "simulate a spectrum store")
    SUBCOMMANDS["instruments"] = (lambda p: None, _cmd_instruments, "list the shipped instruments")
    for mod in (train, predict, evaluate, inspect, calibrate, redrock, make_templates, demo):
        SUBCOMMANDS[mod.COMMAND] = (mod.add_arguments, mod.run_cli, mod.__doc__.splitlines()[0])


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    _register()
    parser = OneLineParser(prog="mtopnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, (add, run, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_)
        add(p)
        p.set_defaults(_run=run)
    return parser




def _os_message(exc: OSError) -> str:
    """One line for an OSError: ``PATH: reason`` when the error names a file."""
    reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"{exc.filename}: {reason}" if exc.filename else reason


def main(argv: list[str] | None = None) -> int:
    """Run ``mtopnet ARGV``; the one place where user errors become one line and exit code 2
    (UserError, ConfigError, OSError) and warnings one line each. Returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line already printed)
        return int(exc.code or 0)

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        """Warnings (e.g. predict's DomainWarning) as one line each, like the errors."""
        print(f"mtopnet {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            return int(args._run(args) or 0)
    except UserError as exc:  # ConfigError included
        print(f"mtopnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the user named cannot be read or written
        print(f"mtopnet {args.command}: error: {_os_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mtopnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
