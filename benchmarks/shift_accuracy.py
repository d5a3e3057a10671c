"""How close a sweep's written spectrum is to a float64 reference of the data Hessian, per λ.

For each λ of a finished sweep in ``OUT`` it loads the written weights (``model_weights-ID-L2.pth``)
into a float64 torch model, builds the data Hessian ``∇²(mean CE)`` over the same training samples
(torch double backward, graph reused, no penalty) and takes its top k with scipy's ``eigsh`` at
ARPACK's machine precision — an independent reference: no JAX, no hessjax numerics. It then compares

* ``μ_i = θ_i − 2λ`` from ``Hessian-eigenvalues-ID-L2.csv`` (θ as written) with the reference:
  the largest relative error ``|μ_i − μ_i^ref|/|μ_i^ref|`` and the largest error over ``|μ_1^ref|``;
* each written ``error_bound`` (``Hessian-eigenvalue-certificates-ID-L2.csv``) with the actual error;
* the written eigenvectors with the reference's: ``1 − |cos|`` per pair, for pairs whose eigenvalue is
  separated from its neighbours (within a cluster only the subspace is defined).

    python benchmarks/shift_accuracy.py results --lambdas 0,0.1 [--id default] [--json out.json]

About 2–4 minutes per λ at 60,000 samples on a 2-core CPU (≈ 150 float64 products of ~1 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine  # noqa: E402


def reference(out: Path, run_id: str, lam: float, k: int, n_samples: int, data_dir) -> dict:
    import torch

    from hessjax import load_mnist
    from hessjax.bridges import TorchHVP, TorchMLP
    from hessjax.results import lambda_label, pth_path

    torch.set_default_dtype(torch.float64)
    data = load_mnist(data_dir, train_samples=n_samples, test_samples=1, dtype=np.float64)
    state = torch.load(pth_path(out, run_id, lam), weights_only=True)
    model = TorchMLP().double()
    model.load_state_dict({key: t.double() for key, t in state.items()}, strict=True)
    anchor = [t.double() for t in state.values()]  # unused by a zero λ, any tensors of the right shape
    hvp = TorchHVP(model, anchor, 0.0, torch.from_numpy(data.x_train), torch.from_numpy(data.y_train).long())
    from hessjax.bridges import top_k_eigsh

    P = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    ref = top_k_eigsh(hvp.numpy_matvec, P, k, tol=0.0, ncv=max(2 * k + 1, 80))
    label = lambda_label(lam)
    return {"label": label, "vals": ref.eigenvalues, "vecs": ref.eigenvectors, "residuals": ref.residuals,
            "matvecs": ref.num_matvecs, "seconds": time.perf_counter() - t0}


def compare(out: Path, run_id: str, lam: float, ref: dict) -> dict:
    import pandas as pd

    from hessjax.results import certificates_path, eigenvalues_path, eigenvectors_path

    theta = pd.read_csv(eigenvalues_path(out, run_id, lam))["eigenvalue"].to_numpy(np.float64)
    mu = theta - 2.0 * lam
    mu_ref = ref["vals"]
    err = np.abs(mu - mu_ref)
    row = {"lambda": lam, "k": int(mu.size), "mu1_ref": float(mu_ref[0]), "mu_k_ref": float(mu_ref[-1]),
           "max_rel_err": float(np.max(err / np.abs(mu_ref))), "max_err_over_mu1": float(np.max(err) / abs(mu_ref[0])),
           "ref_max_residual_over_mu1": float(np.max(ref["residuals"]) / abs(mu_ref[0])),
           "ref_matvecs": ref["matvecs"], "ref_seconds": ref["seconds"]}
    cert_path = certificates_path(out, run_id, lam)
    if cert_path.exists():
        cert = pd.read_csv(cert_path)
        bound = cert["error_bound"].to_numpy(np.float64)
        row["bounds_hold"] = int(np.sum(err <= bound))
        row["max_err_over_bound"] = float(np.max(err / bound))
        row["written_converged"] = int(cert["converged"].astype(bool).sum())
    vec_path = eigenvectors_path(out, run_id, lam, "csv")
    if vec_path.exists():
        vecs = pd.read_csv(vec_path).drop(columns="parameter").to_numpy(np.float64).T
        gaps = np.minimum(np.abs(np.diff(mu_ref, prepend=np.inf)), np.abs(np.diff(mu_ref, append=-np.inf)))
        sep = gaps > 1e-3 * abs(mu_ref[0])
        cos = np.abs(np.sum(vecs * ref["vecs"], axis=1)) / np.linalg.norm(vecs, axis=1)
        row["separated_pairs"] = int(sep.sum())
        row["max_one_minus_cos"] = float(np.max(1 - cos[sep])) if sep.any() else float("nan")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--id", default="default")
    parser.add_argument("--lambdas", default="0,0.1", help="comma list of finished λ to check")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from hessjax.results import read_manifest

    manifest = read_manifest(args.out, args.id)
    if manifest is None:
        raise SystemExit(f"no manifest-{args.id}.json in {args.out}: not a finished sweep")
    config = manifest["config"]
    n = config.get("hessian_samples") or config.get("train_samples") or 60_000
    rows = []
    print(f"float64 reference: torch double backward + scipy eigsh (tol 0), {n} samples, k = {config['k']}")
    print(f"{'λ':>8} {'μ₁ ref':>10} {'max rel err':>12} {'max err/μ₁':>11} {'err ≤ bound':>12} "
          f"{'1−|cos|':>9} {'ref s':>6}")
    for lam in (float(v) for v in args.lambdas.split(",")):
        ref = reference(args.out, args.id, lam, config["k"], n, config.get("data_dir"))
        row = compare(args.out, args.id, lam, ref)
        rows.append(row)
        print(f"{lam:>8g} {row['mu1_ref']:>10.5g} {row['max_rel_err']:>12.2e} {row['max_err_over_mu1']:>11.2e} "
              f"{row.get('bounds_hold', '-'):>5}/{row['k']:<6} {row.get('max_one_minus_cos', float('nan')):>9.1e} "
              f"{row['ref_seconds']:>6.0f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
