"""Where each output of run id ``ID`` lives in ``OUT`` (the layout is in :mod:`hessjax.results`)."""

from __future__ import annotations

from pathlib import Path

from .grid import lambda_label

__all__ = [
    "bottom_eigenvalues_path",
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


def gradients_path(out, run_id: str, lam: float) -> Path:
    return Path(out) / f"gradients-{run_id}-{lambda_label(lam)}.csv"


def eigenvalues_path(out, run_id: str, lam: float) -> Path:
    return Path(out) / f"Hessian-eigenvalues-{run_id}-{lambda_label(lam)}.csv"


def certificates_path(out, run_id: str, lam: float) -> Path:
    return Path(out) / f"Hessian-eigenvalue-certificates-{run_id}-{lambda_label(lam)}.csv"


def eigenvectors_path(out, run_id: str, lam: float, fmt: str = "csv") -> Path:
    if fmt not in ("csv", "npy"):
        raise ValueError(f"fmt={fmt!r}: expected 'csv' or 'npy'")
    return Path(out) / f"Hessian-eigenvectors-{run_id}-{lambda_label(lam)}.{fmt}"


def density_path(out, run_id: str, lam: float) -> Path:
    return Path(out) / f"Hessian-density-{run_id}-{lambda_label(lam)}.csv"


def bottom_eigenvalues_path(out, run_id: str, lam: float) -> Path:
    return Path(out) / f"Hessian-bottom-eigenvalues-{run_id}-{lambda_label(lam)}.csv"


def pth_path(out, run_id: str, lam: float) -> Path:
    """Where the caller writes the trained weights of λ (``hessjax.bridges.save_state_dict``)."""
    return Path(out) / f"model_weights-{run_id}-{lambda_label(lam)}.pth"


def model_csv_path(out, run_id: str) -> Path:
    return Path(out) / f"Model-{run_id}.csv"


def record_path(out, run_id: str, lam: float) -> Path:
    return Path(out) / "records" / f"{run_id}-{lambda_label(lam)}.json"


def manifest_path(out, run_id: str) -> Path:
    return Path(out) / f"manifest-{run_id}.json"


def store_path(out, run_id: str) -> Path:
    return Path(out) / f"{run_id}.zarr"
