r"""The across-seed report of a ``--seeds`` sweep: run ids ``ID-seed0``, ``ID-seed1``, … in one ``OUT``.

``python -m hessjax.report OUT`` writes, besides each seed's own report, ``OUT/report-ID-seeds/``::

    seeds.csv              one row per (λ, quantity): n_seeds, mean, std, min, max, then seed_S (each seed's value)
    seeds.json             the same, the rule's settings and every flagged (λ, quantity, seed)
    seeds_mu.{png,svg}     μ_1 … μ_k (log y): across-seed mean, ± 1 std band, min/max dotted; flagged values red ×
    seeds_metrics.{png,svg}  ‖θ − θ_ref‖, train loss and test loss, drawn the same way
    summary.md             the runs, the rule, the flagged values and a per-λ table

The quantities are ``mu_1`` … ``mu_k`` (the data-Hessian eigenvalues μ_i = θ_i − 2λ, by index),
``distance_to_anchor``, ``train_loss`` and ``test_loss``; the seeds are matched on λ (the union of their
finished λ; a seed missing a λ, or with a NaN value, does not count there).

**Where seeds disagree beyond their spread** (leave-one-out prediction interval). At a λ where
``n ≥ 3`` seeds have a finite value of a quantity, seed ``s`` is *flagged* when

.. math::  |x_s − m_{-s}| > \max\bigl(c_n\, s_{-s},\; 10^{-9} \max(|x_s|, |m_{-s}|)\bigr),
           \qquad c_n = t_{1 − α/2,\, n − 2}\,\sqrt{1 + 1/(n − 1)},

with ``m_{-s}`` and ``s_{-s}`` the mean and sample standard deviation (ddof 1) of the *other* ``n − 1``
seeds and ``α`` = :data:`SEED_ALPHA` = 0.01: ``x_s`` lies outside the 99% two-sided prediction interval
of a new draw from the others' (normal) distribution, so a seed that agrees with the rest is flagged
with probability 1% per check. ``c_3 ≈ 78``, ``c_4 ≈ 11.4``, ``c_5 ≈ 6.5``, ``c_10 ≈ 3.5``: three seeds
detect only gross disagreement (a fixed "3 standard deviations of the others" would flag about a quarter
of agreeing seeds when n = 3). The relative floor keeps rounding from being flagged when the others agree
exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import results
from ..results import UsageError
from .load import SweepData, find_run_ids, load_sweep
from .plotting import Row, colormap, dot_style, lambda_rows, log_if_positive, new_figure, positive_only, save_figure
from .text import csv_cell, short_number

SEED_ALPHA = 0.01
SEED_METRICS = ("distance_to_anchor", "train_loss", "test_loss")
_SEED_ID = re.compile(r"(.+)-seed([0-9]+)")
_REL_FLOOR = 1e-9


def seed_groups(ids: Sequence[str]) -> dict[str, dict[int, str]]:
    """``{ID: {seed: run id}}`` of the run ids of the form ``ID-seedS``, for every ``ID`` with two or more seeds."""
    groups: dict[str, dict[int, str]] = {}
    for rid in ids:
        if m := _SEED_ID.fullmatch(rid):
            groups.setdefault(m.group(1), {})[int(m.group(2))] = rid
    return {base: dict(sorted(g.items())) for base, g in sorted(groups.items()) if len(g) >= 2}


def plan_runs(out: str | Path, run_id: str | None) -> tuple[list[str | None], list[str]]:
    """``(run ids to report, seed groups to report)`` for ``python -m hessjax.report OUT [--id ID]``.

    Without ``--id``: every run and every seed group when all the runs of ``OUT`` belong to seed groups
    (else the only run; several unrelated runs are refused by :func:`load_sweep`); the descending walk
    ``ID-descending`` of ``--init follow`` is reported with its ``ID``, not counted as another run. ``--id ID`` where ``ID``
    is a seed group (and not itself a run): its seeds and the group. Any other ``--id``: that run only.
    """
    out = Path(out)
    if not out.is_dir():
        return [run_id], []
    ids = find_run_ids(out)
    # the descending walk of --init follow belongs to its ascending run: reported beside it
    walks = {i for i in ids if i.endswith("-descending") and i[: -len("-descending")] in ids}
    bases = [i for i in ids if i not in walks]
    groups = seed_groups(bases)
    grouped = {rid for g in groups.values() for rid in g.values()}
    if run_id is None and len(ids) > 1 and (grouped == set(bases) or len(bases) == 1):
        return list(ids), list(groups)
    if run_id is not None and run_id in groups and run_id not in ids:
        return list(groups[run_id].values()), [run_id]
    return [run_id], []


def loo_threshold(n: int, alpha: float = SEED_ALPHA) -> float:
    """``c_n = t_{1−α/2, n−2} · √(1 + 1/(n−1))``: the flag threshold in units of the others' std (n ≥ 3)."""
    from scipy.stats import t

    if n < 3:
        raise ValueError(f"the leave-one-out rule needs n ≥ 3 seeds, got {n}")
    return float(t.ppf(1 - alpha / 2, n - 2) * math.sqrt(1 + 1 / (n - 1)))


