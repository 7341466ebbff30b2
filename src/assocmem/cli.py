"""The ``assocmem`` command line: one entry point, one module per sub-command.

Each sub-command lives in ``assocmem.commands.<name>`` and defines ``register(subparsers)``, which
adds its parser and sets ``func(args) -> int``; arguments are checked where they are parsed by the
shared ``type=`` callables of ``assocmem.commands._args``. Bad input (a refused argument, or
``ValueError``/``TypeError`` from the package's validation) becomes a one-line message and exit
code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys

from . import commands
from ._version import __version__
from ._validation import AssocmemError
from .commands._args import CommandLineError, Parser

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="assocmem",
        description="Large associative memory: store patterns, recall them from damaged cues, measure capacity.",
    )
    parser.add_argument("--version", action="version", version=f"assocmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except CommandLineError as e:  # one line, no usage block (see commands._args.Parser)
        print(str(e), file=sys.stderr)
        return 2
    if extra:  # reported by the sub-command they were given to
        prog = f"assocmem {args.command}" if getattr(args, "command", None) else "assocmem"
        print(f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)", file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, AssocmemError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError) as e:  # AssocmemError: also DivergenceError, with its step and layer
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"assocmem {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        # the sizes were checked against the available memory up front, but that check is an estimate
        # of the first allocations: an allocation that still fails is reported the same way
        if not isinstance(e, MemoryError) and not _OUT_OF_MEMORY.search(str(e)):
            raise
        print(f"assocmem {args.command}: error: out of memory ({_first_line(e)}); expected smaller sizes",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"assocmem {args.command}: interrupted", file=sys.stderr)
        return 130


_OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory|not enough memory", re.IGNORECASE)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line[:200]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
