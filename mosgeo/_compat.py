"""The one home of the private torch API :mod:`mosgeo` relies on.

==================================================  =====================================
private API                                         used for
==================================================  =====================================
``torch.ops.prims.inductor_force_stride_order``     :func:`realize`: a per-row factor is
(registered by ``torch._inductor.inductor_prims``)  computed once per row under
                                                    :func:`torch.compile`, not once per
                                                    element
``torch.utils._python_dispatch.``                   :func:`dispatch_mode_active`: a
``is_in_torch_dispatch_mode``                       compiled kernel cannot run under a
                                                    ``TorchDispatchMode`` (fake tensors,
                                                    op counters), so the eager code runs
``torch._inductor.config.pattern_matcher``          :func:`no_pattern_passes`: the
(an option of ``torch.compile``)                    inductor options of a compiled op
                                                    that inductor's ``mm + add`` → ``addmm``
                                                    rewrite slows down
==================================================  =====================================

``tests/geometry/test_private_torch.py`` fails as soon as one of them disappears or changes shape;
without the prim :func:`realize` is the identity (correct, only slower when compiled).

The torch versions: eager mosgeo needs torch 2.4 (``pyproject.toml``), its compiled paths
:data:`COMPILE_MIN_TORCH` (:func:`require_compile` says so in a clear error; the compiled
γ kernel's ``"auto"`` selection stays eager below it).
"""

from __future__ import annotations

import functools

import torch
from torch.torch_version import TorchVersion

__all__ = [
    "COMPILE_MIN_TORCH",
    "compile_supported",
    "require_compile",
    "dispatch_mode_active",
    "no_pattern_passes",
    "realize",
]

#: The oldest torch whose :func:`torch.compile` runs mosgeo's compiled paths
#: (:mod:`mosgeo.compiled`, :mod:`mosgeo.radial`'s compiled kernel). Eager mosgeo runs on
#: torch 2.4 (its geometry tests pass there); 2.4's dynamo rejects the autograd Functions'
#: calls ("too many positional arguments"), 2.6 and 2.13 pass every compile test.
COMPILE_MIN_TORCH = "2.6"


def compile_supported() -> bool:
    """Whether this torch compiles mosgeo's ops (:data:`COMPILE_MIN_TORCH`)."""
    return _at_least(str(torch.__version__), COMPILE_MIN_TORCH)


@functools.lru_cache(maxsize=8)
def _at_least(version: str, minimum: str) -> bool:
    # parsed once: the γ kernel asks on every call
    return TorchVersion(version) >= minimum


def require_compile(what: str) -> None:
    """Raise a clear error where ``what`` would compile on a torch too old for it."""
    if not compile_supported():
        raise RuntimeError(
            f"{what} needs torch>={COMPILE_MIN_TORCH} (torch.compile of mosgeo's autograd "
            f"Functions); this is torch {torch.__version__}. The eager ops work on it."
        )


try:  # registers the prim; inductor itself imports it when it compiles
    import torch._inductor.inductor_prims  # noqa: F401

    _FORCE = torch.ops.prims.inductor_force_stride_order
except (ImportError, AttributeError):  # pragma: no cover - a torch without inductor
    _FORCE = None


def dispatch_mode_active() -> bool:
    """Whether a (non-infrastructure) ``TorchDispatchMode`` is active: :func:`torch.compile`
    refuses to run under one."""
    from torch.utils._python_dispatch import is_in_torch_dispatch_mode

    try:
        return is_in_torch_dispatch_mode(include_infra_modes=False)
    except TypeError:  # torch < 2.5: no such argument (this is not called while compiling,
        return is_in_torch_dispatch_mode()  # where the infra modes would count)


class _Realize(torch.autograd.Function):
    """The identity, as a buffer inductor must write (the prim has no autograd formula)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, stride: tuple) -> torch.Tensor:
        return _FORCE(t, stride)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def realize(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself; under :func:`torch.compile`, a buffer inductor computes on its own.

    Inductor inlines a pointwise producer into its consumer. For ``v * s(‖v‖)`` that means
    the chain of ``s`` — a series, ``atanh``, ``tan``, a few square roots — is recomputed in
    scalar code for every vector chunk of every row of ``v``, the dominant cost of a
    compiled ``logmap0`` or ``expmap0`` (benchmarks/results/core.md). Written to its own
    ``(rows, 1)`` buffer, it is computed once per row, vectorised across rows. Eager mode
    runs no op at all.
    """
    if _FORCE is None or not torch.compiler.is_compiling():
        return t
    # the contiguous strides, from the shape: torch 2.6's dynamo refuses ``t.stride()``
    # inside an autograd Function's backward, where realize is called ("Illegal getattr
    # invocation stride in strict mode"); a fresh pointwise result is contiguous anyway
    stride, step = [], 1
    for size in reversed(t.shape):
        stride.append(step)
        step = step * size
    return _Realize.apply(t, tuple(reversed(stride)))


def no_pattern_passes() -> dict[str, bool]:
    """``torch.compile`` options that switch off inductor's graph pattern passes; ``{}`` where
    the option is gone (then only slower).

    For :func:`mosgeo.math.mobius_matvec`: one of those passes rewrites ``mm(a, b) + c`` into
    ``addmm(c, a, b)``, which on a CPU first copies ``c`` into a fresh output buffer. In the
    backward ``c`` is the ``(rows, in)`` gradient of ``‖x‖²``, so the rewrite costs a pass
    that writes ``c``, a copy of it into a freshly allocated output, then the matmul; without
    it the addition is one pointwise pass written into the matmul's output (fwd+bwd at
    100k × 64, one thread, four interleaved runs: 10–13 % less time, about 5 ms).
    """
    import torch._inductor.config as config

    return {"pattern_matcher": False} if hasattr(config, "pattern_matcher") else {}
