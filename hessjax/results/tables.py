"""The per-λ CSV and npy files: gradients, eigenvalues, eigenvectors, SLQ density, bottom eigenvalues.

Float formats: float32 arrays are written ``%.9g`` (9 significant digits: reads back bitwise as the same
float32), anything else as float64 ``%.17g`` (reads back bitwise as the same float64).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .atomic import atomic_path, atomic_write, write_text
from .csvfloat import name_runs, write_float32_rows
from .grid import UsageError
from .paths import (bottom_eigenvalues_path, certificates_path, density_path, eigenvalues_path, eigenvectors_path,
                    ggn_eigenvalues_path, gradients_path)

__all__ = [
    "EIGVEC_FORMATS",
    "check_descending",
    "parameter_names",
    "write_bottom_eigenvalues_csv",
    "write_certificates_csv",
    "write_density_csv",
    "write_eigenvalues_csv",
    "write_eigenvectors",
    "write_ggn_eigenvalues_csv",
    "write_gradients_csv",
]

EIGVEC_FORMATS = ("csv", "npy", "none")
_CSV_BLOCK_ROWS = 8192


def parameter_names(shapes: Mapping[str, Sequence[int]]) -> np.ndarray:
    """``[P]`` names in PyTorch flat order: each state-dict key repeated over its tensor's ``prod(shape)``.

    ``shapes`` is ordered like the anchor's state dict, e.g. ``{k: tuple(v.shape) for k, v in sd.items()}``.
    """
    keys = list(shapes)
    sizes = [int(np.prod(shapes[k], dtype=np.int64)) for k in keys]
    return np.repeat(np.array(keys, dtype=object), sizes)


def _float_format(dtype) -> tuple[str, np.dtype]:
    return ("%.9g", np.dtype(np.float32)) if np.dtype(dtype) == np.float32 else ("%.17g", np.dtype(np.float64))


_RUNS_CACHE: list = [None, None]  # [names array, its name_runs]: a sweep passes the same names for every λ


def _runs(names: np.ndarray):
    if _RUNS_CACHE[0] is not names:
        _RUNS_CACHE[:] = [names, name_runs(names)]
    return _RUNS_CACHE[1]


def _check_names(names, n: int) -> np.ndarray:
    names = np.asarray(names, dtype=object)
    if names.shape != (n,):
        raise ValueError(f"parameter names: expected shape ({n},), got {names.shape}")
    bad = [s for s in set(_runs(names)[1]) if not isinstance(s, str) or any(c in s for c in ',"\n\r')]
    if bad:
        raise ValueError(f"parameter names must be strings without commas, quotes or newlines: {bad[:3]}")
    return names


def _write_table(path: Path, header: str, names: np.ndarray | None, values: np.ndarray, *, fast: bool = False) -> Path:
    """Write ``header`` then one row per ``values[i]`` (``[n, m]``), prefixed by ``names[i]`` if given.

    With ``fast`` (the per-parameter files: P rows) finite float32 values take the fixed-width path of
    :mod:`hessjax.results.csvfloat` (cells like ``+1.23456789e-05``, 5–8× faster: benchmarks/RESULTS.md §6); anything else is
    ``%``-formatted (``%.9g`` float32, ``%.17g`` float64). Either way every value reads back bit for bit.
    """
    fmt, dtype = _float_format(values.dtype)
    values = np.asarray(values, dtype=dtype)
    if fast and dtype == np.float32 and values.size and np.isfinite(values).all():
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write((header + "\n").encode("utf-8"))
            write_float32_rows(f, values, None if names is None else _runs(names))
        return path
    n, m = values.shape
    row = ("%s," if names is not None else "") + ",".join([fmt] * m) + "\n"
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(header + "\n")
        for lo in range(0, n, _CSV_BLOCK_ROWS):
            block = values[lo : lo + _CSV_BLOCK_ROWS].astype(np.float64)  # float32 -> float64 is exact
            cells = np.empty((block.shape[0], m + (names is not None)), dtype=object)
            if names is not None:
                cells[:, 0] = names[lo : lo + _CSV_BLOCK_ROWS]
                cells[:, 1:] = block
            else:
                cells[:] = block
            f.write((row * block.shape[0]) % tuple(cells.ravel().tolist()))  # one C-level format per block
    return path


def write_gradients_csv(out, run_id: str, lam: float, names, gradient) -> Path:
    """``gradients-ID-L2.csv``: header ``parameter,gradient``, ``P`` rows in PyTorch flat order.

    ``names`` ``[P]`` (see :func:`parameter_names`), ``gradient`` ``[P]`` (float32 -> ``%.9g``).
    """
    gradient = np.asarray(gradient)
    if gradient.ndim != 1:
        raise ValueError(f"gradient: expected shape [P], got {gradient.shape}")
    names = _check_names(names, gradient.shape[0])
    return _write_table(gradients_path(out, run_id, lam), "parameter,gradient", names, gradient[:, None], fast=True)


def check_descending(eigenvalues: np.ndarray) -> None:
    """``ValueError`` unless the finite ``eigenvalues`` are ordered largest first."""
    finite = eigenvalues[np.isfinite(eigenvalues)]
    if np.any(np.diff(finite) > 0):
        raise ValueError("eigenvalues must be ordered largest first")


def write_eigenvalues_csv(out, run_id: str, lam: float, eigenvalues) -> Path:
    """``Hessian-eigenvalues-ID-L2.csv``: header ``eigenvalue``, ``k`` rows, largest first (as given; checked)."""
    eigenvalues = np.asarray(eigenvalues)
    if eigenvalues.ndim != 1:
        raise ValueError(f"eigenvalues: expected shape [k], got {eigenvalues.shape}")
    check_descending(eigenvalues)
    return _write_table(eigenvalues_path(out, run_id, lam), "eigenvalue", None, eigenvalues[:, None])


def write_eigenvectors(out, run_id: str, lam: float, names, eigenvectors, fmt: str = "csv") -> Path | None:
    """Write the eigenvectors of λ; ``eigenvectors`` is ``[k, P]``: row ``j`` is eigenvector ``j+1``.

    * ``fmt="csv"``: ``Hessian-eigenvectors-ID-L2.csv``, header ``parameter,v1,...,vk``, ``P`` rows:
      column ``vj`` is eigenvector ``j`` (the transpose of the argument, as in the original pipeline).
    * ``fmt="npy"``: ``Hessian-eigenvectors-ID-L2.npy``, C-order ``[P, k]`` with the argument's dtype:
      the same layout as the CSV (column ``j`` = eigenvector ``j+1``, as ``numpy.linalg.eigh``).
    * ``fmt="none"``: nothing; returns ``None``.
    """
    if fmt not in EIGVEC_FORMATS:
        raise UsageError(f"--eigenvectors {fmt!r}: expected one of {', '.join(EIGVEC_FORMATS)}")
    if fmt == "none":
        return None
    vectors = np.asarray(eigenvectors)
    n = len(names)
    if vectors.ndim != 2 or vectors.shape[1] != n:
        raise ValueError(f"eigenvectors: expected shape [k, P={n}] (row j = eigenvector j+1), got {vectors.shape}")
    path = eigenvectors_path(out, run_id, lam, fmt)
    if fmt == "npy":
        return atomic_write(path, lambda tmp: np.save(tmp, np.ascontiguousarray(vectors.T)))
    names = _check_names(names, n)
    header = "parameter," + ",".join(f"v{j + 1}" for j in range(vectors.shape[0]))
    return _write_table(path, header, names, vectors.T, fast=True)


def write_density_csv(out, run_id: str, lam: float, nodes, weights) -> Path:
    """``Hessian-density-ID-L2.csv``: header ``probe,node,weight``, one row per SLQ node of each probe.

    ``nodes``/``weights`` ``[probes, m]`` (:class:`hessjax.spectral.SLQResult`), written with
    ``%.17g`` whatever their dtype.
    """
    nodes, weights = np.asarray(nodes), np.asarray(weights)
    if nodes.ndim != 2 or nodes.shape != weights.shape:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape}: expected the same shape [probes, m]")
    probe = np.repeat(np.arange(nodes.shape[0]), nodes.shape[1])
    values = np.stack([nodes.ravel(), weights.ravel()], axis=1).astype(np.float64)
    return _write_table(density_path(out, run_id, lam), "probe,node,weight", probe, values)


def _flagged_rows(header: str, values: np.ndarray, flags) -> str:
    """CSV text: ``header``, then each row of ``values`` as ``%.17g`` cells and its flag ``True``/``False``."""
    flags = np.asarray(flags, bool).reshape(-1)
    if flags.shape[0] != values.shape[0]:
        raise ValueError(f"expected {values.shape[0]} converged flags, got {flags.shape[0]}")
    lines = [header] + [",".join("%.17g" % v for v in row) + f",{bool(f)}" for row, f in zip(values, flags)]
    return "\n".join(lines) + "\n"


def write_bottom_eigenvalues_csv(out, run_id: str, lam: float, eigenvalues, residuals, converged) -> Path:
    """``Hessian-bottom-eigenvalues-ID-L2.csv``: header ``eigenvalue,residual,converged``, smallest
    first (as given): θ of ``∇²L_eff`` (μ + 2λ, float64 ``%.17g``), the true residual, and whether
    the pair met the solver's tolerance."""
    values = np.stack([np.asarray(eigenvalues, np.float64), np.asarray(residuals, np.float64)], axis=1)
    text = _flagged_rows("eigenvalue,residual,converged", values, converged)
    return write_text(bottom_eigenvalues_path(out, run_id, lam), text)


