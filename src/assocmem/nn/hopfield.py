"""Modern Hopfield layers (Ramsauer et al. 2020; Krotov & Hopfield 2021 eq. 13-16): ``Hopfield``
(state patterns retrieve from stored patterns: multi-head attention with iterated updates, eq. 16, that
never raise the energy, eq. 13), ``HopfieldPooling`` (learned queries pool a set) and ``HopfieldLayer``
(a lookup in learned patterns). The update and energy live in :mod:`assocmem.functional`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional as AF
from .._validation import check_flag, check_in_range, check_int, check_positive, describe

__all__ = ["HopfieldOutput", "Hopfield", "HopfieldPooling", "HopfieldLayer"]


class HopfieldOutput(NamedTuple):
    """What a Hopfield layer returns when weights or energy are requested.

    ``retrieved``: the retrieved patterns, laid out like the state input (``batch_first``).
    ``weights``: the read-out softmax, (B, L, S) averaged over heads or (B, H, L, S); None unless asked.
    ``energy``: Krotov & Hopfield 2021 eq. (13) per head and query at the state the read-out used,
    (B, H, L); None unless asked.
    ``steps``: the number of updates (eq. 16) applied to the state before the read-out: 0 for plain
    attention. Unbatched inputs drop the B axis.
    """

    retrieved: torch.Tensor
    weights: torch.Tensor | None
    energy: torch.Tensor | None
    steps: int


class _Unset:
    """Marks an argument the caller did not give (``None`` has a meaning of its own here)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "unset"


_UNSET = _Unset()


def _size(name, x, default):
    if x is None:
        return default
    return check_int(name, x, minimum=1)


_flag = check_flag


def _shape(t) -> tuple:
    return tuple(t.shape)


def resolve_updates(updates, update_steps, max_updates, max_update_steps) -> tuple[int | None, int]:
    """``(updates, max_updates)`` from the current names or their older spellings, which counted the
    read-out as a step: ``update_steps = updates + 1``, ``max_update_steps = max_updates + 1``."""
    if updates is not _UNSET and update_steps is not _UNSET:
        raise ValueError(
            f"updates: got updates={updates!r} and update_steps={update_steps!r}; expected only one "
            "(update_steps is the older spelling, update_steps = updates + 1)"
        )
    if update_steps is not _UNSET:
        updates = None if update_steps is None else check_int("update_steps", update_steps, minimum=1) - 1
    elif updates is _UNSET:
        updates = 0
    elif updates is not None:
        updates = check_int("updates", updates, minimum=0)
    if max_updates is not None and max_update_steps is not None:
        raise ValueError(
            f"max_updates: got max_updates={max_updates!r} and max_update_steps={max_update_steps!r}; expected only "
            "one (max_update_steps = max_updates + 1 is the older spelling)"
        )
    if max_update_steps is not None:
        max_updates = check_int("max_update_steps", max_update_steps, minimum=1) - 1
    elif max_updates is None:
        max_updates = 100
    else:
        max_updates = check_int("max_updates", max_updates, minimum=0)
    return updates, max_updates


def head_beta(beta, num_heads: int, *, default: float, dtype=None, device=None):
    """A positive float, or a (num_heads,) tensor of positive numbers (one inverse temperature per head)
    from a tensor or a sequence; ``default`` when ``beta`` is None."""
    if beta is None:
        return float(default)
    if isinstance(beta, (list, tuple)) or (isinstance(beta, torch.Tensor) and beta.ndim > 0):
        try:
            t = torch.as_tensor(beta, dtype=dtype if dtype is not None else torch.get_default_dtype(), device=device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"beta: got {describe(beta)}; expected a positive number or one per head, shape ({num_heads},)") from None
        t = t.detach().clone()
        if t.shape != (num_heads,):
            raise ValueError(f"beta: got shape {_shape(t)}; expected a number or a tensor of shape ({num_heads},), one per head")
        if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
            raise ValueError(f"beta: got {t.tolist()}; expected finite numbers > 0 (one per head)")
        return t
    return float(check_positive("beta", beta))


def check_normalize(normalize) -> bool:
    """``normalize`` is None (no pattern normalisation) or "layer" (LayerNorm); returns whether it is on."""
    if normalize is None or normalize is False:
        return False
    if normalize == "layer" or normalize is True:
        return True
    raise ValueError(f"normalize: got {normalize!r}; expected None or 'layer' (LayerNorm on the patterns)")


