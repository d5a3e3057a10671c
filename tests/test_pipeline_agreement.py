"""The PyTorch reference pipeline and ``python -m hessjax.sweep`` agree on every file they write.

Both run as a user runs them (subprocesses, float32, the shipped anchor) on one small configuration:
λ ∈ {0, 0.01}, 500 training samples (batches of 64: seven full ones and a partial one of 52 per epoch),
256 test samples, the Hessian over the first 400 samples, k = 5, at most 4 epochs, and an early-stopping
rule tight enough to fire: ``--patience 1 --min-delta 0.06`` stops λ = 0 after epoch 2 (its L_eff falls by
0.082, then by 0.049 < 0.06), while λ = 0.01 (L_eff falls by ~6 per epoch) runs to the cap of 4. So the
batch order (incl. the partial batch), Adam, the plateau rule and the epoch count are all exercised (the
best epoch is the last one here: L_eff decreases monotonically at this learning rate). Eigenpairs: hessjax's Lanczos at its default ``tol`` (1e-5·|θ₁|), torch's ARPACK at ``--tol 0``.

Both start from the same bits and visit the same batches, so they differ only by float32 rounding: torch
and XLA order the sums of a matmul, a softmax and a reduction differently, and each of the 16 (λ = 0) or
32 (λ = 0.01) Adam steps feeds those ~1e-7 relative differences into the next; Adam's normalisation
``m/√v`` amplifies them where ``v`` is tiny. Measured on this configuration (x86 CPU, 2 cores):

==========================================  ===========  =========  ====================================
quantity                                     measured     tolerance  why this much room
==========================================  ===========  =========  ====================================
weights ‖Δθ‖/‖θ‖                              5.4e-6       5e-5       10× measured
weights max |Δθ|                              6.4e-6       6e-5       10× measured
train/test loss, relative                     1.9e-6       2e-5       ~10×; float32 eps 1.2e-7 × growth
distance_to_anchor, relative                  7.9e-7       1e-5       ~10×
grad_norm, relative                           7.5e-6       1e-4       ~10×; a small norm (0.16 at λ = 0),
                                                                      see the gradient
gradient ‖Δg‖/‖g‖                             1.6e-5       2e-4       ~10×; g ≈ 0.16 at λ = 0 is a small
                                                                      difference of large per-sample terms
test accuracy                                 0            1/256      one of the 256 predictions may flip
eigenvalues |Δθᵢ|/|θ₁|                        1.8e-6       2e-5       ~10×
eigenvectors ‖Δvᵢ‖·gapᵢ/|θ₁| (sign fixed)     4.9e-7       5e-6       10×, see below
top-(k−1) subspace sin∠·gap/|θ₁|              2.3e-7       5e-6       as the eigenvectors
epochs, best epoch, converged, diverged,      equal        equal      integer decisions; the plateau
num_converged_eigs                                                    margins are ≥ 0.01 ≫ 1e-5
names, columns, rows, keys, shapes, dtypes    equal        equal      the same writer code
==========================================  ===========  =========  ====================================

Eigenvectors: by Davis–Kahan a perturbation ``E`` of the Hessian turns eigenvector ``i`` by at most
``‖E‖/gapᵢ``, with ``gapᵢ`` the distance of θᵢ to the nearest other eigenvalue. So ``‖Δvᵢ‖·gapᵢ/|θ₁|``
(a relative size of ``E``) is what is bounded, for ``i < k`` (θ_{k+1} and so gap_k are unknown) and only
where ``gapᵢ/|θ₁| ≥ 1e-3`` (a near-degenerate pair has no well-defined individual eigenvector; here every
``i < k`` qualifies: the smallest gap is 5.9e-3). The top-(k−1) subspace is compared as well, by the sine
of its largest principal angle, bounded by the same ``‖E‖``/|θ₁| over the gap θ_{k−1} − θ_k. These
products measure ~5e-7, i.e. the two Hessians differ by ~5e-7·|θ₁|, consistent with weights that differ by
~5e-6 and float32 HVPs; the float32 CSV rounding of the vectors (~6e-8 in ‖Δv‖) is far below.

About 75 s in all on 2 shared cores (two subprocesses of ~35 s: imports, XLA compilation, ARPACK's HVPs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow

LAMBDAS = ("0", "0.01")
K = 5
CONFIG = ["--lambdas", ",".join(LAMBDAS), "--train-samples", "500", "--test-samples", "256",
          "--hessian-samples", "400", "--k", str(K), "--max-epochs", "4", "--batch-size", "64",
          "--patience", "1", "--min-delta", "0.06", "--seed", "0"]
N_TEST = 256
KEYS = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]

# Tolerances: about 10x the differences measured on this configuration (see the module docstring).
TOL_WEIGHTS_REL = 5e-5
TOL_WEIGHTS_ABS = 6e-5
TOL_LOSS_REL = 2e-5
TOL_DISTANCE_REL = 1e-5
TOL_GRAD_NORM_REL = 1e-4
TOL_GRAD_REL = 2e-4
TOL_ACCURACY = 1 / N_TEST
TOL_EIGVAL_REL = 2e-5
TOL_EIGVEC_GAP = 5e-6  # bound on ‖Δv_i‖ · gap_i / |θ₁|
MIN_REL_GAP = 1e-3


def _run(module, out, *extra):
    env = dict(os.environ)
    env.setdefault("HESSJAX_CACHE_DIR", str(REPO / ".jax_cache"))
    proc = subprocess.run([sys.executable, "-m", module, *CONFIG, *extra, "--out", str(out)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(torch_out, hessjax_out)``: the two pipelines on the same configuration."""
    torch_out, jax_out = tmp_path_factory.mktemp("torch"), tmp_path_factory.mktemp("hessjax")
    _run("hessjax.bridges.torch_pipeline", torch_out, "--tol", "0", "--quiet")
    _run("hessjax.sweep", jax_out, "--quiet")
    return torch_out, jax_out


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _report(name, value, tol):
    print(f"  {name:<44s} {value:10.3g}  (tolerance {tol:.3g})")


