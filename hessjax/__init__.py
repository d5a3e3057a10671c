"""hessjax: Hessian spectra of anchor-regularized losses of any classifier, in JAX, with a bridge to PyTorch.

The names below are imported on first use (PEP 562), so that ``import hessjax`` — and a command line
such as ``python -m hessjax.sweep`` refusing a bad argument — does not wait for JAX to load.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Each public name and the submodule that defines it.
_LAZY = {
    "Chunks": "hvp", "chunk_data": "hvp", "dataset_grad": "hvp", "dataset_hvp": "hvp", "dataset_loss": "hvp",
    "flat_hessian_matvec": "hvp", "hvp": "hvp",
    "EigResult": "lanczos", "top_k_eigenpairs": "lanczos",
    "Spectrum": "certified", "spectrum": "certified",
    "anchor_penalty": "loss", "cross_entropy": "loss", "effective_loss": "loss",
    "load_mnist": "mnist",
    "DEFAULT_PRECISION": "models", "DEFAULT_SIZES": "models", "Model": "models", "accuracy": "models",
    "apply_mlp": "models", "init_mlp": "models", "layer_sizes": "models",
}

__all__ = sorted([*_LAZY, "models"])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name == "models":
        value = importlib.import_module(".models", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``hessjax.hvp`` the function: importing the submodule of the same name binds the module onto
    the package, as an eager ``from .hvp import hvp`` would have overwritten at once."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what a type checker and an IDE see
    from . import models
    from .certified import Spectrum, spectrum
    from .hvp import Chunks, chunk_data, dataset_grad, dataset_hvp, dataset_loss, flat_hessian_matvec, hvp
    from .lanczos import EigResult, top_k_eigenpairs
    from .loss import anchor_penalty, cross_entropy, effective_loss
    from .mnist import load_mnist
    from .models import DEFAULT_PRECISION, DEFAULT_SIZES, Model, accuracy, apply_mlp, init_mlp, layer_sizes
