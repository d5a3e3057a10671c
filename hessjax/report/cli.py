"""The command line: ``python -m hessjax.report OUT [--id ID]`` (the ``hessjax-report`` script)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..results import UsageError
from .branches import DEFAULT_MIN_OVERLAP
from .derived import DEFAULT_OUTLIER_FACTOR
from .summary import FORMATS, render_report


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
