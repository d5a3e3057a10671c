r"""``python -m hessjax.report OUT [--id ID]``: plots, derived tables and a one-page summary of a sweep.

Reads what :mod:`hessjax.sweep` (or the torch pipeline, :mod:`hessjax.bridges.torch_pipeline`) wrote
into ``OUT`` — the Zarr store ``ID.zarr`` if there is one, otherwise the per-λ CSV/npy files — and
writes into ``OUT/report-ID/`` (never into the store)::

    derived.csv / derived.json     per-λ metrics, outliers, gap, overlaps and branch ids (below)
    eigenvalues.{png,svg}          top-k eigenvalues vs λ (log y) with the penalty's 2λ for reference
    outliers.{png,svg}             λ₁, the number of outliers above the bulk, the gap λ₁/λ_k
    performance.{png,svg}          train/test loss and test accuracy
    distance.{png,svg}             ‖θ − θ_ref‖ and ‖∇L_eff‖
    overlaps.{png,svg}             eigenvector overlaps between neighbouring λ
    branches.{png,svg}             eigenvalue branches followed through crossings
    trace / density / bottom       only when the store has those arrays (see :data:`EXTRA_ARRAYS`)
    summary.md                     headline numbers, the definitions and every plot

A sweep still running is fine: only rows whose ``done`` flag is set (store) or λ listed in
``Model-ID.csv`` (files) are used. Eigenvectors are read one λ at a time (two ``[k, P]`` arrays in
memory at once).

**Definitions.** With ``λ`` the penalty and ``λ_1 ≥ … ≥ λ_k`` the top-k eigenvalues of ``∇²L_eff``:

* *data curvature* ``μ_i = λ_i − 2λ`` (the penalty adds exactly ``2λI``);
* *outliers above the bulk*: ``n_out = #{i : μ_i > c · median(μ_1 … μ_k)}`` with ``c`` =
  ``--outlier-factor`` (default 3). The median of the top k stands in for the upper bulk; the count
  is NaN when that median is ≤ 0, and it saturates near ``k/2`` (for ``c ≥ 1`` at most half of the
  top k can exceed their median), which means k is too small to reach the bulk;
* *gap* ``λ_1 / λ_k`` (NaN when ``λ_k ≤ 0``);
* *overlap* between neighbouring finished λ ``a < b`` (consecutive among those with eigenvectors; a
  diverged λ is stepped over): ``O_ij = |⟨v_i(a), v_j(b)⟩|`` (k × k);
* *branches*: ``scipy.optimize.linear_sum_assignment`` on ``−O`` pairs each eigenvector at ``b`` with
  one at ``a``, maximising the summed overlap; a pair with ``O_ij ≥ --min-overlap`` (default 0.5)
  continues the branch of ``i``, otherwise ``j`` starts a new branch (a direction that entered the
  top k). Branch ids count from 0 in order of appearance (at the first λ branch ``i`` is eigenvalue
  ``i + 1``); ``-1`` marks an eigenvalue without a branch (NaN, or no eigenvectors at that λ). A
  branch follows one curvature direction through crossings, where the eigenvalue index of that
  direction changes; a *crossing* pair is a neighbouring pair across which some branch changes index.
  Without any eigenvectors (``--eigenvectors none`` and no store) branches are the indices.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import results
from .results import UsageError, lambda_label

__all__ = [
    "DEFAULT_MIN_OVERLAP",
    "DEFAULT_OUTLIER_FACTOR",
    "EXTRA_ARRAYS",
    "Derived",
    "ReportResult",
    "SweepData",
    "compute_derived",
    "find_run_ids",
    "gap_ratio",
    "load_sweep",
    "main",
    "make_figures",
    "match_branches",
    "outlier_counts",
    "overlap_matrix",
    "render_report",
    "write_report",
]

DEFAULT_OUTLIER_FACTOR = 3.0
DEFAULT_MIN_OVERLAP = 0.5
#: Optional arrays of the store that get their own plot: name -> dimension names.
EXTRA_ARRAYS = {
    "trace": ("lambda",),  # Hutchinson estimate of tr ∇²L_eff
    "trace_stderr": ("lambda",),  # its standard error
    "density": ("lambda", "grid"),  # SLQ spectral density on density_grid, integrating to 1
    "density_grid": ("grid",),  # the grid (coordinate), ascending
    "bottom_eigenvalues": ("lambda", "bottom"),  # smallest eigenvalues, ascending
}
METRICS = ("train_loss", "test_loss", "test_accuracy", "grad_norm", "distance_to_anchor", "max_residual", "epochs",
           "converged", "diverged")
FORMATS = ("png", "svg")
_LABEL_RE = r"[0-9]+(?:\.[0-9]+)?"


# --------------------------------------------------------------------------------------------- reading


@dataclasses.dataclass
class SweepData:
    """The finished λ of one run, ascending; eigenvectors are read lazily, one λ at a time."""

    run_id: str
    source: str  # "zarr" or "csv"
    lambdas: np.ndarray  # [n] float64 ascending, finished λ only
    metrics: dict[str, np.ndarray]  # name -> [n] float64 (NaN where unknown), names from METRICS
    eigenvalues: np.ndarray  # [n, k] float64, largest first, NaN-padded
    total_lambdas: int  # λ in the grid so far (finished or not), as far as the files tell
    n_params: int | None = None
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # EXTRA_ARRAYS found, rows as lambdas
    vector_reader: Callable[[int], np.ndarray | None] | None = None  # i -> [k, P] rows, or None

    @property
    def k(self) -> int:
        return int(self.eigenvalues.shape[1])

    def eigenvectors(self, i: int) -> np.ndarray | None:
        """``[k, P]`` float32 eigenvectors of the i-th finished λ (row j = eigenvector j+1), or ``None``
        when there are none (not written, or NaN as for a diverged λ)."""
        if self.vector_reader is None:
            return None
        vecs = self.vector_reader(i)
        if vecs is None or vecs.ndim != 2 or vecs.shape[0] == 0 or not np.any(np.isfinite(vecs)):
            return None
        bad = ~np.all(np.isfinite(vecs), axis=1)  # NaN padding of missing pairs: zero, so they match nothing
        if bad.any():
            vecs = np.where(bad[:, None], 0, vecs).astype(vecs.dtype)
        return vecs


def find_run_ids(out: str | Path) -> list[str]:
    """Run ids with a store, a ``Model-ID.csv`` or eigenvalue files in ``out``, sorted."""
    out = Path(out)
    ids = set()
    for p in out.iterdir():
        name = p.name
        if name.startswith(results.TEMP_PREFIX):
            continue
        if name.endswith(".zarr") and (p / "zarr.json").is_file():
            ids.add(name[: -len(".zarr")])
        elif m := re.fullmatch(r"Model-(.+)\.csv", name):
            ids.add(m.group(1))
        elif m := re.fullmatch(rf"Hessian-eigenvalues-(.+)-{_LABEL_RE}\.csv", name):
            ids.add(m.group(1))
    return sorted(ids)


def _resolve(out: str | Path, run_id: str | None) -> tuple[Path, str]:
    out = Path(out)
    if not out.exists():
        raise UsageError(f"{str(out)!r} does not exist")
    if not out.is_dir():
        raise UsageError(f"{str(out)!r} is not a directory")
    ids = find_run_ids(out)
    if run_id is None:
        if not ids:
            raise UsageError(f"{str(out)!r} holds no sweep results (no ID.zarr, Model-ID.csv or eigenvalue files)")
        if len(ids) > 1:
            raise UsageError(f"{str(out)!r} holds several runs ({', '.join(ids)}); choose one with --id")
        return out, ids[0]
    if run_id not in ids:
        found = f" (found: {', '.join(ids)})" if ids else ""
        raise UsageError(f"{str(out)!r} holds no results of run {run_id!r}{found}")
    return out, run_id


def load_sweep(out: str | Path, run_id: str | None = None, *, source: str = "auto") -> SweepData:
    """The finished part of run ``run_id`` (default: the only run) in ``out``.

    ``source``: ``"zarr"`` (the store), ``"csv"`` (the per-λ files) or ``"auto"`` (the store if present).
    Raises :class:`UsageError` for a missing/empty directory, an ambiguous or unknown id, or no finished λ.
    """
    if source not in ("auto", "zarr", "csv"):
        raise UsageError(f"--source {source!r}: expected auto, zarr or csv")
    out, run_id = _resolve(out, run_id)
    store = results.store_path(out, run_id)
    has_store = (store / "zarr.json").is_file()
    if source == "zarr" and not has_store:
        raise UsageError(f"{str(store)!r} is not a Zarr store")
    data = _load_zarr(store, run_id) if has_store and source != "csv" else _load_files(out, run_id)
    if data.lambdas.size == 0:
        raise UsageError(f"run {run_id!r} in {str(out)!r} has no finished λ yet")
    return data


def _load_zarr(path: Path, run_id: str) -> SweepData:
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r", use_consolidated=False)  # fresh metadata mid-sweep
        lam = np.asarray(group["lambda"][:], np.float64)
        done = np.asarray(group["done"][:], bool)
    except (KeyError, ValueError, OSError) as err:
        raise UsageError(f"{str(path)!r} is not a readable sweep store: {err}") from None
    n = min(lam.size, done.size)  # the coordinate grows last when the grid is extended
    rows = np.flatnonzero(done[:n] & np.isfinite(lam[:n]))
    rows = rows[np.argsort(lam[rows], kind="stable")]
    names = set(group.array_keys())

    def take(name: str) -> np.ndarray:
        return np.asarray(group[name][:n])[rows]

    metrics = {m: take(m).astype(np.float64) for m in METRICS if m in names}
    eigenvalues = take("eigenvalues").astype(np.float64) if "eigenvalues" in names else np.zeros((rows.size, 0))
    extras = {}
    for name, dims in EXTRA_ARRAYS.items():
        if name in names:
            extras[name] = (take(name) if dims[0] == "lambda" else np.asarray(group[name][:])).astype(np.float64)
    if "density" not in extras and {"slq_nodes", "slq_weights"} <= names and rows.size:
        extras.update(slq_to_density(take("slq_nodes"), take("slq_weights")))
    reader = None
    if "eigenvectors" in names:
        vectors = group["eigenvectors"]

        def reader(i: int) -> np.ndarray:
            return np.asarray(vectors[int(rows[i])])

    n_params = group.attrs.get("n_params")
    n_params = None if n_params is None else int(n_params)
    return SweepData(run_id, "zarr", lam[rows], metrics, eigenvalues, int(n), n_params, extras, reader)


def slq_to_density(nodes: np.ndarray, weights: np.ndarray, num: int = 400) -> dict[str, np.ndarray]:
    """``density`` ``[λ, grid]`` and ``density_grid`` ``[grid]`` from a sweep's raw SLQ nodes and
    weights ``[λ, probe, node]`` (``--density``): one grid spanning every λ's nodes (5% margin), each
    node broadened by a Gaussian of width ``(grid span) / 200``, normalised to integrate to 1."""
    from .spectral import density_on_grid

    finite = nodes[np.isfinite(nodes)]
    lo, hi = float(finite.min()), float(finite.max())
    span = max(hi - lo, 1e-12)
    grid = np.linspace(lo - 0.05 * span, hi + 0.05 * span, num)
    sigma = span / 200
    dens = np.stack([np.asarray(density_on_grid(n, w, grid, sigma)) if np.isfinite(n).all() else np.full(num, np.nan)
                     for n, w in zip(nodes, weights)])
    return {"density": dens, "density_grid": grid}


def _parse_cell(text: str) -> float:
    text = text.strip()
    if text in ("True", "False"):
        return float(text == "True")
    try:
        return float(text)
    except ValueError:
        return math.nan


def _read_model_csv(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return np.zeros(0), {}
    key = next((c for c in ("lambda", "L2", "l2", "lam") if c in rows[0]), None)
    if key is None:
        raise UsageError(f"{str(path)!r} has no lambda column")
    lams = np.array([_parse_cell(r[key]) for r in rows])
    metrics = {m: np.array([_parse_cell(r[m]) for r in rows]) for m in METRICS if m in rows[0]}
    return lams, metrics


def _files_lambdas(out: Path, run_id: str) -> dict[float, str]:
    pattern = re.compile(rf"Hessian-eigenvalues-{re.escape(run_id)}-({_LABEL_RE})\.csv")
    found = {}
    for p in out.iterdir():
        if m := pattern.fullmatch(p.name):
            found[results.round_lambda(float(m.group(1)))] = m.group(1)
    return found


def _load_files(out: Path, run_id: str) -> SweepData:
    """Model-ID.csv (its rows are the finished λ), else the records, else the eigenvalue files present."""
    on_disk = _files_lambdas(out, run_id)
    model = _read_model_csv(results.model_csv_path(out, run_id))
    if model is not None:
        lams, metrics = model
    elif records := results.finished_lambdas(out, run_id):
        lams = np.array(list(records))
        metrics = {m: np.array([float(r.get(m, math.nan)) for r in records.values()]) for m in METRICS}
    else:
        lams, metrics = np.array(sorted(on_disk)), {}
    order = np.argsort(lams, kind="stable")
    lams = np.array([results.round_lambda(v) for v in lams[order]])
    metrics = {m: v[order] for m, v in metrics.items()}
    labels = [on_disk.get(lam, lambda_label(lam)) for lam in lams]

    values = []
    for label in labels:
        path = out / f"Hessian-eigenvalues-{run_id}-{label}.csv"
        values.append(np.loadtxt(path, skiprows=1, ndmin=1, dtype=np.float64) if path.is_file() else np.zeros(0))
    k = max((v.size for v in values), default=0)
    eigenvalues = np.full((lams.size, k), np.nan)
    for i, v in enumerate(values):
        eigenvalues[i, : v.size] = v

    if "grad_norm" not in metrics or np.all(np.isnan(metrics["grad_norm"])):
        norms = []
        for label in labels:
            path = out / f"gradients-{run_id}-{label}.csv"
            norms.append(float(np.linalg.norm(np.loadtxt(path, delimiter=",", skiprows=1, usecols=1, ndmin=1)))
                         if path.is_file() else math.nan)
        metrics["grad_norm"] = np.array(norms)

    n_params = None

    def reader(i: int) -> np.ndarray | None:
        nonlocal n_params
        npy = out / f"Hessian-eigenvectors-{run_id}-{labels[i]}.npy"
        text = out / f"Hessian-eigenvectors-{run_id}-{labels[i]}.csv"
        if npy.is_file():
            vecs = np.load(npy, allow_pickle=False).T  # stored [P, k]
        elif text.is_file():
            with open(text, encoding="utf-8") as f:
                ncol = len(f.readline().split(","))
            vecs = np.loadtxt(text, delimiter=",", skiprows=1, usecols=range(1, ncol), dtype=np.float32, ndmin=2).T
        else:
            return None
        n_params = vecs.shape[1]
        return np.ascontiguousarray(vecs, dtype=np.float32)

    total = len(set(lams.tolist()) | set(on_disk))
    return SweepData(run_id, "csv", lams, metrics, eigenvalues, total, n_params, {}, reader)


# --------------------------------------------------------------------------------------------- derived


def outlier_counts(eigenvalues: np.ndarray, lambdas: np.ndarray, factor: float = DEFAULT_OUTLIER_FACTOR):
    """``(counts [n], thresholds [n])``: ``#{i : λ_i − 2λ > factor · median_j(λ_j − 2λ)}`` per row.

    ``eigenvalues`` ``[n, k]`` (NaN ignored), ``lambdas`` ``[n]``. The threshold is in units of
    ``∇²L_eff`` (i.e. ``2λ + factor · median``); both are NaN where the median is ≤ 0 or undefined.
    """
    mu = np.asarray(eigenvalues, np.float64) - 2 * np.asarray(lambdas, np.float64)[:, None]
    counts = np.full(mu.shape[0], np.nan)
    thresholds = np.full(mu.shape[0], np.nan)
    for i, row in enumerate(mu):
        row = row[np.isfinite(row)]
        if row.size == 0:
            continue
        med = float(np.median(row))
        if med > 0:
            counts[i] = float(np.sum(row > factor * med))
            thresholds[i] = factor * med + 2 * float(lambdas[i])
    return counts, thresholds


def gap_ratio(eigenvalues: np.ndarray) -> np.ndarray:
    """``[n]`` ``λ_1 / λ_k`` over the finite eigenvalues of each row; NaN when ``λ_k ≤ 0`` or undefined."""
    ev = np.asarray(eigenvalues, np.float64)
    out = np.full(ev.shape[0], np.nan)
    for i, row in enumerate(ev):
        row = row[np.isfinite(row)]
        if row.size and row[-1] > 0:
            out[i] = row[0] / row[-1]
    return out


def overlap_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[k_a, k_b]`` ``|⟨a_i, b_j⟩| / (‖a_i‖ ‖b_j‖)`` of the rows of ``a`` and ``b`` (float64 products)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        o = np.abs(a @ b.T) / np.outer(na, nb)
    return np.nan_to_num(o, nan=0.0)


def match_branches(overlaps: Sequence[np.ndarray | None], k: int, min_overlap: float = DEFAULT_MIN_OVERLAP):
    """Follow eigenpairs across ``n = len(overlaps) + 1`` neighbouring λ.

    ``overlaps[t]`` is ``[k, k]`` ``O_ij = |⟨v_i(λ_t), v_j(λ_{t+1})⟩|`` or ``None`` (no eigenvectors).
    Returns ``(branch [n, k] int, matched [n, k] float)``: the branch id of eigenvalue ``j`` at ``λ_t``,
    and the overlap with which it continues its branch (NaN at ``t = 0``, for a new branch, and where
    ``overlaps[t-1]`` is ``None``). The optimal assignment maximises ``Σ O_{i σ(i)}``
    (``linear_sum_assignment`` on ``−O``); matches below ``min_overlap`` start new branches.
    """
    from scipy.optimize import linear_sum_assignment

    n = len(overlaps) + 1
    branch = np.zeros((n, k), np.int64)
    matched = np.full((n, k), np.nan)
    branch[0] = np.arange(k)
    next_id = k
    for t, o in enumerate(overlaps):
        fresh = np.ones(k, bool)
        if o is not None:
            o = np.asarray(o, np.float64)
            rows, cols = linear_sum_assignment(-o)
            for i, j in zip(rows, cols):
                if o[i, j] >= min_overlap:
                    branch[t + 1, j] = branch[t, i]
                    matched[t + 1, j] = o[i, j]
                    fresh[j] = False
        for j in np.flatnonzero(fresh):
            branch[t + 1, j] = next_id
            next_id += 1
    return branch, matched


@dataclasses.dataclass
class Derived:
    """What the report computes from a :class:`SweepData` (rows as ``data.lambdas``)."""

    n_outliers: np.ndarray  # [n] float (NaN: undefined)
    outlier_threshold: np.ndarray  # [n] in units of ∇²L_eff
    gap: np.ndarray  # [n] λ₁/λ_k
    branch: np.ndarray  # [n, k] int branch id of each eigenvalue, 0, 1, … in order of appearance; -1: none
    matched_overlap: np.ndarray  # [n, k] overlap with which eigenvalue j continues its branch (NaN: new)
    max_overlap: np.ndarray  # [n, k] max_i |⟨v_i(previous λ), v_j(λ)⟩| (NaN: no previous λ with vectors)
    pairs: list  # [(a, b, O [k, k])] neighbouring rows a < b that both have eigenvectors
    has_vectors: bool  # at least one such pair


def compute_derived(data: SweepData, *, outlier_factor: float = DEFAULT_OUTLIER_FACTOR,
                    min_overlap: float = DEFAULT_MIN_OVERLAP) -> Derived:
    """Outliers, gap, neighbour overlaps and branches; eigenvectors read one λ at a time.

    Neighbours are consecutive finished λ that have eigenvectors (a diverged λ, or one whose vector
    file is missing, is stepped over and its eigenvalues get branch ``-1``). Without any eigenvectors
    the branches are the eigenvalue indices. A NaN eigenvalue (fewer than k found) has branch ``-1``.
    """
    n, k = data.lambdas.size, data.k
    counts, thresholds = outlier_counts(data.eigenvalues, data.lambdas, outlier_factor)
    rows, pairs = [], []
    previous = None
    for i in range(n):
        current = data.eigenvectors(i)
        if current is None or current.shape[0] < k:
            continue
        if previous is not None and previous[1].shape == current.shape:
            pairs.append((previous[0], i, overlap_matrix(previous[1], current)[:k, :k]))
        elif previous is not None:  # a different P: cannot be compared
            pairs.append((previous[0], i, None))
        rows.append(i)
        previous = (i, current)
    branch = np.tile(np.arange(k), (n, 1))
    matched = np.full((n, k), np.nan)
    max_overlap = np.full((n, k), np.nan)
    if rows:
        branch[:] = -1
        sub_branch, sub_matched = match_branches([o for _, _, o in pairs], k, min_overlap)
        branch[rows], matched[rows] = sub_branch, sub_matched
        for _, b, o in pairs:
            if o is not None:
                max_overlap[b] = o.max(axis=0)
    branch[~np.isfinite(data.eigenvalues)] = -1
    relabel: dict[int, int] = {}
    for bid in branch.ravel():  # ids 0, 1, … in order of appearance
        if bid >= 0:
            relabel.setdefault(int(bid), len(relabel))
    branch = np.vectorize(lambda b: relabel.get(int(b), -1), otypes=[np.int64])(branch) if branch.size else branch
    pairs = [(a, b, o) for a, b, o in pairs if o is not None]
    return Derived(counts, thresholds, gap_ratio(data.eigenvalues), branch, matched, max_overlap, pairs, bool(pairs))


def _branches(data: SweepData, derived: Derived) -> dict[int, dict[str, list]]:
    """``{id: {"lambda": [...], "eigenvalue": [...], "index": [...]}}`` (index 1-based)."""
    out: dict[int, dict[str, list]] = {}
    for t in range(data.lambdas.size):
        for j in range(data.k):
            bid = int(derived.branch[t, j])
            if bid < 0 or not np.isfinite(data.eigenvalues[t, j]):
                continue
            b = out.setdefault(bid, {"lambda": [], "eigenvalue": [], "index": []})
            b["lambda"].append(float(data.lambdas[t]))
            b["eigenvalue"].append(float(data.eigenvalues[t, j]))
            b["index"].append(j + 1)
    return out


def _reordered_pairs(derived: Derived) -> int:
    """Neighbouring λ pairs across which some continuing branch changes its eigenvalue index (a crossing)."""
    count = 0
    for a, b, _ in derived.pairs:
        before = {int(bid): j for j, bid in enumerate(derived.branch[a])}
        if any(np.isfinite(derived.matched_overlap[b, j]) and before.get(int(bid), j) != j
               for j, bid in enumerate(derived.branch[b])):
            count += 1
    return count


# --------------------------------------------------------------------------------------------- figures


def _metric(data: SweepData, name: str) -> np.ndarray:
    return data.metrics.get(name, np.full(data.lambdas.size, np.nan))


def _positive(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x > 0, x, np.nan)


def _log_if_positive(ax, *arrays, span: float = 20.0) -> None:
    """Log y-scale when every finite value is positive and they span more than ``span``×."""
    vals = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if vals.size and np.all(vals > 0) and vals.max() > span * vals.min():
        ax.set_yscale("log")


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def make_figures(data: SweepData, derived: Derived) -> tuple[dict[str, Any], dict[str, int]]:
    """``({name: matplotlib Figure}, {name: number of data series})`` for every plot of the report.

    The series counts (also in ``derived.json``) are: eigenvalues k + 1 (the 2λ line), outliers 3,
    performance 3, distance 2, overlaps the number of heatmaps, branches the number of branches + 1,
    trace 3 (estimate, 2λP, data term; 1 without P), density the number of λ drawn, bottom the number of
    bottom eigenvalues + 1.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    lam = data.lambdas
    k = data.k
    marker = dict(marker="o", markersize=3 if lam.size < 60 else 0)
    two_lam = _positive(2 * lam)
    figs: dict[str, Any] = {}
    series: dict[str, int] = {}
    id_ = data.run_id

    # (1) top-k eigenvalues
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    for j in range(k):
        ax.plot(lam, _positive(data.eigenvalues[:, j]), color=cmap(j / max(k - 1, 1)), lw=1,
                label=(f"λ_{j + 1}" if j in (0, k - 1) else None), **marker)
    ax.plot(lam, two_lam, "k--", lw=1, label="2λ (penalty)")
    ax.set_yscale("log")
    ax.set(xlabel="λ", ylabel="eigenvalue of ∇²L_eff", title=f"{id_}: top-{k} Hessian eigenvalues")
    ax.legend(loc="best", fontsize=8)
    figs["eigenvalues"], series["eigenvalues"] = fig, k + 1

    # (2) λ1, outliers, gap
    fig = Figure(figsize=(7, 7), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    axes[0].plot(lam, data.eigenvalues[:, 0] if k else np.full(lam.size, np.nan), "C0", **marker)
    axes[0].set(ylabel="λ₁", title=f"{id_}: top eigenvalue, outliers above the bulk, gap")
    axes[1].plot(lam, derived.n_outliers, "C1", drawstyle="steps-mid", **marker)
    axes[1].set(ylabel="outliers")
    axes[1].yaxis.set_major_locator(MaxNLocator(integer=True))
    if np.isfinite(derived.n_outliers).any():
        axes[1].set_ylim(-0.5, max(1.0, float(np.nanmax(derived.n_outliers))) + 0.5)
    axes[2].plot(lam, derived.gap, "C2", **marker)
    _log_if_positive(axes[2], derived.gap)
    axes[2].set(ylabel="λ₁ / λ_k", xlabel="λ")
    figs["outliers"], series["outliers"] = fig, 3

    # (3) losses and accuracy
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    axes[0].plot(lam, _metric(data, "train_loss"), "C0", label="train", **marker)
    axes[0].plot(lam, _metric(data, "test_loss"), "C3", label="test", **marker)
    axes[0].set(ylabel="mean cross-entropy", title=f"{id_}: loss (no penalty) and accuracy")
    axes[0].legend(fontsize=8)
    axes[1].plot(lam, 100 * _metric(data, "test_accuracy"), "C2", **marker)
    axes[1].set(ylabel="test accuracy [%]", xlabel="λ")
    figs["performance"], series["performance"] = fig, 3

    # (4) distance to the anchor and gradient norm
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    dist, grad = _metric(data, "distance_to_anchor"), _metric(data, "grad_norm")
    axes[0].plot(lam, dist, "C4", **marker)
    _log_if_positive(axes[0], dist)
    axes[0].set(ylabel="‖θ − θ_ref‖", title=f"{id_}: distance to the anchor and gradient norm")
    axes[1].plot(lam, grad, "C5", **marker)
    _log_if_positive(axes[1], grad)
    axes[1].set(ylabel="‖∇L_eff‖", xlabel="λ")
    figs["distance"], series["distance"] = fig, 2

    # (5) overlaps: max overlap per index vs λ, and the full matrices of a few neighbouring pairs
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    chosen = _representative_pairs(derived)
    grid = fig.add_gridspec(1, 1 + max(len(chosen), 1), width_ratios=[2.2] + [1] * max(len(chosen), 1))
    ax = fig.add_subplot(grid[0, 0])
    if derived.has_vectors and lam.size > 1:
        im = ax.imshow(derived.max_overlap[1:].T, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="magma",
                       interpolation="nearest", extent=(-0.5, lam.size - 1.5, 0.5, k + 0.5))
        ticks = np.unique(np.linspace(0, lam.size - 2, min(6, lam.size - 1)).round().astype(int))
        ax.set_xticks(ticks, [f"{lam[t + 1]:.3g}" for t in ticks])
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="λ (later of the pair)", ylabel="eigenvalue index j",
               title="max_i |⟨v_i(previous λ), v_j(λ)⟩|")
        fig.colorbar(im, ax=ax, shrink=0.8)
        for c, t in enumerate(chosen):
            sub = fig.add_subplot(grid[0, 1 + c])
            a, b, o = derived.pairs[t]
            sub.imshow(o, vmin=0, vmax=1, cmap="magma", origin="upper",
                       interpolation="nearest", extent=(0.5, k + 0.5, k + 0.5, 0.5))
            sub.set(title=f"λ {lam[a]:.3g} → {lam[b]:.3g}", xlabel="j (later)", ylabel="i (earlier)")
        series["overlaps"] = 1 + len(chosen)
    else:
        _no_data(ax, "needs eigenvectors at two or more finished λ")
        series["overlaps"] = 0
    fig.suptitle(f"{id_}: eigenvector overlaps between neighbouring λ")
    figs["overlaps"] = fig

    # (6) branches
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    branches = _branches(data, derived)
    colors = matplotlib.colormaps["tab20"]
    for c, (bid, b) in enumerate(sorted(branches.items())):
        color = colors((2 * c) % 20 + (c // 10) % 2)  # ten dark hues first, then their light twins
        ax.plot(b["lambda"], _positive(np.asarray(b["eigenvalue"])), color=color, lw=1.2, **marker)
    ax.plot(lam, two_lam, "k--", lw=1, label="2λ (penalty)")
    ax.set_yscale("log")
    ax.set(xlabel="λ", ylabel="eigenvalue of ∇²L_eff",
           title=f"{id_}: {len(branches)} branches matched by eigenvector overlap"
           + ("" if derived.has_vectors else " (no eigenvectors: by index)"))
    ax.legend(loc="best", fontsize=8)
    figs["branches"], series["branches"] = fig, len(branches) + 1

    # extras
    if "trace" in data.extras:
        err = data.extras.get("trace_stderr")
        yerr = None if err is None else 2 * err
        trace = data.extras["trace"]
        if data.n_params:  # the penalty's share 2λP is exact in every probe: the data term has the same s.e.
            fig = Figure(figsize=(7, 6), layout="constrained")
            a0, a1 = fig.subplots(2, 1, sharex=True)
            a0.errorbar(lam, trace, yerr=yerr, fmt="o-", ms=3, capsize=2, label="Hutchinson estimate ± 2 s.e.")
            a0.plot(lam, 2 * lam * data.n_params, "k--", lw=1, label="2λP (the penalty's share)")
            a0.set(ylabel="tr ∇²L_eff", title=f"{id_}: Hessian trace")
            a0.legend(fontsize=8)
            a1.errorbar(lam, trace - 2 * lam * data.n_params, yerr=yerr, fmt="o-", ms=3, capsize=2, color="C1")
            a1.set(xlabel="λ", ylabel="tr ∇²(mean CE) = tr − 2λP")
            figs["trace"], series["trace"] = fig, 3
        else:
            fig = Figure(figsize=(7, 4.5), layout="constrained")
            ax = fig.add_subplot()
            ax.errorbar(lam, trace, yerr=yerr, fmt="o-", ms=3, capsize=2, label="Hutchinson estimate ± 2 s.e.")
            ax.set(xlabel="λ", ylabel="tr ∇²L_eff", title=f"{id_}: Hessian trace")
            ax.legend(fontsize=8)
            figs["trace"], series["trace"] = fig, 1
    if "density" in data.extras and "density_grid" in data.extras:
        dens, g = data.extras["density"], data.extras["density_grid"]
        fig = Figure(figsize=(11, 4.5), layout="constrained")
        a0, a1 = fig.subplots(1, 2)
        floor = 1e-8
        if lam.size > 1:
            im = a0.pcolormesh(g, lam, np.log10(np.maximum(dens, floor)), shading="nearest", cmap="viridis")
            fig.colorbar(im, ax=a0, label="log₁₀ density")
            a0.set(xlabel="eigenvalue", ylabel="λ", title="SLQ spectral density")
        else:
            _no_data(a0, "one finished λ: see the right panel")
        pick = np.unique(np.linspace(0, lam.size - 1, min(5, lam.size)).round().astype(int))
        for c, t in enumerate(pick):
            a1.plot(g, np.maximum(dens[t], floor), color=cmap(c / max(len(pick) - 1, 1)), label=f"λ={lam[t]:.3g}")
        a1.set_yscale("log")
        a1.set(xlabel="eigenvalue", ylabel="density", title="at a few λ")
        a1.legend(fontsize=8)
        fig.suptitle(f"{id_}: Hessian spectral density (Gaussian-broadened SLQ)")
        figs["density"], series["density"] = fig, len(pick)
    if "bottom_eigenvalues" in data.extras:
        bot = np.atleast_2d(data.extras["bottom_eigenvalues"])
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.add_subplot()
        for j in range(bot.shape[1]):
            ax.plot(lam, bot[:, j], color=cmap(j / max(bot.shape[1] - 1, 1)), lw=1,
                    label=("λ_min" if j == 0 else None), **marker)
        ax.plot(lam, 2 * lam, "k--", lw=1, label="2λ (penalty)")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set(xlabel="λ", ylabel="eigenvalue of ∇²L_eff", title=f"{id_}: bottom-{bot.shape[1]} eigenvalues")
        ax.legend(fontsize=8)
        figs["bottom"], series["bottom"] = fig, bot.shape[1] + 1
    return figs, series


def _representative_pairs(derived: Derived, most: int = 3) -> list[int]:
    """Neighbouring pairs to show in full: the first, the most mixed (least diagonal overlap), the last."""
    if not derived.pairs:
        return []
    last = len(derived.pairs) - 1
    mixed = min(range(last + 1), key=lambda t: float(np.mean(np.diag(derived.pairs[t][2]))))
    return sorted(dict.fromkeys([0, mixed, last]))[:most]


# --------------------------------------------------------------------------------------------- writing


def _plain(x):
    """JSON values: numpy to Python, non-finite floats to null."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x if x is None or isinstance(x, str) else str(x)


def _columns(data: SweepData, derived: Derived) -> dict[str, np.ndarray]:
    n, k = data.lambdas.size, data.k
    cols: dict[str, np.ndarray] = {"lambda": data.lambdas}
    for m in ("train_loss", "test_loss", "test_accuracy", "grad_norm", "distance_to_anchor", "max_residual"):
        cols[m] = _metric(data, m)
    cols["lambda_1"] = data.eigenvalues[:, 0] if k else np.full(n, np.nan)
    cols["lambda_k"] = np.array([r[np.isfinite(r)][-1] if np.isfinite(r).any() else np.nan for r in data.eigenvalues])
    cols["gap"] = derived.gap
    cols["n_outliers"] = derived.n_outliers
    cols["outlier_threshold"] = derived.outlier_threshold
    if "trace" in data.extras:
        cols["trace"] = data.extras["trace"]
        cols["trace_stderr"] = data.extras.get("trace_stderr", np.full(n, np.nan))
        if data.n_params:
            cols["trace_data"] = data.extras["trace"] - 2 * data.lambdas * data.n_params
    if "bottom_eigenvalues" in data.extras:
        cols["lambda_min"] = np.atleast_2d(data.extras["bottom_eigenvalues"])[:, 0]
    for j in range(k):
        cols[f"eig_{j + 1}"] = data.eigenvalues[:, j]
    for j in range(k):
        cols[f"branch_{j + 1}"] = derived.branch[:, j]
    for j in range(k):
        cols[f"overlap_prev_{j + 1}"] = derived.matched_overlap[:, j]
    return cols


def _cell(v) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    return "" if math.isnan(v) else repr(v)


def _headline(data: SweepData, derived: Derived, branches: Mapping) -> list[tuple[str, str]]:
    lam = data.lambdas
    lo, hi = 0, lam.size - 1

    def at(values, fmt="{:.4g}") -> str:
        values = np.asarray(values, np.float64)
        text = [("—" if not np.isfinite(values[i]) else fmt.format(values[i])) for i in (lo, hi)]
        return text[0] if lo == hi else f"{text[0]} → {text[1]}"

    acc = _metric(data, "test_accuracy")
    rows = [
        ("run id / source", f"{data.run_id} / {'Zarr store' if data.source == 'zarr' else 'per-λ CSV files'}"),
        ("λ finished", f"{lam.size} of {data.total_lambdas}, λ ∈ [{lam[lo]:.4g}, {lam[hi]:.4g}]"),
        ("parameters P / k", f"{data.n_params if data.n_params else '?'} / {data.k}"),
        ("λ₁ (smallest → largest λ)", at(data.eigenvalues[:, 0] if data.k else np.full(lam.size, np.nan))),
        ("outliers above the bulk", at(derived.n_outliers, "{:.0f}")),
        ("gap λ₁/λ_k", at(derived.gap, "{:.3g}")),
        ("train loss", at(_metric(data, "train_loss"))),
        ("test loss", at(_metric(data, "test_loss"))),
        ("test accuracy", at(100 * acc, "{:.2f}%")),
    ]
    if np.isfinite(acc).any():
        best = int(np.nanargmax(acc))
        rows.append(("best test accuracy", f"{100 * acc[best]:.2f}% at λ = {lam[best]:.4g}"))
    rows += [
        ("‖θ − θ_ref‖", at(_metric(data, "distance_to_anchor"))),
        ("‖∇L_eff‖ (max)", "—" if not np.isfinite(_metric(data, "grad_norm")).any()
         else f"{np.nanmax(_metric(data, 'grad_norm')):.3g}"),
        ("branches / λ pairs with a crossing", f"{len(branches)} / {_reordered_pairs(derived)}"
         + ("" if derived.has_vectors else " (no eigenvectors)")),
    ]
    if derived.has_vectors:
        rows.append(("lowest matched overlap", f"{np.nanmin(derived.matched_overlap):.3f}"
                     if np.isfinite(derived.matched_overlap).any() else "—"))
    if "trace" in data.extras:
        rows.append(("Hessian trace", at(data.extras["trace"])))
    if "bottom_eigenvalues" in data.extras:
        rows.append(("λ_min", at(np.atleast_2d(data.extras["bottom_eigenvalues"])[:, 0])))
    return rows


@dataclasses.dataclass
class ReportResult:
    directory: Path  # OUT/report-ID
    files: list[Path]  # every file written
    derived: dict  # the content of derived.json
    figures: dict  # name -> matplotlib Figure (only with keep_figures=True)


def render_report(out: str | Path, run_id: str | None = None, *, source: str = "auto",
                  outlier_factor: float = DEFAULT_OUTLIER_FACTOR, min_overlap: float = DEFAULT_MIN_OVERLAP,
                  formats: Sequence[str] = FORMATS, keep_figures: bool = False) -> ReportResult:
    """Read run ``run_id`` of ``out`` (:func:`load_sweep`) and write its report into ``out/report-ID/``."""
    _check_settings(outlier_factor, min_overlap, formats)
    data = load_sweep(out, run_id, source=source)
    return write_report(data, Path(out) / f"report-{data.run_id}", outlier_factor=outlier_factor,
                        min_overlap=min_overlap, formats=formats, keep_figures=keep_figures)


def _check_settings(outlier_factor, min_overlap, formats) -> None:
    if not (math.isfinite(outlier_factor) and outlier_factor > 0):
        raise UsageError(f"--outlier-factor {outlier_factor}: must be a positive number")
    if not 0 <= min_overlap <= 1:
        raise UsageError(f"--min-overlap {min_overlap}: must be in [0, 1]")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"--formats {','.join(formats)}: choose from {', '.join(FORMATS)}")


def write_report(data: SweepData, directory: str | Path, *, outlier_factor: float = DEFAULT_OUTLIER_FACTOR,
                 min_overlap: float = DEFAULT_MIN_OVERLAP, formats: Sequence[str] = FORMATS,
                 keep_figures: bool = False) -> ReportResult:
    """Compute the derived quantities of ``data`` and write every report file into ``directory``.

    Returns the files written, the content of ``derived.json`` and (``keep_figures=True``) the figures.
    """
    _check_settings(outlier_factor, min_overlap, formats)
    derived = compute_derived(data, outlier_factor=outlier_factor, min_overlap=min_overlap)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    cols = _columns(data, derived)
    lines = [",".join(cols)] + [",".join(_cell(c[i]) for c in cols.values()) for i in range(data.lambdas.size)]
    files.append(results.atomic_write(directory / "derived.csv",
                                      lambda tmp: tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")))

    figs, series = make_figures(data, derived)
    plots = {}
    for name, fig in figs.items():
        written = []
        for fmt in formats:
            path = directory / f"{name}.{fmt}"
            files.append(results.atomic_write(path, lambda tmp, fig=fig, fmt=fmt: fig.savefig(tmp, format=fmt,
                                                                                              dpi=120)))
            written.append(path.name)
        plots[name] = {"files": written, "series": series[name],
                       "lines": sum(len(ax.lines) for ax in fig.axes)}

    branches = _branches(data, derived)
    headline = _headline(data, derived, branches)
    report = {
        "run_id": data.run_id,
        "source": data.source,
        "k": data.k,
        "n_params": data.n_params,
        "n_lambdas": int(data.lambdas.size),
        "total_lambdas": data.total_lambdas,
        "settings": {"outlier_factor": outlier_factor, "min_overlap": min_overlap},
        "definitions": {
            "n_outliers": "#{i: λ_i − 2λ > outlier_factor · median over the top k of (λ_j − 2λ)}; "
                          "null when that median ≤ 0",
            "gap": "λ_1 / λ_k (null when λ_k ≤ 0)",
            "overlap_prev_j": "|⟨v_i(previous λ), v_j(λ)⟩| of the matched i (optimal assignment); "
                              "null for the first λ and for a new branch",
            "branch_j": "branch id of eigenvalue j: continued when the matched overlap ≥ min_overlap, else new",
        },
        "columns": cols,
        "max_overlap": derived.max_overlap,
        "branches": {str(b): v for b, v in branches.items()},
        "n_branches": len(branches),
        "reordered_pairs": _reordered_pairs(derived),
        "extras": sorted(data.extras),
        "plots": plots,
        "headline": dict(headline),
    }
    text = json.dumps(_plain(report), indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    files.append(results.atomic_write(directory / "derived.json", lambda tmp: tmp.write_text(text, encoding="utf-8")))

    md = _summary_markdown(data, headline, plots, outlier_factor, min_overlap, formats)
    files.append(results.atomic_write(directory / "summary.md", lambda tmp: tmp.write_text(md, encoding="utf-8")))
    if not keep_figures:
        figs = {}
    return ReportResult(directory, files, report, figs)


def _summary_markdown(data, headline, plots, outlier_factor, min_overlap, formats) -> str:
    fmt = "png" if "png" in formats else formats[0]
    out = [f"# Hessian sweep report: `{data.run_id}`", "", "| quantity | value |", "|---|---|"]
    out += [f"| {name} | {value} |" for name, value in headline]
    out += [
        "",
        "Definitions: λ is the penalty of L_eff = mean CE + λ‖θ − θ_ref‖², which adds exactly 2λI to the "
        "Hessian. *Outliers above the bulk*: eigenvalues with λ_i − 2λ > "
        f"{outlier_factor:g} × the median of λ_j − 2λ over the top {data.k} (saturates near k/2: then k is too "
        "small to reach the bulk). *Gap*: λ₁/λ_k. *Branches*: eigenvectors at neighbouring finished λ paired by "
        "an optimal assignment on |⟨v_i, v_j⟩|; a pair with overlap ≥ "
        f"{min_overlap:g} continues a branch, otherwise a new branch starts. Per-λ values are in "
        "`derived.csv`/`derived.json`.",
        "",
    ]
    titles = {
        "eigenvalues": "Top-k eigenvalues", "outliers": "λ₁, outliers and gap", "performance": "Loss and accuracy",
        "distance": "Distance to the anchor", "overlaps": "Eigenvector overlaps", "branches": "Eigenvalue branches",
        "trace": "Hessian trace", "density": "Spectral density", "bottom": "Bottom eigenvalues",
    }
    for name in plots:
        out += [f"## {titles.get(name, name)}", "", f"![{name}]({name}.{fmt})", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error:`` line (exit status 2), like every other refusal."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m hessjax.report",
                description="Plots, derived tables and a summary of a sweep's output directory, written into "
                            "OUT/report-ID/.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", metavar="OUT", help="the sweep's output directory (--out of the sweep)")
    p.add_argument("--id", dest="run_id", default=None, help="run id (default: the only run in OUT)")
    p.add_argument("--source", choices=("auto", "zarr", "csv"), default="auto",
                   help="read the Zarr store or the per-λ files (auto: the store if there is one)")
    p.add_argument("--outlier-factor", type=float, default=DEFAULT_OUTLIER_FACTOR,
                   help="an outlier's data curvature λ_i − 2λ exceeds this multiple of the top-k median")
    p.add_argument("--min-overlap", type=float, default=DEFAULT_MIN_OVERLAP,
                   help="a matched eigenvector pair with a smaller |overlap| starts a new branch")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma list of plot formats (png, svg)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    return p


def _require_matplotlib() -> None:
    """Refuse before anything is read or written when matplotlib (the ``plot`` extra) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("the report draws with matplotlib, which is not installed: "
                         "pip install -c constraints.txt -e '.[plot]' (or pip install matplotlib)") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 with one ``error:`` line on bad input."""
    args = build_parser().parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    try:
        _require_matplotlib()
        result = render_report(args.out, args.run_id, source=args.source, outlier_factor=args.outlier_factor,
                               min_overlap=args.min_overlap, formats=formats)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        d = result.derived
        print(f"report of {d['run_id']} ({d['n_lambdas']} of {d['total_lambdas']} λ, {d['source']}): "
              f"{len(result.files)} files in {result.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
