"""The same MLP as a Flax ``linen`` module, for users who live in Flax.

The pure functions of :mod:`hessjax.model` stay the source of truth; these converters map their
parameters exactly (Flax kernels are ``[in, out]``, i.e. ``weight.T``). Flax's default
initialisation (LeCun normal kernels, zero biases) differs from torch's: to start from torch's
distribution, draw with :func:`hessjax.init_mlp` and convert with :func:`to_flax_variables`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from .model import DEFAULT_PRECISION, DEFAULT_SIZES, Params


class FlaxMLP(nn.Module):
    """``Dense → sigmoid → … → Dense`` with layers named ``Dense_0``, ``Dense_1``, …"""

    sizes: Sequence[int] = DEFAULT_SIZES
    precision: jax.lax.Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x):
        n_layers = len(self.sizes) - 1
        for i, width in enumerate(self.sizes[1:]):
            x = nn.Dense(width, precision=self.precision, name=f"Dense_{i}")(x)
            if i < n_layers - 1:
                x = nn.sigmoid(x)
        return x


def to_flax_variables(params: Params) -> dict:
    """hessjax params → ``{"params": {"Dense_i": {"kernel": weight.T, "bias": bias}}}``."""
    return {"params": {f"Dense_{i}": {"kernel": jnp.transpose(w), "bias": b} for i, (w, b) in enumerate(params)}}


def from_flax_variables(variables: dict) -> Params:
    """The inverse of :func:`to_flax_variables`: Flax variables → a tuple of ``(weight, bias)``."""
    tree = variables["params"] if "params" in variables else variables
    n_layers = len(tree)
    names = [f"Dense_{i}" for i in range(n_layers)]
    if sorted(tree) != sorted(names):
        raise ValueError(f"expected Flax layers {names}, found {sorted(tree)}")
    return tuple((jnp.transpose(tree[n]["kernel"]), tree[n]["bias"]) for n in names)
