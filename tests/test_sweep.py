"""``python -m hessjax.sweep`` end to end on real MNIST subsets, checked with torch and numpy.

The sweep runs in subprocesses exactly as a user runs it (float32, the default configuration of
jax), on small configurations so the whole file stays within a few minutes on 2 cores.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ANCHOR, REPO, SMALL, read_pth, sweep

EPS32 = float(np.finfo(np.float32).eps)

pytestmark = pytest.mark.slow

def test_every_file_in_the_original_layout(base_run):
    out = base_run
    model = pd.read_csv(out / "Model-default.csv")
    assert list(model.columns[:4]) == ["lambda", "train_loss", "test_loss", "test_accuracy"]
    assert model["lambda"].tolist() == [0.0, 0.0002, 0.02]
    assert model["test_accuracy"].between(0, 1).all() and not model["diverged"].any()
    for label in ("0", "0.0002", "0.02"):
        grads = pd.read_csv(out / f"gradients-default-{label}.csv")
        assert list(grads.columns) == ["parameter", "gradient"] and len(grads) == 118_282
        assert grads["parameter"].iloc[0] == "0.weight" and grads["parameter"].iloc[-1] == "4.bias"
        vals = pd.read_csv(out / f"Hessian-eigenvalues-default-{label}.csv")
        assert list(vals.columns) == ["eigenvalue"] and len(vals) == 4
        assert np.all(np.diff(vals["eigenvalue"]) <= 0)
        vecs = pd.read_csv(out / f"Hessian-eigenvectors-default-{label}.csv")
        assert list(vecs.columns) == ["parameter", "v1", "v2", "v3", "v4"] and len(vecs) == 118_282
        V = vecs[["v1", "v2", "v3", "v4"]].to_numpy()
        np.testing.assert_allclose(V.T @ V, np.eye(4), atol=32 * EPS32)  # measured ≤ 4.3 ε: float32 Ritz vectors
        sd = read_pth(out / f"model_weights-default-{label}.pth")
        assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
        assert (out / "records" / f"default-{label}.json").exists()
    manifest = json.loads((out / "manifest-default.json").read_text())
    assert manifest["schema_version"] and manifest["anchor_sha256"] and manifest["versions"]["jax"]
    assert set(manifest["lambdas"]) == {"0", "0.0002", "0.02"}
    assert not list(out.glob(".tmp-*"))


def test_weights_in_torch_reproduce_losses_and_eigenpairs(base_run):
    """The written weights loaded into torch give the recorded losses and gradient, and torch's
    double-backward HVP at those weights, in float64, confirms every written eigenpair: the data
    Hessian's μ = θ − 2λ with the residual the solver certified (‖Hv − μv‖ ≤ tol·scale, tol = 1e-5)."""
    from hessjax.bridges import TorchHVP, TorchMLP, grad_torch, load_anchor
    from hessjax.mnist import load_mnist

    out = base_run
    data = load_mnist(train_samples=600, test_samples=300)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train.astype(np.int64))
    x64 = torch.from_numpy(load_mnist(train_samples=600, test_samples=1, dtype=np.float64).x_train)
    xt, yt = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test.astype(np.int64))
    anchor = [torch.from_numpy(np.array(a)) for pair in load_anchor(ANCHOR).params for a in pair]
    anchor64 = [a.double() for a in anchor]
    model_csv = pd.read_csv(out / "Model-default.csv")
    for _, row in model_csv.iterrows():
        lam = float(row["lambda"])
        label = np.format_float_positional(lam, trim="-")
        model = TorchMLP()
        model.load_state_dict(read_pth(out / f"model_weights-default-{label}.pth"), strict=True)
        with torch.no_grad():
            train_loss = float(torch.nn.functional.cross_entropy(model(x), y))
            logits = model(xt)
            test_loss = float(torch.nn.functional.cross_entropy(logits, yt))
            acc = float((logits.argmax(1) == yt).double().mean())
        # float32 torch against float32 hessjax, means over 600 and 300 samples: 16 ε
        assert train_loss == pytest.approx(row['train_loss'], rel=16 * EPS32)
        assert test_loss == pytest.approx(row['test_loss'], rel=16 * EPS32)
        assert acc == pytest.approx(row['test_accuracy'], abs=1e-6)
        model64 = TorchMLP().double()
        model64.load_state_dict({k: w.double() for k, w in model.state_dict().items()}, strict=True)
        g_torch = grad_torch(model64, anchor64, lam, x64, y).numpy()
        g_file = pd.read_csv(out / f"gradients-default-{label}.csv")["gradient"].to_numpy()
        # float32 against float64: measured ≤ 2.5 ε relative; a wrong term would be far off
        assert np.linalg.norm(g_file - g_torch) <= 16 * EPS32 * np.linalg.norm(g_torch)
        vals = pd.read_csv(out / f"Hessian-eigenvalues-default-{label}.csv")["eigenvalue"].to_numpy()
        V = pd.read_csv(out / f"Hessian-eigenvectors-default-{label}.csv").iloc[:, 1:].to_numpy().T
        rec = json.loads((out / "records" / f"default-{label}.json").read_text())
        np.testing.assert_array_equal(vals - 2 * lam, rec["data_eigenvalues"])  # θ = μ + 2λ, exactly in float64
        op = TorchHVP(model64, anchor64, 0.0, x64[:400], y[:400])  # the data Hessian over the Hessian samples
        for mu, v in zip(rec["data_eigenvalues"], V):
            hv = op(torch.from_numpy(v.astype(np.float64))).numpy()
            # the certified bound, checked in float64 (measured ≤ 6.2e-7·scale)
            assert np.linalg.norm(hv - mu * v) <= 1e-5 * rec["convergence_scale"], (label, mu)


