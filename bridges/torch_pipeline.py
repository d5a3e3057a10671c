"""The original PyTorch pipeline, λ by λ: the ground truth in tests and the "before" in benchmarks.

For each λ, as the original ran it: the MLP as an ``nn.Module``, ``torch.optim.Adam(lr)`` on
``F.cross_entropy + λ Σ‖p − p_ref‖²`` over shuffled mini-batches (the last partial batch kept, as
``DataLoader(shuffle=True)`` does), early stopping on a plateau of ``L_eff`` over the training
samples, the weights of the best epoch; then the gradient, and the top-k Hessian eigenpairs by
``scipy.sparse.linalg.eigsh`` over the double-backward HVP. It writes the same five files as
``python -m hessjax.sweep`` (no Zarr store, which the original did not have).

Given the same seed it starts from the same initial weights (:func:`hessjax.training.initial_params`,
copied bit for bit) and visits the mini-batches in the same order
(:func:`hessjax.training.epoch_order`) as hessjax, so the two can be compared run against run.

    python -m hessjax.bridges.torch_pipeline --lambdas 0,0.01 --train-samples 2048 --k 5 --out torch-results
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hessjax import results
from hessjax.anchors import default_anchor_path
from hessjax.mnist import DataError, load_mnist
from hessjax.training import epoch_order, initial_params

from .anchor import AnchorError, load_anchor, parameter_names, save_state_dict
from .torch_ref import TorchHVP, TorchMLP, effective_loss_torch, grad_torch, jax_params_from_torch, top_k_eigsh


class TorchTrainResult(NamedTuple):
    model: TorchMLP  # holding the best epoch's weights
    epochs: int
    best_epoch: int
    converged: bool
    diverged: bool
    best_loss: float


def full_loss(model, anchor_tensors, lam, x, y) -> float:
    with torch.no_grad():
        return float(effective_loss_torch(model, anchor_tensors, lam, x, y))


def train_torch(start_params, anchor_tensors, lam: float, x: torch.Tensor, y: torch.Tensor, *, seed: int,
                lr: float = 0.0015, batch_size: int = 128, max_epochs: int = 200, patience: int = 5,
                min_delta: float = 1e-4) -> TorchTrainResult:
    """Adam with hessjax's early-stopping rule (see :mod:`hessjax.training`), in plain torch.

    The early-stopping comparisons are made in the model's dtype, as hessjax makes them
    (``ref_loss - min_delta`` rounded to float32 in a float32 run), so a loss on the boundary is
    decided the same way in both.
    """
    model = TorchMLP.from_params(start_params)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = x.shape[0]
    real = {torch.float32: np.float32, torch.float64: np.float64}[next(model.parameters()).dtype]
    min_delta = real(min_delta)
    loss = real(full_loss(model, anchor_tensors, lam, x, y))
    best_loss = ref_loss = loss
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    best_epoch, stale, epoch = 0, 0, 0
    converged = False
    diverged = not np.isfinite(loss)
    while not diverged and epoch < max_epochs:
        epoch += 1
        order = torch.from_numpy(np.asarray(epoch_order(seed, epoch, n)).astype(np.int64))
        for start in range(0, n, batch_size):
            idx = order[start: start + batch_size]
            opt.zero_grad()
            effective_loss_torch(model, anchor_tensors, lam, x[idx], y[idx]).backward()
            opt.step()
        loss = real(full_loss(model, anchor_tensors, lam, x, y))
        if not np.isfinite(loss):
            diverged = True
            break
        if loss < best_loss:
            best_loss, best_epoch = loss, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        if loss < ref_loss - min_delta:
            ref_loss, stale = loss, 0
        else:
            stale += 1
        if stale >= patience:
            converged = True
            break
    model.load_state_dict(best_state)
    return TorchTrainResult(model, epoch, best_epoch, converged, diverged, float(best_loss))


def run(anchor_path, out, *, run_id=None, seed=0, lambdas="0", lr=0.0015, batch_size=128, max_epochs=200,
        patience=5, min_delta=1e-4, init="random", data_dir=None, train_samples=None, test_samples=None,
        hessian_samples=None, k=30, tol=0.0, dtype="float32", quiet=False) -> list[dict]:
    """Run the reference pipeline over ``lambdas`` and write its files into ``out``; returns the records."""
    lams = sorted(float(v) for v in results.parse_lambdas(lambdas))
    _check_settings(lr=lr, batch_size=batch_size, max_epochs=max_epochs, patience=patience, min_delta=min_delta,
                    init=init, k=k, tol=tol, dtype=dtype)
    if dtype == "float64":
        # As the sweep does: without x64, initial_params would draw float32 weights (a float32 model
        # fed float64 data) and the float64 anchor and results could not pass through JAX.
        import jax

        jax.config.update("jax_enable_x64", True)
    anchor = load_anchor(anchor_path)
    run_id = results.check_run_id(run_id or Path(anchor_path).stem)
    data = load_mnist(data_dir, train_samples=train_samples, test_samples=test_samples)
    n_train = data.x_train.shape[0]
    if hessian_samples is not None and not 1 <= hessian_samples <= n_train:
        raise results.UsageError(f"--hessian-samples {hessian_samples} must be in [1, {n_train}] "
                                 "(it takes the first N training samples)")
    if k >= anchor.num_params:
        raise results.UsageError(f"--k {k} must be below the number of parameters {anchor.num_params} (ARPACK)")
    out = results.check_writable(out)
    np_dtype = np.dtype(dtype)
    anchor_params = tuple((np.asarray(w, np_dtype), np.asarray(b, np_dtype)) for w, b in anchor.params)
    start = anchor_params if init == "anchor" else initial_params(seed, anchor.sizes, np_dtype)
    anchor_tensors = [torch.from_numpy(np.array(a)) for pair in anchor_params for a in pair]
    x = torch.from_numpy(np.asarray(data.x_train, np_dtype))
    y = torch.from_numpy(data.y_train.astype(np.int64))
    xt = torch.from_numpy(np.asarray(data.x_test, np_dtype))
    yt = torch.from_numpy(data.y_test.astype(np.int64))
    n_hess = hessian_samples or x.shape[0]
    names = np.asarray(parameter_names(anchor))
    records = []
    for lam in lams:
        t0 = time.perf_counter()
        fit = train_torch(start, anchor_tensors, lam, x, y, seed=seed, lr=lr, batch_size=batch_size,
                          max_epochs=max_epochs, patience=patience, min_delta=min_delta)
        model = fit.model
        diverged = fit.diverged
        with torch.no_grad():
            train_loss = float(F.cross_entropy(model(x), y))
            test_logits = model(xt)
            test_loss = float(F.cross_entropy(test_logits, yt))
            test_acc = float((test_logits.argmax(1) == yt).double().mean())
        grad = grad_torch(model, anchor_tensors, lam, x, y).numpy()
        weights = torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy()
        dist = float(np.linalg.norm(weights.astype(np.float64) - np.concatenate(
            [a.numpy().ravel() for a in anchor_tensors]).astype(np.float64)))
        # The sweep's rule: a λ whose training diverged, or whose best weights give a non-finite loss,
        # is recorded with NaN metrics and gets no weights, gradient or eigen files.
        diverged = diverged or not np.isfinite(train_loss) or not np.all(np.isfinite(weights))
        nan = float("nan")
        eig = None
        overlaps = {}
        if not diverged:
            op = TorchHVP(model, anchor_tensors, lam, x[:n_hess], y[:n_hess])
            eig = top_k_eigsh(op.numpy_matvec, weights.shape[0], k, tol=tol)
            data_grad = grad_torch(model, anchor_tensors, 0.0, x, y).numpy().astype(np.float64)  # ∇ mean CE
            displacement = weights.astype(np.float64) - np.concatenate([a.numpy().ravel() for a in anchor_tensors])
            overlaps = {"gradient_overlap": _share(eig.eigenvectors, data_grad),
                        "displacement_overlap": _share(eig.eigenvectors, displacement)}
        record = results.make_record(
            lam, train_loss=nan if diverged else train_loss, test_loss=nan if diverged else test_loss,
            test_accuracy=nan if diverged else test_acc, epochs=fit.epochs, best_epoch=fit.best_epoch, converged=fit.converged,
            diverged=diverged, grad_norm=nan if diverged else float(np.linalg.norm(grad)),
            distance_to_anchor=nan if diverged else dist, seconds=time.perf_counter() - t0,
            eigenvalues=() if eig is None else eig.eigenvalues, residuals=() if eig is None else eig.residuals,
            eig_converged=() if eig is None else np.ones(k, bool),
            extra={"best_epoch": fit.best_epoch, "pipeline": "torch", "eigsh_matvecs": 0 if eig is None
                   else eig.num_matvecs, **overlaps})
        if not diverged:
            save_state_dict(results.pth_path(out, run_id, lam), jax_params_from_torch(model), anchor)
            results.write_gradients_csv(out, run_id, lam, names, grad)
            results.write_eigenvalues_csv(out, run_id, lam, eig.eigenvalues.astype(np_dtype))
            results.write_eigenvectors(out, run_id, lam, names, eig.eigenvectors.astype(np_dtype), "csv")
        results.write_record(out, run_id, record)
        results.write_model_csv(out, run_id)
        records.append(record)
        if not quiet:
            state = "diverged" if diverged else f"train loss {train_loss:.6g}, test acc {test_acc:.4f}"
            print(f"λ={lam:g}: epochs {fit.epochs}, {state}, {record['seconds']:.1f} s", file=sys.stderr, flush=True)
    return records


def _share(vectors: np.ndarray, u: np.ndarray) -> float:
    """``‖Vᵀu‖² / ‖u‖²`` for orthonormal rows ``vectors``: the share of ``u`` in their span (NaN for u = 0)."""
    norm2 = float(u @ u)
    c = vectors.astype(np.float64) @ u
    return float(c @ c / norm2) if norm2 > 0 else float("nan")


def _check_settings(*, lr, batch_size, max_epochs, patience, min_delta, init, k, tol, dtype) -> None:
    """The sweep's refusals of bad settings, before any work (a :class:`hessjax.results.UsageError`)."""
    checks = [
        ("--lr", lr, lr > 0 and np.isfinite(lr), "a positive number"),
        ("--batch-size", batch_size, batch_size >= 1, "a positive integer"),
        ("--max-epochs", max_epochs, max_epochs >= 0, "a non-negative integer"),
        ("--patience", patience, patience >= 1, "a positive integer"),
        ("--min-delta", min_delta, min_delta >= 0 and np.isfinite(min_delta), "a non-negative number"),
        ("--init", init, init in ("random", "anchor"), "random or anchor"),
        ("--k", k, k >= 1, "a positive integer"),
        ("--tol", tol, tol >= 0 and np.isfinite(tol), "a non-negative number"),
        ("--dtype", dtype, dtype in ("float32", "float64"), "float32 or float64"),
    ]
    for flag, value, ok, expected in checks:
        if not ok:
            raise results.UsageError(f"{flag} must be {expected}, got {value!r}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hessjax.bridges.torch_pipeline", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--anchor", default=None, help="anchor .pth (default: the shipped anchor)")
    p.add_argument("--out", default="torch-results")
    p.add_argument("--id", dest="run_id", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambdas", default="0")
    p.add_argument("--lr", type=float, default=0.0015)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--min-delta", type=float, default=1e-4)
    p.add_argument("--init", choices=("random", "anchor"), default="random")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--test-samples", type=int, default=None)
    p.add_argument("--hessian-samples", type=int, default=None)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--tol", type=float, default=0.0, help="ARPACK's relative tolerance (0: machine precision)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--quiet", action="store_true")
    args = vars(p.parse_args(argv))
    if args["anchor"] is None:
        args["anchor"] = str(default_anchor_path())
    try:
        run(args.pop("anchor"), args.pop("out"), **args)
    except (results.UsageError, DataError, AnchorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
