"""Adaptive λ refinement on constructed indicators with a known jump."""

from __future__ import annotations

import numpy as np
import pytest

from hessjax.refine import indicator_changes, midpoint, next_lambdas, subspace_distance


def _refine(indicator_fn, grid, budget, resolution, count=1):
    """Run the refinement loop as the sweep does: evaluate, propose, add, until nothing is proposed."""
    lams = sorted(grid)
    added = 0
    while added < budget:
        changes = indicator_changes("distance", [indicator_fn(v) for v in lams])
        new = next_lambdas(lams, changes, count=min(count, budget - added), resolution=resolution, threshold=0.1)
        if not new:
            break
        lams = sorted(lams + new)
        added += len(new)
    return lams, added


def test_refinement_closes_in_on_a_jump():
    """A distance that drops from 15 to 0.03 across λ* = 3.7e-3: the refined grid brackets λ* to the
    resolution, and adds no point where the indicator is flat."""
    jump = 3.7e-3
    distance = lambda lam: 15.0 if lam < jump else 0.03  # noqa: E731
    lams, added = _refine(distance, [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1], budget=40, resolution=0.02)
    below = max(v for v in lams if v < jump)
    above = min(v for v in lams if v > jump)
    assert (above - below) <= 0.02 * above  # bracketed to the resolution
    assert added < 40  # it stopped on resolution, not on the budget
    assert sorted(v for v in lams if v > 0.01) == [0.1] and sorted(v for v in lams if 0 < v < 1e-3) == [1e-5, 1e-4]


def test_budget_and_threshold_bound_the_refinement():
    distance = lambda lam: np.exp(-lam / 1e-3) + 0.01  # noqa: E731  a smooth decay: no jump
    lams, added = _refine(distance, [0.0, 1e-4, 1e-3, 1e-2], budget=5, resolution=1e-6, count=2)
    assert added == 5 and len(lams) == 9
    flat = [1.0, 1.0, 1.0, 1.0]
    assert next_lambdas([0.0, 0.1, 0.2, 0.3], indicator_changes("distance", flat), count=3, resolution=0.01,
                        threshold=0.1) == []


def test_largest_changes_first_and_exclusions():
    lams = [0.0, 0.01, 0.02, 0.04]
    changes = [0.5, 2.0, 1.0]
    assert next_lambdas(lams, changes, count=1, resolution=0.01) == [pytest.approx(np.sqrt(0.01 * 0.02))]
    two = next_lambdas(lams, changes, count=2, resolution=0.01)
    assert two == [pytest.approx(np.sqrt(0.01 * 0.02)), pytest.approx(np.sqrt(0.02 * 0.04))]
    skip = next_lambdas(lams, changes, count=1, resolution=0.01, exclude=[np.sqrt(0.01 * 0.02)])
    assert skip == [pytest.approx(np.sqrt(0.02 * 0.04))]
    assert midpoint(0.0, 0.01) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="ascending"):
        next_lambdas([0.1, 0.0], [1.0], count=1, resolution=0.1)


def test_nan_and_sign_changes_score_highest():
    changes = indicator_changes("distance", [1.0, np.nan, 1.0, 1.0])
    assert np.isinf(changes[0]) and np.isinf(changes[1]) and changes[2] == 0
    assert np.isinf(indicator_changes("mu1", [0.5, -0.1])[0])


def test_overlap_indicator_sees_subspaces_not_rotations():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((50, 6)))
    a = q[:, :3].T
    c, s = np.cos(0.7), np.sin(0.7)
    rotated = np.array([c * a[0] + s * a[1], -s * a[0] + c * a[1], a[2]])  # a rotation inside the subspace
    other = q[:, 3:].T
    assert subspace_distance(a, rotated) == pytest.approx(0.0, abs=1e-14)
    assert subspace_distance(a, other) == pytest.approx(1.0, abs=1e-14)
    half = np.array([a[0], a[1], other[0]])
    assert subspace_distance(a, half) == pytest.approx(1 / 3, abs=1e-14)
    changes = indicator_changes("overlap", [a, rotated, None, other])
    assert changes[0] == pytest.approx(0.0, abs=1e-14) and np.isinf(changes[1]) and np.isinf(changes[2])
