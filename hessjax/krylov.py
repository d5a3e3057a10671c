r"""The building blocks of Lanczos with full reorthogonalisation, and :func:`lanczos_tridiag`.

Every function here sees one operator through ``matvec(v, *params)`` on flat vectors ``[P]`` and is
traced inside the solvers of :mod:`hessjax.lanczos` (thick restarts, top k) and
:mod:`hessjax.spectral` (stochastic Lanczos quadrature); the algorithm is described in
:mod:`hessjax.lanczos`. Products with the basis use ``precision`` (``HIGHEST`` by default).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .operators import apply_operator, as_int, check_operator

Array = jax.Array

__all__ = ["CHECK_EVERY", "LanczosDecomp", "check_num_iters", "check_param_axes", "check_start", "check_warm", "default_num_iters", "coupling", "extend", "first_pass",
           "lanczos_tridiag", "member_products", "needs_second", "random_orthogonal", "ritz", "second_pass", "start_vector",
           "step_orthogonalize", "unit"]

_BREAKDOWN_RATIO = 0.5  # the second Gram–Schmidt pass may remove at most this fraction of ‖w‖
_DGKS_RATIO = 1 / math.sqrt(2)  # a second pass when the first left less than this fraction
CHECK_EVERY = 2  # columns between convergence checks inside a pass


class LanczosDecomp(NamedTuple):
    """One Lanczos tridiagonalisation ``A Qᵀ = Qᵀ T + β_{m-1} q_m e_{m-1}ᵀ`` (rows of ``Q`` are the vectors).

    ``T`` is tridiagonal with diagonal ``alphas`` and off-diagonal ``betas[:-1]``; a zero ``beta``
    marks an invariant subspace, after which the next vector is a fresh random one.
    """

    basis: Array  # [m, P] orthonormal rows q_0 … q_{m-1}
    alphas: Array  # [m] α_j = q_jᵀ A q_j
    betas: Array  # [m] β_j couples q_j and q_{j+1}; betas[m-1] couples q_{m-1} to next_vector
    next_vector: Array  # [P] q_m, unit and orthogonal to the basis (zero only when m = P)


def default_num_iters(k: int, dim: int) -> int:
    """Default Krylov basis size ``min(P, max(2k + 20, 4k))`` (120 for ``k = 30``)."""
    return min(int(dim), max(2 * int(k) + 20, 4 * int(k)))


def check_start(matvec, v0, params, key):
    params = check_operator(matvec, params)
    v0 = jnp.asarray(v0)
    if v0.ndim != 1 or v0.shape[0] < 1:
        raise ValueError(f"v0 must be a non-empty flat vector [P], got shape {v0.shape}")
    if not jnp.issubdtype(v0.dtype, jnp.floating):
        raise ValueError(f"v0 must have a real floating dtype (the working dtype), got {v0.dtype}")
    if key is None:
        key = jax.random.key(0)
    return v0, params, key


def check_param_axes(param_axes, params: tuple, batch: int) -> tuple:
    """``param_axes`` of a batched solve: ``0`` or ``None`` per parameter, ``0`` only over arrays with a leading ``B``."""
    axes = tuple(param_axes)
    if len(axes) != len(params) or any(a not in (0, None) for a in axes):
        raise ValueError(f"param_axes must give 0 (per member) or None (shared) for each of the {len(params)} "
                         f"params, got {param_axes!r}")
    for i, (a, p) in enumerate(zip(axes, params)):
        if a == 0 and any(jnp.ndim(x) < 1 or jnp.shape(x)[0] != batch for x in jax.tree_util.tree_leaves(p)):
            raise ValueError(f"params[{i}] is per member (param_axes 0), so each of its arrays needs a leading "
                             f"axis of length B={batch}")
    return axes


def check_warm(warm: Array, v0: Array) -> Array:
    """``warm_start`` ``[B, g, P]`` of a batch ``v0`` ``[B, P]``, checked."""
    if warm.ndim != 3 or warm.shape[0] != v0.shape[0] or warm.shape[2] != v0.shape[1] or warm.shape[1] < 1:
        raise ValueError(f"warm_start must hold at least one vector of length P={v0.shape[1]} per member "
                         f"([B, g, P] with B={v0.shape[0]}), got shape {warm.shape}")
    if not jnp.issubdtype(warm.dtype, jnp.floating):
        raise ValueError(f"warm_start must be real floating point, got {warm.dtype}")
    return warm


def member_products(matvec_batch, params: tuple, param_axes: tuple, q: Array, active: Array) -> Array:
    """``A_b q_b`` for the members ``b`` where ``active`` (``[B]``), one after another, each as a batch
    of one (its rows of the per-member ``params``, ``param_axes`` 0, sliced out), and zero rows for the
    others: the batch executes only its active members' products."""
    order = jnp.argsort(~active, stable=True)  # the active members first, in member order

    def one(i, out):
        b = order[i]
        member = tuple(p if ax is None else jax.tree_util.tree_map(lambda a: lax.dynamic_slice_in_dim(a, b, 1, 0), p)
                       for p, ax in zip(params, param_axes))
        row = matvec_batch(lax.dynamic_slice_in_dim(q, b, 1, 0), *member)
        return lax.dynamic_update_slice_in_dim(out, row.astype(out.dtype), b, 0)

    return lax.fori_loop(0, jnp.sum(active, dtype=jnp.int32), one, jnp.zeros_like(q))


