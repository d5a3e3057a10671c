"""``python -m hessjax.bridges.verify OUT``: check a finished sweep's spectra against float64 torch + scipy.

For each finished λ of run ``ID`` in ``OUT`` it rebuilds what the sweep ran from its manifest — the
model (``mlp`` with the anchor's widths and ``--activation``, ``lenet``, or ``MODULE:ATTR`` with its
torch module), the data (``--dataset`` and the first ``--hessian-samples`` training samples) — loads
the written weights ``model_weights-ID-L2.pth`` into the model's *torch* module in float64, applies the
data Hessian ``∇²(mean CE)`` by torch's double backward (graph reused, as PyHessian does) and takes
its top k with ARPACK (``scipy.sparse.linalg.eigsh``, machine precision). No JAX numerics are involved
in the reference. It then compares, per λ,

* the written ``data_eigenvalue`` μ (certificates CSV) with the reference: ``max_i |μ_i − μ_i^ref| / |μ_1^ref|``,
  which must be ≤ ``--tol`` (default 1e-5, the sweep's own tolerance);
* each written ``error_bound`` with the actual error ``|μ_i − μ_i^ref|``;
* with ``--ggn`` runs, the written Gauss–Newton eigenvalues ``g`` with the top k of torch's
  ``Jᵀ H_CE J`` (``torch.func.jvp``/``vjp``): ``max_i |g_i − g_i^ref| / |g_1^ref|`` ≤ ``--tol``.

    python -m hessjax.bridges.verify results --lambdas 0,0.1 [--id default] [--json check.json]

Exit status 0 when every λ checked is within ``--tol`` and within its bounds, 1 otherwise, 2 on bad
input. Cost: one float64 torch HVP per ARPACK step, ~150 steps per λ for k = 30 (minutes at 60,000
samples on a CPU; seconds at a few thousand).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .anchor import AnchorError, load_anchor
from .torch_ref import TorchGGN, TorchHVP, top_k_eigsh, torch_module

__all__ = ["reference_spectrum", "verify_run", "main"]


def _settings(out: Path, run_id: str | None) -> tuple[str, dict, dict]:
    from hessjax.results import UsageError, read_manifest

    if run_id is None:
        ids = sorted(p.name[len("manifest-"):-len(".json")] for p in out.glob("manifest-*.json"))
        if len(ids) != 1:
            raise UsageError(f"{out}: {'no sweep' if not ids else 'several runs: ' + ', '.join(ids)}; give --id")
        run_id = ids[0]
    manifest = read_manifest(out, run_id)
    if manifest is None:
        raise UsageError(f"{out}: no manifest-{run_id}.json (not a hessjax sweep, or another --id)")
    return run_id, manifest.get("config", {}), manifest.get("extra", {})


def _model_and_data(config: dict, extra: dict):
    """The model and the Hessian samples ``(x, y)`` the sweep used, from its manifest's configuration."""
    from hessjax.anchors import default_anchor_path
    from hessjax.datasets import fit_to_model, load_dataset
    from hessjax.models import resolve_model

    name = config.get("model", "mlp")
    data = load_dataset(config.get("dataset", "mnist"), data_dir=config.get("data_dir"),
                        tfds_dir=config.get("tfds_dir"), train_samples=config.get("train_samples"), test_samples=1,
                        dtype=np.float64)
    sha = (extra.get("dataset") or {}).get("sha256")
    if sha and data.sha256 and sha != data.sha256:
        raise AnchorError(f"{data.name}: the file changed since the sweep (SHA-256 {data.sha256[:12]}…, the sweep "
                          f"read {sha[:12]}…)")
    anchor_path = config.get("anchor") or str(default_anchor_path(name))
    if name == "mlp":
        anchor = load_anchor(anchor_path, n_inputs=int(np.prod(data.sample_shape)), n_classes=None)
        model = resolve_model("mlp", sizes=anchor.sizes, activation=config.get("activation"))
    else:
        model = resolve_model(name, input_shape=data.sample_shape)
    data = fit_to_model(data, model.input_shape, model.num_classes, model.name)
    n_hess = config.get("hessian_samples") or data.x_train.shape[0]
    return model, data.x_train[:n_hess], data.y_train[:n_hess]


def reference_spectrum(model, weights_path, x: np.ndarray, y: np.ndarray, k: int, operator: str = "hessian"):
    """The top ``k`` of the data Hessian (``operator="ggn"``: of its Gauss–Newton part) at the weights in
    ``weights_path``, in float64 torch + ARPACK (:func:`hessjax.bridges.top_k_eigsh` over
    :class:`hessjax.bridges.TorchHVP` at λ = 0, or :class:`hessjax.bridges.TorchGGN`)."""
    import jax

    with jax.enable_x64(True):  # a float64 sweep's weights are read exactly
        anchor = load_anchor(weights_path, model=None if model.mlp is not None else model,
                             sizes=None if model.mlp is None else model.mlp.sizes)
        params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), anchor.params)
    module = torch_module(model, params).double()
    tensors = [p.detach().clone() for p in module.parameters()]  # any anchor: λ = 0 ignores it
    inputs = torch.from_numpy(np.array(x, np.float64))
    if operator == "ggn":
        hvp = TorchGGN(module, inputs)
    else:
        hvp = TorchHVP(module, tensors, 0.0, inputs, torch.from_numpy(np.array(y)).long())
    n_params = sum(p.numel() for p in module.parameters())
    return top_k_eigsh(hvp.numpy_matvec, n_params, k, tol=0.0, ncv=min(n_params - 1, max(2 * k + 1, 80)))


