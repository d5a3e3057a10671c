"""Atomic writes: a temporary ``.tmp-*`` sibling, fsynced, then ``os.replace``-d onto its name.

A reader (or a resumed sweep) sees either the old file, the whole new one, or nothing; a killed writer
leaves at most a ``.tmp-*`` file (:func:`remove_temp_files`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator

from .grid import UsageError

__all__ = ["TEMP_PREFIX", "atomic_path", "atomic_write", "check_writable", "remove_temp_files", "write_text"]

TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    The temporary name is ``.tmp-<random>-<name>`` (hidden, same suffix as ``path`` so e.g. ``np.save``
    adds nothing). On an exception it is removed and ``path`` is left untouched. A kill leaves at most a
    ``.tmp-*`` file, which no reader takes for a result (see :func:`remove_temp_files`).
    """
    path = Path(path)
    tmp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened/fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` to write the file, then move it atomically onto ``path``; return ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_temp_files(out: str | os.PathLike, older_than_s: float = 24 * 3600.0) -> list[Path]:
    """Remove ``.tmp-*`` leftovers (of killed writers) in ``out`` and ``out/records`` older than ``older_than_s``.

    The age threshold protects temporaries that another live process (another host) is writing now.
    """
    import time

    now = time.time()
    removed = []
    for directory in (Path(out), Path(out) / "records"):
        if not directory.is_dir():
            continue
        for p in directory.iterdir():
            if p.name.startswith(TEMP_PREFIX) and p.is_file() and now - p.stat().st_mtime >= older_than_s:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


def check_writable(out: str | os.PathLike) -> Path:
    """Create ``out`` (and parents) if needed and check a file can be written there; else :class:`UsageError`."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"--out {str(out)!r} exists and is not a directory") from None
    except OSError as err:
        raise UsageError(f"--out {str(out)!r} cannot be created: {err.strerror or err}") from None
    if not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is not a directory")
    probe = out / f"{TEMP_PREFIX}{secrets.token_hex(4)}-probe"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
    except OSError as err:
        raise UsageError(f"--out {str(out)!r} is not writable: {err.strerror or err}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return out
