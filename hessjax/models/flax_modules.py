"""Flax ``linen`` modules as hessjax models: :func:`from_flax` for any module, :class:`FlaxMLP` for the MLP.

A Flax module keeps its parameters in a nested dict with its own layouts: ``Dense`` kernels are
``[in, out]`` (torch's ``weight.T``), ``Conv`` kernels ``[kh, kw, in, out]`` (HWIO; torch's OIHW is
``kernel.transpose(3, 2, 0, 1)``). hessjax's parameters are always torch's (:mod:`hessjax.models.base`),
so :func:`from_flax` maps the two exactly: each innermost dict of the module's ``params`` is one layer,
taken in the order the module created them (Flax keeps it), its ``kernel``/``scale`` first as the
``weight``, then its ``bias``; ``apply`` transposes back and calls ``module.apply``. Flax convolutions
are channels-last: a module that takes torch-layout ``[N, C, H, W]`` images transposes them itself
(see the README's example), or declares a channels-last ``input_shape`` where ``C = 1``.

Only the ``params`` collection is supported: a module with ``batch_stats`` (BatchNorm) or other
mutable state has no single Hessian at fixed parameters and is refused.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from .base import DEFAULT_PRECISION, Model, Params
from .mlp import DEFAULT_SIZES

__all__ = ["FlaxMLP", "from_flax", "from_flax_variables", "to_flax_variables"]

_WEIGHT_NAMES = ("kernel", "scale", "embedding")
_PRECISION_NAMES = {lax.Precision.HIGHEST: "highest", lax.Precision.HIGH: "high", lax.Precision.DEFAULT: "default"}


class FlaxMLP(nn.Module):
    """``Dense → sigmoid → … → Dense`` with layers named ``Dense_0``, ``Dense_1``, …"""

    sizes: Sequence[int] = DEFAULT_SIZES
    precision: jax.lax.Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x):
        n_layers = len(self.sizes) - 1
        for i, width in enumerate(self.sizes[1:]):
            x = nn.Dense(width, precision=self.precision, name=f"Dense_{i}")(x)
            if i < n_layers - 1:
                x = nn.sigmoid(x)
        return x


def to_flax_variables(params: Params) -> dict:
    """hessjax MLP params → ``{"params": {"Dense_i": {"kernel": weight.T, "bias": bias}}}``."""
    return {"params": {f"Dense_{i}": {"kernel": jnp.transpose(w), "bias": b} for i, (w, b) in enumerate(params)}}


def from_flax_variables(variables: dict) -> Params:
    """The inverse of :func:`to_flax_variables`: Flax variables → a tuple of ``(weight, bias)``."""
    tree = variables["params"] if "params" in variables else variables
    names = [f"Dense_{i}" for i in range(len(tree))]
    if sorted(tree) != sorted(names):
        raise ValueError(f"expected Flax layers {names}, found {sorted(tree)}")
    return tuple((jnp.transpose(tree[n]["kernel"]), tree[n]["bias"]) for n in names)


# ------------------------------------------------------------------------------------------ any module


def _to_torch(name: str, a):
    """One Flax leaf in torch's layout (kernels transposed; everything else as is)."""
    if name == "kernel" and a.ndim >= 2:
        return jnp.transpose(a) if a.ndim == 2 else jnp.transpose(a, (a.ndim - 1, a.ndim - 2, *range(a.ndim - 2)))
    return a


def _to_flax(name: str, a):
    """The inverse of :func:`_to_torch`."""
    if name == "kernel" and a.ndim >= 2:
        return jnp.transpose(a) if a.ndim == 2 else jnp.transpose(a, (*range(2, a.ndim), 1, 0))
    return a


def _layers(tree, path=()) -> list[tuple[tuple[str, ...], list[str]]]:
    """``[(module path, [leaf names in torch order])]`` for every innermost dict, in creation order."""
    leaves = [k for k, v in tree.items() if not isinstance(v, dict)]
    out = []
    if leaves:
        ordered = ([k for k in leaves if k in _WEIGHT_NAMES] + [k for k in leaves if k == "bias"]
                   + [k for k in leaves if k not in _WEIGHT_NAMES and k != "bias"])
        out.append((path, ordered))
    for k, v in tree.items():
        if isinstance(v, dict):
            out.extend(_layers(v, path + (k,)))
    return out


def _torch_name(leaf: str) -> str:
    return "weight" if leaf in _WEIGHT_NAMES else leaf


def from_flax(module, input_shape: Sequence[int], *, name: str | None = None, keys=None, torch_module=None,
              description: str = "") -> Model:
    """A :class:`~hessjax.models.Model` of a Flax ``linen`` module taking ``[N, *input_shape]``.

    Its parameters are the module's, in torch layout and in the order the module created them (see
    the module docstring); ``init`` is the module's own ``init`` (Flax's initialisers, not torch's).
    ``keys`` (per layer) are the torch state-dict keys; by default ``"<flax path>.weight"`` etc.,
    which a sweep replaces by the anchor's own keys, matched in order and checked shape by shape.
    The forward pass runs under ``jax.default_matmul_precision`` of the requested precision, since a
    module fixes its layers' own ``precision`` arguments.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_flax takes a flax.linen.Module instance, got {type(module).__name__}")
    input_shape = tuple(int(s) for s in input_shape)
    label = name or type(module).__name__
    sample = jnp.zeros((1, *input_shape), jnp.float32)
    shapes = jax.eval_shape(lambda key: module.init(key, sample), jax.random.PRNGKey(0))
    extra = sorted(set(shapes) - {"params"})
    if extra:
        raise ValueError(f"model {label!r}: the Flax module has the collections {extra} besides 'params' "
                         "(BatchNorm statistics or other state); only stateless modules have one Hessian at "
                         "fixed parameters")
    if "params" not in shapes:
        raise ValueError(f"model {label!r}: the Flax module has no parameters")
    structure = _layers(shapes["params"])

    def to_params(tree) -> Params:
        layers = []
        for path, leaves in structure:
            node = tree
            for p in path:
                node = node[p]
            layers.append(tuple(_to_torch(leaf, node[leaf]) for leaf in leaves))
        return tuple(layers)

    def to_tree(params: Params) -> dict:
        tree: dict = {}
        for (path, leaves), layer in zip(structure, params):
            node = tree
            for p in path:
                node = node.setdefault(p, {})
            for leaf, a in zip(leaves, layer):
                node[leaf] = _to_flax(leaf, a)
        return {"params": tree}

    def apply(params, x, *, precision=DEFAULT_PRECISION):
        with jax.default_matmul_precision(_PRECISION_NAMES.get(precision, "highest")):
            return module.apply(to_tree(params), x)

    def init(key, dtype=jnp.float32):
        variables = module.init(key, jnp.zeros((1, *input_shape), dtype))
        return jax.tree_util.tree_map(lambda a: a.astype(dtype), to_params(variables["params"]))

    if keys is None:
        keys = tuple(tuple(".".join((*path, _torch_name(leaf))) for leaf in leaves) for path, leaves in structure)
    out = jax.eval_shape(lambda p: apply(p, sample), jax.eval_shape(init, jax.random.PRNGKey(0)))
    if len(out.shape) != 2:
        raise ValueError(f"model {label!r}: the module gives logits of shape {list(out.shape)} for one sample, "
                         "expected [1, num_classes]")
    return Model(label, apply, init, input_shape, int(out.shape[1]), tuple(tuple(k) for k in keys),
                 description or f"Flax {type(module).__name__}", None, torch_module)
