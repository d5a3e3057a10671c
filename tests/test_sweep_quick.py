"""The sweep in-process on a tiny configuration, so the quick selection (``-m "not slow"``) runs it too:
every file, the certificates' θ = μ + 2λ in float64, and the writer's summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from hessjax import sweep

TINY = dict(train_samples=300, test_samples=100, hessian_samples=200, k=3, max_epochs=2, batch_size=100,
            chunk_size=100, quiet=True)


def test_a_tiny_sweep_writes_certified_eigenvalues(tmp_path):
    summary = sweep.run(lambdas="0,0.05", out=str(tmp_path), **TINY)
    assert summary["finished"] == [0.0, 0.05] and summary["unconverged"] == {} and not summary["diverged"]
    assert [len(b["lambdas"]) for b in summary["batches"]] == [1, 1]
    for lam, label in ((0.0, "0"), (0.05, "0.05")):
        theta = pd.read_csv(tmp_path / f"Hessian-eigenvalues-default-{label}.csv")["eigenvalue"].to_numpy()
        cert = pd.read_csv(tmp_path / f"Hessian-eigenvalue-certificates-default-{label}.csv")
        rec = json.loads((tmp_path / "records" / f"default-{label}.json").read_text())
        np.testing.assert_array_equal(cert["eigenvalue"].to_numpy(), theta)
        mu = np.asarray(rec["data_eigenvalues"])
        assert np.array_equal(theta, mu + 2 * lam)  # the shift, added once in float64
        assert np.all(mu == mu.astype(np.float32))  # μ is the solver's float32 value, unrounded
        assert cert["converged"].all() and np.all(cert["residual"] <= 1e-5 * rec["convergence_scale"])
        assert np.all(cert["error_bound"] <= cert["residual"])
    model = pd.read_csv(tmp_path / "Model-default.csv")
    assert model["lambda"].tolist() == [0, 0.05] and model["num_converged_eigs"].tolist() == [3, 3]
