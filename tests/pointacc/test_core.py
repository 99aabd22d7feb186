"""The C++ core against adversarial arguments: every call either raises ValueError / TypeError / OverflowError
or returns what a plain Python reference computes, and no call crashes the process or allocates by geometry."""

import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pointacc import _core

CLEAN = (ValueError, TypeError, OverflowError)
FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", ">i4", ">i8", ">u8"]
POLICIES = ["lru", "fifo", "direct"]

# ---- references -----------------------------------------------------------------------------------------------


def reference_hits(lines, num_sets: int, ways: int, policy: str) -> int:
    """A set-associative cache as lists, most recent (LRU) or newest (FIFO) first."""
    sets = defaultdict(list)
    hits = 0
    for line in lines:
        held = sets[line % num_sets]
        if line in held:
            hits += 1
            if policy == "lru":
                held.remove(line)
                held.insert(0, line)
        else:
            if len(held) == ways:
                held.pop()
            held.insert(0, line)
    return hits


def reference_gather(in_rows, out_rows, order: str, line_points: int, num_sets: int, ways: int, policy: str):
    visit = (
        range(len(in_rows)) if order == "offset" else sorted(range(len(in_rows)), key=lambda i: out_rows[i])
    )
    lines = [int(in_rows[i]) // line_points for i in visit]
    return len(in_rows), reference_hits(lines, num_sets, ways, policy)


def reference_kernel_map(in_coords, out_coords, offsets, stride):
    """Pairs per offset in ascending (b, x, y, z) order of the outputs; an input meets at most one output per
    offset (the first of equal outputs), as a merge does."""
    row_of = {tuple(int(v) for v in r): i for i, r in enumerate(in_coords)}
    order = sorted(range(len(out_coords)), key=lambda j: tuple(int(v) for v in out_coords[j]))
    ins, outs, sizes = [], [], []
    for d in offsets:
        taken = set()
        for j in order:
            b, x, y, z = (int(v) for v in out_coords[j])
            key = (b, x * stride[0] + d[0], y * stride[1] + d[1], z * stride[2] + d[2])
            if key in row_of and key not in taken:
                taken.add(key)
                ins.append(row_of[key])
                outs.append(j)
        sizes.append(len(ins) - sum(sizes))
    return ins, outs, sizes


# ---- what the core must accept --------------------------------------------------------------------------------


def _readable(value, bounds, ndim, columns=None):
    """The values the core must read from an array argument, or None when it must refuse it."""
    if not isinstance(value, (np.ndarray, list)):
        return None
    try:
        array = np.asarray(value)
    except ValueError:  # a ragged list
        return None
    if array.size and array.dtype.kind not in "iu":
        return None
    if array.ndim != ndim or (columns is not None and array.shape[1] != columns):
        return None
    if array.size and (int(array.min()) < bounds[0] or int(array.max()) > bounds[1]):
        return None
    return [tuple(int(v) for v in row) for row in array] if ndim == 2 else [int(v) for v in array]


def _count(value):
    """An int argument as pybind11 reads it (Python or NumPy integer within int64), else None."""
    if isinstance(value, (int, np.integer)) and INT64[0] <= int(value) <= INT64[1]:
        return int(value)
    return None


# ---- strategies -----------------------------------------------------------------------------------------------


def _fits(values: np.ndarray, dtype: str) -> bool:
    info = np.iinfo(np.dtype(dtype))
    return not values.size or (info.min <= values.min() and values.max() <= info.max)


@st.composite
def arrays(draw, low, high, columns=None, rows=None):
    """Valid integer arrays: values in [low, high], any integer dtype that holds them, any layout (strided,
    reversed, Fortran order, swapped bytes) or a plain list."""
    count = draw(st.integers(0, 12)) if rows is None else rows
    shape = (count,) if columns is None else (count, columns)
    return draw(
        layouts(draw(hnp.arrays(np.int64, shape, elements=st.integers(low, high), fill=st.nothing())))
    )


@st.composite
def layouts(draw, values: np.ndarray):
    """The same values in any integer dtype that holds them, in any memory layout (strided, reversed, Fortran
    order, swapped bytes) or as a plain list."""
    array = values.astype(draw(st.sampled_from([d for d in DTYPES if _fits(values, d)])))
    layout = draw(st.sampled_from(["c", "strided", "reversed", "fortran", "list"]))
    if layout == "strided" and array.size:
        return np.repeat(array, 2, axis=0)[::2]
    if layout == "reversed" and array.size:
        return array[::-1].copy()[::-1]
    if layout == "fortran":
        return np.asfortranarray(array)
    return array.tolist() if layout == "list" else array


@st.composite
def wild_arrays(draw, columns=None):
    """Arrays the core must refuse or read by value: full-range integers of every dtype, floats with NaN and
    infinities, bools, wrong dimensions, and things that are not arrays."""
    rows = draw(st.integers(0, 6))
    shape = (rows,) if columns is None else (rows, columns)
    kind = draw(st.sampled_from(["full", "float", "bool", "wrong_ndim", "junk"]))
    if kind == "junk":
        return draw(st.sampled_from([None, "abc", 3, 2.5, {"a": 1}, b"\x00\x01", [[1, 2], [3]]]))
    if kind == "float":
        return draw(hnp.arrays(draw(st.sampled_from(["float32", "float64"])), shape))
    if kind == "bool":
        return draw(hnp.arrays(bool, shape))
    if kind == "wrong_ndim":
        shape = draw(
            st.sampled_from([(), (rows, 2, 2), (rows, 5), (rows, 1)] if columns else [(), (rows, 2)])
        )
    return draw(hnp.arrays(np.dtype(draw(st.sampled_from(DTYPES))), shape))


wild_counts = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([2**31, 2**63 - 1, 2**63, -(2**63), 2**64, -1]),
    st.sampled_from([1.0, 2.5, float("nan"), None, "4"]),
)
wild_names = st.one_of(st.text(max_size=5), st.none(), st.integers())
geometry = st.one_of(
    st.integers(1, 9),
    st.sampled_from([2**31 - 1, 2**32 + 1, 2**62, 2**63 - 1]),
    st.integers(1, 9).map(np.int64),
)


