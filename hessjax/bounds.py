r"""From the data Hessian's certified eigenpairs to what a sweep writes: the ``2λ`` shift in float64
and an error bound per eigenvalue. numpy only.

**The shift.** ``∇²L_eff = ∇²(mean CE) + 2λI``: the eigenvectors are the data Hessian's and each
eigenvalue is ``θ_i = μ_i + 2λ``. :func:`shifted` forms ``θ`` in float64 from the solver's ``μ``, so
``θ_i − 2λ`` gives ``μ_i`` back to float64 rounding (``1e-17·θ``), not to the working dtype's
(``6e-8·θ`` in float32, which is ``1e-4`` of ``μ ≈ 1e-3`` at ``λ = 0.1``).

**Error bounds.** For a unit vector ``v`` and ``μ = vᵀHv`` with residual ``r = ‖Hv − μv‖`` some
eigenvalue of ``H`` lies in ``[μ − r, μ + r]`` (Krylov–Weinstein). When the top ``k`` are complete
(no eigenvalue above ``μ_k`` missed — the solver's multiplicity check), the eigenvalue nearest
``μ_i`` is separated from the rest of the spectrum by at least
``δ_i = min_j (|μ_i − μ_j| − r_i − r_j)`` over the neighbours ``j = i ± 1`` inside the top ``k``
(``i = 1`` has nothing above it), and the Kato–Temple bound ``r_i²/δ_i`` holds. The bound written
is ``min(r_i, r_i²/δ_i)`` where ``δ_i > r_i`` and ``r_i`` elsewhere — always ``r_i`` for ``μ_k``,
whose lower neighbour is outside the top ``k``. These hold for the operator as the solver evaluates
it; the exact operator differs from that by its rounding (float32 products over 60,000 samples), so
:func:`error_bounds` adds ``rounding`` — the sweep passes ``OPERATOR_ROUNDING · ε · scale`` (ε of the
working dtype, ``scale`` the convergence scale ≈ |μ₁|): by Weyl's inequality an eigenvalue moves by at
most the norm of the perturbation. Against a float64 torch + scipy reference at 60,000 samples the
float32 eigenvalues were within 4.5 ε·|μ₁| (``benchmarks/shift_accuracy.py``), so 32 leaves a margin of 7.
"""

from __future__ import annotations

import numpy as np

__all__ = ["OPERATOR_ROUNDING", "error_bounds", "shifted"]

#: The float32 (or float64) evaluation error of a Hessian-vector product, in units of ε·|μ₁|, allowed for in the bounds.
OPERATOR_ROUNDING = 32.0


def shifted(values, lam) -> np.ndarray:
    """``values + 2λ`` in float64: the ``L_eff`` eigenvalues from the data Hessian's ``μ``."""
    return np.asarray(values, np.float64) + 2.0 * float(lam)


def error_bounds(mu, residuals, rounding: float = 0.0) -> np.ndarray:
    """Per-pair bound ``|μ_i − μ_true| ≤ bound_i`` for the top ``k`` (descending ``mu``), float64.

    ``min(r_i, r_i²/δ_i) + rounding`` with ``δ_i`` the gap to the neighbouring pairs less both
    residuals, where that gap exceeds ``r_i`` (see the module docstring); ``r_i + rounding`` for the
    last pair, and ``inf`` where a residual is not finite.
    """
    mu = np.asarray(mu, np.float64)
    r = np.asarray(residuals, np.float64)
    if mu.shape != r.shape or mu.ndim != 1:
        raise ValueError(f"mu {mu.shape} and residuals {r.shape} must be equal 1-D shapes")
    k = mu.size
    gap = np.full(k, np.inf)
    if k > 1:
        between = np.abs(np.diff(mu)) - r[:-1] - r[1:]  # pair (i, i+1)
        gap[:-1] = np.minimum(gap[:-1], between)  # lower neighbour of i < k
        gap[1:] = np.minimum(gap[1:], between)  # upper neighbour of i > 1
    gap[-1] = -np.inf  # μ_k: its lower neighbour is not among the top k
    with np.errstate(divide="ignore", invalid="ignore"):
        quadratic = np.where(gap > r, np.square(r) / gap, np.inf)
    bound = np.minimum(r, quadratic) + float(rounding)
    return np.where(np.isfinite(r), bound, np.inf)
