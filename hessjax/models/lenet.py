"""LeNet-5 (LeCun et al., 1998) with sigmoid activations and average pooling, as pure functions.

Exactly the torch module

    nn.Sequential(Conv2d(1, 6, 5), Sigmoid(), AvgPool2d(2), Conv2d(6, 16, 5), Sigmoid(), AvgPool2d(2),
                  Flatten(), Linear(256, 120), Sigmoid(), Linear(120, 84), Sigmoid(), Linear(84, 10))

on ``[N, 1, 28, 28]`` images (:class:`hessjax.bridges.TorchLeNet`). Its parameters are
``((conv1.weight [6, 1, 5, 5], conv1.bias [6]), (conv2 [16, 6, 5, 5], [16]), (fc1 [120, 256], [120]),
(fc2 [84, 120], [84]), (fc3 [10, 84], [10]))`` in torch's OIHW layout under the state-dict keys
``0.*``, ``3.*``, ``7.*``, ``9.*``, ``11.*``: P = 44,426. The convolutions are torch's
cross-correlation (channels-first, no padding, stride 1) at ``precision``, written as one matmul of
the kernel ``[O, C·kh·kw]`` with the ``kh·kw`` shifted views of the input (im2col): the same sums as
``lax.conv_general_dilated``, but XLA:CPU runs them, and the transposed convolutions of their
Hessian-vector products, as matmuls — a LeNet HVP over 4,000 images took 3.5 s with XLA:CPU's
convolutions and 0.77 s so (torch's double backward: 0.76 s; 2-core CPU). ``Flatten`` takes
``[16, 4, 4]`` in C, H, W order, as torch does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .activations import get_activation
from .base import DEFAULT_PRECISION, Model, Params, torch_default_init

__all__ = ["LENET_KEYS", "LENET_SHAPES", "apply_lenet", "conv2d", "init_lenet", "lenet"]

LENET_SHAPES = (((6, 1, 5, 5), (6,)), ((16, 6, 5, 5), (16,)), ((120, 256), (120,)), ((84, 120), (84,)),
                ((10, 84), (10,)))
LENET_KEYS = tuple((f"{i}.weight", f"{i}.bias") for i in (0, 3, 7, 9, 11))
INPUT_SHAPE = (1, 28, 28)


def init_lenet(key: jax.Array, dtype=jnp.float32) -> Params:
    """Fresh parameters with torch's default ``Conv2d``/``Linear`` distribution."""
    return torch_default_init(key, LENET_SHAPES, dtype)


def conv2d(x, w, b, precision=DEFAULT_PRECISION):
    """``Conv2d(stride=1, padding=0)`` of ``x`` ``[N, C, H, W]`` with ``w`` ``[O, C, kh, kw]`` and ``b`` ``[O]``:
    ``out[n, o, i, j] = b[o] + Σ_{c,u,v} w[o, c, u, v] x[n, c, i+u, j+v]``, as one matmul over the shifted views."""
    n, c, height, width = x.shape
    o, _, kh, kw = w.shape
    oh, ow = height - kh + 1, width - kw + 1
    views = jnp.stack([x[:, :, u:u + oh, v:v + ow] for u in range(kh) for v in range(kw)], axis=2)  # [N, C, kh·kw, ..]
    out = jnp.einsum("ok,nkp->nop", w.reshape(o, c * kh * kw), views.reshape(n, c * kh * kw, oh * ow),
                     precision=precision)
    return out.reshape(n, o, oh, ow) + b[None, :, None, None]


def _avg_pool(x):
    n, c, h, w = x.shape
    return jnp.mean(x.reshape(n, c, h // 2, 2, w // 2, 2), axis=(3, 5))  # AvgPool2d(2): 2×2 windows, stride 2


def apply_lenet(params: Params, x: jax.Array, *, precision=DEFAULT_PRECISION, activation="sigmoid") -> jax.Array:
    """Logits ``[N, 10]`` of images ``x`` ``[N, 1, 28, 28]``."""
    act = get_activation(activation).fn
    (c1, cb1), (c2, cb2), *dense = params
    h = _avg_pool(act(conv2d(x, c1, cb1, precision)))
    h = _avg_pool(act(conv2d(h, c2, cb2, precision)))
    h = h.reshape(h.shape[0], -1)
    for i, (w, b) in enumerate(dense):
        h = jnp.matmul(h, w.T, precision=precision) + b
        if i < len(dense) - 1:
            h = act(h)
    return h


def lenet() -> Model:
    """LeNet-5 as a :class:`~hessjax.models.Model` (see the module docstring)."""

    def apply(params, x, *, precision=DEFAULT_PRECISION):
        return apply_lenet(params, x, precision=precision)

    return Model("lenet", apply, lambda key, dtype=jnp.float32: init_lenet(key, dtype), INPUT_SHAPE, 10, LENET_KEYS,
                 "LeNet-5 (2 sigmoid conv + avg-pool, 3 linear layers)", None)