def _mutate(draw, args: list, wild: list) -> list:
    """Valid arguments with none, one or two of them replaced by wild ones."""
    for i in draw(st.sets(st.integers(0, len(args) - 1), max_size=2)):
        args[i] = draw(wild[i])
    return args


@st.composite
def cache_calls(draw):
    policy = draw(st.sampled_from(POLICIES))
    args = [draw(arrays(0, 30)), draw(geometry), 1 if policy == "direct" else draw(geometry), policy]
    return _mutate(draw, args, [wild_arrays(), wild_counts, wild_counts, wild_names])


@st.composite
def gather_calls(draw):
    pairs = draw(st.integers(0, 12))
    num_out = draw(st.one_of(st.integers(1, 14), st.sampled_from([2**31, 2**40, 2**63 - 1])))
    top = min(num_out, 2**31) - 1
    out_rows = draw(arrays(0, draw(st.sampled_from([min(top, 13), top])), rows=pairs))
    policy = draw(st.sampled_from(POLICIES))
    args = [
        draw(arrays(0, draw(st.sampled_from([30, 2**31 - 1])), rows=pairs)),
        out_rows,
        num_out,
        draw(st.sampled_from(["output", "offset"])),
        draw(st.one_of(st.integers(1, 5), st.just(2**63 - 1))),
        draw(geometry),
        1 if policy == "direct" else draw(geometry),
        policy,
    ]
    wild = [
        wild_arrays(),
        wild_arrays(),
        wild_counts,
        wild_names,
        wild_counts,
        wild_counts,
        wild_counts,
        wild_names,
    ]
    return _mutate(draw, args, wild)