def check_num_iters(num_iters, k: int, dim: int) -> int:
    if num_iters is None:
        return default_num_iters(k, dim)
    m = as_int("num_iters", num_iters)
    if not k < m <= dim:
        raise ValueError(f"num_iters={m} must satisfy k < num_iters <= P (k={k}, P={dim})")
    return m


def orthogonalize(w: Array, basis: Array, mask: Array, precision):
    """Two passes of classical Gram–Schmidt of ``w`` against the rows of ``basis`` where ``mask``.

    Returns ``(w₂, h₁ + h₂, w₁)``: the projected vector, the coefficients ``Q w`` (zero outside the
    mask) and the vector after the first pass.
    """
    h1 = jnp.matmul(basis, w, precision=precision) * mask
    w1 = w - jnp.matmul(h1, basis, precision=precision)
    h2 = jnp.matmul(basis, w1, precision=precision) * mask
    w2 = w1 - jnp.matmul(h2, basis, precision=precision)
    return w2, h1 + h2, w1


def unit(w: Array) -> Array:
    """``w / ‖w‖``, and the zero vector for ``w = 0``."""
    n = jnp.linalg.norm(w)
    return jnp.where(n > 0, w / jnp.where(n > 0, n, 1), jnp.zeros_like(w))


def random_orthogonal(key, basis: Array, mask: Array, precision) -> Array:
    """A unit random vector orthogonal to the masked rows of ``basis``; zero if they span ``R^P``.

    After two Gram–Schmidt passes against a spanning set only rounding of order ``ε²‖f‖`` is left,
    while a missing direction keeps ``≈ ‖f‖/√P ≫ ε‖f‖`` (unless it is almost the only one left).
    """
    f = jax.random.normal(key, basis.shape[1:], basis.dtype)
    g = orthogonalize(f, basis, mask, precision)[0]
    spans = jnp.linalg.norm(g) <= jnp.finfo(basis.dtype).eps * jnp.linalg.norm(f)
    return jnp.where(spans, jnp.zeros_like(g), unit(g))


def start_vector(v0: Array, key) -> Array:
    """``v0 / ‖v0‖``, or a random unit vector when ``v0 = 0``."""
    n = jnp.linalg.norm(v0)
    fallback = unit(jax.random.normal(key, v0.shape, v0.dtype))
    return jnp.where(n > 0, v0 / jnp.where(n > 0, n, 1), fallback)


