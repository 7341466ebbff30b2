"""Input validation shared by every public boundary (models, layers, integrators, CLI, loaders).

One helper family so that every message reads the same: the argument's name, what was received
(shape, dtype, range) and what was expected. Also holds the package's error types and the checks of
what the machine offers (devices torch reports, cores, available memory, the seeds torch accepts).
"""
from __future__ import annotations

import math
import os
from numbers import Real
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "AssocmemError",
    "CorruptBankError",
    "BankVersionError",
    "DivergenceError",
    "check_tensor",
    "check_positive",
    "check_in_range",
    "check_choice",
    "check_int",
    "check_finite",
    "check_device",
    "check_seed",
    "check_threads",
    "check_memory",
    "available_devices",
    "available_cores",
    "available_memory",
    "guard_result",
    "describe",
    "as_batch",
]


class AssocmemError(Exception):
    """Base class of the package's own errors (validation errors are plain ``ValueError``/``TypeError``)."""


class DivergenceError(AssocmemError, FloatingPointError):
    """A dynamics produced non-finite values; the message says at which step and in which layer."""


class CorruptBankError(AssocmemError, ValueError):
    """A stored memory bank failed verification (truncated, altered, or unreadable)."""


class BankVersionError(CorruptBankError):
    """A stored memory bank was written by a newer bank format than this assocmem can read."""


def describe(x) -> str:
    """Short human description of a value: shape/dtype for tensors, type and value otherwise."""
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    r = repr(x)
    if len(r) > 60:
        r = r[:57] + "..."
    return f"{type(x).__name__} {r}"


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _hint(expected) -> str:
    e = expected() if callable(expected) else expected
    return f"; expected {e}" if e else ""


def check_tensor(
    name: str,
    x,
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = True,
    finite: bool = True,
    allow_empty: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    expected=None,
) -> torch.Tensor:
    """Validate and return ``x`` as a tensor.

    Converts numpy arrays and nested lists; rejects other types with ``TypeError``. ``shape`` may hold
    ``None`` for free axes. Integer and bool inputs are cast to ``dtype`` (default float32) when
    ``floating`` is requested. ``expected`` is a phrase appended to the message (or a function
    returning one, called only when there is a message to write).
    """
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            if isinstance(x, np.ndarray):
                if x.dtype == object:
                    raise TypeError(f"{name}: got an object array; expected a numeric array or tensor{_hint(expected)}")
                t = torch.from_numpy(np.asarray(x, order="C"))  # keeps 0-d arrays 0-d (ascontiguousarray does not)
            elif isinstance(x, (list, tuple)):
                t = torch.as_tensor(x)
            else:
                raise TypeError(f"{name}: got {describe(x)}; expected a torch.Tensor or numpy array{_hint(expected)}")
        except (ValueError, RuntimeError) as e:  # ragged lists etc.
            raise TypeError(f"{name}: could not be read as a tensor ({e}){_hint(expected)}") from None
    if t.is_complex():
        raise TypeError(f"{name}: got a complex {describe(t)}; expected real values{_hint(expected)}")
    if floating and t.dtype not in _FLOATS:
        t = t.to(dtype or torch.get_default_dtype())
    elif dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if device is not None:
        t = t.to(device)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.ndim not in allowed:
            exp = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name}: got {describe(t)}; expected a {exp} tensor{_hint(expected)}")
    if shape is not None:
        ok = t.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
        if not ok:
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name}: got {describe(t)}; expected shape {want}{_hint(expected)}")
    if not allow_empty and t.numel() == 0:
        raise ValueError(f"{name}: got an empty {describe(t)}; expected at least one element{_hint(expected)}")
    if finite and t.is_floating_point():
        check_finite(name, t)
    return t


# Up to this many elements a CPU float32/float64 tensor is screened with two numpy calls (a few
# microseconds) instead of torch's isfinite/any/item (~20 us of dispatch on small tensors).
_NUMPY_SCREEN = 1 << 16


def _absmax_screen(t: torch.Tensor) -> float | None:
    """max |t| of a small CPU float tensor through numpy, or None where that does not apply: NaN if
    any element is NaN (max propagates it), inf if any is infinite, else finite (no overflow, no
    floating-point warnings)."""
    dt = t.dtype
    if (dt is torch.float32 or dt is torch.float64) and t.is_cpu and t.numel() <= _NUMPY_SCREEN:
        a = t.detach().numpy() if t.requires_grad else t.numpy()
        return float(np.maximum.reduce(np.abs(a), axis=None, initial=0.0))
    return None


