"""The catalog of Lagrangians: a layer of neurons is defined by one scalar function L(x).

Activations are gradients, g = dL/dx (KH eq. 3); the energy (KH eq. 2) uses the Legendre term
x.g - L; the energy decrease (KH eq. 4) uses the curvature dx^T Hess(L) dx. Every function here
is batched over leading axes ((..., N) -> (...)) and written in overflow-free forms.
"""
from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import check_int, check_positive

__all__ = [
    "Lagrangian",
    "Quadratic",
    "Abs",
    "Tanh",
    "Sigmoid",
    "RectifiedPower",
    "Power",
    "Exp",
    "LogSumExp",
    "Spherical",
    "LayerNorm",
    "CATALOG",
    "from_spec",
]


def _logcosh(y: torch.Tensor) -> torch.Tensor:
    """log cosh(y) = |y| + log1p(exp(-2|y|)) - log 2, finite for every finite y."""
    a = y.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - math.log(2.0)


def _softplus(y: torch.Tensor) -> torch.Tensor:
    """log(1 + e^y) = max(y, 0) + log1p(exp(-|y|)), finite for every finite y."""
    return torch.clamp(y, min=0) + torch.log1p(torch.exp(-y.abs()))


class Lagrangian(nn.Module, abc.ABC):
    """A convex (or honestly flagged non-convex) scalar function of one layer's currents.

    Subclasses give ``value`` (L, shape (...)), ``activation`` (dL/dx, shape of x), and where they
    can, a closed-form ``legendre`` (x.g - L) and ``curvature`` (dx^T Hess dx). The generic versions
    fall back to the definitions and to autograd (``activation_autograd``, ``curvature``).
    Parameters such as ``beta`` may be floats or tensors (``nn.Parameter`` makes them learnable).
    """

    additive: bool = True  #: L(x) = sum_i G(x_i)
    convex: bool = True  #: Hessian positive semi-definite everywhere (energy descent, KH eq. 4)
    bounded: bool = False  #: activation bounded, so that the energy is bounded below (KH sec. 2)

    @abc.abstractmethod
    def value(self, x: torch.Tensor) -> torch.Tensor:
        """L(x), shape (...): every Lagrangian defines it."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """Closed form of dL/dx; the base class uses autograd (a checked fallback)."""
        return self.activation_autograd(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(x)

    def legendre(self, x: torch.Tensor) -> torch.Tensor:
        """The Legendre term x.g(x) - L(x) of the energy (KH eq. 2), shape (...)."""
        return (x * self.activation(x)).sum(-1) - self.value(x)

    def curvature(self, x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """dx^T Hess L(x) dx, shape (...), by a Jacobian-vector product of the activation."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            _, jvp = torch.autograd.functional.jvp(self.activation, (xg,), (dx.detach(),))
        return (dx * jvp).sum(-1)

    def activation_autograd(self, x: torch.Tensor) -> torch.Tensor:
        """dL/dx by autograd of ``value``; used to check the closed forms."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.value(xg).sum(), xg, create_graph=x.requires_grad)
        return g

    def extra_repr(self) -> str:
        parts = []
        for k in ("beta", "n", "gamma"):
            if hasattr(self, k):
                v = getattr(self, k)
                parts.append(f"{k}={float(v) if isinstance(v, torch.Tensor) else v}")
        return ", ".join(parts)

    #: the constructor arguments that define this Lagrangian, stored under these names by
    #: :meth:`spec` (the one place a Lagrangian's parameters are listed; banks store exactly this)
    params: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None) and "<locals>" not in cls.__qualname__:
            _STORABLE.setdefault(cls.__name__, cls)  # storable by name (the first class of a name)

    def spec(self, tensors: dict | None = None, prefix: str = "") -> dict:
        """A JSON-serialisable description ``{"name": ..., <param>: value}``, inverted by
        :func:`from_spec`. With ``tensors`` (a dict), tensor-valued parameters (learnable
        ``nn.Parameter`` s, LayerNorm's ``delta``) are put there under ``prefix.param`` and the
        description refers to them, so nothing is rounded to a float; without it they become floats
        where they are scalars."""
        d: dict = {"name": type(self).__name__}
        if tensors is not None and _STORABLE.get(type(self).__name__) is not type(self):
            raise TypeError(
                f"{prefix or 'lagrangian'}: got a {type(self).__name__}; only the Lagrangians of "
                "assocmem.lagrangians.CATALOG and module-level subclasses of Lagrangian with a unique class "
                "name can be stored in a bank"
            )
        for k in self.params:
            v = getattr(self, k)
            if isinstance(v, torch.Tensor):
                if tensors is not None:
                    key = f"{prefix}.{k}" if prefix else k
                    tensors[key] = v.detach()
                    v = {"tensor": key, "parameter": isinstance(v, nn.Parameter)}
                elif v.numel() == 1:
                    v = float(v)
                else:
                    v = v.detach().tolist()
            elif isinstance(v, bool) or v is None or isinstance(v, (int, str)):
                pass
            else:
                v = float(v)
            d[k] = v
        return d


_STORABLE: dict[str, type[Lagrangian]] = {}


class Quadratic(Lagrangian):
    """L = sum x^2 / 2; activation: identity (Model B feature layer, KH eq. 11)."""

    def value(self, x):
        return 0.5 * (x * x).sum(-1)

    def activation(self, x):
        return x

    def legendre(self, x):
        return 0.5 * (x * x).sum(-1)

    def curvature(self, x, dx):
        return (dx * dx).sum(-1)


class Abs(Lagrangian):
    """L = sum |x|; activation: sign (the binary limit of KH eq. 7, Model A and classical)."""

    bounded = True

    def value(self, x):
        return x.abs().sum(-1)

    def activation(self, x):
        return torch.sign(x)

    def legendre(self, x):
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)

    def curvature(self, x, dx):
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)


class Tanh(Lagrangian):
    """L = sum log cosh(beta x) / beta; activation: tanh(beta x). Continuous stand-in for sign."""

    bounded = True

    params = ("beta",)

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = check_positive("beta", beta)

    def value(self, x):
        return (_logcosh(self.beta * x) / self.beta).sum(-1)

    def activation(self, x):
        return torch.tanh(self.beta * x)

    def legendre(self, x):
        # y tanh y - log cosh y = log 2 - 2|y| sigmoid(-2|y|) - softplus(-2|y|), no cancellation
        a = (self.beta * x).abs()
        e = math.log(2.0) - 2.0 * a * torch.sigmoid(-2.0 * a) - _softplus(-2.0 * a)
        return (e / self.beta).sum(-1)

    def curvature(self, x, dx):
        t = torch.tanh(self.beta * x)
        return (self.beta * (1 - t * t) * dx * dx).sum(-1)


class Sigmoid(Lagrangian):
    """L = sum softplus(beta x) / beta; activation: sigmoid(beta x), rates in (0, 1)."""

    bounded = True

    params = ("beta",)

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = check_positive("beta", beta)

    def value(self, x):
        return (_softplus(self.beta * x) / self.beta).sum(-1)

    def activation(self, x):
        return torch.sigmoid(self.beta * x)

    def legendre(self, x):
        # y s(y) - softplus(y); for y > 0 rewrite as -y s(-y) - softplus(-y) (no cancellation)
        y = self.beta * x
        a = y.abs()
        neg = -a * torch.sigmoid(-a) - _softplus(-a)
        e = torch.where(y > 0, neg, y * torch.sigmoid(y) - _softplus(y))
        return (e / self.beta).sum(-1)

    def curvature(self, x, dx):
        s = torch.sigmoid(self.beta * x)
        return (self.beta * s * (1 - s) * dx * dx).sum(-1)


class RectifiedPower(Lagrangian):
    """L = sum max(x, 0)^n; activation: n max(x, 0)^(n-1). Convex for n >= 1 (Model A, KH2016)."""

    params = ("n",)

    def __init__(self, n: int = 2):
        super().__init__()
        self.n = check_int("n", n, minimum=1)

    def value(self, x):
        return torch.clamp(x, min=0).pow(self.n).sum(-1)

    def activation(self, x):
        if self.n == 1:
            return (x > 0).to(x.dtype)
        return self.n * torch.clamp(x, min=0).pow(self.n - 1)

    def curvature(self, x, dx):
        if self.n == 1:
            return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        second = (x > 0).to(x.dtype) if self.n == 2 else torch.clamp(x, min=0).pow(self.n - 2)
        return (self.n * (self.n - 1) * second * dx * dx).sum(-1)


class Power(Lagrangian):
    """L = sum x^n; activation n x^(n-1). Convex only for even n: for odd n ``convex`` is False,
    so the two-layer energy is not guaranteed to decrease (KH eq. 10 needs f' >= 0)."""

    params = ("n",)

    def __init__(self, n: int = 2):
        super().__init__()
        self.n = check_int("n", n, minimum=1)
        self.convex = self.n % 2 == 0 or self.n == 1

    def value(self, x):
        return x.pow(self.n).sum(-1)

    def activation(self, x):
        if self.n == 1:
            return torch.ones_like(x)
        return self.n * x.pow(self.n - 1)

    def curvature(self, x, dx):
        if self.n == 1:
            return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        return (self.n * (self.n - 1) * x.pow(self.n - 2) * dx * dx).sum(-1)


class Exp(Lagrangian):
    """L = sum exp(beta x) / beta; activation exp(beta x) (Model A with F = exp, Demircigil 2017).

    The exponential itself exceeds the floating-point range once beta*x > log(max float) (88.7 in
    float32, 709.8 in float64); values there are +inf, as the true value is. Use the effective
    models, which work in log space, for large arguments.
    """

    params = ("beta",)

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = check_positive("beta", beta)

    def value(self, x):
        return (torch.exp(self.beta * x) / self.beta).sum(-1)

    def activation(self, x):
        return torch.exp(self.beta * x)

    def legendre(self, x):
        e = torch.exp(self.beta * x)
        return ((x - 1.0 / self.beta) * e).sum(-1)

    def curvature(self, x, dx):
        return (self.beta * torch.exp(self.beta * x) * dx * dx).sum(-1)


class LogSumExp(Lagrangian):
    """L = logsumexp(beta x) / beta; activation softmax(beta x) (Model B memory layer, KH eq. 11-12).

    Not additive; the Hessian beta (diag p - p p^T) has a zero mode along the all-ones vector.
    """

    additive = False
    bounded = True

    params = ("beta",)

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = check_positive("beta", beta)

    def value(self, x):
        return torch.logsumexp(self.beta * x, dim=-1) / self.beta

    def activation(self, x):
        return torch.softmax(self.beta * x, dim=-1)

    def legendre(self, x):
        # x.p - lse(beta x)/beta = (1/beta) sum p log p (minus the entropy)
        logp = torch.log_softmax(self.beta * x, dim=-1)
        return (logp.exp() * logp).sum(-1) / self.beta

    def curvature(self, x, dx):
        p = torch.softmax(self.beta * x, dim=-1)
        m = (p * dx).sum(-1)
        return self.beta * ((p * dx * dx).sum(-1) - m * m)


class Spherical(Lagrangian):
    """L = ||x||; activation x / ||x||, divisive normalisation (Model C feature layer, KH eq. 17-20).

    Not additive; the Hessian (KH eq. 20) has a zero mode along x. At x = 0 the activation is
    taken as 0 (the subgradient of smallest norm).
    """

    additive = False
    bounded = True

    params = ("eps",)

    def __init__(self, eps: float = 0.0):
        super().__init__()
        self.eps = float(eps)

    def _norm(self, x):
        # scaled by the largest entry so that the sum of squares cannot overflow (|x| ~ 1e19 in float32)
        m = x.abs().amax(-1, keepdim=True)
        safe = torch.where(m > 0, m, torch.ones_like(m))
        y = x / safe
        return safe * torch.sqrt((y * y).sum(-1, keepdim=True) + self.eps / (safe * safe))

    def value(self, x):
        return self._norm(x).squeeze(-1)

    def activation(self, x):
        n = self._norm(x)
        return torch.where(n > 0, x / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(x))

    def legendre(self, x):
        n = self._norm(x).squeeze(-1)
        sq = (x * x).sum(-1)
        return torch.where(n > 0, sq / torch.where(n > 0, n, torch.ones_like(n)), n) - n

    def curvature(self, x, dx):
        n = self._norm(x).squeeze(-1)
        safe = torch.where(n > 0, n, torch.ones_like(n))
        xd = (x * dx).sum(-1)
        out = ((dx * dx).sum(-1) * n * n - xd * xd) / safe**3
        return torch.where(n > 0, out, torch.zeros_like(out))


class LayerNorm(Lagrangian):
    """L = D gamma sqrt(var(x) + eps) + delta.x; activation: layer normalisation
    gamma (x - mean) / sqrt(var + eps) + delta (as in HAMUX). Convex for gamma > 0."""

    additive = False

    params = ("gamma", "eps", "delta")

    def __init__(self, gamma: float = 1.0, eps: float = 1e-5, delta: torch.Tensor | float = 0.0):
        super().__init__()
        self.gamma = check_positive("gamma", gamma)
        self.eps = float(check_positive("eps", eps))
        self.delta = delta

    def _stats(self, x):
        c = x - x.mean(-1, keepdim=True)
        s = torch.sqrt((c * c).mean(-1, keepdim=True) + self.eps)
        return c, s

    def value(self, x):
        _, s = self._stats(x)
        d = x.shape[-1]
        lin = (x * self.delta).sum(-1) if isinstance(self.delta, torch.Tensor) else self.delta * x.sum(-1)
        return d * self.gamma * s.squeeze(-1) + lin

    def activation(self, x):
        c, s = self._stats(x)
        return self.gamma * c / s + self.delta

    def legendre(self, x):
        _, s = self._stats(x)
        return -x.shape[-1] * self.gamma * self.eps / s.squeeze(-1)

    def curvature(self, x, dx):
        c, s = self._stats(x)
        d = x.shape[-1]
        dc = dx - dx.mean(-1, keepdim=True)
        cd = (c * dc).sum(-1)
        s = s.squeeze(-1)
        return self.gamma * ((dc * dc).sum(-1) / s - cd * cd / (d * s**3))


CATALOG: dict[str, type[Lagrangian]] = {
    cls.__name__: cls
    for cls in (Quadratic, Abs, Tanh, Sigmoid, RectifiedPower, Power, Exp, LogSumExp, Spherical, LayerNorm)
}


def from_spec(spec: dict, tensors: dict | None = None) -> Lagrangian:
    """Rebuild a Lagrangian from :meth:`Lagrangian.spec` (``tensors``: the dict that ``spec`` filled,
    for parameters stored as tensors). Raises ValueError for an unknown name or parameter."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or spec["name"] not in _STORABLE:
        raise ValueError(f"lagrangian spec: got {spec!r}; expected a dict with 'name' in {sorted(_STORABLE)}")
    cls = _STORABLE[spec["name"]]
    kwargs = {}
    for k, v in spec.items():
        if k == "name":
            continue
        if k not in cls.params:
            raise ValueError(f"lagrangian spec: {cls.__name__} has no parameter {k!r}; expected some of {list(cls.params)}")
        if isinstance(v, dict) and "tensor" in v:
            if tensors is None or v["tensor"] not in tensors:
                raise ValueError(f"lagrangian spec: parameter {k!r} refers to the tensor {v['tensor']!r}, which is not given")
            t = tensors[v["tensor"]]
            v = nn.Parameter(t.clone()) if v.get("parameter") else t
        elif isinstance(v, list):
            v = torch.tensor(v)
        kwargs[k] = v
    return cls(**kwargs)


class Heaviside(Lagrangian):
    """L = sum max(x - theta, 0); activation: the Heaviside step Θ(x - theta) (Θ(0) = 0). Convex,
    bounded; the hidden layer of the threshold model (Kafraj, Krotov & Latham 2026).
    The Hessian is zero away from the kink, so ``curvature`` is 0; the Legendre term is theta·Θ(x - theta)."""

    bounded = True

    params = ("theta",)

    def __init__(self, theta: float = 0.5):
        super().__init__()
        self.theta = check_positive("theta", theta, allow_zero=True)

    def value(self, x):
        return torch.clamp(x - self.theta, min=0).sum(-1)

    def activation(self, x):
        return (x > self.theta).to(x.dtype)

    def legendre(self, x):
        return self.theta * (x > self.theta).to(x.dtype).sum(-1)

    def curvature(self, x, dx):
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)

    def extra_repr(self) -> str:
        return f"theta={float(self.theta)}"


CATALOG[Heaviside.__name__] = Heaviside
__all__.append("Heaviside")


# ---------------------------------------------------------------------------------------------------
# Sparse separation: alpha-entmax (Peters, Niculae & Martins 2019) and sparsemax (Martins &
# Astudillo 2016) as memory-layer Lagrangians L(h) = Omega*(beta h) / beta
# ---------------------------------------------------------------------------------------------------
def _entmax_threshold_sorted(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """tau with sum_j [(alpha - 1) z_j - tau]_+^(1/(alpha-1)) = 1, exactly, by sorting (alpha = 2:
    Martins & Astudillo 2016, Alg. 1; alpha = 1.5: Peters, Niculae & Martins 2019, Alg. 2).
    ``z`` is already multiplied by (alpha - 1) and shifted so that its maximum is 0."""
    zs, _ = torch.sort(z, dim=-1, descending=True)
    d = z.shape[-1]
    rho = torch.arange(1, d + 1, dtype=z.dtype, device=z.device)
    if alpha == 2.0:
        cs = zs.cumsum(-1) - 1.0
        support = (rho * zs > cs).sum(-1, keepdim=True)
        return cs.gather(-1, support - 1) / support.to(z.dtype)
    mean = zs.cumsum(-1) / rho
    mean_sq = (zs * zs).cumsum(-1) / rho
    delta = (1.0 - rho * (mean_sq - mean * mean)) / rho
    tau = mean - torch.sqrt(torch.clamp(delta, min=0.0))
    support = (tau <= zs).sum(-1, keepdim=True)
    return tau.gather(-1, support - 1)


def _entmax_threshold_bisect(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """tau for any alpha > 1 by bisection (Blondel et al. 2019; as in the ``entmax`` package):
    tau lies in [max z - 1, max z - d^(1 - alpha)] for ``z`` scaled by (alpha - 1), max z = 0."""
    d = z.shape[-1]
    inv = 1.0 / (alpha - 1.0)
    lo = torch.full(z.shape[:-1] + (1,), -1.0, dtype=z.dtype, device=z.device)
    hi = torch.full_like(lo, -(d ** (1.0 - alpha)))
    iters = 60 if z.dtype == torch.float64 else 32
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        f = torch.clamp(z - mid, min=0.0).pow(inv).sum(-1, keepdim=True) - 1.0
        hi = torch.where(f < 0, mid, hi)  # mass below 1: tau too large
        lo = torch.where(f < 0, lo, mid)
    return 0.5 * (lo + hi)


def _entmax_forward(z: torch.Tensor, alpha: float) -> torch.Tensor:
    zz = (alpha - 1.0) * z
    zz = zz - zz.amax(-1, keepdim=True)
    if alpha in (1.5, 2.0):
        tau = _entmax_threshold_sorted(zz, alpha)
    else:
        tau = _entmax_threshold_bisect(zz, alpha)
    p = torch.clamp(zz - tau, min=0.0)
    if alpha != 2.0:
        p = p.pow(1.0 / (alpha - 1.0))
    if alpha not in (1.5, 2.0):
        p = p / p.sum(-1, keepdim=True)  # bisection leaves a last-bit error in the sum
    return p


def _entmax_weights(p: torch.Tensor, alpha: float) -> torch.Tensor:
    """s with J = diag(s) - s s^T / sum(s), the Jacobian of entmax (Peters, Niculae & Martins
    2019, Prop. 2): s_j = p_j^(2 - alpha) on the support, 0 off it."""
    if alpha == 2.0:
        return (p > 0).to(p.dtype)
    return torch.where(p > 0, p.clamp(min=torch.finfo(p.dtype).tiny).pow(2.0 - alpha), torch.zeros_like(p))


def _entmax_jvp(p: torch.Tensor, alpha: float, v: torch.Tensor) -> torch.Tensor:
    s = _entmax_weights(p, alpha)
    return s * v - s * ((s * v).sum(-1, keepdim=True) / s.sum(-1, keepdim=True))


class _EntmaxFunction(torch.autograd.Function):
    """entmax(z) with its closed-form Jacobian in the backward pass (not autograd through the sort
    or the bisection loop); twice differentiable through the Jacobian formula itself."""

    @staticmethod
    def forward(ctx, z, alpha):
        p = _entmax_forward(z, alpha)
        ctx.save_for_backward(p)
        ctx.alpha = alpha
        return p

    @staticmethod
    def backward(ctx, grad):
        (p,) = ctx.saved_tensors
        return _entmax_jvp(p, ctx.alpha, grad), None


class _EntmaxValue(torch.autograd.Function):
    """Omega*(z) = max_p [p.z + H_alpha(p)], whose gradient is entmax(z) (Danskin's theorem);
    its second derivative is the closed-form Jacobian of :class:`_EntmaxFunction`."""

    @staticmethod
    def forward(ctx, z, alpha):
        p = _entmax_forward(z, alpha)
        ctx.save_for_backward(z)
        ctx.alpha = alpha
        return (p * z).sum(-1) + tsallis_entropy(p, alpha)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad.unsqueeze(-1) * _EntmaxFunction.apply(z, ctx.alpha), None


def entmax(z: torch.Tensor, alpha: float = 1.5) -> torch.Tensor:
    """alpha-entmax over the last axis: argmax over the probability simplex of p.z + H_alpha(p),
    with the Tsallis entropy H_alpha(p) = (1 - sum_j p_j^alpha) / (alpha (alpha - 1)) (Peters,
    Niculae & Martins 2019). alpha = 2 is sparsemax (Martins & Astudillo 2016); alpha -> 1 gives
    softmax. Exact (sort-based) for alpha = 1.5 and 2, bisection otherwise; the gradient uses the
    closed-form Jacobian."""
    alpha = _check_alpha(alpha)
    return _EntmaxFunction.apply(z, alpha)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 1.0:
        raise ValueError(f"alpha: got {alpha!r}; expected a finite number > 1 (alpha = 1 is softmax: use LogSumExp)")
    return float(alpha)


def tsallis_entropy(p: torch.Tensor, alpha: float) -> torch.Tensor:
    """H_alpha(p) = (1 - sum_j p_j^alpha) / (alpha (alpha - 1)), shape (...)."""
    return (1.0 - p.clamp(min=0.0).pow(alpha).sum(-1)) / (alpha * (alpha - 1.0))


class Entmax(Lagrangian):
    """L(x) = Omega*(beta x) / beta with Omega*(z) = max_{p in simplex} [p.z + H_alpha(p)] (the
    Tsallis entropy; Peters, Niculae & Martins 2019); activation alpha-entmax(beta x), a sparse
    probability vector. A memory-layer Lagrangian in the sense of KH 2021 eq. 3: convex, so the
    two-layer energy never increases (KH eq. 4); its effective Model B is
    v <- xi^T entmax(beta xi v) with energy 1/2 v.v - L(xi v) (KH eq. 13 with this L; Hu et al.
    2023, Santos et al. 2024). Legendre term -H_alpha(p)/beta; Hessian beta (diag s - s s^T / sum s),
    s = p^(2 - alpha) on the support. Not additive; alpha -> 1 is LogSumExp.

    Margin property: if beta (s_mu - max_{nu != mu} s_nu) >= 1/(alpha - 1) for the scores
    s = xi q, entmax(beta s) is exactly one-hot on mu (one update returns xi_mu exactly)."""

    additive = False
    bounded = True

    params = ("alpha", "beta")

    def __init__(self, alpha: float = 1.5, beta: float = 1.0):
        super().__init__()
        self.alpha = _check_alpha(alpha)
        self.beta = check_positive("beta", beta)

    def activation(self, x):
        return _EntmaxFunction.apply(self.beta * x, self.alpha)

    def value(self, x):
        return _EntmaxValue.apply(self.beta * x, self.alpha) / self.beta

    def legendre(self, x):
        return -tsallis_entropy(self.activation(x), self.alpha) / self.beta

    def curvature(self, x, dx):
        s = _entmax_weights(self.activation(x), self.alpha)
        m = (s * dx).sum(-1)
        return self.beta * ((s * dx * dx).sum(-1) - m * m / s.sum(-1))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={float(self.beta) if isinstance(self.beta, torch.Tensor) else self.beta}"


class Sparsemax(Entmax):
    """Entmax with alpha = 2: activation sparsemax(beta x), the Euclidean projection of beta x onto
    the probability simplex (Martins & Astudillo 2016); L(x) = Omega*(beta x) / beta with
    Omega*(z) = max_p [p.z + (1 - |p|^2) / 2]. One-step exact retrieval once
    beta (s_mu - max_{nu != mu} s_nu) >= 1."""

    params = ("beta",)

    def __init__(self, beta: float = 1.0):
        super().__init__(alpha=2.0, beta=beta)

    def extra_repr(self) -> str:
        return f"beta={float(self.beta) if isinstance(self.beta, torch.Tensor) else self.beta}"


CATALOG[Entmax.__name__] = Entmax
CATALOG[Sparsemax.__name__] = Sparsemax
__all__ += ["Entmax", "Sparsemax", "entmax", "tsallis_entropy"]
