"""Stateless math of associative-memory retrieval, shared by the models and the ``assocmem.nn`` layers.

Model B (KH eq. 13-16): one update ``v <- xi^T softmax(beta xi v)`` and its energy
``E = 1/2 v.v - (1/beta) logsumexp(beta xi v)``; with beta = 1/sqrt(d) the update is scaled
dot-product attention with keys = values = xi and query = v.

Every public function checks its arguments' types, shapes, dtypes and devices and raises
``TypeError``/``ValueError`` naming the argument (about a microsecond). Tensor values are not
screened: as in ``torch.nn.functional``, NaN or inf in the inputs, or scores ``beta q.k`` beyond the
dtype's range, give NaN or inf out (a finiteness check would read the whole bank and, on a GPU,
synchronise); the models (``ModernHopfield``...) and ``assocmem.streaming`` check their inputs and
raise ``DivergenceError`` where a result overflows.
"""
from __future__ import annotations

import math
from numbers import Real

import torch

from .lagrangians import entmax as _entmax, tsallis_entropy as _tsallis
from ._kernels import try_retrieve
from ._validation import describe

__all__ = ["retrieve", "attention_weights", "modern_energy", "lse_energy"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_WIDE = (torch.float32, torch.float64)


def _dt(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _check_beta(beta, *, allow_zero: bool, dtype: torch.dtype | None = None, rows=None) -> None:
    """A finite real number > 0 (>= 0 with ``allow_zero``), at most the largest ``dtype`` value, or a
    real tensor: 0-d, or (with ``rows``, the scores' shape with a last axis of 1) broadcastable to
    ``rows``. A tensor's values are not read: that would synchronise a GPU, and a learnable beta is
    the caller's to keep positive."""
    if isinstance(beta, torch.Tensor):
        if beta.is_complex() or not (beta.is_floating_point() or beta.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"beta: got a {describe(beta)}; expected a positive number or a real tensor")
        if rows is None:
            if beta.ndim:
                raise ValueError(f"beta: got a {describe(beta)}; expected a number or a 0-d tensor")
            return
        ok = beta.ndim == 0 or beta.shape[-1] == 1
        if ok and beta.ndim:
            try:
                ok = tuple(torch.broadcast_shapes(beta.shape, rows)) == tuple(rows)
            except RuntimeError:
                ok = False
        if not ok:
            raise ValueError(f"beta: got a {describe(beta)}; expected a number or a tensor broadcastable to "
                             f"{tuple(rows)} (one beta per query row)")
        return
    if isinstance(beta, bool) or not isinstance(beta, Real):
        raise TypeError(f"beta: got {describe(beta)}; expected a positive number or a real tensor")
    try:
        b = float(beta)
    except OverflowError:  # an int beyond float's range
        b = math.inf
    if not math.isfinite(b) or b < 0 or (b == 0 and not allow_zero):
        raise ValueError(f"beta: got {beta!r}; expected a finite number {'>= 0' if allow_zero else '> 0'}")
    if dtype is not None and dtype.is_floating_point and b > torch.finfo(dtype).max:
        raise ValueError(f"beta: got {beta!r}; expected at most {torch.finfo(dtype).max:.3g}, the largest "
                         f"{str(dtype).replace('torch.', '')} (the dtype of the scores)")


_T, _F32, _F64, _F32_MAX = torch.Tensor, torch.float32, torch.float64, torch.finfo(torch.float32).max


def _rows(query, keys) -> tuple:
    """Shape of the scores of ``query`` against ``keys`` with the memory axis reduced to 1."""
    if query.ndim == 1:
        return tuple(keys.shape[:-2]) + (1,)
    return tuple(torch.broadcast_shapes(query.shape[:-2], keys.shape[:-2])) + (query.shape[-2], 1)


def _check_patterns(query, keys, values=None, mask=None, *, qname="query", kname="keys", vname="values") -> None:
    """Types, shapes, dtypes and devices of a retrieval's tensors: query (..., B, N) or (N,), keys
    (..., K, N) with N >= 1 and K >= 1, values (..., K, M), mask bool and broadcastable to the
    scores. Keys and values have the query's dtype, or are float16/bfloat16 banks under a
    float32/float64 query (computed in the query's dtype)."""
    if type(query) is _T and type(keys) is _T and values is None and mask is None:
        # the common case in a few attribute reads (this runs on every retrieval, tiny ones included)
        qs, ks, dt = query.shape, keys.shape, query.dtype
        if (len(ks) == 2 and 0 < len(qs) <= 2 and qs[-1] == ks[1] and ks[1] and ks[0] and keys.dtype is dt
                and (dt is _F32 or dt is _F64) and query.is_cpu and keys.is_cpu):
            return
    _check_patterns_in_full(query, keys, values, mask, qname, kname, vname)


def _check_patterns_in_full(query, keys, values, mask, qname, kname, vname) -> None:
    for name, t, nd in ((qname, query, 1), (kname, keys, 2), (vname, values, 2)):
        if t is None and name == vname:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: got {describe(t)}; expected a floating-point torch.Tensor")
        if not t.is_floating_point():
            raise TypeError(f"{name}: got a {describe(t)}; expected a floating-point tensor "
                            "(float32, float64, float16 or bfloat16)")
        if t.ndim < nd:
            raise ValueError(f"{name}: got a {describe(t)}; expected at least {nd} dimension(s)")
    N = keys.shape[-1]
    if query.shape[-1] != N:
        raise ValueError(f"{qname}: got shape {tuple(query.shape)} with {kname} of shape {tuple(keys.shape)}; "
                         f"expected the same last dimension (pattern size N = {N})")
    if N == 0:
        raise ValueError(f"{kname}: got shape {tuple(keys.shape)}; expected patterns of size N >= 1")
    K = keys.shape[-2]
    if K == 0:
        raise ValueError(f"{kname}: got shape {tuple(keys.shape)}; expected at least one stored pattern")
    qdt, dev = query.dtype, query.device
    for name, t in ((kname, keys), (vname, values)):
        if t is None:
            continue
        if t.dtype != qdt and not (t.dtype in _LOW_PRECISION and qdt in _WIDE):
            raise TypeError(f"{name}: got dtype {_dt(t)} with {qname} of dtype {_dt(query)}; expected the same dtype "
                            f"(or float16/bfloat16 {name} under a float32/float64 {qname}); convert one with .to()")
        if t.device != dev:
            raise ValueError(f"{name}: on device {t.device} with {qname} on {dev}; expected the same device")
    if values is not None and values.shape[-2] != K:
        raise ValueError(f"{vname}: got shape {tuple(values.shape)} with {kname} of shape {tuple(keys.shape)}; "
                         "expected one value per stored pattern (the same second-to-last dimension)")
    if keys.ndim == 2 and query.ndim <= 2 and mask is None:
        return  # the common case: nothing to broadcast
    try:
        lead = torch.broadcast_shapes(query.shape[:-2], keys.shape[:-2])
        if values is not None:
            torch.broadcast_shapes(lead, values.shape[:-2])
    except RuntimeError:
        raise ValueError(f"{kname}: got shape {tuple(keys.shape)} with {qname} of shape {tuple(query.shape)}"
                         + ("" if values is None else f" and {vname} of shape {tuple(values.shape)}")
                         + "; expected leading (batch) dimensions that broadcast") from None
    if mask is None:
        return
    scores = tuple(lead) + ((query.shape[-2],) if query.ndim >= 2 else ()) + (K,)
    ok = isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
    if ok:
        try:
            ok = tuple(torch.broadcast_shapes(mask.shape, scores)) == scores
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(f"mask: got {describe(mask)}; expected a bool tensor (True = ignore that stored pattern) "
                         f"broadcastable to the scores of shape {scores}")
    if mask.device != dev:
        raise ValueError(f"mask: on device {mask.device} with {qname} on {dev}; expected the same device")


def _beta_scores(query: torch.Tensor, keys: torch.Tensor, beta) -> torch.Tensor:
    """beta * query @ keys^T, with beta applied to whichever of the query and the scores is smaller
    (one pass over B x N instead of B x K when the memories outnumber the features)."""
    if query.shape[-1] <= keys.shape[-2]:
        return torch.matmul(query * beta, keys.transpose(-1, -2))
    return torch.matmul(query, keys.transpose(-1, -2)) * beta


def attention_weights(query: torch.Tensor, keys: torch.Tensor, beta, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(beta * query @ keys^T) over the memory axis (KH eq. 16's weights); ``mask`` True marks
    memories to ignore. Shapes and dtypes as in :func:`retrieve`."""
    _check_patterns(query, keys, None, mask)
    _check_beta(beta, allow_zero=True, dtype=query.dtype, rows=_rows(query, keys))
    return _weights(query, keys, beta, mask)


def _weights(query, keys, beta, mask):
    scores = _beta_scores(query, keys, beta)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def retrieve(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None = None, beta=1.0,
             mask: torch.Tensor | None = None, *, return_lse: bool = False, separation: str = "softmax",
             alpha: float = 1.5):
    """One Model B update (KH eq. 16): ``softmax(beta q k^T) v``, with ``values = keys`` by default.

    Shapes: query (..., B, N), keys (..., K, N), values (..., K, M) -> (..., B, M).
    2-D float CPU problems that need no gradient run on the calibrated chunked kernel of
    ``assocmem._kernels`` (same result to float rounding); everything else on plain torch below.
    With ``return_lse`` also returns ``logsumexp(beta q k^T)`` (...,  B), which the softmax computes
    anyway: the energy (KH eq. 13) of the query is then ``1/2 q.q - lse / beta`` at no extra product.

    ``query`` may also be one state (N,). N >= 1 and K >= 1; keys and values have the query's dtype,
    or are a float16/bfloat16 bank under a float32/float64 query (products accumulate in the
    query's dtype); all on one device. ``beta`` a finite number >= 0 (0: the mean of the values) or
    a real tensor. ``mask`` bool, True = ignore that memory, broadcastable to the scores (..., B, K).
    Wrong types, shapes, dtypes or devices raise ``TypeError``/``ValueError`` naming the argument;
    NaN in the inputs propagates (see the module's docstring).

    ``separation``: "softmax" (Model B), or a sparse separation function, "sparsemax" or "entmax"
    (alpha-entmax with ``alpha`` > 1; Peters, Niculae & Martins 2019): the update
    ``entmax(beta q k^T) v`` of the memory Lagrangian :class:`~assocmem.lagrangians.Entmax`, exact
    one-hot (one-step retrieval) once ``beta`` times the score margin reaches ``1/(alpha - 1)``.
    Then ``return_lse`` gives ``Omega*(beta q k^T)``, the Lagrangian's counterpart of the
    log-sum-exp, so that ``1/2 q.q - Omega* / beta`` is again the energy.
    """
    _check_patterns(query, keys, values, mask)
    if not (type(beta) is float and 0.0 <= beta <= _F32_MAX):
        _check_beta(beta, allow_zero=True, dtype=query.dtype, rows=_rows(query, keys))
    if separation != "softmax":
        return _sparse_retrieve(query, keys, values, beta, mask, return_lse, separation, alpha)
    fast = try_retrieve(query, keys, values, beta, mask, return_lse)
    if fast is not None:
        return fast
    values = keys if values is None else values
    if keys.dtype != query.dtype and keys.dtype in _LOW_PRECISION and query.is_floating_point():
        keys = keys.to(query.dtype)  # a float16/bfloat16 bank: products accumulate in the query's dtype
    if values.dtype != query.dtype and values.dtype in _LOW_PRECISION and query.is_floating_point():
        values = values.to(query.dtype)
    if not return_lse:
        return torch.matmul(_weights(query, keys, beta, mask), values)
    scores = _beta_scores(query, keys, beta)
    if mask is None and not (torch.is_grad_enabled() and scores.requires_grad):
        # no graph to keep: the online-softmax passes in place on one buffer (as fast as softmax)
        m = scores.amax(-1, keepdim=True)
        l = scores.sub_(m).exp_().sum(-1, keepdim=True)
        return torch.matmul(scores, values).div_(l), (m + l.log()).squeeze(-1)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), values), lse


def _sparse_retrieve(query, keys, values, beta, mask, return_lse, separation, alpha):
    if separation == "sparsemax":
        alpha = 2.0
    elif separation == "entmax":
        alpha = _entmax_alpha(alpha)
    else:
        raise ValueError(f"separation: got {separation!r}; expected 'softmax', 'sparsemax' or 'entmax'")
    values = keys if values is None else values
    if keys.dtype != query.dtype and keys.dtype in _LOW_PRECISION and query.is_floating_point():
        keys = keys.to(query.dtype)
    if values.dtype != query.dtype and values.dtype in _LOW_PRECISION and query.is_floating_point():
        values = values.to(query.dtype)
    single = query.ndim == 1
    q = query.unsqueeze(0) if single else query
    z = _beta_scores(q, keys, beta)
    if mask is not None:
        z = z.masked_fill(mask, torch.finfo(z.dtype).min / 4)  # finite: the sort-based thresholds need it
    p = _entmax(z, alpha)
    out = torch.matmul(p, values)
    if single:
        out = out[0]
    if not return_lse:
        return out
    omega = (p * z).sum(-1) + _tsallis(p, alpha)
    return out, (omega[0] if single else omega)


def _entmax_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 1.0 or alpha == float("inf"):
        raise ValueError(f"alpha: got {alpha!r}; expected a finite number > 1 (alpha = 1 is softmax)")
    return float(alpha)


def lse_energy(h: torch.Tensor, beta) -> torch.Tensor:
    """-(1/beta) logsumexp(beta h) over the last axis: the memory-layer part of KH eq. 13.
    ``h`` (..., K) floating with K >= 1, ``beta`` a finite number > 0 or a real tensor."""
    if not isinstance(h, torch.Tensor) or not h.is_floating_point():
        raise TypeError(f"h: got {describe(h)}; expected a floating-point torch.Tensor of shape (..., K)")
    if h.ndim < 1 or h.shape[-1] == 0:
        raise ValueError(f"h: got a {describe(h)}; expected shape (..., K) with K >= 1 memory neurons")
    _check_beta(beta, allow_zero=False, dtype=h.dtype)
    return -torch.logsumexp(h * beta, dim=-1) / beta


def modern_energy(state: torch.Tensor, keys: torch.Tensor, beta) -> torch.Tensor:
    """KH eq. (13) with inverse temperature beta: 1/2 v.v - (1/beta) logsumexp(beta xi v), shape (...).

    ``state`` (..., N) or (N,), ``keys`` (..., K, N): the same dtype and device, N >= 1, K >= 1;
    ``beta`` a finite number > 0 or a real tensor. Errors as in :func:`retrieve`."""
    _check_patterns(state, keys, qname="state")
    _check_beta(beta, allow_zero=False, dtype=state.dtype)
    if keys.dtype != state.dtype:  # a float16/bfloat16 bank: computed in the state's dtype
        keys = keys.to(state.dtype)
    h = torch.matmul(state, keys.transpose(-1, -2))
    return 0.5 * (state * state).sum(-1) - torch.logsumexp(h * beta, dim=-1) / beta


# -- multi-head retrieval with masks and iterated updates (used by ``assocmem.nn``) -----------------
# Ramsauer et al. 2020 names: state patterns (queries), stored patterns (keys), pattern projections
# (values). One update in the association space is xi <- softmax(beta xi Y^T + m) Y (KH eq. 16 with
# a log-prior m from the masks); the read-out applies the last softmax to the values instead.
from typing import NamedTuple as _NamedTuple

import torch.nn.functional as _F

__all__ += ["Retrieval", "hopfield_retrieve", "hopfield_energy", "additive_mask", "default_tol"]


class Retrieval(_NamedTuple):
    """Result of :func:`hopfield_retrieve`: ``retrieved`` (..., L, M); ``weights`` (..., L, S) and
    ``energy`` (..., L) only when requested (else None); ``steps`` the number of updates applied."""

    retrieved: torch.Tensor
    weights: torch.Tensor | None
    energy: torch.Tensor | None
    steps: int


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax, logsumexp and energies run in float32 for float16/bfloat16 inputs."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def default_tol(dtype: torch.dtype) -> float:
    """Convergence tolerance of iterated updates (relative to max |xi|): float64 1e-9, float32 1e-5,
    float16/bfloat16 1e-2."""
    if dtype == torch.float64:
        return 1e-9
    if dtype in _LOW_PRECISION:
        return 1e-2
    return 1e-5


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True = ignore) or an additive float mask, returned as an additive mask of ``dtype``."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


# A query whose every stored pattern is masked retrieves nothing: weights 0 and retrieved pattern 0,
# as F.scaled_dot_product_attention does (never NaN), and energy +inf (-(1/beta) log 0), with finite
# gradients everywhere.
_safe_softmax = getattr(torch, "_safe_softmax", None)


def _softmax(s: torch.Tensor) -> torch.Tensor:
    if _safe_softmax is not None:
        return _safe_softmax(s, -1)
    w = torch.softmax(s, dim=-1)  # pragma: no cover - torch without _safe_softmax
    return torch.where(torch.isneginf(s).all(-1, keepdim=True), torch.zeros_like(w), w)


def _beta_rows(beta):
    """beta broadcastable to (..., L, 1) -> broadcastable to (..., L) (for the energy)."""
    if isinstance(beta, torch.Tensor) and beta.ndim > 0:
        return beta[..., 0]
    return beta


def _scaled_scores(state, stored, beta, mask, ct):
    s = torch.matmul(state, stored.transpose(-1, -2)).to(ct) * (beta.to(ct) if isinstance(beta, torch.Tensor) else beta)
    if mask is not None:
        s = s.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else s + mask.to(ct)
    return s


def _energy_from_scores(state, s, beta, ct, masked: bool):
    b = _beta_rows(beta)
    if isinstance(b, torch.Tensor):
        b = b.to(ct)
    x = state.to(ct)
    if masked:  # rows with nothing stored: lse = -inf, computed on zeros so that no gradient is NaN
        dead = torch.isneginf(s).all(-1, keepdim=True)
        lse = torch.logsumexp(s.masked_fill(dead, 0.0), dim=-1)
        lse = lse.masked_fill(dead.squeeze(-1), float("-inf"))
    else:
        lse = torch.logsumexp(s, dim=-1)
    return 0.5 * (x * x).sum(-1) - lse / b


def hopfield_energy(state: torch.Tensor, stored: torch.Tensor, beta=1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KH eq. (13) per state pattern, with masks: ``1/2 xi.xi - (1/beta) logsumexp_mu(beta y_mu.xi + m_mu)``.

    Shapes: state (..., L, D), stored (..., S, D) -> (..., L). ``beta`` a number or a tensor
    broadcastable to (..., L, 1) (e.g. (H, 1, 1): one beta per head). ``mask`` boolean (True =
    ignore that stored pattern) or additive float, broadcastable to (..., L, S). For float16/bfloat16
    inputs the energy is computed and returned in float32. A state whose every stored pattern is
    masked has energy +inf.
    """
    _check_retrieval_args(state, stored, None, beta, mask)
    ct = _compute_dtype(state.dtype)
    return _energy_from_scores(state, _scaled_scores(state, stored, beta, mask, ct), beta, ct, mask is not None)


def _check_retrieval_args(state, stored, values, beta, mask) -> None:
    """Types, shapes, dtypes and devices of :func:`hopfield_retrieve`'s arguments (no values read)."""
    for name, t in (("state", state), ("stored", stored), ("values", values)):
        if t is None and name == "values":
            continue
        if not isinstance(t, torch.Tensor) or t.ndim < 2:
            raise TypeError(f"{name}: got {describe(t)}; expected a floating-point tensor of shape (..., n, size)")
        if not t.is_floating_point():
            raise TypeError(f"{name}: got {describe(t)}; expected a floating-point tensor (float32, float64, float16 "
                            "or bfloat16)")
    if stored.shape[-1] != state.shape[-1]:
        raise ValueError(
            f"stored: got shape {tuple(stored.shape)} with state of shape {tuple(state.shape)}; "
            "expected the same last dimension (pattern size) for state and stored patterns"
        )
    if state.shape[-1] == 0:
        raise ValueError(f"state: got shape {tuple(state.shape)}; expected patterns of size >= 1")
    for name, t in (("stored", stored), ("values", values)):
        if t is None:
            continue
        if t.dtype != state.dtype:
            raise TypeError(f"{name}: got dtype {_dt(t)} with state of dtype {_dt(state)}; expected the same dtype "
                            "(convert one with .to(), or run under torch.autocast)")
        if t.device != state.device:
            raise ValueError(f"{name}: on device {t.device} with state on {state.device}; expected the same device")
    if values is not None and values.shape[-2] != stored.shape[-2]:
        raise ValueError(
            f"values: got shape {tuple(values.shape)} with stored of shape {tuple(stored.shape)}; "
            "expected one value per stored pattern (same second-to-last dimension)"
        )
    try:
        batch = torch.broadcast_shapes(state.shape[:-2], stored.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"stored: got shape {tuple(stored.shape)} with state of shape {tuple(state.shape)}; "
            "expected leading (batch, head) dimensions that broadcast"
        ) from None
    scores = tuple(batch) + (state.shape[-2], stored.shape[-2])
    if mask is not None:
        ok = isinstance(mask, torch.Tensor) and (mask.dtype == torch.bool or mask.is_floating_point())
        if ok:
            try:
                ok = tuple(torch.broadcast_shapes(mask.shape, scores)) == scores
            except RuntimeError:
                ok = False
        if not ok:
            raise ValueError(
                f"mask: got {describe(mask)}; expected a bool or float mask broadcastable to the scores "
                f"of shape {scores} (state {tuple(state.shape)}, stored {tuple(stored.shape)})"
            )
        if mask.device != state.device:
            raise ValueError(f"mask: on device {mask.device} with state on {state.device}; expected the same device")
    _check_beta(beta, allow_zero=False, dtype=state.dtype, rows=scores[:-1] + (1,))


def hopfield_retrieve(
    state: torch.Tensor,
    stored: torch.Tensor,
    values: torch.Tensor | None = None,
    beta=1.0,
    mask: torch.Tensor | None = None,
    *,
    update_steps: int | None = 1,
    tol: float | None = None,
    max_update_steps: int = 100,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    need_energy: bool = False,
) -> Retrieval:
    """Modern Hopfield retrieval (KH eq. 16, Ramsauer et al. 2020) for any leading (batch, head) axes.

    state (..., L, D) state patterns, stored (..., S, D) stored patterns, values (..., S, M) pattern
    projections (default: ``stored``); ``beta`` as in :func:`hopfield_energy`; ``mask`` boolean
    (True = ignore) or additive float, broadcastable to (..., L, S).

    ``update_steps = n`` applies n - 1 updates ``xi <- softmax(beta xi Y^T + m) Y`` to the state and
    reads out ``softmax(beta xi Y^T + m) values`` at the result; ``update_steps = None`` iterates
    until ``max |xi_new - xi| <= tol * max(1, max |xi_new|)`` (default tol: :func:`default_tol`) or
    ``max_update_steps`` updates. With ``update_steps = 1`` this is scaled dot-product attention
    with scale ``beta``. ``need_weights`` returns the read-out softmax (..., L, S), ``need_energy``
    the energy (KH eq. 13, :func:`hopfield_energy`) of the state it was read out at, (..., L).
    ``dropout_p`` drops read-out weights (pass 0 in evaluation). Differentiable throughout.
    A query whose every stored pattern is masked retrieves zeros with zero weights (as
    ``F.scaled_dot_product_attention``) and has energy +inf.
    """
    _check_retrieval_args(state, stored, values, beta, mask)
    if update_steps is not None and (isinstance(update_steps, bool) or not isinstance(update_steps, int) or update_steps < 1):
        raise ValueError(f"update_steps: got {update_steps!r}; expected an integer >= 1 or None (iterate to convergence)")
    if isinstance(max_update_steps, bool) or not isinstance(max_update_steps, int) or max_update_steps < 1:
        raise ValueError(f"max_update_steps: got {max_update_steps!r}; expected an integer >= 1")
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol: got {tol!r}; expected a positive number or None")
    if not (isinstance(dropout_p, (int, float)) and 0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p: got {dropout_p!r}; expected a number in [0, 1)")
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(state.dtype)
    return _retrieve(state, stored, values, beta, mask, update_steps, tol, max_update_steps, dropout_p, need_weights, need_energy)


def _retrieve(state, stored, values, beta, mask, update_steps, tol, max_update_steps, dropout_p, need_weights, need_energy) -> Retrieval:
    """:func:`hopfield_retrieve` without argument checks (the layers check once at their boundary).
    ``mask`` must be boolean or of ``state.dtype``."""
    if values is None:
        values = stored
    sdpa_mask = None if mask is None else (~mask if mask.dtype == torch.bool else mask)
    if isinstance(beta, torch.Tensor):
        scale = 1.0
        beta_q = beta.to(state.dtype)
    else:
        scale = float(beta)
        beta_q = None

    def attend(xi, v, p):
        q = xi if beta_q is None else xi * beta_q
        return _F.scaled_dot_product_attention(q, stored, v, attn_mask=sdpa_mask, dropout_p=p, scale=scale)

    def readout(xi, steps):
        if not (need_weights or need_energy):
            return Retrieval(attend(xi, values, dropout_p), None, None, steps)
        ct = _compute_dtype(xi.dtype)
        s = _scaled_scores(xi, stored, beta, mask, ct)
        w = _softmax(s) if mask is not None else torch.softmax(s, dim=-1)
        energy = _energy_from_scores(xi, s, beta, ct, mask is not None) if need_energy else None
        wd = _F.dropout(w, dropout_p) if dropout_p > 0 else w
        out = torch.matmul(wd.to(values.dtype), values)
        return Retrieval(out, w.to(xi.dtype) if need_weights else None, energy, steps)

    xi = state
    if update_steps is not None:
        for _ in range(update_steps - 1):
            xi = attend(xi, stored, 0.0)
        return readout(xi, update_steps)
    tol = default_tol(state.dtype) if tol is None else float(tol)
    steps = 1
    if xi.numel() == 0:  # nothing to iterate (an empty batch): amax of nothing is undefined
        return readout(xi, steps)
    while steps < max_update_steps:
        new = attend(xi, stored, 0.0)
        delta = (new - xi).abs().amax()
        if bool(delta <= tol * torch.clamp(new.abs().amax(), min=1.0)):
            if values is stored and dropout_p == 0 and not (need_weights or need_energy):
                return Retrieval(new, None, None, steps)
            break
        xi = new
        steps += 1
    return readout(xi, steps)
