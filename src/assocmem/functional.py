"""Stateless math of associative-memory retrieval, shared by the models and the ``assocmem.nn`` layers.

Model B (KH eq. 13-16): one update ``v <- xi^T softmax(beta xi v)`` and its energy
``E = 1/2 v.v - (1/beta) logsumexp(beta xi v)``; with beta = 1/sqrt(d) the update is scaled
dot-product attention with keys = values = xi and query = v.
"""
from __future__ import annotations

import torch

from ._kernels import try_retrieve

__all__ = ["retrieve", "attention_weights", "modern_energy", "lse_energy"]


def _beta_scores(query: torch.Tensor, keys: torch.Tensor, beta) -> torch.Tensor:
    """beta * query @ keys^T, with beta applied to whichever of the query and the scores is smaller
    (one pass over B x N instead of B x K when the memories outnumber the features)."""
    if query.shape[-1] <= keys.shape[-2]:
        return torch.matmul(query * beta, keys.transpose(-1, -2))
    return torch.matmul(query, keys.transpose(-1, -2)) * beta


def attention_weights(query: torch.Tensor, keys: torch.Tensor, beta, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(beta * query @ keys^T) over the memory axis; ``mask`` True marks memories to ignore."""
    scores = _beta_scores(query, keys, beta)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def retrieve(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None = None, beta=1.0,
             mask: torch.Tensor | None = None, *, return_lse: bool = False):
    """One Model B update (KH eq. 16): ``softmax(beta q k^T) v``, with ``values = keys`` by default.

    Shapes: query (..., B, N), keys (..., K, N), values (..., K, M) -> (..., B, M).
    2-D float CPU problems that need no gradient run on the calibrated chunked kernel of
    ``assocmem._kernels`` (same result to float rounding); everything else on plain torch below.
    With ``return_lse`` also returns ``logsumexp(beta q k^T)`` (...,  B), which the softmax computes
    anyway: the energy (KH eq. 13) of the query is then ``1/2 q.q - lse / beta`` at no extra product.
    """
    fast = try_retrieve(query, keys, values, beta, mask, return_lse)
    if fast is not None:
        return fast
    values = keys if values is None else values
    if keys.dtype != query.dtype and keys.dtype in _LOW_PRECISION and query.is_floating_point():
        keys = keys.to(query.dtype)  # a float16/bfloat16 bank: products accumulate in the query's dtype
    if values.dtype != query.dtype and values.dtype in _LOW_PRECISION and query.is_floating_point():
        values = values.to(query.dtype)
    if not return_lse:
        return torch.matmul(attention_weights(query, keys, beta, mask), values)
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


def lse_energy(h: torch.Tensor, beta) -> torch.Tensor:
    """-(1/beta) logsumexp(beta h) over the last axis: the memory-layer part of KH eq. 13."""
    return -torch.logsumexp(h * beta, dim=-1) / beta


def modern_energy(state: torch.Tensor, keys: torch.Tensor, beta) -> torch.Tensor:
    """KH eq. (13) with inverse temperature beta: 1/2 v.v - (1/beta) logsumexp(beta xi v), shape (...)."""
    h = torch.matmul(state, keys.transpose(-1, -2))
    return 0.5 * (state * state).sum(-1) + lse_energy(h, beta)


# -- multi-head retrieval with masks and iterated updates (used by ``assocmem.nn``) -----------------
# Ramsauer et al. 2020 names: state patterns (queries), stored patterns (keys), pattern projections
# (values). One update in the association space is xi <- softmax(beta xi Y^T + m) Y (KH eq. 16 with
# a log-prior m from the masks); the read-out applies the last softmax to the values instead.
from typing import NamedTuple as _NamedTuple

import torch.nn.functional as _F

__all__ += ["Retrieval", "hopfield_retrieve", "hopfield_energy", "additive_mask", "default_tol"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


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
    from ._validation import describe

    for name, t in (("state", state), ("stored", stored), ("values", values)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.ndim < 2):
            raise TypeError(f"{name}: got {describe(t)}; expected a tensor of shape (..., n, size)")
    if stored.shape[-1] != state.shape[-1]:
        raise ValueError(
            f"stored: got shape {tuple(stored.shape)} with state of shape {tuple(state.shape)}; "
            "expected the same last dimension (pattern size) for state and stored patterns"
        )
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
    if isinstance(beta, torch.Tensor):
        if beta.ndim > 0 and beta.shape[-1] != 1:
            raise ValueError(f"beta: got a tensor of shape {tuple(beta.shape)}; expected a number or a tensor broadcastable to (..., L, 1)")
    elif isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta: got {describe(beta)}; expected a positive number or a tensor")


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
