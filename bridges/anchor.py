"""Anchor ``.pth`` files in and out: an explicit shape table, never guesses by name.

A PyTorch anchor is a state dict of ``nn.Linear`` weight/bias pairs. :func:`load_anchor` reads one
with ``torch.load(..., weights_only=True)`` (a ``.pth`` is a pickle; a pickle from someone else must
never run code), pairs every 2-D ``<module>.weight`` with the 1-D ``<module>.bias`` of the same
module, and orders the layers by checking each shape against a chain from ``n_inputs`` (784) to
``n_classes`` (10): key order when it chains, otherwise the one ordering the shapes allow. The
anchor's own chain defines the architecture (784→128→128→10, 784→256→256→10, ...). Anything else is
refused with an :class:`AnchorError` naming the file, the key and the expected and found shape or
dtype.

Accepted layouts (the tensors themselves are always ``{<module>.weight, <module>.bias}`` pairs):

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
``[out, in]`` row-major, then the bias ``[out]``. (For a module that registers its layers out of
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
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Mapping
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import torch

from hessjax.model import Params

from . import _EXPORTS

# the names hessjax.bridges re-exports (listed in its _EXPORTS), then the array conversions and the CLI
__all__ = [*_EXPORTS["anchor"], "as_numpy", "numpy_to_tensor", "tensor_to_numpy", "to_jax", "main"]

N_INPUTS = 784
N_CLASSES = 10

#: The dtypes an anchor may have (one for all its tensors).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: Checkpoint keys under which a state dict may be nested.
CONTAINER_KEYS = ("state_dict", "model_state_dict")

_MAX_LAYERS = 64


class AnchorError(ValueError):
    """An anchor file or state dict that does not fit; the message names the file and the key."""


class Anchor(NamedTuple):
    """A loaded anchor: hessjax parameters plus everything needed to write results back."""

    params: Params  # ((weight [out, in], bias [out]), ...) jax arrays in the anchor's dtype, chain order
    keys: tuple  # ((weight_key, bias_key), ...) the anchor's own key names, chain order
    sizes: tuple  # (in, hidden..., out), e.g. (784, 128, 128, 10)
    dtype: torch.dtype  # the anchor's float dtype (all tensors share it)
    path: str  # the file it was read from ("<state dict>" when built in memory)
    sha256: str  # hex digest of the file's bytes ("" when built in memory)
    prefix: str  # dotted module path common to every key, e.g. "module." or "" (informational)
    container: str | None  # "state_dict" / "model_state_dict" if nested in a checkpoint, else None
    state_dict_keys: tuple  # every key in the original order (what save_state_dict writes)

    @property
    def num_params(self) -> int:
        """``P``, the length of the flat parameter vector."""
        return sum(int(np.prod(w.shape)) + int(b.shape[0]) for w, b in self.params)


# --------------------------------------------------------------------------- tensor conversion


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


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
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


# --------------------------------------------------------------------------- parsing


def _shape(t) -> str:
    return "[" + ", ".join(str(int(s)) for s in t.shape) + "]"


def _split_key(key: str) -> tuple[str, str] | None:
    """``"fc1.weight" -> ("fc1", "weight")``; ``"weight" -> ("", "weight")``; else None."""
    module, _, leaf = key.rpartition(".")
    return (module, leaf) if leaf in ("weight", "bias") else None


def _common_prefix(modules: Sequence[str]) -> str:
    """The dotted path shared by every module, with its trailing dot (``"module."``) or ``""``."""
    parts = [m.split(".") if m else [] for m in modules]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    # never swallow a whole module name (a single layer "fc" keeps prefix "")
    if parts and len(common) == min(len(p) for p in parts):
        common = common[:-1]
    return "".join(c + "." for c in common)


def _chain_orders(shapes: list[tuple[int, int]], n_inputs: int, n_classes: int, limit: int = 2):
    """Up to ``limit`` orderings (as shape sequences) of the multiset ``shapes`` of ``(in, out)`` that
    chain ``n_inputs -> ... -> n_classes`` using every layer once."""
    counts = collections.Counter(shapes)
    found: list[list[tuple[int, int]]] = []
    path: list[tuple[int, int]] = []

    def visit(width: int) -> None:
        if len(found) >= limit:
            return
        if len(path) == len(shapes):
            if width == n_classes:
                found.append(list(path))
            return
        for shape in sorted(counts):
            if shape[0] == width and counts[shape]:
                counts[shape] -= 1
                path.append(shape)
                visit(shape[1])
                path.pop()
                counts[shape] += 1

    visit(n_inputs)
    return found


class _Layer(NamedTuple):
    """One ``Linear`` of a state dict: its module path, its two keys and its tensors."""

    module: str  # e.g. "module.fc1" ("" for bare "weight" / "bias" keys)
    wkey: str
    bkey: str
    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor  # [out]


def anchor_from_state_dict(state_dict: Mapping, *, path: str = "<state dict>", sha256: str = "",
                           container: str | None = None, sizes: Sequence[int] | None = None,
                           n_inputs: int = N_INPUTS, n_classes: int = N_CLASSES) -> Anchor:
    """An :class:`Anchor` from an in-memory state dict of ``Linear`` weight/bias pairs.

    The same checks as :func:`load_anchor` (which calls this after reading the file); ``path`` only
    labels the messages. With ``sizes`` given, the chain must be exactly that; otherwise it runs from
    ``n_inputs`` to ``n_classes`` through whatever hidden widths the anchor has.
    """
    sizes, n_inputs, n_classes = _chain_ends(sizes, n_inputs, n_classes)
    where = path if container is None else f"{path} [{container!r}]"
    _check_state_dict(state_dict, where, n_inputs, n_classes)
    modules, dtype = _tensors_by_module(state_dict, where)
    layers = _chain_order(_pair_layers(modules, where), where, n_inputs, n_classes, sizes)
    _check_finite(layers, where)
    return Anchor(
        params=tuple((to_jax(tensor_to_numpy(w), where), to_jax(tensor_to_numpy(b), where)) for *_, w, b in layers),
        keys=tuple((layer.wkey, layer.bkey) for layer in layers),
        sizes=_chain_sizes(_layer_shapes(layers)),
        dtype=dtype,
        path=path,
        sha256=sha256,
        prefix=_common_prefix([layer.module for layer in layers]),
        container=container,
        state_dict_keys=tuple(state_dict.keys()),
    )


def _chain_ends(sizes, n_inputs: int, n_classes: int) -> tuple[tuple[int, ...] | None, int, int]:
    """``(sizes, n_inputs, n_classes)`` with ``sizes`` as a tuple of ints; when given, its first and
    last widths are the chain's ends."""
    if sizes is not None:
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes={sizes} must list at least two widths")
        n_inputs, n_classes = sizes[0], sizes[-1]
    return sizes, n_inputs, n_classes


