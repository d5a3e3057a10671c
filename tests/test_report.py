"""``python -m hessjax.report`` on constructed runs (stores and CSV files written with ``hessjax.results``,
with known μ, flags and seeds), on synthetic spectra, and on a small real sweep.

The real sweep is run once per module (the command a user runs; the tests that need it are marked slow);
every test that changes it works on a copy. Reports are rendered as PNG only, except the first real one.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import zarr

from conftest import REPO, SMALL, sweep
from hessjax import report
from hessjax import results
from hessjax.report import SweepData, render_report, write_report
from hessjax.results import UsageError

PLOTS = ("data_eigenvalues", "eigenvalues", "outliers", "performance", "distance", "overlaps", "branches")
K = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "sweep"
    sweep("--out", out, "--lambdas", "0:0.1:4", "--quiet", *SMALL)
    return out


@pytest.fixture(scope="module")
def rendered(run, tmp_path_factory):
    """The default report of the store, rendered once (PNG and SVG); the store's files before and after."""
    store = run / "default.zarr"
    before = sorted((p.relative_to(store), p.stat().st_mtime_ns) for p in store.rglob("*"))
    result = render_report(run, keep_figures=True)
    after = sorted((p.relative_to(store), p.stat().st_mtime_ns) for p in store.rglob("*"))
    return result, before, after


def _copy(run, dest, *, store=True):
    ignore = shutil.ignore_patterns("report-*", *(() if store else ("*.zarr",)))
    shutil.copytree(run, dest, ignore=ignore)
    return dest


def _check_png(path, fig=None):
    """A PNG of the figure's size at the report's 120 dpi (of ``fig``, or of the plot's known size)."""
    import matplotlib.image

    sizes = {"eigenvalues": (7, 4.5), "data_eigenvalues": (7, 4.5), "outliers": (7, 7), "performance": (7, 5.5),
             "distance": (7, 5.5), "overlaps": (11, 4.5), "branches": (7, 4.5), "density": (11, 4.5),
             "bottom": (7, 6.5)}
    w, h = fig.get_size_inches() if fig is not None else sizes[path.stem]
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (round(120 * h), round(120 * w)), (path, img.shape)
    drawn = np.mean(np.any(img[..., :3] < 0.85, axis=2))  # axes, text, data: not a blank canvas
    assert drawn > 0.01, (path, drawn)


def _store_arrays(run):
    g = zarr.open_group(str(run / "default.zarr"), mode="r", use_consolidated=False)
    order = np.argsort(g["lambda"][:])
    return g, order


# --------------------------------------------------------------------------------------------- constructed runs

LAMS = [0.0, 1e-4, 1e-3, 1e-2, 1e-1]
# Known μ (largest first). Row by row: median 6 → 1 outlier, gap 40; median 8.5 → 0, gap 10; median 2 → 0,
# gap undefined (μ_k ≤ 0); median −1.5 → count and gap undefined; median 0.35 → 1, gap 20 (on θ: 2.2/0.3).
MU = np.array([[40.0, 10, 2, 1], [10, 9, 8, 1], [5, 3, 1, -0.5], [1, -1, -2, -3], [2.0, 0.5, 0.2, 0.1]])
THETA = MU + 2 * np.array(LAMS)[:, None]
UNCONVERGED = {(2, 2): 0.3, (4, 3): 0.02}  # (row, eigenvalue j) -> residual; every other residual 1e-6
BOTTOM_UNCONVERGED = {(3, 0): 0.05}


