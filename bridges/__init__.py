"""hessjax.bridges: the only part of hessjax that imports torch.

* :mod:`hessjax.bridges.anchor` — anchor ``.pth`` files in and out (an explicit shape table,
  ``torch.load(weights_only=True)``, atomic writes with the anchor's own keys), flat vectors to
  state dicts, and ``python -m hessjax.bridges.anchor PATH`` to check a file.
* :mod:`hessjax.bridges.torch_ref` — the PyTorch ground truth: the same MLP and LeNet, loss, gradient,
  double-backward Hessian-vector product and an ARPACK top-k eigensolver.
* :mod:`hessjax.bridges.layers` and :mod:`hessjax.bridges.tensors` — a state dict's tensors matched
  to a model's parameters, and the bit-exact array conversions.

The names below are re-exported lazily, so ``import hessjax.bridges`` alone does not import torch
(and ``python -m hessjax.bridges.anchor`` runs its module once, without a runpy warning).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: Each submodule's public names, listed once: the package re-exports them, and the submodule's
#: ``__all__`` is built from its entry here (plus the few names it keeps to itself, such as ``main``).
#: The ``TYPE_CHECKING`` imports below repeat them for static analysers; a test checks they agree.
EXPORTS = {
    "anchor": (
        "Anchor",
        "AnchorError",
        "anchor_from_state_dict",
        "flat_to_state_dict",
        "load_anchor",
        "parameter_names",
        "params_to_state_dict",
        "save_state_dict",
        "state_dict_to_params",
    ),
    "torch_ref": (
        "EigshResult",
        "TorchGGN",
        "TorchHVP",
        "TorchLeNet",
        "TorchMLP",
        "effective_loss_torch",
        "fix_signs",
        "grad_torch",
        "hvp_torch",
        "jax_params_from_torch",
        "top_k_eigsh",
        "torch_module",
        "torch_params_from_jax",
    ),
}
_MODULE_OF = {name: module for module, names in EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:  # static analysers see the eager imports
    from .anchor import (Anchor, AnchorError, anchor_from_state_dict, flat_to_state_dict, load_anchor,
                         parameter_names, params_to_state_dict, save_state_dict, state_dict_to_params)
    from .torch_ref import (EigshResult, TorchGGN, TorchHVP, TorchLeNet, TorchMLP, effective_loss_torch, fix_signs,
                            grad_torch, hvp_torch, jax_params_from_torch, top_k_eigsh, torch_module,
                            torch_params_from_jax)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