def _check_state_dict(state_dict, where: str, n_inputs: int, n_classes: int) -> None:
    """Refuse anything but a non-empty mapping."""
    if not isinstance(state_dict, Mapping):
        raise AnchorError(f"{where}: expected a state dict (a dict of tensors), found {type(state_dict).__name__}")
    if not state_dict:
        raise AnchorError(f"{where}: the state dict is empty; expected Linear weight/bias pairs "
                          f"chaining {n_inputs} -> ... -> {n_classes}")


def _check_entry(key, value, where: str) -> tuple[str, str]:
    """One entry must be a dense float tensor named ``<module>.weight`` or ``<module>.bias``;
    returns ``(module, "weight" | "bias")``."""
    if not isinstance(key, str):
        raise AnchorError(f"{where}: key {key!r} is a {type(key).__name__}, expected a str like 'fc1.weight'")
    if not isinstance(value, torch.Tensor):
        raise AnchorError(f"{where}: key {key!r} holds a {type(value).__name__}, expected a tensor "
                          "(only Linear weight/bias pairs are accepted)")
    split = _split_key(key)
    if split is None:
        raise AnchorError(f"{where}: unexpected tensor {key!r} {_shape(value)}: only Linear "
                          "'<module>.weight' / '<module>.bias' pairs are accepted")
    if value.layout != torch.strided or value.is_quantized:
        raise AnchorError(f"{where}: key {key!r} is a {value.layout} / quantized tensor, expected a dense one")
    if value.dtype not in FLOAT_DTYPES:
        raise AnchorError(f"{where}: key {key!r} has dtype {value.dtype}, expected a float dtype "
                          f"({', '.join(str(d) for d in FLOAT_DTYPES)})")
    return split


