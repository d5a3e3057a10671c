"""What every matrix-free solver here shares: checks of a ``matvec(v, *params)`` operator and its application.

:mod:`hessjax.lanczos` and :mod:`hessjax.spectral` see an operator only through ``matvec(v, *params)``
on flat vectors ``[P]``, its parameters passed through as traced arguments. The checks run before
tracing and name the argument at fault; :func:`apply_operator` runs inside the traced solvers.
"""

from __future__ import annotations

import operator
from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["apply_operator", "as_int", "check_operator"]


def as_int(name: str, value, lo: int | None = None) -> int:
    """``value`` as a static Python int (``≥ lo`` when given), or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be a Python int, not a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}={value!r} must be a Python int (a static value, not an array)") from None
    if lo is not None and value < lo:
        raise ValueError(f"{name}={value} must be >= {lo}")
    return value


def check_operator(matvec, params) -> tuple:
    """``params`` as a tuple, after checking that ``matvec`` is callable and ``params`` a sequence."""
    if not callable(matvec):
        raise ValueError(f"matvec={matvec!r} must be callable as matvec(v, *params) -> A v")
    if not isinstance(params, (tuple, list)):
        raise ValueError(f"params must be a tuple of extra arguments to matvec, got {type(params).__name__}")
    return tuple(params)


def apply_operator(matvec: Callable, v: jax.Array, params: tuple) -> jax.Array:
    """``A v`` in the dtype of ``v``; the output shape is checked at trace time."""
    out = jnp.asarray(matvec(v, *params))
    if out.shape != v.shape:
        raise ValueError(f"matvec returned shape {out.shape} for a vector of shape {v.shape}")
    return out.astype(v.dtype)