def flag_outlying(values: np.ndarray, alpha: float = SEED_ALPHA) -> list[dict]:
    """The seeds (positions in ``values`` ``[S]``, NaN = absent) flagged by the leave-one-out rule above:
    ``[{"position", "value", "mean_others", "std_others", "deviation", "threshold", "n"}]``."""
    values = np.asarray(values, np.float64)
    present = np.flatnonzero(np.isfinite(values))
    n = present.size
    if n < 3:
        return []
    c = loo_threshold(n, alpha)
    flagged = []
    for s in present:
        others = values[present[present != s]]
        m, sd = float(others.mean()), float(others.std(ddof=1))
        dev = abs(float(values[s]) - m)
        limit = max(c * sd, _REL_FLOOR * max(abs(float(values[s])), abs(m)))
        if dev > limit:
            flagged.append({"position": int(s), "value": float(values[s]), "mean_others": m, "std_others": sd,
                            "deviation": dev, "threshold": c, "n": int(n)})
    return flagged


@dataclasses.dataclass
class SeedTable:
    """Every quantity of every seed on the union of their finished λ."""

    base: str
    seeds: list[int]
    run_ids: list[str]
    lambdas: np.ndarray  # [L] ascending
    quantities: list[str]  # mu_1 … mu_k, then SEED_METRICS
    values: np.ndarray  # [Q, L, S] float64, NaN where a seed lacks the λ or the value
    mu_sources: list[str]

    def stats(self) -> dict[str, np.ndarray]:
        """``{n, mean, std, min, max}`` each ``[Q, L]`` over the finite seeds (std ddof 1; NaN below 2 seeds)."""
        v = self.values
        n = np.sum(np.isfinite(v), axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(v, axis=2)
                std = np.where(n >= 2, np.nanstd(v, axis=2, ddof=1), np.nan)
                lo, hi = np.nanmin(v, axis=2), np.nanmax(v, axis=2)
        return {"n": n, "mean": mean, "std": std, "min": lo, "max": hi}

    def flags(self, alpha: float = SEED_ALPHA) -> list[dict]:
        """Every flagged ``{lambda, quantity, seed, run_id, value, mean_others, std_others, deviation,
        threshold, n}``, ascending λ, quantities in table order, seeds ascending."""
        out = []
        for t, lam in enumerate(self.lambdas):
            for q, name in enumerate(self.quantities):
                for f in flag_outlying(self.values[q, t], alpha):
                    s = f.pop("position")
                    out.append({"lambda": float(lam), "quantity": name, "seed": self.seeds[s],
                                "run_id": self.run_ids[s], **f})
        return out


def seed_table(base: str, runs: dict[int, SweepData]) -> SeedTable:
    """The :class:`SeedTable` of the seed runs ``{seed: SweepData}``."""
    seeds = sorted(runs)
    lambdas = np.array(sorted({float(v) for d in runs.values() for v in d.lambdas}))
    k = max(d.k for d in runs.values())
    quantities = [f"mu_{j + 1}" for j in range(k)] + list(SEED_METRICS)
    values = np.full((len(quantities), lambdas.size, len(seeds)), np.nan)
    for s, seed in enumerate(seeds):
        d = runs[seed]
        t = np.searchsorted(lambdas, d.lambdas)
        mu = d.mu
        values[: d.k, t, s] = mu.T
        for q, name in enumerate(SEED_METRICS):
            values[k + q, t, s] = d.metric(name)
    return SeedTable(base, seeds, [runs[s].run_id for s in seeds], lambdas, quantities, values,
                     [runs[s].mu_source for s in seeds])


# --------------------------------------------------------------------------------------------- figures


def _band(row: Row, lam: np.ndarray, st: dict, q: int, color, label: str, flagged: list[tuple[float, float]],
          positive: bool) -> None:
    f = positive_only if positive else (lambda x: np.asarray(x, np.float64))
    mean, sd = st["mean"][q], st["std"][q]
    sd = np.where(np.isfinite(sd), sd, 0.0)
    row.plot(lam, f(mean), color=color, lw=1.2, label=label, **dot_style(lam))
    row.plot(lam, f(st["min"][q]), color=color, lw=0.7, ls=":")
    row.plot(lam, f(st["max"][q]), color=color, lw=0.7, ls=":")
    lo, hi = f(mean - sd), f(mean + sd)
    pos = lam > 0 if row.zero is not None else np.ones(lam.size, bool)
    row.main.fill_between(lam[pos], lo[pos], hi[pos], color=color, alpha=0.2, lw=0)
    if row.zero is not None and (~pos).any():
        row.zero.vlines(np.zeros(int((~pos).sum())), lo[~pos], hi[~pos], color=color, alpha=0.35, lw=6)
    if flagged:
        x, y = np.array(flagged).T
        row.plot(x, f(y), "x", ls="none", color="red", markersize=9, mew=2)


def _flag_points(table: SeedTable, flags: list[dict], name: str) -> list[tuple[float, float]]:
    return [(f["lambda"], f["value"]) for f in flags if f["quantity"] == name]


def _plot_seeds_mu(table: SeedTable, st: dict, flags: list[dict]):
    lam = table.lambdas
    k = sum(q.startswith("mu_") for q in table.quantities)
    fig = new_figure((7, 4.8))
    (row,) = lambda_rows(fig, lam)
    cmap = colormap("viridis")
    for j in range(k):
        _band(row, lam, st, j, cmap(j / max(k - 1, 1)), f"μ_{j + 1}" if j in (0, k - 1) else None,
              _flag_points(table, flags, f"mu_{j + 1}"), positive=True)
    row.set_yscale("log")
    row.set(ylabel="μ: eigenvalue of ∇²(mean CE)",
            title=f"{table.base}: μ_1…μ_{k} over {len(table.seeds)} seeds\n(mean, ±1 std, min/max dotted; red ×: flagged)")
    row.legend(loc="best", fontsize=8)
    return fig, k


def _plot_seeds_metrics(table: SeedTable, st: dict, flags: list[dict]):
    lam = table.lambdas
    fig = new_figure((7, 7.5))
    rows = lambda_rows(fig, lam, 3)
    labels = {"distance_to_anchor": "‖θ − θ_ref‖", "train_loss": "train loss (mean CE)",
              "test_loss": "test loss (mean CE)"}
    for r, name in enumerate(SEED_METRICS):
        q = table.quantities.index(name)
        _band(rows[r], lam, st, q, f"C{r}", None, _flag_points(table, flags, name), positive=False)
        if name == "distance_to_anchor":
            log_if_positive(rows[r], table.values[q])
        rows[r].set(ylabel=labels[name])
    rows[0].set(title=f"{table.base}: over {len(table.seeds)} seeds\n(mean, ±1 std, min/max dotted; red ×: flagged)")
    return fig, len(SEED_METRICS)


# --------------------------------------------------------------------------------------------- writing


@dataclasses.dataclass
class SeedsResult:
    directory: Path  # OUT/report-ID-seeds
    files: list[Path]
    table: SeedTable
    flags: list[dict]
    figures: dict


def render_seeds_report(out: str | Path, base: str, *, source: str = "auto", formats: Sequence[str] = ("png", "svg"),
                        keep_figures: bool = False) -> SeedsResult:
    """Read the seeds of group ``base`` in ``out`` and write ``out/report-BASE-seeds/``."""
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"{str(out)!r} is not a directory")
    groups = seed_groups(find_run_ids(out))
    if base not in groups:
        raise UsageError(f"{str(out)!r} holds no runs {base}-seedS of two or more seeds")
    runs = {seed: load_sweep(out, rid, source=source) for seed, rid in groups[base].items()}
    return write_seeds_report(seed_table(base, runs), out / f"report-{base}-seeds", formats=formats,
                              keep_figures=keep_figures)


