"""PyTorch layers built on associative memory: ``Hopfield`` (modern Hopfield retrieval = attention,
KH eq. 13-16, Ramsauer et al. 2020), ``HopfieldPooling``, ``HopfieldLayer``, and ``EnergyLayer`` /
``AssociativeMemoryLayer`` (the two-layer network of KH eq. 1-2 with learned xi, integrated a fixed
number of steps). The math lives in :mod:`assocmem.functional` and :class:`assocmem.TwoLayerNetwork`.
"""
from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from . import functional as AF
from . import integrators as _int
from ._validation import (
    DivergenceError,
    check_in_range,
    check_int,
    check_positive,
    describe,
)
from .lagrangians import Lagrangian, LogSumExp, Quadratic
from .network import TwoLayerNetwork

__all__ = [
    "HopfieldOutput",
    "Hopfield",
    "HopfieldPooling",
    "HopfieldLayer",
    "EnergyOutput",
    "EnergyLayer",
    "AssociativeMemoryLayer",
]


class HopfieldOutput(NamedTuple):
    """What a Hopfield layer returns when weights or energy are requested.

    ``retrieved``: the retrieved patterns, laid out like the state input (``batch_first``).
    ``weights``: the read-out softmax, (B, L, S) averaged over heads or (B, H, L, S); None unless asked.
    ``energy``: KH eq. (13) per head and query at the state the read-out used, (B, H, L); None unless asked.
    ``steps``: number of updates applied. Unbatched inputs drop the B axis.
    """

    retrieved: torch.Tensor
    weights: torch.Tensor | None
    energy: torch.Tensor | None
    steps: int


def _size(name, x, default):
    if x is None:
        return default
    return check_int(name, x, minimum=1)


def _flag(name, x, default):
    if x is None:
        return default
    if not isinstance(x, bool):
        raise TypeError(f"{name}: got {describe(x)}; expected True or False")
    return x


def _shape(t) -> tuple:
    return tuple(t.shape)