def _write_run(out, run_id, lams, theta, mu=None, *, unconverged=(), bottom=None, bottom_unconverged=(),
               slq=None, metrics=None, store=True):
    """Write run ``run_id`` into ``out`` with the ``hessjax.results`` writers, the way a sweep does: per-λ
    CSVs, a store row (if ``store``), the record, ``Model-ID.csv``. ``mu=None``: θ only (the torch pipeline)."""
    from hessjax.bounds import error_bounds

    out.mkdir(parents=True, exist_ok=True)
    n, k = np.shape(theta)
    extras = {}
    if bottom is not None:
        m = np.shape(bottom)[1]
        extras |= {"bottom_eigenvalues": ("float64", (m,), ("bottom",)),
                   "bottom_residuals": ("float64", (m,), ("bottom",)),
                   "bottom_converged": ("bool", (m,), ("bottom",))}
    if slq is not None:
        extras |= {"slq_nodes": ("float64", np.shape(slq[0])[1:], ("probe", "node")),
                   "slq_weights": ("float64", np.shape(slq[0])[1:], ("probe", "node"))}
    sweep_store = (results.SweepStore.create(results.store_path(out, run_id), lams, n_params=6, k=k, extras=extras)
                   if store else None)
    for i, lam in enumerate(lams):
        res = np.array([dict(unconverged).get((i, j), 1e-6) for j in range(k)])
        conv = np.array([(i, j) not in dict(unconverged) for j in range(k)])
        m_i = metrics[i] if metrics else {}
        certs = {} if mu is None else dict(residuals=res, eig_converged=conv, data_eigenvalues=mu[i],
                                           error_bounds=error_bounds(mu[i], res))
        record = results.make_record(
            lam, train_loss=m_i.get("train_loss", 0.5 + i), test_loss=m_i.get("test_loss", 0.6 + i),
            test_accuracy=0.9, epochs=3, converged=True, diverged=False, grad_norm=1e-3,
            distance_to_anchor=m_i.get("distance_to_anchor", 10.0 - i), seconds=1.0, eigenvalues=theta[i], **certs)
        arrays = {}
        results.write_eigenvalues_csv(out, run_id, lam, theta[i])
        if mu is not None:
            results.write_certificates_csv(out, run_id, lam, theta[i], mu[i], res, certs["error_bounds"], conv)
        if bottom is not None:
            bres = np.array([dict(bottom_unconverged).get((i, j), 1e-7) for j in range(len(bottom[i]))])
            bconv = np.array([(i, j) not in dict(bottom_unconverged) for j in range(len(bottom[i]))])
            results.write_bottom_eigenvalues_csv(out, run_id, lam, bottom[i], bres, bconv)
            arrays |= {"bottom_eigenvalues": bottom[i], "bottom_residuals": bres, "bottom_converged": bconv}
        if slq is not None:
            results.write_density_csv(out, run_id, lam, slq[0][i], slq[1][i])
            arrays |= {"slq_nodes": slq[0][i], "slq_weights": slq[1][i]}
        if sweep_store is not None:
            sweep_store.write(record, extras=arrays)
        results.write_record(out, run_id, record)
    results.write_model_csv(out, run_id)
    return out


def _red_markers(fig):
    """``(axes index, x, y)`` of every hollow red circle in ``fig``."""
    found = []
    for a, ax in enumerate(fig.axes):
        for line in ax.lines:
            if line.get_markeredgecolor() == "red" and line.get_marker() == "o":
                found += [(a, float(x), float(y)) for x, y in zip(line.get_xdata(), line.get_ydata())]
    return sorted(found)


@pytest.mark.parametrize("store", [True, False], ids=["zarr", "csv"])
def test_mu_outliers_gap_and_unconverged_on_a_constructed_run(tmp_path, store):
    bottom = np.stack([2 * np.array(LAMS) - 0.3, 2 * np.array(LAMS) - 0.1], axis=1)
    out = _write_run(tmp_path / "run", "known", LAMS, THETA, MU, unconverged=UNCONVERGED, bottom=bottom,
                     bottom_unconverged=BOTTOM_UNCONVERGED, store=store)
    data = report.load_sweep(out)
    assert data.source == ("zarr" if store else "csv") and data.mu_source == "written"
    np.testing.assert_array_equal(data.mu, MU)
    result = render_report(out, formats=("png",), keep_figures=True)
    table = pd.read_csv(result.directory / "derived.csv")
    np.testing.assert_array_equal(table[[f"mu_{j}" for j in range(1, 5)]].to_numpy(), MU)
    np.testing.assert_array_equal(table[[f"eig_{j}" for j in range(1, 5)]].to_numpy(), THETA)
    np.testing.assert_array_equal(table["n_outliers"], [1, 0, 0, np.nan, 1])
    np.testing.assert_array_equal(table["gap"], [40, 10, np.nan, np.nan, 2.0 / 0.1])
    np.testing.assert_array_equal(table["outlier_threshold"], 3 * np.array([6, 8.5, 2, np.nan, np.median(MU[4])]))
    np.testing.assert_array_equal(table["n_unconverged"], [0, 0, 1, 0, 1])
    np.testing.assert_array_equal(table["mu_min"], bottom[:, 0] - 2 * np.array(LAMS))
    meta = result.derived
    assert meta["lambda_axis"] == "log, λ = 0 apart"
    got = [(r["lambda"], r["kind"], r["index"], r["residual"]) for r in meta["unconverged"]]
    assert got == [(1e-3, "top", 3, 0.3), (1e-2, "bottom", 1, 0.05), (1e-1, "top", 4, 0.02)]

    # μ on a log y axis, λ > 0 on a log x axis, λ = 0 in its own narrow panel at the left
    fig = result.figures["data_eigenvalues"]
    main, zero = fig.axes
    assert main.get_xscale() == "log" and main.get_yscale() == "log" and zero.get_yscale() == "log"
    assert [t.get_text() for t in zero.get_xticklabels()] == ["λ = 0"]
    for j in range(4):
        np.testing.assert_array_equal(main.lines[j].get_xdata(), LAMS[1:])
        np.testing.assert_array_equal(main.lines[j].get_ydata(), np.where(MU[1:, j] > 0, MU[1:, j], np.nan))
        np.testing.assert_array_equal(zero.lines[j].get_ydata(), [MU[0, j]])
    # the unconverged pairs, and only they, are hollow red circles: on μ and on θ
    assert _red_markers(fig) == [(0, 1e-3, MU[2, 2]), (0, 1e-1, MU[4, 3])]
    assert _red_markers(result.figures["eigenvalues"]) == [(0, 1e-3, THETA[2, 2]), (0, 1e-1, THETA[4, 3])]
    assert _red_markers(result.figures["bottom"]) == sorted([(0, 1e-2, bottom[3, 0]),
                                                             (2, 1e-2, bottom[3, 0] - 2e-2)])
    # the 2λ line on the θ plot
    two_lam = [line for line in result.figures["eigenvalues"].axes[0].lines if line.get_linestyle() == "--"]
    np.testing.assert_array_equal(two_lam[0].get_ydata(), 2 * np.array(LAMS[1:]))

    summary = (result.directory / "summary.md").read_text()
    section = summary.split("## Unconverged eigenpairs")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| 0")]
    bounds = [r["error_bound"] for r in meta["unconverged"] if r["kind"] == "top"]
    assert bounds == [0.3 ** 2 / (1 - (-0.5) - 0.3 - 1e-6), 0.02]  # Kato–Temple inside the top k; r for μ_k
    assert rows == [
        f"| 0.001 | top | 3 | {THETA[2, 2]:.6g} | 1 | 0.3 | {bounds[0]:.6g} |",
        f"| 0.01 | bottom | 1 | {bottom[3, 0]:.6g} | {bottom[3, 0] - 2e-2:.6g} | 0.05 | — |",
        f"| 0.1 | top | 4 | {THETA[4, 3]:.6g} | 0.1 | 0.02 | {bounds[1]:.6g} |",
    ]
    assert "| unconverged pairs | 3 of 30 |" in summary and "| gap μ₁/μ_k | 40 → 20 |" in summary


