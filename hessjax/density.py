"""The spectral density from stochastic Lanczos quadrature nodes, on a grid: plain numpy, shared by the
report (which imports no JAX) and by anyone holding a sweep's ``slq_nodes``/``slq_weights``."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["density_on_grid", "slq_to_density"]


def slq_to_density(nodes: np.ndarray, weights: np.ndarray, num: int = 400) -> dict[str, np.ndarray]:
    """``density`` ``[λ, grid]`` and ``density_grid`` ``[grid]`` from a sweep's raw SLQ nodes and
    weights ``[λ, probe, node]`` (``--density``): one grid spanning every λ's nodes (5% margin), each
    node broadened by a Gaussian of width ``(grid span) / 200``, normalised to integrate to 1."""
    finite = nodes[np.isfinite(nodes)]
    lo, hi = float(finite.min()), float(finite.max())
    span = max(hi - lo, 1e-12)
    grid = np.linspace(lo - 0.05 * span, hi + 0.05 * span, num)
    sigma = span / 200
    dens = np.stack([np.asarray(density_on_grid(n, w, grid, sigma)) if np.isfinite(n).all() else np.full(num, np.nan)
                     for n, w in zip(nodes, weights)])
    return {"density": dens, "density_grid": grid}


def density_on_grid(nodes, weights, grid, sigma) -> np.ndarray:
    r"""Gaussian-broadened SLQ density on ``grid`` ``[G]`` (ascending), normalised to integrate to 1 on it.

    .. math::  φ(t) ∝ \frac1N \sum_{i,j} w_{ij}\, \frac{1}{\sqrt{2π}σ} e^{-(t − θ_{ij})^2 / 2σ^2},

    then divided by its trapezoid integral over ``grid`` (mass falling outside the grid is
    redistributed, so choose a grid reaching ~5σ beyond the extreme nodes; a density that is zero on
    the whole grid stays zero). ``nodes``/``weights`` are ``[..., m]`` (e.g. ``[N, m]`` from
    :func:`hessjax.spectral.slq_density`; every leading axis is averaged). Returns ``[G]`` in the dtype
    of ``nodes``. Plain numpy (arrays of any kind are accepted), so the report needs no JAX.
    """
    nodes = np.asarray(nodes)
    weights = np.asarray(weights, nodes.dtype)
    grid = np.asarray(grid, nodes.dtype)
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"grid must be a 1-D array of at least 2 points, got shape {grid.shape}")
    if nodes.shape != weights.shape:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} must have the same shape")
    if isinstance(sigma, (int, float)) and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma={sigma!r} must be a finite number > 0")
    sigma = np.asarray(sigma, nodes.dtype)
    theta = nodes.reshape(-1)
    w = weights.reshape(-1) / (nodes.size // nodes.shape[-1])
    gauss = np.exp(-0.5 * np.square((grid[:, None] - theta[None, :]) / sigma)) / (math.sqrt(2 * math.pi) * sigma)
    phi = gauss @ w
    total = np.sum(np.diff(grid) * (phi[1:] + phi[:-1]) / 2)  # the trapezoid rule (np.trapezoid needs numpy 2)
    return phi / np.where(total > 0, total, 1)