@st.composite
def kernel_map_calls(draw):
    # Unique inputs in two batches of a 3 x 3 x 3 block, outputs near them: most offsets find pairs.
    count = draw(st.integers(0, 12))
    sites = draw(hnp.arrays(np.int64, (count, 4), elements=st.integers(-1, 1), fill=st.nothing()))
    sites[:, 0] = np.abs(sites[:, 0])
    _, first = np.unique(sites, axis=0, return_index=True)
    in_coords = sites[np.sort(first)]
    out_kind = draw(st.sampled_from(["inputs", "near", "near", "far"]))
    if out_kind == "inputs":  # a submanifold map
        out_coords = in_coords
    else:
        bound = 1 if out_kind == "near" else 2**31 - 1
        rows = draw(st.integers(0, 12))
        out_coords = draw(
            hnp.arrays(np.int64, (rows, 4), elements=st.integers(-bound, bound), fill=st.nothing())
        )
    stride = draw(st.sampled_from([[1, 1, 1], [1, 1, 1], [2, 1, 1], [1, 3, 2], [2**40, 1, 1], [2**62] * 3]))
    offsets = draw(arrays(-1, 1, columns=3, rows=draw(st.integers(1, 27))))
    args = [draw(layouts(in_coords)), draw(layouts(out_coords)), offsets, draw(layouts(np.array(stride)))]
    wild = [wild_arrays(4), wild_arrays(4), wild_arrays(3), st.one_of(wild_arrays(), st.just([1, 0, 1]))]
    return _mutate(draw, args, wild)


def _run(function, *args):
    try:
        return function(*args)
    except CLEAN as error:
        return error


# ---- fuzzers --------------------------------------------------------------------------------------------------


@FUZZ
@given(cache_calls())
def test_cache_hits_fuzz(args):
    lines, num_sets, ways, policy = args
    result = _run(_core.cache_hits, *args)
    values, sets, way_count = _readable(lines, INT64, 1), _count(num_sets), _count(ways)
    valid = (
        values is not None
        and all(v >= 0 for v in values)
        and sets is not None
        and sets >= 1
        and way_count is not None
        and way_count >= 1
        and policy in POLICIES
        and (policy != "direct" or way_count == 1)
    )
    event("accepted" if valid else "refused")
    if valid:
        assert result == reference_hits(values, sets, way_count, policy)
    else:
        assert isinstance(result, CLEAN), result


@FUZZ
@given(gather_calls())
def test_gather_cache_fuzz(args):
    in_rows, out_rows, num_out, order, line_points, num_sets, ways, policy = args
    result = _run(_core.gather_cache, *args)
    ins, outs = _readable(in_rows, INT32, 1), _readable(out_rows, INT32, 1)
    n_out, points, sets, way_count = _count(num_out), _count(line_points), _count(num_sets), _count(ways)
    valid = (
        ins is not None
        and outs is not None
        and len(ins) == len(outs)
        and all(v >= 0 for v in ins)
        and None not in (n_out, points, sets, way_count)
        and n_out >= 0
        and all(0 <= v < n_out for v in outs)
        and order in ("output", "offset")
        and points >= 1
        and sets >= 1
        and way_count >= 1
        and policy in POLICIES
        and (policy != "direct" or way_count == 1)
    )
    event("accepted" if valid else "refused")
    if valid:
        assert result == reference_gather(ins, outs, order, points, sets, way_count, policy)
    else:
        assert isinstance(result, CLEAN), result


@FUZZ
@given(kernel_map_calls())
def test_kernel_map_fuzz(args):
    in_coords, out_coords, offsets, stride = args
    result = _run(_core.kernel_map, *args)
    ins, outs = _readable(in_coords, INT32, 2, 4), _readable(out_coords, INT32, 2, 4)
    offs, steps = _readable(offsets, INT32, 2, 3), _readable(stride, INT64, 1)
    packable = ins is not None and all(
        0 <= b < 2**15 and all(-(2**15) <= v < 2**15 for v in (x, y, z)) for b, x, y, z in ins
    )
    valid = (
        packable
        and len(set(ins)) == len(ins)
        and outs is not None
        and offs is not None
        and steps is not None
        and len(steps) == 3
        and min(steps) >= 1
    )
    event("accepted" if valid else "refused")
    if not valid:
        assert isinstance(result, CLEAN), result
        return
    assert not isinstance(result, Exception), result
    in_rows, out_rows, sizes, merge_steps = result
    event(f"accepted, pairs found: {'some' if len(in_rows) else 'none'}")
    assert (in_rows.dtype, out_rows.dtype, sizes.dtype) == (np.int32, np.int32, np.int64)
    assert (in_rows.tolist(), out_rows.tolist(), sizes.tolist()) == reference_kernel_map(
        ins, outs, offs, steps
    )
    assert all(s <= m <= len(ins) + len(outs) for s, m in zip(sizes.tolist(), merge_steps.tolist()))