def test_without_certificates_mu_is_theta_minus_two_lambda(tmp_path):
    theta = np.array([[3.1, 1.7, 0.9], [2.9, 1.30000001, 1.0002], [3.7, 0.2000002, 0.2000001]])
    lams = [0.0, 0.002, 0.1]
    out = _write_run(tmp_path / "torch", "default", lams, theta, store=False)
    data = report.load_sweep(out)
    assert data.mu_source == "θ − 2λ" and not data.has_flags and data.unconverged() == []
    np.testing.assert_array_equal(data.mu, theta - 2 * np.array(lams)[:, None])
    result = render_report(out, formats=("png",))
    assert result.derived["unconverged"] is None and result.derived["lambda_axis"] == "linear"
    table = pd.read_csv(result.directory / "derived.csv")
    mu = theta - 2 * np.array(lams)[:, None]
    np.testing.assert_array_equal(table["gap"], mu[:, 0] / mu[:, -1])
    assert "n_unconverged" not in table
    summary = (result.directory / "summary.md").read_text()
    assert "computed here as θ − 2λ in float64" in summary
    assert "| unconverged pairs | unknown (no converged flags: no certificates written) |" in summary


@pytest.mark.parametrize("store", [True, False], ids=["zarr", "csv"])
def test_slq_density_is_broadened_on_mu(tmp_path, store):
    mu_nodes = np.array([[[0.0, 1.0, 5.0], [0.5, 2.0, 4.0]]])  # the same μ-nodes at every λ
    lams = [0.0, 0.01, 0.5]
    nodes = mu_nodes + 2 * np.array(lams)[:, None, None]  # what the sweep writes: θ-nodes
    weights = np.broadcast_to(np.array([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3]]), nodes.shape)
    out = _write_run(tmp_path / "run", "d", lams, THETA[:3], MU[:3], slq=(nodes, weights), store=store)
    data = report.load_sweep(out)
    grid, dens = data.extras["density_grid"], data.extras["density"]
    np.testing.assert_allclose(grid[[0, -1]], [-0.25, 5.25])  # μ-nodes 0…5 with a 5% margin (on θ: up to 6.25)
    np.testing.assert_allclose(dens[1:], np.broadcast_to(dens[0], dens[1:].shape), rtol=1e-9, atol=1e-12)


def test_log_lambda_axis_rule():
    assert report.log_lambda_axis(np.array([0, 1e-3, 0.1]))  # two decades
    assert not report.log_lambda_axis(np.array([0, 1e-3, 0.05]))  # 50×
    assert not report.log_lambda_axis(np.array([0.0, 0.1]))  # one λ > 0
    assert report.log_lambda_axis(np.array([1e-4, 1e-2]))


# --------------------------------------------------------------------------------------------- seeds


def test_leave_one_out_rule():
    from scipy.stats import t

    assert report.loo_threshold(3) == pytest.approx(t.ppf(0.995, 1) * np.sqrt(1.5))
    assert report.loo_threshold(3) == pytest.approx(77.96, abs=0.01)
    assert report.loo_threshold(5) == pytest.approx(6.530, abs=1e-3)
    (flag,) = report.flag_outlying(np.array([1.0, 1.01, 2.0]))
    assert flag["position"] == 2 and flag["n"] == 3
    assert flag["mean_others"] == pytest.approx(1.005) and flag["std_others"] == pytest.approx(0.01 / np.sqrt(2))
    assert report.flag_outlying(np.array([1.0, 1.01, 1.5])) == []  # 0.495 < 78 × 0.0071
    assert report.flag_outlying(np.array([1.0, 5.0, np.nan])) == []  # two seeds: no check
    # identical others: only a difference beyond the 1e-9 relative floor is flagged
    assert report.flag_outlying(np.array([2.0, 2.0, 2.0, 2.0 * (1 + 1e-12)])) == []
    assert [f["position"] for f in report.flag_outlying(np.array([2.0, 2.0, 2.0, 2.001]))] == [3]


