r"""Top-``k`` eigenpairs of a symmetric operator by thick-restarted Lanczos, fully compiled.

The operator is only seen through ``matvec(v, *params) -> A v`` on flat vectors ``[P]``; its
parameters travel as traced arguments, so the whole solver ``jit``\ s once and ``vmap``\ s over
them (e.g. over the penalty ``λ``, whose Hessian is exactly ``2λI``).

**Lanczos with full reorthogonalisation.** With orthonormal rows ``q_0 … q_{j+b-1}`` of the basis
``Q`` filled, column ``j`` is processed as

.. math::  w = A q_j, \qquad h = Q w,\; w \leftarrow w - Q^\top h \quad(\text{twice}),
           \qquad \beta = \lVert w\rVert, \qquad q_{j+b} = w / \beta,

two passes of classical Gram–Schmidt, each two matrix–vector products with the whole basis
(masked to the filled rows) in ``precision`` (``HIGHEST`` by default: no TF32 on GPUs). The
coefficients ``h`` are written into row and column ``j`` of a dense projected matrix
``T = Qᵀ A Q`` and ``β`` at ``T[j+b, j]``, so ``A Q_m = Q_m T_m + R B`` holds exactly with the
residual block ``R`` (rows ``m … m+b-1`` of the basis) and its coupling ``B = T[m:, :m]``. For a
single start vector (``b = 1``) ``T_m`` is the Lanczos tridiagonal matrix plus rounding.

**Invariant subspaces.** When ``β`` vanishes relative to the operator scale (``β ≤ ε‖A‖``) or the
second Gram–Schmidt pass removed more than half of the vector (the first pass left only
rounding noise), the Krylov space is numerically invariant: the next row is a fresh random vector
orthogonalised against the basis and the coupling is set to ``0``, so ``T`` stays exact.

**Ritz pairs and thick restart.** ``T_m = S Θ Sᵀ`` (``jnp.linalg.eigh``); Ritz vectors ``Y = Sᵀ Q``
are one matmul; the residual of pair ``i`` is ``‖A y_i − θ_i y_i‖ = ‖B s_i‖`` (for ``b = 1`` the
familiar ``|β s_{m,i}|``). Until the top ``k`` satisfy ``‖B s_i‖ ≤ tol·|θ_1|`` the iteration keeps
the top ``k + (m − k)//2`` Ritz vectors, puts the residual block after them (their arrow coupling
``B S`` goes into ``T``) and extends the basis again. No coupling is ever dropped, so these
estimates are exact up to rounding.

**Multiplicities.** A single-vector Krylov space holds one vector per eigenspace, so a second copy
of a degenerate eigenvalue is not found from ``v0`` in exact arithmetic (rounding may reveal it,
slowly and unreliably). Once the top ``k`` have converged a
*locking pass* keeps exactly those ``k`` vectors and the residual block and adds a fresh random
vector orthogonal to all of them (the block grows by one; the relation stays exact). If the top
``k`` Ritz values of that pass rise above the locked ones (by more than ``tol·|θ_1|``), a missed
copy was found and iteration goes on until convergence and another locking pass; the solver
stops when a locking pass finds nothing new. A locking pass costs ``m − k`` matvecs. At most
``min(k, 8, P − m − 1)`` locking passes are made (so multiplicities up to that many are resolved
for certain); none when ``m ≥ P − 1`` (with ``m = P`` the basis is the whole space anyway).

**Convergence scale.** ``tol`` is relative to ``|θ_1|``, the largest algebraic Ritz value; an
operator whose top eigenvalue is ``0`` but not the whole spectrum can therefore only stop at
``max_restarts``.

**Result.** The top ``k`` Ritz vectors are normalised, signed so each one's largest-magnitude
entry is positive, and their *true* residuals ``‖A v − θ v‖`` come from one batched (``vmap``)
matvec after the iteration. Everything (the restart loop, each Lanczos pass, the breakdown and
locking logic) runs inside ``lax.while_loop`` / ``lax.fori_loop`` over a preallocated basis
``[m + b_max, P]``; there is no host round trip.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

__all__ = ["DEFAULT_MAX_RESTARTS", "EigResult", "LanczosDecomp", "default_num_iters", "lanczos_tridiag",
           "top_k_eigenpairs"]

#: Restarts allowed after the first Lanczos pass (locking passes included).
DEFAULT_MAX_RESTARTS = 30

_MAX_LOCKING_PASSES = 8  # caps the residual block at 1 + 8 rows
_BREAKDOWN_RATIO = 0.5  # the second Gram–Schmidt pass may remove at most this fraction of ‖w‖
_START, _THICK, _LOCK = 0, 1, 2  # restart actions


class LanczosDecomp(NamedTuple):
    """One Lanczos tridiagonalisation ``A Qᵀ = Qᵀ T + β_{m-1} q_m e_{m-1}ᵀ`` (rows of ``Q`` are the vectors).

    ``T`` is tridiagonal with diagonal ``alphas`` and off-diagonal ``betas[:-1]``; a zero ``beta``
    marks an invariant subspace, after which the next vector is a fresh random one.
    """

    basis: Array  # [m, P] orthonormal rows q_0 … q_{m-1}
    alphas: Array  # [m] α_j = q_jᵀ A q_j
    betas: Array  # [m] β_j couples q_j and q_{j+1}; betas[m-1] couples q_{m-1} to next_vector
    next_vector: Array  # [P] q_m, unit and orthogonal to the basis (zero only when m = P)


class EigResult(NamedTuple):
    """Top-``k`` eigenpairs of a symmetric operator, largest algebraic first."""

    eigenvalues: Array  # [k] Ritz values θ_1 ≥ … ≥ θ_k, working dtype
    eigenvectors: Array  # [k, P] unit rows; each row's largest-|entry| is positive
    residuals: Array  # [k] true ‖A v_i − θ_i v_i‖ from one batched matvec after the iteration
    converged: Array  # [k] bool, residuals ≤ tol·|eigenvalues[0]|
    num_matvecs: Array  # [] int32, operator applications including the final residual check
    num_restarts: Array  # [] int32, restarts after the first pass (locking passes included)


class _State(NamedTuple):
    """Carry of the restart loop (``R = m + b_max`` basis rows)."""

    basis: Array  # [R, P] rows 0..m-1 Krylov basis, rows m..m+b-1 residual block
    proj: Array  # [R, R] T = Qᵀ A Q from the Gram–Schmidt coefficients
    theta: Array  # [m] Ritz values of T[:m, :m], descending
    ritz: Array  # [m, m] their eigenvectors S (columns)
    ref: Array  # [k] top-k Ritz values when the last locking pass started
    anorm: Array  # [] running max ‖A q_j‖, the operator scale
    block: Array  # [] int32 b, rows in the residual block
    action: Array  # [] int32 restart to do next: _START, _THICK or _LOCK
    verified: Array  # [] bool, the last locking pass found nothing new
    num_matvecs: Array  # [] int32
    num_restarts: Array  # [] int32
    done: Array  # [] bool


def default_num_iters(k: int, dim: int) -> int:
    """Default Krylov basis size ``min(P, max(2k + 20, 4k))`` (120 for ``k = 30``)."""
    return min(int(dim), max(2 * int(k) + 20, 4 * int(k)))


# ----------------------------------------------------------------------------------------------
# validation (before tracing)


def _as_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be a Python int, not a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name}={value!r} must be a Python int (a static value, not an array)") from None


def _check_common(matvec, v0, params, key):
    if not callable(matvec):
        raise ValueError(f"matvec={matvec!r} must be callable as matvec(v, *params) -> A v")
    if not isinstance(params, (tuple, list)):
        raise ValueError(f"params must be a tuple of extra arguments to matvec, got {type(params).__name__}")
    v0 = jnp.asarray(v0)
    if v0.ndim != 1 or v0.shape[0] < 1:
        raise ValueError(f"v0 must be a non-empty flat vector [P], got shape {v0.shape}")
    if not jnp.issubdtype(v0.dtype, jnp.floating):
        raise ValueError(f"v0 must have a real floating dtype (the working dtype), got {v0.dtype}")
    if key is None:
        key = jax.random.key(0)
    return v0, tuple(params), key


def _check_num_iters(num_iters, k: int, dim: int) -> int:
    if num_iters is None:
        return default_num_iters(k, dim)
    m = _as_int("num_iters", num_iters)
    if not k < m <= dim:
        raise ValueError(f"num_iters={m} must satisfy k < num_iters <= P (k={k}, P={dim})")
    return m


# ----------------------------------------------------------------------------------------------
# building blocks (traced)


def _apply(matvec: Callable, v: Array, params: tuple) -> Array:
    """``A v`` in the dtype of ``v``; the output shape is checked at trace time."""
    out = jnp.asarray(matvec(v, *params))
    if out.shape != v.shape:
        raise ValueError(f"matvec returned shape {out.shape} for a vector of shape {v.shape}")
    return out.astype(v.dtype)


def _orthogonalize(w: Array, basis: Array, mask: Array, precision):
    """Two passes of classical Gram–Schmidt of ``w`` against the rows of ``basis`` where ``mask``.

    Returns ``(w₂, h₁ + h₂, w₁)``: the projected vector, the coefficients ``Q w`` (zero outside the
    mask) and the vector after the first pass.
    """
    h1 = jnp.matmul(basis, w, precision=precision) * mask
    w1 = w - jnp.matmul(h1, basis, precision=precision)
    h2 = jnp.matmul(basis, w1, precision=precision) * mask
    w2 = w1 - jnp.matmul(h2, basis, precision=precision)
    return w2, h1 + h2, w1


def _unit(w: Array) -> Array:
    """``w / ‖w‖``, and the zero vector for ``w = 0``."""
    n = jnp.linalg.norm(w)
    return jnp.where(n > 0, w / jnp.where(n > 0, n, 1), jnp.zeros_like(w))


def _random_orthogonal(key, basis: Array, mask: Array, precision) -> Array:
    """A unit random vector orthogonal to the masked rows of ``basis``; zero if they span ``R^P``.

    After two Gram–Schmidt passes against a spanning set only rounding of order ``ε²‖f‖`` is left,
    while a missing direction keeps ``≈ ‖f‖/√P ≫ ε‖f‖`` (unless it is almost the only one left).
    """
    f = jax.random.normal(key, basis.shape[1:], basis.dtype)
    g = _orthogonalize(f, basis, mask, precision)[0]
    spans = jnp.linalg.norm(g) <= jnp.finfo(basis.dtype).eps * jnp.linalg.norm(f)
    return jnp.where(spans, jnp.zeros_like(g), _unit(g))


def _start_vector(v0: Array, key) -> Array:
    """``v0 / ‖v0‖``, or a random unit vector when ``v0 = 0``."""
    n = jnp.linalg.norm(v0)
    fallback = _unit(jax.random.normal(key, v0.shape, v0.dtype))
    return jnp.where(n > 0, v0 / jnp.where(n > 0, n, 1), fallback)


def _extend(matvec, params, basis, proj, j0, block, anorm, counter, key, precision, m):
    """Process columns ``j0 … m−1``: column ``j`` appends its residual as row ``j + block``.

    Returns ``(basis, proj, betas [m], anorm, counter)``; ``counter`` counts matvecs (and salts
    the random vectors of invariant-subspace restarts).
    """
    dtype = basis.dtype
    eps = jnp.finfo(dtype).eps
    rows = jnp.arange(basis.shape[0])
    betas = jnp.zeros((m,), dtype)

    def step(j, carry):
        basis, proj, betas, anorm, counter = carry
        w0 = _apply(matvec, basis[j], params)
        mask = (rows < j + block).astype(dtype)  # the filled rows
        w, h, w1 = _orthogonalize(w0, basis, mask, precision)
        beta = jnp.linalg.norm(w)
        anorm = jnp.maximum(anorm, jnp.linalg.norm(w0))
        invariant = (beta <= _BREAKDOWN_RATIO * jnp.linalg.norm(w1)) | (beta <= eps * anorm)
        q_next = lax.cond(
            invariant,
            lambda: _random_orthogonal(jax.random.fold_in(key, counter), basis, mask, precision),
            lambda: w / jnp.where(beta > 0, beta, 1),
        )
        beta = jnp.where(invariant, jnp.zeros_like(beta), beta)
        nxt = j + block
        proj = proj.at[:, j].set(h).at[j, :].set(h)
        proj = proj.at[nxt, j].set(beta).at[j, nxt].set(beta)
        basis = basis.at[nxt].set(q_next)
        betas = betas.at[j].set(beta)
        return basis, proj, betas, anorm, counter + 1

    return lax.fori_loop(j0, m, step, (basis, proj, betas, anorm, counter))


def _ritz(proj: Array, m: int):
    """Ritz values (descending) and coefficient vectors of ``T[:m, :m]``."""
    theta, s = jnp.linalg.eigh(proj[:m, :m])
    return theta[::-1], s[:, ::-1]


# ----------------------------------------------------------------------------------------------
# public API


def lanczos_tridiag(matvec: Callable, v0: Array, num_iters: int, *, params=(), key=None,
                    precision=lax.Precision.HIGHEST) -> LanczosDecomp:
    r"""``num_iters`` steps of Lanczos with full (two-pass) reorthogonalisation from ``v0``.

    Returns ``Q`` ``[m, P]``, ``α`` ``[m]``, ``β`` ``[m]`` and ``q_m`` ``[P]`` with

    .. math::  A Q^\top = Q^\top T + \beta_{m-1} q_m e_{m-1}^\top, \qquad Q Q^\top = I,

    ``T = tridiag(β_{:m-1}, α, β_{:m-1})``, to rounding. An invariant subspace (``β_j ≈ 0``) is
    continued with a random vector orthogonal to the basis (drawn from ``key``) and ``β_j = 0``.
    ``matvec(v, *params)`` as in :func:`top_k_eigenpairs`; dtype of ``v0`` is the working dtype.
    """
    v0, params, key = _check_common(matvec, v0, params, key)
    dim = v0.shape[0]
    m = _as_int("num_iters", num_iters)
    if not 1 <= m <= dim:
        raise ValueError(f"num_iters={m} must satisfy 1 <= num_iters <= P (P={dim})")
    dtype = v0.dtype
    basis = jnp.zeros((m + 1, dim), dtype).at[0].set(_start_vector(v0, jax.random.fold_in(key, 0)))
    proj = jnp.zeros((m + 1, m + 1), dtype)
    basis, proj, betas, _, _ = _extend(matvec, params, basis, proj, 0, 1, jnp.zeros((), dtype),
                                       jnp.zeros((), jnp.int32), jax.random.fold_in(key, 1), precision, m)
    return LanczosDecomp(basis[:m], jnp.diagonal(proj)[:m], betas, basis[m])


def top_k_eigenpairs(matvec: Callable, v0: Array, k: int, num_iters: int | None = None, *, params=(),
                     tol=1e-5, max_restarts: int = DEFAULT_MAX_RESTARTS, key=None,
                     precision=lax.Precision.HIGHEST, multiplicity_check: bool = True) -> EigResult:
    r"""The ``k`` largest (algebraic) eigenpairs of a symmetric operator ``A``.

    Args:
      matvec: ``matvec(v, *params) -> A v`` for ``v`` ``[P]``; ``A`` must be symmetric.
      v0: start vector ``[P]`` (any nonzero norm); its dtype is the working dtype of everything.
      k: number of eigenpairs, ``1 ≤ k < P`` (static).
      num_iters: Krylov basis size ``m``, ``k < m ≤ P`` (static); default
        :func:`default_num_iters` (``min(P, max(2k + 20, 4k))``).
      params: tuple of operator parameters passed to ``matvec`` as traced arguments.
      tol: converged when ``‖A v_i − θ_i v_i‖ ≤ tol·|θ_1|`` for every ``i ≤ k``.
      max_restarts: restarts allowed after the first pass (static), locking passes included.
      key: PRNG key for the random vectors of invariant-subspace and locking restarts; default a
        fixed key, so results are reproducible for given ``key`` and ``v0``.
      precision: of every product with the basis (Gram–Schmidt, Ritz vectors).
      multiplicity_check: make the locking passes that find a second copy of a degenerate
        eigenvalue inside the top k (static; default True). Each costs ``m − k`` matvecs; turn it
        off only when the top k are known to be simple.

    Returns:
      :class:`EigResult`. Its ``residuals`` are true residuals of the returned pairs from one
      batched matvec; the ``m`` matvecs of each pass and these ``k`` are in ``num_matvecs``.

    The algorithm (thick restart, exact arrow coupling, invariant subspaces, locking passes that
    detect missed copies of degenerate eigenvalues) is described in the module docstring. Works
    under ``jax.jit`` (``matvec``, ``k``, ``num_iters``, ``max_restarts`` static) and ``jax.vmap``
    over ``v0`` and ``params``.
    """
    v0, params, key = _check_common(matvec, v0, params, key)
    dim = v0.shape[0]
    k = _as_int("k", k)
    if not 1 <= k < dim:
        raise ValueError(f"k={k} must satisfy 1 <= k < P (P={dim}); use numpy.linalg.eigh for the full spectrum")
    m = _check_num_iters(num_iters, k, dim)
    max_restarts = _as_int("max_restarts", max_restarts)
    if max_restarts < 0:
        raise ValueError(f"max_restarts={max_restarts} must be >= 0")
    if isinstance(tol, (int, float)) and not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol={tol!r} must be a finite number >= 0")
    return _top_k(matvec, v0, params, key, tol, k, m, max_restarts, precision, bool(multiplicity_check))


def _top_k(matvec, v0, params, key, tol, k, m, max_restarts, precision, multiplicity_check=True) -> EigResult:
    dtype, dim = v0.dtype, v0.shape[0]
    eps = jnp.finfo(dtype).eps
    tol = jnp.asarray(tol, dtype)
    # rows m … m+b_max-1 hold the residual block; they must fit in R^P to be orthonormal
    b_max = max(1, min(1 + min(k, _MAX_LOCKING_PASSES), dim - m))
    allow_lock = b_max >= 2 and multiplicity_check
    n_rows = m + b_max
    k_keep = k + (m - k) // 2
    key_start, key_invariant, key_lock = (jax.random.fold_in(key, i) for i in range(3))
    mm = lambda a, b: jnp.matmul(a, b, precision=precision)  # noqa: E731

    def pad(s):  # [m, c] -> [n_rows, c], zero rows for the residual block
        return jnp.zeros((n_rows, s.shape[1]), dtype).at[:m].set(s)

    def restart(st: _State, keep: int):
        """Keep the top ``keep`` Ritz vectors, then the residual block with its arrow coupling."""
        s = st.ritz[:, :keep]
        y = mm(pad(s).T, st.basis)  # [keep, P]
        res = st.basis[m:]  # [b_max, P]
        basis = st.basis.at[:keep].set(y).at[keep:keep + b_max].set(res)
        live = (jnp.arange(b_max) < st.block).astype(dtype)[:, None]
        coupling = mm(st.proj[m:, :m], s) * live  # [b_max, keep]  B S
        proj = jnp.zeros((n_rows, n_rows), dtype)
        proj = proj.at[jnp.arange(keep), jnp.arange(keep)].set(st.theta[:keep])
        proj = proj.at[keep:keep + b_max, :keep].set(coupling).at[:keep, keep:keep + b_max].set(coupling.T)
        return basis, proj

    def do_start(st):
        return st.basis, jnp.zeros_like(st.proj), jnp.int32(0), st.block, st.ref

    def do_thick(st):
        basis, proj = restart(st, k_keep)
        return basis, proj, jnp.int32(k_keep), st.block, st.ref

    def do_lock(st):
        basis, proj = restart(st, k)
        filled = (jnp.arange(n_rows) < k + st.block).astype(dtype)
        fresh = _random_orthogonal(jax.random.fold_in(key_lock, st.block), basis, filled, precision)
        basis = basis.at[k + st.block].set(fresh)
        return basis, proj, jnp.int32(k), st.block + 1, st.theta[:k]

    def body(st: _State) -> _State:
        basis, proj, j0, block, ref = lax.switch(st.action, [do_start, do_thick, do_lock], st)
        basis, proj, _, anorm, num_matvecs = _extend(matvec, params, basis, proj, j0, block, st.anorm,
                                                     st.num_matvecs, key_invariant, precision, m)
        theta, s = _ritz(proj, m)
        estimates = jnp.linalg.norm(mm(proj[m:, :m], s[:, :k]), axis=0)  # ‖B s_i‖, exact residuals
        scale = jnp.abs(theta[0])
        conv = jnp.all(estimates <= tol * scale)
        was_lock = st.action == _LOCK
        rise = jnp.max(theta[:k] - ref)
        found_new = was_lock & (rise > tol * scale + 100 * eps * jnp.max(jnp.abs(theta)))
        verified = jnp.where(was_lock, ~found_new, st.verified)
        can_lock = allow_lock & (block < b_max)
        num_restarts = st.num_restarts + (st.action != _START).astype(jnp.int32)
        done = (conv & (verified | ~can_lock)) | (num_restarts >= max_restarts)
        action = jnp.where(conv & can_lock & ~verified, _LOCK, _THICK).astype(jnp.int32)
        return _State(basis, proj, theta, s, ref, anorm, block, action, verified, num_matvecs, num_restarts, done)

    basis0 = jnp.zeros((n_rows, dim), dtype).at[0].set(_start_vector(v0, key_start))
    init = _State(
        basis=basis0,
        proj=jnp.zeros((n_rows, n_rows), dtype),
        theta=jnp.zeros((m,), dtype),
        ritz=jnp.zeros((m, m), dtype),
        ref=jnp.zeros((k,), dtype),
        anorm=jnp.zeros((), dtype),
        block=jnp.int32(1),
        action=jnp.int32(_START),
        verified=jnp.bool_(False),
        num_matvecs=jnp.int32(0),
        num_restarts=jnp.int32(0),
        done=jnp.bool_(False),
    )
    st = lax.while_loop(lambda st: ~st.done, body, init)

    theta = st.theta[:k]
    vecs = mm(pad(st.ritz[:, :k]).T, st.basis)  # [k, P], one matmul
    vecs = vecs / jnp.linalg.norm(vecs, axis=1, keepdims=True)
    peak = jnp.take_along_axis(vecs, jnp.argmax(jnp.abs(vecs), axis=1)[:, None], axis=1)
    vecs = vecs * jnp.where(peak < 0, -1, 1).astype(dtype)
    applied = jax.vmap(lambda v: _apply(matvec, v, params))(vecs)  # [k, P], one batched matvec
    residuals = jnp.linalg.norm(applied - theta[:, None] * vecs, axis=1)
    converged = residuals <= tol * jnp.abs(theta[0])
    return EigResult(theta, vecs, residuals, converged, st.num_matvecs + k, st.num_restarts)
