"""The Matrix Unit: a weight/output/input-stationary systolic array (SCALE-Sim v2 timing).

Notation used throughout: a GEMM multiplies A (M×K) by B (K×N) into C (M×N) on an array of R rows and C
columns (``config.array.array_height`` × ``config.array.array_width``). In a sparse convolution A holds the
gathered input features of one kernel offset (M = pairs of that offset, K = input channels), B that offset's
weights (N = output channels) and C the partial outputs that are scattered back.

Each dataflow maps two of (M, N, K) onto the array and streams the third; the array is "folded" over the
mapped dimensions and every fold (tile) costs a fixed fill/drain on top of the streamed length. SCALE-Sim v2's
stall-free compute cycles (checked against its runs in 18 cases, tests/pointacc/test_matrix.py; SCALE-Sim:
Samajdar et al., ISPASS 2020; docs/conventions.md §4) are

    os: ⌈M/R⌉·⌈N/C⌉·(K + R + C − 2) − 1     (outputs stationary, K streamed)
    ws: ⌈K/R⌉·⌈N/C⌉·(2R + C + M − 2) − 1    (weights stationary, M streamed, R cycles to load a tile)
    is: ⌈K/R⌉·⌈M/C⌉·(2R + C + N − 2) − 1    (inputs stationary, N streamed, R cycles to load a tile)

The trailing −1 is SCALE-Sim's convention (it reports the index of the last busy cycle); it is kept so that the
numbers match SCALE-Sim exactly.
"""

from __future__ import annotations

import csv
import pathlib
from collections import Counter
from collections.abc import Sequence

from pointacc.limits import MAX_ROWS
from pointacc.units.base import UnitCost, count_argument

DATAFLOWS = ("os", "ws", "is")


def _array_dim(name: str, value) -> int:
    number = count_argument(name, value)
    if number == 0:
        raise ValueError(f"{name} must be > 0, got 0")
    return number


def _dataflow(value) -> str:
    if value not in DATAFLOWS:
        raise ValueError(f"dataflow must be one of {', '.join(DATAFLOWS)}, got {value!r}")
    return value


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _folds(m: int, n: int, k: int, rows: int, cols: int, dataflow: str) -> tuple[int, int, int, int]:
    """(row folds, column folds, streamed length, load cycles per fold) of one GEMM."""
    if dataflow == "os":
        return _ceil_div(m, rows), _ceil_div(n, cols), k, 0
    if dataflow == "ws":
        return _ceil_div(k, rows), _ceil_div(n, cols), m, rows
    return _ceil_div(k, rows), _ceil_div(m, cols), n, rows


def gemm_cycles(m: int, n: int, k: int, rows: int, cols: int, dataflow: str) -> int:
    """SCALE-Sim v2 stall-free compute cycles of (M×K)·(K×N) on an R×C systolic array.

    Args:
        m, n, k: GEMM sizes (non-negative integers).
        rows, cols: array height R and width C (positive integers).
        dataflow: "os", "ws" or "is".

    Returns:
        os ⌈M/R⌉·⌈N/C⌉·(K + R + C − 2) − 1; ws ⌈K/R⌉·⌈N/C⌉·(2R + C + M − 2) − 1;
        is ⌈K/R⌉·⌈M/C⌉·(2R + C + N − 2) − 1; 0 when m, n or k is 0.

    Raises:
        ValueError: a negative size, a non-positive array dimension, an unknown dataflow.
        TypeError: a size or array dimension that is not an integer.
    """
    m, n, k = count_argument("m", m), count_argument("n", n), count_argument("k", k)
    rows, cols = _array_dim("rows", rows), _array_dim("cols", cols)
    dataflow = _dataflow(dataflow)
    if m == 0 or n == 0 or k == 0:
        return 0
    row_folds, col_folds, stream, load = _folds(m, n, k, rows, cols, dataflow)
    return row_folds * col_folds * (load + stream + rows + cols - 2) - 1


def _sram_words(m: int, n: int, k: int, rows: int, cols: int, dataflow: str) -> tuple[int, int]:
    """(words read, words written) between the array buffers and the array for one GEMM; see `gemm`."""
    if m == 0 or n == 0 or k == 0:
        return 0, 0
    if dataflow == "os":
        return m * k * _ceil_div(n, cols) + k * n * _ceil_div(m, rows), m * n
    k_folds = _ceil_div(k, rows)
    psum_reads = m * n * (k_folds - 1)
    if dataflow == "ws":
        return k * n + m * k * _ceil_div(n, cols) + psum_reads, m * n * k_folds
    return m * k + k * n * _ceil_div(m, cols) + psum_reads, m * n * k_folds


def _utilisation(macs: int, cycles: int, rows: int, cols: int) -> float:
    if macs == 0:
        return 0.0
    return macs / (max(cycles, 1) * rows * cols)


