"""λ values and run ids as given on the command line: parsing, rounding, file-name labels, checks.

:class:`UsageError` is the one error of bad command-line input, raised across :mod:`hessjax.results`
(and by the sweep and the bridges) and printed by the CLIs as one line.
"""

from __future__ import annotations

import math
import re

import numpy as np

__all__ = ["LABEL_RE", "UsageError", "check_run_id", "lambda_label", "parse_lambdas", "round_lambda"]

_SIG_DIGITS = 12
LABEL_RE = r"[0-9]+(?:\.[0-9]+)?"  # what lambda_label gives for a finite λ >= 0
_RUN_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


class UsageError(ValueError):
    """Bad command-line input or a refused request; the CLI prints ``str(err)`` (one line) and exits 2."""


def round_lambda(value: float) -> float:
    """``value`` rounded to 12 significant digits (so ``3 * 0.0002`` is ``0.0006``); ``-0.0`` becomes ``0.0``."""
    return float(f"{float(value):.{_SIG_DIGITS}g}") + 0.0


def _parse_number(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--lambdas {spec!r}: {what} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"--lambdas {spec!r}: {what} {text.strip()!r} is not finite")
    if value < 0:
        raise UsageError(f"--lambdas {spec!r}: {what} {text.strip()!r} is negative; λ must be >= 0")
    return value


def _parse_range(item: str, spec: str) -> list[float]:
    """``START:STOP:NUM`` (like ``numpy.linspace``) or ``START:STOP:NUM:log`` (like ``numpy.geomspace``)."""
    parts = item.split(":")
    log = len(parts) == 4 and parts[3].strip() == "log"
    if len(parts) != 3 and not log:
        raise UsageError(f"--lambdas {spec!r}: expected START:STOP:NUM or START:STOP:NUM:log, got {item.strip()!r}")
    start = _parse_number(parts[0], "START", spec)
    stop = _parse_number(parts[1], "STOP", spec)
    num_text = parts[2].strip()
    if not re.fullmatch(r"[+]?[0-9]+", num_text):
        raise UsageError(f"--lambdas {spec!r}: NUM {num_text!r} is not a whole number")
    num = int(num_text)
    if num < 1:
        raise UsageError(f"--lambdas {spec!r}: NUM must be >= 1, got {num}")
    if num == 1 and start != stop:
        raise UsageError(f"--lambdas {spec!r}: NUM=1 with START != STOP; use a single value or START:START:1")
    if log:
        if start <= 0 or stop <= 0:
            raise UsageError(f"--lambdas {spec!r}: a log range needs START > 0 and STOP > 0 "
                             "(add λ = 0 with a comma: 0,1e-6:0.1:200:log)")
        return np.geomspace(start, stop, num).tolist()
    return np.linspace(start, stop, num).tolist()


def parse_lambdas(spec: str) -> np.ndarray:
    """Parse ``--lambdas`` into a float64 array ``[n]``, each value rounded to 12 significant digits.

    A comma list of items, each one of:

    * a number, e.g. ``0`` or ``0.01``;
    * ``START:STOP:NUM`` — ``NUM`` values from START to STOP inclusive, as ``numpy.linspace(START, STOP, NUM)``
      (descending if START > STOP). ``NUM`` must be an integer >= 1; ``NUM = 1`` requires ``START == STOP``
      (numpy would silently drop STOP; here that is refused as a likely typo);
    * ``START:STOP:NUM:log`` — ``NUM`` log-spaced values, as ``numpy.geomspace(START, STOP, NUM)``
      (START, STOP > 0; λ = 0 is added as its own item: ``0,1e-6:0.1:200:log``).

    The order is returned as given; the sweep runs λ sorted ascending and every table is written ascending.
    Refused with :class:`UsageError`: an empty spec or item, a non-number, NaN/Inf, a negative value,
    a bad ``NUM``, a log range touching 0, and values that coincide after rounding.
    """
    text = str(spec).strip()
    if not text:
        raise UsageError("--lambdas is empty; give START:STOP:NUM[:log] or a comma list such as 0,0.001,0.01")
    raw = []
    for i, item in enumerate(text.split(",")):
        if not item.strip():
            raise UsageError(f"--lambdas {spec!r}: item {i + 1} is empty")
        if ":" in item:
            raw.extend(_parse_range(item, spec))
        else:
            raw.append(_parse_number(item, f"item {i + 1}", spec))
    values = np.array([round_lambda(v) for v in raw], dtype=np.float64)
    uniq, counts = np.unique(values, return_counts=True)
    if np.any(counts > 1):
        dups = ", ".join(lambda_label(v) for v in uniq[counts > 1][:5])
        raise UsageError(f"--lambdas {spec!r}: duplicate values after rounding to 12 digits: {dups}")
    return values


def lambda_label(lam: float) -> str:
    """The λ as it appears in file names: ``numpy.format_float_positional(λ, trim='-')``.

    Shortest round-trip digits, never an exponent: ``0``, ``0.0002``, ``0.1``, ``0.00001``.
    """
    return np.format_float_positional(float(lam), trim="-")


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is usable in file names (letters, digits, ``_.+-``; not starting with ``.``/``-``)."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
        raise UsageError(f"--id {run_id!r}: use letters, digits and _ . + - (not first: . or -)")
    return run_id
