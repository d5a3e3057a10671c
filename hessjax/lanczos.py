r"""Top-``k`` eigenpairs of a symmetric operator by thick-restarted Lanczos, fully compiled.

The operator is only seen through ``matvec(v, *params) -> A v`` on flat vectors ``[P]``; its
parameters travel as traced arguments, so the whole solver ``jit``\ s once and ``vmap``\ s over
them (e.g. over the penalty ``λ``, whose Hessian is exactly ``2λI``).

**Lanczos with full reorthogonalisation.** With orthonormal rows ``q_0 … q_{j+b-1}`` of the basis
``Q`` filled, column ``j`` is processed as

.. math::  w = A q_j,\qquad h = Q w,\; w \leftarrow w - Q^\top h, \qquad
           \beta = \lVert w\rVert, \qquad q_{j+b} = w / \beta .

The projection is done in three stages: on the ``b + 1`` rows ``q_{j-b} … q_j`` that the (block)
three-term recurrence couples to (a few dot products), then one classical Gram–Schmidt pass over
every filled row, and a second pass only when the first removed more than ``1 − 1/√2`` of the
vector (the Daniel–Gragg–Kaufman–Stewart criterion: "twice is enough"). After the local step the
full pass only removes rounding, so the second pass is rarely needed and each column costs one
read of the basis in each direction. Products with the basis use ``precision`` (``HIGHEST`` by
default: no TF32 on GPUs). The coefficients ``h`` are written into row and column ``j`` of a dense
projected matrix ``T = Qᵀ A Q`` and ``β`` at ``T[j+b, j]``, so ``A Q_n = Q_n T_n + R B`` holds
exactly with the residual block ``R`` (rows ``n … n+b-1`` of the basis) and its coupling
``B = T[n:, :n]``. For a single start vector (``b = 1``) ``T_n`` is the Lanczos tridiagonal
matrix plus rounding. Every product ``A q_j`` is also kept (``products``, a second ``[m + b, P]``
array), so that ``A y`` of any combination ``y`` of basis rows is known without a new matvec.

**Invariant subspaces.** When ``β`` vanishes relative to the operator scale (``β ≤ ε‖A‖``) or a
second Gram–Schmidt pass removed more than half of the vector (what was left was rounding), the
Krylov space is numerically invariant: the next row is a fresh random vector orthogonalised against
the basis and the coupling is set to ``0``, so ``T`` stays exact.

**Ritz pairs, early exit, certificate and thick restart.** ``T_n = S Θ Sᵀ`` (``jnp.linalg.eigh``;
the unused rows of the fixed-size ``T_m`` are decoupled below the spectrum); Ritz vectors
``Y = Sᵀ Q`` are one matmul; the recurrence's estimate of the residual of pair ``i`` is ``‖B s_i‖``
(for ``b = 1`` the familiar ``|β s_{n,i}|``). A pass checks the estimates every ``_CHECK_EVERY``
columns once it holds ``k_keep = k + (m − k)//2`` of them and ends as soon as the top ``k`` satisfy
``‖B s_i‖ ≤ tol·s`` (on the real Hessian at ``k = 30`` that is after ~76 of ``m = 120`` columns);
otherwise it runs to ``m``. The pass is then *certified*: the top ``k`` Ritz vectors and their
products ``A y_i = Sᵀ (A Q)`` (the operator's own stored outputs, no new matvec) give the true
residuals ``‖A y_i − θ_i y_i‖``, and only these decide convergence — the estimate merely ends a
pass, so a pass whose estimate was too optimistic (lost orthogonality, rounding) is followed by
another instead of returning unconverged pairs. Until convergence the iteration keeps the top
``k_keep`` Ritz vectors (and their products ``A Y``), puts the residual block after them (their
arrow coupling ``B S`` goes into ``T``) and extends the basis again. No coupling is ever dropped.

**Multiplicities.** A single-vector Krylov space holds one vector per eigenspace, so a second copy
of a degenerate eigenvalue is not found from ``v0`` in exact arithmetic (rounding may reveal it,
slowly and unreliably). Once the top ``k`` have converged a *locking pass* keeps the top Ritz
vectors and the residual block and adds a fresh random vector orthogonal to all of them (the block
grows by one; the relation stays exact). The pass gives each of its ``b`` start rows
``max((m − k)//4, 12)`` columns (at least ``m − k_keep``, at most ``m − k`` in all; 45 for
``k = 30, m = 120``) and runs to ``m`` without early exit. If the top ``k`` Ritz values of that
pass rise above the locked ones (by more than ``tol·|θ_1|``), a missed copy was found and
iteration goes on until convergence and another locking pass; the solver stops when a locking
pass finds nothing new. At most ``min(k, 8, P − m − 1)`` locking passes are made; none when
``m ≥ P − 1`` (with ``m = P`` the basis is the whole space anyway). A copy is found when the
short Krylov space of the random vector lifts its Ritz value above ``θ_k``: reliable for a copy
that stands clear of the rest of the spectrum (the tests hide such copies from ``v0`` exactly),
not for one inside a dense cluster.

**Convergence scale.** A pair has converged when ``‖A v − θ v‖ ≤ tol·s`` with
``s = max(|θ_1|, |θ_min|)``, the spectral norm of the projected matrix (``θ_min`` its lowest Ritz
value). For a positive semi-definite operator (a data-loss Hessian near a minimum, up to small
negative eigenvalues) that is ``|θ_1|``; where ``θ_1`` is tiny next to negative eigenvalues it is
floored at the operator's own scale, so a tolerance is always reachable in floating point.
Relative to ``|θ_1|`` the test is invariant to scaling ``A`` but *not* to shifting it: a known
shift such as the penalty's ``2λI`` belongs outside the solve (solve ``A``, add the shift after),
or it loosens the test on the small eigenvalues by ``|θ_1 + shift| / |θ_1|``.

**Result.** The top ``k`` Ritz vectors are normalised and signed so each one's largest-magnitude
entry is positive. Their residuals ``‖A v − θ v‖`` are computed from the stored products
(``A v = Sᵀ (A Q)`` by linearity: the operator's own outputs, not the recurrence), so they cost no
matvec and do catch a loss of orthogonality or a corrupted recurrence; ``converged`` is the same
test that ended the iteration. Everything (the restart
loop, each Lanczos pass, the breakdown, exit and locking logic) runs inside ``lax.while_loop``
over preallocated arrays ``[m + b_max, P]``; there is no host round trip. Under ``vmap`` the
conditionals (early-exit checks, second passes) are evaluated for every member, which costs time
but not correctness.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .operators import apply_operator, as_int, check_operator

Array = jax.Array

__all__ = ["DEFAULT_MAX_RESTARTS", "EigResult", "LanczosDecomp", "default_num_iters", "lanczos_tridiag",
           "top_k_eigenpairs"]

#: Restarts allowed after the first Lanczos pass (locking passes included).
DEFAULT_MAX_RESTARTS = 30

_MAX_LOCKING_PASSES = 8  # caps the residual block at 1 + 8 rows
_BREAKDOWN_RATIO = 0.5  # the second Gram–Schmidt pass may remove at most this fraction of ‖w‖
_DGKS_RATIO = 1 / math.sqrt(2)  # a second pass when the first left less than this fraction
_CHECK_EVERY = 2  # columns between convergence checks inside a pass
_LOCK_STEPS = 12  # at least this many columns per start row in a locking pass
_LOCAL_ROWS = _MAX_LOCKING_PASSES + 2  # rows q_{j-b} … q_j of the local step, b ≤ 1 + locking passes
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
    residuals: Array  # [k] true ‖A v_i − θ_i v_i‖, A v_i from the operator's stored products
    converged: Array  # [k] bool, residuals ≤ tol·scale
    num_matvecs: Array  # [] int32, operator applications
    num_restarts: Array  # [] int32, restarts after the first pass (locking passes included)
    scale: Array  # [] the convergence scale max(|θ_1|, |θ_min|) of the basis (θ_min its lowest Ritz value)


class _State(NamedTuple):
    """Carry of the restart loop (``R = m + b_max`` basis rows)."""

    basis: Array  # [R, P] rows 0..n-1 Krylov basis, rows n..n+b-1 residual block
    products: Array  # [R, P] row j: A q_j for the rows j < n
    proj: Array  # [R, R] T = Qᵀ A Q from the Gram–Schmidt coefficients
    theta: Array  # [m] Ritz values of T[:m, :m], descending
    ritz: Array  # [m, m] their eigenvectors S (columns)
    ref: Array  # [k] top-k Ritz values when the last locking pass started
    anorm: Array  # [] running max ‖A q_j‖, the operator scale
    block: Array  # [] int32 b, rows in the residual block
    filled: Array  # [] int32 n ≤ m, columns processed by the last pass
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


def _check_common(matvec, v0, params, key):
    params = check_operator(matvec, params)
    v0 = jnp.asarray(v0)
    if v0.ndim != 1 or v0.shape[0] < 1:
        raise ValueError(f"v0 must be a non-empty flat vector [P], got shape {v0.shape}")
    if not jnp.issubdtype(v0.dtype, jnp.floating):
        raise ValueError(f"v0 must have a real floating dtype (the working dtype), got {v0.dtype}")
    if key is None:
        key = jax.random.key(0)
    return v0, params, key


def _check_num_iters(num_iters, k: int, dim: int) -> int:
    if num_iters is None:
        return default_num_iters(k, dim)
    m = as_int("num_iters", num_iters)
    if not k < m <= dim:
        raise ValueError(f"num_iters={m} must satisfy k < num_iters <= P (k={k}, P={dim})")
    return m


# ----------------------------------------------------------------------------------------------
# building blocks (traced)


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


def _step_orthogonalize(w0: Array, basis: Array, j, block, mask: Array, precision):
    """Orthogonalise ``w0 = A q_j`` against the filled rows: local, one full pass, a second if needed.

    First the projections on ``q_{j−b} … q_j`` (``b`` = ``block``; in exact arithmetic all that the
    (block) three-term recurrence needs, a few dot products), then one classical Gram–Schmidt pass
    over every filled row, and a second one only when the first removed more than ``1 − 1/√2`` of
    what was left (the Daniel–Gragg–Kaufman–Stewart criterion; "twice is enough"). Returns
    ``(w, h, ok)``: the orthogonalised vector, the coefficients ``Q w0`` (zero outside the mask)
    and whether the last pass kept more than half of its input — ``False`` means the remainder
    was rounding noise (an invariant subspace).
    """
    dtype = w0.dtype
    n_rows = basis.shape[0]
    width = min(n_rows, _LOCAL_ROWS)
    first = jnp.clip(j - (width - 1), 0, n_rows - width)
    idx = first + jnp.arange(width)
    near = lax.dynamic_slice(basis, (first, jnp.zeros_like(first)), (width, basis.shape[1]))
    local = ((idx <= j) & (idx >= j - block)).astype(dtype)
    c = jnp.matmul(near, w0, precision=precision) * local
    w = w0 - jnp.matmul(c, near, precision=precision)
    h0 = jnp.zeros((n_rows,), dtype).at[idx].add(c)
    h1 = jnp.matmul(basis, w, precision=precision) * mask
    w1 = w - jnp.matmul(h1, basis, precision=precision)
    n0, n1 = jnp.linalg.norm(w), jnp.linalg.norm(w1)

    def second(w1):
        h2 = jnp.matmul(basis, w1, precision=precision) * mask
        w2 = w1 - jnp.matmul(h2, basis, precision=precision)
        return w2, h2, jnp.linalg.norm(w2) > _BREAKDOWN_RATIO * n1

    def enough(w1):
        return w1, jnp.zeros_like(h1), jnp.bool_(True)

    w2, h2, ok = lax.cond(n1 < _DGKS_RATIO * n0, second, enough, w1)
    return w2, h0 + h1 + h2, ok


def _extend(matvec, params, basis, products, proj, j0, block, anorm, counter, key, precision, m,
            stop=None, min_fill=0):
    """Process columns ``j0, j0 + 1, …``: column ``j`` stores ``A q_j`` in ``products[j]`` (unless
    ``products`` is ``None``) and appends its residual as row ``j + block``.

    Runs to column ``m − 1``, or — when ``stop(proj, n)`` is given — until it says the first ``n``
    columns suffice; it is asked every ``_CHECK_EVERY`` columns once ``n ≥ min_fill``.
    Returns ``(basis, products, proj, betas [m], anorm, counter, n)``; ``counter`` counts matvecs
    (and salts the random vectors of invariant-subspace restarts), ``n`` is the number of
    processed columns.
    """
    dtype = basis.dtype
    eps = jnp.finfo(dtype).eps
    rows = jnp.arange(basis.shape[0])
    betas = jnp.zeros((m,), dtype)

    def step(carry):
        j, basis, products, proj, betas, anorm, counter, _ = carry
        w0 = apply_operator(matvec, basis[j], params)
        mask = (rows < j + block).astype(dtype)  # the filled rows
        w, h, ok = _step_orthogonalize(w0, basis, j, block, mask, precision)
        beta = jnp.linalg.norm(w)
        anorm = jnp.maximum(anorm, jnp.linalg.norm(w0))
        invariant = ~ok | (beta <= eps * anorm)
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
        if products is not None:
            products = products.at[j].set(w0)
        betas = betas.at[j].set(beta)
        n = j + 1
        if stop is None:
            halt = jnp.bool_(False)
        else:
            due = (n >= min_fill) & ((n - j0) % _CHECK_EVERY == 0) & (n < m)
            halt = lax.cond(due, lambda: stop(proj, n), lambda: jnp.bool_(False))
        return n, basis, products, proj, betas, anorm, counter + 1, halt

    init = (jnp.asarray(j0, jnp.int32), basis, products, proj, betas, anorm, counter, jnp.bool_(False))
    n, basis, products, proj, betas, anorm, counter, _ = lax.while_loop(
        lambda c: (c[0] < m) & ~c[-1], step, init)
    return basis, products, proj, betas, anorm, counter, n


def _ritz(proj: Array, m: int, n):
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


def _coupling(proj: Array, m: int, n, b_max: int, block):
    """``B`` ``[b_max, m]``: how the residual rows ``n … n+b−1`` couple to the first ``n`` columns."""
    b = lax.dynamic_slice(proj, (n, jnp.zeros_like(n)), (b_max, proj.shape[1]))[:, :m]
    live = jnp.arange(b_max) < block
    return b * (live[:, None] & (jnp.arange(m) < n)[None, :])


# ----------------------------------------------------------------------------------------------
# public API


def lanczos_tridiag(matvec: Callable, v0: Array, num_iters: int, *, params=(), key=None,
                    precision=lax.Precision.HIGHEST) -> LanczosDecomp:
    r"""``num_iters`` steps of Lanczos with full reorthogonalisation from ``v0`` (as in the module docstring).

    Returns ``Q`` ``[m, P]``, ``α`` ``[m]``, ``β`` ``[m]`` and ``q_m`` ``[P]`` with

    .. math::  A Q^\top = Q^\top T + \beta_{m-1} q_m e_{m-1}^\top, \qquad Q Q^\top = I,

    ``T = tridiag(β_{:m-1}, α, β_{:m-1})``, to rounding. An invariant subspace (``β_j ≈ 0``) is
    continued with a random vector orthogonal to the basis (drawn from ``key``) and ``β_j = 0``.
    ``matvec(v, *params)`` as in :func:`top_k_eigenpairs`; dtype of ``v0`` is the working dtype.
    """
    v0, params, key = _check_common(matvec, v0, params, key)
    dim = v0.shape[0]
    m = as_int("num_iters", num_iters)
    if not 1 <= m <= dim:
        raise ValueError(f"num_iters={m} must satisfy 1 <= num_iters <= P (P={dim})")
    dtype = v0.dtype
    basis = jnp.zeros((m + 1, dim), dtype).at[0].set(_start_vector(v0, jax.random.fold_in(key, 0)))
    proj = jnp.zeros((m + 1, m + 1), dtype)
    basis, _, proj, betas, _, _, _ = _extend(matvec, params, basis, None, proj, 0, 1,
                                             jnp.zeros((), dtype), jnp.zeros((), jnp.int32),
                                             jax.random.fold_in(key, 1), precision, m)
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
      tol: converged when ``‖A v_i − θ_i v_i‖ ≤ tol·s`` for every ``i ≤ k``, with the scale
        ``s = max(|θ_1|, |θ_min|)`` (``θ_min`` the lowest Ritz value of the basis: ``|θ_1|`` for a
        positive semi-definite ``A``, the operator's norm where negative eigenvalues dominate).
      max_restarts: restarts allowed after the first pass (static), locking passes included.
      key: PRNG key for the random vectors of invariant-subspace and locking restarts; default a
        fixed key, so results are reproducible for given ``key`` and ``v0``.
      precision: of every product with the basis (Gram–Schmidt, Ritz vectors).
      multiplicity_check: make the locking passes that find a second copy of a degenerate
        eigenvalue inside the top k (static; default True). The first costs about ``(m − k)/2``
        matvecs (45 for ``k = 30``); turn it off only when the top k are known to be simple.

    Returns:
      :class:`EigResult`. Its ``residuals`` are true residuals ``‖A v − θ v‖`` of the returned
      pairs, from the stored products of the operator; ``converged`` is ``residuals ≤ tol·scale``,
      the same test that ends the iteration; ``num_matvecs`` counts every product.

    The algorithm (thick restart, exact arrow coupling, invariant subspaces, locking passes that
    detect missed copies of degenerate eigenvalues) is described in the module docstring. Works
    under ``jax.jit`` (``matvec``, ``k``, ``num_iters``, ``max_restarts`` static) and ``jax.vmap``
    over ``v0`` and ``params``.
    """
    v0, params, key = _check_common(matvec, v0, params, key)
    dim = v0.shape[0]
    k = as_int("k", k)
    if not 1 <= k < dim:
        raise ValueError(f"k={k} must satisfy 1 <= k < P (P={dim}); use numpy.linalg.eigh for the full spectrum")
    m = _check_num_iters(num_iters, k, dim)
    max_restarts = as_int("max_restarts", max_restarts)
    if max_restarts < 0:
        raise ValueError(f"max_restarts={max_restarts} must be >= 0")
    if isinstance(tol, (int, float)) and not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol={tol!r} must be a finite number >= 0")
    sizes = _Sizes.of(k, m, dim, bool(multiplicity_check))
    solver = _Solver(matvec, params, sizes, jnp.asarray(tol, v0.dtype), max_restarts, precision, key)
    st = lax.while_loop(lambda st: ~st.done, solver.iterate, solver.initial_state(v0))
    return solver.result(st)


