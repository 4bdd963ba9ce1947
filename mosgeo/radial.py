r"""The per-(token, expert) scalar of a mixture of radial chart maps, and its derivatives.

A mixture-of-space expert (``mosgeo_lora``, paper eq. 5–8) maps a code ``z`` through maps
that are all *radial* (a vector times a scalar of its norm)::

    s_i = to_spacelike(project(z, κ_i), κ_i)     # input_map="stereographic" (s_i = z: "lift")
    o_i = from_spacelike(clip_spacelike(B_i s_i, κ_i), κ_i)

so ``Σ_i g_i o_i = Σ_i γ_i B_i z`` for one scalar ``γ_i`` per token and expert, a function of
``‖z‖²``, of the Gram form ``q_i = zᵀ(B_iᵀB_i)z = ‖B_i z‖²``, of ``κ_i`` and of the gate
``g_i``. :func:`adapter_scale` computes ``γ`` and its derivatives in a fixed, small number of
elementwise passes over ``(tokens, experts)`` tensors (the fused MoSELoRA layer calls
:func:`gamma_forward` / :func:`gamma_backward` inside its own autograd Function). Those
passes run eagerly, one op each, or — :func:`set_kernel` ``("compiled")`` — as two fused
kernels compiled from the same code; the default, ``"auto"``, compiles them for tensors on
a GPU (where each pass would be a kernel launch) and runs them eagerly on a CPU.

**The formula.** The inputs are taken for ``z̃ = z/μ``, ``μ > 0`` a free per-token factor
(the result does not depend on it; the layer uses the largest ``|z_j|``, so that no square of
a huge ``z`` overflows): ``w = ‖z̃‖²``, ``Q_i = z̃ᵀG_iz̃``. With ``f = 2`` (stereographic)
or ``1`` (lift) and ``e = 1 − ε`` (``ε`` the margin of ``project`` and ``clip_spacelike``):

.. code-block:: text

    n   = μ √w                          ‖z‖
    u   = n / R_κ                       R_κ: the radius of project (inverse_radius2)
    D   = max(1, u) + κR_κ² · u·min(1, u)       = max(1,u)·(1 + κy²), y = ‖project(z)‖
    A   = μ / D       (lift: A = μ)     s_i = f·A·z̃  (A = project factor × λ / 2)
    Y   = (κA)(A Q)                     = κ‖B_i s_i‖² / f²
    C   = max(e²/f², Y)                 the clip of clip_spacelike (κ > 0)
    s   = √(1 − f² min(Y, e²/f²))       from_spacelike's √(1 − κ‖u‖²) of the clipped u
    ĉ   = C^(−1/2) / (1 + s)
    γ̃_i = e·weight · g_i · A · ĉ         Σ_i γ̃_i B_i z̃ = weight · Σ_i g_i o_i

(half precision: ``ĉ`` is further multiplied by ``min(1, 1/√(−Y ĉ²))``, the ``ball_factor``
that keeps ``o_i`` strictly inside the storage dtype's ball for κ < 0). Each line is the
radial factor of the map named beside it (:func:`mosgeo.math.project_factor`,
:func:`mosgeo.charts.spacelike_scale`, :func:`~mosgeo.charts.clip_spacelike_factor`,
:func:`~mosgeo.charts.spacelike_inverse_scale`) written on ``κ‖v‖²`` instead of ``‖v‖``;
the projection radius is the same function (:func:`inverse_radius2`) in both.

**Derivatives** (``Γ = ∂L/∂γ̃ · γ̃``), in closed form:

.. code-block:: text

    d log γ̃ = d log g + ζ d log A + η (A·AQ dκ + κA·A dQ)
    η = d log ĉ / dY = −1/(2Y)  where the norm is pinned (clipped, or on the half-precision rim)
                     = f²/(2s(1 + s))  elsewhere;      ζ = 1 + 2ηY  (0 pinned, 1/s free)
    d log A = −(1/(2w)) dw − Kp dκ          projected tokens (u > 1)
            = −κμA dw − n√w·A dκ            inside the radius
    Kp = 1/(2κ) where R_κ ∝ |κ|^(−1/2), else 1/(R_κ^(−2) + κ)

so ``∂L/∂Q = Γ η κA·A``, ``∂L/∂w = Σ_i Γ ζ ∂log A/∂w``, ``∂L/∂κ = Σ_t Γ(ζ ∂log A/∂κ + η A·AQ)``
and ``∂L/∂g = ∂L/∂γ̃ · γ̃/g``. At a pinned norm the result does not depend on ``A`` (ζ = 0): a
clipped expert's output has norm ``e/√κ`` whatever the input, and its κ-gradient is that of
the clip radius (``−½ d log κ``), not 0.

**Range.** Every intermediate is a ratio or a product of bounded factors: ``A·Q`` and ``κA``
are multiplied last, so ``Y`` stays finite where ``‖B_i s_i‖²`` would overflow (tiny
negative κ, whose ball is huge); with ``μ`` the largest ``|z_j|``, ``w ≤ r`` and
``Q ≤ r‖B_i‖²``, so a token of norm ``1e20`` in float32 is exact. Two limits: ``D``
overflows where ``κR_κ² ≈ max_norm²`` (κ ≥ 1) meets ``‖z‖ ≳ 1e29/√κ`` in float32 (those
experts' ``γ̃``, some 1e-10 of the others', is then 0); and the lift input map does not
project, so it needs ``κ‖B_i z‖²`` finite in the compute dtype.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from ._compat import compile_supported, dispatch_mode_active, require_compile
from .numerics import HALF_DTYPES, compute_dtype, guards, max_norm, min_norm

Tensor = torch.Tensor

__all__ = [
    "INPUT_MAPS",
    "inverse_radius2",
    "gate_scale",
    "CurvatureTerms",
    "curvature_terms",
    "scale_forward",
    "scale_backward",
    "KERNELS",
    "set_kernel",
    "get_kernel",
    "kernel_for",
    "compiling",
    "run_kernel",
    "gamma_forward",
    "gamma_backward",
    "adapter_scale",
]

#: The input maps of an expert: ``project`` then ``to_spacelike`` (paper eq. 5), or ``z``
#: itself as the space-like coordinate (an ablation).
INPUT_MAPS = ("stereographic", "lift")


def inverse_radius2(k: Tensor, eps: float, ball: Tensor | None = None) -> Tensor:
    r"""``1/R_κ²``, ``R_κ`` the radius of :func:`mosgeo.math.project`.

    ``R_κ = (1 − eps)/√|κ|`` for κ < 0 (``|κ|`` at least ``min_norm²``, so tiny κ gives a
    finite radius), ``max_norm/max(1, √κ)`` for κ ≥ 0; ``project(x) = x/max(1, ‖x‖/R_κ)``.
    In ``k``'s dtype, with that dtype's guards.

    ``ball`` (``≥ 0``, ``k``'s shape; 0: none) adds a second projection, onto the ball of
    curvature ``−ball``: the radius is then ``min(R_κ, (1 − eps)/√ball)``, which is
    ``project(project(x, κ), −ball)``. A flat expert (κ = 0) with a ball sees its input
    clipped as a hyperbolic expert of curvature ``−ball`` does, with no curvature in its
    maps (issue 15's clipping control, ``MoSELoraConfig.flatten``)."""
    return _inverse_radius2(k, eps, ball)[0]


def _inverse_radius2(k: Tensor, eps: float, ball: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(1/R_κ², follows)``: ``follows`` where the radius follows κ, i.e. the clamp of
    ``|κ|`` (at ``min_norm²``, κ < 0) or of ``√κ`` (at 1, κ ≥ 0) is not active (at the clamp's
    edge too: the derivative autograd takes through ``clamp_min``), nor a ``ball`` smaller
    than ``R_κ`` (:func:`inverse_radius2`)."""
    # from finfo, not the guards table: constants under torch.compile (numerics.ball_eps)
    big, small = max_norm(k.dtype), min_norm(k.dtype)
    e2 = (1.0 - eps) ** 2
    neg = k < 0
    free = torch.where(neg, k * (-1.0 / e2), k * (1.0 / big**2))
    # the clamps, in k's dtype (a where of two Python floats would be the default dtype's)
    floor = torch.full_like(k, 1.0 / big**2).masked_fill_(neg, small**2 / e2)
    if ball is not None:
        floor = torch.maximum(floor, ball * (1.0 / e2))
    # clamp, not maximum: at the edge (κ = 1, a preset's initial value) the whole derivative
    # goes to κ, as ``follows`` says (maximum would split it in two)
    return torch.clamp(free, min=floor), free >= floor


def gate_scale(eps: float, weight: float = 1.0) -> float:
    """The constant ``e·weight`` (``e = 1 − eps``) of the gates of :func:`scale_forward`.

    :func:`scale_forward` expects its gates multiplied by it (a router can fold it into the
    gates for free)."""
    return (1.0 - eps) * weight


class CurvatureTerms(NamedTuple):
    """The per-expert constants of one call, shape ``(N,)``."""

    #: κ itself.
    k: Tensor
    #: ``1/R_κ`` (stereographic; ``None`` for lift).
    ir: Tensor | None
    #: ``1/R_κ²``.
    ir2: Tensor | None
    #: ``κR_κ²``.
    kr2: Tensor | None
    #: Where ``R_κ`` follows κ (its clamp is not active).
    follows: Tensor | None
    #: The second input ball they were computed with (:func:`inverse_radius2`), or ``None``.
    ball: Tensor | None = None


def curvature_terms(
    k: Tensor, eps: float, input_map: str, ball: Tensor | None = None
) -> CurvatureTerms:
    """The per-expert constants of :func:`scale_forward`.

    For curvatures ``k`` (compute dtype), the storage dtype's margin ``eps`` and the
    optional second input ball ``ball`` (:func:`inverse_radius2`; stereographic input map
    only: the lift does not project)."""
    if input_map == "lift":
        if ball is not None:
            raise ValueError(
                "an input ball needs the stereographic input map (lift does not project)"
            )
        return CurvatureTerms(k, None, None, None, None)
    ir2, follows = _inverse_radius2(k, eps, ball)
    return CurvatureTerms(k, ir2.sqrt(), ir2, k / ir2, follows, ball)


def _kp(terms: CurvatureTerms) -> Tensor:
    """``Kp = d log(ir·(1 + κR²))/dκ`` per expert: ``1/(2κ)`` where the radius follows κ,
    ``1/(ir² + κ)`` where it is clamped."""
    k = terms.k
    return torch.where(terms.follows, k + k, terms.ir2 + k).reciprocal()


def scale_forward(
    nz: Tensor | None,
    q: Tensor,
    terms: CurvatureTerms,
    gates: Tensor,
    mu: Tensor | None,
    *,
    eps: float,
    inside: bool = False,
    save: bool = True,
) -> tuple[Tensor, tuple | None]:
    r"""``γ̃`` (module docstring) and what :func:`scale_backward` needs.

    Args:
        nz: ``‖z̃‖``, shape ``(T, 1)`` (``None`` for the lift, which does not read it).
        q: ``z̃ᵀG_iz̃``, shape ``(T, N)``.
        terms: :func:`curvature_terms` of the experts' κ.
        gates: ``(T, N)``, already multiplied by :func:`gate_scale`.
        mu: the per-token factor ``μ`` (``(T, 1)``), or ``None`` for 1.
        eps: the margin of the storage dtype.
        inside: keep ``o_i`` strictly inside the ball (a half-precision storage dtype).
        save: return the saved state (else ``None``).

    Returns:
        ``(γ̃, saved)``, all in ``q``'s dtype (the compute dtype).
    """
    stereo = terms.ir is not None
    f2 = 4.0 if stereo else 1.0
    lim = (1.0 - eps) ** 2 / f2
    if stereo:
        n = nz if mu is None else nz * mu
        u = n * terms.ir
        d = torch.addcmul(u.clamp_min(1.0), u * u.clamp_max(1.0), terms.kr2)
        a = d.reciprocal() if mu is None else mu / d
    else:
        a = mu
    ka = terms.k if a is None else a * terms.k  # κA
    aq = q if a is None else a * q  # A·Q
    y = ka * aq  # κA²Q, multiplied last: no overflow for tiny κ and huge ‖z‖
    s = torch.rsub(y.clamp_max(lim), 1.0, alpha=f2).sqrt()
    s1 = s + 1.0
    c = y.clamp_min(lim).rsqrt() / s1
    if inside:  # ball_factor of from_spacelike's point: |κ|‖o‖² = −f²Y·(e/f)²ĉ²/e² ≤ 1
        x = c * c * y
        rim = x < -1.0
        c = c * (-x).clamp_min(1.0).rsqrt()  # 1 where X ≤ 1
    ac = c if a is None else a * c
    gamma = gates * ac
    if not save:
        return gamma, None
    pin = y > lim
    if inside:
        pin = pin | rim
    eta = torch.where(pin, y * -2.0, s * s1 * (2.0 / f2)).reciprocal()
    zeta = s.reciprocal().masked_fill_(pin, 0.0)
    ea = eta if a is None else eta * a
    e_kq = ea * ka  # ∂log γ̃/∂Q
    e_aq = ea * aq  # ∂log γ̃/∂κ through Y
    dw = dk = None
    if stereo:
        pr = u > 1.0
        dw = torch.where(pr, nz.pow(-2) * 0.5, ka if mu is None else ka * mu)
        dk = torch.where(pr, _kp(terms), (n * nz) * a)
    return gamma, (gamma, ac, zeta, e_kq, e_aq, dw, dk)


def scale_backward(saved: tuple, grad: Tensor) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    r"""The gradients of :func:`scale_forward`'s ``γ̃`` for ``grad = ∂L/∂γ̃``.

    Returns:
        ``(−∂L/∂(‖z̃‖²) or None (lift), ∂L/∂q, ∂L/∂κ, ∂L/∂gates)``; the first is negated
        (the caller folds the sign into its own ``addcmul``).
    """
    gamma, ac, zeta, e_kq, e_aq, dw, dk = saved
    big = grad * gamma  # Γ
    g_gates = grad * ac
    g_q = big * e_kq
    if dw is None:  # lift: A does not depend on w or κ
        return None, g_q, (big * e_aq).sum(0), g_gates
    bz = big * zeta
    g_z2_neg = (bz * dw).sum(-1, keepdim=True)
    g_k = torch.addcmul(big * e_aq, bz, dk, value=-1.0).sum(0)
    return g_z2_neg, g_q, g_k, g_gates


#: How :func:`gamma_forward` / :func:`gamma_backward` run: ``"eager"`` (one PyTorch op per
#: pass, the reference), ``"compiled"`` (each one fused kernel by :func:`torch.compile`:
#: Triton on a GPU, C++ on a CPU) or ``"auto"`` (the default: compiled for tensors on a GPU
#: where Triton is installed, eager elsewhere; a variant whose compilation fails runs eager,
#: with a warning).
KERNELS = ("auto", "eager", "compiled")
_KERNEL = [os.environ.get("MOSGEO_RADIAL_KERNEL", "auto")]
if _KERNEL[0] not in KERNELS:
    raise ValueError(f"MOSGEO_RADIAL_KERNEL must be one of {KERNELS}, got {_KERNEL[0]!r}")


def set_kernel(name: str) -> str:
    """Select how mosgeo's compiled kernels run; return the previous kernel.

    ``name`` is one of :data:`KERNELS`; the environment variable ``MOSGEO_RADIAL_KERNEL``
    sets the initial one (default ``"auto"``). It governs :func:`gamma_forward` /
    :func:`gamma_backward` and ``mosgeo_lora``'s fused adapter (its forward, backward and
    inference call, each compiled whole: ``mosgeo_lora.fused``).

    ``"compiled"`` turns γ's ~60 elementwise passes (forward, local derivatives, backward)
    into two fused kernels, and a whole adapted layer's ~130 ops into its matmuls and a few
    fused kernels: fewer kernel launches where a step is launch-bound (a GPU, short
    sequences, decoding). The first call of each variant (dtype, input map, half precision,
    decoding's single token, training or inference) compiles (seconds); the batch size does
    not recompile. Under an outer :func:`torch.compile` the eager code is traced instead, and
    fused with its neighbours.

    ``"auto"`` compiles where a launch costs more than the op it runs — tensors on a
    GPU, with Triton installed (:func:`kernel_for`) — and runs the eager code on a CPU,
    where the ops are cheap and a compiled call costs about as much in guards
    (``docs/benchmarks.md``). If compiling a variant fails there (no C compiler for Triton's
    launcher, an unsupported GPU), that variant runs eager from then on, after one
    :class:`RuntimeWarning`; ``"compiled"`` raises instead."""
    if name not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {name!r}")
    previous, _KERNEL[0] = _KERNEL[0], name
    return previous


def get_kernel() -> str:
    """The kernel :func:`set_kernel` selected."""
    return _KERNEL[0]


@functools.cache
def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


#: The device types ``"auto"`` compiles γ for: those inductor generates Triton code for
#: (a ROCm GPU is ``"cuda"`` too). Not the CPU, nor ``"meta"`` or ``"mps"``.
_TRITON_DEVICES = ("cuda", "xpu")


def kernel_for(device: torch.device) -> str:
    """What the selected kernel runs for tensors on ``device``: ``"eager"`` or ``"compiled"``.

    ``"auto"`` gives ``"compiled"`` on a GPU where Triton is installed, with a torch that
    compiles mosgeo's code (:data:`mosgeo._compat.COMPILE_MIN_TORCH`)."""
    kernel = _KERNEL[0]
    if kernel == "auto":
        gpu = device.type in _TRITON_DEVICES
        kernel = "compiled" if gpu and compile_supported() and _triton_available() else "eager"
    return kernel


@functools.cache
def _forward_kernel(eps: float, input_map: str, inside: bool, save: bool) -> Callable:
    """The compiled :func:`curvature_terms` + :func:`scale_forward` of one static variant.

    ``eps`` reaches the traced code as text, a constant: dynamo turns a float argument or
    closure value into a symbolic input, inductor still bakes its value into the kernel, and
    its on-disk cache then serves that kernel to another value (torch 2.13: the float16 margin
    in a bfloat16 call, γ off by 3 %; ``tests/geometry/test_radial.py``)."""
    require_compile('mosgeo.radial.set_kernel("compiled")')
    text = repr(float(eps))

    def forward(nz, q, k, gates, mu, ball=None):
        margin = float(text)
        terms = curvature_terms(k, margin, input_map, ball)
        return scale_forward(nz, q, terms, gates, mu, eps=margin, inside=inside, save=save)

    # not fullgraph: past dynamo's recompilation limit (8 variants of one code object) the
    # call runs the eager code instead of failing (the tests check there is no graph break)
    return torch.compile(forward, dynamic=True)


@functools.cache
def _backward_kernel() -> Callable:
    require_compile('mosgeo.radial.set_kernel("compiled")')
    return torch.compile(scale_backward, dynamic=True)


#: Variants (a kernel key and the device type) ``"auto"`` has compiled and run once
#: (``True``), or failed to compile (``False``: they run eager).
_COMPILED: dict[tuple, bool] = {}


def compiling(device: torch.device) -> bool:
    """Whether compiled kernels run for tensors on ``device``.

    They do where selected (:func:`kernel_for`), unless an outer :func:`torch.compile` is
    tracing (it fuses the eager code with its neighbours) or a ``TorchDispatchMode`` is
    active (compiled code cannot run under one). ``mosgeo_lora``'s fused adapter asks it
    too."""
    return kernel_for(device) == "compiled" and not (
        torch.compiler.is_compiling() or dispatch_mode_active()
    )


#: Held around every call of a compiled kernel: torch.compile is not thread-safe (pytorch
#: issues 118260, 136833), and threads do call one layer at once (``nn.DataParallel``, which
#: the HF Trainer uses on several GPUs without a launcher; autograd's per-device backward
#: threads). The kernels are short, and a single-threaded step never waits on it.
_LOCK = threading.RLock()


def run_kernel(key: tuple, device: torch.device, compiled: Callable, eager: Callable):
    """``compiled()``, or ``eager()`` where compiling the variant ``key`` failed.

    For a call where :func:`compiling` said yes; ``key`` is hashable (the device type is
    added). Under ``"auto"``, a first call that fails to compile warns and makes the
    variant eager (a later failure is a real error and raises, as is a failure the eager
    code shares: bad inputs); ``"compiled"`` always calls ``compiled()``. Every compiled
    call holds one lock (torch.compile is not thread-safe)."""
    if _KERNEL[0] != "auto":
        with _LOCK:
            return compiled()
    key = (*key, device.type)
    state = _COMPILED.get(key)
    if state is False:
        return eager()
    if state is True:
        with _LOCK:
            return compiled()
    try:
        with _LOCK:
            result = compiled()
    except Exception as error:  # noqa: BLE001 - any compiler failure: the eager code is exact
        result = eager()  # raises if the inputs are at fault, not the compiler
        _COMPILED[key] = False
        first = str(error).strip().splitlines()
        warnings.warn(
            f"mosgeo: compiling the kernel {key[0]!r} failed on {device.type} "
            f"({type(error).__name__}: {first[0] if first else ''}); this variant runs the "
            "eager passes (set_kernel('eager') silences this)",
            RuntimeWarning,
            stacklevel=4,
        )
        return result
    _COMPILED[key] = True
    return result


def gamma_forward(
    nz: Tensor | None,
    q: Tensor,
    k: Tensor,
    gates: Tensor,
    mu: Tensor | None,
    *,
    eps: float,
    input_map: str,
    inside: bool = False,
    save: bool = True,
    terms: CurvatureTerms | None = None,
    ball: Tensor | None = None,
) -> tuple[Tensor, tuple | None]:
    """:func:`curvature_terms` then :func:`scale_forward`, by the :func:`set_kernel` kernel.

    ``k`` is the experts' curvatures ``(N,)`` in ``q``'s dtype and ``ball`` their optional
    second input ball (:func:`inverse_radius2`); ``terms``, if given, is
    :func:`curvature_terms` of ``k`` and ``ball`` computed before (a caller that reuses it
    across calls, while κ is unchanged; the compiled kernel recomputes it inside its one
    kernel); the other arguments are :func:`scale_forward`'s."""
    if terms is not None:
        ball = terms.ball
    if compiling(q.device):
        kernel = _forward_kernel(eps, input_map, inside, save)
        one = q.shape[0] == 1  # dynamo specialises a size of 1: its own compilation
        return run_kernel(
            ("γ forward", q.dtype, one, eps, input_map, inside, save, ball is not None), q.device,
            lambda: kernel(nz, q, k, gates, mu, ball),
            lambda: _eager_forward(nz, q, k, gates, mu, eps, input_map, inside, save, terms, ball),
        )  # fmt: skip
    return _eager_forward(nz, q, k, gates, mu, eps, input_map, inside, save, terms, ball)


def _eager_forward(nz, q, k, gates, mu, eps, input_map, inside, save, terms, ball):
    if terms is None:
        terms = curvature_terms(k, eps, input_map, ball)
    return scale_forward(nz, q, terms, gates, mu, eps=eps, inside=inside, save=save)


def gamma_backward(saved: tuple, grad: Tensor) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """:func:`scale_backward`, by the :func:`set_kernel` kernel."""
    if compiling(grad.device):
        kernel = _backward_kernel()
        key = ("γ backward", grad.dtype, grad.shape[0] == 1, saved[-1] is None)
        return run_kernel(
            key, grad.device, lambda: kernel(saved, grad), lambda: scale_backward(saved, grad)
        )
    return scale_backward(saved, grad)


class _AdapterScale(torch.autograd.Function):
    """:func:`adapter_scale` with the closed-form backward of :func:`scale_backward` (not
    twice differentiable: the backward is not recorded)."""

    @staticmethod
    def forward(ctx, z2, q, k, gates, mu, input_map, eps, weight, inside):
        ctx.scale = gate_scale(eps, weight)
        nz = None if input_map == "lift" else z2.sqrt()
        gamma, saved = gamma_forward(
            nz, q, k, gates * ctx.scale, mu, eps=eps, input_map=input_map, inside=inside
        )
        ctx.save_for_backward(*(t for t in saved if t is not None))
        ctx.stereo = saved[-1] is not None
        ctx.shapes = (z2.shape, k.shape)
        return gamma

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        if not ctx.stereo:
            saved = (*saved, None, None)
        g_z2_neg, g_q, g_k, g_gates = gamma_backward(saved, grad)
        g_z2 = None
        if ctx.needs_input_grad[0]:
            g_z2 = torch.zeros(ctx.shapes[0], dtype=grad.dtype, device=grad.device)
            if g_z2_neg is not None:
                g_z2 = -g_z2_neg.sum_to_size(ctx.shapes[0])
        g_k = g_k.sum_to_size(ctx.shapes[1])
        return g_z2, g_q, g_k, g_gates * ctx.scale, None, None, None, None, None


def adapter_scale(
    z2: Tensor,
    q: Tensor,
    k: Tensor,
    gates: Tensor,
    *,
    input_map: str = "stereographic",
    eps: float | None = None,
    mu: Tensor | None = None,
    weight: float = 1.0,
) -> Tensor:
    r"""``γ̃``, with ``Σ_i γ̃_i B_i (z/μ) = weight · Σ_i g_i o_i(z)`` (module docstring).

    Args:
        z2: ``‖z/μ‖²``, shape ``(T, 1)``.
        q: ``(z/μ)ᵀ(B_iᵀB_i)(z/μ)``, shape ``(T, N)``.
        k: the experts' curvatures, shape ``(N,)``.
        gates: the gates ``g_i``, shape ``(T, N)``.
        input_map: ``"stereographic"`` (paper eq. 5) or ``"lift"``.
        eps: the margin of ``project``/``clip_spacelike`` (default: that of the inputs'
            dtype, :func:`mosgeo.numerics.default_eps`).
        mu: the per-token factor ``μ > 0`` (``(T, 1)``; default 1).
        weight: a constant factor of the result.

    Returns:
        ``γ̃`` of shape ``(T, N)``, differentiable in ``z2``, ``q``, ``k`` and ``gates`` by
        a closed-form backward. Half precision: computed in float32 with the storage dtype's
        margin, ``o_i`` kept strictly inside that dtype's ball, the result cast back.
    """
    if input_map not in INPUT_MAPS:
        raise ValueError(f"input_map must be one of {INPUT_MAPS}, got {input_map!r}")
    dtype = z2.dtype
    if eps is None or eps < 0:
        eps = guards(dtype).ball_eps
    cdt = compute_dtype(dtype)
    args = [t.to(cdt) if t is not None else None for t in (z2, q, k, gates, mu)]
    gamma = _AdapterScale.apply(*args, input_map, eps, weight, dtype in HALF_DTYPES)
    return gamma.to(dtype)
