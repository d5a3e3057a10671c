"""The MLP as pure functions over a tuple of ``(weight, bias)`` pairs.

Layout is PyTorch's: ``weight`` is ``[out, in]`` and ``bias`` is ``[out]``, layers in order, so
``jax.flatten_util.ravel_pytree(params)[0]`` is exactly ``torch.nn.utils.parameters_to_vector``
of the equivalent ``nn.Sequential(Linear, Sigmoid, Linear, Sigmoid, Linear)``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Params = tuple  # tuple[tuple[Array[out, in], Array[out]], ...]

DEFAULT_SIZES = (784, 128, 128, 10)

#: Matmul precision of the forward pass, and so of every gradient and HVP derived from it.
#: ``HIGHEST`` keeps float32 products in true float32 on GPUs/TPUs (no TF32 / bf16 passes).
DEFAULT_PRECISION = lax.Precision.HIGHEST


def init_mlp(key: jax.Array, sizes: Sequence[int] = DEFAULT_SIZES, dtype=jnp.float32) -> Params:
    """Fresh parameters with ``torch.nn.Linear``'s default initial distribution.

    torch draws ``weight`` with ``kaiming_uniform_(a=sqrt(5))`` and ``bias`` uniformly, both of
    which reduce to ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. The distribution matches torch's, the
    random stream does not (use :mod:`hessjax.bridges` to start both frameworks from one tensor).
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes={sizes} must list at least two positive layer widths")
    keys = jax.random.split(key, 2 * (len(sizes) - 1))
    params = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1.0 / jnp.sqrt(jnp.asarray(fan_in, dtype))
        w = jax.random.uniform(keys[2 * i], (fan_out, fan_in), dtype, -bound, bound)
        b = jax.random.uniform(keys[2 * i + 1], (fan_out,), dtype, -bound, bound)
        params.append((w, b))
    return tuple(params)


def layer_sizes(params: Params) -> tuple[int, ...]:
    """The width chain ``(in, hidden..., out)`` of ``params``."""
    return (params[0][0].shape[1],) + tuple(w.shape[0] for w, _ in params)


def apply_mlp(params: Params, x: jax.Array, *, precision=DEFAULT_PRECISION) -> jax.Array:
    """Logits ``[..., out]`` of inputs ``x`` ``[..., in]``; sigmoid after every hidden layer."""
    h = x
    for i, (w, b) in enumerate(params):
        h = jnp.matmul(h, w.T, precision=precision) + b
        if i < len(params) - 1:
            h = jax.nn.sigmoid(h)
    return h


def accuracy(params: Params, x: jax.Array, y: jax.Array, *, precision=DEFAULT_PRECISION) -> jax.Array:
    """Fraction of ``x`` whose arg-max logit is the label ``y``."""
    return jnp.mean(jnp.argmax(apply_mlp(params, x, precision=precision), axis=-1) == y)
