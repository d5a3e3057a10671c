"""hessjax.models: the classifiers hessjax takes, as pure functions with torch-layout parameters.

* :mod:`~hessjax.models.base` — :class:`Model` (``apply``, ``init``, input shape, classes, torch keys)
  and :func:`make_model` for a model of your own written as pure functions;
* :mod:`~hessjax.models.activations` — sigmoid, tanh, softplus and GELU with their derivatives
  (ReLU-like ones are refused: the loss would not be C²);
* :mod:`~hessjax.models.mlp` — the MLP (``--model mlp``, widths from the anchor);
* :mod:`~hessjax.models.lenet` — LeNet-5 (``--model lenet``);
* :mod:`~hessjax.models.flax_modules` — any Flax ``linen`` module (:func:`from_flax`), and ``FlaxMLP``;
* :mod:`~hessjax.models.registry` — models by name, ``MODULE:ATTR`` included (:func:`resolve_model`).

The Flax names are imported on first use, so ``import hessjax`` does not import Flax.
"""

from __future__ import annotations

import importlib

from .activations import ACTIVATIONS, NOT_SMOOTH, Activation, get_activation
from .base import DEFAULT_PRECISION, MLPStructure, Model, Params, make_model, torch_default_init
from .lenet import LENET_KEYS, LENET_SHAPES, apply_lenet, init_lenet, lenet
from .mlp import DEFAULT_SIZES, accuracy, apply_mlp, init_mlp, layer_sizes, mlp, mlp_keys
from .registry import BUILTIN_MODELS, ModelError, is_user_model, resolve_model

_FLAX = ("FlaxMLP", "from_flax", "from_flax_variables", "to_flax_variables")

__all__ = ["ACTIVATIONS", "Activation", "BUILTIN_MODELS", "DEFAULT_PRECISION", "DEFAULT_SIZES", "LENET_KEYS",
           "LENET_SHAPES", "MLPStructure", "Model", "ModelError", "NOT_SMOOTH", "Params", "accuracy", "apply_lenet",
           "apply_mlp", "get_activation", "init_lenet", "init_mlp", "is_user_model", "layer_sizes", "lenet",
           "make_model", "mlp", "mlp_keys", "resolve_model", "torch_default_init", *_FLAX]


def __getattr__(name: str):
    if name in _FLAX:
        value = getattr(importlib.import_module(".flax_modules", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
