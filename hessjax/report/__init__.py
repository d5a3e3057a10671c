r"""``python -m hessjax.report OUT [--id ID]``: plots, derived tables and a one-page summary of a sweep.

The penalty shifts every eigenvalue of ``∇²L_eff`` by exactly ``2λ``: ``θ_i = μ_i + 2λ`` with ``μ_i`` the
data Hessian's (``∇²(mean CE)``). Everything the shift would dominate — the eigenvalue plot on a log
axis, the outlier count, the gap, the branches, the SLQ density — is on **μ**; θ is drawn with the
``2λ`` line. μ is the sweep's ``data_eigenvalues`` (store) / ``data_eigenvalue`` (certificates CSV),
else ``θ − 2λ`` in float64 (the torch pipeline writes θ only).

Reads what :mod:`hessjax.sweep` (or the torch pipeline, :mod:`hessjax.bridges.torch_pipeline`) wrote
into ``OUT`` — the Zarr store ``ID.zarr`` if there is one, otherwise the per-λ CSV/npy files — and
writes into ``OUT/report-ID/`` (never into the store)::

    derived.csv / derived.json     per-λ metrics, θ and μ, outliers, gap, overlaps, branch ids (below),
                                   the unconverged pairs
    data_eigenvalues.{png,svg}     top-k μ_i = θ_i − 2λ vs λ (log y)
    eigenvalues.{png,svg}          top-k θ_i vs λ (log y) with the penalty's 2λ for reference
    outliers.{png,svg}             μ₁, the number of outliers above the bulk, the gap μ₁/μ_k
    performance.{png,svg}          train/test loss and test accuracy
    distance.{png,svg}             ‖θ − θ_ref‖ and ‖∇L_eff‖
    overlaps.{png,svg}             eigenvector overlaps between neighbouring λ
    branches.{png,svg}             eigenvalue branches (on μ), crossings, avoided crossings, discontinuities
    trace / density / bottom       when the sweep wrote them (``--trace``, ``--density``: the SLQ density
                                   of μ; ``--bottom-k``: θ and μ with their converged flags)
    summary.md                     headline numbers, the definitions, the unconverged pairs and every plot

**λ axis**: log when the λ > 0 span two decades or more, λ = 0 drawn apart in a narrow panel at the
left ("λ = 0"); linear otherwise. **Unconverged pairs** (converged flag False, top-k and bottom-k) are
hollow red circles in the eigenvalue plots and listed with residual and error bound in summary.md;
without flags (torch pipeline) summary.md says so. **Seeds**: with runs ``ID-seed0``, ``ID-seed1``, …
the command also writes ``OUT/report-ID-seeds/`` (:mod:`hessjax.report.seeds`: mean and spread of μ_i,
‖θ − θ_ref‖ and the losses per λ, and the seeds that disagree beyond the others' spread).

A sweep still running is fine: only rows whose ``done`` flag is set (store) or λ listed in
``Model-ID.csv`` (files) are used. Eigenvectors are read one λ at a time (two ``[k, P]`` arrays in
memory at once).

**Definitions.** With ``λ`` the penalty and ``λ_1 ≥ … ≥ λ_k`` the top-k eigenvalues of ``∇²L_eff``:

* *data curvature* ``μ_i = λ_i − 2λ`` (the penalty adds exactly ``2λI``; written ``θ_i`` elsewhere);
* *outliers above the bulk*: ``n_out = #{i : μ_i > c · median(μ_1 … μ_k)}`` with ``c`` =
  ``--outlier-factor`` (default 3). The median of the top k stands in for the upper bulk; the count
  is NaN when that median is ≤ 0, and it saturates near ``k/2`` (for ``c ≥ 1`` at most half of the
  top k can exceed their median), which means k is too small to reach the bulk;
* *gap* ``μ_1 / μ_k`` (NaN when ``μ_k ≤ 0``): on θ it would tend to 1 as 2λ grows;
* *overlap* between neighbouring finished λ ``a < b`` (consecutive among those with eigenvectors; a
  diverged λ is stepped over): ``O_ij = |⟨v_i(a), v_j(b)⟩|`` (k × k);
* *branches* (:mod:`~hessjax.report.branches`, on ``μ``): an eigenvector continues its branch only
  through a unique match, ``O_ij > --min-overlap`` (default and minimum ``1/√2``); a near-degenerate
  cluster, or a plane in which the vectors rotate, continues as a subspace when all its principal
  cosines exceed that; otherwise the branch ends and an eigenvector that continues nothing starts a
  *new* branch. A *crossing* is a swap of the order of two branches that keep their vectors; an
  *avoided crossing* a local minimum of their gap without a swap while the vectors turn into each
  other; a *discontinuity* (``‖θ − θ_ref‖`` jumped, or nothing matches) continues nothing, and the
  branches after it restart (not counted as new). Branch ids count from 0 in order of appearance;
  ``-1`` marks an eigenvalue without a branch (NaN, or no eigenvectors at that λ).
  Without any eigenvectors (``--eigenvectors none`` and no store) branches are the indices.

**Modules.** :mod:`~hessjax.report.load` reads a sweep (:class:`SweepData`), :mod:`~hessjax.report.derived`
computes outliers and gap, :mod:`~hessjax.report.branches` the overlaps and branches,
:mod:`~hessjax.report.figures` draws the plots (with the helpers of :mod:`~hessjax.report.plotting`),
:mod:`~hessjax.report.summary` writes the files (numbers formatted by :mod:`~hessjax.report.text`),
:mod:`~hessjax.report.seeds` the across-seed report and :mod:`~hessjax.report.cli` is the command line;
their public names are re-exported here.
"""

from __future__ import annotations

# Also importable from here, beyond __all__: UsageError, METRICS, FORMATS, density_on_grid, slq_to_density,
# build_parser, reordered_pairs and representative_pairs.
from ..density import density_on_grid, slq_to_density
from ..results import UsageError
from .branches import DEFAULT_MIN_OVERLAP, match_branches, overlap_matrix
from .cli import build_parser, main
from .derived import DEFAULT_OUTLIER_FACTOR, Derived, compute_derived, gap_ratio, outlier_counts, reordered_pairs
from .figures import make_figures, representative_pairs
from .plotting import log_lambda_axis
from .load import EXTRA_ARRAYS, METRICS, SweepData, find_run_ids, load_sweep
from .seeds import (SEED_ALPHA, SeedTable, flag_outlying, loo_threshold, plan_runs, render_seeds_report,
                    seed_groups, seed_table, write_seeds_report)
from .summary import FORMATS, ReportResult, render_report, write_report

__all__ = [
    "DEFAULT_MIN_OVERLAP",
    "DEFAULT_OUTLIER_FACTOR",
    "EXTRA_ARRAYS",
    "Derived",
    "ReportResult",
    "SEED_ALPHA",
    "SeedTable",
    "SweepData",
    "compute_derived",
    "find_run_ids",
    "flag_outlying",
    "gap_ratio",
    "load_sweep",
    "log_lambda_axis",
    "loo_threshold",
    "main",
    "make_figures",
    "match_branches",
    "outlier_counts",
    "overlap_matrix",
    "plan_runs",
    "render_report",
    "render_seeds_report",
    "seed_groups",
    "seed_table",
    "write_report",
    "write_seeds_report",
]
