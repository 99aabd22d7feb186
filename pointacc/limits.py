"""The limits on what the simulator reads, and the checks that apply them to configs, traces and units.

The limits are generous for real workloads and keep memory and time bounded whatever a file says: every loop of
the simulator runs over a trace's records, a kernel's offsets or the index arrays of ``maps.npz``, and each of
those is bounded here (formulas over row and channel counts are closed form, whatever their size).

    MAX_ROWS            2**31 - 1   points, rows, neighbours and GEMM sizes (the engine's maps index rows with int32)
    MAX_CHANNELS        2**20       feature channels of one layer
    MAX_KERNEL_VOLUME   4096        offsets of one kernel (16 x 16 x 16); the Mapping Unit loops over them
    MAX_STRIDE          2**16       stride and dilation per axis (coordinates are 16-bit per axis)
    MAX_ARRAY_BYTES     2**33       uncompressed bytes of all the arrays in one maps.npz (8 GiB)
    MAX_LINE_BYTES      2**20       bytes of one trace line
    MAX_FILE_BYTES      2**20       bytes of a config file
    MAX_SWEEP_POINTS    10_000      configurations of one sweep

Configuration values have their own ranges, listed in `pointacc.config`.
"""

from __future__ import annotations

import math
import numbers
import operator

MAX_ROWS = 2**31 - 1
MAX_CHANNELS = 2**20
MAX_KERNEL_VOLUME = 4096
MAX_STRIDE = 2**16
MAX_ARRAY_BYTES = 2**33
MAX_LINE_BYTES = 2**20
MAX_FILE_BYTES = 2**20
MAX_SWEEP_POINTS = 10_000


def integer(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high] (no upper bound when ``high`` is None).

    Python and NumPy integers are accepted; bools and floats are not (3.0 is not an integer here).

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value`` is out of range. Both messages name ``name``.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {number}")
    return number


def number(name: str, value, low: float, high: float) -> float:
    """``value`` as a finite float in [low, high].

    Raises:
        TypeError: ``value`` is not a real number (bools are not).
        ValueError: ``value`` is NaN, infinite or out of range. Both messages name ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    bounds = f"[{_show(low)}, {_show(high)}]"
    try:
        result = float(value)
    except OverflowError:  # an int beyond the floats
        raise ValueError(f"{name} must be in {bounds}, got {value}") from None
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low <= result <= high:
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")
    return result


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)
