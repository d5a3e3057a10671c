"""Atomic writes and the run lock.

A file is written to a temporary ``.tmp-*`` sibling, fsynced, then ``os.replace``-d onto its name: a
reader (or a resumed sweep) sees either the old file, the whole new one, or nothing. A killed writer
leaves at most a ``.tmp-*`` file; its name holds the writer's process id and host, so
:func:`remove_temp_files` removes exactly the leftovers of writers that are no longer alive.

:func:`run_lock` serialises what several workers of one run share in a directory (creating and
extending the store, checking and writing the manifest, rebuilding ``Model-ID.csv``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .grid import UsageError

__all__ = ["TEMP_PREFIX", "atomic_path", "atomic_write", "check_writable", "remove_temp_files", "run_lock",
           "write_text"]

TEMP_PREFIX = ".tmp-"
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
_OWNED = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)@([A-Za-z0-9._-]+)~[0-9a-f]+~")  # .tmp-PID@HOST~RAND~name


def _temp_name(name: str) -> str:
    """``.tmp-PID@HOST~RANDOM~name``: hidden, owned, unique, with the target's suffix."""
    return f"{TEMP_PREFIX}{os.getpid()}@{_HOST}~{secrets.token_hex(4)}~{name}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    The temporary name is ``.tmp-<pid>@<host>~<random>~<name>`` (hidden, owned by this process, same
    suffix as ``path`` so e.g. ``np.save`` adds nothing). On an exception it is removed and ``path`` is left untouched. A kill leaves at most a
    ``.tmp-*`` file, which no reader takes for a result (see :func:`remove_temp_files`).
    """
    path = Path(path)
    tmp = path.with_name(_temp_name(path.name))
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_temp_files(out: str | os.PathLike, older_than_s: float = 24 * 3600.0) -> list[Path]:
    """Remove the ``.tmp-*`` leftovers of dead writers in ``out`` and ``out/records``; return them.

    A temporary file written on this host is removed when its writer's process is gone, and never
    while it lives (whatever its age). One from another host (several workers on a shared file
    system), or without an owner in its name, is removed only when older than ``older_than_s``.
    """
    now = time.time()
    removed = []
    for directory in (Path(out), Path(out) / "records"):
        if not directory.is_dir():
            continue
        for p in directory.iterdir():
            if not p.name.startswith(TEMP_PREFIX) or not p.is_file():
                continue
            owner = _OWNED.match(p.name)
            if owner and owner.group(2) == _HOST:
                stale = not _alive(int(owner.group(1)))
            else:
                with contextlib.suppress(FileNotFoundError):
                    stale = now - p.stat().st_mtime >= older_than_s
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


@contextlib.contextmanager
def run_lock(out: str | os.PathLike, run_id: str) -> Iterator[None]:
    """Hold the exclusive lock of run ``run_id`` in ``out`` (``fcntl.lockf`` on ``out/.lock-ID``, which
    also works across hosts on NFS with lockd); blocks until it is free. Released on exit, and by the
    kernel when the process dies."""
    path = Path(out) / f".lock-{run_id}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


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
    probe = out / _temp_name("probe")
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
    except OSError as err:
        raise UsageError(f"--out {str(out)!r} is not writable: {err.strerror or err}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return out
