"""The MLP as pure functions over a tuple of ``(weight, bias)`` pairs.

Layout is PyTorch's: ``weight`` is ``[out, in]`` and ``bias`` is ``[out]``, layers in order, so
``jax.flatten_util.ravel_pytree(params)[0]`` is exactly ``torch.nn.utils.parameters_to_vector``
of the equivalent ``nn.Sequential(Linear, Sigmoid, Linear, Sigmoid, Linear)`` (or Tanh, Softplus,
GELU: :mod:`hessjax.models.activations`). :func:`mlp` wraps it as a :class:`~hessjax.models.Model`
whose Hessian products use the R-operator of :mod:`hessjax.linearized`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from .activations import Activation, get_activation
from .base import DEFAULT_PRECISION, MLPStructure, Model, Params, torch_default_init

__all__ = ["DEFAULT_SIZES", "accuracy", "apply_mlp", "init_mlp", "layer_sizes", "mlp", "mlp_keys"]

DEFAULT_SIZES = (784, 128, 128, 10)


def _check_sizes(sizes) -> tuple[int, ...]:
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes={sizes} must list at least two positive layer widths")
    return sizes


def init_mlp(key: jax.Array, sizes: Sequence[int] = DEFAULT_SIZES, dtype=jnp.float32) -> Params:
    """Fresh parameters with ``torch.nn.Linear``'s default initial distribution,
    ``U(−1/√fan_in, 1/√fan_in)`` for weights and biases (:func:`hessjax.models.torch_default_init`)."""
    sizes = _check_sizes(sizes)
    return torch_default_init(key, [((o, i), (o,)) for i, o in zip(sizes[:-1], sizes[1:])], dtype)


def layer_sizes(params: Params) -> tuple[int, ...]:
    """The width chain ``(in, hidden..., out)`` of ``params``."""
    return (params[0][0].shape[1],) + tuple(w.shape[0] for w, _ in params)


def _activation(activation) -> Activation:
    return activation if isinstance(activation, Activation) else get_activation(activation)


def apply_mlp(params: Params, x: jax.Array, *, precision=DEFAULT_PRECISION, activation="sigmoid") -> jax.Array:
    """Logits ``[..., out]`` of inputs ``x`` ``[..., in]``; ``activation`` after every hidden layer."""
    act = _activation(activation).fn
    h = x
    for i, (w, b) in enumerate(params):
        h = jnp.matmul(h, w.T, precision=precision) + b
        if i < len(params) - 1:
            h = act(h)
    return h


def accuracy(params: Params, x: jax.Array, y: jax.Array, *, precision=DEFAULT_PRECISION,
             activation="sigmoid") -> jax.Array:
    """Fraction of ``x`` whose arg-max logit is the label ``y``."""
    logits = apply_mlp(params, x, precision=precision, activation=activation)
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def mlp_keys(num_layers: int) -> tuple:
    """The state-dict keys of ``nn.Sequential(Linear, act, Linear, ..., Linear)``: ``0.weight``, ``0.bias``,
    ``2.weight``, …"""
    return tuple((f"{2 * i}.weight", f"{2 * i}.bias") for i in range(num_layers))


def mlp(sizes: Sequence[int] = DEFAULT_SIZES, activation="sigmoid") -> Model:
    """The MLP ``sizes[0] → … → sizes[-1]`` with ``activation`` after every hidden layer, as a
    :class:`~hessjax.models.Model` (torch: :class:`hessjax.bridges.TorchMLP`)."""
    sizes = _check_sizes(sizes)
    act = _activation(activation)

    def apply(params, x, *, precision=DEFAULT_PRECISION):
        return apply_mlp(params, x, precision=precision, activation=act)

    def init(key, dtype=jnp.float32):
        return init_mlp(key, sizes, dtype)

    return Model("mlp", apply, init, (sizes[0],), sizes[-1], mlp_keys(len(sizes) - 1),
                 f"{'-'.join(map(str, sizes))} MLP, {act.name}", MLPStructure(sizes, act))
