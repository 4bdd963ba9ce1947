"""The private torch API ``mosgeo`` uses (``mosgeo._compat``) is still there and does what
the library relies on."""

from __future__ import annotations

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