def first_pass(w0: Array, basis: Array, j, mask: Array, precision):
    """Orthogonalise ``w0 = A q_j`` locally and by one full Gram–Schmidt pass over the filled rows.

    First the projections on ``q_{j−1}`` and ``q_j`` (in exact arithmetic all that the three-term
    recurrence needs: two rows read, two dot products), then one classical Gram–Schmidt pass over
    every filled row. Returns ``(w₁, h, ‖w‖, ‖w₁‖)``: the vector, the coefficients ``Q w0`` so far
    (zero outside the mask) and the norms before and after the full pass, from which the
    Daniel–Gragg–Kaufman–Stewart test decides whether a second pass is needed (:func:`needs_second`).
    """
    dtype = w0.dtype
    n_rows = basis.shape[0]
    prev = jnp.maximum(j - 1, 0)
    q_prev, q_j = _row(basis, prev), _row(basis, j)
    c_prev = jnp.where(j >= 1, jnp.vdot(q_prev, w0, precision=precision), 0).astype(dtype)
    c_j = jnp.vdot(q_j, w0, precision=precision).astype(dtype)
    w = w0 - c_prev * q_prev - c_j * q_j
    h0 = jnp.zeros((n_rows,), dtype).at[prev].add(c_prev).at[j].add(c_j)
    h1 = jnp.matmul(basis, w, precision=precision) * mask
    w1 = w - jnp.matmul(h1, basis, precision=precision)
    return w1, h0 + h1, jnp.linalg.norm(w), jnp.linalg.norm(w1)


def _row(a: Array, i) -> Array:
    return lax.dynamic_index_in_dim(a, i, keepdims=False)


def needs_second(n0, n1):
    """The DGKS criterion: the full pass removed more than ``1 − 1/√2`` of what was left ("twice is enough")."""
    return n1 < _DGKS_RATIO * n0


def second_pass(w1: Array, basis: Array, mask: Array, n1, precision):
    """A second Gram–Schmidt pass: ``(w₂, h₂, ok)``; ``ok`` is ``False`` when it kept at most half of
    its input — the remainder was rounding noise (an invariant subspace)."""
    h2 = jnp.matmul(basis, w1, precision=precision) * mask
    w2 = w1 - jnp.matmul(h2, basis, precision=precision)
    return w2, h2, jnp.linalg.norm(w2) > _BREAKDOWN_RATIO * n1


def step_orthogonalize(w0: Array, basis: Array, j, mask: Array, precision):
    """:func:`first_pass`, then :func:`second_pass` only where needed: ``(w, h, ok)``."""
    w1, h1, n0, n1 = first_pass(w0, basis, j, mask, precision)
    w2, h2, ok = lax.cond(needs_second(n0, n1), lambda: second_pass(w1, basis, mask, n1, precision),
                          lambda: (w1, jnp.zeros_like(h1), jnp.bool_(True)))
    return w2, h1 + h2, ok


def extend(matvec, params, basis, proj, key, precision, m):
    """Lanczos columns ``0 … m−1`` from the unit row ``basis[0]``: column ``j`` applies the operator
    to ``q_j``, orthogonalises (:func:`step_orthogonalize`) and appends the residual as row ``j + 1``;
    on an invariant subspace the next row is a random vector from ``fold_in(key, j)`` and the coupling
    is ``0``. Returns ``(basis, proj, betas [m])``."""
    dtype = basis.dtype
    eps = jnp.finfo(dtype).eps
    rows = jnp.arange(basis.shape[0])

    def step(j, carry):
        basis, proj, betas, anorm = carry
        w0 = apply_operator(matvec, basis[j], params)
        mask = (rows < j + 1).astype(dtype)  # the filled rows
        w, h, ok = step_orthogonalize(w0, basis, j, mask, precision)
        beta = jnp.linalg.norm(w)
        anorm = jnp.maximum(anorm, jnp.linalg.norm(w0))
        invariant = ~ok | (beta <= eps * anorm)
        q_next = lax.cond(
            invariant,
            lambda: random_orthogonal(jax.random.fold_in(key, j), basis, mask, precision),
            lambda: w / jnp.where(beta > 0, beta, 1),
        )
        beta = jnp.where(invariant, jnp.zeros_like(beta), beta)
        proj = proj.at[:, j].set(h).at[j, :].set(h)
        proj = proj.at[j + 1, j].set(beta).at[j, j + 1].set(beta)
        return basis.at[j + 1].set(q_next), proj, betas.at[j].set(beta), anorm

    init = (basis, proj, jnp.zeros((m,), dtype), jnp.zeros((), dtype))
    basis, proj, betas, _ = lax.fori_loop(0, m, step, init)
    return basis, proj, betas