def merge_masks(key_padding_mask, attn_mask, B, H, L, S, unbatched, dtype):
    """One mask broadcastable to (B, H, L, S), from ``nn.MultiheadAttention``'s two conventions:
    ``key_padding_mask`` (B, S) (or (S,) unbatched) and ``attn_mask`` (L, S), (B * H, L, S) or
    (B, H, L, S); bool (True = ignore) or additive float. Bool if both are bool, else additive."""
    kpm = key_padding_mask
    if kpm is not None:
        want = (S,) if unbatched else (B, S)
        if not isinstance(kpm, torch.Tensor) or kpm.shape != want or not (kpm.dtype == torch.bool or kpm.is_floating_point()):
            what = f"({S} stored patterns)" if unbatched else f"(batch size {B}, {S} stored patterns)"
            raise ValueError(f"key_padding_mask: got {describe(kpm)}; expected a bool or float tensor of shape {want} {what}")
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


class Hopfield(nn.Module):
    """Modern Hopfield association: retrieve from stored patterns with state patterns (Ramsauer et al. 2020).

    ``state`` (queries, R), ``stored`` (keys, Y) and ``values`` (pattern projections) are optionally
    normalised (``normalize="layer"``: a LayerNorm on each of the three inputs, as hopfield-layers does by
    default), mapped by optional learned projections into an association space of ``hidden_size`` split
    over ``num_heads``; per head the state is updated ``updates`` times by
    ``xi <- softmax(beta xi Y^T + m) Y`` (Krotov & Hopfield 2021 eq. 16, a concave-convex step that never
    raises the energy, eq. 13) and read out as ``softmax(beta xi Y^T + m) V``, then the heads are
    concatenated and projected to ``output_size``. With ``updates=0`` (the default) this is multi-head
    attention: without projections or normalisation it equals ``F.scaled_dot_product_attention``; with
    projections it equals ``nn.MultiheadAttention`` with the same weights (:meth:`from_multihead_attention`).

    Parameters
    ----------
    input_size : size of the state patterns.
    hidden_size : size of the association space, all heads together (hopfield-layers counts it per
        head); default ``input_size``.
    num_heads : number of independent heads; must divide ``hidden_size`` (and the value size).
    beta : inverse temperature: a number, or one per head (a (num_heads,) tensor or sequence);
        default ``1 / sqrt(hidden_size / num_heads)``.
    updates : number of updates applied to the state before the read-out (0: plain attention), or None
        to iterate until ``max |xi_new - xi| <= tol * max(1, max |xi|)`` (at most ``max_updates``; ``tol``
        default :func:`assocmem.functional.default_tol`). ``update_steps`` (positional) is its older
        spelling, ``update_steps = updates + 1``, and ``max_update_steps = max_updates + 1``.
    stored_size, value_size : sizes of the stored patterns and of the values (default ``input_size``
        and ``stored_size``).
    output_size : size of the result; default ``input_size`` with an output projection, else the value size.
    projections : default for the four switches ``project_state``, ``project_stored``,
        ``project_values``, ``project_output`` (learned linear maps with ``bias``). Without the state
        (stored) projection, ``input_size`` (``stored_size``) must equal ``hidden_size``.
    normalize : None (default) or "layer": default for ``normalize_state``, ``normalize_stored``,
        ``normalize_values``, each a LayerNorm (learned affine, ``norm_eps``) on that input before its projection.
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
    >>> out.retrieved.shape, out.energy.shape, out.steps
    (torch.Size([4, 10, 16]), torch.Size([4, 2, 10]), 0)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | None = None,
        num_heads: int = 1,
        beta=None,
        update_steps=_UNSET,
        *,
        updates=_UNSET,
        max_updates: int | None = None,
        stored_size: int | None = None,
        value_size: int | None = None,
        output_size: int | None = None,
        projections: bool = True,
        project_state: bool | None = None,
        project_stored: bool | None = None,
        project_values: bool | None = None,
        project_output: bool | None = None,
        bias: bool = True,
        normalize: str | None = None,
        normalize_state: bool | None = None,
        normalize_stored: bool | None = None,
        normalize_values: bool | None = None,
        norm_eps: float = 1e-5,
        learn_beta: bool = False,
        tol: float | None = None,
        max_update_steps: int | None = None,
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
        self.updates, self.max_updates = resolve_updates(updates, update_steps, max_updates, max_update_steps)
        self.tol = None if tol is None else float(check_positive("tol", tol))
        self.dropout = check_in_range("dropout", dropout, 0.0, 1.0, hi_open=True)
        self.batch_first = _flag("batch_first", batch_first, True)
        head_dim = self._head_dim = self.hidden_size // H
        self._head_value_dim = self.head_value_total // H
        beta = head_beta(beta, H, default=1.0 / math.sqrt(head_dim), **fk)
        if _flag("learn_beta", learn_beta, False):
            init = beta.log() if isinstance(beta, torch.Tensor) else torch.full((H,), math.log(beta), **fk)
            self.log_beta = nn.Parameter(init)
            self._beta = None
        else:
            self.log_beta = None
            if isinstance(beta, torch.Tensor):
                self.register_buffer("_beta_heads", beta, persistent=False)
                self._beta = None
            else:
                self._beta_heads = None
                self._beta = beta
        bias = _flag("bias", bias, True)
        self.state_proj = nn.Linear(self.input_size, self.hidden_size, bias=bias, **fk) if self.project_state else None
        self.stored_proj = nn.Linear(self.stored_size, self.hidden_size, bias=bias, **fk) if self.project_stored else None
        self.value_proj = nn.Linear(self.value_size, self.hidden_size, bias=bias, **fk) if self.project_values else None
        self.out_proj = nn.Linear(self.head_value_total, self.output_size, bias=bias, **fk) if self.project_output else None
        norm = check_normalize(normalize)
        eps = float(check_positive("norm_eps", norm_eps))
        self.state_norm = nn.LayerNorm(self.input_size, eps=eps, **fk) if _flag("normalize_state", normalize_state, norm) else None
        self.stored_norm = nn.LayerNorm(self.stored_size, eps=eps, **fk) if _flag("normalize_stored", normalize_stored, norm) else None
        self.value_norm = nn.LayerNorm(self.value_size, eps=eps, **fk) if _flag("normalize_values", normalize_values, norm) else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Projections as in ``nn.MultiheadAttention``: Xavier-uniform weights, zero biases; LayerNorms
        with unit scale and zero shift."""
        for lin in (self.state_proj, self.stored_proj, self.value_proj, self.out_proj):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        for ln in (self.state_norm, self.stored_norm, self.value_norm):
            if ln is not None:
                ln.reset_parameters()

    @property
    def beta(self):
        """The inverse temperature: a float, or a (num_heads,) tensor when learned or given per head."""
        if self.log_beta is not None:
            return self.log_beta.exp()
        return self._beta if self._beta_heads is None else self._beta_heads

    @property
    def update_steps(self) -> int | None:
        """The older spelling of :attr:`updates`: ``updates + 1`` (None: iterate to convergence)."""
        return None if self.updates is None else self.updates + 1

    @property
    def max_update_steps(self) -> int:
        """The older spelling of :attr:`max_updates`: ``max_updates + 1``."""
        return self.max_updates + 1

    def extra_repr(self) -> str:
        if self.log_beta is not None:
            b = "learned"
        elif self._beta_heads is not None:
            b = "[" + ", ".join(f"{x:.4g}" for x in self._beta_heads.tolist()) + "]"
        else:
            b = f"{self._beta:.4g}"
        norm = ", normalize='layer'" if (self.state_norm or self.stored_norm or self.value_norm) is not None else ""
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_heads={self.num_heads}, "
            f"beta={b}, updates={self.updates}{norm}, batch_first={self.batch_first}"
        )

    def _head_betas(self):
        """beta for the retrieval: a float, or a (H, 1, 1) tensor (one per head)."""
        if self.log_beta is not None:
            return self.log_beta.exp().view(-1, 1, 1)
        if self._beta_heads is not None:
            return self._beta_heads.view(-1, 1, 1)
        return self._beta

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
            mask = merge_masks(key_padding_mask, attn_mask, B, H, L, S, unbatched, state.dtype)

        # pattern normalisation (Ramsauer et al. 2020, section 3: LayerNorm on the three inputs)
        sn, kn, vn = self.state_norm, self.stored_norm, self.value_norm
        raw_stored = stored
        if kn is not None:
            stored = kn(stored)
            same_stored = False
        if sn is not None:
            state = sn(state)
            same_stored = False
        if vn is not None:
            values = vn(values)
            same_values = False
        elif same_values:
            values = stored if kn is None else raw_stored
            same_values = kn is None

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
        beta = self._head_betas()
        need = return_weights or return_energy
        p = self.dropout if self.training else 0.0
        if self.updates == 0 and not need:  # the common case: one fused attention call
            if isinstance(beta, torch.Tensor):
                q, scale = q * beta.to(q.dtype), 1.0
            else:
                scale = beta
            keep = None if mask is None else (~mask if mask.dtype == torch.bool else mask)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p, scale=scale)
            r = None
            steps = 0
        else:
            update_steps = None if self.updates is None else self.updates + 1
            r = AF._retrieve(q, k, v, beta, mask, update_steps, self.tol, self.max_updates + 1, p,
                             return_weights, return_energy)
            o = r.retrieved
            steps = r.steps - 1  # the functional counts the read-out as a step
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
        return HopfieldOutput(out, w, e, steps)

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
            E, E, mha.num_heads, None, updates=0, stored_size=mha.kdim, value_size=mha.vdim, bias=mha.in_proj_bias is not None,
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




