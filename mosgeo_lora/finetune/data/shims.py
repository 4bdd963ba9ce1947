"""Explicit compatibility shims that make ``mathematics_dataset==1.0.1`` import and run on
current sympy, NumPy 2 and Python 3.12+, without changing what it generates.

Each shim patches only the ``mathematics_dataset`` module that needs it (global NumPy and
``random`` are untouched) and checks whether it is needed or already in place.
"""

from __future__ import annotations

import importlib
import random
from typing import Any

import numpy as np

__all__ = ["install_shims"]


class _ItemsetArray(np.ndarray):
    """ndarray with ``itemset`` back (removed in NumPy 2.0), for mathematics_dataset only."""

    def itemset(self, *args: Any) -> None:
        """``a.itemset(index, value)`` as NumPy 1 had it (flat or full index)."""
        *index, value = args
        key = index[0] if len(index) == 1 else tuple(index)
        if isinstance(key, (int, np.integer)):
            key = np.unravel_index(int(key), self.shape)  # itemset took flat indices too
        # A full index tuple stores `value` as one element, also when it is a list (object
        # arrays), which is what itemset did.
        self[tuple(key)] = value


class _NumpyCompat:
    """The ``np`` seen by ``mathematics_dataset.sample.polynomials``: NumPy plus removed names."""

    object = object  # np.object, removed in NumPy 1.24
    _mosgeo_shim = True

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def zeros(*args: Any, **kwargs: Any) -> np.ndarray:
        """``np.zeros`` as an array with ``itemset``."""
        return np.zeros(*args, **kwargs).view(_ItemsetArray)

    @staticmethod
    def empty(*args: Any, **kwargs: Any) -> np.ndarray:
        """``np.empty`` as an array with ``itemset``."""
        return np.empty(*args, **kwargs).view(_ItemsetArray)


class _RandomCompat:
    """The ``random`` seen by ``mathematics_dataset.modules.numbers``: the global ``random``
    module, but ``randint`` accepts integral floats (an error since Python 3.12)."""

    _mosgeo_shim = True

    def __getattr__(self, name: str) -> Any:
        return getattr(random, name)

    @staticmethod
    def randint(a: float, b: float) -> int:
        # int() of an integral float draws exactly what Python <= 3.11 drew for the float
        """``random.randint`` that accepts integral floats, as Python ≤ 3.11 did."""
        return random.randint(
            *(int(x) if isinstance(x, float) and x.is_integer() else x for x in (a, b))
        )


def _shim_sympy_diophantine() -> None:
    """``base_solution_linear`` moved into ``sympy.solvers.diophantine.diophantine`` (sympy
    1.6); mathematics_dataset imports it from the package, so re-export it there."""
    package = importlib.import_module("sympy.solvers.diophantine")
    if not hasattr(package, "base_solution_linear"):
        inner = importlib.import_module("sympy.solvers.diophantine.diophantine")
        package.base_solution_linear = inner.base_solution_linear


def _shim_numpy_polynomials() -> None:
    """``sample/polynomials.py`` uses ``np.object`` and ``ndarray.itemset``, both gone in
    NumPy 2: give that one module a NumPy view that has them (global NumPy is untouched)."""
    polynomials = importlib.import_module("mathematics_dataset.sample.polynomials")
    if getattr(polynomials.np, "_mosgeo_shim", False):
        return
    if hasattr(np.ndarray, "itemset") and "object" in vars(np):
        return  # old NumPy: nothing to fix
    polynomials.np = _NumpyCompat()


def _shim_random_randint() -> None:
    """``numbers.round_number`` calls ``random.randint`` with floats such as ``50.0``:
    deprecated in Python 3.10, a TypeError from 3.12. Convert them for that module."""
    numbers = importlib.import_module("mathematics_dataset.modules.numbers")
    if not getattr(numbers.random, "_mosgeo_shim", False):
        numbers.random = _RandomCompat()


def install_shims() -> None:
    """Make ``mathematics_dataset`` importable and runnable on current sympy, NumPy 2 and
    Python 3.12+, without changing what it generates.

    Idempotent: each shim checks whether it is needed or already in place.
    """
    _shim_sympy_diophantine()  # first: polynomials.py fails to import without it
    _shim_numpy_polynomials()
    _shim_random_randint()
