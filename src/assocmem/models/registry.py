"""The one table of model names: ``by_name(name, patterns, **kw)`` builds the effective model a name
stands for (KH 2021 section 3: classical, Dense Associative Memory with F = x^n or exp, modern
Hopfield, spherical memory); the command line, the capacity lab and the demo all read it."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from .._validation import check_choice

__all__ = ["ModelEntry", "register", "names", "entry", "by_name"]


@dataclass(frozen=True)
class ModelEntry:
    """One name: the class it builds, the keyword arguments the name fixes (``F="exp"`` for
    ``"dense-exp"``), whether its states are +-1 (``binary``) and a one-line ``summary``."""

    name: str
    cls: type
    fixed: dict = field(default_factory=dict)
    binary: bool = False
    summary: str = ""

    def parameters(self) -> tuple[str, ...]:
        """The keyword arguments the class takes, other than the patterns and those the name fixes."""
        sig = inspect.signature(self.cls.__init__)
        return tuple(p for p in list(sig.parameters)[2:] if p not in self.fixed)


_ENTRIES: dict[str, ModelEntry] = {}


def register(name: str, cls: type, *, fixed: dict | None = None, binary: bool = False, summary: str = "") -> ModelEntry:
    """Add (or replace) the model ``name``; the model modules register their classes on import."""
    e = ModelEntry(name, cls, dict(fixed or {}), bool(binary), summary)
    _ENTRIES[name] = e
    return e


def names() -> tuple[str, ...]:
    """Every registered name, in registration order."""
    return tuple(_ENTRIES)


def entry(name: str) -> ModelEntry:
    """The entry of ``name``; ValueError naming the known names for an unknown one."""
    return _ENTRIES[check_choice("model", name, names())]


def by_name(name: str, patterns, **kwargs):
    """The model ``name`` (one of :func:`names`) storing ``patterns``, with the class's keyword
    arguments (``beta``, ``n``, ``F``, ...). A keyword that the name fixes may be repeated only with
    the same value; an unknown keyword raises TypeError naming it.

    >>> import torch
    >>> from assocmem.models import by_name
    >>> xi = torch.ones(3, 8)
    >>> type(by_name("dense-exp", xi, beta=0.5)).__name__, by_name("dense-exp", xi).F
    ('DenseAssociativeMemory', 'exp')
    """
    e = entry(name)
    allowed = e.parameters()
    for k, v in kwargs.items():
        if k in e.fixed:
            if v != e.fixed[k]:
                raise ValueError(f"{k}: got {v!r} for model {name!r}, which means {k}={e.fixed[k]!r}")
        elif k not in allowed:
            raise TypeError(f"{k}: model {name!r} ({e.cls.__name__}) takes no such argument; expected some of {list(allowed)}")
    return e.cls(patterns, **{**kwargs, **e.fixed})
