"""hessjax: Hessian spectra of anchor-regularized MLP losses, in JAX, with a bridge to PyTorch."""

from .hvp import Chunks, chunk_data, dataset_grad, dataset_hvp, dataset_loss, flat_hessian_matvec, hvp
from .lanczos import EigResult, top_k_eigenpairs
from .loss import anchor_penalty, cross_entropy, effective_loss
from .mnist import load_mnist
from .model import DEFAULT_PRECISION, DEFAULT_SIZES, accuracy, apply_mlp, init_mlp, layer_sizes

__version__ = "0.1.0"

__all__ = [
    "Chunks",
    "DEFAULT_PRECISION",
    "DEFAULT_SIZES",
    "EigResult",
    "accuracy",
    "anchor_penalty",
    "apply_mlp",
    "chunk_data",
    "cross_entropy",
    "dataset_grad",
    "dataset_hvp",
    "dataset_loss",
    "effective_loss",
    "flat_hessian_matvec",
    "hvp",
    "init_mlp",
    "layer_sizes",
    "load_mnist",
    "top_k_eigenpairs",
]