def test_store_opens_in_xarray_and_matches_the_files(base_run):
    import xarray as xr

    ds = xr.open_zarr(base_run / "default.zarr").sortby("lambda")
    assert ds["done"].values.all()
    assert ds["eigenvectors"].shape == (3, 4, 118_282)
    vals = pd.read_csv(base_run / "Hessian-eigenvalues-default-0.02.csv")["eigenvalue"].to_numpy()
    np.testing.assert_array_equal(ds["eigenvalues"].sel({"lambda": 0.02}).values.astype(np.float32),
                                  vals.astype(np.float32))
    V = pd.read_csv(base_run / "Hessian-eigenvectors-default-0.02.csv").iloc[:, 1:].to_numpy().T
    np.testing.assert_array_equal(ds["eigenvectors"].sel({"lambda": 0.02}).values, V.astype(np.float32))


def test_rerun_skips_finished_and_extending_the_grid_reuses_them(base_run, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in base_run.glob("model_weights-*.pth")}
    proc = sweep("--out", base_run, "--lambdas", "0,0.0002,0.02,0.1", "--quiet", *SMALL)
    after = {p.name: p.stat().st_mtime_ns for p in base_run.glob("model_weights-*.pth")}
    assert {k: after[k] for k in before} == before, "finished λ must not be recomputed"
    assert "model_weights-default-0.1.pth" in after
    assert pd.read_csv(base_run / "Model-default.csv")["lambda"].tolist() == [0.0, 0.0002, 0.02, 0.1]
    assert proc.returncode == 0


def test_batched_lambdas_equal_single_runs(base_run, tmp_path):
    sweep("--out", tmp_path, "--lambdas", "0,0.0002,0.02", "--lambda-batch", "3", "--quiet", *SMALL)
    a = pd.read_csv(base_run / "Model-default.csv").iloc[:3]
    b = pd.read_csv(tmp_path / "Model-default.csv")
    assert a["epochs"].tolist() == b["epochs"].tolist()
    for col in ("train_loss", "test_loss", "grad_norm", "distance_to_anchor"):
        np.testing.assert_allclose(b[col], a[col], rtol=8 * EPS32)  # measured: equal
    _same_spectrum(base_run, tmp_path)


def test_four_devices_equal_one(base_run, tmp_path):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    sweep("--out", tmp_path, "--lambdas", "0,0.0002,0.02", "--quiet", *SMALL, env=env)
    manifest = json.loads((tmp_path / "manifest-default.json").read_text())
    assert len(manifest["devices"]) == 4
    a = pd.read_csv(base_run / "Model-default.csv").iloc[:3]
    b = pd.read_csv(tmp_path / "Model-default.csv")
    assert a["epochs"].tolist() == b["epochs"].tolist()
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=8 * EPS32)  # measured ≤ 0.9 ε
    _same_spectrum(base_run, tmp_path)


def _same_spectrum(a, b):
    """The data-Hessian eigenvalues of two runs of the same λ agree to float32 rounding of the Ritz
    values: 16 ε·μ₁ (a batch of 3, or 4 devices, against single λ: measured ≤ 4.3e-7·μ₁ = 3.6 ε·μ₁)."""
    for label, lam in (("0", 0.0), ("0.0002", 0.0002), ("0.02", 0.02)):
        mu_a = pd.read_csv(a / f"Hessian-eigenvalues-default-{label}.csv")["eigenvalue"].to_numpy() - 2 * lam
        mu_b = pd.read_csv(b / f"Hessian-eigenvalues-default-{label}.csv")["eigenvalue"].to_numpy() - 2 * lam
        assert np.max(np.abs(mu_b - mu_a)) <= 16 * EPS32 * mu_a[0], label


