"""The anchor-regularized loss ``L_eff(θ) = mean CE(f(x; θ), y) + λ ‖θ − θ_ref‖²``.

The penalty adds exactly ``2λ I`` to the Hessian, so the spectrum of ``L_eff`` is the data-loss
spectrum shifted by ``2λ`` at any fixed ``θ``. λ, the anchor and the data are arguments, never
closed over, so every function here vmaps over λ and compiles once for all λ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .model import DEFAULT_PRECISION, Params, apply_mlp


def cross_entropy_sum(params: Params, x: jax.Array, y: jax.Array, *, precision=DEFAULT_PRECISION) -> jax.Array:
    """Sum over the batch of ``-log softmax(f(x))[y]`` (``torch.nn.functional.cross_entropy`` with
    ``reduction='sum'``)."""
    logits = apply_mlp(params, x, precision=precision)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.take_along_axis(logp, y[..., None].astype(jnp.int32), axis=-1))


def cross_entropy(params: Params, x: jax.Array, y: jax.Array, *, precision=DEFAULT_PRECISION) -> jax.Array:
    """Mean cross-entropy over the batch, as ``torch.nn.functional.cross_entropy``."""
    return cross_entropy_sum(params, x, y, precision=precision) / y.shape[0]


def anchor_penalty(params: Params, anchor: Params) -> jax.Array:
    """``‖θ − θ_ref‖²``: the squared distance summed over every weight and bias."""
    sq = jax.tree_util.tree_map(lambda p, a: jnp.sum(jnp.square(p - a)), params, anchor)
    return sum(jax.tree_util.tree_leaves(sq))


def _cast_lam(lam, params: Params) -> jax.Array:
    """λ in the model's dtype, so a float64 λ never promotes a float32 model."""
    return jnp.asarray(lam).astype(jax.tree_util.tree_leaves(params)[0].dtype)


def effective_loss(params: Params, anchor: Params, lam, x: jax.Array, y: jax.Array, *,
                   precision=DEFAULT_PRECISION) -> jax.Array:
    """``mean CE(f(x; θ), y) + λ ‖θ − θ_ref‖²`` for one batch ``x`` ``[N, in]``, ``y`` ``[N]``."""
    return cross_entropy(params, x, y, precision=precision) + _cast_lam(lam, params) * anchor_penalty(params, anchor)
