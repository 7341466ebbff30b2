"""Drop-in replacements for the layers of hopfield-layers (``hflayers``; Ramsauer et al. 2020, "Hopfield
Networks is All You Need"): ``Hopfield``, ``HopfieldPooling`` and ``HopfieldLayer`` with its constructor
signatures, defaults, forward conventions and ``state_dict`` keys, computed by our own retrieval
(Ramsauer et al. 2020 eq. 3 / Krotov & Hopfield 2021 eq. 16, iterated per head until a step limit or
until the association matrix stops changing).

Switching is a change of import::

    from assocmem.nn.compat import Hopfield, HopfieldPooling, HopfieldLayer   # was: from hflayers import ...

A checkpoint saved by hopfield-layers loads with ``load_state_dict`` and gives the same outputs to
float rounding. Deliberate differences, all where hopfield-layers' result is undefined or mixes data:
a query whose stored patterns are all masked retrieves zeros (hopfield-layers: NaN); a *static* pattern
(``*_as_static``) is used by every head of its own batch element (hopfield-layers tiles the batch over
the heads, so with several heads and a static pattern that differs across the batch, heads read other
batch elements' patterns); ``concat_bias_pattern=True`` is refused (hopfield-layers creates the bias
patterns but never concatenates them).
"""
from __future__ import annotations

from math import sqrt

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional as AF
from .._validation import check_in_range, check_int, check_positive, describe
from .hopfield import merge_masks

__all__ = ["Hopfield", "HopfieldPooling", "HopfieldLayer"]


def _opt_size(name, x):
    return None if x is None else check_int(name, x, minimum=1)


def _bool(name, x):
    if not isinstance(x, bool):
        raise TypeError(f"{name}: got {describe(x)}; expected True or False")
    return x


def _per_head(name, x, num_heads, *, integer: bool):
    """A number (or None for update_steps_max) or a (num_heads,) tensor, as hopfield-layers takes them."""
    if isinstance(x, torch.Tensor):
        if x.ndim != 1 or x.shape[0] != num_heads:
            raise ValueError(f"{name}: got a tensor of shape {tuple(x.shape)}; expected one entry per head, shape ({num_heads},)")
        if integer and x.is_floating_point():
            raise TypeError(f"{name}: got a {x.dtype} tensor; expected integer step counts (negative = no limit)")
        if not integer and not bool((x > 0).all()):
            raise ValueError(f"{name}: got {x.tolist()}; expected positive numbers")
        return x.detach().clone()
    if integer:
        if x is None:
            return None
        return check_int(name, x, minimum=0)
    return float(check_positive(name, x))


