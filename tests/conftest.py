"""Shared test setup: one thread (the machine has 2 cores and tests run beside other work),
hypothesis profiles, and the curvature strategies every property test draws from."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

torch.set_num_threads(1)

_COMMON = dict(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("default", max_examples=60, derandomize=False, **_COMMON)
# CI must be reproducible: the same examples on every run
settings.register_profile("ci", max_examples=60, derandomize=True, print_blob=True, **_COMMON)
# a long search for a rare failing example, by hand: HYPOTHESIS_PROFILE=soak pytest tests/geometry
settings.register_profile("soak", max_examples=1000, derandomize=False, print_blob=True, **_COMMON)
_profile = "ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "default")
settings.load_profile(_profile)

DTYPES = [torch.float32, torch.float64]

#: κ drawn from [-5, 5], with exactly 0 and tiny |κ| (< 1e-6, both signs) over-represented.
curvatures = st.one_of(
    st.just(0.0),
    st.floats(-1e-6, 1e-6, allow_nan=False),
    st.sampled_from([-1e-9, 1e-9, -1e-7, 1e-7, -1.0, 1.0]),
    st.floats(-5.0, 5.0, allow_nan=False),
)


def curvature_batch(n: int):
    """Strategy for a mixed-sign (n, 1) batch of curvatures."""
    return st.lists(curvatures, min_size=n, max_size=n)
