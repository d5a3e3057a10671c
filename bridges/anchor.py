"""Anchor ``.pth`` files in and out: an explicit shape table, never guesses by name.

A PyTorch anchor is a state dict. :func:`load_anchor` reads one with ``torch.load(...,
weights_only=True)`` (a ``.pth`` is a pickle; a pickle from someone else must never run code) and
matches its tensors to a model's parameters (:mod:`hessjax.bridges.layers`):

* for the MLP (no ``model``, or an MLP), every 2-D ``<module>.weight`` is paired with the 1-D
  ``<module>.bias`` of the same module and the layers are ordered by checking each shape against a
  chain from ``n_inputs`` (784) to ``n_classes`` (10; any with ``None``): key order when it chains,
  otherwise the one ordering the shapes allow. The anchor's own chain defines the architecture
  (784→128→128→10, 784→256→256→10, ...); a convolution kernel is refused as not an MLP anchor;
* for any other :class:`hessjax.models.Model` (``model=``: LeNet, a Flax module, your own), the
  tensors must be exactly the model's parameters, by key where the keys are the model's (after a
  common prefix), else in state-dict order, every shape checked.

Anything else is refused with an :class:`AnchorError` naming the file, the key and the expected and
found shape or dtype.

Accepted layouts (for the MLP the tensors are always ``{<module>.weight, <module>.bias}`` pairs):

* a plain state dict of ``nn.Sequential`` (``0.weight``, ``0.bias``, ``2.weight``, ...),
* named layers (``fc1.weight``, ``fc1.bias``, ...), any module path (``net.0.weight``, ...),
* either of those with the ``module.`` prefix of ``DataParallel`` / ``DistributedDataParallel``,
* a checkpoint dict holding one of those under ``"state_dict"`` or ``"model_state_dict"`` (its other
  entries, an optimizer state or an epoch counter, are ignored).

:func:`save_state_dict` writes parameters back as a *plain* state dict with the anchor's own keys
(prefix such as ``module.`` kept), key order and dtype, so ``load_state_dict(strict=True)`` works on
the module the anchor came from; a checkpoint container is not re-created (its other entries would
be stale). Run ``python -m hessjax.bridges.anchor PATH`` to check a file from the shell.

Flat vectors (gradients, eigenvectors) are in hessjax order, ``ravel_pytree(params)[0]``, which is
``torch.nn.utils.parameters_to_vector`` order: for each layer along the chain, the weight
(``[out, in]``, or ``[out, in, kh, kw]`` for a convolution) row-major, then the bias ``[out]``. (For a module that registers its layers out of
forward order, which is accepted when the shapes fix the order, its own ``parameters()`` order differs
from this chain order; state dicts written here are keyed, so loading them is unaffected.)

The array conversions (:func:`tensor_to_numpy`, :func:`numpy_to_tensor`, :func:`as_numpy`,
:func:`to_jax`) are bit-exact, bfloat16 included; :mod:`hessjax.bridges.torch_ref` uses them too.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import io
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Mapping
from typing import NamedTuple, Sequence

import jax
import numpy as np
import torch

from hessjax.models import Model, Params

from . import EXPORTS
from .layers import check_finite, common_prefix, layer_chain, mlp_layers, shape_str, table_layers
from .tensors import (FLOAT_DTYPES, AnchorError, as_numpy, numpy_dtype, numpy_to_tensor, tensor_to_numpy,
                      to_jax)

# the names hessjax.bridges re-exports (listed in its EXPORTS), then the array conversions and the CLI
__all__ = [*EXPORTS["anchor"], "as_numpy", "numpy_to_tensor", "tensor_to_numpy", "to_jax", "main"]

N_INPUTS = 784
N_CLASSES = 10

#: Checkpoint keys under which a state dict may be nested.
CONTAINER_KEYS = ("state_dict", "model_state_dict")


class Anchor(NamedTuple):
    """A loaded anchor: hessjax parameters plus everything needed to write results back."""

    params: Params  # ((weight, bias), ...) jax arrays in the anchor's dtype, torch layout, parameter order
    keys: tuple  # ((weight_key, bias_key), ...) the anchor's own key names, parameter order
    sizes: tuple | None  # an MLP's width chain (in, hidden..., out), e.g. (784, 128, 128, 10); None otherwise
    dtype: torch.dtype  # the anchor's float dtype (all tensors share it)
    path: str  # the file it was read from ("<state dict>" when built in memory)
    sha256: str  # hex digest of the file's bytes ("" when built in memory)
    prefix: str  # dotted module path common to every key, e.g. "module." or "" (informational)
    container: str | None  # "state_dict" / "model_state_dict" if nested in a checkpoint, else None
    state_dict_keys: tuple  # every key in the original order (what save_state_dict writes)
    model: str = "mlp"  # the model its tensors were matched to

    @property
    def num_params(self) -> int:
        """``P``, the length of the flat parameter vector."""
        return sum(math.prod(a.shape) for layer in self.params for a in layer)


def anchor_from_state_dict(state_dict: Mapping, *, path: str = "<state dict>", sha256: str = "",
                           container: str | None = None, sizes: Sequence[int] | None = None,
                           n_inputs: int = N_INPUTS, n_classes: int | None = N_CLASSES,
                           model: Model | None = None) -> Anchor:
    """An :class:`Anchor` from an in-memory state dict.

    The same checks as :func:`load_anchor` (which calls this after reading the file); ``path`` only
    labels the messages. Without ``model`` (or with an MLP) the tensors are ``Linear`` pairs: with
    ``sizes`` given the chain must be exactly that; otherwise it runs from ``n_inputs`` to
    ``n_classes`` (any width for ``None``) through whatever hidden widths the anchor has. With any
    other ``model`` they must be exactly its parameters (:func:`hessjax.bridges.layers.table_layers`).
    """
    where = path if container is None else f"{path} [{container!r}]"
    if model is not None and model.mlp is not None and sizes is None:
        sizes = model.mlp.sizes
    if model is None or model.mlp is not None:
        sizes, n_inputs, n_classes = _chain_ends(sizes, n_inputs, n_classes)
        layers, dtype = mlp_layers(state_dict, where, n_inputs, n_classes, sizes)
        chain, name = layer_chain(layers), "mlp"
    else:
        layers, dtype = table_layers(state_dict, where, model.name, model.keys, model.shapes())
        chain, name = None, model.name
    check_finite(layers, where)
    return Anchor(
        params=tuple(tuple(to_jax(tensor_to_numpy(t), where) for t in layer.tensors) for layer in layers),
        keys=tuple(layer.keys for layer in layers),
        sizes=chain,
        dtype=dtype,
        path=path,
        sha256=sha256,
        prefix=common_prefix([layer.module for layer in layers]),
        container=container,
        state_dict_keys=tuple(state_dict.keys()),
        model=name,
    )


def _chain_ends(sizes, n_inputs: int, n_classes: int | None) -> tuple[tuple[int, ...] | None, int, int | None]:
    """``(sizes, n_inputs, n_classes)`` with ``sizes`` as a tuple of ints; when given, its first and
    last widths are the chain's ends."""
    if sizes is not None:
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes={sizes} must list at least two widths")
        n_inputs, n_classes = sizes[0], sizes[-1]
    return sizes, n_inputs, n_classes


