"""Bit-exact array conversions between torch, numpy and JAX (bfloat16 included, via ``ml_dtypes``),
and :class:`AnchorError`, which every refusal of an anchor or a state dict raises."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import torch

__all__ = ["AnchorError", "FLOAT_DTYPES", "as_numpy", "numpy_dtype", "numpy_to_tensor", "tensor_to_numpy", "to_jax"]

#: The dtypes an anchor may have (one for all its tensors).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class AnchorError(ValueError):
    """An anchor file or state dict that does not fit; the message names the file and the key."""


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    """A bit-exact numpy copy of a CPU tensor (bfloat16 via ``ml_dtypes``)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def numpy_to_tensor(a: np.ndarray) -> torch.Tensor:
    """A bit-exact, writable torch copy of a numpy array (bfloat16 via ``ml_dtypes``)."""
    a = np.array(a, copy=True, order="C")
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of a torch float dtype (``ml_dtypes.bfloat16`` for bfloat16)."""
    if dtype == torch.bfloat16:
        return np.dtype(ml_dtypes.bfloat16)
    return torch.empty((), dtype=dtype).numpy().dtype


def as_numpy(x) -> np.ndarray:
    """A numpy array of a torch tensor (a bit-exact copy, :func:`tensor_to_numpy`), or of a jax array
    or array-like (``np.asarray``: a view where it can be)."""
    if isinstance(x, torch.Tensor):
        return tensor_to_numpy(x)
    return np.asarray(x)


def to_jax(a: np.ndarray, where: str) -> jax.Array:
    """``jnp.asarray(a)``, refusing float64 values while ``jax_enable_x64`` is off (JAX would round
    them to float32 silently) with an :class:`AnchorError` whose message starts with ``where``."""
    if a.dtype == np.float64 and not jax.config.jax_enable_x64:
        raise AnchorError(
            f"{where}: float64 values but jax_enable_x64 is off, so JAX would silently round them "
            "to float32; call jax.config.update('jax_enable_x64', True) first")
    return jnp.asarray(a)