class _AssociationCore(nn.Module):
    """The learned parts of one association, under hopfield-layers' names (``association_core.*``):
    ``in_proj_weight`` (state, stored and projection maps stacked) when all inputs have the input size,
    else ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``; ``in_proj_bias`` (state, stored,
    projection parts); ``out_proj``; ``p_norm_weight`` / ``p_norm_bias`` (LayerNorm in the association
    space)."""

    def __init__(self, embed_dim, num_heads, head_dim, pattern_dim, kdim, vdim, out_dim, bias, key_as_static,
                 query_as_static, value_as_static, value_as_connected, disable_out_projection, normalize_pattern,
                 normalize_pattern_affine, normalize_pattern_eps, pattern_size_given):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim, self.pattern_dim = embed_dim, num_heads, head_dim, pattern_dim
        self.kdim, self.vdim, self.out_dim = kdim, vdim, out_dim
        self.key_as_static, self.query_as_static, self.value_as_static = key_as_static, query_as_static, value_as_static
        self.value_as_connected = value_as_connected
        self.disable_out_projection = disable_out_projection
        self.normalize_pattern, self.normalize_pattern_eps = normalize_pattern, normalize_pattern_eps
        H = num_heads
        hop = H * head_dim if head_dim is not None else None
        pat = H * pattern_dim if pattern_dim is not None else None
        if normalize_pattern_affine:
            self.p_norm_weight = nn.Parameter(torch.empty(head_dim))
            self.p_norm_bias = nn.Parameter(torch.empty(head_dim))
        else:
            self.register_parameter("p_norm_weight", None)
            self.register_parameter("p_norm_bias", None)
        self.same_embed = kdim == embed_dim and vdim == embed_dim and not pattern_size_given and not value_as_connected
        n_dynamic = 3 - (key_as_static + query_as_static + value_as_static)
        if n_dynamic == 0:
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_weight", "in_proj_bias"):
                self.register_parameter(name, None)
        elif not self.same_embed:
            self.q_proj_weight = None if query_as_static else nn.Parameter(torch.empty(hop, embed_dim))
            self.k_proj_weight = None if key_as_static else nn.Parameter(torch.empty(hop, kdim))
            v_in = hop if (value_as_connected and not key_as_static) else vdim
            self.v_proj_weight = None if value_as_static else nn.Parameter(torch.empty(pat, v_in))
            self.register_parameter("in_proj_weight", None)
        else:
            rows = (not query_as_static) * hop + (not key_as_static) * hop + (not value_as_static) * pat
            self.in_proj_weight = nn.Parameter(torch.empty(rows, embed_dim))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        if n_dynamic == 0:
            pass
        elif bias:
            self.in_proj_bias = nn.Parameter(torch.empty((not query_as_static) * hop + (not key_as_static) * hop + pat))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = None if disable_out_projection else nn.Linear(pat, out_dim, bias=bias)
        self.reset_parameters()  # as hopfield-layers' core does: the same random draws, in the same order

    def reset_parameters(self) -> None:
        """hopfield-layers' initialisation: projections N(0, 0.02^2), biases 0, LayerNorm scale 1 and shift 0."""
        if self.p_norm_weight is not None:
            nn.init.ones_(self.p_norm_weight)
            nn.init.zeros_(self.p_norm_bias)
        for w in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if w is not None:
                nn.init.normal_(w, mean=0.0, std=0.02)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
        if self.out_proj is not None:
            nn.init.normal_(self.out_proj.weight, mean=0.0, std=0.02)
            if self.out_proj.bias is not None:
                nn.init.zeros_(self.out_proj.bias)

    def weights(self):
        """(W_q, b_q, W_k, b_k, W_v, b_v), None where a pattern is static (or has no bias)."""
        H = self.num_heads
        hop = H * self.head_dim if self.head_dim is not None else 0
        pat = H * self.pattern_dim if self.pattern_dim is not None else 0
        qs, ks, vs = self.query_as_static, self.key_as_static, self.value_as_static
        b = self.in_proj_bias
        bq = bk = bv = None
        if b is not None:
            i = 0
            if not qs:
                bq, i = b[i:i + hop], i + hop
            if not ks:
                bk, i = b[i:i + hop], i + hop
            bv = b[i:i + pat]
        if self.same_embed:
            w = self.in_proj_weight
            wq = wk = wv = None
            i = 0
            if not qs:
                wq, i = w[i:i + hop], i + hop
            if not ks:
                wk, i = w[i:i + hop], i + hop
            if not vs:
                wv = w[i:i + pat]
            return wq, bq, wk, bk, wv, bv
        return self.q_proj_weight, bq, self.k_proj_weight, bk, self.v_proj_weight, bv