def load_anchor(path, *, sizes: Sequence[int] | None = None, n_inputs: int = N_INPUTS,
                n_classes: int | None = N_CLASSES, model: Model | None = None) -> Anchor:
    """Read and check an anchor ``.pth`` file; see the module docstring for the accepted layouts.

    The file is read once, hashed (``sha256``) and unpickled from those bytes with
    ``torch.load(..., map_location="cpu", weights_only=True)``, which refuses any pickle that would
    construct something other than tensors and plain containers. ``params`` keep the anchor's own
    float dtype (a float64 anchor needs ``jax_enable_x64``). ``sizes`` pins the chain exactly, which
    also catches a missing hidden layer between equal widths; by default any chain from
    ``n_inputs`` to ``n_classes`` is accepted. ``model`` (a :class:`hessjax.models.Model` that is not
    an MLP) matches the tensors to its parameter table instead.

    Raises :class:`AnchorError` for a missing, unreadable, truncated, non-pickle or code-carrying
    file, and for any content that is not exactly a chain of finite float ``Linear`` weight/bias pairs
    (or, with ``model``, exactly that model's finite parameters).
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise AnchorError(f"{name}: no such file")
    if os.path.isdir(name):
        raise AnchorError(f"{name}: is a directory, expected a .pth file")
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise AnchorError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    sha256 = hashlib.sha256(data).hexdigest()
    if not data:
        raise AnchorError(f"{name}: the file is empty, expected a torch .pth file")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for bad bytes; every one is a refusal
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only load failed" in str(exc).lower():
            raise AnchorError(f"{name}: refused by torch.load(weights_only=True): the pickle holds more than "
                              f"tensors and may contain code ({_unsafe_reason(exc)}); an anchor must be a "
                              "state dict (torch.save(model.state_dict(), path)), not a pickled module") from exc
        raise AnchorError(f"{name}: not a readable torch file (truncated, corrupt or not a pickle): "
                          f"{type(exc).__name__}: {reason}") from exc

    obj, container = _unwrap_checkpoint(obj, name)
    return anchor_from_state_dict(obj, path=name, sha256=sha256, container=container, sizes=sizes,
                                  n_inputs=n_inputs, n_classes=n_classes, model=model)


def _unwrap_checkpoint(obj, name: str) -> tuple[object, str | None]:
    """``(state dict, container key)``: the state dict a checkpoint dict holds under one of
    ``CONTAINER_KEYS``, or ``obj`` itself and None when it holds none of them."""
    if isinstance(obj, Mapping):
        nested = [k for k in CONTAINER_KEYS if k in obj]
        if len(nested) > 1:
            raise AnchorError(f"{name}: the checkpoint holds both {nested[0]!r} and {nested[1]!r}; "
                              "refusing to guess which is the model")
        if nested:
            return obj[nested[0]], nested[0]
    return obj, None


def _unsafe_reason(exc: Exception) -> str:
    """What torch's weights-only unpickler refused: the global it names, or its error line."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if found:
        return f"it references the global {found.group(1)}"
    for line in str(exc).splitlines():
        if line.strip().startswith(("WeightsUnpickler error", "Unsupported")):
            return line.strip()[:120]
    return "an unsupported pickle instruction"


