"""Hierarchical associative memory: any number of neuron layers, each with its own Lagrangian and
time constant, joined by symmetric dense or convolutional synapses (Krotov 2021, "Hierarchical
Associative Memory", arXiv 2107.06446, section 2; Hoover et al. 2023, HAMUX). With two layers and
one synapse this is KH 2021 eq. (1)-(4):

    E = sum_l [x_l . g_l - L_l(x_l)] - sum_(u, l) g_u . xi g_l - sum_l I_l . g_l,   g_l = dL_l/dx_l
    tau_l dx_l/dt = -dE/dg_l = (sum of synaptic inputs into l) - alpha_l x_l + I_l
    dE/dt = -sum_l tau_l (dx_l/dt)^T Hess(L_l) dx_l/dt <= 0       (alpha_l = 1, convex L_l; KH eq. 4)
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .integrators import ADAPTIVE, FIXED_STEP, adaptive_advance, check_method, step_count
from .integrators import rk4_step as _generic_rk4_step
from ._validation import DivergenceError, check_finite, check_int, check_positive, check_tensor, describe
from .bank import Storable, check_config, decode_scalar, encode_scalar
from .lagrangians import Lagrangian, from_spec

__all__ = ["Network", "Layer", "Synapse", "ConvSynapse", "NetworkTrajectory"]


# ---------------------------------------------------------------------------------------------------
# the parts: layers and synapses (thin owners of parameters; the math is in Network)
# ---------------------------------------------------------------------------------------------------
def _shape_of(name: str, size) -> tuple[int, ...]:
    if isinstance(size, (tuple, list, torch.Size)):
        if len(size) == 0:
            raise ValueError(f"{name}: got an empty shape; expected a positive int or a tuple such as (C, H, W)")
        return tuple(check_int(f"{name}[{i}]", s, minimum=1) for i, s in enumerate(size))
    return (check_int(name, size, minimum=1),)


def _batched(B, shape) -> str:
    """'(B, 2, 7, 6)': a batch of states of this layer shape, for messages."""
    return "(" + ", ".join(str(n) for n in (B, *shape)) + ")"


def _pair(name: str, x, minimum: int) -> tuple[int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"{name}: got {x!r}; expected an int or a pair of ints (height, width)")
        return check_int(f"{name}[0]", x[0], minimum=minimum), check_int(f"{name}[1]", x[1], minimum=minimum)
    v = check_int(name, x, minimum=minimum)
    return v, v


class Layer(nn.Module):
    """One layer of neurons: its Lagrangian ``L`` (activation ``g = dL/dx``, KH eq. 3), its size,
    time constant ``tau`` and decay ``alpha`` (``tau dx/dt = inputs - alpha x + I``).

    ``size`` is an int (a vector of neurons) or a shape such as ``(C, H, W)`` for an image-shaped
    layer that convolutional synapses connect; the Lagrangian then acts on the flattened state
    (a softmax over the whole layer, say). ``tau`` and ``alpha`` may be floats or tensors
    (``nn.Parameter`` s are learned). Energy descent needs ``alpha = 1`` unless
    ``Hess(L) x = 0`` (the spherical Lagrangian, KH eq. 19-20), where any ``alpha >= 0`` works.
    """

    def __init__(self, lagrangian: Lagrangian, size, tau=1.0, alpha=1.0):
        super().__init__()
        if not isinstance(lagrangian, Lagrangian):
            raise TypeError(f"lagrangian: got {describe(lagrangian)}; expected an assocmem.lagrangians.Lagrangian")
        self.lagrangian = lagrangian
        self.shape = _shape_of("size", size)
        self.size = math.prod(self.shape)
        for name, value, zero in (("tau", tau, False), ("alpha", alpha, True)):
            check_positive(name, value, allow_zero=zero)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                self.register_buffer(name, value)
            else:
                setattr(self, name, value if isinstance(value, torch.Tensor) else float(value))

    def extra_repr(self) -> str:
        size = self.shape[0] if len(self.shape) == 1 else self.shape
        tau = float(self.tau) if isinstance(self.tau, torch.Tensor) else self.tau
        return f"size={size}, tau={tau:g}" + ("" if self.alpha == 1.0 else f", alpha={float(self.alpha):g}")


class Synapse(nn.Module):
    """Dense symmetric synapses between layers ``upper`` and ``lower``: ``xi`` has shape
    (size_upper, size_lower), the energy term is ``-g_upper . xi g_lower`` (KH eq. 2), the input
    into ``lower`` is ``xi^T g_upper`` and into ``upper`` ``xi g_lower`` (KH eq. 1).
    An ``nn.Parameter`` ``xi`` is kept as one (trainable); float16/bfloat16 are held in float32."""

    kind = "dense"

    def __init__(self, upper: str, lower: str, xi):
        super().__init__()
        for name, v in (("upper", upper), ("lower", lower)):
            if not isinstance(v, str):
                raise TypeError(f"{name}: got {describe(v)}; expected a layer name (str)")
        if upper == lower:
            raise ValueError(f"upper, lower: got {upper!r} twice; expected two different layers")
        self.upper, self.lower = upper, lower
        t = check_tensor("xi", xi, ndim=2, expected="shape (size_upper, size_lower)")
        if isinstance(xi, nn.Parameter):
            self.xi = xi
        else:
            self.register_buffer("xi", t.float() if t.dtype in (torch.float16, torch.bfloat16) else t)

    @property
    def weight(self) -> torch.Tensor:
        return self.xi

    def extra_repr(self) -> str:
        return f"{self.upper!r} <- {self.lower!r}, xi {tuple(self.xi.shape)}"


class ConvSynapse(nn.Module):
    """Convolutional symmetric synapses (Krotov 2021, section 4) between image-shaped layers
    ``upper`` (C_u, H_u, W_u) and ``lower`` (C_l, H_l, W_l): ``kernel`` has shape (C_u, C_l, kh, kw),
    the energy term is ``-<g_upper, conv2d(g_lower, kernel)>``, the input into ``upper`` is
    ``conv2d(g_lower)`` and into ``lower`` its adjoint, the transposed convolution of ``g_upper``.
    ``(H_u, W_u)`` must be the convolution's output size for ``stride`` and ``padding``."""

    kind = "conv"

    def __init__(self, upper: str, lower: str, kernel, stride=1, padding=0):
        super().__init__()
        for name, v in (("upper", upper), ("lower", lower)):
            if not isinstance(v, str):
                raise TypeError(f"{name}: got {describe(v)}; expected a layer name (str)")
        if upper == lower:
            raise ValueError(f"upper, lower: got {upper!r} twice; expected two different layers")
        self.upper, self.lower = upper, lower
        t = check_tensor("kernel", kernel, ndim=4, expected="shape (C_upper, C_lower, kh, kw)")
        if isinstance(kernel, nn.Parameter):
            self.kernel = kernel
        else:
            self.register_buffer("kernel", t.float() if t.dtype in (torch.float16, torch.bfloat16) else t)
        self.stride = _pair("stride", stride, 1)
        self.padding = _pair("padding", padding, 0)

    @property
    def weight(self) -> torch.Tensor:
        return self.kernel

    def output_shape(self, lower_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(C_u, H_u, W_u) that the convolution gives for a lower layer of shape (C_l, H_l, W_l)."""
        k = self.kernel.shape
        hw = [(n + 2 * p - s_k) // st + 1 for n, p, s_k, st in zip(lower_shape[1:], self.padding, k[2:], self.stride)]
        return (k[0], hw[0], hw[1])

    def extra_repr(self) -> str:
        return f"{self.upper!r} <- {self.lower!r}, kernel {tuple(self.kernel.shape)}, stride={self.stride}, padding={self.padding}"


@dataclass(frozen=True)
class _Syn:
    """What the math needs to know of a synapse: the layer indices, the kind, and for a
    convolution its stride, padding and the output padding of the transposed convolution."""

    upper: int
    lower: int
    kind: str
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None
    output_padding: tuple[int, int] | None = None


@dataclass
class NetworkTrajectory:
    """A recorded integration of a :class:`Network`: ``t`` (T,), ``states`` (layer name -> (T, B, *shape)),
    ``energy`` (T, B); ``converged`` (B,) bool at the end; ``steps`` integration steps taken (intervals
    for adaptive methods); ``nfe`` derivative evaluations."""

    t: torch.Tensor
    states: dict
    energy: torch.Tensor
    converged: torch.Tensor
    steps: int
    nfe: int

    @property
    def final(self) -> dict:
        """The last recorded state of every layer, (B, *shape)."""
        return {k: v[-1] for k, v in self.states.items()}


# ---------------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------------
class Network(Storable, nn.Module):
    """Neuron layers joined by symmetric synapses, with the energy and dynamics of Krotov 2021
    (section 2; KH 2021 eq. 1-4 for two layers).

    Parameters
    ----------
    layers : dict name -> :class:`Layer` (names are identifiers; the order is kept and is the order
        in which :meth:`simulate` fills the layers missing from the initial state).
    synapses : list of :class:`Synapse` / :class:`ConvSynapse`, any graph of pairs of layers (not
        only a chain). Weights are registered as ``synapses.<i>.xi`` / ``synapses.<i>.kernel``.

    States are dicts name -> tensor of shape (B, *shape) (or (*shape)); input currents and clamp
    masks are dicts too. Every method works in the synapses' dtype and device.

    Example
    -------
    >>> import torch
    >>> from assocmem.network import Network, Layer, Synapse
    >>> from assocmem.lagrangians import Quadratic, Tanh, LogSumExp
    >>> g = torch.Generator().manual_seed(0)
    >>> net = Network(
    ...     layers={"v": Layer(Quadratic(), 16), "h1": Layer(Tanh(), 8, tau=0.5), "h2": Layer(LogSumExp(2.0), 4, tau=0.1)},
    ...     synapses=[Synapse("h1", "v", torch.randn(8, 16, generator=g) / 4), Synapse("h2", "h1", torch.randn(4, 8, generator=g))])
    >>> tr = net.simulate({"v": torch.randn(3, 16, generator=g)}, t_max=100.0, dt=0.05)
    >>> tr.states["h1"].shape[1:], bool(tr.converged.all()), bool((tr.energy.diff(dim=0) <= 1e-5).all())
    (torch.Size([3, 8]), True, True)
    """

    def __init__(self, layers: dict, synapses):
        super().__init__()
        if not isinstance(layers, dict) or not layers:
            raise TypeError(f"layers: got {describe(layers)}; expected a non-empty dict of layer name -> Layer")
        for name, layer in layers.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"layers: got the layer name {name!r}; expected a Python identifier such as 'h1'")
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{name!r}]: got {describe(layer)}; expected an assocmem.network.Layer")
        if isinstance(synapses, (Synapse, ConvSynapse)) or not isinstance(synapses, (list, tuple)) or not synapses:
            raise TypeError(f"synapses: got {describe(synapses)}; expected a non-empty list of Synapse / ConvSynapse")
        self.layers = nn.ModuleDict(layers)
        self.synapses = nn.ModuleList(synapses)
        names = tuple(layers)
        shapes = tuple(layer.shape for layer in layers.values())
        index = {n: i for i, n in enumerate(names)}
        syns, dtype, device = [], None, None
        for i, s in enumerate(synapses):
            if not isinstance(s, (Synapse, ConvSynapse)):
                raise TypeError(f"synapses[{i}]: got {describe(s)}; expected a Synapse or ConvSynapse")
            for end in (s.upper, s.lower):
                if end not in index:
                    raise ValueError(f"synapses[{i}]: connects the layer {end!r}, which is not in layers {list(names)}")
            su, sl = shapes[index[s.upper]], shapes[index[s.lower]]
            w = s.weight
            if dtype is None:
                dtype, device = w.dtype, w.device
            elif w.dtype != dtype or w.device != device:
                raise ValueError(f"synapses[{i}]: weight is {describe(w)} on {w.device}; expected {dtype} on {device} like synapses[0]")
            if isinstance(s, Synapse):
                want = (math.prod(su), math.prod(sl))
                if tuple(w.shape) != want:
                    raise ValueError(
                        f"synapses[{i}]: xi is {describe(w)}; expected shape {want} = (size of {s.upper!r}, size of {s.lower!r})"
                    )
                syns.append(_Syn(index[s.upper], index[s.lower], "dense"))
            else:
                if len(su) != 3 or len(sl) != 3:
                    raise ValueError(
                        f"synapses[{i}]: a ConvSynapse joins image-shaped layers (C, H, W); got {s.upper!r} {su} and {s.lower!r} {sl}"
                    )
                if w.shape[1] != sl[0]:
                    raise ValueError(f"synapses[{i}]: kernel is {describe(w)}; expected C_lower = {sl[0]} input channels of {s.lower!r}")
                out = s.output_shape(sl)
                if out != su:
                    raise ValueError(
                        f"synapses[{i}]: the convolution of {s.lower!r} {sl} with kernel {tuple(w.shape)}, stride {s.stride}, "
                        f"padding {s.padding} has shape {out}; expected the shape of {s.upper!r}, {su}"
                    )
                op = tuple((n + 2 * p - k) % st for n, p, k, st in zip(sl[1:], s.padding, w.shape[2:], s.stride))
                syns.append(_Syn(index[s.upper], index[s.lower], "conv", s.stride, s.padding, op))
        self._set_topology(names, shapes, syns)

    # -- structure ---------------------------------------------------------------------------------
    def _set_topology(self, names, shapes, syns) -> None:
        """The fixed structure the math reads: layer names and shapes, synapses, and for every
        layer the synapses that feed it, as (synapse index, whether the layer is the upper end,
        index of the other layer)."""
        self._names = tuple(names)
        self._index = {n: i for i, n in enumerate(self._names)}
        self._shapes_ = tuple(tuple(s) for s in shapes)
        self._ndims = tuple(len(s) for s in self._shapes_)
        self._syns = tuple(syns)
        feeds = [[] for _ in self._names]
        for k, s in enumerate(self._syns):
            feeds[s.lower].append((k, False, s.upper))
            feeds[s.upper].append((k, True, s.lower))
        self._feeds = tuple(tuple(f) for f in feeds)
        self._dense_in = tuple(all(self._syns[k].kind == "dense" for k, _, _ in f) and self._ndims[i] == 1
                               for i, f in enumerate(self._feeds))

    @property
    def _shapes(self) -> tuple[tuple[int, ...], ...]:
        return self._shapes_

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self._names

    def _layer_labels(self) -> tuple[str, ...]:
        return tuple(f"layer {n!r}" for n in self._names)

    def _parts(self):
        """The live parameters, in layer / synapse order: Lagrangians, tau, alpha, synapse weights,
        and the input currents the network holds itself (none for a plain Network)."""
        layers = tuple(self.layers.values())
        return (tuple(layer.lagrangian for layer in layers), tuple(layer.tau for layer in layers),
                tuple(layer.alpha for layer in layers), tuple(s.weight for s in self.synapses), (None,) * len(layers))

    @property
    def dtype(self) -> torch.dtype:
        return self._parts()[3][0].dtype

    @property
    def device(self) -> torch.device:
        return self._parts()[3][0].device

    # -- the math on tuples of states in layer order (no validation: the public methods do it) -------
    def _act(self, lag, x, nd):
        if nd == 1:
            return lag.activation(x)
        return lag.activation(x.flatten(-nd)).unflatten(-1, x.shape[-nd:])

    def _activations(self, xs, lags):
        return [self._act(lag, x, nd) for lag, x, nd in zip(lags, xs, self._ndims)]

    def _into(self, k: int, to_upper: bool, g, w, shape):
        """The synaptic input that synapse ``k`` with weight ``w`` carries from the other layer's
        activation ``g`` into its upper (``to_upper``) or lower end, of the receiving layer's ``shape``."""
        s = self._syns[k]
        if s.kind == "dense":
            nd_from = self._ndims[s.lower if to_upper else s.upper]
            if nd_from > 1:
                g = g.flatten(-nd_from)
            u = g @ w.T if to_upper else g @ w
            return u if len(shape) == 1 else u.unflatten(-1, shape)
        if to_upper:
            return F.conv2d(g, w, stride=s.stride, padding=s.padding)
        return F.conv_transpose2d(g, w, stride=s.stride, padding=s.padding, output_padding=s.output_padding)

    def _syn_energy(self, k: int, gs, w):
        """g_upper . (input from the lower layer): the interaction energy of synapse k, negated."""
        s = self._syns[k]
        gu, gl = gs[s.upper], gs[s.lower]
        if s.kind == "dense":
            nu, nl = self._ndims[s.upper], self._ndims[s.lower]
            if nu > 1:
                gu = gu.flatten(-nu)
            if nl > 1:
                gl = gl.flatten(-nl)
            return ((gu @ w) * gl).sum(-1)
        return (F.conv2d(gl, w, stride=s.stride, padding=s.padding) * gu).flatten(-3).sum(-1)

    def _inputs(self, i: int, gs, weights):
        """Sum of the synaptic inputs into layer i (None if no synapse feeds it)."""
        u = None
        for k, up, j in self._feeds[i]:
            if gs[j] is None:
                continue
            t = self._into(k, up, gs[j], weights[k], self._shapes[i])
            u = t if u is None else u + t
        return u

    def _derivs(self, xs, clamp=None, currents=None, out=None, parts=None):
        """dx_l/dt of every layer, ``(inputs - alpha x + I) / tau``. ``clamp``: per layer None or a
        bool mask (dx/dt = 0 there); ``currents``: per layer None or I (default: the network's own);
        ``out``: per layer a tensor that receives the derivative (autograd does not record it)."""
        lags, taus, alphas, weights, stored = self._parts() if parts is None else parts
        if currents is None:
            currents = stored
        gs = self._activations(xs, lags)
        res = []
        for i, x in enumerate(xs):
            tau, a, cur = taus[i], alphas[i], currents[i]
            o = None if out is None else out[i]
            feeds = self._feeds[i]
            if (self._dense_in[i] and x.ndim == 2 and not isinstance(tau, torch.Tensor) and not isinstance(a, torch.Tensor)
                    and all(gs[j].ndim == self._ndims[j] + 1 for _, _, j in feeds)):
                # one fused product per synapse: addmm(x, g, xi, beta=-alpha/tau, alpha=1/tau), then addmm_
                if feeds:
                    k, up, j = feeds[0]
                    g = gs[j] if self._ndims[j] == 1 else gs[j].flatten(1)
                    w = weights[k].T if up else weights[k]
                    d = torch.addmm(x, g, w, beta=-a / tau, alpha=1.0 / tau, out=o)
                    for k, up, j in feeds[1:]:
                        g = gs[j] if self._ndims[j] == 1 else gs[j].flatten(1)
                        d.addmm_(g, weights[k].T if up else weights[k], alpha=1.0 / tau)
                else:
                    d = torch.mul(x, -a / tau, out=o)
                if cur is not None:
                    d.add_(cur, alpha=1.0 / tau)  # d is this call's own buffer
            else:
                u = self._inputs(i, gs, weights)
                if u is None:
                    d = -x if a == 1.0 else -a * x
                elif a == 1.0:
                    d = u - x
                else:
                    d = u - a * x
                if cur is not None:
                    d = d + cur
                d = d / tau
                if o is not None:
                    d = o.copy_(d)
            c = None if clamp is None else clamp[i]
            if c is not None:
                d = d.masked_fill(c, 0.0) if o is None else d.masked_fill_(c, 0.0)
            res.append(d)
        return tuple(res)

    def _energy(self, xs, currents=None, parts=None):
        lags, _, _, weights, stored = self._parts() if parts is None else parts
        if currents is None:
            currents = stored
        gs = self._activations(xs, lags)
        e = None
        for lag, x, nd in zip(lags, xs, self._ndims):
            t = lag.legendre(x if nd == 1 else x.flatten(-nd))
            e = t if e is None else e + t
        for k in range(len(self._syns)):
            e = e - self._syn_energy(k, gs, weights[k])
        for cur, g, nd in zip(currents, gs, self._ndims):
            if cur is not None:
                e = e - (cur * g).sum(-1) if nd == 1 else e - (cur * g).flatten(-nd).sum(-1)
        return e

    def _energy_rate(self, xs, clamp=None, currents=None):
        parts = self._parts()
        lags, taus = parts[0], parts[1]
        ds = self._derivs(xs, clamp, currents, parts=parts)
        r = None
        for lag, tau, x, d, nd in zip(lags, taus, xs, ds, self._ndims):
            c = lag.curvature(x, d) if nd == 1 else lag.curvature(x.flatten(-nd), d.flatten(-nd))
            r = -tau * c if r is None else r - tau * c
        return r

    def _residuals(self, xs, currents=None):
        lags, _, alphas, weights, stored = parts = self._parts()
        if currents is None:
            currents = stored
        gs = self._activations(xs, lags)
        out = []
        for i, x in enumerate(xs):
            r = alphas[i] * x
            u = self._inputs(i, gs, weights)
            if u is not None:
                r = r - u
            if currents[i] is not None:
                r = r - currents[i]
            out.append(r.abs().flatten(-self._ndims[i]).amax(-1))
        return out

    # -- public boundary: dicts of states ------------------------------------------------------------
    def _states(self, name: str, states, *, required=True, batch=None):
        """``states`` (dict name -> tensor) as a list in layer order (None for absent layers when not
        ``required``), in the network's dtype and device, each (*shape) or (B, *shape)."""
        if not isinstance(states, dict):
            raise TypeError(f"{name}: got {describe(states)}; expected a dict of layer name -> tensor, layers {list(self._names)}")
        unknown = [k for k in states if k not in self._index]
        if unknown:
            raise ValueError(f"{name}: got the unknown layer(s) {unknown}; expected names among {list(self._names)}")
        dtype, device = self.dtype, self.device
        out = []
        for n, shape in zip(self._names, self._shapes):
            x = states.get(n)
            if x is None:
                if required:
                    raise ValueError(f"{name}: has no state for the layer {n!r}; expected every layer of {list(self._names)}")
                out.append(None)
                continue
            want = f"shape {shape} or {_batched('B', shape)} for the layer {n!r}"
            x = check_tensor(f"{name}[{n!r}]", x, finite=False, expected=want).to(dtype=dtype, device=device)
            if tuple(x.shape[x.ndim - len(shape):]) != shape or x.ndim not in (len(shape), len(shape) + 1):
                raise ValueError(f"{name}[{n!r}]: got {describe(x)}; expected {want}")
            out.append(x)
        # finiteness: one sum per state and one synchronisation (a sum is non-finite whenever a term
        # is); the element-wise check, which says where, runs only then
        total = None
        for x in out:
            if x is not None:
                total = x.detach().sum() if total is None else total + x.detach().sum()
        if total is not None and not math.isfinite(float(total)):
            for n, x in zip(self._names, out):
                if x is not None:
                    check_finite(f"{name}[{n!r}]", x)
        return out

    def _currents(self, input_current, B: int | None):
        """The network's own currents, overridden per layer by ``input_current`` (a dict; a value of
        None removes the layer's current), as a tuple in layer order."""
        cur = list(self._parts()[4])
        if input_current is None:
            return tuple(cur)
        if not isinstance(input_current, dict):
            raise TypeError(f"input_current: got {describe(input_current)}; expected a dict of layer name -> current")
        unknown = [k for k in input_current if k not in self._index]
        if unknown:
            raise ValueError(f"input_current: got the unknown layer(s) {unknown}; expected names among {list(self._names)}")
        for n, value in input_current.items():
            i = self._index[n]
            if value is None:
                cur[i] = None
                continue
            shape = self._shapes[i]
            t = check_tensor(f"input_current[{n!r}]", value).to(dtype=self.dtype, device=self.device)
            ok = tuple(t.shape[t.ndim - len(shape):]) == shape and t.ndim in (len(shape), len(shape) + 1)
            if ok and B is not None and t.ndim == len(shape) + 1:
                ok = t.shape[0] in (1, B)
            if not ok:
                want = f"{shape} or {_batched('B' if B is None else B, shape)}"
                raise ValueError(f"input_current[{n!r}]: got {describe(t)}; expected shape {want} for the layer {n!r}")
            cur[i] = t
        return tuple(cur)

    def _clamps(self, clamp, B: int):
        """``clamp`` (dict name -> bool mask of the layer's shape or (B, *shape)) as a tuple in layer
        order of masks expanded to (B, *shape), or None."""
        if clamp is None:
            return None
        if not isinstance(clamp, dict):
            raise TypeError(f"clamp: got {describe(clamp)}; expected a dict of layer name -> bool mask")
        unknown = [k for k in clamp if k not in self._index]
        if unknown:
            raise ValueError(f"clamp: got the unknown layer(s) {unknown}; expected names among {list(self._names)}")
        out = [None] * len(self._names)
        for n, m in clamp.items():
            if m is None:
                continue
            i = self._index[n]
            shape = self._shapes[i]
            m = check_tensor(f"clamp[{n!r}]", m, floating=False, finite=False, dtype=torch.bool).to(self.device)
            ok = tuple(m.shape[m.ndim - len(shape):]) == shape and (m.ndim == len(shape) or (m.ndim == len(shape) + 1 and m.shape[0] in (1, B)))
            if not ok:
                raise ValueError(f"clamp[{n!r}]: got {describe(m)}; expected a bool mask of shape {shape} or {_batched(B, shape)}")
            out[i] = m.expand(B, *shape)
        return tuple(out) if any(c is not None for c in out) else None

    def _prep(self, name: str, states, *, required=True):
        """``states`` as a list of batched (B, *shape) tensors in layer order (None for absent layers
        when not ``required``; unbatched ones are broadcast to the batch), the batch size, and
        whether every given state was unbatched (results then lose the batch axis)."""
        xs = self._states(name, states, required=required)
        given = [(x, nd) for x, nd in zip(xs, self._ndims) if x is not None]
        sizes = sorted({x.shape[0] for x, nd in given if x.ndim == nd + 1})
        if len(sizes) > 1:
            raise ValueError(f"{name}: layers have different batch sizes {sizes}; expected one batch size")
        single = not sizes
        B = 1 if single else sizes[0]
        out = []
        for x, nd in zip(xs, self._ndims):
            if x is not None and x.ndim == nd:
                x = x.unsqueeze(0).expand(B, *x.shape)
            out.append(x)
        return out, B, single

    def _as_dict(self, seq, single: bool = False) -> dict:
        return {n: (x[0] if single else x) for n, x in zip(self._names, seq)}

    def activations(self, states: dict) -> dict:
        """g_l = dL_l/dx_l of every layer (KH eq. 3), a dict like ``states``."""
        xs, _, single = self._prep("states", states)
        return self._as_dict(self._activations(xs, self._parts()[0]), single)

    def energy(self, states: dict, input_current: dict | None = None) -> torch.Tensor:
        """E = sum_l [x_l . g_l - L_l(x_l)] - sum_synapses g_upper . xi g_lower - sum_l I_l . g_l
        (KH eq. 2 for two layers), shape (B,) (() for unbatched states)."""
        xs, B, single = self._prep("states", states)
        e = self._energy(xs, self._currents(input_current, B))
        return e[0] if single else e

    def derivatives(self, states: dict, clamp: dict | None = None, input_current: dict | None = None) -> dict:
        """dx_l/dt = (-dE/dg_l) / tau_l = (sum of synaptic inputs - alpha_l x_l + I_l) / tau_l (KH eq. 1),
        a dict like ``states``. Clamped neurons (mask True) have dx/dt = 0."""
        xs, B, single = self._prep("states", states)
        return self._as_dict(self._derivs(xs, self._clamps(clamp, B), self._currents(input_current, B)), single)

    def energy_rate(self, states: dict, clamp: dict | None = None, input_current: dict | None = None) -> torch.Tensor:
        """dE/dt = -sum_l tau_l (dx_l/dt)^T Hess(L_l) dx_l/dt (KH eq. 4 term by term), shape (B,);
        <= 0 for convex Lagrangians with alpha = 1."""
        xs, B, single = self._prep("states", states)
        r = self._energy_rate(xs, self._clamps(clamp, B), self._currents(input_current, B))
        return r[0] if single else r

    def fixed_point_residual(self, states: dict, input_current: dict | None = None) -> dict:
        """Per layer and batch element, max |alpha_l x_l - inputs_l - I_l| (zero at a fixed point)."""
        xs, B, single = self._prep("states", states)
        return self._as_dict(self._residuals(xs, self._currents(input_current, B)), single)

    def effective_energy(self, states: dict, integrate_out: str, input_current: dict | None = None) -> torch.Tensor:
        """The energy of the other layers once layer ``integrate_out`` is integrated out (KH 2021
        section 3, there for the memory layer of two, applied to one layer of the hierarchy).

        When that layer is much faster than its neighbours (tau -> 0) its state follows its input,
        ``x_k = u_k + I_k`` with ``u_k`` the sum of its synaptic inputs; substituted into E, its
        Legendre term, its synapses and its current collapse to ``-L_k(u_k + I_k)``:

            E_eff = sum_(l != k) [x_l . g_l - L_l(x_l)] - (synapses not touching k) - sum_(l != k) I_l . g_l - L_k(u_k + I_k)

        and the other layers follow ``tau_l dx_l/dt = -dE_eff/dg_l`` (for the top layer of a chain
        with dense synapses, ``u_k = xi g_below``: the ``-L_top(xi g)`` of KH eq. 8 and 13).
        Needs ``alpha = 1`` for layer k. ``states`` needs every other layer (a state of layer k is
        ignored). Shape (B,)."""
        if not isinstance(integrate_out, str) or integrate_out not in self._index:
            raise ValueError(f"integrate_out: got {integrate_out!r}; expected one of the layers {list(self._names)}")
        if not isinstance(states, dict):
            raise TypeError(f"states: got {describe(states)}; expected a dict of layer name -> tensor")
        k = self._index[integrate_out]
        lags, _, alphas, weights, _ = self._parts()
        if isinstance(alphas[k], torch.Tensor) or alphas[k] != 1.0:
            raise ValueError(
                f"integrate_out: the layer {integrate_out!r} has alpha = {float(alphas[k]):g}; expected alpha = 1 "
                "(its steady state is then its input)"
            )
        xs, B, single = self._prep("states", {n: x for n, x in states.items() if n != integrate_out}, required=False)
        missing = [n for n, x in zip(self._names, xs) if x is None and n != integrate_out]
        if missing:
            raise ValueError(f"states: has no state for the layer(s) {missing}; expected every layer but {integrate_out!r}")
        currents = self._currents(input_current, B)
        gs = [None if x is None else self._act(lag, x, nd) for lag, x, nd in zip(lags, xs, self._ndims)]
        ref = xs[1 if k == 0 else 0]
        e = torch.zeros(B, dtype=ref.dtype, device=ref.device)
        for i, (lag, x, nd) in enumerate(zip(lags, xs, self._ndims)):
            if i != k:
                e = e + lag.legendre(x if nd == 1 else x.flatten(-nd))
        for j, s in enumerate(self._syns):
            if k not in (s.upper, s.lower):
                e = e - self._syn_energy(j, gs, weights[j])
        for i, (cur, g, nd) in enumerate(zip(currents, gs, self._ndims)):
            if cur is not None and i != k:
                e = e - (cur * g).flatten(1).sum(-1)
        u = self._inputs(k, gs, weights)
        if u is None:
            u = torch.zeros((B,) + self._shapes[k], dtype=ref.dtype, device=ref.device)
        if currents[k] is not None:
            u = u + currents[k]
        e = e - lags[k].value(u if self._ndims[k] == 1 else u.flatten(1))
        return e[0] if single else e

    # -- integration -----------------------------------------------------------------------------------
    def _fill(self, xs, currents, B):
        """Layers absent from the initial state start at their steady state given the layers set
        before them (in the order of ``layers``): x_k = (inputs + I_k) / alpha_k, a feed-forward
        pass (KH eq. 5 for the memory layer of two)."""
        lags, _, alphas, weights, _ = self._parts()
        xs = list(xs)
        gs = [None if x is None else self._act(lag, x, nd) for lag, x, nd in zip(lags, xs, self._ndims)]
        ref = next(x for x in xs if x is not None)
        for i, x in enumerate(xs):
            if x is not None:
                continue
            u = self._inputs(i, gs, weights)
            if u is None:
                u = torch.zeros((B,) + self._shapes[i], dtype=ref.dtype, device=ref.device)
            if currents[i] is not None:
                u = u + currents[i]
            a = alphas[i]
            if isinstance(a, torch.Tensor) or a not in (0.0, 1.0):  # alpha = 0 (no decay): start at the input
                u = u / a
            xs[i] = u
            gs[i] = self._act(lags[i], u, self._ndims[i])
        return xs

    def simulate(
        self,
        states0: dict,
        t_max: float = 10.0,
        method: str = "rk4",
        dt: float | None = None,
        tol: float | None = None,
        record_every: int = 1,
        clamp: dict | None = None,
        input_current: dict | None = None,
        rtol: float = 1e-7,
        atol: float = 1e-9,
    ) -> NetworkTrajectory:
        """Integrate the dynamics from ``states0`` until ``t_max`` or convergence.

        ``states0``: dict name -> (B, *shape) or (*shape); layers left out start at their steady
        state given the layers before them in ``layers`` (a feed-forward pass). Fixed-step methods
        (``euler``, ``rk4``) take steps of ``dt`` (default min tau / 10); adaptive ones
        (torchdiffeq's ``dopri5`` & co.) run with ``rtol``/``atol`` and check convergence every ``dt``.
        At most :data:`assocmem.integrators.MAX_STEPS` steps: a larger ``t_max / dt`` raises
        ValueError. A batch row has converged once max |dx/dt| < ``tol`` over every layer (default
        1e-6 in float64, 1e-3 below); integration stops when every row has.
        ``clamp``: dict name -> bool mask (shape or (B, *shape)) of neurons held at their initial
        value; ``input_current``: dict name -> I_l, added to the network's own currents.
        A non-finite state raises :class:`~assocmem.DivergenceError` naming the step and the layer.
        """
        method = check_method(method)
        t_max = float(check_positive("t_max", t_max))
        if isinstance(states0, dict) and not any(v is not None for v in states0.values()):
            raise ValueError(f"states0: got no layer's state; expected at least one of {list(self._names)}")
        xs, B, _ = self._prep("states0", states0, required=False)
        currents = self._currents(input_current, B)
        clamps = self._clamps(clamp, B)
        xs = self._fill(xs, currents, B)
        ts, recs, es, converged, steps, nfe = self._integrate(tuple(xs), t_max, method, dt, tol, record_every, clamps, currents, rtol, atol)
        return NetworkTrajectory(
            t=ts, states={n: torch.stack(r) for n, r in zip(self._names, recs)}, energy=torch.stack(es),
            converged=converged, steps=steps, nfe=nfe,
        )

    def rk4_step(self, states: dict, dt: float, clamp: dict | None = None, input_current: dict | None = None) -> dict:
        """One classical fourth-order Runge-Kutta step of the dynamics from ``states`` (every layer,
        (B, *shape)); returns the new states. The step :meth:`simulate` takes with ``method='rk4'``."""
        dt = float(check_positive("dt", dt))
        xs, B, single = self._prep("states", states)
        clamps, currents = self._clamps(clamp, B), self._currents(input_current, B)
        return self._as_dict(self._rk4(tuple(x.contiguous() for x in xs), dt, clamps, currents), single)

    def _rk4(self, xs, dt, clamps, currents):
        if not self._flat_ok(xs, currents):
            return _generic_rk4_step(lambda s: self._derivs(s, clamps, currents), xs, dt)
        work = _rk4_work(tuple([x.shape for x in xs]), xs[0].dtype, xs[0].device)
        parts = self._parts()
        self._derivs(xs, clamps, currents, out=work.k(0), parts=parts)
        return work.split(self._rk4_flat(work.flat(xs), dt, clamps, currents, work, parts))

    def _flat_ok(self, xs, currents=()) -> bool:
        """Whether the flat-buffer RK4 step may run: nothing the step computes needs a gradient."""
        if not torch.is_grad_enabled():
            return True
        for x in xs:
            if x.requires_grad:
                return False
        for c in currents:
            if c is not None and c.requires_grad:
                return False
        return not _any_requires_grad(self)

    def _rk4_flat(self, y, dt, clamps, currents, work: "_RK4Work", parts=None):
        """RK4 on the flat state ``y`` (M,) whose stage-1 derivative is already in ``work.K[0]``;
        returns the new flat state (a new tensor)."""
        rows, Y, ys, half = work.rows, work.Y, work.ys, 0.5 * dt
        for i, c in ((1, half), (2, half), (3, dt)):
            torch.add(y, rows[i - 1], alpha=c, out=Y)
            self._derivs(ys, clamps, currents, out=work.k(i), parts=parts)
        return torch.addmv(y, work.K.T, work.weights(dt))

    def _default_dt(self) -> float:
        return min(float(t) for t in self._parts()[1]) / 10.0

    def _integrate(self, xs, t_max, method, dt, tol, record_every, clamps, currents, rtol, atol):
        """The integration loop of :meth:`simulate` on a tuple of batched states in layer order:
        returns (t, per-layer lists of recorded states, energies, converged, steps, nfe)."""
        dt = self._default_dt() if dt is None else float(check_positive("dt", dt))
        n_steps = step_count(t_max, dt)
        dtype, device = xs[0].dtype, xs[0].device
        if tol is None:
            tol = 1e-6 if dtype == torch.float64 else 1e-3
        tol = float(check_positive("tol", tol))
        record_every = check_int("record_every", record_every, minimum=1)
        B = xs[0].shape[0]
        parts = self._parts()

        def func(state):
            return self._derivs(state, clamps, currents, parts=parts)

        def energy(state):
            return self._energy(state, currents, parts=parts)

        # rk4 without autograd: the flat-buffer step; the layers are views of one flat state y
        work = None
        if method == "rk4" and self._flat_ok(xs, currents):
            work = _rk4_work(tuple([x.shape for x in xs]), dtype, device)
            xs = work.split(work.flat(xs))
        ts, recs, es = [0.0], [[x] for x in xs], [energy(xs)]
        self._check_finite(0, 0.0, xs, es[0])
        nfe, t, steps = 0, 0.0, 0
        converged = torch.zeros(B, dtype=torch.bool, device=device)
        adaptive = method in ADAPTIVE
        stepper = None if adaptive else FIXED_STEP[method]
        for k in range(1, n_steps + 1):
            k1 = func(xs) if work is None else self._derivs(xs, clamps, currents, out=work.k(0), parts=parts)
            nfe += 1
            speed = _speed(k1)
            fastest = float(speed.detach().max())  # the one synchronisation per step; NaN if anything is NaN
            if fastest < tol:
                converged = speed < tol
                break
            if not math.isfinite(fastest):
                # non-finite derivatives: the state the last step produced is checked here (the
                # same step number and time as a check right after that step would report)
                self._check_finite(steps, t, xs, None)
            step_dt = min(dt, t_max - t)
            if adaptive:
                xs, calls = adaptive_advance(func, xs, t, t + step_dt, method, rtol, atol, None)
                nfe += calls
            elif work is not None:
                xs = work.split(self._rk4_flat(xs[0]._base, step_dt, clamps, currents, work, parts))
                nfe += 3
            else:
                xs = stepper(func, xs, step_dt, k1)
                nfe += 3 if method == "rk4" else 0
            t += step_dt
            steps = k
            if k % record_every == 0 or k == n_steps:
                e = energy(xs)
                # a sum is non-finite whenever a term is: one synchronisation; the detailed check
                # (which names the layer and rows) runs only then
                total = e.sum()
                for x in xs:
                    total = total + x.sum()
                if not math.isfinite(float(total.detach())):
                    self._check_finite(k, t, xs, e)
                ts.append(t)
                for r, x in zip(recs, xs):
                    r.append(x)
                es.append(e)
        else:
            converged = _speed(func(xs)) < tol
            nfe += 1
        if ts[-1] != t:
            ts.append(t)
            for r, x in zip(recs, xs):
                r.append(x)
            es.append(energy(xs))
        return torch.tensor(ts, dtype=dtype, device=device), recs, es, converged, steps, nfe

    def _check_finite(self, step: int, t: float, xs, e) -> None:
        for label, x in zip(self._layer_labels() + ("energy",), tuple(xs) + (e,)):
            if x is None:
                continue
            bad = ~torch.isfinite(x)
            if bool(bad.any()):
                rows = bad.reshape(bad.shape[0], -1).any(-1).nonzero().flatten().tolist()
                raise DivergenceError(
                    f"integration diverged at step {step} (t = {t:.6g}): non-finite values in the {label} "
                    f"for batch element(s) {rows[:10]}{'...' if len(rows) > 10 else ''}; "
                    "reduce dt, use an adaptive method, or check that every layer's Lagrangian is convex"
                )

    # -- memory banks ------------------------------------------------------------------------------------
    #: the bank's appendable 2-D pattern tensor: the first synapse's weight (a convolution kernel is
    #: stored as (C_upper, C_lower * kh * kw)); appending rows adds neurons to its upper layer
    _bank_patterns_key = "synapse0"

    def _bank_config(self) -> tuple[dict, dict]:
        """(JSON config, tensors) of a memory bank: every layer's Lagrangian spec, shape, tau and
        alpha, every synapse's ends and kind; tensors: every synapse weight (and tensor-valued
        parameters)."""
        tensors: dict = {}
        layers = []
        for name, layer in self.layers.items():
            layers.append({"name": name, "shape": list(layer.shape),
                           "lagrangian": layer.lagrangian.spec(tensors, f"layers.{name}.lagrangian"),
                           "tau": encode_scalar(f"layers.{name}.tau", layer.tau, tensors),
                           "alpha": encode_scalar(f"layers.{name}.alpha", layer.alpha, tensors)})
        syns = []
        for i, s in enumerate(self.synapses):
            key = f"synapse{i}"
            w = s.weight
            entry = {"kind": s.kind, "upper": s.upper, "lower": s.lower, "tensor": key, "parameter": isinstance(w, nn.Parameter)}
            if s.kind == "conv":
                entry.update(kernel_shape=list(w.shape), stride=list(s.stride), padding=list(s.padding))
                w = w.reshape(w.shape[0], -1)
            tensors[key] = w.detach()
            syns.append(entry)
        return {"layers": layers, "synapses": syns}, tensors

    @classmethod
    def _from_bank(cls, config: dict, tensors: dict) -> "Network":
        """Rebuild from :meth:`_bank_config`. Rows appended to the first synapse's weight are new
        neurons of its upper layer (a vector layer joined to the rest by that synapse only)."""
        c = check_config(config, ("layers", "synapses"))
        layer_cfg = [check_config(e, ("name", "shape", "lagrangian", "tau", "alpha")) for e in c["layers"]]
        syn_cfg = [check_config(e, ("kind", "upper", "lower", "tensor", "parameter"), ("kernel_shape", "stride", "padding"))
                   for e in c["synapses"]]
        if not syn_cfg:
            raise ValueError("the stored configuration has no synapse; expected at least one")
        first = syn_cfg[0]
        grown = tensors[cls._bank_patterns_key].shape[0]
        layers = {}
        for entry in layer_cfg:
            shape = tuple(entry["shape"])
            if entry["name"] == first["upper"] and first["kind"] == "dense" and len(shape) == 1:
                shape = (grown,)
            layers[entry["name"]] = Layer(from_spec(entry["lagrangian"], tensors), shape,
                                          tau=decode_scalar(entry["tau"], tensors), alpha=decode_scalar(entry["alpha"], tensors))
        synapses = []
        for i, entry in enumerate(syn_cfg):
            w = tensors[cls._bank_patterns_key if i == 0 else f"synapse{i}"]
            if entry["kind"] == "conv":
                ks = list(entry["kernel_shape"])
                if first is entry:
                    ks[0] = w.shape[0]
                w = w.reshape(ks)
            w = nn.Parameter(w.clone()) if entry["parameter"] else w
            if entry["kind"] == "dense":
                synapses.append(Synapse(entry["upper"], entry["lower"], w))
            elif entry["kind"] == "conv":
                synapses.append(ConvSynapse(entry["upper"], entry["lower"], w, stride=tuple(entry["stride"]),
                                            padding=tuple(entry["padding"])))
            else:
                raise ValueError(f"synapse kind {entry['kind']!r}; expected 'dense' or 'conv'")
        return cls(layers, synapses)


def _speed(ds) -> torch.Tensor:
    """max |dx/dt| over every layer, per batch row (B,)."""
    s = None
    for d in ds:
        n = (d if d.ndim == 2 else d.flatten(1)).abs().amax(-1)  # NaN propagates; 10x faster than vector_norm(inf)
        s = n if s is None else torch.maximum(s, n)
    return s


def _any_requires_grad(module: nn.Module) -> bool:
    """``any(p.requires_grad for p in module.parameters())`` without building the generator chain
    (2 us of a 30 us step)."""
    for p in module._parameters.values():
        if p is not None and p.requires_grad:
            return True
    return any(m is not None and _any_requires_grad(m) for m in module._modules.values())


#: scratch of RK4 steps up to this size (bytes) is kept per thread between calls
_KEEP_SCRATCH_BYTES = 1 << 20
_scratch = threading.local()


def _rk4_work(shapes: tuple, dtype, device) -> "_RK4Work":
    """Scratch buffers for an RK4 step on states of these shapes (a tuple of torch.Size). Building
    them is ~15 tensor calls (~15 us), as much as the step's own overhead on a small network, so
    small ones (<= 1 MiB) are kept, per thread (a step in another thread must not write into them),
    the last four shapes."""
    key = (shapes, dtype, device)
    kept = getattr(_scratch, "works", None)
    if kept is None:
        kept = _scratch.works = {}
    work = kept.get(key)
    if work is None:
        work = _RK4Work(shapes, dtype, device)
        if work.K.numel() * 5 // 4 * work.K.element_size() <= _KEEP_SCRATCH_BYTES:
            if len(kept) >= 4:
                kept.pop(next(iter(kept)))
            kept[key] = work
    return work


class _RK4Work:
    """Scratch buffers of a flat RK4 step: stage derivatives ``K`` (4, M) with per-layer views per
    stage, one stage-input buffer ``Y`` (M,) with its per-layer views, and the RK4 weights per dt
    (M: the number of elements of all layers' states together)."""

    def __init__(self, shapes: tuple, dtype, device):
        self.shapes = tuple(tuple(s) for s in shapes)
        sizes = tuple(math.prod(s) for s in self.shapes)
        self.offsets = tuple(sum(sizes[:i]) for i in range(len(sizes)))
        self.layout = tuple((s, _contiguous_strides(s), o) for s, o in zip(self.shapes, self.offsets))
        M = sum(sizes)
        self.K = torch.empty(4, M, dtype=dtype, device=device)
        self.rows = self.K.unbind(0)
        self._k = tuple(self.split(r) for r in self.rows)
        self.Y = torch.empty(M, dtype=dtype, device=device)
        self.ys = self.split(self.Y)
        self._w: dict[float, torch.Tensor] = {}

    def flat(self, xs) -> torch.Tensor:
        """The states as one flat state: the tensor they are views of when they came from
        :meth:`split` (a chain of steps), else a concatenated copy."""
        y = xs[0]._base
        if y is not None and y.ndim == 1 and y.numel() == self.Y.numel():
            p, es = y.data_ptr(), y.element_size()
            for x, o in zip(xs, self.offsets):
                if x._base is not y or x.data_ptr() != p + o * es or not x.is_contiguous():
                    break
            else:
                return y
        return torch.cat([x.reshape(-1) for x in xs])

    def k(self, i: int) -> tuple:
        return self._k[i]

    def split(self, y: torch.Tensor) -> tuple:
        """The per-layer views of a flat state (contiguous, ``_base`` y: what :meth:`flat` recognises)."""
        o = y.storage_offset()
        return tuple([y.as_strided(s, st, o + off) for s, st, off in self.layout])

    def weights(self, dt: float) -> torch.Tensor:
        w = self._w.get(dt)
        if w is None:
            if len(self._w) >= 8:
                self._w.clear()
            w = self._w[dt] = torch.tensor([dt / 6.0, dt / 3.0, dt / 3.0, dt / 6.0], dtype=self.K.dtype, device=self.K.device)
        return w


def _contiguous_strides(shape) -> tuple[int, ...]:
    st, acc = [], 1
    for n in reversed(shape):
        st.append(acc)
        acc *= n
    return tuple(reversed(st))