def _tensors_by_module(state_dict: Mapping, where: str) -> tuple[dict[str, dict[str, torch.Tensor]], torch.dtype]:
    """Every entry checked (:func:`_check_entry`), in key order, and grouped as
    ``{module: {"weight": w, "bias": b}}`` (modules in order of first appearance); with the one
    dtype that every tensor must share."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    dtype = first_key = None
    for key in state_dict.keys():
        value = state_dict[key]
        module, leaf = _check_entry(key, value, where)
        if dtype is None:
            dtype, first_key = value.dtype, key
        elif value.dtype != dtype:
            raise AnchorError(f"{where}: key {key!r} has dtype {value.dtype} but {first_key!r} has {dtype}; "
                              "every tensor of an anchor must share one dtype")
        modules.setdefault(module, {})[leaf] = value
    return modules, dtype


def _pair_layers(modules: dict[str, dict[str, torch.Tensor]], where: str) -> list[_Layer]:
    """Each module's 2-D weight with its 1-D bias of as many rows, in key order (at most
    ``_MAX_LAYERS`` of them)."""
    layers = []
    for module, pair in modules.items():
        wkey, bkey = (f"{module}.weight", f"{module}.bias") if module else ("weight", "bias")
        if "weight" not in pair:
            raise AnchorError(f"{where}: key {bkey!r} {_shape(pair['bias'])} has no weight {wkey!r}")
        if "bias" not in pair:
            raise AnchorError(f"{where}: key {wkey!r} {_shape(pair['weight'])} has no bias {bkey!r}; "
                              "every Linear layer needs its bias")
        w, b = pair["weight"], pair["bias"]
        if w.ndim != 2:
            raise AnchorError(f"{where}: key {wkey!r} has shape {_shape(w)}, expected a 2-D [out, in] weight")
        if b.ndim != 1 or b.shape[0] != w.shape[0]:
            raise AnchorError(f"{where}: key {bkey!r} has shape {_shape(b)}, expected [{w.shape[0]}] "
                              f"(the rows of {wkey!r} {_shape(w)})")
        layers.append(_Layer(module, wkey, bkey, w, b))
    if len(layers) > _MAX_LAYERS:
        raise AnchorError(f"{where}: {len(layers)} layers, more than the {_MAX_LAYERS} accepted")
    return layers


def _layer_shapes(layers: Sequence[_Layer]) -> list[tuple[int, int]]:
    """``(in, out)`` of each layer."""
    return [(int(layer.weight.shape[1]), int(layer.weight.shape[0])) for layer in layers]


def _chain_order(layers: list[_Layer], where: str, n_inputs: int, n_classes: int, sizes) -> list[_Layer]:
    """The layers ordered so that their shapes chain ``n_inputs -> ... -> n_classes`` (exactly
    ``sizes`` when given): key order if it does, otherwise the one order the shapes allow; no order,
    or more than one, is refused."""
    shapes = _layer_shapes(layers)
    if _chains(shapes, n_inputs, n_classes, sizes):
        return layers
    table = ", ".join(f"{layer.wkey!r} {_shape(layer.weight)}" for layer in layers)
    orders = [o for o in _chain_orders(shapes, n_inputs, n_classes) if sizes is None or _chain_sizes(o) == sizes]
    if not orders:
        expected = " -> ".join(map(str, sizes)) if sizes else f"{n_inputs} -> ... -> {n_classes}"
        raise AnchorError(f"{where}: {_diagnose(layers, n_inputs, n_classes, sizes)}; the weights "
                          f"[{table}] do not chain {expected} in any order (a layer missing, extra or "
                          "of the wrong shape)")
    dupes = sorted(s for s, c in collections.Counter(shapes).items() if c > 1)
    if len(orders) > 1 or dupes:
        raise AnchorError(f"{where}: the weights [{table}] do not chain in key order, and their shapes "
                          "allow more than one order; refusing to guess")
    by_shape = dict(zip(shapes, layers))
    return [by_shape[s] for s in orders[0]]


def _check_finite(layers: Sequence[_Layer], where: str) -> None:
    """Refuse a NaN or Inf anywhere, naming the first tensor (chain order) that has one."""
    for _, wkey, bkey, w, b in layers:
        for key, t in ((wkey, w), (bkey, b)):
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            if n_nan or n_inf:
                raise AnchorError(f"{where}: key {key!r} {_shape(t)} has {n_nan} NaN and {n_inf} Inf values; "
                                  "an anchor must be finite")


def _diagnose(layers, n_inputs, n_classes, sizes) -> str:
    """Where the key-order chain first breaks: the key, its shape and the shape expected there."""
    if sizes is not None and len(layers) != len(sizes) - 1:
        return f"expected {len(sizes) - 1} layers for sizes {sizes}, found {len(layers)}"
    width, source = n_inputs, f"the {n_inputs} inputs"
    for i, (_, wkey, _, w, _) in enumerate(layers):
        out = "*" if sizes is None else sizes[i + 1]
        if w.shape[1] != width or (sizes is not None and w.shape[0] != out):
            return f"key {wkey!r} has shape {_shape(w)}, expected [{out}, {width}] (fed by {source})"
        width, source = int(w.shape[0]), repr(wkey)
    wkey, w = layers[-1][1], layers[-1][3]
    return (f"key {wkey!r} has shape {_shape(w)}, expected [{n_classes}, {w.shape[1]}] "
            f"(the last layer must give the {n_classes} classes)")


def _is_chain(shapes) -> bool:
    return all(a[1] == b[0] for a, b in zip(shapes[:-1], shapes[1:]))


def _chain_sizes(shapes) -> tuple[int, ...]:
    return (shapes[0][0],) + tuple(out for _, out in shapes)


def _chains(shapes, n_inputs, n_classes, sizes) -> bool:
    ok = _is_chain(shapes) and shapes[0][0] == n_inputs and shapes[-1][1] == n_classes
    return ok and (sizes is None or _chain_sizes(shapes) == sizes)


def load_anchor(path, *, sizes: Sequence[int] | None = None, n_inputs: int = N_INPUTS,
                n_classes: int = N_CLASSES) -> Anchor:
    """Read and check an anchor ``.pth`` file; see the module docstring for the accepted layouts.

    The file is read once, hashed (``sha256``) and unpickled from those bytes with
    ``torch.load(..., map_location="cpu", weights_only=True)``, which refuses any pickle that would
    construct something other than tensors and plain containers. ``params`` keep the anchor's own
    float dtype (a float64 anchor needs ``jax_enable_x64``). ``sizes`` pins the chain exactly, which
    also catches a missing hidden layer between equal widths; by default any chain from
    ``n_inputs`` to ``n_classes`` is accepted.

    Raises :class:`AnchorError` for a missing, unreadable, truncated, non-pickle or code-carrying
    file, and for any content that is not exactly a chain of finite float ``Linear`` weight/bias pairs.
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
                                  n_inputs=n_inputs, n_classes=n_classes)


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
    for (w, b), (wa, ba), (wkey, bkey) in zip(params, anchor.params, anchor.keys):
        for key, p, a in ((wkey, w, wa), (bkey, b, ba)):
            if tuple(p.shape) != tuple(a.shape):
                raise ValueError(f"{what}: {key!r} has shape {list(p.shape)}, expected {list(a.shape)}")


