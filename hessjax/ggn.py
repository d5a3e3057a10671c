r"""The generalized Gauss–Newton matrix of the mean cross-entropy, applied by ``jax.linearize`` and its transpose.

With ``z_n = f(x_n; θ)`` the logits of sample ``n``, ``J_n = ∂z_n/∂θ`` and ``p_n = softmax(z_n)``,

.. math::  ∇²\,\mathrm{CE} = G + R,\qquad G = \frac1N \sum_n J_nᵀ\,(\mathrm{diag}\,p_n − p_n p_nᵀ)\,J_n,\qquad
           R = \frac1N \sum_n \sum_c (p_n − e_{y_n})_c\,∇²_θ z_{n,c}.

``G`` — the Gauss–Newton part, positive semi-definite, of rank at most ``N(K − 1)`` and independent of
the labels — is what the Hessian keeps where the model is linear in θ; ``R`` is the curvature of the
model itself weighted by the residuals ``p − e_y``, which vanish as the training loss does. The split
``H = G + (H − G)`` is what papers on Hessian spectra (Papyan 2019; Sagun et al. 2017) use to explain
the ~K outliers above the bulk. :func:`flat_ggn_matvec` applies ``G`` without forming ``J``: per chunk
one ``jax.linearize`` of the forward pass (``u = J v``), the softmax Hessian
``(diag p − ppᵀ) u`` without cancellation (:func:`hessjax.loss.softmax_jvp`), then the transposed
linearization (``Jᵀ w``): about 3 forward passes per product, memory bounded by one chunk, for any model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .hvp import Chunks, num_samples
from .loss import softmax_jvp
from .models import DEFAULT_PRECISION, Params, apply_mlp

__all__ = ["flat_ggn_matvec", "ggn_product"]


def _chunk_ggn(params: Params, x, v: Params, precision, apply) -> Params:
    """``Σ_{samples of the chunk} J_nᵀ (diag p_n − p_n p_nᵀ) J_n v``."""
    logits, jvp = jax.linearize(lambda p: apply(p, x, precision=precision), params)
    w = softmax_jvp(jax.nn.softmax(logits, axis=-1), jvp(v))
    (out,) = jax.linear_transpose(jvp, params)(w)
    return out


def ggn_product(params: Params, v: Params, chunks: Chunks, *, precision=DEFAULT_PRECISION, apply=apply_mlp) -> Params:
    """``G v`` over the whole chunked data set (see the module docstring), a pytree like ``params``."""

    def body(acc, xs):
        return jax.tree_util.tree_map(jnp.add, acc, _chunk_ggn(params, xs, v, precision, apply)), None

    acc = jax.tree_util.tree_map(jnp.zeros_like, params)
    acc, _ = jax.lax.scan(body, acc, chunks.x)
    if chunks.y_rest.shape[0]:
        acc = jax.tree_util.tree_map(jnp.add, acc, _chunk_ggn(params, chunks.x_rest, v, precision, apply))
    n = num_samples(chunks)
    return jax.tree_util.tree_map(lambda a: a / n, acc)


def flat_ggn_matvec(v: jax.Array, params: Params, chunks: Chunks, *, precision=DEFAULT_PRECISION,
                    apply=apply_mlp) -> jax.Array:
    """:func:`ggn_product` on flat vectors (``parameters_to_vector`` order); fits
    :func:`hessjax.top_k_eigenpairs` with ``params=(params, chunks)``."""
    _, unravel = ravel_pytree(params)
    return ravel_pytree(ggn_product(params, unravel(v), chunks, precision=precision, apply=apply))[0]