def _retrieval_options(kw: dict) -> dict:
    """The keyword arguments a wrapper passes through to its inner :class:`Hopfield` unchanged."""
    return {k: kw[k] for k in ("updates", "max_updates", "max_update_steps", "tol", "learn_beta", "dropout",
                               "batch_first", "norm_eps", "device", "dtype")}


class HopfieldPooling(nn.Module):
    """Pool a set (bag) of patterns to ``num_queries`` vectors with learned state patterns (queries).

    The learned queries live in the association space (``hidden_size``; no state projection) and
    retrieve from the set (stored patterns, projected); the result is (B, num_queries, output_size)
    (batch_first), or (num_queries, output_size) for an unbatched set — not flattened (hopfield-layers
    flattens to (B, num_queries * output_size)). ``output_size`` defaults to ``input_size``.
    ``forward(stored, key_padding_mask, values=...)`` reads out separate values (of ``value_size``,
    default ``input_size``) instead of the set itself. ``normalize="layer"`` puts a LayerNorm on the set
    and on the values (the queries are parameters: they start small, N(0, 0.02^2), so that pooling starts
    close to an average over the set). Other arguments as in :class:`Hopfield`.

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
        beta=None,
        update_steps=_UNSET,
        *,
        updates=_UNSET,
        max_updates: int | None = None,
        value_size: int | None = None,
        output_size: int | None = None,
        projections: bool = True,
        bias: bool = True,
        normalize: str | None = None,
        norm_eps: float = 1e-5,
        learn_beta: bool = False,
        tol: float | None = None,
        max_update_steps: int | None = None,
        dropout: float = 0.0,
        batch_first: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        input_size = check_int("input_size", input_size, minimum=1)
        self.num_queries = check_int("num_queries", num_queries, minimum=1)
        hidden = _size("hidden_size", hidden_size, input_size)
        value_size = _size("value_size", value_size, input_size)
        projections = _flag("projections", projections, True)
        if output_size is None and projections:
            output_size = input_size
        self.hopfield = Hopfield(
            hidden, hidden, num_heads, beta, update_steps, stored_size=input_size, value_size=value_size,
            output_size=output_size, project_state=False, project_stored=projections, project_values=projections,
            project_output=projections, bias=bias, normalize=normalize, normalize_state=False,
            **_retrieval_options(locals()),
        )
        self.input_size = input_size
        self.query = nn.Parameter(torch.empty(self.num_queries, hidden, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The inner layer's projections and norms as :meth:`Hopfield.reset_parameters`; the queries
        N(0, 0.02^2), so that pooling starts close to an average over the set (small scores)."""
        self.hopfield.reset_parameters()
        nn.init.normal_(self.query, mean=0.0, std=0.02)

    @property
    def output_size(self) -> int:
        return self.hopfield.output_size

    @property
    def value_size(self) -> int:
        return self.hopfield.value_size

    def forward(self, stored: torch.Tensor, key_padding_mask: torch.Tensor | None = None, *,
                values: torch.Tensor | None = None, return_weights: bool = False, return_energy: bool = False,
                average_weights: bool = True):
        """Pool ``stored`` (B, S, input_size) (batch_first), (S, B, input_size), or unbatched (S, input_size);
        ``values`` (same layout, last axis ``value_size``) are read out instead of ``stored`` when given."""
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
        return self.hopfield(q, stored, values, key_padding_mask=key_padding_mask, return_weights=return_weights,
                             return_energy=return_energy, average_weights=average_weights)


