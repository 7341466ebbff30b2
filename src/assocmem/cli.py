"""The ``assocmem`` command line: one entry point, one module per sub-command.

Each sub-command lives in ``assocmem.commands.<name>`` and defines ``register(subparsers)``, which
adds its parser and sets ``func(args) -> int``. Bad input (``ValueError``/``TypeError`` from the
package's validation) becomes a one-line message and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ._version import __version__
from ._validation import AssocmemError

__all__ = ["main", "build_parser"]


class UsageError(ValueError):
    """Raised by sub-commands for invalid arguments that argparse cannot check itself."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assocmem",
        description="Large associative memory: store patterns, recall them from damaged cues, measure capacity.",
    )
    parser.add_argument("--version", action="version", version=f"assocmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    except KeyboardInterrupt:
        print(f"assocmem {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