def test_kill_and_resume_equals_an_uninterrupted_run(base_run, tmp_path):
    env = dict(os.environ, HESSJAX_CACHE_DIR=str(REPO / ".jax_cache"))
    args = [sys.executable, "-m", "hessjax.sweep", "--out", str(tmp_path), "--lambdas", "0,0.0002,0.02", "--quiet",
            *SMALL]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "records" / "default-0.json").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "records" / "default-0.json").exists()
    assert not (tmp_path / "records" / "default-0.02.json").exists()
    sweep("--out", tmp_path, "--lambdas", "0,0.0002,0.02", "--quiet", *SMALL)
    for label in ("0", "0.0002", "0.02"):
        for name in (f"Hessian-eigenvalues-default-{label}.csv", f"gradients-default-{label}.csv",
                     f"Hessian-eigenvectors-default-{label}.csv"):
            assert (tmp_path / name).read_bytes() == (base_run / name).read_bytes(), name
        wa, wb = read_pth(base_run / f"model_weights-default-{label}.pth"), read_pth(
            tmp_path / f"model_weights-default-{label}.pth")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not list(tmp_path.glob(".tmp-*"))


def test_diverged_lambda_is_recorded_and_the_sweep_continues(tmp_path):
    """Also: a float64 anchor works with the default float32 sweep, and its dtype is written back."""
    anchor64 = tmp_path / "anchor64.pth"
    torch.save({k: v.double() for k, v in read_pth(ANCHOR).items()}, anchor64)
    sweep("--out", tmp_path, "--anchor", anchor64, "--id", "default", "--lambdas", "0,1e38", "--quiet", *SMALL)
    assert all(t.dtype == torch.float64 for t in read_pth(tmp_path / "model_weights-default-0.pth").values())
    model = pd.read_csv(tmp_path / "Model-default.csv")
    assert model["diverged"].tolist() == [False, True]
    assert not (tmp_path / "Hessian-eigenvalues-default-100000000000000000000000000000000000000.csv").exists()
    assert len(list(tmp_path.glob("Hessian-eigenvalues-*.csv"))) == 1