class HopfieldLayer(nn.Module):
    """A lookup in ``num_patterns`` learned stored patterns: ``softmax(beta R Y^T) V`` with Y learned.

    By default a pure associative lookup: no state or output projection, values = the stored patterns.
    ``separate_values=True`` (implied by giving ``values``) holds separate values of the output size
    (a key-value memory: keys match the input, values are returned). ``patterns`` (num_patterns,
    hidden_size) and ``values`` (num_patterns, value size) give starting contents (default: normal
    random); ``learn_patterns=False`` / ``learn_values=False`` freeze them (e.g. fixed lookup targets).
    A state projection is added when ``hidden_size`` differs from ``input_size`` (or with
    ``project_state=True``); ``project_output`` adds one after the lookup. The stored patterns are
    ``.patterns``, the values ``.values`` when separate.

    Example
    -------
    >>> import torch
    >>> from assocmem.nn import HopfieldLayer
    >>> _ = torch.manual_seed(0)                                # the stored patterns start random
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
        beta=None,
        update_steps=_UNSET,
        *,
        updates=_UNSET,
        max_updates: int | None = None,
        output_size: int | None = None,
        separate_values: bool | None = None,
        patterns: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        learn_patterns: bool = True,
        learn_values: bool = True,
        project_state: bool | None = None,
        project_output: bool = False,
        bias: bool = True,
        normalize: str | None = None,
        norm_eps: float = 1e-5,
        learn_beta: bool = False,
        tol: float | None = None,
        max_update_steps: int | None = None,
        dropout: float = 0.0,
        batch_first: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        input_size = check_int("input_size", input_size, minimum=1)
        self.num_patterns = check_int("num_patterns", num_patterns, minimum=1)
        hidden = _size("hidden_size", hidden_size, input_size)
        project_state = _flag("project_state", project_state, hidden != input_size)
        project_output = _flag("project_output", project_output, False)
        separate = _flag("separate_values", separate_values, values is not None)
        if values is not None and not separate:
            raise ValueError("values: got starting values with separate_values=False; expected separate_values=True (or leave it unset)")
        P = self.num_patterns
        patterns = self._start("patterns", patterns, (P, hidden), "(num_patterns, hidden_size)", fk)
        if separate:
            if values is not None:
                if not isinstance(values, torch.Tensor) or values.ndim != 2 or values.shape[0] != P:
                    raise ValueError(f"values: got {describe(values)}; expected a tensor of shape ({P}, value size), one value per pattern")
                value_size = values.shape[1]
            else:
                value_size = hidden if project_output else _size("output_size", output_size, input_size)
            values = self._start("values", values, (P, value_size), "(num_patterns, value size)", fk)
        else:
            value_size = hidden
        self.separate_values = separate
        self.hopfield = Hopfield(
            input_size, hidden, num_heads, beta, update_steps, stored_size=hidden, value_size=value_size,
            output_size=output_size, project_state=project_state, project_stored=False, project_values=False,
            project_output=project_output, bias=bias, normalize=normalize, **_retrieval_options(locals()),
        )
        self.patterns = nn.Parameter(patterns, requires_grad=_flag("learn_patterns", learn_patterns, True))
        self.values = nn.Parameter(values, requires_grad=_flag("learn_values", learn_values, True)) if separate else None

    @staticmethod
    def _start(name, given, shape, what, fk) -> torch.Tensor:
        if given is None:
            return nn.init.normal_(torch.empty(shape, **fk))
        if not isinstance(given, torch.Tensor) or _shape(given) != shape or not given.is_floating_point():
            raise ValueError(f"{name}: got {describe(given)}; expected a floating-point tensor of shape {shape} = {what}")
        dtype = fk["dtype"] if fk["dtype"] is not None else (given.dtype if given.is_floating_point() else None)
        return given.detach().to(device=fk["device"], dtype=dtype).clone()

    @property
    def output_size(self) -> int:
        return self.hopfield.output_size

    def forward(self, state: torch.Tensor, *, key_padding_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, return_weights: bool = False, return_energy: bool = False,
                average_weights: bool = True):
        """Look up ``state`` (B, L, input_size) (batch_first) or unbatched (L, input_size);
        ``key_padding_mask`` (B, num_patterns) hides patterns per batch element."""
        values = self.patterns if self.values is None else self.values
        return self.hopfield(state, self.patterns, values, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                             return_weights=return_weights, return_energy=return_energy, average_weights=average_weights)