def gemm(config, m: int, n: int, k: int) -> UnitCost:
    """Cost of one dense GEMM (M×K)·(K×N) on the Matrix Unit.

    SRAM traffic model (words of ``config.array.element_bytes`` each, between the input/weight/output
    buffers and the array's edges; every operand element is read once per fold that needs it):

    - os (C tile stationary, K streamed): A is read once per column fold and B once per row fold, outputs
      leave fully reduced: reads M·K·⌈N/C⌉ + K·N·⌈M/R⌉, writes M·N.
    - ws (B tile stationary): B is read once, A once per column fold; every K fold writes a partial sum and
      every fold after the first reads the previous one back: reads K·N + M·K·⌈N/C⌉ + M·N·(⌈K/R⌉ − 1),
      writes M·N·⌈K/R⌉.
    - is (A tile stationary): A is read once, B once per M fold (⌈M/C⌉); partial sums as for ws:
      reads M·K + K·N·⌈M/C⌉ + M·N·(⌈K/R⌉ − 1), writes M·N·⌈K/R⌉.

    Args:
        config: `pointacc.config.Config`; uses ``array.array_height`` (R), ``array.array_width`` (C) and
            ``array.dataflow``.
        m, n, k: GEMM sizes (non-negative integers).

    Returns:
        UnitCost with cycles = `gemm_cycles`, actions "mac" (M·N·K), "sram_read", "sram_write" (words), no
        DRAM traffic, and detail: dataflow, rows, cols, m, n, k, row_folds, col_folds, tiles, stream_per_tile,
        load_per_tile, fill_drain_per_tile (R + C − 2), cycles_per_tile, macs, utilisation
        (M·N·K / (cycles·R·C), which only a 1×1 os array can push past 1 because of SCALE-Sim's −1).
    """
    rows, cols, dataflow = config.array.array_height, config.array.array_width, config.array.dataflow
    cycles = gemm_cycles(m, n, k, rows, cols, dataflow)
    m, n, k = int(m), int(n), int(k)
    reads, writes = _sram_words(m, n, k, rows, cols, dataflow)
    macs = m * n * k
    if macs:
        row_folds, col_folds, stream, load = _folds(m, n, k, rows, cols, dataflow)
    else:
        row_folds = col_folds = stream = load = 0
    actions = Counter({"mac": macs, "sram_read": reads, "sram_write": writes})
    detail = {
        "dataflow": dataflow,
        "rows": rows,
        "cols": cols,
        "m": m,
        "n": n,
        "k": k,
        "row_folds": row_folds,
        "col_folds": col_folds,
        "tiles": row_folds * col_folds,
        "stream_per_tile": stream,
        "load_per_tile": load,
        "fill_drain_per_tile": rows + cols - 2,
        "cycles_per_tile": load + stream + rows + cols - 2 if macs else 0,
        "macs": macs,
        "utilisation": _utilisation(macs, cycles, rows, cols),
    }
    return UnitCost(cycles=cycles, actions=actions, detail=detail)


def linear(config, rows: int, c_in: int, c_out: int) -> UnitCost:
    """A fully connected layer on ``rows`` points: the GEMM (rows × c_in)·(c_in × c_out).

    Args:
        config: `pointacc.config.Config`.
        rows: number of points (M).
        c_in: input channels (K).
        c_out: output channels (N).

    Returns:
        `gemm(config, rows, c_out, c_in)`.
    """
    return gemm(config, rows, c_out, c_in)


