"""What hessjax needs to know of a model: :class:`Model`, and :func:`make_model` to build one from
pure functions.

**Parameters are PyTorch's.** Every model's parameters are a tuple of layers, each a tuple of arrays
in the layout and order of the torch module's ``state_dict()`` — ``(weight, bias)`` for ``Linear``
(``[out, in]``) and ``Conv2d`` (``[out, in, kh, kw]``, OIHW) — so
``jax.flatten_util.ravel_pytree(params)[0]`` is ``torch.nn.utils.parameters_to_vector`` of the
module, flat gradients and eigenvectors index the same entries in both frameworks, and written
weights load with ``load_state_dict(strict=True)``. ``Model.keys`` names each array by its torch
key; a model without keys takes the anchor's, matched in order and checked shape by shape.

**Inputs** are ``[N, *input_shape]`` in torch's layout (images channels-first, as torchvision's
``ToTensor`` gives them); the sweep reshapes data whose per-sample shape differs only by flattening or
size-1 axes (MNIST's ``[784]`` for LeNet's ``[1, 28, 28]``) and refuses anything else.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from .activations import Activation

__all__ = ["DEFAULT_PRECISION", "MLPStructure", "Model", "Params", "make_model", "torch_default_init"]

Params = tuple  # tuple[tuple[Array, ...], ...]: layers of arrays in torch layout and state-dict order

#: Matmul and convolution precision of the forward pass, and so of every gradient and HVP derived
#: from it. ``HIGHEST`` keeps float32 products in true float32 on GPUs/TPUs (no TF32 / bf16 passes).
DEFAULT_PRECISION = lax.Precision.HIGHEST


class MLPStructure(NamedTuple):
    """An MLP's shape, which lets :mod:`hessjax.linearized` apply its Hessian by the R-operator."""

    sizes: tuple  # (in, hidden..., out)
    activation: Activation


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A classifier as pure functions, with its parameters in torch's layout (see the module docstring).

    ``apply(params, x, *, precision)`` gives the logits ``[N, num_classes]`` of ``x`` ``[N, *input_shape]``;
    ``init(key, dtype)`` a fresh parameter tuple. The object is static: programs compiled for a model
    close over it, and its parameters, λ, the anchor and the data travel as traced arguments.
    """

    name: str  # "mlp", "lenet", or the MODULE:ATTR it was loaded from
    apply: Callable  # (params, x, *, precision) -> logits [N, K]
    init: Callable  # (key, dtype) -> params
    input_shape: tuple  # per-sample input shape, torch layout
    num_classes: int  # K, the width of the logits; labels lie in [0, K)
    keys: tuple | None = None  # ((torch key, ...), ...) per layer, or None: the anchor's, in order
    description: str = ""  # one line for plans and manifests
    mlp: MLPStructure | None = None  # set for MLPs: their Hessian products use the R-operator
    torch_module: Callable | None = None  # () -> torch.nn.Module with these keys (for torch references), or None

    def shapes(self, dtype=jnp.float32) -> tuple:
        """``((shape, ...), ...)``: the parameter shapes per layer, without initialising anything."""
        tree = jax.eval_shape(lambda key: self.init(key, dtype), jax.random.PRNGKey(0))
        return tuple(tuple(tuple(a.shape) for a in layer) for layer in tree)

    @property
    def num_params(self) -> int:
        """``P``, the length of the flat parameter vector."""
        return sum(math.prod(s) for layer in self.shapes() for s in layer)

    def summary(self) -> dict:
        """A JSON-friendly description: name, input shape, classes, P and the parameter table."""
        shapes = self.shapes()
        keys = self.keys or tuple(tuple(f"[{i}.{j}]" for j in range(len(layer))) for i, layer in enumerate(shapes))
        return {"name": self.name, "description": self.description, "input_shape": list(self.input_shape),
                "num_classes": int(self.num_classes), "num_params": self.num_params,
                "parameters": {k: list(s) for layer_k, layer_s in zip(keys, shapes) for k, s in zip(layer_k, layer_s)}}


def torch_default_init(key: jax.Array, shapes: Sequence[Sequence[Sequence[int]]], dtype=jnp.float32) -> Params:
    """Fresh parameters with torch's default distribution for ``Linear`` and ``Conv2d`` layers.

    torch draws ``weight`` with ``kaiming_uniform_(a=sqrt(5))`` and ``bias`` uniformly, both of which
    reduce to ``U(−1/√fan_in, 1/√fan_in)`` with ``fan_in = in · kh · kw`` (the weight's size over its
    first axis). ``shapes`` are per layer, weight first. The distribution matches torch's, the random
    stream does not (copy tensors across with :mod:`hessjax.bridges` to start both from one point).
    """
    layers = []
    keys = jax.random.split(key, max(1, sum(len(layer) for layer in shapes)))
    i = 0
    for layer in shapes:
        weight = tuple(int(s) for s in layer[0])
        if len(weight) < 2 or min(weight) < 1:
            raise ValueError(f"layer shapes {layer}: the first (the weight) must be [out, in, ...] with positive sizes")
        bound = 1.0 / jnp.sqrt(jnp.asarray(math.prod(weight[1:]), dtype))
        arrays = []
        for shape in layer:
            arrays.append(jax.random.uniform(keys[i], tuple(int(s) for s in shape), dtype, -bound, bound))
            i += 1
        layers.append(tuple(arrays))
    return tuple(layers)


def _takes_precision(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "precision" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def make_model(name: str, apply: Callable, *, input_shape: Sequence[int], shapes=None, init: Callable | None = None,
               keys=None, num_classes: int | None = None, description: str = "",
               torch_module: Callable | None = None) -> Model:
    """A :class:`Model` from pure functions.

    ``apply(params, x)`` (optionally with a ``precision`` keyword, passed through) maps ``x``
    ``[N, *input_shape]`` to logits. Give either ``init(key, dtype)`` or ``shapes`` — per layer the
    torch-layout shapes, weight first (``(((6, 1, 5, 5), (6,)), ((10, 864), (10,)))``), drawn from
    torch's default distribution by :func:`torch_default_init`. ``keys``, per layer, are the torch
    state-dict keys (``(("0.weight", "0.bias"), ...)``); without them the anchor's keys are used,
    matched in order. ``num_classes`` defaults to the logits' width.
    """
    if (shapes is None) == (init is None):
        raise ValueError("give exactly one of shapes= (torch-default initialisation) or init=")
    if shapes is not None:
        table = tuple(tuple(tuple(int(s) for s in shape) for shape in layer) for layer in shapes)
        init = lambda key, dtype=jnp.float32: torch_default_init(key, table, dtype)  # noqa: E731
    input_shape = tuple(int(s) for s in input_shape)
    forward = apply if _takes_precision(apply) else (lambda params, x, *, precision=None: apply(params, x))
    if num_classes is None:
        params = jax.eval_shape(lambda key: init(key, jnp.float32), jax.random.PRNGKey(0))
        out = jax.eval_shape(lambda p: forward(p, jnp.zeros((1, *input_shape), jnp.float32)), params)
        if len(out.shape) != 2 or out.shape[0] != 1:
            raise ValueError(f"model {name!r}: apply gives logits of shape {list(out.shape)} for one sample, "
                             "expected [1, num_classes]")
        num_classes = int(out.shape[1])
    model = Model(name, forward, init, input_shape, int(num_classes), None if keys is None else _keys(keys),
                  description, None, torch_module)
    _check_structure(model)
    return model


def _keys(keys) -> tuple:
    return tuple(tuple(str(k) for k in layer) for layer in keys)


def _check_structure(model: Model) -> None:
    """The parameters must be a tuple of layers of arrays; keys, if given, must name each of them once."""
    tree = jax.eval_shape(lambda key: model.init(key, jnp.float32), jax.random.PRNGKey(0))
    if not isinstance(tree, tuple) or not all(isinstance(layer, tuple) and layer for layer in tree):
        raise ValueError(f"model {model.name!r}: init must return a tuple of layers, each a tuple of arrays in "
                         f"torch's layout (weight, bias), found {type(tree).__name__}")
    if model.keys is not None:
        if [len(layer) for layer in model.keys] != [len(layer) for layer in tree]:
            raise ValueError(f"model {model.name!r}: keys {model.keys} do not match its layers "
                             f"{[len(layer) for layer in tree]} arrays each")
        flat = [k for layer in model.keys for k in layer]
        if len(set(flat)) != len(flat):
            raise ValueError(f"model {model.name!r}: keys repeat: {flat}")