# ---- regressions ----------------------------------------------------------------------------------------------


def test_cache_geometry_whose_size_overflows_neither_crashes_nor_allocates():
    # sets * ways wrapped to 0 in int64 and the first access wrote past an empty vector (SIGSEGV); a huge product
    # allocated per set. Run in a child so that a regression fails this test instead of killing pytest.
    code = (
        "import numpy as np\n"
        "from pointacc import _core\n"
        "lines = np.array([1, 2, 3, 5, 7, 1, 3])\n"
        "print(_core.cache_hits(lines, 4, 2**62, 'lru'), _core.cache_hits(lines, 2**62, 4, 'lru'),\n"
        "      _core.cache_hits(lines, 2**63 - 1, 2**63 - 1, 'fifo'),\n"
        "      _core.gather_cache(np.array([1, 2, 3]), np.array([0, 2**31 - 1, 5]), 2**40, 'output', 1, 2**62, 3,"
        " 'lru'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "2", "2", "(3,", "0)"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: _core.cache_hits(np.array([1.7, 2.2]), 4, 2, "lru"), "lines must be an integer array"),
        (
            lambda: _core.cache_hits(np.array([2**63], np.uint64), 1, 1, "lru"),
            "lines has values outside int64",
        ),
        (lambda: _core.cache_hits(np.zeros((2, 2), int), 1, 1, "lru"), "lines must be 1-D"),
        (lambda: _core.cache_hits(np.array([1]), 0, 1, "lru"), "num_sets must be >= 1"),
        (lambda: _core.cache_hits(np.array([1]), 1, 2, "direct"), "direct-mapped"),
        (
            lambda: _core.gather_cache(np.array([2**40]), np.array([0]), 1, "offset", 1, 1, 1, "lru"),
            "in_rows has values outside int32",
        ),
        (
            lambda: _core.gather_cache(np.array([1]), np.array([3]), 2, "offset", 1, 1, 1, "lru"),
            r"out_rows must be in \[0, num_out = 2\)",
        ),
        (
            lambda: _core.gather_cache(np.array([1]), np.array([0]), -1, "output", 1, 1, 1, "lru"),
            "num_out must be >= 0",
        ),
        (
            lambda: _core.kernel_map(
                np.zeros((1, 4)), np.zeros((1, 4), np.int32), np.zeros((1, 3), np.int32), [1] * 3
            ),
            "in_coords must be an integer array",
        ),
        (
            lambda: _core.kernel_map(
                np.zeros((1, 4), np.int32), np.zeros((1, 4), np.int32), np.zeros((1, 3), np.int32), [1, 1]
            ),
            "stride must have 3 values",
        ),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(CLEAN, match=match):
        call()


def test_non_contiguous_and_wide_arrays_are_read_by_value():
    lines = np.arange(40)[::4]  # a strided view: read as 0, 4, 8, ..., never as the underlying buffer
    assert _core.cache_hits(np.concatenate([lines, lines]), 1, 10, "lru") == 10
    assert _core.cache_hits(np.concatenate([lines, lines]).astype(">u2"), 1, 10, "lru") == 10
    coords = np.asfortranarray(np.array([[0, 0, 0, 0], [0, 1, 0, 0]], np.int64))
    in_rows, out_rows, sizes, _ = _core.kernel_map(coords, coords, np.array([[1, 0, 0]]), np.array([1, 1, 1]))
    assert (in_rows.tolist(), out_rows.tolist(), sizes.tolist()) == ([1], [0], [1])


def test_strides_that_overflow_int64_find_no_pairs():
    coords = np.array([[0, 0, 0, 0], [0, 1, 1, 1]], np.int32)
    in_rows, _, sizes, _ = _core.kernel_map(coords, coords, np.zeros((1, 3), np.int32), [2**62, 2**62, 2**62])
    assert in_rows.tolist() == [0] and sizes.tolist() == [1]  # only the origin maps onto itself