def write_ggn_eigenvalues_csv(out, run_id: str, lam: float, eigenvalues, residuals, converged) -> Path:
    """``GGN-eigenvalues-ID-L2.csv``: header ``eigenvalue,residual,converged``, largest first: the top k of
    the Gauss–Newton part G of the data Hessian (no penalty: G is the data term's), the true residual
    ``‖Gv − gv‖`` and whether the pair met the solver's tolerance."""
    values = np.stack([np.asarray(eigenvalues, np.float64), np.asarray(residuals, np.float64)], axis=1)
    check_descending(values[:, 0])
    return write_text(ggn_eigenvalues_path(out, run_id, lam), _flagged_rows("eigenvalue,residual,converged", values,
                                                                            converged))


def write_certificates_csv(out, run_id: str, lam: float, eigenvalues, data_eigenvalues, residuals, error_bounds,
                           converged) -> Path:
    """``Hessian-eigenvalue-certificates-ID-L2.csv``: what each written eigenvalue is worth, ``k`` rows.

    Header ``eigenvalue,data_eigenvalue,residual,error_bound,converged``: θ of ``∇²L_eff`` (as in
    ``Hessian-eigenvalues-ID-L2.csv``), μ = θ − 2λ of the data Hessian, the true residual
    ``‖Hv − μv‖`` of the written unit eigenvector, the bound on ``|μ − μ_true|``
    (:func:`hessjax.bounds.error_bounds`) and whether the pair met the solver's tolerance
    (``True``/``False``). Floats ``%.17g``.
    """
    values = np.stack([np.asarray(v, np.float64).reshape(-1)
                       for v in (eigenvalues, data_eigenvalues, residuals, error_bounds)], axis=1)
    check_descending(values[:, 0])
    text = _flagged_rows("eigenvalue,data_eigenvalue,residual,error_bound,converged", values, converged)
    return write_text(certificates_path(out, run_id, lam), text)