def grouped_cycles(sizes: Sequence[int], c_in: int, c_out: int, rows: int, cols: int, dataflow: str) -> int:
    """Cycles of the per-offset GEMMs of a sparse convolution streamed back to back (grouped mode).

    Offsets with no pairs are skipped; "active" offsets are the others, in the given order, and "last" is
    the last active one. With c_k the `gemm_cycles` of offset k alone (M_k = sizes[k], K = c_in, N = c_out):

    - ws: the streamed dimension is M, so all offsets stream through each weight fold: for each of the
      F = ⌈K/R⌉·⌈N/C⌉ folds, load the first offset's weight tile (R cycles), stream every active offset's
      rows, and preload the next offset's tile into shadow registers while the current one streams (a
      switch stalls when M_k < R); the fill/drain skew R + C − 2 is paid once per fold:
      F·(R + Σ_{active k ≠ last} max(M_k, R) + M_last + R + C − 2) − 1.
    - os / is: the streamed dimension (K / N) is shared by all offsets, so offsets cannot share a fold;
      consecutive offsets only overlap at their boundary (double-buffered accumulators / stationary tiles):
      Σ_k c_k − (active − 1)·V with V = R + C − 2 for os (the last tile's drain skew under the next offset's
      fill) and V = R + C − 2 + min(N, R) for is (also the next input tile's R-cycle load under the last
      N-cycle weight stream).

    Every formula equals c_k for a single active offset and never exceeds Σ_k c_k (for ws each non-last
    active offset saves F·(R + C − 2 + min(M_k, R)) − 1 ≥ 0 cycles).

    Args:
        sizes: pairs per kernel offset (non-negative integers).
        c_in, c_out: input and output channels.
        rows, cols: array height R and width C.
        dataflow: "os", "ws" or "is".

    Returns:
        Grouped compute cycles (0 when there is no work).

    Raises:
        ValueError, TypeError: as `gemm_cycles`, naming ``sizes[i]`` for a bad size.
    """
    counts = [count_argument(f"sizes[{i}]", s) for i, s in enumerate(sizes)]
    c_in, c_out = count_argument("c_in", c_in), count_argument("c_out", c_out)
    rows, cols = _array_dim("rows", rows), _array_dim("cols", cols)
    dataflow = _dataflow(dataflow)
    active = [s for s in counts if s > 0]
    if not active or c_in == 0 or c_out == 0:
        return 0
    skew = rows + cols - 2
    if dataflow == "ws":
        folds = _ceil_div(c_in, rows) * _ceil_div(c_out, cols)
        streamed = sum(max(s, rows) for s in active[:-1]) + active[-1]
        return folds * (rows + streamed + skew) - 1
    overlap = skew if dataflow == "os" else skew + min(c_out, rows)
    total = sum(gemm_cycles(s, c_out, c_in, rows, cols, dataflow) for s in active)
    return total - (len(active) - 1) * overlap


def sparse_conv(config, sizes: Sequence[int], c_in: int, c_out: int) -> UnitCost:
    """A sparse convolution as one GEMM per kernel offset (gather → GEMM → scatter).

    Offset k is the GEMM (M_k × c_in)·(c_in × c_out) with M_k = sizes[k]; offsets with no pairs cost
    nothing. With ``config.run.grouped`` False the offsets run one after another (Σ_k `gemm_cycles`);
    with it True they stream back to back as in `grouped_cycles`. SRAM traffic and MACs are the sum over
    offsets in both modes (grouping changes timing, not data movement).

    Args:
        config: `pointacc.config.Config`.
        sizes: pairs per kernel offset, a sequence of non-negative integers (e.g. a kernel map's sizes).
        c_in: input channels.
        c_out: output channels.

    Returns:
        UnitCost with actions "mac" (Σ sizes · c_in · c_out), "sram_read", "sram_write", and detail:
        dataflow, grouped, offsets, active_offsets, pairs, c_in, c_out, ungrouped_cycles, grouping_saved,
        tiles, macs, utilisation.

    Raises:
        ValueError: a negative size or channel count (the message names ``sizes[i]``, c_in or c_out).
        TypeError: a size or channel count that is not an integer.
    """
    counts = [count_argument(f"sizes[{i}]", s) for i, s in enumerate(sizes)]
    c_in, c_out = count_argument("c_in", c_in), count_argument("c_out", c_out)
    rows, cols, dataflow = config.array.array_height, config.array.array_width, config.array.dataflow
    actions: Counter = Counter({"mac": 0, "sram_read": 0, "sram_write": 0})
    ungrouped = 0
    tiles = 0
    for m in counts:
        if m == 0:
            continue
        cost = gemm(config, m, c_out, c_in)
        actions.update(cost.actions)
        ungrouped += cost.cycles
        tiles += cost.detail["tiles"]
    grouped = bool(config.run.grouped)
    cycles = grouped_cycles(counts, c_in, c_out, rows, cols, dataflow) if grouped else ungrouped
    macs = actions["mac"]
    detail = {
        "dataflow": dataflow,
        "grouped": grouped,
        "offsets": len(counts),
        "active_offsets": sum(1 for m in counts if m > 0),
        "pairs": sum(counts),
        "c_in": c_in,
        "c_out": c_out,
        "ungrouped_cycles": ungrouped,
        "grouping_saved": ungrouped - cycles,
        "tiles": tiles,
        "macs": macs,
        "utilisation": _utilisation(macs, cycles, rows, cols),
    }
    return UnitCost(cycles=cycles, actions=actions, detail=detail)


TOPOLOGY_KINDS = ("gemm", "conv", "auto")