def all_finite(t: torch.Tensor) -> bool:
    """True when ``t`` holds no NaN or infinity (cheap for small CPU tensors)."""
    s = _absmax_screen(t)
    if s is not None:
        return math.isfinite(s)
    return bool(torch.isfinite(t).all())


def check_finite(name: str, t: torch.Tensor) -> torch.Tensor:
    """Raise ``ValueError`` if ``t`` holds NaN or infinity, saying how many and where the first is."""
    if all_finite(t):
        return t
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n_bad = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise ValueError(
            f"{name}: {n_bad} non-finite value(s) (NaN or inf) in {describe(t)}, first at index {first}; "
            "expected finite values"
        )
    return t


def guard_result(what: str, t: torch.Tensor, *, allow_inf: bool = False) -> torch.Tensor:
    """Raise :class:`DivergenceError` if a computed result holds NaN (or, unless ``allow_inf``, an
    infinity), naming the batch rows; used where finite inputs can still overflow (huge states)."""
    if not t.is_floating_point():
        return t
    s = _absmax_screen(t)
    if s is not None and (math.isfinite(s) or (allow_inf and not math.isnan(s))):
        return t
    bad = torch.isnan(t) if allow_inf else ~torch.isfinite(t)
    if bool(bad.any()):
        rows = bad.reshape(bad.shape[0], -1).any(-1).nonzero().flatten().tolist() if t.ndim else []
        kind = "NaN" if allow_inf else "NaN or inf"
        raise DivergenceError(
            f"{what} produced {kind} for batch element(s) {rows[:10]}: the state's magnitude overflows "
            f"{str(t.dtype).replace('torch.', '')}; rescale the input"
        )
    return t


def _real(name: str, x) -> float:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise TypeError(f"{name}: got {describe(x)}; expected a scalar")
        return float(x.detach())
    if isinstance(x, bool) or not isinstance(x, Real):
        raise TypeError(f"{name}: got {describe(x)}; expected a real number")
    return float(x)


def check_positive(name: str, x, *, allow_zero: bool = False):
    """A finite real number > 0 (or >= 0). Tensors (e.g. learnable parameters) are returned unchanged."""
    v = _real(name, x)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        rel = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: got {v!r}; expected a finite number {rel}")
    return x