class Hopfield(nn.Module):
    """hopfield-layers' ``Hopfield``, same arguments and defaults: ``forward(input)`` with ``input`` one
    tensor (stored = state = projection) or the tuple ``(stored_pattern, state_pattern, pattern_projection)``.

    ``hidden_size`` is the size of the association space *per head* (default ``input_size // num_heads``),
    ``scaling`` is beta (default ``1 / sqrt(hidden_size)``; a (num_heads,) tensor gives one per head),
    ``update_steps_max = k`` applies k updates of the state before the read-out (None: no limit), each head
    stopping early once the Frobenius norm of the change of its association matrix (maximum over the
    batch) is at most ``update_steps_eps``. The stored pattern, state pattern and pattern projection are
    LayerNorm-normalised by default (``normalize_*``); ``normalize_hopfield_space`` normalises the
    projected state and stored patterns per head. Weights start as hopfield-layers starts them
    (N(0, 0.02^2), zero biases). Masks: ``stored_pattern_padding_mask`` (B, S), True (or 1) = ignore;
    ``association_mask`` (L, S) or (B * num_heads, L, S), bool/uint8 (True = ignore) or additive float.
    """

    def __init__(self,
                 input_size=None, hidden_size=None, output_size=None, pattern_size=None, num_heads=1, scaling=None,
                 update_steps_max=0, update_steps_eps=1e-4,
                 normalize_stored_pattern=True, normalize_stored_pattern_affine=True, normalize_stored_pattern_eps=1e-5,
                 normalize_state_pattern=True, normalize_state_pattern_affine=True, normalize_state_pattern_eps=1e-5,
                 normalize_pattern_projection=True, normalize_pattern_projection_affine=True,
                 normalize_pattern_projection_eps=1e-5,
                 normalize_hopfield_space=False, normalize_hopfield_space_affine=False, normalize_hopfield_space_eps=1e-5,
                 stored_pattern_as_static=False, state_pattern_as_static=False, pattern_projection_as_static=False,
                 pattern_projection_as_connected=False, stored_pattern_size=None, pattern_projection_size=None,
                 batch_first=True, association_activation=None, dropout=0.0, input_bias=True,
                 concat_bias_pattern=False, add_zero_association=False, disable_out_projection=False):
        super().__init__()
        input_size = _opt_size("input_size", input_size)
        hidden_size = _opt_size("hidden_size", hidden_size)
        output_size = _opt_size("output_size", output_size)
        pattern_size = _opt_size("pattern_size", pattern_size)
        stored_pattern_size = _opt_size("stored_pattern_size", stored_pattern_size)
        pattern_projection_size = _opt_size("pattern_projection_size", pattern_projection_size)
        H = check_int("num_heads", num_heads, minimum=1)
        for name, val in (("stored_pattern_as_static", stored_pattern_as_static), ("state_pattern_as_static", state_pattern_as_static),
                          ("pattern_projection_as_static", pattern_projection_as_static),
                          ("pattern_projection_as_connected", pattern_projection_as_connected), ("batch_first", batch_first),
                          ("input_bias", input_bias), ("concat_bias_pattern", concat_bias_pattern),
                          ("add_zero_association", add_zero_association), ("disable_out_projection", disable_out_projection),
                          ("normalize_stored_pattern", normalize_stored_pattern), ("normalize_state_pattern", normalize_state_pattern),
                          ("normalize_pattern_projection", normalize_pattern_projection),
                          ("normalize_hopfield_space", normalize_hopfield_space),
                          ("normalize_stored_pattern_affine", normalize_stored_pattern_affine),
                          ("normalize_state_pattern_affine", normalize_state_pattern_affine),
                          ("normalize_pattern_projection_affine", normalize_pattern_projection_affine),
                          ("normalize_hopfield_space_affine", normalize_hopfield_space_affine)):
            _bool(name, val)
        if concat_bias_pattern:
            raise ValueError(
                "concat_bias_pattern: got True; not supported (hopfield-layers creates the bias patterns but never "
                "concatenates them to the stored patterns); expected False"
            )
        if association_activation is not None:
            act = getattr(torch, association_activation, None) if isinstance(association_activation, str) else None
            if not callable(act):
                raise ValueError(f"association_activation: got {association_activation!r}; expected None or the name of a torch function such as 'tanh'")
        else:
            act = None
        self.association_activation = act
        ks, qs, vs = stored_pattern_as_static, state_pattern_as_static, pattern_projection_as_static
        static_execution = ks and qs and vs and not pattern_projection_as_connected and not normalize_hopfield_space \
            and not normalize_hopfield_space_affine and disable_out_projection
        if normalize_hopfield_space_affine and not normalize_hopfield_space:
            raise ValueError("normalize_hopfield_space_affine: got True with normalize_hopfield_space=False; expected normalize_hopfield_space=True")
        embed, kdim, vdim = input_size, stored_pattern_size, pattern_projection_size
        if static_execution:
            embed = kdim = vdim = None
        elif embed is None:
            raise ValueError("input_size: got None; expected the size of the state patterns (only an all-static association "
                             "without output projection or Hopfield-space normalisation may leave it out)")
        kdim = embed if kdim is None else kdim
        vdim = embed if vdim is None else vdim
        if pattern_projection_as_connected and kdim != vdim:
            raise ValueError(f"pattern_projection_size: got {vdim} with stored pattern size {kdim} and pattern_projection_as_connected=True; expected them equal")
        head_dim = pattern_dim = None
        if not static_execution:
            if hidden_size is None:
                if embed % H:
                    raise ValueError(f"num_heads: got {H}; expected a divisor of input_size = {embed} (or give hidden_size, the size per head)")
                head_dim = embed // H
            else:
                head_dim = hidden_size
            pattern_dim = head_dim if pattern_size is None else pattern_size
            if pattern_projection_as_connected and pattern_dim != head_dim:
                raise ValueError(f"pattern_size: got {pattern_dim} with hidden_size {head_dim} and pattern_projection_as_connected=True; expected them equal")
        else:
            pattern_dim = pattern_size
        out_dim = embed if output_size is None else output_size
        if normalize_hopfield_space_affine and head_dim is None:
            raise ValueError("hidden_size: got None; expected the per-head size for the affine Hopfield-space normalisation")
        self.association_core = _AssociationCore(
            embed, H, head_dim, pattern_dim, kdim, vdim, out_dim, input_bias, ks, qs, vs, pattern_projection_as_connected,
            disable_out_projection, normalize_hopfield_space, normalize_hopfield_space_affine,
            float(check_positive("normalize_hopfield_space_eps", normalize_hopfield_space_eps)), pattern_size is not None)
        self._static_execution = static_execution
        self._add_zero = add_zero_association
        for which, on, affine, size, eps in (
            ("stored_pattern", normalize_stored_pattern, normalize_stored_pattern_affine,
             input_size if stored_pattern_size is None else stored_pattern_size, normalize_stored_pattern_eps),
            ("state_pattern", normalize_state_pattern, normalize_state_pattern_affine, input_size, normalize_state_pattern_eps),
            ("pattern_projection", normalize_pattern_projection, normalize_pattern_projection_affine,
             input_size if pattern_projection_size is None else pattern_projection_size, normalize_pattern_projection_eps),
        ):
            norm = None
            if on:  # an affine flag without normalisation has no effect (hopfield-layers asserts instead)
                if size is None:
                    raise ValueError(f"normalize_{which}: got True without a size to normalise over; expected input_size "
                                     f"(or the {which.replace('_', ' ')} size), or normalize_{which}=False")
                norm = nn.LayerNorm(size, elementwise_affine=affine, eps=float(check_positive(f"normalize_{which}_eps", eps)))
            setattr(self, "norm_" + which, norm)
        if static_execution:
            self._scaling = 1.0 if scaling is None else scaling
        else:
            self._scaling = 1.0 / sqrt(head_dim) if scaling is None else scaling
        if isinstance(self._scaling, torch.Tensor):
            self.register_buffer("_scaling_heads", _per_head("scaling", self._scaling, H, integer=False), persistent=False)
            self._scaling = None
        else:
            self._scaling = float(check_positive("scaling", self._scaling))
            self._scaling_heads = None
        self._batch_first = batch_first
        self._update_steps_max = _per_head("update_steps_max", update_steps_max, H, integer=True)
        self._update_steps_eps = _per_head("update_steps_eps", update_steps_eps, H, integer=False)
        self._dropout = check_in_range("dropout", dropout, 0.0, 1.0, hi_open=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Projections N(0, 0.02^2), biases 0, LayerNorms scale 1 and shift 0 (hopfield-layers' initialisation)."""
        self.association_core.reset_parameters()
        for ln in (self.norm_stored_pattern, self.norm_state_pattern, self.norm_pattern_projection):
            if ln is not None:
                ln.reset_parameters()

    # -- the association ----------------------------------------------------------------------------------
    def _unpack(self, data):
        if isinstance(data, torch.Tensor):
            stored = state = proj = data
        elif isinstance(data, tuple) and len(data) == 3:
            stored, state, proj = data
        else:
            raise TypeError(f"input: got {describe(data)}; expected a tensor or a tuple (stored_pattern, state_pattern, pattern_projection)")
        layout = "(batch, length, size)" if self._batch_first else "(length, batch, size)"
        for name, t in (("stored_pattern", stored), ("state_pattern", state), ("pattern_projection", proj)):
            if not isinstance(t, torch.Tensor) or t.ndim != 3 or not t.is_floating_point():
                raise ValueError(f"{name}: got {describe(t)}; expected a floating-point tensor of shape {layout}")
        if self._batch_first:
            return stored, state, proj
        return stored.transpose(0, 1), state.transpose(0, 1), proj.transpose(0, 1)

    def _check_sizes(self, stored, state, proj):
        core = self.association_core
        B, S = stored.shape[0], stored.shape[1]
        if state.shape[0] != B or proj.shape[0] != B:
            raise ValueError(f"state_pattern: got batch sizes stored {B}, state {state.shape[0]}, projection {proj.shape[0]}; expected equal batch sizes")
        if proj.shape[1] != S:
            raise ValueError(f"pattern_projection: got {proj.shape[1]} patterns with {S} stored patterns; expected one projection per stored pattern")

        def want(name, t, size, what):
            if size is not None and t.shape[2] != size:
                raise ValueError(f"{name}: got last dimension {t.shape[2]}; expected {size} ({what})")

        if core.query_as_static:
            want("state_pattern", state, core.head_dim, "hidden_size: a static state pattern lives in the association space")
        else:
            want("state_pattern", state, core.embed_dim, "input_size")
        if core.key_as_static:
            want("stored_pattern", stored, core.head_dim if core.head_dim is not None else state.shape[2], "a static stored pattern lives in the association space")
        else:
            want("stored_pattern", stored, core.kdim, "stored_pattern_size, default input_size")
        if not core.value_as_static:
            want("pattern_projection", proj, core.vdim, "pattern_projection_size, default input_size")

    def _project(self, stored, state, proj):
        """Per-head (B, H, n, d) state patterns q, stored patterns k and pattern projections v."""
        core = self.association_core
        H = core.num_heads
        B = stored.shape[0]
        wq, bq, wk, bk, wv, bv = core.weights()

        def split(x, static):
            n = x.shape[1]
            if static:
                return x.unsqueeze(1).expand(B, H, n, x.shape[2])
            if x.shape[2] % H:
                raise ValueError(f"pattern_projection: got size {x.shape[2]}; expected a multiple of num_heads = {H} to split over the heads")
            return x.view(B, n, H, x.shape[2] // H).transpose(1, 2)

        q = split(state if core.query_as_static else F.linear(state, wq, bq), core.query_as_static)
        k = split(stored if core.key_as_static else F.linear(stored, wk, bk), core.key_as_static)
        v = proj
        if core.value_as_connected and not core.key_as_static:
            v = F.linear(v, wk, bk)
        if not core.value_as_static:
            v = split(F.linear(v, wv, bv), False)
        else:  # a static projection: the same for every head, unless it passed the stored map or the keys are static
            v = split(v, not (core.value_as_connected or core.key_as_static))
        if core.normalize_pattern:
            d = q.shape[-1]
            q = F.layer_norm(q, (d,), core.p_norm_weight, core.p_norm_bias, core.normalize_pattern_eps)
            k = F.layer_norm(k, (d,), core.p_norm_weight, core.p_norm_bias, core.normalize_pattern_eps)
        if self._add_zero:
            k = torch.cat([k, k.new_zeros(k.shape[:2] + (1, k.shape[3]))], dim=2)
            v = torch.cat([v, v.new_zeros(v.shape[:2] + (1, v.shape[3]))], dim=2)
        return q, k, v

    def _masks(self, stored_pattern_padding_mask, association_mask, B, H, L, S, dtype):
        def as_mask(name, m):
            if m is None:
                return None
            if not isinstance(m, torch.Tensor):
                raise TypeError(f"{name}: got {describe(m)}; expected a bool, uint8 or float tensor")
            if m.dtype == torch.uint8:
                return m.to(torch.bool)
            return m

        kpm = as_mask("stored_pattern_padding_mask", stored_pattern_padding_mask)
        am = as_mask("association_mask", association_mask)
        if kpm is None and am is None:
            return None
        try:
            mask = merge_masks(kpm, am, B, H, L, S, False, dtype)
        except ValueError as e:
            msg = str(e).replace("key_padding_mask", "stored_pattern_padding_mask").replace("attn_mask", "association_mask")
            raise ValueError(msg) from None
        if self._add_zero:  # the appended zero pattern is never masked
            pad = torch.zeros(mask.shape[:-1] + (1,), dtype=mask.dtype, device=mask.device)
            mask = torch.cat([mask.expand(mask.shape[:-1] + (S,)), pad], dim=-1)
        return mask

    def _associate(self, data, stored_pattern_padding_mask=None, association_mask=None, *,
                   need_weights=False, need_projection=False):
        stored, state, proj = self._unpack(data)
        self._check_sizes(stored, state, proj)
        if self.norm_stored_pattern is not None:
            stored = self.norm_stored_pattern(stored)
        if self.norm_state_pattern is not None:
            state = self.norm_state_pattern(state)
        if self.norm_pattern_projection is not None:
            proj = self.norm_pattern_projection(proj)
        q, k, v = self._project(stored, state, proj)
        B, H, L = q.shape[0], q.shape[1], q.shape[2]
        mask = self._masks(stored_pattern_padding_mask, association_mask, B, H, L, stored.shape[1], q.dtype)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        beta = self._scaling if self._scaling_heads is None else self._scaling_heads.to(q.dtype).view(H, 1, 1)
        p = self._dropout if self.training else 0.0
        steps_max = self._update_steps_max
        if steps_max is not None and not isinstance(steps_max, torch.Tensor) and steps_max == 0:
            r = AF._retrieve(q, k, v, beta, mask, 1, None, 1, p, need_weights, False)
            out, w = r.retrieved, r.weights
        else:
            w = self._iterate(q, k, beta, mask)
            wd = F.dropout(w, p) if p > 0 else w
            out = torch.matmul(wd.to(v.dtype), v)
        out = out.transpose(1, 2).reshape(B, L, -1)
        if self.association_core.out_proj is not None:
            out = self.association_core.out_proj(out)
        return out, w, (v if need_projection else None)

    def _iterate(self, q, k, beta, mask):
        """Association matrices after the per-head update loop: each head updates its state
        ``xi <- softmax(beta xi k^T + m) k`` until ``update_steps_max`` updates, or until the change of its
        association matrix (Frobenius norm over queries and stored patterns, maximum over the batch) is at
        most ``update_steps_eps``."""
        H = q.shape[1]
        dev = q.device
        limit = self._update_steps_max
        if limit is None:
            limit = torch.full((H,), -1, dtype=torch.long)
        elif not isinstance(limit, torch.Tensor):
            limit = torch.full((H,), int(limit), dtype=torch.long)
        limit = limit.to("cpu", torch.long)
        eps = self._update_steps_eps  # compared in the patterns' dtype, as hopfield-layers compares
        eps = eps.to("cpu", q.dtype) if isinstance(eps, torch.Tensor) else torch.full((H,), float(eps), dtype=q.dtype)
        r = AF._retrieve(q, k, None, beta, mask, 1, None, 1, 0.0, True, False)
        w, state = r.weights, r.retrieved
        active = (limit > 0) | (limit < 0)
        step = 0
        while bool(active.any()):
            step += 1
            r = AF._retrieve(state, k, None, beta, mask, 1, None, 1, 0.0, True, False)
            change = (r.weights - w).detach().flatten(2).norm(dim=2).amax(0).to("cpu")
            keep = active.to(dev).view(1, H, 1, 1)
            w = torch.where(keep, r.weights, w)
            state = torch.where(keep, r.retrieved, state)
            active = active & ((step < limit) | (limit < 0)) & (change > eps)
        return w

    def forward(self, input, stored_pattern_padding_mask=None, association_mask=None) -> torch.Tensor:
        """Associate ``input``: one tensor used as stored pattern, state pattern and pattern projection,
        or a tuple ``(stored_pattern, state_pattern, pattern_projection)``; each (B, length, size) with
        ``batch_first`` (else (length, B, size)). Returns (B, L, output_size), laid out like the input."""
        out = self._associate(input, stored_pattern_padding_mask, association_mask)[0]
        if not self._batch_first:
            out = out.transpose(0, 1)
        if self.association_activation is not None:
            out = self.association_activation(out)
        return out

    def get_association_matrix(self, input, stored_pattern_padding_mask=None, association_mask=None) -> torch.Tensor:
        """The association (softmax) matrices the read-out uses, (B, num_heads, L, S), without gradient."""
        with torch.no_grad():
            return self._associate(input, stored_pattern_padding_mask, association_mask, need_weights=True)[1]

    def get_projected_pattern_matrix(self, input, stored_pattern_padding_mask=None, association_mask=None) -> torch.Tensor:
        """The projected pattern projections (values) per head, (B, num_heads, S, pattern size), without gradient."""
        with torch.no_grad():
            return self._associate(input, stored_pattern_padding_mask, association_mask, need_projection=True)[2]

    def extra_repr(self) -> str:
        core = self.association_core
        s = self._scaling_heads.tolist() if self._scaling_heads is not None else f"{self._scaling:.4g}"
        return (f"input_size={core.embed_dim}, hidden_size={core.head_dim} (per head), num_heads={core.num_heads}, "
                f"scaling={s}, update_steps_max={self.update_steps_max}, batch_first={self._batch_first}")

    # -- hopfield-layers' read-only properties -------------------------------------------------------------
    @property
    def batch_first(self) -> bool:
        return self._batch_first

    @property
    def scaling(self):
        return self._scaling_heads.clone() if self._scaling_heads is not None else self._scaling

    @property
    def stored_pattern_dim(self):
        return self.association_core.kdim

    @property
    def state_pattern_dim(self):
        return self.association_core.embed_dim

    @property
    def pattern_projection_dim(self):
        return self.association_core.vdim

    @property
    def input_size(self):
        return self.state_pattern_dim

    @property
    def hidden_size(self):
        return self.association_core.head_dim

    @property
    def output_size(self):
        return self.association_core.out_dim

    @property
    def pattern_size(self):
        return self.association_core.pattern_dim

    @property
    def update_steps_max(self):
        m = self._update_steps_max
        return m.clone() if isinstance(m, torch.Tensor) else m

    @property
    def update_steps_eps(self):
        e = self._update_steps_eps
        return e.clone() if isinstance(e, torch.Tensor) else e

    @property
    def stored_pattern_as_static(self) -> bool:
        return self.association_core.key_as_static

    @property
    def state_pattern_as_static(self) -> bool:
        return self.association_core.query_as_static

    @property
    def pattern_projection_as_static(self) -> bool:
        return self.association_core.value_as_static

    @property
    def normalize_stored_pattern(self) -> bool:
        return self.norm_stored_pattern is not None

    @property
    def normalize_stored_pattern_affine(self) -> bool:
        return self.normalize_stored_pattern and self.norm_stored_pattern.elementwise_affine

    @property
    def normalize_state_pattern(self) -> bool:
        return self.norm_state_pattern is not None

    @property
    def normalize_state_pattern_affine(self) -> bool:
        return self.normalize_state_pattern and self.norm_state_pattern.elementwise_affine

    @property
    def normalize_pattern_projection(self) -> bool:
        return self.norm_pattern_projection is not None

    @property
    def normalize_pattern_projection_affine(self) -> bool:
        return self.normalize_pattern_projection and self.norm_pattern_projection.elementwise_affine

    @property
    def normalize_hopfield_space(self) -> bool:
        return self.association_core.normalize_pattern

    @property
    def normalize_hopfield_space_affine(self) -> bool:
        return self.association_core.p_norm_weight is not None


_HOPFIELD_ARGS = (
    "input_size", "hidden_size", "output_size", "pattern_size", "num_heads", "scaling", "update_steps_max",
    "update_steps_eps", "normalize_stored_pattern", "normalize_stored_pattern_affine", "normalize_state_pattern",
    "normalize_state_pattern_affine", "normalize_pattern_projection", "normalize_pattern_projection_affine",
    "normalize_hopfield_space", "normalize_hopfield_space_affine", "stored_pattern_as_static", "state_pattern_as_static",
    "pattern_projection_as_static", "pattern_projection_as_connected", "stored_pattern_size", "pattern_projection_size",
    "batch_first", "association_activation", "dropout", "input_bias", "concat_bias_pattern", "add_zero_association",
    "disable_out_projection",
)


class _Wrapper(nn.Module):
    """Shared by pooling and lookup: an inner ``hopfield`` and hopfield-layers' pass-through properties."""

    def _expand(self, w: torch.Tensor, batch: int) -> torch.Tensor:
        return w.expand((batch, self._quantity, w.shape[2]) if self.hopfield.batch_first else (self._quantity, batch, w.shape[2]))

    def _batch(self, t, name) -> int:
        if not isinstance(t, torch.Tensor) or t.ndim != 3:
            layout = "(batch, length, size)" if self.hopfield.batch_first else "(length, batch, size)"
            raise ValueError(f"{name}: got {describe(t)}; expected a tensor of shape {layout}")
        return t.shape[0 if self.hopfield.batch_first else 1]

    @property
    def quantity(self) -> int:
        return self._quantity


for _name in ("batch_first", "scaling", "stored_pattern_dim", "state_pattern_dim", "pattern_projection_dim", "input_size",
              "hidden_size", "output_size", "pattern_size", "update_steps_max", "update_steps_eps", "stored_pattern_as_static",
              "state_pattern_as_static", "pattern_projection_as_static", "normalize_stored_pattern",
              "normalize_stored_pattern_affine", "normalize_state_pattern", "normalize_state_pattern_affine",
              "normalize_pattern_projection", "normalize_pattern_projection_affine"):
    setattr(_Wrapper, _name, property(lambda self, _n=_name: getattr(self.hopfield, _n)))


class HopfieldPooling(_Wrapper):
    """hopfield-layers' ``HopfieldPooling``: ``quantity`` learned state patterns (``pooling_weights``,
    N(0, 0.02^2)) retrieve from the input set; ``forward(input)`` with ``input`` the set (stored pattern =
    pattern projection) or ``(stored_pattern, pattern_projection)`` returns (B, quantity * output_size)
    (flattened from the first axis on, as hopfield-layers does). Other arguments as :class:`Hopfield`."""

    def __init__(self, input_size, hidden_size=None, output_size=None, pattern_size=None, num_heads=1, scaling=None,
                 update_steps_max=0, update_steps_eps=1e-4,
                 normalize_stored_pattern=True, normalize_stored_pattern_affine=True, normalize_state_pattern=True,
                 normalize_state_pattern_affine=True, normalize_pattern_projection=True,
                 normalize_pattern_projection_affine=True, normalize_hopfield_space=False,
                 normalize_hopfield_space_affine=False, stored_pattern_as_static=False, state_pattern_as_static=False,
                 pattern_projection_as_static=False, pattern_projection_as_connected=False, stored_pattern_size=None,
                 pattern_projection_size=None, batch_first=True, association_activation=None, dropout=0.0,
                 input_bias=True, concat_bias_pattern=False, add_zero_association=False, disable_out_projection=False,
                 quantity=1, trainable=True):
        super().__init__()
        kw = {k: v for k, v in locals().items() if k in _HOPFIELD_ARGS}
        if input_size is None:
            raise ValueError("input_size: got None; expected the size of the pooled patterns")
        self._quantity = check_int("quantity", quantity, minimum=1)
        trainable = _bool("trainable", trainable)
        self.hopfield = Hopfield(**kw)
        size = self.hopfield.hidden_size if state_pattern_as_static else self.hopfield.input_size
        size = input_size if size is None else size
        shape = (1, self._quantity, size) if self.hopfield.batch_first else (self._quantity, 1, size)
        self.pooling_weights = nn.Parameter(torch.empty(shape), requires_grad=trainable)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The inner association as :meth:`Hopfield.reset_parameters`, pooling weights N(0, 0.02^2)."""
        self.hopfield.reset_parameters()
        nn.init.normal_(self.pooling_weights, mean=0.0, std=0.02)

    def _prepare_input(self, input):
        if isinstance(input, torch.Tensor):
            stored = proj = input
        elif isinstance(input, tuple) and len(input) == 2:
            stored, proj = input
        else:
            raise TypeError(f"input: got {describe(input)}; expected a tensor or a tuple (stored_pattern, pattern_projection)")
        return stored, self._expand(self.pooling_weights, self._batch(stored, "input")), proj

    def forward(self, input, stored_pattern_padding_mask=None, association_mask=None) -> torch.Tensor:
        return self.hopfield(self._prepare_input(input), stored_pattern_padding_mask, association_mask).flatten(start_dim=1)

    def get_association_matrix(self, input, stored_pattern_padding_mask=None, association_mask=None) -> torch.Tensor:
        """(B, num_heads, quantity, S) pooling weights over the set, without gradient."""
        return self.hopfield.get_association_matrix(self._prepare_input(input), stored_pattern_padding_mask, association_mask)

    def get_projected_pattern_matrix(self, input, stored_pattern_padding_mask=None, association_mask=None) -> torch.Tensor:
        return self.hopfield.get_projected_pattern_matrix(self._prepare_input(input), stored_pattern_padding_mask, association_mask)


class HopfieldLayer(_Wrapper):
    """hopfield-layers' ``HopfieldLayer``: the input (state pattern) looks up ``quantity`` learned stored
    patterns (``lookup_weights``, N(0, 0.02^2)); with ``lookup_weights_as_separated`` the pattern
    projections are separate ``target_weights``, frozen when ``lookup_targets_as_trainable=False``.
    Other arguments as :class:`Hopfield`."""

    def __init__(self, input_size, hidden_size=None, output_size=None, pattern_size=None, num_heads=1, scaling=None,
                 update_steps_max=0, update_steps_eps=1e-4, lookup_weights_as_separated=False,
                 lookup_targets_as_trainable=True, normalize_stored_pattern=True, normalize_stored_pattern_affine=True,
                 normalize_state_pattern=True, normalize_state_pattern_affine=True, normalize_pattern_projection=True,
                 normalize_pattern_projection_affine=True, normalize_hopfield_space=False,
                 normalize_hopfield_space_affine=False, stored_pattern_as_static=False, state_pattern_as_static=False,
                 pattern_projection_as_static=False, pattern_projection_as_connected=False, stored_pattern_size=None,
                 pattern_projection_size=None, batch_first=True, association_activation=None, dropout=0.0,
                 input_bias=True, concat_bias_pattern=False, add_zero_association=False, disable_out_projection=False,
                 quantity=1, trainable=True):
        super().__init__()
        kw = {k: v for k, v in locals().items() if k in _HOPFIELD_ARGS}
        if input_size is None:
            raise ValueError("input_size: got None; expected the size of the input (state pattern)")
        self._quantity = check_int("quantity", quantity, minimum=1)
        trainable = _bool("trainable", trainable)
        separated = _bool("lookup_weights_as_separated", lookup_weights_as_separated)
        targets_trainable = _bool("lookup_targets_as_trainable", lookup_targets_as_trainable)
        self.hopfield = Hopfield(**kw)
        size = self.hopfield.hidden_size if stored_pattern_as_static else self.hopfield.stored_pattern_dim
        size = input_size if size is None else size
        bf = self.hopfield.batch_first
        q = self._quantity
        self.lookup_weights = nn.Parameter(torch.empty((1, q, size) if bf else (q, 1, size)), requires_grad=trainable)
        if separated:
            tsize = size if pattern_projection_size is None else check_int("pattern_projection_size", pattern_projection_size, minimum=1)
            self.target_weights = nn.Parameter(torch.empty((1, q, tsize) if bf else (q, 1, tsize)), requires_grad=targets_trainable)
        else:
            self.register_parameter("target_weights", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The inner association as :meth:`Hopfield.reset_parameters`, lookup and target weights N(0, 0.02^2)."""
        self.hopfield.reset_parameters()
        nn.init.normal_(self.lookup_weights, mean=0.0, std=0.02)
        if self.target_weights is not None:
            nn.init.normal_(self.target_weights, mean=0.0, std=0.02)

    def _prepare_input(self, input):
        batch = self._batch(input, "input")
        stored = self._expand(self.lookup_weights, batch)
        proj = stored if self.target_weights is None else self._expand(self.target_weights, batch)
        return stored, input, proj

    def forward(self, input, stored_pattern_padding_mask=None, association_mask=None) -> torch.Tensor:
        return self.hopfield(self._prepare_input(input), stored_pattern_padding_mask, association_mask)

    def get_association_matrix(self, input, stored_pattern_padding_mask=None, association_mask=None) -> torch.Tensor:
        """(B, num_heads, L, quantity) lookup weights, without gradient."""
        return self.hopfield.get_association_matrix(self._prepare_input(input), stored_pattern_padding_mask, association_mask)

    def get_projected_pattern_matrix(self, input, stored_pattern_padding_mask=None, association_mask=None) -> torch.Tensor:
        return self.hopfield.get_projected_pattern_matrix(self._prepare_input(input), stored_pattern_padding_mask, association_mask)