def write_seeds_report(table: SeedTable, directory: str | Path, *, formats: Sequence[str] = ("png", "svg"),
                       alpha: float = SEED_ALPHA, keep_figures: bool = False) -> SeedsResult:
    """Write ``seeds.csv``, ``seeds.json``, the figures and ``summary.md`` of ``table`` into ``directory``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    st = table.stats()
    flags = table.flags(alpha)
    files: list[Path] = []

    header = ["lambda", "quantity", "n_seeds", "mean", "std", "min", "max"] + [f"seed_{s}" for s in table.seeds]
    lines = [",".join(header)]
    for t, lam in enumerate(table.lambdas):
        for q, name in enumerate(table.quantities):
            cells = [results.lambda_label(lam), name, str(int(st["n"][q, t]))]
            cells += [csv_cell(st[c][q, t]) for c in ("mean", "std", "min", "max")]
            cells += [csv_cell(v) for v in table.values[q, t]]
            lines.append(",".join(cells))
    files.append(results.atomic_write(directory / "seeds.csv",
                                      lambda tmp: tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")))

    figs = {}
    for name, plot in (("seeds_mu", _plot_seeds_mu), ("seeds_metrics", _plot_seeds_metrics)):
        figs[name], _ = plot(table, st, flags)
        files.extend(save_figure(figs[name], directory, name, formats))
    checks = int(np.sum(st["n"] >= 3))
    meta = {
        "base": table.base, "seeds": table.seeds, "run_ids": table.run_ids, "lambdas": table.lambdas,
        "quantities": table.quantities, "mu_sources": table.mu_sources,
        "rule": {"alpha": alpha, "min_seeds": 3, "relative_floor": _REL_FLOOR,
                 "threshold_by_n": {str(n): loo_threshold(n, alpha) for n in range(3, len(table.seeds) + 1)},
                 "checks": checks},
        "flags": flags,
    }
    text = json.dumps(results.jsonable(meta), indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    files.append(results.atomic_write(directory / "seeds.json", lambda tmp: tmp.write_text(text, encoding="utf-8")))
    md = _seeds_markdown(table, st, flags, checks, alpha, "png" if "png" in formats else formats[0])
    files.append(results.atomic_write(directory / "summary.md", lambda tmp: tmp.write_text(md, encoding="utf-8")))
    return SeedsResult(directory, files, table, flags, figs if keep_figures else {})


def _seeds_markdown(table: SeedTable, st: dict, flags: list[dict], checks: int, alpha: float, fmt: str) -> str:
    n_seeds = len(table.seeds)
    out = [f"# Across-seed report: `{table.base}` ({n_seeds} seeds)", "",
           "| seed | run id | λ finished | μ from |", "|---|---|---|---|"]
    for s, (seed, rid) in enumerate(zip(table.seeds, table.run_ids)):
        finished = int(np.sum(np.isfinite(table.values[:, :, s]).any(axis=0)))
        out.append(f"| {seed} | `{rid}` | {finished} of {table.lambdas.size} | {table.mu_sources[s]} |")
    thresholds = ", ".join(f"c_{n} = {loo_threshold(n, alpha):.3g}" for n in range(3, n_seeds + 1))
    out += [
        "",
        "Quantities: μ_1 … μ_k (the data-Hessian eigenvalues μ_i = θ_i − 2λ, matched by index), ‖θ − θ_ref‖, "
        "train and test loss (mean cross-entropy, no penalty), per λ over the seeds that finished it. Plots: "
        "mean (line), ±1 sample std (band), min and max (dotted); flagged seed values are red ×.",
        "",
        "## Where seeds disagree beyond their spread",
        "",
        "Rule (leave-one-out prediction interval): at a λ where n ≥ 3 seeds have a finite value of a quantity, "
        "seed s is flagged when |x_s − m₋ₛ| > max(c_n · s₋ₛ, 1e-9 · max(|x_s|, |m₋ₛ|)), with m₋ₛ and s₋ₛ the "
        "mean and sample standard deviation (ddof 1) of the other n − 1 seeds and "
        f"c_n = t_(1−α/2, n−2) · √(1 + 1/(n−1)), α = {alpha:g}: x_s lies outside the {100 * (1 - alpha):g}% "
        "prediction interval of the others, so a seed agreeing with the rest is flagged with probability "
        f"{alpha:g} per check ({thresholds}). With few seeds only gross disagreement is detectable.",
        "",
    ]
    if checks == 0:
        out += ["No check possible: no λ has 3 or more seeds with a value.", ""]
    elif not flags:
        out += [f"No seed flagged in {checks} checks (λ × quantity with n ≥ 3; about {alpha * checks:.2g} "
                "expected by chance).", ""]
    else:
        out += [f"{len(flags)} flagged in {checks} checks (λ × quantity with n ≥ 3; about {alpha * checks:.2g} "
                "expected by chance):", "",
                "| λ | quantity | seed | value | mean of others | std of others | deviation / std | c_n |",
                "|---|---|---|---|---|---|---|---|"]
        for f in flags:
            ratio = f["deviation"] / f["std_others"] if f["std_others"] > 0 else math.inf
            out.append(f"| {f['lambda']:.6g} | {f['quantity']} | {f['seed']} | {f['value']:.6g} | "
                       f"{f['mean_others']:.6g} | {f['std_others']:.3g} | {ratio:.3g} | {f['threshold']:.3g} |")
        out.append("")
    out += ["## Mean ± std per λ", "", "| λ | seeds | μ₁ | μ_k | ‖θ − θ_ref‖ | train loss | test loss |",
            "|---|---|---|---|---|---|---|"]
    k = sum(q.startswith("mu_") for q in table.quantities)
    cols = [0, k - 1] + [table.quantities.index(m) for m in SEED_METRICS]
    for t, lam in enumerate(table.lambdas):
        cells = [f"{short_number(st['mean'][q, t], 4)} ± {short_number(st['std'][q, t], 4)}" for q in cols]
        out.append(f"| {lam:.6g} | {int(st['n'][:, t].max())} | " + " | ".join(cells) + " |")
    out += ["", "Per-λ values of every seed: `seeds.csv`; the flags: `seeds.json`.", ""]
    out += ["## μ over seeds", "", f"![seeds_mu](seeds_mu.{fmt})", "",
            "## Distance and losses over seeds", "", f"![seeds_metrics](seeds_metrics.{fmt})", ""]
    return "\n".join(out)
