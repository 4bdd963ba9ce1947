"""The private torch API ``mosgeo`` uses (``mosgeo._compat``) is still there and does what
the library relies on."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mosgeo import _compat


def test_the_inductor_prim_exists():
    assert _compat._FORCE is not None  # else realize() silently stops realizing
    t = torch.randn(5, 1)
    assert torch.equal(_compat._FORCE(t, t.stride()), t)


def test_realize_is_the_identity_and_costs_nothing_in_eager_mode():
    t = torch.randn(4, 1, requires_grad=True)
    assert _compat.realize(t) is t


@pytest.mark.skipif(
    not _compat.compile_supported(), reason=f"needs torch>={_compat.COMPILE_MIN_TORCH}"
)
def test_realize_under_compile_keeps_values_and_gradients():
    def f(x):
        s = _compat.realize(torch.tanh((x * x).sum(-1, keepdim=True)))
        return x * s

    x = torch.randn(33, 7, dtype=torch.float64, requires_grad=True)
    (ge,) = torch.autograd.grad(f(x).sum(), x)
    y = torch.compile(f, fullgraph=True, dynamic=True)(x)
    (gc,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, f(x))
    torch.testing.assert_close(gc, ge)


def test_dispatch_mode_active_sees_a_torch_dispatch_mode():
    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    assert not _compat.dispatch_mode_active()
    with Mode():
        assert _compat.dispatch_mode_active()


def test_the_pattern_matcher_option_exists():
    import torch._inductor.config as config

    # else no_pattern_passes() is {} and mosgeo.compiled.mobius_matvec silently slower
    assert isinstance(config.pattern_matcher, bool)
    assert _compat.no_pattern_passes() == {"pattern_matcher": False}


def test_a_torch_too_old_to_compile_gets_a_clear_error_and_auto_stays_eager(monkeypatch):
    """Below ``COMPILE_MIN_TORCH`` (torch 2.4's dynamo rejects mosgeo's autograd Functions):
    ``mosgeo.compiled`` and the compiled γ kernel raise a clear error, ``"auto"`` runs eager
    on a GPU, and the eager ops still work."""
    from torch.torch_version import TorchVersion

    import mosgeo.compiled as cmath
    from mosgeo import radial

    monkeypatch.setattr(torch, "__version__", TorchVersion("2.4.1"))
    assert not _compat.compile_supported()
    cmath._compiled.cache_clear()
    radial._forward_kernel.cache_clear()
    previous = radial.set_kernel("auto")
    try:
        with pytest.raises(RuntimeError, match=r"mosgeo.compiled.dist needs torch>=2.6"):
            cmath.dist(torch.zeros(2, 3), torch.ones(2, 3), k=-1.0)
        monkeypatch.setattr(radial, "_triton_available", lambda: True)
        monkeypatch.setattr(radial, "dispatch_mode_active", lambda: False)
        assert radial.kernel_for(torch.device("cuda")) == "eager"
        radial.set_kernel("compiled")
        q = torch.rand(3, 4)
        with pytest.raises(RuntimeError, match=r"needs torch>=2.6"):
            radial.gamma_forward(
                q[:, :1], q, torch.zeros(4), q, None, eps=1e-3, input_map="stereographic"
            )
    finally:
        radial.set_kernel(previous)
        cmath._compiled.cache_clear()
        radial._forward_kernel.cache_clear()
