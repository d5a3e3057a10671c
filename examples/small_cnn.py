"""A model of your own for hessjax: a small tanh CNN as a Flax module, with its torch twin.

    python -m hessjax.sweep --model examples/small_cnn.py:model --anchor my_cnn.pth --lambdas 0:0.1:6

``model()`` returns a :class:`hessjax.models.Model`: the Flax module wrapped by
:func:`hessjax.models.from_flax`, whose parameters are kept in torch's layout (Conv kernels OIHW,
Dense kernels ``[out, in]``) and in the order the module creates them — the order of the torch twin's
``state_dict()``, so the anchor ``my_cnn.pth`` (``torch.save(torch_module().state_dict(), path)``
after training in torch) is matched tensor by tensor, shape by shape, and the written
``model_weights-….pth`` load back with ``torch_module().load_state_dict(..., strict=True)``.

``torch_module`` is optional: hessjax only calls it for torch references
(``python -m hessjax.bridges.verify``, ``make_anchor``), so torch is imported there and nowhere else.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from hessjax.models import from_flax


class SmallCNN(nn.Module):
    """``Conv(1→4, 5×5, stride 2) → tanh → Flatten → Dense(576→32) → tanh → Dense(32→10)``."""

    @nn.compact
    def __call__(self, x):  # x: [N, 1, 28, 28], torch's channels-first layout
        x = jnp.transpose(x, (0, 2, 3, 1))  # Flax convolutions are channels-last
        x = jnp.tanh(nn.Conv(4, (5, 5), strides=(2, 2), padding="VALID")(x))  # [N, 12, 12, 4]
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # flattened in torch's C, H, W order
        x = jnp.tanh(nn.Dense(32)(x))
        return nn.Dense(10)(x)


def torch_module():
    """The same network in torch: keys ``0.weight``, ``0.bias``, ``3.weight``, …"""
    from torch import nn as tnn

    return tnn.Sequential(tnn.Conv2d(1, 4, 5, stride=2), tnn.Tanh(), tnn.Flatten(), tnn.Linear(576, 32), tnn.Tanh(),
                          tnn.Linear(32, 10))


def model():
    return from_flax(SmallCNN(), input_shape=(1, 28, 28), torch_module=torch_module,
                     description="small CNN (conv 4×5×5 stride 2, tanh, dense 32, tanh)")