# --------------------------------------------------------------------------- writing back


def _check_params(params: Params, anchor: Anchor, what: str = "params") -> None:
    if len(params) != len(anchor.keys):
        raise ValueError(f"{what} has {len(params)} layers, the anchor {anchor.path} has {len(anchor.keys)}")
    for layer, ref, keys in zip(params, anchor.params, anchor.keys):
        if len(layer) != len(keys):
            raise ValueError(f"{what}: layer {keys} has {len(layer)} arrays, expected {len(keys)}")
        for key, p, a in zip(keys, layer, ref):
            if tuple(p.shape) != tuple(a.shape):
                raise ValueError(f"{what}: {key!r} has shape {list(p.shape)}, expected {list(a.shape)}")


def params_to_state_dict(params: Params, anchor: Anchor, *, dtype: torch.dtype | None = None):
    """``OrderedDict[key, tensor]``: hessjax ``params`` under the anchor's keys, in its key order.

    Tensors are CPU copies in ``dtype`` (default: the anchor's dtype); when ``params`` already have
    that dtype, the bits are unchanged.
    """
    _check_params(params, anchor)
    np_dtype = numpy_dtype(anchor.dtype if dtype is None else dtype)
    by_key = {}
    for layer, keys in zip(params, anchor.keys):
        for key, a in zip(keys, layer):
            by_key[key] = numpy_to_tensor(as_numpy(a).astype(np_dtype, copy=False))
    return collections.OrderedDict((k, by_key[k]) for k in anchor.state_dict_keys)


def state_dict_to_params(state_dict: Mapping, anchor: Anchor) -> Params:
    """hessjax params (jax arrays, the state dict's own dtype) from a state dict with exactly the
    anchor's keys and shapes, e.g. ``module.state_dict()`` after training in torch."""
    missing = [k for k in anchor.state_dict_keys if k not in state_dict]
    extra = [k for k in state_dict if k not in set(anchor.state_dict_keys)]
    if missing or extra:
        raise AnchorError(f"state dict: keys differ from the anchor {anchor.path}: "
                          f"missing {missing}, unexpected {extra}")
    params = []
    for keys, ref in zip(anchor.keys, anchor.params):
        layer = []
        for key, a in zip(keys, ref):
            t = state_dict[key]
            if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
                raise AnchorError(f"state dict: key {key!r} is not a float tensor "
                                  f"(found {getattr(t, 'dtype', type(t).__name__)})")
            if tuple(t.shape) != tuple(a.shape):
                raise AnchorError(f"state dict: key {key!r} has shape {shape_str(t)}, expected {shape_str(a)}")
            layer.append(to_jax(tensor_to_numpy(t), "state dict"))
        params.append(tuple(layer))
    return tuple(params)