def _conv_as_gemm(path, number: int, fields: list[str]) -> list[tuple[str, int, int, int]]:
    """One SCALE-Sim conv row as its GEMM(s), as SCALE-Sim's topology reader lowers it (im2col).

    ``name, IFMAP H, IFMAP W, Filter H, Filter W, Channels, Num Filter, Stride[, Stride W]``: OFMAP side
    ⌈(H − Fh + S) / S⌉, M = OFMAP H · OFMAP W, N = Num Filter, K = Fh · Fw · Channels. A name containing
    "DP" is a depthwise layer: like SCALE-Sim, one single-channel layer per channel, named ``<name>Channel_<i>``.
    """
    if len(fields) not in (8, 9) or not fields[0]:
        raise ValueError(
            f"{path}:{number}: expected 'name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, "
            f"Channels, Num Filter, Strides', got {', '.join(fields)!r}"
        )
    try:
        h, w, fh, fw, channels, filters, *strides = (int(f) for f in fields[1:])
    except ValueError:
        raise ValueError(
            f"{path}:{number}: conv sizes must be integers, got {', '.join(fields[1:])!r}"
        ) from None
    stride_h = strides[0]
    stride_w = strides[1] if len(strides) > 1 else stride_h
    if min(h, w, fh, fw, channels, filters, stride_h, stride_w) < 1:
        raise ValueError(
            f"{path}:{number}: conv sizes and strides must be >= 1, got {', '.join(fields[1:])!r}"
        )
    if fh > h or fw > w:
        raise ValueError(f"{path}:{number}: the filter ({fh}x{fw}) is larger than the IFMAP ({h}x{w})")
    out_h = -(-(h - fh + stride_h) // stride_h)  # SCALE-Sim's ⌈(H − Fh + S) / S⌉ counts a partial last window
    out_w = -(-(w - fw + stride_w) // stride_w)
    depthwise = "DP" in fields[0]
    m, n, k = out_h * out_w, filters, fh * fw * (1 if depthwise else channels)
    if max(m, n, k) > MAX_ROWS:
        raise ValueError(f"{path}:{number}: M, N and K must be at most {MAX_ROWS}, got {m}, {n}, {k}")
    if depthwise:
        if channels > MAX_ROWS // 64:
            raise ValueError(f"{path}:{number}: a depthwise layer has at most {MAX_ROWS // 64} channels")
        return [(f"{fields[0]}Channel_{c}", m, n, k) for c in range(channels)]
    return [(fields[0], m, n, k)]


def read_topology_csv(path: str | pathlib.Path, kind: str = "gemm") -> list[tuple[str, int, int, int]]:
    """Reads a SCALE-Sim topology CSV: GEMM (``-i gemm``) or convolution (``-i conv``) layers.

    The first non-blank line is the header and is skipped; every other non-blank line is a layer, with
    optional spaces and optional trailing commas, as SCALE-Sim's own files have:

    - gemm: ``name, M, N, K``. M is the number of output rows, N the output columns (filters), K the
      reduction.
    - conv: ``name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides``
      (and optionally a second, column stride), lowered to its GEMM as SCALE-Sim does (`_conv_as_gemm`).
    - auto: each row by its number of fields (4: gemm, 8 or 9: conv).

    Args:
        path: the CSV file.
        kind: "gemm", "conv" or "auto".

    Returns:
        [(name, M, N, K), ...] in file order.

    Raises:
        ValueError: the file cannot be read (missing, not a regular file, not UTF-8), or a row does not have a
            name and integers in range (M, N, K in [0, `pointacc.limits.MAX_ROWS`]; conv sizes >= 1, the
            filter no larger than the IFMAP); the message names the file and the line.
    """
    if kind not in TOPOLOGY_KINDS:
        raise ValueError(f"kind must be one of {', '.join(TOPOLOGY_KINDS)}, got {kind!r}")
    path = pathlib.Path(path)
    try:
        if not path.is_file():  # a folder, or a pipe or device that could block or never end
            raise ValueError(
                f"cannot read topology {path}: {'not a file' if path.exists() else 'no such file'}"
            )
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ValueError(f"cannot read topology {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from None
    layers: list[tuple[str, int, int, int]] = []
    header_seen = False
    reader = csv.reader(text.splitlines())
    try:
        for fields in reader:
            number = reader.line_num
            fields = [f.strip() for f in fields]
            while fields and fields[-1] == "":
                fields.pop()
            if not fields:
                continue
            if not header_seen:
                header_seen = True
                continue
            if kind == "conv" or (kind == "auto" and len(fields) in (8, 9)):
                layers.extend(_conv_as_gemm(path, number, fields))
                continue
            if len(fields) != 4 or not fields[0]:
                raise ValueError(f"{path}:{number}: expected 'name, M, N, K', got {', '.join(fields)!r}")
            try:
                m, n, k = (int(f) for f in fields[1:])
            except ValueError:
                raise ValueError(
                    f"{path}:{number}: M, N and K must be integers, got {', '.join(fields[1:])!r}"
                ) from None
            if min(m, n, k) < 0 or max(m, n, k) > MAX_ROWS:
                raise ValueError(f"{path}:{number}: M, N and K must be in [0, {MAX_ROWS}], got {m}, {n}, {k}")
            layers.append((fields[0], m, n, k))
    except csv.Error as error:
        raise ValueError(f"{path}:{reader.line_num}: {error}") from None
    return layers
