"""The anchors shipped with hessjax (package data): ``default.pth``, see ``README.md`` beside it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["default_anchor_path"]


def default_anchor_path() -> Path:
    """The shipped default anchor (package data, so it is there in an installed hessjax too)."""
    return Path(str(resources.files(__name__) / "default.pth"))