def ritz(proj: Array, m: int, n):
    """Ritz values (descending) and coefficient vectors of ``T[:n, :n]`` inside ``T[:m, :m]``.

    The rows and columns ``n … m−1`` are replaced by a decoupled diagonal below the whole spectrum
    of ``T[:n, :n]`` (``−2‖T[:n, :n]‖_F``), so their values sort last; their coefficients are zeroed.
    """
    dtype = proj.dtype
    inside = jnp.arange(m) < n
    t = proj[:m, :m] * (inside[:, None] & inside[None, :])
    fro = jnp.linalg.norm(t)
    pad = jnp.where(fro > 0, -2 * fro, -jnp.ones((), dtype))
    t = t + jnp.diag(jnp.where(inside, 0, pad).astype(dtype))
    theta, s = jnp.linalg.eigh(t)
    return theta[::-1], s[:, ::-1] * inside[:, None]


def coupling(proj: Array, m: int, n):
    """``B`` ``[1, m]``: how the residual row ``n`` couples to the first ``n`` columns."""
    b = lax.dynamic_slice(proj, (n, jnp.zeros_like(n)), (1, proj.shape[1]))[:, :m]
    return b * (jnp.arange(m) < n)[None, :]


# ----------------------------------------------------------------------------------------------


def lanczos_tridiag(matvec: Callable, v0: Array, num_iters: int, *, params=(), key=None,
                    precision=lax.Precision.HIGHEST) -> LanczosDecomp:
    r"""``num_iters`` steps of Lanczos with full reorthogonalisation from ``v0`` (as in the module docstring).

    Returns ``Q`` ``[m, P]``, ``α`` ``[m]``, ``β`` ``[m]`` and ``q_m`` ``[P]`` with

    .. math::  A Q^\top = Q^\top T + \beta_{m-1} q_m e_{m-1}^\top, \qquad Q Q^\top = I,

    ``T = tridiag(β_{:m-1}, α, β_{:m-1})``, to rounding. An invariant subspace (``β_j ≈ 0``) is
    continued with a random vector orthogonal to the basis (drawn from ``key``) and ``β_j = 0``.
    ``matvec(v, *params)`` as in :func:`top_k_eigenpairs`; dtype of ``v0`` is the working dtype.
    """
    v0, params, key = check_start(matvec, v0, params, key)
    dim = v0.shape[0]
    m = as_int("num_iters", num_iters)
    if not 1 <= m <= dim:
        raise ValueError(f"num_iters={m} must satisfy 1 <= num_iters <= P (P={dim})")
    dtype = v0.dtype
    basis = jnp.zeros((m + 1, dim), dtype).at[0].set(start_vector(v0, jax.random.fold_in(key, 0)))
    proj = jnp.zeros((m + 1, m + 1), dtype)
    basis, proj, betas = extend(matvec, params, basis, proj, jax.random.fold_in(key, 1), precision, m)
    return LanczosDecomp(basis[:m], jnp.diagonal(proj)[:m], betas, basis[m])
