"""The hidden activations a model may use, each with its first and second derivative.

The Hessian of the loss is ``C²``-smooth in θ only where every activation is: Lanczos over Hessian-
vector products, the error bounds and the eigenvalue branches all assume it. ReLU-like functions are
piecewise linear — their second derivative is 0 almost everywhere and undefined at the kink, so the
"Hessian" there is the Gauss–Newton part plus a sum of Dirac masses that no product evaluates — and
they are refused (:func:`get_activation`), with smooth replacements named in the message.

Each :class:`Activation` gives ``σ``, ``σ'`` and ``σ''`` as functions of the pre-activation ``z``
*and* the output ``h = σ(z)``: where both derivatives follow from ``h`` alone (sigmoid, tanh,
softplus), the linearized MLP Hessian (:mod:`hessjax.linearized`) keeps only ``h`` per sample, as
torch's autograd does for sigmoid and tanh; GELU needs ``z``. The formulas are torch's:
``nn.Sigmoid``, ``nn.Tanh``, ``nn.Softplus()`` (β = 1; torch switches to ``z`` itself above
``z = 20``, where the two differ by less than ``e⁻²⁰ ≈ 2e-9``) and the exact, erf-based ``nn.GELU()``
(not ``jax.nn.gelu``'s default tanh approximation).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["ACTIVATIONS", "Activation", "NOT_SMOOTH", "get_activation"]


class Activation(NamedTuple):
    """A smooth elementwise activation and its derivatives."""

    name: str  # as on the command line and in torch: sigmoid, tanh, softplus, gelu
    fn: Callable  # σ(z)
    slope: Callable  # σ'(z) from (z, h); z is None when from_output
    curve: Callable  # σ''(z) from (z, h); z is None when from_output
    from_output: bool  # σ' and σ'' follow from h = σ(z) alone
    torch_name: str  # the torch.nn module: Sigmoid, Tanh, Softplus, GELU
    curve_ratio: Callable | None = None  # σ''/σ' from h where it is a simple function of h, else None


def _sigmoid_slope(z, h):
    return h * (1 - h)


def _sigmoid_curve(z, h):
    return h * (1 - h) * (1 - 2 * h)  # σ'' = σ'(1 − 2σ)


def _tanh_slope(z, h):
    return 1 - h * h


def _tanh_curve(z, h):
    return -2 * h * (1 - h * h)  # tanh'' = −2 tanh · tanh'


def _softplus_slope(z, h):
    # σ(z) = log(1 + eᶻ) gives e^{−h} = 1/(1 + eᶻ) = sigmoid(−z): σ' = sigmoid(z) = 1 − e^{−h}
    return -jnp.expm1(-h)


def _softplus_curve(z, h):
    return jnp.exp(-h) * -jnp.expm1(-h)  # sigmoid(z) sigmoid(−z)


_SQRT_HALF = 1 / math.sqrt(2.0)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _gelu(z):
    return z * (0.5 * lax.erfc(-z * _SQRT_HALF).astype(z.dtype))  # z Φ(z), erfc keeps Φ accurate for z < 0


def _phi(z):
    return _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)


def _gelu_slope(z, h):
    return 0.5 * lax.erfc(-z * _SQRT_HALF) + z * _phi(z)  # Φ(z) + z φ(z)


def _gelu_curve(z, h):
    return _phi(z) * (2 - z * z)  # φ(z)(2 − z²)


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation("sigmoid", jax.nn.sigmoid, _sigmoid_slope, _sigmoid_curve, True, "Sigmoid",
                          lambda h: 1 - 2 * h),
    "tanh": Activation("tanh", jnp.tanh, _tanh_slope, _tanh_curve, True, "Tanh", lambda h: -2 * h),
    "softplus": Activation("softplus", jax.nn.softplus, _softplus_slope, _softplus_curve, True, "Softplus",
                           lambda h: jnp.exp(-h)),
    "gelu": Activation("gelu", _gelu, _gelu_slope, _gelu_curve, False, "GELU"),
}

#: Activations that are refused, and why.
NOT_SMOOTH = {
    name: "piecewise linear: its second derivative is 0 almost everywhere and undefined at the kink"
    for name in ("relu", "relu6", "leaky_relu", "prelu", "hardtanh", "hard_tanh", "hardsigmoid", "hard_sigmoid",
                 "hardswish", "hard_swish")
} | {"elu": "not twice differentiable at 0 (its second derivative jumps from 1 to 0)",
     "selu": "not twice differentiable at 0 (its second derivative jumps there)",
     "celu": "not twice differentiable at 0 (its second derivative jumps there)"}


def get_activation(name: str) -> Activation:
    """The :class:`Activation` called ``name``; ``ValueError`` naming the choices otherwise, and saying why
    a ReLU-like one is refused."""
    key = str(name).strip().lower()
    if key in ACTIVATIONS:
        return ACTIVATIONS[key]
    choices = ", ".join(ACTIVATIONS)
    if key in NOT_SMOOTH:
        raise ValueError(f"activation {name!r} is refused: {NOT_SMOOTH[key]}, so the loss is not C² and its Hessian "
                         f"is not what Hessian-vector products evaluate; use a smooth one ({choices}: softplus and "
                         "gelu are the smooth counterparts of relu)")
    raise ValueError(f"unknown activation {name!r}; choose one of {choices}")
