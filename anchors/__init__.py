"""hessjax.anchors: the anchors shipped with hessjax, as package data (``README.md`` here says how
``default.pth`` was made). Read one with :func:`hessjax.bridges.load_anchor`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["default_anchor_path"]


def default_anchor_path() -> Path:
    """The shipped default anchor (package data, so it is there in an installed hessjax too)."""
    return Path(str(resources.files(__name__) / "default.pth"))