def params_to_state_dict(params: Params, anchor: Anchor, *, dtype: torch.dtype | None = None):
    """``OrderedDict[key, tensor]``: hessjax ``params`` under the anchor's keys, in its key order.

    Tensors are CPU copies in ``dtype`` (default: the anchor's dtype); when ``params`` already have
    that dtype, the bits are unchanged.
    """
    _check_params(params, anchor)
    np_dtype = _numpy_dtype(anchor.dtype if dtype is None else dtype)
    by_key = {}
    for (w, b), (wkey, bkey) in zip(params, anchor.keys):
        by_key[wkey] = numpy_to_tensor(as_numpy(w).astype(np_dtype, copy=False))
        by_key[bkey] = numpy_to_tensor(as_numpy(b).astype(np_dtype, copy=False))
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
    for (wkey, bkey), (wa, ba) in zip(anchor.keys, anchor.params):
        pair = []
        for key, a in ((wkey, wa), (bkey, ba)):
            t = state_dict[key]
            if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
                raise AnchorError(f"state dict: key {key!r} is not a float tensor "
                                  f"(found {getattr(t, 'dtype', type(t).__name__)})")
            if tuple(t.shape) != tuple(a.shape):
                raise AnchorError(f"state dict: key {key!r} has shape {_shape(t)}, expected {_shape(a)}")
            pair.append(to_jax(tensor_to_numpy(t), "state dict"))
        params.append(tuple(pair))
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