class Hopfield(nn.Module):
    """Modern Hopfield association: retrieve from stored patterns with state patterns (Ramsauer et al. 2020).

    ``state`` (queries, R), ``stored`` (keys, Y) and ``values`` (pattern projections) are mapped by
    optional learned projections into an association space of ``hidden_size`` split over
    ``num_heads``; per head the state is updated ``update_steps - 1`` times by
    ``xi <- softmax(beta xi Y^T + m) Y`` (KH eq. 16, a concave-convex step that never raises the
    energy KH eq. 13) and read out as ``softmax(beta xi Y^T + m) V``, then the heads are concatenated
    and projected to ``output_size``. With one step this is multi-head attention: without projections
    it equals ``F.scaled_dot_product_attention``; with them it equals ``nn.MultiheadAttention`` with
    the same weights (:meth:`from_multihead_attention`).

    Parameters
    ----------
    input_size : size of the state patterns.
    hidden_size : size of the association space (all heads together); default ``input_size``.
    num_heads : number of independent heads; must divide ``hidden_size`` (and the value size).
    beta : inverse temperature; default ``1 / sqrt(hidden_size / num_heads)``.
    update_steps : number of updates, or None to iterate until ``max |xi_new - xi| <= tol * max(1, max |xi|)``
        (at most ``max_update_steps``; ``tol`` default :func:`assocmem.functional.default_tol`).
    stored_size, value_size : sizes of the stored patterns and of the values (default ``input_size``
        and ``stored_size``).
    output_size : size of the result; default ``input_size`` with an output projection, else the value size.
    projections : default for the four switches ``project_state``, ``project_stored``,
        ``project_values``, ``project_output`` (learned linear maps with ``bias``). Without the state
        (stored) projection, ``input_size`` (``stored_size``) must equal ``hidden_size``.
    learn_beta : make beta a learned parameter, one per head (kept positive: stored as its log).
    dropout : dropout on the read-out weights while training.
    batch_first : inputs (B, L, size) if True (the default, unlike ``nn.MultiheadAttention``), else (L, B, size).

    Example
    -------
    >>> import torch
    >>> from assocmem.nn import Hopfield
    >>> hop = Hopfield(16, num_heads=2)
    >>> x = torch.randn(4, 10, 16)                      # (batch, set size, features)
    >>> out = hop(x, return_energy=True)                # self-association: stored = values = x
    >>> out.retrieved.shape, out.energy.shape
    (torch.Size([4, 10, 16]), torch.Size([4, 2, 10]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | None = None,
        num_heads: int = 1,
        beta: float | None = None,
        update_steps: int | None = 1,
        *,
        stored_size: int | None = None,
        value_size: int | None = None,
        output_size: int | None = None,
        projections: bool = True,
        project_state: bool | None = None,
        project_stored: bool | None = None,
        project_values: bool | None = None,
        project_output: bool | None = None,
        bias: bool = True,
        learn_beta: bool = False,
        tol: float | None = None,
        max_update_steps: int = 100,
        dropout: float = 0.0,
        batch_first: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.input_size = check_int("input_size", input_size, minimum=1)
        self.num_heads = check_int("num_heads", num_heads, minimum=1)
        projections = _flag("projections", projections, True)
        self.project_state = _flag("project_state", project_state, projections)
        self.project_stored = _flag("project_stored", project_stored, projections)
        self.project_values = _flag("project_values", project_values, projections)
        self.project_output = _flag("project_output", project_output, projections)
        self.stored_size = _size("stored_size", stored_size, self.input_size)
        self.value_size = _size("value_size", value_size, self.stored_size)
        default_hidden = self.input_size if self.project_state or not self.project_stored else self.stored_size
        self.hidden_size = _size("hidden_size", hidden_size, default_hidden)
        H = self.num_heads
        if self.hidden_size % H:
            raise ValueError(f"num_heads: got {H}; expected a divisor of hidden_size = {self.hidden_size}")
        if not self.project_state and self.input_size != self.hidden_size:
            raise ValueError(
                f"hidden_size: got {self.hidden_size} with input_size {self.input_size} and project_state=False; "
                "expected them equal (without a state projection the state patterns live in the association space)"
            )
        if not self.project_stored and self.stored_size != self.hidden_size:
            raise ValueError(
                f"stored_size: got {self.stored_size} with hidden_size {self.hidden_size} and project_stored=False; "
                "expected them equal (without a stored projection the stored patterns live in the association space)"
            )
        self.head_value_total = self.hidden_size if self.project_values else self.value_size
        if self.head_value_total % H:
            raise ValueError(
                f"num_heads: got {H}; expected a divisor of the value size {self.head_value_total} "
                "(value_size without a value projection)"
            )
        if self.project_output:
            self.output_size = _size("output_size", output_size, self.input_size)
        else:
            self.output_size = _size("output_size", output_size, self.head_value_total)
            if self.output_size != self.head_value_total:
                raise ValueError(
                    f"output_size: got {self.output_size} with project_output=False; expected the value size "
                    f"{self.head_value_total} (or enable project_output)"
                )
        self.update_steps = None if update_steps is None else check_int("update_steps", update_steps, minimum=1)
        self.tol = None if tol is None else float(check_positive("tol", tol))
        self.max_update_steps = check_int("max_update_steps", max_update_steps, minimum=1)
        self.dropout = check_in_range("dropout", dropout, 0.0, 1.0, hi_open=True)
        self.batch_first = _flag("batch_first", batch_first, True)
        head_dim = self._head_dim = self.hidden_size // H
        self._head_value_dim = self.head_value_total // H
        beta = 1.0 / math.sqrt(head_dim) if beta is None else float(check_positive("beta", beta))
        if _flag("learn_beta", learn_beta, False):
            self.log_beta = nn.Parameter(torch.full((H,), math.log(beta), **fk))
            self._beta = None
        else:
            self.log_beta = None
            self._beta = beta
        bias = _flag("bias", bias, True)
        self.state_proj = nn.Linear(self.input_size, self.hidden_size, bias=bias, **fk) if self.project_state else None
        self.stored_proj = nn.Linear(self.stored_size, self.hidden_size, bias=bias, **fk) if self.project_stored else None
        self.value_proj = nn.Linear(self.value_size, self.hidden_size, bias=bias, **fk) if self.project_values else None
        self.out_proj = nn.Linear(self.head_value_total, self.output_size, bias=bias, **fk) if self.project_output else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Projections as in ``nn.MultiheadAttention``: Xavier-uniform weights, zero biases."""
        for lin in (self.state_proj, self.stored_proj, self.value_proj, self.out_proj):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    @property
    def beta(self):
        """The inverse temperature: a float, or a (num_heads,) tensor when learned."""
        return self._beta if self.log_beta is None else self.log_beta.exp()

    def extra_repr(self) -> str:
        b = "learned" if self.log_beta is not None else f"{self._beta:.4g}"
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_heads={self.num_heads}, "
            f"beta={b}, update_steps={self.update_steps}, batch_first={self.batch_first}"
        )

    # -- the forward pass ------------------------------------------------------------------------------
    def forward(
        self,
        state: torch.Tensor,
        stored: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        return_weights: bool = False,
        return_energy: bool = False,
        average_weights: bool = True,
    ):
        """Retrieve for ``state`` from ``stored`` (default ``state``: self-association) with read-out
        ``values`` (default ``stored``).

        Shapes (batch_first): state (B, L, input_size), stored (B, S, stored_size) or (S, stored_size)
        shared by the batch, values like stored with value_size; unbatched (L, input_size) works too.
        ``key_padding_mask`` (B, S): True (or -inf) marks padding; ``attn_mask`` (L, S) or
        (B * num_heads, L, S) or (B, num_heads, L, S), bool (True = not allowed) or additive float —
        the conventions of ``nn.MultiheadAttention``. A query whose every stored pattern is masked
        retrieves zeros (as ``F.scaled_dot_product_attention``; not NaN) with energy +inf.
        Returns the retrieved patterns (like ``state``, last axis ``output_size``), or a
        :class:`HopfieldOutput` when ``return_weights`` or ``return_energy``.
        """
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"state: got {describe(state)}; expected a torch.Tensor")
        nd = state.ndim
        if (nd != 3 and nd != 2) or state.shape[-1] != self.input_size:
            self._bad_state(state)
        if stored is None:
            stored = state
        elif not isinstance(stored, torch.Tensor):
            raise TypeError(f"stored: got {describe(stored)}; expected a torch.Tensor")
        if values is None:
            values = stored
        elif not isinstance(values, torch.Tensor):
            raise TypeError(f"values: got {describe(values)}; expected a torch.Tensor")
        if (stored.ndim != nd and stored.ndim != 2) or stored.shape[-1] != self.stored_size:
            self._bad_stored(state, stored)
        for name, t in (("state", state), ("stored", stored), ("values", values)):
            if not t.is_floating_point():
                raise TypeError(f"{name}: got {describe(t)}; expected a floating-point tensor (convert with .float())")
        same_values = values is stored
        if not same_values and (values.shape[:-1] != stored.shape[:-1] or values.shape[-1] != self.value_size):
            raise ValueError(
                f"values: got a tensor of shape {_shape(values)} with stored of shape {_shape(stored)}; expected "
                f"shape {_shape(stored)[:-1] + (self.value_size,)} (one value of size value_size = {self.value_size} per stored pattern)"
            )
        same_stored = stored is state
        unbatched = nd == 2
        if unbatched:
            state = state.unsqueeze(0)
        elif not self.batch_first:
            state = state.transpose(0, 1)
        shared = stored.ndim == 2 and not same_stored
        if same_stored:
            stored = state
        elif not shared and not self.batch_first:
            stored = stored.transpose(0, 1)
        if same_values:
            values = stored
        elif not shared and not unbatched and not self.batch_first:
            values = values.transpose(0, 1)
        B, L = state.shape[0], state.shape[1]
        S = stored.shape[-2]
        if not shared and stored.shape[0] != B:
            raise ValueError(
                f"stored: got batch size {stored.shape[0]} (shape {_shape(stored)}) with state batch size {B}; expected equal batch sizes"
            )
        H = self.num_heads
        mask = None
        if key_padding_mask is not None or attn_mask is not None:
            mask = self._merge_masks(key_padding_mask, attn_mask, B, L, S, unbatched, state.dtype)

        d, dv = self._head_dim, self._head_value_dim
        sp, kp, vp = self.state_proj, self.stored_proj, self.value_proj
        q = state if sp is None else sp(state)
        q = q.view(B, L, H, d).transpose(1, 2)
        if same_stored and sp is None and kp is None:
            k = q
        else:
            k = stored if kp is None else kp(stored)
            k = k.view(B, S, H, d).transpose(1, 2) if not shared else k.view(S, H, d).transpose(0, 1).expand(B, H, S, d)
        if same_values and vp is None and kp is None:
            v = k  # values are the stored patterns themselves (lets iterated retrieval skip a read-out)
        else:
            v = values if vp is None else vp(values)
            v = v.view(B, S, H, dv).transpose(1, 2) if not shared else v.view(S, H, dv).transpose(0, 1).expand(B, H, S, dv)
        log_beta = self.log_beta
        beta = self._beta if log_beta is None else log_beta.exp().view(H, 1, 1)
        need = return_weights or return_energy
        p = self.dropout if self.training else 0.0
        if self.update_steps == 1 and not need:  # the common case: one fused attention call
            if log_beta is not None:
                q, scale = q * beta.to(q.dtype), 1.0
            else:
                scale = beta
            keep = None if mask is None else (~mask if mask.dtype == torch.bool else mask)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p, scale=scale)
            r = None
        else:
            r = AF._retrieve(q, k, v, beta, mask, self.update_steps, self.tol, self.max_update_steps, p,
                             return_weights, return_energy)
            o = r.retrieved
        out = o.transpose(1, 2).reshape(B, L, H * dv)
        op = self.out_proj
        if op is not None:
            out = op(out)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need:
            return out
        w, e = r.weights, r.energy
        if w is not None and average_weights:
            w = w.mean(1)
        if unbatched:
            w = None if w is None else w.squeeze(0)
            e = None if e is None else e.squeeze(0)
        return HopfieldOutput(out, w, e, r.steps)

    def _bad_state(self, state):
        layout = "(B, L, size)" if self.batch_first else "(L, B, size)"
        if state.ndim not in (2, 3):
            raise ValueError(f"state: got a tensor of shape {_shape(state)}; expected {layout} or unbatched (L, size)")
        raise ValueError(f"state: got a tensor of shape {_shape(state)}; expected last dimension input_size = {self.input_size}")

    def _bad_stored(self, state, stored):
        layout = "(B, S, size)" if self.batch_first else "(S, B, size)"
        raise ValueError(
            f"stored: got a tensor of shape {_shape(stored)} with state of shape {_shape(state)}; expected "
            f"{layout if state.ndim == 3 else '(S, size)'} (or (S, size) shared by the batch) with last dimension "
            f"stored_size = {self.stored_size}"
        )

    def _merge_masks(self, key_padding_mask, attn_mask, B, L, S, unbatched, dtype):
        """One mask broadcastable to (B, H, L, S): bool (True = ignore) if both are bool, else additive."""
        H = self.num_heads
        kpm = key_padding_mask
        if kpm is not None:
            want = (S,) if unbatched else (B, S)
            if not isinstance(kpm, torch.Tensor) or kpm.shape != want or not (kpm.dtype == torch.bool or kpm.is_floating_point()):
                what = f"({S} stored patterns)" if unbatched else f"(batch size {B}, {S} stored patterns)"
                raise ValueError(
                    f"key_padding_mask: got {describe(kpm)}; expected a bool or float tensor of shape {want} {what}"
                )
            kpm = kpm.view(B, 1, 1, S)
        am = attn_mask
        if am is not None:
            ok = isinstance(am, torch.Tensor) and (am.dtype == torch.bool or am.is_floating_point())
            shape = _shape(am) if ok else None
            if shape == (L, S) or shape == (B, H, L, S):
                pass
            elif shape == (B * H, L, S):
                am = am.view(B, H, L, S)
            else:
                raise ValueError(
                    f"attn_mask: got {describe(am)}; expected a bool or float tensor of shape ({L}, {S}), "
                    f"({B * H}, {L}, {S}) or ({B}, {H}, {L}, {S}) (L = {L} queries, S = {S} stored patterns, "
                    f"batch {B} x num_heads {H})"
                )
        if am is None:
            mask = kpm
        elif kpm is None:
            mask = am
        elif kpm.dtype == torch.bool and am.dtype == torch.bool:
            return kpm | am
        else:
            return AF.additive_mask(kpm, dtype) + AF.additive_mask(am, dtype)
        return mask if mask.dtype == torch.bool else mask.to(dtype)

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention, **kwargs) -> "Hopfield":
        """A Hopfield layer computing exactly what ``mha`` computes (one update step), weights copied.

        ``batch_first`` and dropout follow ``mha``; ``add_bias_kv`` and ``add_zero_attn`` are not supported.
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha: got {describe(mha)}; expected a torch.nn.MultiheadAttention")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("mha: add_bias_kv / add_zero_attn are not supported; expected a plain nn.MultiheadAttention")
        E = mha.embed_dim
        w = mha.in_proj_weight
        hop = cls(
            E, E, mha.num_heads, None, 1, stored_size=mha.kdim, value_size=mha.vdim, bias=mha.in_proj_bias is not None,
            dropout=mha.dropout, batch_first=mha.batch_first, device=mha.out_proj.weight.device,
            dtype=mha.out_proj.weight.dtype, **kwargs,
        )
        with torch.no_grad():
            if w is not None:
                wq, wk, wv = w.chunk(3)
            else:
                wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            hop.state_proj.weight.copy_(wq)
            hop.stored_proj.weight.copy_(wk)
            hop.value_proj.weight.copy_(wv)
            hop.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                bq, bk, bv = mha.in_proj_bias.chunk(3)
                hop.state_proj.bias.copy_(bq)
                hop.stored_proj.bias.copy_(bk)
                hop.value_proj.bias.copy_(bv)
                hop.out_proj.bias.copy_(mha.out_proj.bias)
        return hop


class HopfieldPooling(nn.Module):
    """Pool a set (bag) of patterns to ``num_queries`` vectors with learned state patterns (queries).

    The learned queries live in the association space (``hidden_size``) and retrieve from the set
    (stored patterns, projected); the result is (B, num_queries, output_size) (batch_first), or
    (num_queries, output_size) for an unbatched set. ``key_padding_mask`` (B, S) marks padding of
    ragged sets. Other arguments as in :class:`Hopfield`.

    Example
    -------
    >>> import torch
    >>> from assocmem.nn import HopfieldPooling
    >>> pool = HopfieldPooling(32, num_queries=2, num_heads=4)
    >>> bags = torch.randn(8, 12, 32)                  # 8 bags of 12 instances
    >>> pad = torch.zeros(8, 12, dtype=torch.bool); pad[:, 10:] = True
    >>> pool(bags, key_padding_mask=pad).shape
    torch.Size([8, 2, 32])
    """

    def __init__(
        self,
        input_size: int,
        num_queries: int = 1,
        hidden_size: int | None = None,
        num_heads: int = 1,
        beta: float | None = None,
        update_steps: int | None = 1,
        *,
        output_size: int | None = None,
        projections: bool = True,
        bias: bool = True,
        learn_beta: bool = False,
        tol: float | None = None,
        max_update_steps: int = 100,
        dropout: float = 0.0,
        batch_first: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        input_size = check_int("input_size", input_size, minimum=1)
        self.num_queries = check_int("num_queries", num_queries, minimum=1)
        hidden = _size("hidden_size", hidden_size, input_size)
        self.hopfield = Hopfield(
            hidden, hidden, num_heads, beta, update_steps, stored_size=input_size, value_size=input_size,
            output_size=output_size, project_state=False, project_stored=projections, project_values=projections,
            project_output=projections, bias=bias, learn_beta=learn_beta, tol=tol, max_update_steps=max_update_steps,
            dropout=dropout, batch_first=batch_first, device=device, dtype=dtype,
        )
        self.input_size = input_size
        self.query = nn.Parameter(torch.empty(self.num_queries, hidden, device=device, dtype=dtype))
        nn.init.normal_(self.query)

    @property
    def output_size(self) -> int:
        return self.hopfield.output_size

    def forward(self, stored: torch.Tensor, key_padding_mask: torch.Tensor | None = None, *,
                return_weights: bool = False, return_energy: bool = False, average_weights: bool = True):
        """Pool ``stored`` (B, S, input_size) (batch_first), (S, B, input_size), or unbatched (S, input_size)."""
        if not isinstance(stored, torch.Tensor) or stored.ndim not in (2, 3):
            raise ValueError(
                f"stored: got {describe(stored)}; expected a set of shape (B, S, {self.input_size}) "
                f"{'(batch_first)' if self.hopfield.batch_first else '(S, B, size) (batch_first=False)'} or unbatched (S, {self.input_size})"
            )
        if stored.ndim == 2:
            q = self.query
        elif self.hopfield.batch_first:
            q = self.query.unsqueeze(0).expand(stored.shape[0], -1, -1)
        else:
            q = self.query.unsqueeze(1).expand(-1, stored.shape[1], -1)
        return self.hopfield(q, stored, key_padding_mask=key_padding_mask, return_weights=return_weights,
                             return_energy=return_energy, average_weights=average_weights)


class HopfieldLayer(nn.Module):
    """A lookup in ``num_patterns`` learned stored patterns: ``softmax(beta R Y^T) V`` with Y learned.

    By default a pure associative lookup: no state or output projection (``input_size`` is the size
    of the stored patterns), values = the stored patterns. ``separate_values=True`` learns separate
    values of the output size (a key-value memory: keys match the input, values are returned).
    ``project_state`` / ``project_output`` add learned linear maps around the lookup. The stored
    patterns are ``.patterns`` (num_patterns, hidden_size), the values ``.values`` when separate.

    Example
    -------
    >>> import torch
    >>> from assocmem.nn import HopfieldLayer
    >>> layer = HopfieldLayer(16, num_patterns=50, beta=4.0)
    >>> with torch.no_grad():
    ...     out = layer(layer.patterns[:3] + 0.01)   # a slightly perturbed stored pattern comes back
    >>> bool((out - layer.patterns[:3]).abs().max() < 0.05)
    True
    """

    def __init__(
        self,
        input_size: int,
        num_patterns: int,
        hidden_size: int | None = None,
        num_heads: int = 1,
        beta: float | None = None,
        update_steps: int | None = 1,
        *,
        output_size: int | None = None,
        separate_values: bool = False,
        project_state: bool = False,
        project_output: bool = False,
        bias: bool = True,
        learn_beta: bool = False,
        tol: float | None = None,
        max_update_steps: int = 100,
        dropout: float = 0.0,
        batch_first: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        input_size = check_int("input_size", input_size, minimum=1)
        self.num_patterns = check_int("num_patterns", num_patterns, minimum=1)
        project_state = _flag("project_state", project_state, False)
        project_output = _flag("project_output", project_output, False)
        self.separate_values = _flag("separate_values", separate_values, False)
        hidden = _size("hidden_size", hidden_size, input_size)
        if self.separate_values:
            value_size = hidden if project_output else _size("output_size", output_size, input_size)
        else:
            value_size = hidden
        self.hopfield = Hopfield(
            input_size, hidden, num_heads, beta, update_steps, stored_size=hidden, value_size=value_size,
            output_size=output_size, project_state=project_state, project_stored=False, project_values=False,
            project_output=project_output, bias=bias, learn_beta=learn_beta, tol=tol,
            max_update_steps=max_update_steps, dropout=dropout, batch_first=batch_first, **fk,
        )
        self.patterns = nn.Parameter(torch.empty(self.num_patterns, hidden, **fk))
        nn.init.normal_(self.patterns)
        if self.separate_values:
            self.values = nn.Parameter(torch.empty(self.num_patterns, value_size, **fk))
            nn.init.normal_(self.values)
        else:
            self.values = None

    @property
    def output_size(self) -> int:
        return self.hopfield.output_size

    def forward(self, state: torch.Tensor, *, attn_mask: torch.Tensor | None = None,
                return_weights: bool = False, return_energy: bool = False, average_weights: bool = True):
        """Look up ``state`` (B, L, input_size) (batch_first) or unbatched (L, input_size)."""
        values = self.patterns if self.values is None else self.values
        return self.hopfield(state, self.patterns, values, attn_mask=attn_mask, return_weights=return_weights,
                             return_energy=return_energy, average_weights=average_weights)


# -- energy layers: the general two-layer network with learned synapses --------------------------------
class EnergyOutput(NamedTuple):
    """``v`` (B, N_f) final feature state; ``h`` (B, N_h) final memory state; ``energy`` (steps + 1, B),
    KH eq. (2) (with the input-current term) at every step."""

    v: torch.Tensor
    h: torch.Tensor
    energy: torch.Tensor


class _Positive(nn.Module):
    """Parametrization keeping a learned Lagrangian parameter positive: stored as its log."""

    def forward(self, x):
        return x.exp()

    def right_inverse(self, y):
        return y.log()


class EnergyLayer(nn.Module):
    """A :class:`~assocmem.TwoLayerNetwork` (KH eq. 1-2) with learned ``xi``, run for ``steps`` fixed steps.

    The input is the initial feature state ``v0`` (B, N_f) (the memory layer starts at its steady
    state ``xi g(v0)``, KH eq. 5), optionally with an ``input_current`` I; the output is the feature
    state after ``steps`` steps of ``method`` ('rk4' or 'euler') with step ``dt``. Gradients flow by
    backpropagation through the steps to ``xi`` and, with ``learn_lagrangians=True``, to the
    Lagrangians' ``beta``/``gamma`` (kept positive; the Lagrangians are copied first). A Lagrangian
    parameter that is already an ``nn.Parameter`` is learned as given.

    Parameters
    ----------
    n_features, n_memories : N_f and N_h.
    lagrangian_v, lagrangian_h : default ``Quadratic()`` and ``LogSumExp(beta=1)`` (Model B, KH eq. 11).
    xi : initial synapses (N_h, N_f); default normal with standard deviation ``init_std``
        (default ``1 / sqrt(n_features)``).

    Example
    -------
    >>> import torch
    >>> from assocmem.nn import EnergyLayer
    >>> layer = EnergyLayer(8, 20, steps=5, dt=0.2)
    >>> out = layer(torch.randn(3, 8), return_energy=True)
    >>> out.v.shape, out.energy.shape
    (torch.Size([3, 8]), torch.Size([6, 3]))
    """

    def __init__(
        self,
        n_features: int,
        n_memories: int,
        lagrangian_v: Lagrangian | None = None,
        lagrangian_h: Lagrangian | None = None,
        *,
        steps: int = 10,
        dt: float = 0.1,
        method: str = "rk4",
        tau_f: float = 1.0,
        tau_h: float = 0.1,
        alpha: float = 1.0,
        learn_lagrangians: bool = False,
        xi: torch.Tensor | None = None,
        init_std: float | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        n_features = check_int("n_features", n_features, minimum=1)
        n_memories = check_int("n_memories", n_memories, minimum=1)
        self.steps = check_int("steps", steps, minimum=1)
        self.dt = float(check_positive("dt", dt))
        self.method = _int.check_method(method)
        if self.method not in _int.FIXED_STEP:
            raise ValueError(f"method: got {method!r}; expected a fixed-step method, one of {sorted(_int.FIXED_STEP)}")
        lv = Quadratic() if lagrangian_v is None else lagrangian_v
        lh = LogSumExp(beta=1.0) if lagrangian_h is None else lagrangian_h
        for name, lag in (("lagrangian_v", lv), ("lagrangian_h", lh)):
            if not isinstance(lag, Lagrangian):
                raise TypeError(f"{name}: got {describe(lag)}; expected an assocmem.lagrangians.Lagrangian")
        if _flag("learn_lagrangians", learn_lagrangians, False):
            lv, lh = self._learnable(lv, device, dtype), self._learnable(lh, device, dtype)
        if xi is None:
            std = 1.0 / math.sqrt(n_features) if init_std is None else float(check_positive("init_std", init_std))
            xi = torch.randn(n_memories, n_features, device=device, dtype=dtype) * std
        else:
            if not isinstance(xi, torch.Tensor) or _shape(xi) != (n_memories, n_features):
                raise ValueError(f"xi: got {describe(xi)}; expected a tensor of shape ({n_memories}, {n_features}) = (n_memories, n_features)")
            xi = xi.detach().to(device=device, dtype=dtype).clone()
        self.network = TwoLayerNetwork(nn.Parameter(xi), lv, lh, tau_f=tau_f, tau_h=tau_h, alpha=alpha)

    @staticmethod
    def _learnable(lag: Lagrangian, device, dtype) -> Lagrangian:
        lag = copy.deepcopy(lag)
        for name in ("beta", "gamma"):
            if name in lag.__dict__ and not isinstance(lag.__dict__[name], torch.Tensor):
                value = float(lag.__dict__.pop(name))
                lag.register_parameter(name, nn.Parameter(torch.tensor(value, device=device, dtype=dtype or torch.get_default_dtype())))
                parametrize.register_parametrization(lag, name, _Positive())
        return lag

    @property
    def xi(self) -> nn.Parameter:
        return self.network.xi

    @property
    def n_features(self) -> int:
        return self.network.n_features

    @property
    def n_memories(self) -> int:
        return self.network.n_memories

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, n_memories={self.n_memories}, steps={self.steps}, dt={self.dt}, method={self.method!r}"

    def forward(self, v0: torch.Tensor, input_current: torch.Tensor | None = None, clamp: torch.Tensor | None = None,
                *, return_energy: bool = False):
        """Integrate from ``v0`` (B, N_f) or (N_f,); returns the final ``v``, or an :class:`EnergyOutput`
        with ``return_energy``. ``input_current`` (B, N_f) or (N_f,) is I of KH eq. 1; ``clamp`` a bool
        mask of feature neurons held at their value in ``v0``. A non-finite state raises
        :class:`~assocmem.DivergenceError` (outside torch.compile)."""
        net = self.network
        xi = net.xi
        N = net.n_features
        if not isinstance(v0, torch.Tensor) or v0.ndim not in (1, 2) or v0.shape[-1] != N:
            raise ValueError(f"v0: got {describe(v0)}; expected shape ({N},) or (B, {N}) with N_f = {N} (xi is {_shape(xi)})")
        single = v0.ndim == 1
        v = v0.unsqueeze(0) if single else v0
        v = v.to(dtype=xi.dtype)
        B = v.shape[0]
        current = None
        if input_current is not None:
            if not isinstance(input_current, torch.Tensor) or input_current.shape[-1] != N or input_current.ndim not in (1, 2) \
                    or (input_current.ndim == 2 and input_current.shape[0] not in (1, B)):
                raise ValueError(f"input_current: got {describe(input_current)}; expected shape ({N},) or ({B}, {N}) to match v0")
            current = input_current.to(dtype=xi.dtype)
        if clamp is not None:
            if not isinstance(clamp, torch.Tensor) or clamp.dtype != torch.bool or clamp.shape[-1] != N or clamp.ndim not in (1, 2) \
                    or (clamp.ndim == 2 and clamp.shape[0] not in (1, B)):
                raise ValueError(f"clamp: got {describe(clamp)}; expected a bool mask of shape ({N},) or ({B}, {N})")
        tau_f = net.tau_f

        def func(state):
            dv, dh = net.derivatives(state[0], state[1])
            if current is not None:
                dv = dv + current / tau_f
            if clamp is not None:
                dv = dv.masked_fill(clamp, 0.0)
            return dv, dh

        def energy(v, h):
            e = net.energy(v, h)
            if current is not None:
                e = e - (current * net.lagrangian_v.activation(v)).sum(-1)
            return e

        h = net.lagrangian_v.activation(v) @ xi.T
        step = _int.FIXED_STEP[self.method]
        energies = [energy(v, h)] if return_energy else None
        for _ in range(self.steps):
            v, h = step(func, (v, h), self.dt)
            if energies is not None:
                energies.append(energy(v, h))
        if not torch.compiler.is_compiling() and not (bool(torch.isfinite(v).all()) and bool(torch.isfinite(h).all())):
            raise DivergenceError(
                f"EnergyLayer diverged within {self.steps} steps of dt = {self.dt}: non-finite feature or memory "
                "state; reduce dt, use method='rk4', or check that both Lagrangians are convex"
            )
        if single:
            v, h = v.squeeze(0), h.squeeze(0)
        if not return_energy:
            return v
        e = torch.stack(energies)
        return EnergyOutput(v, h, e.squeeze(1) if single else e)


AssociativeMemoryLayer = EnergyLayer
"""Alias of :class:`EnergyLayer`."""
