"""Argument checks shared by every ``assocmem`` sub-command: argparse ``type=`` callables (integers,
reals, seeds, thread counts, devices, sizes, choices) that refuse a bad value where it is parsed,
and the parser class whose errors are one line on stderr and exit code 2.

Every callable is made by a factory (``integer(minimum=1)``, ``real(lo=0, lo_open=True)``...) and
raises ``argparse.ArgumentTypeError`` with the package's wording ("got ...; expected ..."), which
argparse prefixes with the option's name. Limits that depend on the machine come from
:mod:`assocmem._validation`: thread counts up to the cores this process may use, seeds in the
range torch accepts, devices that torch reports available (``meta`` refused: it computes nothing),
sizes against the memory available (:func:`memory`).
"""
from __future__ import annotations

import argparse
import math
import re
from typing import Callable, Iterable

from .._validation import (SEED_MAX, check_choice, check_device, check_int, check_memory, check_seed, check_threads)

__all__ = ["CommandLineError", "Parser", "integer", "real", "positive", "fraction", "seed", "threads", "device",
           "choice", "choices_list", "int_list", "image_size", "memory"]


class CommandLineError(ValueError):
    """A command line that argparse could not parse or a ``type=`` check refused; ``str`` is the one
    line to print (``assocmem <command>: error: ...``)."""


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors raise :class:`CommandLineError` (one line, no usage block)
    instead of printing the usage and exiting; ``assocmem.cli.main`` prints it and returns 2.
    Sub-parsers inherit the class."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        first = str(message).splitlines()[0] if str(message) else "invalid arguments"
        raise CommandLineError(f"{self.prog}: error: {first} (see {self.prog} --help)")


def _typed(name: str, check: Callable[[str], object]) -> Callable[[str], object]:
    """Wrap ``check(text)``: the package's ValueError/TypeError ("<name>: got ...") becomes an
    ``ArgumentTypeError`` without the name, which argparse replaces by the option's own."""

    def parse(text: str):
        try:
            return check(text)
        except (ValueError, TypeError) as e:
            msg = str(e)
            if msg.startswith("\0: "):
                msg = msg[3:]
            raise argparse.ArgumentTypeError(msg) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


_ARG = "\0"  # stand-in name stripped from the helpers' messages


def _int(text: str) -> int:
    t = str(text).strip()
    if not re.fullmatch(r"[+-]?\d+", t):
        raise ValueError(f"{_ARG}: got {text!r}; expected an integer")
    return int(t)


def _float(text: str) -> float:
    try:
        v = float(str(text).strip())
    except ValueError:
        raise ValueError(f"{_ARG}: got {text!r}; expected a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{_ARG}: got {text!r}; expected a finite number")
    return v


def integer(minimum: int | None = None, maximum: int | None = None):
    """An integer within optional bounds."""
    return _typed("integer", lambda t: check_int(_ARG, _int(t), minimum=minimum, maximum=maximum))


def real(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    """A finite real number within optional bounds (open ends when asked)."""

    def check(text):
        v = _float(text)
        below = lo is not None and (v <= lo if lo_open else v < lo)
        above = hi is not None and (v >= hi if hi_open else v > hi)
        if below or above:
            if hi is None:
                want = f"a number {'>' if lo_open else '>='} {lo:g}"
            elif lo is None:
                want = f"a number {'<' if hi_open else '<='} {hi:g}"
            else:
                want = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise ValueError(f"{_ARG}: got {text!r}; expected {want}")
        return v

    return _typed("real", check)


def positive():
    """A finite number > 0."""
    return real(0.0, lo_open=True)


def fraction(*, lo_open: bool = False, hi_open: bool = False):
    """A finite number in [0, 1] (ends open when asked)."""
    return real(0.0, 1.0, lo_open=lo_open, hi_open=hi_open)


def seed(maximum: int = SEED_MAX):
    """A random seed in [0, ``maximum``]; the default is the largest seed torch accepts (2^64 - 1).
    A command that derives further seeds from it (``seed * 1000 + i``) passes a smaller maximum."""
    return _typed("seed", lambda t: check_seed(_ARG, _int(t), maximum=maximum))


def threads():
    """A thread count in [1, cores this process may use] (``os.sched_getaffinity``)."""
    return _typed("threads", lambda t: check_threads(_ARG, _int(t)))


def device():
    """A device torch reports available here (``cpu``, ``cuda``, ``cuda:1``, ``mps``...), returned
    as its canonical name; ``meta`` is refused (it has shapes but no data)."""
    return _typed("device", lambda t: str(check_device(_ARG, str(t).strip(), compute=True)))


def choice(options: Iterable[str]):
    """One of a fixed set of names."""
    opts = tuple(options)
    return _typed("choice", lambda t: check_choice(_ARG, t, opts))


def choices_list(options: Iterable[str]):
    """A comma-separated, non-empty list of names from ``options`` (order kept, repeats dropped)."""
    opts = tuple(options)

    def check(text):
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts:
            raise ValueError(f"{_ARG}: got {text!r}; expected a comma-separated list of {', '.join(opts)}")
        bad = [p for p in parts if p not in opts]
        if bad:
            raise ValueError(f"{_ARG}: got {bad[0]!r} in {text!r}; expected a comma-separated list of {', '.join(opts)}")
        return list(dict.fromkeys(parts))

    return _typed("list", check)


def int_list(minimum: int = 1, example: str = "100,200,400"):
    """A comma-separated, non-empty list of integers >= ``minimum``."""

    def check(text):
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        want = f"comma-separated integers >= {minimum} such as {example}"
        if not parts:
            raise ValueError(f"{_ARG}: got {text!r}; expected {want}")
        out = []
        for p in parts:
            if not re.fullmatch(r"[+-]?\d+", p):
                raise ValueError(f"{_ARG}: got {p!r} in {text!r}; expected {want}")
            v = int(p)
            if v < minimum:
                raise ValueError(f"{_ARG}: got {v}; expected {want}")
            out.append(v)
        return out

    return _typed("list", check)


def image_size():
    """``WIDTHxHEIGHT`` in pixels (each >= 1) -> (width, height)."""

    def check(text):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise ValueError(f"{_ARG}: got {text!r}; expected WIDTHxHEIGHT in pixels, such as 28x28")
        return int(m.group(1)), int(m.group(2))

    return _typed("size", check)


def memory(name: str, nbytes: int, what: str) -> None:
    """Refuse (``ValueError`` naming the option) a run whose estimated need of ``nbytes`` is more
    than the memory available now (``MemAvailable``, lowered to the memory cgroup's remaining limit):
    the rule every command applies to sizes before allocating anything."""
    check_memory(name, int(nbytes), what)
