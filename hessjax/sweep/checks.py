"""The settings of a sweep that can be checked without JAX or torch: :func:`check_settings` runs first,
so that ``python -m hessjax.sweep`` refuses a bad grid, a missing file or a clash of options at once,
before it spends seconds loading either, and before it writes anything."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import results
from ..mnist import DataError, resolve_data_dir
from ..results import UsageError

#: --init: one seeded initialisation for every λ, the anchor for every λ, or each λ from its predecessor's
#: converged weights (an ascending walk from the initialisation and a descending one from the anchor).
INITS = ("random", "anchor", "follow")

__all__ = ["INITS", "Settings", "check_settings", "parse_seeds", "parse_shard"]


class Settings(NamedTuple):
    """What :func:`check_settings` parsed."""

    lams: np.ndarray  # [n] the grid, float64, as given
    seeds: tuple[int, ...]
    several_seeds: bool
    shard: tuple[int, int] | None


def check_settings(config, environ=os.environ) -> Settings:
    """Every check of ``config`` that reads no anchor and no data: the grid, the options that clash, the
    files and directories named, ``--out``. Raises :class:`UsageError` or :class:`DataError`; creates
    nothing."""
    lams = results.parse_lambdas(config.lambdas)
    if config.eigenvectors not in results.EIGVEC_FORMATS:
        raise UsageError(f"--eigenvectors must be csv, npy or none, got {config.eigenvectors!r}")
    if config.init not in INITS:
        raise UsageError(f"--init must be random, anchor or follow, got {config.init!r}")
    seeds, many = parse_seeds(config.seeds, config.seed)
    shard = parse_shard(config.shard, environ)
    if not config.distributed and any(v is not None for v in (config.coordinator, config.num_processes,
                                                                config.process_id)):
        raise UsageError("--coordinator, --num-processes and --process-id need --distributed")
    if shard is not None and config.distributed:
        raise UsageError("--shard makes independent workers; --distributed makes one program of several "
                         "processes: use one or the other")
    if config.refine and (shard is not None or config.distributed):
        raise UsageError("--refine decides from every finished λ, so it runs in one process: finish the "
                         "shards first, then rerun the grid with --refine into the same --out")
    if config.tfds_dir and config.data_dir:
        raise UsageError("give either --data-dir (IDX files) or --tfds-dir (a prepared tfds directory)")
    if config.run_id is not None:
        results.check_run_id(config.run_id)
    if config.anchor:
        _check_file(Path(config.anchor), "--anchor", ".pth")
    _check_data(config)
    if not config.dry_run:
        _check_out(Path(config.out))
    return Settings(lams, seeds, many, shard)


def _check_file(path: Path, option: str, kind: str) -> None:
    if not path.exists():
        raise UsageError(f"{option} {path}: no such file")
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory, expected a {kind} file")


def _check_data(config) -> None:
    """The directory or file that ``--dataset``, ``--data-dir`` and ``--tfds-dir`` name exists (what is in
    it is checked as it loads)."""
    if config.tfds_dir and not Path(config.tfds_dir).expanduser().is_dir():
        raise DataError(f"tfds data directory {config.tfds_dir} does not exist or is not a directory")
    kind, _, arg = str(config.dataset).partition(":")
    if kind == "mnist" and not config.tfds_dir:
        resolve_data_dir(config.data_dir)
    elif kind == "npz" and arg:
        path = Path(arg).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file (--dataset npz:PATH)")


def _check_out(out: Path) -> None:
    """``--out`` is a directory or can be made one: it, or else its nearest existing ancestor, is a writable
    directory. (The run itself creates it, and checks a file can be written there, once its inputs have loaded.)"""
    target = out.expanduser().absolute()
    found = next(p for p in (target, *target.parents) if p.exists())
    what = f"--out {str(out)!r}" + ("" if found == target else f" cannot be created: {found}")
    if not found.is_dir():
        raise UsageError(f"{what} {'exists and ' if found == target else ''}is not a directory")
    if not os.access(found, os.W_OK | os.X_OK):
        raise UsageError(f"{what} is not writable")


def parse_seeds(spec: str | None, seed: int) -> tuple[tuple[int, ...], bool]:
    """``--seeds`` (a comma list, or ``START:STOP`` with STOP excluded) → (seeds, several); ``None`` → (seed,)."""
    if spec is None:
        return (int(seed),), False
    text = str(spec).strip()
    try:
        if re.fullmatch(r"\d+:\d+", text):
            lo, hi = (int(v) for v in text.split(":"))
            seeds = tuple(range(lo, hi))
        else:
            seeds = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--seeds {spec!r}: expected a comma list of non-negative integers or START:STOP") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {spec!r}: expected distinct non-negative integers, at least one")
    return seeds, True


def parse_shard(spec: str | None, environ=os.environ) -> tuple[int, int] | None:
    """``--shard I/N`` (0 ≤ I < N) or ``slurm`` (``SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN`` of
    ``SLURM_ARRAY_TASK_COUNT``) → ``(I, N)``; ``None`` → ``None``."""
    if spec is None:
        return None
    if spec == "slurm":
        try:
            task = int(environ["SLURM_ARRAY_TASK_ID"]) - int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            count = int(environ["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError):
            raise UsageError("--shard slurm: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set "
                             "(run it as a Slurm array job, or give --shard I/N)") from None
        index, total = task, count
    else:
        m = re.fullmatch(r"(\d+)/(\d+)", str(spec).strip())
        if not m:
            raise UsageError(f"--shard {spec!r}: expected I/N (worker I of N, 0-based) or 'slurm'")
        index, total = int(m.group(1)), int(m.group(2))
    if not 0 <= index < total:
        raise UsageError(f"--shard {spec!r}: need 0 <= I < N, got I={index}, N={total}")
    return index, total
