"""hessjax.anchors: the anchors shipped with hessjax, as package data (``README.md`` here says how
each was made). Read one with :func:`hessjax.bridges.load_anchor`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["SHIPPED", "default_anchor_path"]

#: The shipped anchor of each built-in model.
SHIPPED = {"mlp": "default.pth", "lenet": "lenet.pth"}


def default_anchor_path(model: str = "mlp") -> Path:
    """The shipped anchor of ``model`` (``mlp``: ``default.pth``, ``lenet``: ``lenet.pth``), package data
    so it is there in an installed hessjax too."""
    if model not in SHIPPED:
        raise KeyError(f"no anchor is shipped for model {model!r} (shipped: {', '.join(SHIPPED)})")
    return Path(str(resources.files(__name__) / SHIPPED[model]))