def test_no_recompilation_across_batches():
    import hessjax.sweep

    summary = hessjax.sweep.run(hessjax.sweep.SweepConfig(
        out=str(REPO / ".pytest_cache" / "sweep-compile"), lambdas="0,0.001,0.002", overwrite=True, quiet=True,
        train_samples=300, test_samples=100, hessian_samples=200, k=2, max_epochs=2, batch_size=100, dtype="float32"))
    assert len(summary["finished"]) == 3
    assert summary["compilations"] == {"init": 1, "epoch": 1, "analyze": 1, "healthy": 1}


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    proc = sweep("--out", out, "--dry-run")
    assert "501" in proc.stdout and "estimate" in proc.stdout and "disk" in proc.stdout
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--lambdas=-0.1,0.2"], "negative"),
    (["--lambdas", "-0.1,0.2"], "--lambdas"),
    (["--k", "0"], "--k"),
    (["--lambdas", "nan"], "nan"),
    (["--lambdas", "0.1,0.1"], "duplicate"),
    (["--lambdas", "0:0.1:0"], "num"),
    (["--anchor", "/no/such/anchor.pth"], "anchor.pth"),
    (["--data-dir", "/no/such/dir"], "/no/such/dir"),
    (["--tfds-dir", "/no/such/tfds"], "tfds"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    proc = sweep("--out", out, *args, *SMALL, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0].lower(), lines
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_out_and_corrupt_anchor_are_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = sweep("--out", blocker / "sub", *SMALL, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.pth"
    bad.write_bytes(ANCHOR.read_bytes()[:1000])
    proc = sweep("--out", tmp_path / "o", "--anchor", bad, *SMALL, check=False)
    assert proc.returncode == 2 and "bad.pth" in proc.stderr and "Traceback" not in proc.stderr


def test_a_different_configuration_is_refused_unless_overwrite(base_run):
    proc = sweep("--out", base_run, "--lambdas", "0", "--quiet", *SMALL[:-2], "--eigenvectors", "npy", "--lr", "0.01",
                 check=False)
    assert proc.returncode == 2 and "lr" in proc.stderr


def test_trace_density_bottom_k_and_ggn_extras(tmp_path):
    import xarray as xr

    sweep("--out", tmp_path, "--lambdas", "0,0.05", "--quiet", *SMALL, "--trace", "--trace-probes", "20",
          "--density", "--density-probes", "3", "--density-iters", "30", "--bottom-k", "2", "--ggn")
    model = pd.read_csv(tmp_path / "Model-default.csv")
    assert {"trace", "trace_stderr", "lambda_min", "lambda_min_residual", "lambda_c", "ggn_max", "gradient_overlap",
            "displacement_overlap"} <= set(model.columns)
    assert model["gradient_overlap"].between(0, 1).all() and model["displacement_overlap"].between(0, 1).all()
    ds = xr.open_zarr(tmp_path / "default.zarr").sortby("lambda")
    np.testing.assert_array_equal(ds["gradient_overlap"].values, model["gradient_overlap"].to_numpy())
    assert ds["slq_nodes"].shape == (2, 3, 30) and ds["bottom_eigenvalues"].shape == (2, 2)
    np.testing.assert_allclose(ds["slq_weights"].sum("node").values, 1.0, rtol=16 * EPS32)  # squares of a unit vector
    records = {0.0: json.loads((tmp_path / "records" / "default-0.json").read_text()),
               0.05: json.loads((tmp_path / "records" / "default-0.05.json").read_text())}
    for i, (lam, label) in enumerate(((0.0, "0"), (0.05, "0.05"))):
        rec = records[lam]
        top = pd.read_csv(tmp_path / f"Hessian-eigenvalues-default-{label}.csv")["eigenvalue"].to_numpy()
        bottom = pd.read_csv(tmp_path / f"Hessian-bottom-eigenvalues-default-{label}.csv")
        assert list(bottom.columns) == ["eigenvalue", "residual", "converged"]
        assert np.all(np.diff(bottom["eigenvalue"]) >= 0) and bottom["converged"].all()
        assert bottom["eigenvalue"].iloc[0] == model["lambda_min"].iloc[i]  # the same float64, written twice
        # the bottom pairs were certified on the data Hessian at the solver's scale |μ₁ − μ_min| (tol 1e-5)
        mu_bottom = bottom["eigenvalue"].to_numpy() - 2 * lam
        assert (bottom["residual"] <= 1e-5 * (rec["data_eigenvalues"][0] - mu_bottom[0]) * (1 + 1e-6)).all()
        # the density is of ∇²L_eff: its nodes lie inside [λ_min, λ_max] up to the certified residuals
        nodes = ds["slq_nodes"].values[i]
        slack = 1e-5 * rec["convergence_scale"]
        assert nodes.min() >= bottom["eigenvalue"].iloc[0] - slack and nodes.max() <= top[0] + slack
        density = pd.read_csv(tmp_path / f"Hessian-density-default-{label}.csv")
        assert list(density.columns) == ["probe", "node", "weight"] and len(density) == 90
        np.testing.assert_allclose(density["node"].to_numpy().reshape(3, 30), nodes, rtol=0, atol=0)
        # the trace of ∇²L_eff is the data term's (estimated) plus exactly 2λP, added in float64
        assert rec["extra"]["trace"] == rec["extra"]["data_trace"] + 2 * lam * 118_282
        # λ_c = max(0, −μ_min/2): L_eff is locally convex at these weights exactly when λ ≥ λ_c
        assert rec["extra"]["lambda_c"] == max(0.0, -mu_bottom[0] / 2) and model["lambda_c"].iloc[i] >= 0
        assert (lam >= rec["extra"]["lambda_c"]) == (bottom["eigenvalue"].iloc[0] >= 0)
        ggn = pd.read_csv(tmp_path / f"GGN-eigenvalues-default-{label}.csv")
        assert list(ggn.columns) == ["eigenvalue", "residual", "converged"] and len(ggn) == 4 and ggn["converged"].all()
        assert np.all(np.diff(ggn["eigenvalue"]) <= 0) and ggn["eigenvalue"].iloc[0] == rec["extra"]["ggn_max"]
        np.testing.assert_array_equal(ds["ggn_eigenvalues"].values[i], ggn["eigenvalue"].to_numpy())
    assert (model["ggn_max"] > 0).all()  # G is positive semi-definite (its torch comparison: tests/test_ggn.py)
    proc = subprocess.run([sys.executable, "-m", "hessjax.report", str(tmp_path), "--quiet"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    for name in ("trace", "density", "bottom", "ggn", "subspace"):
        assert (tmp_path / "report-default" / f"{name}.png").stat().st_size > 5000
