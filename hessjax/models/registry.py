"""Models by name: the built-in ``mlp`` and ``lenet``, and ``MODULE:ATTR`` for a user's own.

``MODULE`` is an importable module (``mypackage.models``, found on ``sys.path``, which holds the
working directory for ``python -m``) or a path to a ``.py`` file; ``ATTR`` a (dotted) name in it
holding one of

* a :class:`~hessjax.models.Model` (e.g. built with :func:`hessjax.models.make_model`),
* a Flax ``linen.Module`` instance (wrapped by :func:`hessjax.models.from_flax`; its input shape is
  the data's per-sample shape unless the attribute is a ``Model``),
* a callable with no required arguments returning either of those (a factory, or a Module class).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Sequence

from .base import Model
from .lenet import lenet
from .mlp import DEFAULT_SIZES, mlp

__all__ = ["BUILTIN_MODELS", "ModelError", "is_user_model", "resolve_model"]

BUILTIN_MODELS = ("mlp", "lenet")


class ModelError(ValueError):
    """A model that cannot be built or loaded; the message names it and says why."""


def is_user_model(name: str) -> bool:
    """``MODULE:ATTR`` rather than a built-in name."""
    return ":" in str(name)


def resolve_model(name: str, *, sizes: Sequence[int] | None = None, activation: str | None = None,
                  input_shape: Sequence[int] | None = None) -> Model:
    """The :class:`Model` called ``name``: ``mlp`` (widths ``sizes``, default 784-128-128-10, and
    ``activation``, default sigmoid), ``lenet``, or ``MODULE:ATTR`` (see the module docstring; a Flax
    module found there takes ``input_shape``). Raises :class:`ModelError`."""
    name = str(name).strip()
    if name == "mlp":
        try:
            return mlp(DEFAULT_SIZES if sizes is None else sizes, activation or "sigmoid")
        except ValueError as err:
            raise ModelError(str(err)) from None
    if activation is not None:
        raise ModelError(f"--activation applies to the MLP only; model {name!r} fixes its own activations")
    if name == "lenet":
        return lenet()
    if is_user_model(name):
        return _load_user_model(name, input_shape)
    raise ModelError(f"unknown model {name!r}: use {' or '.join(BUILTIN_MODELS)}, or MODULE:ATTR for your own "
                     "(a hessjax Model, a Flax module or a factory of either)")


def _import(module: str):
    if module.endswith(".py") or os.sep in module or "/" in module:
        path = Path(module).expanduser()
        if not path.is_file():
            raise ModelError(f"model file {module} does not exist")
        mod_name = f"hessjax_user_model_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise ModelError(f"model file {module} cannot be imported")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        spec.loader.exec_module(mod)
        return mod
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as python -m does: a module next to the user is found
    return importlib.import_module(module)


def _load_user_model(spec: str, input_shape) -> Model:
    module, _, attr = spec.rpartition(":")
    if not module or not attr:
        raise ModelError(f"--model {spec!r}: expected MODULE:ATTR, e.g. mymodels:small_cnn")
    try:
        mod = _import(module)
    except ModelError:
        raise
    except Exception as err:  # the user's code may raise anything while importing
        raise ModelError(f"--model {spec!r}: importing {module} failed: {type(err).__name__}: {err}") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"--model {spec!r}: {module} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return _as_model(obj, spec, input_shape, call=True)


def _as_model(obj, spec: str, input_shape, call: bool) -> Model:
    if isinstance(obj, Model):
        return dataclasses.replace(obj, name=spec)
    if _is_flax_module(obj):
        if input_shape is None:
            raise ModelError(f"--model {spec!r} is a Flax module: its input shape comes from the data, none given")
        from .flax_modules import from_flax

        try:
            return from_flax(obj, input_shape, name=spec)
        except Exception as err:
            raise ModelError(f"--model {spec!r}: the Flax module does not run on inputs of shape "
                             f"[1, {', '.join(map(str, input_shape))}]: {type(err).__name__}: {err}") from None
    if call and callable(obj):
        try:
            made = obj()
        except Exception as err:
            raise ModelError(f"--model {spec!r}: calling it with no arguments failed: {type(err).__name__}: {err}") \
                from None
        return _as_model(made, spec, input_shape, call=False)
    raise ModelError(f"--model {spec!r} is a {type(obj).__name__}; expected a hessjax.models.Model, a Flax "
                     "linen.Module, or a callable returning one")


def _is_flax_module(obj) -> bool:
    if "flax" not in sys.modules:
        return False
    import flax.linen as nn

    return isinstance(obj, nn.Module)