def _records(out):
    return {lab: json.loads((out / "records" / f"default-{lab}.json").read_text()) for lab in LAMBDAS}


def test_same_files(runs):
    t, j = runs
    per_lambda = {f"{stem}-default-{lab}.{ext}" for lab in LAMBDAS for stem, ext in
                  [("gradients", "csv"), ("model_weights", "pth"), ("Hessian-eigenvalues", "csv"),
                   ("Hessian-eigenvectors", "csv")]}
    expected = per_lambda | {"Model-default.csv", "records"}
    assert {p.name for p in t.iterdir()} == expected
    assert expected <= {p.name for p in j.iterdir()}  # hessjax adds its Zarr store and manifest
    assert sorted(p.name for p in (t / "records").iterdir()) == sorted(p.name for p in (j / "records").iterdir())


def test_model_csv(runs):
    t, j = runs
    mt, mj = pd.read_csv(t / "Model-default.csv"), pd.read_csv(j / "Model-default.csv")
    assert list(mt.columns) == list(mj.columns)
    assert mt["lambda"].tolist() == mj["lambda"].tolist() == [float(v) for v in LAMBDAS]
    for col in ("epochs", "converged", "diverged", "num_converged_eigs"):
        assert mt[col].tolist() == mj[col].tolist(), col
    # the configuration is chosen so that the plateau rule fires for λ = 0 and not for λ = 0.01
    assert mj["epochs"].tolist() == [2, 4] and mj["converged"].tolist() == [True, False]
    assert mj["num_converged_eigs"].tolist() == [K, K] and not mj["diverged"].any()
    rt, rj = _records(t), _records(j)
    assert [rt[lab]["extra"]["best_epoch"] for lab in LAMBDAS] == [rj[lab]["extra"]["best_epoch"] for lab in LAMBDAS]
    print()
    for col, tol in [("train_loss", TOL_LOSS_REL), ("test_loss", TOL_LOSS_REL), ("grad_norm", TOL_GRAD_NORM_REL),
                     ("distance_to_anchor", TOL_DISTANCE_REL)]:
        diff = float(np.max(np.abs(mt[col] - mj[col]) / np.abs(mj[col])))
        _report(f"Model csv {col}, relative", diff, tol)
        assert diff <= tol, col
    diff = float(np.max(np.abs(mt["test_accuracy"] - mj["test_accuracy"])))
    _report("Model csv test_accuracy", diff, TOL_ACCURACY)
    assert diff <= TOL_ACCURACY + 1e-12
    # residuals are computed differently (float64 ‖Hv − θv‖ vs Lanczos' float32 estimate); each meets hessjax's tol
    assert (mt["max_residual"] <= 1e-5 * np.abs([r["eigenvalues"][0] for r in rt.values()])).all()
    assert (mj["max_residual"] <= 1e-5 * np.abs([r["eigenvalues"][0] for r in rj.values()])).all()


