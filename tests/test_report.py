"""``python -m hessjax.report`` on a small real sweep (store, CSV-only, partial) and on synthetic spectra.

One real sweep is run per module (the command a user runs; the tests that need it are marked slow); every
test that changes it works on a copy.
Most reports are rendered as PNG only to keep the file quick; the first one writes PNG and SVG.
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
from hessjax.report import SweepData, render_report, write_report
from hessjax.results import UsageError

PLOTS = ("eigenvalues", "outliers", "performance", "distance", "overlaps", "branches")
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


def _check_png(path):
    import matplotlib.image

    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000, path
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 500 and img.shape[2] in (3, 4), img.shape
    assert np.ptp(img[..., :3]) > 0.5  # not a blank canvas


def _store_arrays(run):
    g = zarr.open_group(str(run / "default.zarr"), mode="r", use_consolidated=False)
    order = np.argsort(g["lambda"][:])
    return g, order


# --------------------------------------------------------------------------------------------- the store


@pytest.mark.slow
def test_files_plots_and_series(rendered):
    result, before, after = rendered
    d = result.directory
    assert d.name == "report-default" and d.parent.name == "sweep"
    for name in PLOTS:
        _check_png(d / f"{name}.png")
        svg = (d / f"{name}.svg").read_text()
        assert svg.startswith("<?xml") and "<svg" in svg
    assert before == after  # nothing written into the store
    assert not list(d.glob(".tmp-*"))
    meta = json.loads((d / "derived.json").read_text())
    assert meta["k"] == K and meta["n_lambdas"] == meta["total_lambdas"] == 4 and meta["source"] == "zarr"
    figs = result.figures
    # k eigenvalue curves + the 2λ line; one line per branch + the 2λ line
    assert len(figs["eigenvalues"].axes[0].lines) == K + 1 == meta["plots"]["eigenvalues"]["series"]
    assert len(figs["branches"].axes[0].lines) == meta["n_branches"] + 1 == meta["plots"]["branches"]["series"]
    assert [len(ax.lines) for ax in figs["outliers"].axes] == [1, 1, 1]
    assert sum(len(ax.lines) for ax in figs["performance"].axes) == 3
    assert meta["plots"]["overlaps"]["series"] == 1 + len(report._representative_pairs(
        report.compute_derived(report.load_sweep(d.parent))))
    summary = (d / "summary.md").read_text()
    for name in PLOTS:
        assert f"({name}.png)" in summary
    assert "| λ finished | 4 of 4" in summary and "outliers above the bulk" in summary


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
    np.testing.assert_allclose(table["gap"], ev[:, 0] / ev[:, -1], rtol=1e-15)
    mu = ev - 2 * lam[:, None]
    med = np.median(mu, axis=1)
    np.testing.assert_array_equal(table["n_outliers"], np.sum(mu > 3 * med[:, None], axis=1))
    # overlaps and branches from the eigenvectors, recomputed here by hand
    v0 = g["eigenvectors"][order[0]].astype(np.float64)
    v1 = g["eigenvectors"][order[1]].astype(np.float64)
    o = np.abs(v0 @ v1.T)
    meta = json.loads((result.directory / "derived.json").read_text())
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
    ref = pd.read_csv(rendered[0].directory / "derived.csv")
    got = pd.read_csv(result.directory / "derived.csv")
    assert list(got.columns) == list(ref.columns)
    np.testing.assert_allclose(got["lambda"], ref["lambda"], rtol=1e-12)
    eig = [f"eig_{j}" for j in range(1, K + 1)]
    np.testing.assert_allclose(got[eig], ref[eig], rtol=1e-6)  # the CSV holds float32 eigenvalues
    branch = [f"branch_{j}" for j in range(1, K + 1)]
    np.testing.assert_array_equal(got[branch], ref[branch])
    for name in ("distance_to_anchor", "grad_norm", "test_loss", "n_outliers"):
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
        _check_png(result.directory / f"{name}.png")
    plots = result.derived["plots"]
    # two bottom eigenvalues and 2λ, plus a thin line at zero
    assert plots["bottom"]["series"] == 3 and len(result.figures["bottom"].axes[0].lines) == 3 + 1
    assert plots["trace"]["series"] == 3 and plots["density"]["series"] == 4
    table = pd.read_csv(result.directory / "derived.csv")
    np.testing.assert_allclose(table["trace"], 100 + 2 * table["lambda"] * 118_282)
    np.testing.assert_allclose(table["trace_data"], 100, rtol=1e-9)
    np.testing.assert_allclose(table["lambda_min"], 2 * table["lambda"] - 0.1)
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
    assert len(ax.lines) == 4 + 1
    assert [len(c.get_offsets()) for c in ax.collections] == [1]  # the crossing (×), nothing else
    _check_png(result.directory / "branches.png")


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
    assert derived.branching.status == ["continued", "continued"] and report._reordered_pairs(derived) == 0
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
    assert len(ax.lines) == 6 + 1 and len(ax.collections) == 1  # the dashed line at the discontinuity
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


def test_missing_matplotlib_is_one_error_line_and_writes_nothing(run, tmp_path, capsys, monkeypatch):
    """``pip install -e .`` alone does not bring matplotlib (the ``plot`` extra)."""
    copy = _copy(run, tmp_path / "copy", store=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert report.main([str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "[plot]" in err, err
    assert not (copy / "report-default").exists()