def _seed_runs(out, planted=True):
    offsets = [-2, -1, 0, 1, 2]
    base = np.array([8.0, 4.0, 2.0, 1.0])
    for s, off in enumerate(offsets):
        lams = LAMS if s != 4 else LAMS[:-1]  # seed 4 did not finish λ = 0.1
        mu = np.stack([base * (1 + 0.01 * off) * (1 + i) for i in range(len(lams))])
        if planted and s == 3:
            mu[3, 1] += 5.0  # λ = 0.01, μ_2: 21.16 against 16 × (0.98, 0.99, 1, 1.02) of the others
        theta = mu + 2 * np.array(lams)[:, None]
        metrics = [{"distance_to_anchor": 100.0 + off - i, "train_loss": 2.0 + 0.001 * off,
                    "test_loss": 2.1 + 0.001 * off} for i in range(len(lams))]
        _write_run(out, f"base-seed{s}", lams, theta, mu, metrics=metrics, store=s % 2 == 0)
    return out


def test_seeds_report_flags_exactly_the_planted_seed(tmp_path, capsys):
    out = _seed_runs(tmp_path / "seeds")
    assert report.plan_runs(out, None) == ([f"base-seed{s}" for s in range(5)], ["base"])
    assert report.main([str(out), "--formats", "png"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 6 and printed[-1].startswith("across-seed report of base (5 seeds, 1 flagged)")
    for s in range(5):
        assert (out / f"report-base-seed{s}" / "summary.md").is_file()
    d = out / "report-base-seeds"
    meta = json.loads((d / "seeds.json").read_text())
    assert [(f["lambda"], f["quantity"], f["seed"]) for f in meta["flags"]] == [(0.01, "mu_2", 3)]
    flag = meta["flags"][0]
    others = np.array([4.0 * 4 * (1 + 0.01 * off) for off in (-2, -1, 0, 2)])
    assert flag["value"] == pytest.approx(4.0 * 4 * 1.01 + 5) and flag["n"] == 5
    assert flag["mean_others"] == pytest.approx(others.mean()) and flag["std_others"] == pytest.approx(others.std(ddof=1))
    table = pd.read_csv(d / "seeds.csv")
    row = table[(table["lambda"] == 0.01) & (table["quantity"] == "mu_2")].iloc[0]
    seeds = np.append(others[:3], [4.0 * 4 * 1.01 + 5, others[3]])
    assert row["n_seeds"] == 5 and row["mean"] == pytest.approx(seeds.mean()) and row["max"] == seeds.max()
    assert row["std"] == pytest.approx(seeds.std(ddof=1))
    last = table[(table["lambda"] == 0.1) & (table["quantity"] == "distance_to_anchor")].iloc[0]
    assert last["n_seeds"] == 4 and np.isnan(last["seed_4"]) and last["mean"] == pytest.approx(95.5)
    summary = (d / "summary.md").read_text()
    assert "1 flagged in 35 checks" in summary  # (4 μ + 3 metrics) × 5 λ, every λ with ≥ 4 seeds
    flagged = [line for line in summary.splitlines() if line.startswith("| 0.01 | mu_2 | 3 |")]
    assert len(flagged) == 1
    assert "c_3 = 78, c_4 = 11.5, c_5 = 6.53" in summary
    # the flagged value is a red × on the μ figure
    result = report.render_seeds_report(out, "base", formats=("png",), keep_figures=True)
    crosses = [(x, y) for ax in result.figures["seeds_mu"].axes for line in ax.lines if line.get_marker() == "x"
               for x, y in zip(line.get_xdata(), line.get_ydata())]
    assert crosses == [(0.01, pytest.approx(4.0 * 4 * 1.01 + 5))]


def test_seeds_without_outlier_flag_nothing_and_mixed_runs_are_refused(tmp_path, capsys):
    out = _seed_runs(tmp_path / "seeds", planted=False)
    result = report.render_seeds_report(out, "base", formats=("png",))
    assert result.flags == [] and "No seed flagged in 35 checks" in (result.directory / "summary.md").read_text()
    _write_run(out, "other", LAMS, THETA, MU, store=False)
    assert report.plan_runs(out, None) == ([None], [])
    assert report.plan_runs(out, "base") == ([f"base-seed{s}" for s in range(5)], ["base"])
    assert report.main([str(out), "--quiet"]) == 2
    assert "several runs" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- the store


@pytest.mark.slow
def test_files_plots_and_series(rendered):
    result, before, after = rendered
    d = result.directory
    assert d.name == "report-default" and d.parent.name == "sweep"
    for name in PLOTS:
        _check_png(d / f"{name}.png", result.figures[name])
        assert (d / f"{name}.svg").read_text().count("<svg") == 1
    assert before == after  # nothing written into the store
    assert not list(d.glob(".tmp-*"))
    meta = json.loads((d / "derived.json").read_text())
    assert meta["k"] == K and meta["n_lambdas"] == meta["total_lambdas"] == 4 and meta["source"] == "zarr"
    figs = result.figures
    # λ = 0, 1/30, 2/30, 0.1 span less than two decades: one linear λ axis per row, no λ = 0 panel
    assert meta["lambda_axis"] == "linear" and figs["eigenvalues"].axes[0].get_xscale() == "linear"
    # k eigenvalue curves + the 2λ line (+ the unconverged markers); one line per branch, on μ
    marked = int(bool(meta["unconverged"]))
    assert len(figs["eigenvalues"].axes[0].lines) == K + 1 + marked == meta["plots"]["eigenvalues"]["series"]
    assert len(figs["data_eigenvalues"].axes[0].lines) == K + marked == meta["plots"]["data_eigenvalues"]["series"]
    assert len(figs["branches"].axes[0].lines) == meta["n_branches"] == meta["plots"]["branches"]["series"]
    assert [len(ax.lines) for ax in figs["outliers"].axes] == [1, 1, 1]
    assert sum(len(ax.lines) for ax in figs["performance"].axes) == 3
    assert meta["plots"]["overlaps"]["series"] == 1 + len(report.representative_pairs(
        report.compute_derived(report.load_sweep(d.parent))))
    summary = (d / "summary.md").read_text()
    for name in PLOTS:
        assert f"({name}.png)" in summary
    assert "| λ finished | 4 of 4" in summary and "| outliers above the bulk (on μ) |" in summary
    assert "as written by the sweep (`data_eigenvalues`)" in summary and meta["mu_source"] == "written"


@pytest.mark.slow
def test_derived_values_follow_their_definitions(run, rendered):
    result, _, _ = rendered
    table = pd.read_csv(result.directory / "derived.csv")
    g, order = _store_arrays(run)
    lam = g["lambda"][:][order]
    ev = g["eigenvalues"][:][order]
    np.testing.assert_array_equal(table["lambda"], lam)
    np.testing.assert_array_equal(table[[f"eig_{j}" for j in range(1, K + 1)]].to_numpy(), ev)
    for name in ("distance_to_anchor", "grad_norm", "test_accuracy", "train_loss"):
        np.testing.assert_array_equal(table[name], g[name][:][order])
    mu = g["data_eigenvalues"][:][order]
    np.testing.assert_array_equal(table[[f"mu_{j}" for j in range(1, K + 1)]].to_numpy(), mu)
    np.testing.assert_allclose(mu, ev - 2 * lam[:, None], rtol=0, atol=4e-16 * np.abs(ev).max())
    np.testing.assert_array_equal(table["gap"], mu[:, 0] / mu[:, -1])
    med = np.median(mu, axis=1)
    np.testing.assert_array_equal(table["n_outliers"], np.sum(mu > 3 * med[:, None], axis=1))
    np.testing.assert_array_equal(table["outlier_threshold"], 3 * med)
    conv = g["eig_converged"][:][order]
    np.testing.assert_array_equal(table["n_unconverged"], np.sum(~conv, axis=1))
    meta = json.loads((result.directory / "derived.json").read_text())
    expected = [(float(lam[i]), int(j) + 1) for i, j in zip(*np.nonzero(~conv))]
    assert [(r["lambda"], r["index"]) for r in meta["unconverged"]] == expected
    # overlaps and branches from the eigenvectors, recomputed here by hand
    v0 = g["eigenvectors"][order[0]].astype(np.float64)
    v1 = g["eigenvectors"][order[1]].astype(np.float64)
    o = np.abs(v0 @ v1.T)
    np.testing.assert_allclose(meta["max_overlap"][1], o.max(axis=0), atol=1e-6)
    continued = meta["intervals"][0]["status"] == "continued"
    isolated = [np.all(np.abs(np.delete(m, j) - m[j]) > 1e-3 * np.abs(m).max()) for m in mu[:2] for j in range(K)]
    for j in range(K):
        i = int(np.argmax(o[:, j]))
        bid, ov = table[f"branch_{j + 1}"][1], table[f"overlap_prev_{j + 1}"][1]
        if not continued or np.isnan(ov):  # restarted or new
            assert bid >= K and np.isnan(ov)
        else:  # continued: uniquely (> 1/√2), or as a subspace with all cosines > 1/√2
            assert ov > 1 / np.sqrt(2)
        if continued and o[i, j] > 1 / np.sqrt(2) and np.argmax(o[i]) == j and isolated[i] and isolated[K + j]:
            assert bid == i and ov == pytest.approx(o[i, j], abs=1e-6)  # at the first λ branch i is index i + 1
    # every branch's points are (λ, eigenvalue) pairs of the table
    for branch in meta["branches"].values():
        for lam_b, val, idx in zip(branch["lambda"], branch["eigenvalue"], branch["index"]):
            row = np.flatnonzero(lam == lam_b)[0]
            assert ev[row, idx - 1] == val


# --------------------------------------------------------------------------------------------- CSV only, partial


@pytest.mark.slow
def test_csv_only_directory_gives_the_same_report(run, rendered, tmp_path):
    out = _copy(run, tmp_path / "csv", store=False)
    result = render_report(out, formats=("png",))
    assert result.derived["source"] == "csv"
    for name in PLOTS:
        _check_png(result.directory / f"{name}.png")
    assert result.derived["mu_source"] == "written"  # from the certificates CSV
    assert result.derived["n_params"] == rendered[0].derived["n_params"] > 0  # P from the gradient files
    ref = pd.read_csv(rendered[0].directory / "derived.csv")
    got = pd.read_csv(result.directory / "derived.csv")
    assert list(got.columns) == list(ref.columns)
    np.testing.assert_allclose(got["lambda"], ref["lambda"], rtol=1e-12)
    eig = [f"eig_{j}" for j in range(1, K + 1)] + [f"mu_{j}" for j in range(1, K + 1)]
    np.testing.assert_array_equal(got[eig], ref[eig])  # θ and μ are written %.17g: bitwise
    branch = [f"branch_{j}" for j in range(1, K + 1)]
    np.testing.assert_array_equal(got[branch], ref[branch])
    for name in ("distance_to_anchor", "grad_norm", "test_loss", "n_outliers", "gap", "n_unconverged"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-12)
    ov = [f"overlap_prev_{j}" for j in range(1, K + 1)]
    np.testing.assert_allclose(got[ov], ref[ov], atol=1e-6)
    # a λ missing from Model-ID.csv is unfinished: its per-λ files are ignored
    model = out / "Model-default.csv"
    lines = model.read_text().splitlines()
    model.write_text("\n".join(lines[:-1]) + "\n")
    assert report.load_sweep(out).lambdas.tolist() == ref["lambda"].tolist()[:-1]


@pytest.mark.slow
def test_partial_store_uses_only_done_rows(run, tmp_path):
    out = _copy(run, tmp_path / "partial")
    g = zarr.open_group(str(out / "default.zarr"), mode="r+", use_consolidated=False)
    lam = g["lambda"][:]
    keep = np.sort(lam)[[0, 2]]
    done = g["done"][:]
    done[~np.isin(lam, keep)] = False
    g["done"][:] = done
    result = render_report(out, formats=("png",))
    table = pd.read_csv(result.directory / "derived.csv")
    np.testing.assert_array_equal(table["lambda"], keep)
    assert result.derived["n_lambdas"] == 2 and result.derived["total_lambdas"] == 4
    assert "| λ finished | 2 of 4" in (result.directory / "summary.md").read_text()
    g["done"][:] = np.zeros_like(done)
    with pytest.raises(UsageError, match="no finished λ"):
        render_report(out, formats=("png",))


@pytest.mark.slow
def test_extra_arrays_get_their_plots(run, tmp_path):
    out = _copy(run, tmp_path / "extras")
    g = zarr.open_group(str(out / "default.zarr"), mode="r+", use_consolidated=False)
    n = g["lambda"].shape[0]
    lam = g["lambda"][:]
    grid = np.linspace(-1, 6, 50)

    def add(name, values, dims):
        arr = g.create_array(name, shape=values.shape, dtype="float64", dimension_names=dims)
        arr[:] = values

    add("trace", 100 + 2 * lam * 118_282, ("lambda",))
    add("trace_stderr", np.full(n, 3.0), ("lambda",))
    add("density_grid", grid, ("grid",))
    dens = np.exp(-0.5 * (grid[None, :] - lam[:, None] - 1) ** 2)
    add("density", dens / np.trapezoid(dens, grid, axis=1)[:, None], ("lambda", "grid"))
    add("bottom_eigenvalues", np.stack([2 * lam - 0.1, 2 * lam - 0.05], axis=1), ("lambda", "bottom"))
    result = render_report(out, formats=("png",), keep_figures=True)
    for name in ("trace", "density", "bottom"):
        _check_png(result.directory / f"{name}.png", result.figures[name])
    plots = result.derived["plots"]
    # θ: two bottom eigenvalues and 2λ, plus a thin line at zero; μ: two and zero; no flags, no markers
    assert plots["bottom"]["series"] == 5 and [len(ax.lines) for ax in result.figures["bottom"].axes] == [4, 3]
    assert plots["trace"]["series"] == 3 and plots["density"]["series"] == 4
    table = pd.read_csv(result.directory / "derived.csv")
    np.testing.assert_allclose(table["trace"], 100 + 2 * table["lambda"] * 118_282)
    np.testing.assert_allclose(table["trace_data"], 100, rtol=1e-9)
    np.testing.assert_allclose(table["lambda_min"], 2 * table["lambda"] - 0.1)
    np.testing.assert_allclose(table["mu_min"], -0.1, rtol=1e-12)
    # the stored density over θ peaks at θ = λ + 1: re-gridded onto μ it peaks at μ = 1 − λ
    data = report.load_sweep(out)
    peaks = data.extras["density_grid"][np.argmax(data.extras["density"], axis=1)]
    step = np.diff(data.extras["density_grid"])[0]
    np.testing.assert_allclose(peaks, 1 - data.lambdas, atol=step)
    assert sorted(result.derived["extras"]) == ["bottom_eigenvalues", "density", "density_grid", "trace",
                                                "trace_stderr"]


# --------------------------------------------------------------------------------------------- branches


def _synthetic(lams, vectors, values, tmp_path=None, distances=None):
    """SweepData of given per-λ eigenvalues ``[n, k]`` and eigenvectors ``[n, k, P]`` (kept in memory)."""
    n = len(lams)
    distances = np.full(n, 1.5) if distances is None else np.asarray(distances, float)
    metrics = {"distance_to_anchor": distances, "grad_norm": np.full(n, 1e-3),
               "train_loss": np.full(n, 0.1), "test_loss": np.full(n, 0.2), "test_accuracy": np.full(n, 0.9)}
    return SweepData("synthetic", "zarr", np.asarray(lams, float), metrics, np.asarray(values, float), n,
                     vectors.shape[-1], {}, lambda i: vectors[i].astype(np.float32))


def test_branches_follow_a_crossing_and_new_directions(tmp_path):
    # directions A, B, C, D; A falls, B rises (they cross between λ=1 and λ=2), C leaves the top 3 at λ=3
    # where D enters. Each λ's vectors are slightly rotated, as real eigenvectors drift.
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    a, b, c, d = basis[:, 0], basis[:, 1], basis[:, 2], basis[:, 3]
    values = {"A": [10, 8, 6, 4], "B": [5, 7, 9, 11], "C": [3, 3, 3, 1], "D": [0.5, 0.5, 0.5, 2]}
    dirs = {"A": a, "B": b, "C": c, "D": d}
    lams = [0.0, 1.0, 2.0, 3.0]
    vecs, vals = [], []
    for t in range(4):
        top = sorted(values, key=lambda s: -values[s][t])[:3]
        rows = []
        for s in top:
            v = dirs[s] + 0.15 * rng.standard_normal(12) / np.sqrt(12)
            rows.append(v / np.linalg.norm(v))
        vecs.append(np.stack(rows))
        vals.append([values[s][t] for s in top])
    data = _synthetic(lams, np.stack(vecs), vals)
    assert data.eigenvalues[:, 0].tolist() == [10, 8, 9, 11]  # following the index mixes A and B
    result = write_report(data, tmp_path / "rep", formats=("png",), keep_figures=True)
    branches = {tuple(br["eigenvalue"]): br for br in result.derived["branches"].values()}
    assert set(branches) == {(10, 8, 6, 4), (5, 7, 9, 11), (3, 3, 3), (2,)}
    assert branches[(10, 8, 6, 4)]["index"] == [1, 1, 2, 2] and branches[(5, 7, 9, 11)]["index"] == [2, 2, 1, 1]
    assert branches[(2,)]["lambda"] == [3.0]
    assert result.derived["n_branches"] == 4 and result.derived["reordered_pairs"] == 1
    # in μ = λ_i − 2λ B passes A between λ = 1 and 2; D is new at λ = 3 (where C left)
    assert [(c["lambda"], c["above_before"], c["above_after"]) for c in result.derived["crossings"]] == [
        ([1.0, 2.0], 0, 1)]
    assert result.derived["new_branches"] == [{"lambda": 3.0, "index": 3, "branch": 3}]
    assert result.derived["n_avoided_crossings"] == 0 and result.derived["n_discontinuities"] == 0
    assert result.derived["headline"]["branches / new / crossings / avoided crossings / discontinuities"] == \
        "4 / 1 / 1 / 0 / 0"
    ax = result.figures["branches"].axes[0]
    assert len(ax.lines) == 4  # one per branch
    assert [len(c.get_offsets()) for c in ax.collections] == [1]  # the crossing (×), nothing else
    # drawn on μ = θ − 2λ: the branch of direction B is 5, 7 − 2, 9 − 4, 11 − 6
    ys = [np.asarray(line.get_ydata(), float) for line in ax.lines]
    assert any(np.array_equal(y, [5, 5, 5, 5]) for y in ys)
    assert any(np.array_equal(y, [10, 6, 2, np.nan], equal_nan=True) for y in ys)  # μ = −2 not on a log axis
    _check_png(result.directory / "branches.png", result.figures["branches"])


def test_missing_vectors_are_stepped_over_and_no_vectors_follow_indices(tmp_path):
    v = np.linalg.qr(np.random.default_rng(1).standard_normal((10, 10)))[0][:3]
    vals = np.array([[3, 2, 1], [np.nan] * 3, [2.0, 3.1, 1.1], [3.2, 2.2, np.nan]])
    vecs = np.stack([v, np.full_like(v, np.nan), v[[1, 0, 2]], v])  # λ=0.1 diverged; at 0.2 the top two swap
    vecs[3, 2] = np.nan  # only two pairs found at λ=0.3
    data = _synthetic([0.0, 0.1, 0.2, 0.3], vecs, vals)
    derived = report.compute_derived(data)
    assert derived.branch.tolist() == [[0, 1, 2], [-1, -1, -1], [1, 0, 2], [0, 1, -1]]
    assert [(a, b) for a, b, _ in derived.pairs] == [(0, 2), (2, 3)] and derived.branch_rows == [0, 2, 3]
    # the top two swap their vectors and their indices, but not their order of μ = λ_i − 2λ: no crossing
    assert derived.branching.status == ["continued", "continued"] and report.reordered_pairs(derived) == 0
    assert np.isnan(derived.max_overlap[:2]).all() and np.allclose(derived.max_overlap[2], 1, atol=1e-6)
    data.vector_reader = None
    derived = report.compute_derived(data)
    assert derived.branch.tolist() == [[0, 1, 2], [-1, -1, -1], [0, 1, 2], [0, 1, -1]] and not derived.has_vectors
    result = write_report(data, tmp_path / "rep", formats=("png",))
    assert result.derived["n_branches"] == 3 and result.derived["plots"]["overlaps"]["series"] == 0


def test_discontinuity_restarts_the_branches_and_is_drawn(tmp_path):
    # the training lands in another basin at λ = 0.3: ‖θ − θ_ref‖ grows ×4 and the vectors are unrelated
    q = np.linalg.qr(np.random.default_rng(2).standard_normal((40, 40)))[0]
    vecs = np.stack([q[:3], q[:3], q[3:6], q[3:6]])
    vals = np.array([[5.0, 3.0, 1.0], [5.1, 3.1, 1.1], [6.0, 4.0, 2.0], [6.1, 4.1, 2.1]])
    data = _synthetic([0.1, 0.2, 0.3, 0.4], vecs, vals, distances=[1.0, 0.9, 3.6, 3.5])
    result = write_report(data, tmp_path / "rep", formats=("png",), keep_figures=True)
    meta = result.derived
    assert meta["n_discontinuities"] == 1 and meta["discontinuities"][0]["lambda"] == [0.2, 0.3]
    assert "θ_ref" in meta["discontinuities"][0]["reason"]
    assert meta["n_branches"] == 6 and meta["n_new_branches"] == 0  # three restarted, none new
    assert [iv["status"] for iv in meta["intervals"]] == ["continued", "discontinuity", "continued"]
    table = pd.read_csv(result.directory / "derived.csv")
    assert table[["branch_1", "branch_2", "branch_3"]].to_numpy().tolist() == [[0, 1, 2]] * 2 + [[3, 4, 5]] * 2
    assert table["overlap_prev_1"].isna().tolist() == [True, False, True, False]
    ax = result.figures["branches"].axes[0]
    assert len(ax.lines) == 6 and len(ax.collections) == 1  # a line per branch; the dashed line at the discontinuity
    (seg,) = ax.collections[0].get_segments()
    assert seg[0, 0] == seg[1, 0] == pytest.approx(np.sqrt(0.2 * 0.3))
    assert "| branches / new / crossings / avoided crossings / discontinuities | 6 / 0 / 0 / 0 / 1 |" in \
        (result.directory / "summary.md").read_text()
    with pytest.raises(UsageError, match="min-overlap"):
        write_report(data, tmp_path / "rep2", min_overlap=0.5)


# --------------------------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_cli_refusals_are_one_error_line(run, tmp_path, capsys):
    proc = subprocess.run([sys.executable, "-m", "hessjax.report", str(tmp_path / "missing")], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr
    (tmp_path / "empty").mkdir()
    two = _copy(run, tmp_path / "two", store=False)
    shutil.copy(two / "Model-default.csv", two / "Model-other.csv")
    cases = [
        ([str(tmp_path / "empty")], "no sweep results"),
        ([str(two)], "several runs (default, other)"),
        ([str(two), "--id", "nope"], "no results of run 'nope'"),
        ([str(run), "--outlier-factor", "-1"], "--outlier-factor"),
        ([str(run), "--formats", "jpg"], "--formats"),
    ]
    for argv, message in cases:
        assert report.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert report.main([str(two), "--id", "default", "--formats", "png", "--quiet"]) == 0
    assert capsys.readouterr().out == "" and (two / "report-default" / "summary.md").is_file()


def test_missing_matplotlib_is_one_error_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """``pip install -e .`` alone does not bring matplotlib (the ``plot`` extra)."""
    copy = tmp_path / "copy"
    _write_run(copy, "default", LAMS, THETA, store=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert report.main([str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "[plot]" in err, err
    assert not (copy / "report-default").exists()
