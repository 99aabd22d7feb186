"""Matrix Unit: SCALE-Sim v2 cycle formulas, SRAM traffic, sparse convolution grouping, topology CSVs."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pointacc.config import Config
from pointacc.units.matrix import (
    gemm,
    gemm_cycles,
    grouped_cycles,
    linear,
    read_topology_csv,
    sparse_conv,
)

DATAFLOWS = ("os", "ws", "is")

# docs/conventions.md §4: SCALE-Sim v2 totals, (rows, cols, M, N, K) -> (os, ws, is).
GOLDEN = [
    ((64, 64, 64, 64, 64), (189, 253, 253)),
    ((64, 64, 128, 64, 256), (763, 1271, 2031)),
    ((64, 64, 1000, 64, 3), (2063, 1189, 4063)),
    ((64, 64, 100, 200, 300), (3407, 5799, 3899)),
    ((32, 64, 100, 200, 300), (6303, 9039, 6519)),
    ((32, 64, 5000, 64, 32), (19781, 5125, 15009)),
]


def _config(dataflow="os", rows=64, cols=64, grouped=False, precision="fp16"):
    return Config().replace(
        **{
            "array.dataflow": dataflow,
            "array.array_height": rows,
            "array.array_width": cols,
            "run.grouped": grouped,
            "array.precision": precision,
        }
    )


def _reference(m, n, k, rows, cols, dataflow):
    """(cycles, sram reads, sram writes) by walking every fold of the array, one at a time."""
    if 0 in (m, n, k):
        return 0, 0, 0

    def chunks(total, size):
        return [min(size, total - start) for start in range(0, total, size)]

    cycles = reads = writes = 0
    if dataflow == "os":
        for r in chunks(m, rows):
            for c in chunks(n, cols):
                cycles += k + rows + cols - 2
                reads += r * k + k * c
                writes += r * c
    elif dataflow == "ws":
        for index, r in enumerate(chunks(k, rows)):
            for c in chunks(n, cols):
                cycles += rows + m + rows + cols - 2
                reads += r * c + m * r + (m * c if index else 0)
                writes += m * c
    else:
        for index, r in enumerate(chunks(k, rows)):
            for c in chunks(m, cols):
                cycles += rows + n + rows + cols - 2
                reads += r * c + r * n + (c * n if index else 0)
                writes += c * n
    return cycles - 1, reads, writes


@pytest.mark.parametrize(("shape", "expected"), GOLDEN)
@pytest.mark.parametrize("index", range(3))
def test_gemm_cycles_match_scale_sim_golden(shape, expected, index):
    rows, cols, m, n, k = shape
    assert gemm_cycles(m, n, k, rows, cols, DATAFLOWS[index]) == expected[index]


@pytest.mark.parametrize(("shape", "expected"), GOLDEN)
def test_gemm_unit_cost_uses_config_array(shape, expected):
    rows, cols, m, n, k = shape
    for dataflow, cycles in zip(DATAFLOWS, expected):
        cost = gemm(_config(dataflow, rows, cols), m, n, k)
        assert cost.cycles == cycles
        assert cost.actions["mac"] == m * n * k
        assert cost.dram_bytes == 0
        assert cost.detail["utilisation"] == pytest.approx(m * n * k / (cycles * rows * cols))


def test_gemm_counts_by_hand():
    # os, 64x64, (100, 200, 300): A read once per column fold (4), B once per row fold (2).
    cost = gemm(_config("os"), 100, 200, 300)
    assert cost.actions["sram_read"] == 100 * 300 * 4 + 300 * 200 * 2
    assert cost.actions["sram_write"] == 100 * 200
    assert cost.detail["tiles"] == 8
    assert cost.detail["cycles_per_tile"] == 300 + 126
    # ws, 64x64, (128, 64, 256): 4 K folds, one column fold; partial sums written 4x, read back 3x.
    cost = gemm(_config("ws"), 128, 64, 256)
    assert cost.actions["sram_read"] == 256 * 64 + 128 * 256 + 128 * 64 * 3
    assert cost.actions["sram_write"] == 128 * 64 * 4
    assert cost.detail["load_per_tile"] == 64


@settings(deadline=None)
@given(
    m=st.integers(0, 300),
    n=st.integers(0, 300),
    k=st.integers(0, 300),
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    dataflow=st.sampled_from(DATAFLOWS),
)
def test_gemm_matches_fold_by_fold_reference(m, n, k, rows, cols, dataflow):
    cost = gemm(_config(dataflow, rows, cols), m, n, k)
    cycles, reads, writes = _reference(m, n, k, rows, cols, dataflow)
    assert cost.cycles == cycles
    assert cost.actions["sram_read"] == reads
    assert cost.actions["sram_write"] == writes
    assert cost.actions["mac"] == m * n * k


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("sizes", [(0, 64, 64), (64, 0, 64), (64, 64, 0), (0, 0, 0)])
def test_empty_gemm_costs_nothing(dataflow, sizes):
    assert gemm_cycles(*sizes, 64, 64, dataflow) == 0
    cost = gemm(_config(dataflow), *sizes)
    assert cost.cycles == 0
    assert sum(cost.actions.values()) == 0
    assert cost.detail["utilisation"] == 0.0


@settings(deadline=None)
@given(
    m=st.integers(1, 500),
    n=st.integers(1, 500),
    k=st.integers(1, 500),
    rows=st.integers(1, 64),
    cols=st.integers(1, 64),
    dataflow=st.sampled_from(DATAFLOWS),
    grow=st.sampled_from("mnk"),
)
def test_larger_gemm_never_takes_fewer_cycles(m, n, k, rows, cols, dataflow, grow):
    before = gemm_cycles(m, n, k, rows, cols, dataflow)
    bigger = {"m": m, "n": n, "k": k}
    bigger[grow] += 1
    assert gemm_cycles(bigger["m"], bigger["n"], bigger["k"], rows, cols, dataflow) >= before


@settings(deadline=None)
@given(
    rows=st.integers(1, 32),
    cols=st.integers(1, 32),
    a=st.integers(1, 4),
    b=st.integers(1, 4),
    c=st.integers(1, 4),
    dataflow=st.sampled_from(DATAFLOWS),
    double=st.sampled_from(("rows", "cols")),
)
def test_doubling_the_array_never_adds_cycles_when_it_still_divides(rows, cols, a, b, c, dataflow, double):
    # Every GEMM dimension a multiple of both doubled array sides, so each folded dimension still divides.
    unit = 4 * rows * cols
    m, n, k = a * unit, b * unit, c * unit
    before = gemm_cycles(m, n, k, rows, cols, dataflow)
    after = gemm_cycles(
        m, n, k, rows * (2 if double == "rows" else 1), cols * (2 if double == "cols" else 1), dataflow
    )
    assert after <= before


def test_bigger_array_is_slower_on_a_gemm_smaller_than_it():
    # Fill/drain grows with the array: more rows or columns are not free for tiny GEMMs.
    assert gemm_cycles(1, 1, 8, 2, 1, "os") > gemm_cycles(1, 1, 8, 1, 1, "os")


@settings(deadline=None)
@given(
    m=st.integers(1, 400),
    n=st.integers(1, 400),
    k=st.integers(1, 400),
    rows=st.integers(1, 48),
    cols=st.integers(1, 48),
    dataflow=st.sampled_from(DATAFLOWS),
)
def test_utilisation_is_at_most_one(m, n, k, rows, cols, dataflow):
    # SCALE-Sim's trailing -1 lets a 1x1 output-stationary array exceed 1; every other array stays <= 1.
    assume(not (dataflow == "os" and rows == cols == 1))
    util = gemm(_config(dataflow, rows, cols), m, n, k).detail["utilisation"]
    assert 0 < util <= 1


def test_linear_is_the_transposed_gemm():
    config = _config("ws", 32, 64)
    assert linear(config, 5000, 32, 64).cycles == 5125
    assert linear(config, 1000, 3, 64) == gemm(config, 1000, 64, 3)


@pytest.mark.parametrize(
    ("args", "error", "name"),
    [
        ((-1, 4, 4, 8, 8, "os"), ValueError, "m"),
        ((4, -1, 4, 8, 8, "os"), ValueError, "n"),
        ((4, 4, -2, 8, 8, "os"), ValueError, "k"),
        ((4, 4, 4, 0, 8, "os"), ValueError, "rows"),
        ((4, 4, 4, 8, -8, "os"), ValueError, "cols"),
        ((4, 4, 4, 8, 8, "rs"), ValueError, "dataflow"),
        ((4.0, 4, 4, 8, 8, "os"), TypeError, "m"),
        ((4, True, 4, 8, 8, "os"), TypeError, "n"),
    ],
)
def test_bad_gemm_arguments_raise_naming_them(args, error, name):
    with pytest.raises(error, match=rf"^{name} "):
        gemm_cycles(*args)


def test_numpy_integers_are_accepted():
    assert gemm_cycles(np.int64(64), np.int32(64), np.uint16(64), 64, 64, "os") == 189


# --- sparse convolution -------------------------------------------------------------------------------------

SIZES = st.lists(st.integers(0, 300), min_size=1, max_size=27)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_ungrouped_sparse_conv_is_the_sum_of_per_offset_gemms(dataflow):
    config = _config(dataflow, 16, 16)
    sizes = [120, 0, 7, 300, 1, 64]
    cost = sparse_conv(config, sizes, 32, 48)
    parts = [gemm(config, m, 48, 32) for m in sizes]
    assert cost.cycles == sum(p.cycles for p in parts)
    for action in ("mac", "sram_read", "sram_write"):
        assert cost.actions[action] == sum(p.actions[action] for p in parts)
    assert cost.actions["mac"] == sum(sizes) * 32 * 48
    assert cost.detail["active_offsets"] == 5
    assert cost.detail["grouping_saved"] == 0


@settings(deadline=None)
@given(
    sizes=SIZES,
    c_in=st.integers(1, 200),
    c_out=st.integers(1, 200),
    rows=st.integers(1, 64),
    cols=st.integers(1, 64),
    dataflow=st.sampled_from(DATAFLOWS),
)
def test_grouped_never_exceeds_ungrouped(sizes, c_in, c_out, rows, cols, dataflow):
    grouped = sparse_conv(_config(dataflow, rows, cols, grouped=True), sizes, c_in, c_out)
    ungrouped = sparse_conv(_config(dataflow, rows, cols, grouped=False), sizes, c_in, c_out)
    assert 0 <= grouped.cycles <= ungrouped.cycles
    assert grouped.actions == ungrouped.actions
    assert grouped.detail["ungrouped_cycles"] == ungrouped.cycles
    if sum(sizes) == 0:
        assert grouped.cycles == 0


@settings(deadline=None)
@given(
    m=st.integers(1, 2000),
    zeros_before=st.integers(0, 5),
    zeros_after=st.integers(0, 5),
    c_in=st.integers(1, 200),
    c_out=st.integers(1, 200),
    rows=st.integers(1, 64),
    cols=st.integers(1, 64),
    dataflow=st.sampled_from(DATAFLOWS),
)
def test_grouped_single_offset_equals_its_gemm(
    m, zeros_before, zeros_after, c_in, c_out, rows, cols, dataflow
):
    sizes = [0] * zeros_before + [m] + [0] * zeros_after
    expected = gemm_cycles(m, c_out, c_in, rows, cols, dataflow)
    assert grouped_cycles(sizes, c_in, c_out, rows, cols, dataflow) == expected
    assert sparse_conv(_config(dataflow, rows, cols, grouped=True), sizes, c_in, c_out).cycles == expected


@settings(deadline=None)
@given(sizes=SIZES, c_in=st.integers(1, 100), c_out=st.integers(1, 100), dataflow=st.sampled_from(DATAFLOWS))
def test_empty_offsets_cost_nothing(sizes, c_in, c_out, dataflow):
    for grouped in (False, True):
        config = _config(dataflow, 16, 8, grouped=grouped)
        with_zeros = sparse_conv(config, [0, *sizes, 0, 0], c_in, c_out)
        without = sparse_conv(config, [s for s in sizes if s], c_in, c_out)
        assert with_zeros.cycles == without.cycles
        assert with_zeros.actions == without.actions


def test_grouped_ws_by_hand():
    # 64x64, K = 32, N = 64: one weight fold. Load 64, stream 100, switch (5 < 64 stalls to 64), stream 300,
    # skew 126, minus SCALE-Sim's 1; ungrouped pays 2R + C - 2 = 190 (+ M - 1) per offset.
    config = _config("ws", grouped=True)
    cost = sparse_conv(config, [100, 0, 5, 300], 32, 64)
    assert cost.cycles == 64 + 100 + 64 + 300 + 126 - 1
    assert cost.detail["ungrouped_cycles"] == (190 + 100 - 1) + (190 + 5 - 1) + (190 + 300 - 1)


@settings(deadline=None)
@given(
    sizes=st.lists(st.integers(64, 500), min_size=1, max_size=27),
    c_in=st.integers(1, 300),
    c_out=st.integers(1, 300),
)
def test_grouped_ws_streams_all_offsets_through_each_weight_fold(sizes, c_in, c_out):
    # With every offset at least R rows long the weight switches hide completely.
    rows = cols = 64
    folds = -(-c_in // rows) * -(-c_out // cols)
    expected = folds * (2 * rows + cols - 2 + sum(sizes)) - 1
    assert grouped_cycles(sizes, c_in, c_out, rows, cols, "ws") == expected


def test_grouped_os_and_is_overlap_offset_boundaries():
    rows, cols, c_in, c_out = 16, 8, 40, 24
    sizes = [50, 3, 0, 17]
    per_offset = {d: [gemm_cycles(m, c_out, c_in, rows, cols, d) for m in sizes if m] for d in ("os", "is")}
    assert grouped_cycles(sizes, c_in, c_out, rows, cols, "os") == sum(per_offset["os"]) - 2 * (
        rows + cols - 2
    )
    assert grouped_cycles(sizes, c_in, c_out, rows, cols, "is") == sum(per_offset["is"]) - 2 * (
        rows + cols - 2 + min(c_out, rows)
    )


def test_sparse_conv_accepts_numpy_sizes():
    sizes = np.array([10, 0, 20], dtype=np.int64)
    assert sparse_conv(_config(), sizes, 4, 4).actions["mac"] == 30 * 16


@pytest.mark.parametrize(
    ("sizes", "c_in", "c_out", "error", "name"),
    [
        ([1, 2, -3], 4, 4, ValueError, r"sizes\[2\]"),
        ([1, 2.5], 4, 4, TypeError, r"sizes\[1\]"),
        ([1, 2], -4, 4, ValueError, "c_in"),
        ([1, 2], 4, -1, ValueError, "c_out"),
    ],
)
def test_bad_sparse_conv_arguments_raise_naming_them(sizes, c_in, c_out, error, name):
    for grouped in (False, True):
        with pytest.raises(error, match=rf"^{name} "):
            sparse_conv(_config(grouped=grouped), sizes, c_in, c_out)


# --- SCALE-Sim topology files -------------------------------------------------------------------------------


def test_topology_csv_round_trip_gives_golden_cycles(tmp_path):
    path = tmp_path / "golden_mnk.csv"
    lines = ["Layer, M, N, K,"]
    for index, ((_, _, m, n, k), _) in enumerate(GOLDEN[:4]):
        lines.append(f"gemm_{index}, {m}, {n}, {k},")
    path.write_text("\n".join(lines) + "\n\n")
    layers = read_topology_csv(path)
    assert [name for name, *_ in layers] == ["gemm_0", "gemm_1", "gemm_2", "gemm_3"]
    for dataflow_index, dataflow in enumerate(DATAFLOWS):
        config = _config(dataflow)
        got = [gemm(config, m, n, k).cycles for _, m, n, k in layers]
        assert got == [expected[dataflow_index] for _, expected in GOLDEN[:4]]


def test_topology_csv_without_trailing_commas(tmp_path):
    # The form of SCALE-Sim's GEMM_mnk/gnmt.csv.
    path = tmp_path / "plain.csv"
    path.write_text("Layer,M,N,K\n1,5000,64,32\n2,100,200,300\n")
    assert read_topology_csv(path) == [("1", 5000, 64, 32), ("2", 100, 200, 300)]
    config = _config("os", 32, 64)
    assert [gemm(config, m, n, k).cycles for _, m, n, k in read_topology_csv(path)] == [19781, 6303]


@pytest.mark.parametrize(
    "row",
    ["bad, 1, 2,", "bad, 1, x, 3,", "bad, 1, 2, -3,", ", 1, 2, 3,", "bad, 1, 2, 3, 4,"],
)
def test_bad_topology_rows_name_file_and_line(tmp_path, row):
    path = tmp_path / "broken.csv"
    path.write_text(f"Layer, M, N, K,\nok, 1, 2, 3,\n{row}\n")
    with pytest.raises(ValueError, match=r"broken\.csv:3: "):
        read_topology_csv(path)


def test_missing_topology_file_names_it(tmp_path):
    with pytest.raises(ValueError, match="nowhere.csv"):
        read_topology_csv(tmp_path / "nowhere.csv")
