"""Where each output of run id ``ID`` lives in ``OUT`` (the layout is in :mod:`hessjax.results`)."""

from __future__ import annotations

from pathlib import Path

from .grid import lambda_label

__all__ = [
    "bottom_eigenvalues_path",
    "ggn_eigenvalues_path",
    "certificates_path",
    "density_path",
    "eigenvalues_path",
    "eigenvectors_path",
    "gradients_path",
    "manifest_path",
    "model_csv_path",
    "pth_path",
    "record_path",
    "store_path",
]


def _per_lambda(out, stem: str, run_id: str, lam: float, ext: str = "csv") -> Path:
    """``OUT/STEM-ID-L2.EXT``: the one shape of every per-λ file name."""
    return Path(out) / f"{stem}-{run_id}-{lambda_label(lam)}.{ext}"


def gradients_path(out, run_id: str, lam: float) -> Path:
    return _per_lambda(out, "gradients", run_id, lam)


def eigenvalues_path(out, run_id: str, lam: float) -> Path:
    return _per_lambda(out, "Hessian-eigenvalues", run_id, lam)


def certificates_path(out, run_id: str, lam: float) -> Path:
    return _per_lambda(out, "Hessian-eigenvalue-certificates", run_id, lam)


def eigenvectors_path(out, run_id: str, lam: float, fmt: str = "csv") -> Path:
    if fmt not in ("csv", "npy"):
        raise ValueError(f"fmt={fmt!r}: expected 'csv' or 'npy'")
    return _per_lambda(out, "Hessian-eigenvectors", run_id, lam, fmt)


def density_path(out, run_id: str, lam: float) -> Path:
    return _per_lambda(out, "Hessian-density", run_id, lam)


def bottom_eigenvalues_path(out, run_id: str, lam: float) -> Path:
    return _per_lambda(out, "Hessian-bottom-eigenvalues", run_id, lam)


def ggn_eigenvalues_path(out, run_id: str, lam: float) -> Path:
    return _per_lambda(out, "GGN-eigenvalues", run_id, lam)


def pth_path(out, run_id: str, lam: float) -> Path:
    """Where the caller writes the trained weights of λ (``hessjax.bridges.save_state_dict``)."""
    return _per_lambda(out, "model_weights", run_id, lam, "pth")


def model_csv_path(out, run_id: str) -> Path:
    return Path(out) / f"Model-{run_id}.csv"


def record_path(out, run_id: str, lam: float) -> Path:
    return Path(out) / "records" / f"{run_id}-{lambda_label(lam)}.json"


def manifest_path(out, run_id: str) -> Path:
    return Path(out) / f"manifest-{run_id}.json"


def store_path(out, run_id: str) -> Path:
    return Path(out) / f"{run_id}.zarr"