class _Sizes(NamedTuple):
    """The static shape of a solve."""

    k: int  # pairs wanted
    m: int  # Krylov basis size
    b_max: int  # most rows of the residual block (1 + locking passes)
    n_rows: int  # m + b_max: rows of the basis and product arrays
    k_keep: int  # Ritz vectors kept by a thick restart, k + (m − k)//2
    allow_lock: bool  # locking passes are made

    @classmethod
    def of(cls, k: int, m: int, dim: int, multiplicity_check: bool) -> "_Sizes":
        # rows m … m+b_max-1 hold the residual block; they must fit in R^P to be orthonormal
        b_max = max(1, min(1 + min(k, _MAX_LOCKING_PASSES), dim - m))
        return cls(k, m, b_max, m + b_max, k + (m - k) // 2, b_max >= 2 and multiplicity_check)


class _Certificate(NamedTuple):
    """The top ``k`` Ritz pairs of a basis, with what decides convergence."""

    theta: Array  # [k] Ritz values, descending
    vectors: Array  # [k, P] unit Ritz vectors, largest-|entry| positive
    residuals: Array  # [k] ‖A v − θ v‖, A v from the stored products
    scale: Array  # [] max(|θ_1|, |θ_min|): the convergence scale
    converged: Array  # [k] bool, residuals ≤ tol·scale


def _convergence_scale(theta: Array, n) -> Array:
    """``max(|θ_1|, |θ_min|)`` over the first ``n`` Ritz values (descending): the spectral norm of
    ``T_n``, a lower bound of ``‖A‖`` that is ``|θ_1|`` whenever no negative Ritz value is larger."""
    low = theta[jnp.maximum(n - 1, 0)]
    return jnp.maximum(jnp.abs(theta[0]), jnp.abs(low))


class _Solver:
    """The steps of :func:`top_k_eigenpairs`: each a traced function of the loop state ``_State``.

    One iteration of the outer ``while_loop`` is: begin a pass (the first start, a thick restart,
    or a locking restart), extend the basis column by column until the early-exit estimate says the
    top ``k`` may have converged (or to ``m``), certify the top ``k`` with their true residuals from
    the stored products, and decide what to do next. The certificate alone decides convergence, so
    the early exit and the returned ``converged`` flags are the same test.
    """

    def __init__(self, matvec, params, sizes: _Sizes, tol, max_restarts: int, precision, key):
        self.matvec, self.params, self.sz, self.tol = matvec, params, sizes, tol
        self.max_restarts, self.precision = max_restarts, precision
        self.key_start, self.key_invariant, self.key_lock = (jax.random.fold_in(key, i) for i in range(3))

    def mm(self, a, b):
        return jnp.matmul(a, b, precision=self.precision)

    def pad(self, s):  # [m, c] -> [n_rows, c], zero rows for the residual block
        return jnp.zeros((self.sz.n_rows, s.shape[1]), s.dtype).at[:self.sz.m].set(s)

    def initial_state(self, v0) -> _State:
        sz, dtype = self.sz, v0.dtype
        basis0 = jnp.zeros((sz.n_rows, v0.shape[0]), dtype).at[0].set(_start_vector(v0, self.key_start))
        return _State(
            basis=basis0, products=jnp.zeros_like(basis0), proj=jnp.zeros((sz.n_rows, sz.n_rows), dtype),
            theta=jnp.zeros((sz.m,), dtype), ritz=jnp.zeros((sz.m, sz.m), dtype), ref=jnp.zeros((sz.k,), dtype),
            anorm=jnp.zeros((), dtype), block=jnp.int32(1), filled=jnp.int32(0), action=jnp.int32(_START),
            verified=jnp.bool_(False), num_matvecs=jnp.int32(0), num_restarts=jnp.int32(0), done=jnp.bool_(False))

    # -- beginning a pass ---------------------------------------------------------------------

    def restart(self, st: _State, keep):
        """Keep the top ``keep ≤ k_keep`` (traced) Ritz vectors and their products, then the residual
        block with its arrow coupling ``B S``."""
        sz, dim, dtype = self.sz, st.basis.shape[1], st.basis.dtype
        cols = (jnp.arange(sz.k_keep) < keep).astype(dtype)
        s = st.ritz[:, :sz.k_keep] * cols
        y = self.mm(self.pad(s).T, st.basis)  # [k_keep, P], rows ≥ keep zero
        ay = self.mm(self.pad(s).T, st.products)  # A y, by linearity from the stored products
        res = lax.dynamic_slice(st.basis, (st.filled, jnp.int32(0)), (sz.b_max, dim))  # [b_max, P]
        basis = lax.dynamic_update_slice(st.basis.at[:sz.k_keep].set(y), res, (keep, jnp.int32(0)))
        products = st.products.at[:sz.k_keep].set(ay)
        coupling = self.mm(_coupling(st.proj, sz.m, st.filled, sz.b_max, st.block), s)  # [b_max, k_keep]
        proj = jnp.zeros((sz.n_rows, sz.n_rows), dtype)
        proj = proj.at[jnp.arange(sz.k_keep), jnp.arange(sz.k_keep)].set(st.theta[:sz.k_keep] * cols)
        proj = lax.dynamic_update_slice(proj, coupling, (keep, jnp.int32(0)))
        proj = lax.dynamic_update_slice(proj, coupling.T, (jnp.int32(0), keep))
        return basis, products, proj

    def begin_start(self, st):
        return st.basis, st.products, jnp.zeros_like(st.proj), jnp.int32(0), st.block, st.ref

    def begin_thick(self, st):
        basis, products, proj = self.restart(st, jnp.int32(self.sz.k_keep))
        return basis, products, proj, jnp.int32(self.sz.k_keep), st.block, st.ref

    def begin_lock(self, st):
        """Keep the converged vectors, the residual block and one fresh random vector (block + 1);
        ``max((m − k)/4, _LOCK_STEPS)`` columns per start row, within ``m − k`` in all."""
        sz = self.sz
        block = st.block + 1
        keep = jnp.clip(sz.m - block * max((sz.m - sz.k) // 4, _LOCK_STEPS), sz.k, sz.k_keep).astype(jnp.int32)
        basis, products, proj = self.restart(st, keep)
        filled = (jnp.arange(sz.n_rows) < keep + st.block).astype(basis.dtype)
        fresh = _random_orthogonal(jax.random.fold_in(self.key_lock, st.block), basis, filled, self.precision)
        basis = lax.dynamic_update_slice(basis, fresh[None], (keep + st.block, jnp.int32(0)))
        return basis, products, proj, keep, block, st.theta[:sz.k]

    # -- one pass ---------------------------------------------------------------------------------

    def estimates(self, proj, n, block, s):
        """``‖B s_i‖`` of the top k: the recurrence's residual estimates (exact up to rounding)."""
        b = _coupling(proj, self.sz.m, n, self.sz.b_max, block)
        return jnp.linalg.norm(self.mm(b, s[:, :self.sz.k]), axis=0)

    def run_pass(self, st, basis, products, proj, j0, block, is_lock):
        """Extend the basis from column ``j0``; a pass that is not a locking pass ends as soon as the
        estimates of the top k meet the tolerance (checked from ``k_keep`` columns on)."""
        sz, tol = self.sz, self.tol

        def stop(proj, n):
            theta, s = _ritz(proj, sz.m, n)
            return jnp.all(self.estimates(proj, n, block, s) <= tol * _convergence_scale(theta, n))

        return _extend(self.matvec, self.params, basis, products, proj, j0, block, st.anorm, st.num_matvecs,
                       self.key_invariant, self.precision, sz.m, stop=stop,
                       min_fill=jnp.where(is_lock, sz.m, sz.k_keep))

    # -- certificate and decision -------------------------------------------------------------------

    def certify(self, basis, products, theta, ritz, filled) -> _Certificate:
        """The top k Ritz pairs with their true residuals ``‖A v − θ v‖``: ``A v = Sᵀ (A Q)`` by
        linearity from the operator's own stored outputs, so no matvec is spent."""
        k = self.sz.k
        s = self.pad(ritz[:, :k])
        vecs = self.mm(s.T, basis)  # [k, P], one matmul
        applied = self.mm(s.T, products)
        norms = jnp.linalg.norm(vecs, axis=1, keepdims=True)
        peak = jnp.take_along_axis(vecs, jnp.argmax(jnp.abs(vecs), axis=1)[:, None], axis=1)
        sign = jnp.where(peak < 0, -1, 1).astype(vecs.dtype) / jnp.where(norms > 0, norms, 1)
        vecs, applied = vecs * sign, applied * sign
        residuals = jnp.linalg.norm(applied - theta[:k, None] * vecs, axis=1)
        scale = _convergence_scale(theta, filled)
        return _Certificate(theta[:k], vecs, residuals, scale, residuals <= self.tol * scale)

    def iterate(self, st: _State) -> _State:
        sz = self.sz
        basis, products, proj, j0, block, ref = lax.switch(
            st.action, [self.begin_start, self.begin_thick, self.begin_lock], st)
        is_lock = st.action == _LOCK
        basis, products, proj, _, anorm, num_matvecs, filled = self.run_pass(
            st, basis, products, proj, j0, block, is_lock)
        theta, s = _ritz(proj, sz.m, filled)
        cert = self.certify(basis, products, theta, s, filled)
        conv = jnp.all(cert.converged)
        eps = jnp.finfo(basis.dtype).eps
        rise = jnp.max(theta[:sz.k] - ref)
        found_new = is_lock & (rise > self.tol * cert.scale + 100 * eps * jnp.max(jnp.abs(theta[:sz.k])))
        verified = jnp.where(is_lock, ~found_new, st.verified)
        can_lock = sz.allow_lock & (block < sz.b_max)
        num_restarts = st.num_restarts + (st.action != _START).astype(jnp.int32)
        done = (conv & (verified | ~can_lock)) | (num_restarts >= self.max_restarts)
        action = jnp.where(conv & can_lock & ~verified, _LOCK, _THICK).astype(jnp.int32)
        return _State(basis, products, proj, theta, s, ref, anorm, block, filled, action, verified, num_matvecs,
                      num_restarts, done)

    def result(self, st: _State) -> EigResult:
        cert = self.certify(st.basis, st.products, st.theta, st.ritz, st.filled)
        return EigResult(cert.theta, cert.vectors, cert.residuals, cert.converged, st.num_matvecs,
                         st.num_restarts, cert.scale)