@pytest.mark.parametrize("lab", LAMBDAS)
def test_weights(runs, lab):
    t, j = runs
    st, sj = (torch.load(out / f"model_weights-default-{lab}.pth", weights_only=True) for out in runs)
    assert list(st) == list(sj) == KEYS
    for key in KEYS:
        assert st[key].shape == sj[key].shape and st[key].dtype == sj[key].dtype == torch.float32, key
    wt = torch.cat([v.ravel() for v in st.values()]).double().numpy()
    wj = torch.cat([v.ravel() for v in sj.values()]).double().numpy()
    print()
    _report(f"λ={lab} weights ‖Δθ‖/‖θ‖", _rel(wt, wj), TOL_WEIGHTS_REL)
    _report(f"λ={lab} weights max |Δθ|", float(np.abs(wt - wj).max()), TOL_WEIGHTS_ABS)
    assert _rel(wt, wj) <= TOL_WEIGHTS_REL
    assert np.abs(wt - wj).max() <= TOL_WEIGHTS_ABS


@pytest.mark.parametrize("lab", LAMBDAS)
def test_gradients(runs, lab):
    gt, gj = (pd.read_csv(out / f"gradients-default-{lab}.csv") for out in runs)
    assert list(gt.columns) == list(gj.columns) == ["parameter", "gradient"]
    assert gt["parameter"].tolist() == gj["parameter"].tolist()
    assert gj["parameter"].unique().tolist() == KEYS
    diff = _rel(gt["gradient"], gj["gradient"])
    print()
    _report(f"λ={lab} gradient ‖Δg‖/‖g‖", diff, TOL_GRAD_REL)
    assert diff <= TOL_GRAD_REL


@pytest.mark.parametrize("lab", LAMBDAS)
def test_eigenpairs(runs, lab):
    t, j = runs
    et, ej = (pd.read_csv(out / f"Hessian-eigenvalues-default-{lab}.csv") for out in runs)
    assert list(et.columns) == list(ej.columns) == ["eigenvalue"] and len(et) == len(ej) == K
    theta_t, theta = et["eigenvalue"].to_numpy(np.float64), ej["eigenvalue"].to_numpy(np.float64)
    scale = abs(theta[0])
    vt, vj = (pd.read_csv(out / f"Hessian-eigenvectors-default-{lab}.csv") for out in runs)
    assert list(vt.columns) == list(vj.columns) == ["parameter"] + [f"v{i + 1}" for i in range(K)]
    assert vt["parameter"].tolist() == vj["parameter"].tolist()
    Vt, Vj = vt.iloc[:, 1:].to_numpy(np.float64).T, vj.iloc[:, 1:].to_numpy(np.float64).T  # [k, P]

    print()
    diff = float(np.max(np.abs(theta_t - theta)) / scale)
    _report(f"λ={lab} eigenvalues max |Δθ|/|θ₁|", diff, TOL_EIGVAL_REL)
    assert diff <= TOL_EIGVAL_REL

    compared = 0
    for i in range(K - 1):  # gap_k needs θ_{k+1}, which neither run computed
        gap = min(abs(theta[i] - theta[m]) for m in (i - 1, i + 1) if 0 <= m < K) / scale
        if gap < MIN_REL_GAP:
            continue
        sign = 1.0 if Vt[i] @ Vj[i] >= 0 else -1.0
        bound = np.linalg.norm(sign * Vt[i] - Vj[i]) * gap
        _report(f"λ={lab} v{i + 1} ‖Δv‖·gap/|θ₁| (gap {gap:.2g})", bound, TOL_EIGVEC_GAP)
        assert bound <= TOL_EIGVEC_GAP, i
        compared += 1
    assert compared == K - 1  # every gap of this configuration is ≥ 5.9e-3

    # the top-(k-1) subspace: sine of its largest principal angle, against the same bound over θ_{k-1} − θ_k
    qt, qj = np.linalg.qr(Vt[:K - 1].T)[0], np.linalg.qr(Vj[:K - 1].T)[0]
    sine = float(np.linalg.norm(qt - qj @ (qj.T @ qt), 2))  # ‖(I − Q_j Q_jᵀ) Q_t‖₂ (stable for small angles)
    gap = (theta[K - 2] - theta[K - 1]) / scale
    _report(f"λ={lab} top-{K - 1} subspace sin∠·gap/|θ₁|", sine * gap, TOL_EIGVEC_GAP)
    assert sine * gap <= TOL_EIGVEC_GAP