def _flat_names_and_sizes(anchor: Anchor):
    names, counts = [], []
    for (w, b), (wkey, bkey) in zip(anchor.params, anchor.keys):
        names += [wkey, bkey]
        counts += [int(np.prod(w.shape)), int(b.shape[0])]
    return names, counts


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
    for (w, b), (wkey, bkey) in zip(anchor.params, anchor.keys):
        for key, shape in ((wkey, w.shape), (bkey, b.shape)):
            stop = start + int(np.prod(shape))
            by_key[key] = numpy_to_tensor(v[start:stop].reshape(shape))
            start = stop
    return collections.OrderedDict((k, by_key[k]) for k in anchor.state_dict_keys)


def parameter_names(anchor: Anchor) -> list[str]:
    """For each of the ``P`` flat entries (hessjax order), the key of the tensor it belongs to."""
    names, counts = _flat_names_and_sizes(anchor)
    return np.repeat(np.asarray(names, dtype=object), counts).tolist()


# --------------------------------------------------------------------------- command line


def _summary(anchor: Anchor) -> str:
    layout = "plain state dict" if anchor.container is None else f"checkpoint[{anchor.container!r}]"
    lines = [
        f"file     {anchor.path}",
        f"sha256   {anchor.sha256}",
        f"layout   {layout}, key prefix {anchor.prefix!r}",
        f"dtype    {anchor.dtype}",
        f"chain    {' -> '.join(map(str, anchor.sizes))}",
        f"P        {anchor.num_params}",
        "layers",
    ]
    for i, ((w, b), (wkey, bkey)) in enumerate(zip(anchor.params, anchor.keys)):
        lines.append(f"  {i}  {wkey} {_shape(w)}  {bkey} {_shape(b)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hessjax.bridges.anchor PATH``: print the anchor's summary (exit 0), or one line
    ``error: ...`` on stderr (exit 2)."""
    parser = argparse.ArgumentParser(prog="python -m hessjax.bridges.anchor",
                                     description="Check a PyTorch anchor .pth file and print its summary.")
    parser.add_argument("path", help="the .pth file")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # summarise float64 anchors without rounding them
    try:
        with warnings.catch_warnings():  # e.g. torch's pickle-protocol notice: the answer is one line
            warnings.simplefilter("ignore")
            anchor = load_anchor(args.path)
    except AnchorError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(_summary(anchor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