def save_state_dict(path, params: Params, anchor: Anchor) -> str:
    """Write ``params`` as a plain torch state dict in the anchor's keys, key order and dtype.

    The file loads with ``load_state_dict(strict=True)`` into the module the anchor came from (keys
    keep their ``module.`` or other prefix; a checkpoint container is *not* re-created, only the state
    dict it held). Parameters in the anchor's dtype are written bit for bit; others are cast to it.
    The write is atomic: a temporary file in the same directory, fsynced, then ``os.replace``.
    Returns the sha256 of the bytes written.
    """
    buffer = io.BytesIO()
    torch.save(params_to_state_dict(params, anchor), buffer)
    data = buffer.getvalue()
    name = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(name))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(name) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- flat vectors


def _flat_names_and_shapes(anchor: Anchor):
    names, shapes = [], []
    for layer, keys in zip(anchor.params, anchor.keys):
        for key, a in zip(keys, layer):
            names.append(key)
            shapes.append(tuple(a.shape))
    return names, shapes


def flat_to_state_dict(vector, anchor: Anchor):
    """``OrderedDict[key, tensor]``: a flat ``[P]`` vector in hessjax / ``parameters_to_vector`` order
    (a gradient, an eigenvector) cut into tensors shaped like the anchor's, under its keys and in its
    key order. The vector's own dtype is kept (a float64 eigenvector stays float64); the inverse of
    ``ravel_pytree(params)[0]`` bit for bit. Accepts a torch tensor, a jax or a numpy array."""
    v = as_numpy(vector)
    p = anchor.num_params
    if v.shape != (p,):
        raise ValueError(f"vector has shape {list(v.shape)}, expected [{p}] for the anchor {anchor.path}")
    by_key, start = {}, 0
    for key, shape in zip(*_flat_names_and_shapes(anchor)):
        stop = start + math.prod(shape)
        by_key[key] = numpy_to_tensor(v[start:stop].reshape(shape))
        start = stop
    return collections.OrderedDict((k, by_key[k]) for k in anchor.state_dict_keys)


def parameter_names(anchor: Anchor) -> list[str]:
    """For each of the ``P`` flat entries (hessjax order), the key of the tensor it belongs to."""
    names, shapes = _flat_names_and_shapes(anchor)
    return np.repeat(np.asarray(names, dtype=object), [math.prod(s) for s in shapes]).tolist()


# --------------------------------------------------------------------------- command line


def _summary(anchor: Anchor) -> str:
    layout = "plain state dict" if anchor.container is None else f"checkpoint[{anchor.container!r}]"
    shape = f"chain    {' -> '.join(map(str, anchor.sizes))}" if anchor.sizes else f"model    {anchor.model}"
    lines = [
        f"file     {anchor.path}",
        f"sha256   {anchor.sha256}",
        f"layout   {layout}, key prefix {anchor.prefix!r}",
        f"dtype    {anchor.dtype}",
        shape,
        f"P        {anchor.num_params}",
        "layers",
    ]
    for i, (layer, keys) in enumerate(zip(anchor.params, anchor.keys)):
        lines.append(f"  {i}  " + "  ".join(f"{k} {shape_str(a)}" for k, a in zip(keys, layer)))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hessjax.bridges.anchor PATH``: print the anchor's summary (exit 0), or one line
    ``error: ...`` on stderr (exit 2)."""
    parser = argparse.ArgumentParser(prog="python -m hessjax.bridges.anchor",
                                     description="Check a PyTorch anchor .pth file and print its summary.")
    parser.add_argument("path", help="the .pth file")
    parser.add_argument("--model", default="mlp",
                        help="the model it belongs to: mlp (any chain from 784 inputs), lenet, or MODULE:ATTR")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # summarise float64 anchors without rounding them
    from hessjax.models import ModelError, resolve_model

    try:
        model = None if args.model == "mlp" else resolve_model(args.model)
        with warnings.catch_warnings():  # e.g. torch's pickle-protocol notice: the answer is one line
            warnings.simplefilter("ignore")
            anchor = load_anchor(args.path, model=model, n_classes=None)
    except (AnchorError, ModelError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(_summary(anchor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
