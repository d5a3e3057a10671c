"""hessjax: Hessian spectra of anchor-regularized losses of any classifier, in JAX, with a bridge to PyTorch."""

from . import models
from .certified import Spectrum, spectrum
from .hvp import Chunks, chunk_data, dataset_grad, dataset_hvp, dataset_loss, flat_hessian_matvec, hvp
from .lanczos import EigResult, top_k_eigenpairs
from .loss import anchor_penalty, cross_entropy, effective_loss
from .mnist import load_mnist
from .models import DEFAULT_PRECISION, DEFAULT_SIZES, Model, accuracy, apply_mlp, init_mlp, layer_sizes

__version__ = "0.1.0"

__all__ = [
    "Chunks",
    "DEFAULT_PRECISION",
    "DEFAULT_SIZES",
    "EigResult",
    "Model",
    "Spectrum",
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
    "models",
    "spectrum",
    "top_k_eigenpairs",
]