def check_in_range(name: str, x, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    """A real number in the interval [lo, hi] (endpoints open when asked)."""
    v = _real(name, x)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = ("(" if lo_open else "[") + f"{lo}, {hi}" + (")" if hi_open else "]")
        raise ValueError(f"{name}: got {v!r}; expected a number in {interval}")
    return v


def check_int(name: str, x, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (bools rejected) within optional bounds."""
    if isinstance(x, bool) or not isinstance(x, (int,)) and not (isinstance(x, float) and x.is_integer()):
        if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_floating_point():
            x = int(x)
        else:
            raise TypeError(f"{name}: got {describe(x)}; expected an integer")
    v = int(x)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name}: got {v}; expected an integer >= {minimum}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name}: got {v}; expected an integer <= {maximum}")
    return v


def check_choice(name: str, x, choices: Iterable[str]) -> str:
    """One of a fixed set of names."""
    choices = list(choices)
    if not isinstance(x, str) or x not in choices:
        raise ValueError(f"{name}: got {x!r}; expected one of {', '.join(map(repr, choices))}")
    return x


def as_batch(name: str, x: torch.Tensor, n: int) -> tuple[torch.Tensor, bool]:
    """Accept ``(n,)`` or ``(B, n)``; return ``(B, n)`` and whether the input was a single vector."""
    if x.ndim == 1:
        x = x.unsqueeze(0)
        single = True
    elif x.ndim == 2:
        single = False
    else:
        raise ValueError(f"{name}: got {describe(x)}; expected shape ({n},) or (B, {n})")
    if x.shape[-1] != n:
        raise ValueError(f"{name}: got {describe(x)}; expected last dimension {n} to match the stored patterns")
    return x, single


# -- what the machine offers: devices, cores, memory, seeds ------------------------------------------
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes [-2^63, 2^64 - 1]; seeds here are >= 0


def check_seed(name: str, x, *, maximum: int = SEED_MAX) -> int:
    """A random seed: an integer in [0, ``maximum``] (default 2^64 - 1, the largest value
    ``torch.Generator.manual_seed`` accepts)."""
    v = check_int(name, x)
    if not 0 <= v <= maximum:
        raise ValueError(f"{name}: got {v}; expected an integer in [0, {maximum}] (the seeds torch accepts"
                         + (")" if maximum == SEED_MAX else ", less what is added to derive per-run seeds)"))
    return v


def available_cores() -> int:
    """CPU cores this process may run on: its scheduler affinity where the OS reports one (a
    container or ``taskset`` may allow fewer than the machine has), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_threads(name: str, x) -> int:
    """A thread count in [1, :func:`available_cores`]: more threads than cores only slow torch's
    OpenMP pool down, and a huge count makes it crash (``torch.set_num_threads(100000)``)."""
    v = check_int(name, x)
    cores = available_cores()
    if not 1 <= v <= cores:
        raise ValueError(f"{name}: got {v}; expected an integer in [1, {cores}] (the CPU cores this process may use)")
    return v


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
        return int(text)
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get without swapping or being killed, or None where
    that cannot be told: Linux's ``MemAvailable`` (/proc/meminfo), lowered to what the process's
    memory cgroup has left (v2 ``memory.max - memory.current``, v1 ``limit_in_bytes - usage_in_bytes``)."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, use = _read_int(limit), _read_int(usage)
        if lim is not None and use is not None and lim < (1 << 60):  # "max" or 2^63 - 4096: no limit
            avail = min(avail, max(0, lim - use))
            break
    return avail


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_memory(name: str, nbytes: int, what: str) -> int:
    """Raise ``ValueError`` naming ``name`` when ``nbytes`` (an estimate of what ``what`` needs) is
    more than :func:`available_memory`; no check where the available memory cannot be told."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise ValueError(f"{name}: {what} needs about {_gib(nbytes)}, more than the {_gib(avail)} of memory "
                         "available; expected a smaller size")
    return nbytes


def _backend_state(d: torch.device) -> tuple[bool, str]:
    """(is ``d`` usable for computation here, why not)."""
    if d.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.backends.cuda.is_built()
            return False, ("no CUDA device is visible" if built else f"torch {torch.__version__} was built without CUDA")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            return False, f"this machine has {n} CUDA device(s)"
        return True, ""
    if d.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return (bool(mps is not None and mps.is_available()), "MPS is not available")
    mod = getattr(torch, d.type, None)
    is_avail = getattr(mod, "is_available", None)
    if not callable(is_avail):
        return False, f"torch cannot report whether {d.type} devices are available"
    try:
        if not is_avail():
            return False, f"no {d.type} device is available"
        count = getattr(mod, "device_count", None)
        if d.index is not None and callable(count) and d.index >= count():
            return False, f"this machine has {count()} {d.type} device(s)"
    except Exception as e:  # a backend's own probe failing means it cannot be used
        return False, f"probing {d.type} failed ({type(e).__name__}: {e})"
    return True, ""


def available_devices() -> list[str]:
    """Devices torch reports usable here, such as ``['cpu', 'cuda:0']``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    xpu = getattr(torch, "xpu", None)
    try:
        if xpu is not None and xpu.is_available():
            out += [f"xpu:{i}" for i in range(xpu.device_count())]
    except Exception:  # noqa: BLE001 - an unusable backend is simply not listed
        pass
    return out


def check_device(name: str, x, *, compute: bool = True) -> torch.device:
    """A ``torch.device`` (or its name) that torch reports available on this machine. ``meta``
    (shapes without data) is refused where something is computed (``compute=True``)."""
    if isinstance(x, torch.device):
        d = x
    elif isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool)):
        try:
            d = torch.device(x)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(f"{name}: got {x!r}; expected a torch device such as "
                             f"{', '.join(available_devices())}") from None
    else:
        raise TypeError(f"{name}: got {describe(x)}; expected a torch.device or a device name such as 'cpu'")
    if d.type == "cpu":
        return d
    if d.type == "meta":
        if compute:
            raise ValueError(f"{name}: got {str(d)!r}: meta tensors have shapes but no data, so nothing can be "
                             f"computed on them; expected one of {', '.join(available_devices())}")
        return d
    ok, why = _backend_state(d)
    if not ok:
        raise ValueError(f"{name}: got {str(d)!r}, which is not available here ({why}); expected one of "
                         f"{', '.join(available_devices())}")
    return d


def check_flag(name: str, x, default: bool | None = None) -> bool:
    """A switch: ``True`` or ``False`` (``None`` gives ``default``); anything else is a TypeError
    naming the argument."""
    if x is None:
        return default
    if not isinstance(x, bool):
        raise TypeError(f"{name}: got {describe(x)}; expected True or False")
    return x