def _written(out: Path, run_id: str, lam: float) -> dict:
    import pandas as pd

    from hessjax.results import certificates_path, ggn_eigenvalues_path

    table = pd.read_csv(certificates_path(out, run_id, lam))
    written = {"mu": table["data_eigenvalue"].to_numpy(np.float64),
               "bound": table["error_bound"].to_numpy(np.float64), "converged": table["converged"].to_numpy(bool)}
    ggn = ggn_eigenvalues_path(out, run_id, lam)
    if ggn.exists():
        table = pd.read_csv(ggn)
        written["ggn"] = table["eigenvalue"].to_numpy(np.float64)
        written["ggn_converged"] = table["converged"].to_numpy(bool)
    return written


def verify_run(out, run_id: str | None = None, lambdas: Sequence[float] | None = None, tol: float = 1e-5,
               progress=None) -> dict:
    """Check every finished λ (or those in ``lambdas``) of the run; the per-λ comparison and ``ok``."""
    from hessjax.results import UsageError, finished_lambdas, lambda_label, pth_path, round_lambda

    out = Path(out)
    run_id, config, extra = _settings(out, run_id)
    records = finished_lambdas(out, run_id)
    wanted = sorted(records) if lambdas is None else [round_lambda(v) for v in lambdas]
    missing = [lam for lam in wanted if lam not in records]
    if missing:
        raise UsageError(f"run {run_id!r} in {out} has not finished λ = {', '.join(map(lambda_label, missing))}")
    model, x, y = _model_and_data(config, extra)
    rows = []
    for lam in wanted:
        if records[lam].get("diverged"):
            rows.append({"lambda": lam, "diverged": True, "ok": True})
            continue
        written = _written(out, run_id, lam)
        t0 = time.perf_counter()
        ref = reference_spectrum(model, pth_path(out, run_id, lam), x, y, written["mu"].size)
        err = np.abs(written["mu"] - ref.eigenvalues)
        scale = abs(float(ref.eigenvalues[0]))
        row = {"lambda": lam, "k": int(err.size), "mu1_reference": float(ref.eigenvalues[0]),
               "max_error_over_mu1": float(err.max() / scale), "max_relative_error": float(np.max(err / np.abs(
                   ref.eigenvalues))), "bound_violations": int(np.sum(err > written["bound"])),
               "unconverged": int(np.sum(~written["converged"])), "reference_matvecs": int(ref.num_matvecs),
               "seconds": round(time.perf_counter() - t0, 2)}
        row["ok"] = bool(row["max_error_over_mu1"] <= tol and row["bound_violations"] == 0)
        if "ggn" in written:  # --ggn: its top k against the torch Gauss–Newton product
            g = reference_spectrum(model, pth_path(out, run_id, lam), x, y, written["ggn"].size, "ggn")
            row["ggn_max_error_over_g1"] = float(np.max(np.abs(written["ggn"] - g.eigenvalues)) / abs(g.eigenvalues[0]))
            row["ok"] = row["ok"] and row["ggn_max_error_over_g1"] <= tol
        rows.append(row)
        if progress is not None:
            progress(row)
    return {"run_id": run_id, "model": model.name, "samples": int(x.shape[0]), "tol": tol, "lambdas": rows,
            "ok": all(r["ok"] for r in rows)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hessjax.bridges.verify",
                                     description="Check a sweep's data-Hessian eigenvalues against float64 torch "
                                                 "double backward + scipy eigsh at the written weights.")
    parser.add_argument("out", help="the sweep's --out directory")
    parser.add_argument("--id", dest="run_id", default=None, help="run id (default: the only one in OUT)")
    parser.add_argument("--lambdas", default=None, help="comma list of λ to check (default: every finished λ)")
    parser.add_argument("--tol", type=float, default=1e-5, help="largest |μ_i − μ_i^ref| / |μ_1^ref| accepted")
    parser.add_argument("--json", default=None, help="also write the comparison here")
    args = parser.parse_args(argv)
    from hessjax.mnist import DataError
    from hessjax.models import ModelError
    from hessjax.results import UsageError

    def show(row):
        ggn = f"  GGN max|Δg|/g₁ {row['ggn_max_error_over_g1']:.2e}" if "ggn_max_error_over_g1" in row else ""
        print(f"λ = {row['lambda']:<10g} max|Δμ|/μ₁ {row['max_error_over_mu1']:.2e}  max rel {row['max_relative_error']:.2e}"
              f"{ggn}  bound violations {row['bound_violations']}  unconverged {row['unconverged']}  "
              f"({row['reference_matvecs']} float64 products, {row['seconds']:.1f} s)  "
              f"{'ok' if row['ok'] else 'FAILED'}", flush=True)

    try:
        lambdas = None if args.lambdas is None else [float(v) for v in args.lambdas.split(",")]
        result = verify_run(args.out, args.run_id, lambdas, args.tol, progress=show)
    except (UsageError, DataError, AnchorError, ModelError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{result['run_id']} ({result['model']}, {result['samples']} Hessian samples): "
          f"{'every λ within ' + format(args.tol, 'g') + ' of μ₁ and within its bounds' if result['ok'] else 'FAILED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, allow_nan=True) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
