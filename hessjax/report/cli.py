"""The command line: ``python -m hessjax.report OUT [--id ID]`` (the ``hessjax-report`` script).

With runs ``ID-seed0``, ``ID-seed1``, … in ``OUT`` (a ``--seeds`` sweep) it writes every seed's report and
the across-seed report ``OUT/report-ID-seeds/`` (:mod:`hessjax.report.seeds`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..results import UsageError
from .branches import DEFAULT_MIN_OVERLAP
from .derived import DEFAULT_OUTLIER_FACTOR
from .seeds import SEED_ALPHA, plan_runs, render_seeds_report
from .summary import FORMATS, check_settings, render_report
from .walks import DEFAULT_HYSTERESIS_THRESHOLD


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error:`` line (exit status 2), like every other refusal."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m hessjax.report",
                description="Plots, derived tables and a summary of a sweep's output directory, written into "
                            "OUT/report-ID/. The data-Hessian eigenvalues mu_i = theta_i - 2*lambda (theta: the "
                            "eigenvalues of the Hessian of L_eff, which the penalty shifts by 2*lambda) are plotted "
                            "on a log axis beside theta; the outlier count, the gap mu_1/mu_k, the eigenvalue "
                            "branches and the SLQ density are computed and drawn on mu. lambda is on a log axis "
                            "when its positive values span two decades or more, lambda = 0 drawn apart at the "
                            "left. Pairs the solver did not converge (top-k and --bottom-k) are hollow red "
                            "circles and listed in summary.md. With runs ID-seed0, ID-seed1, ... (a --seeds "
                            "sweep) every seed's report and the across-seed report OUT/report-ID-seeds/ are "
                            "written: mean and spread of mu_i, the distance to the anchor and the losses per "
                            f"lambda, and the seeds outside the {100 * (1 - SEED_ALPHA):g}% leave-one-out "
                            "prediction interval of the others (rule in its summary.md).",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", metavar="OUT", help="the sweep's output directory (--out of the sweep)")
    p.add_argument("--id", dest="run_id", default=None,
                   help="run id (default: the only run in OUT, or every seed ID-seedS and their across-seed "
                        "report when all runs are seeds); a seed group's ID selects its seeds")
    p.add_argument("--source", choices=("auto", "zarr", "csv"), default="auto",
                   help="read the Zarr store or the per-λ files (auto: the store if there is one)")
    p.add_argument("--outlier-factor", type=float, default=DEFAULT_OUTLIER_FACTOR,
                   help="an outlier's data eigenvalue mu_i = theta_i - 2*lambda exceeds this multiple of the "
                        "median of mu_1..mu_k")
    p.add_argument("--min-overlap", type=float, default=DEFAULT_MIN_OVERLAP,
                   help="a matched eigenvector pair with a smaller |overlap| starts a new branch")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma list of plot formats (png, svg)")
    p.add_argument("--hysteresis-threshold", type=float, default=DEFAULT_HYSTERESIS_THRESHOLD,
                   help="--init follow: the two walks differ at a lambda where ||theta_up - theta_down|| exceeds "
                        "this fraction of the larger distance to the anchor")
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
    lines = []
    try:
        _require_matplotlib()
        check_settings(args.outlier_factor, args.min_overlap, formats)
        run_ids, groups = plan_runs(args.out, args.run_id)
        for run_id in run_ids:
            result = render_report(args.out, run_id, source=args.source, outlier_factor=args.outlier_factor,
                                   min_overlap=args.min_overlap, formats=formats,
                                   hysteresis_threshold=args.hysteresis_threshold)
            d = result.derived
            lines.append(f"report of {d['run_id']} ({d['n_lambdas']} of {d['total_lambdas']} λ, {d['source']}): "
                         f"{len(result.files)} files in {result.directory}")
        for base in groups:
            seeds = render_seeds_report(args.out, base, source=args.source, formats=formats)
            lines.append(f"across-seed report of {base} ({len(seeds.table.seeds)} seeds, {len(seeds.flags)} "
                         f"flagged): {len(seeds.files)} files in {seeds.directory}")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print("\n".join(lines))
    return 0
