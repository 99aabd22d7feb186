"""Reports of a simulation: SCALE-Sim v2's three CSVs, this simulator's own CSVs, summary.json and a chart.

SCALE-Sim's files (``COMPUTE_REPORT.csv``, ``BANDWIDTH_REPORT.csv``, ``DETAILED_ACCESS_REPORT.csv``) have its
exact column names, order, units (words, cycles, words per cycle, percent) and number formatting (``", "``
between fields, a trailing comma, integers as integers, cycle stamps and averages as Python floats), one row per
op that runs GEMMs on the Matrix Unit (gemm, linear, sparse_conv), ``LayerID`` being the op's index in the
workload (0, 1, 2, ... for a SCALE-Sim topology). Their values follow SCALE-Sim's definitions, derived in
closed form from its operand and demand matrices (`scale_sim_gemm`); where this simulator models something
SCALE-Sim does not (the DRAM columns, stalls under USER bandwidth, sparse convolutions), the README's PointAcc
section lists each difference.

This simulator's own, richer reports sit beside them: ``POINTACC_COMPUTE_REPORT.csv``,
``POINTACC_BANDWIDTH_REPORT.csv``, ``POINTACC_ACCESS_REPORT.csv`` (snake_case, bytes, fractions, every op) and
``ENERGY_REPORT.csv``.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
from dataclasses import dataclass

from pointacc.simulate import UNITS, LayerResult, Simulation, gemm_shapes

__all__ = ["SCALE_SIM_HEADERS", "ScaleSimLayer", "scale_sim_gemm", "scale_sim_rows", "write_reports"]

SCALE_SIM_HEADERS = {
    "COMPUTE_REPORT.csv": (
        "LayerID, Total Cycles, Stall Cycles, Overall Util %, Mapping Efficiency %, Compute Util %,"
    ),
    "BANDWIDTH_REPORT.csv": (
        "LayerID, Avg IFMAP SRAM BW, Avg FILTER SRAM BW, Avg OFMAP SRAM BW, "
        "Avg IFMAP DRAM BW, Avg FILTER DRAM BW, Avg OFMAP DRAM BW,"
    ),
    "DETAILED_ACCESS_REPORT.csv": (
        "LayerID, "
        "SRAM IFMAP Start Cycle, SRAM IFMAP Stop Cycle, SRAM IFMAP Reads, "
        "SRAM Filter Start Cycle, SRAM Filter Stop Cycle, SRAM Filter Reads, "
        "SRAM OFMAP Start Cycle, SRAM OFMAP Stop Cycle, SRAM OFMAP Writes, "
        "DRAM IFMAP Start Cycle, DRAM IFMAP Stop Cycle, DRAM IFMAP Reads, "
        "DRAM Filter Start Cycle, DRAM Filter Stop Cycle, DRAM Filter Reads, "
        "DRAM OFMAP Start Cycle, DRAM OFMAP Stop Cycle, DRAM OFMAP Writes,"
    ),
}
"""SCALE-Sim v2's report file names and header lines (its simulator.py writes them with a trailing comma)."""

EXACT_SUM_FOLDS = 1 << 16
"""Up to this many folds in a layer, the averages over folds are summed fold by fold with Python's ``sum``, as
SCALE-Sim does (so the last digit matches SCALE-Sim run on the same Python); above it, as count-weighted
``math.fsum`` of the (at most four) distinct per-fold values, which may differ in the last digit."""


@dataclass(frozen=True)
class ScaleSimLayer:
    """SCALE-Sim's stall-free view of the GEMMs of one layer, run one after another.

    Attributes:
        cycles: stall-free Total Cycles (SCALE-Sim's index of the last busy cycle; 0 without work).
        folds: tiles (folds) of all GEMMs.
        mapping_efficiency: mean over folds of used PEs / (R·C), a fraction.
        compute_utilization: mean over folds of used PEs · T / (R·C · cycles of the fold), a fraction.
        ifmap_reads, filter_reads, ofmap_writes: SRAM words as SCALE-Sim counts them (OFMAP writes add R + C per
            os fold; no partial-sum read-backs).
        ifmap_start, ifmap_stop, filter_start, filter_stop, ofmap_start, ofmap_stop: first and last cycle with
            an SRAM request of each operand (reads are served one cycle after they are made).
    """

    cycles: int
    folds: int
    mapping_efficiency: float
    compute_utilization: float
    ifmap_reads: int
    filter_reads: int
    ofmap_writes: int
    ifmap_start: int
    ifmap_stop: int
    filter_start: int
    filter_stop: int
    ofmap_start: int
    ofmap_stop: int


def _fold_mean(per_fold: list[tuple[int, int, list[float]]]) -> float:
    """Mean of per-fold values, folds in SCALE-Sim's order (column folds outer, row folds inner).

    per_fold: for each GEMM, (row folds, col folds, value table indexed by 2·last_col + last_row).
    """
    total_folds = sum(rf * cf for rf, cf, _ in per_fold)
    if total_folds == 0:
        return 0.0
    if total_folds <= EXACT_SUM_FOLDS:
        values = []
        for rf, cf, table in per_fold:
            for fc in range(cf):
                for fr in range(rf):
                    values.append(table[2 * (fc == cf - 1) + (fr == rf - 1)])
        return sum(values) / len(values)
    terms = []
    for rf, cf, table in per_fold:
        counts = ((rf - 1) * (cf - 1), cf - 1, rf - 1, 1)  # by 2·last_col + last_row
        terms += [count * value for count, value in zip(counts, table)]
    return math.fsum(terms) / total_folds


def _geometry(m: int, n: int, k: int, rows: int, cols: int, dataflow: str) -> tuple[int, int, int]:
    """(Sr, Sc, T): the dimensions SCALE-Sim maps on the array's rows and columns and the streamed one."""
    return {"os": (m, n, k), "ws": (k, n, m), "is": (k, m, n)}[dataflow]


def _spans(dataflow: str, rows: int, t: int, ru: int, cu: int) -> tuple[tuple[int, int], ...]:
    """(first, last) demand row of IFMAP, filter and OFMAP within a fold using ru rows and cu columns."""
    if dataflow == "os":
        return (0, t + ru - 2), (0, t + cu - 2), (t + rows - ru - 1, t + rows + cu - 3)
    ofmap = (2 * rows - 1, 2 * rows + t + cu - 3)
    if dataflow == "ws":
        return (rows, rows + t + ru - 2), (rows - ru, rows - 1), ofmap
    return (rows - ru, rows - 1), (rows, rows + t + ru - 2), ofmap


def scale_sim_gemm(shapes: list[tuple[int, int, int]], rows: int, cols: int, dataflow: str) -> ScaleSimLayer:
    """SCALE-Sim v2's compute-side report values of GEMMs (M, N, K) run one after another, stall-free.

    Derived from SCALE-Sim's systolic_compute_{os,ws,is}: a GEMM maps (Sr, Sc) = (M, N) [os], (K, N) [ws] or
    (K, M) [is] onto R × C and streams T = K [os], M [ws] or N [is]; folds run column fold outer, row fold inner,
    fold (fr, fc) using ru = min(R, Sr − fr·R) rows and cu = min(C, Sc − fc·C) columns. Each fold takes
    H = T + R + C − 2 [os] or 2R + C + T − 2 [ws, is] demand rows, so Total Cycles = folds·H − 1.

    - Mapping efficiency of a fold: ru·cu / (R·C). Compute utilisation: ru·cu·T / (R·C·(H + Δ)) with Δ = 0 [os]
      or C − 1 [ws, is] (SCALE-Sim measures ws/is folds on the unskewed stationary operand).
    - SRAM words: os reads ⌈Sc/C⌉·T·Sr IFMAP and ⌈Sr/R⌉·T·Sc filter words and writes Sr·Sc + folds·(R + C)
      OFMAP words; ws reads ⌈Sc/C⌉·T·Sr IFMAP and Sr·Sc filter words and writes ⌈Sr/R⌉·T·Sc; is reads Sr·Sc
      IFMAP and ⌈Sc/C⌉·T·Sr filter words and writes ⌈Sr/R⌉·T·Sc.
    - First / last request of each operand within a fold (demand rows, skewed by column): os IFMAP 0 /
      T + ru − 2, filter 0 / T + cu − 2, OFMAP T + R − ru − 1 / T + R + cu − 3; ws IFMAP R / R + T + ru − 2,
      filter R − ru / R − 1, OFMAP 2R − 1 / 2R + T + cu − 3; is IFMAP R − ru / R − 1, filter R / R + T + ru − 2,
      OFMAP as ws. Reads are served one cycle later; writes in their own cycle.

    Several GEMMs (a sparse convolution's offsets) are SCALE-Sim layers run back to back: their demand rows
    follow each other, so counts and fold averages add up over all folds.

    Args:
        shapes: [(M, N, K), ...]; GEMMs with a zero size are skipped.
        rows, cols: array height R and width C.
        dataflow: "os", "ws" or "is".
    """
    shapes = [(m, n, k) for m, n, k in shapes if m and n and k]
    area = rows * cols
    offset = 0
    mapping, compute = [], []
    reads = [0, 0, 0]
    first = last = None
    for m, n, k in shapes:
        sr, sc, t = _geometry(m, n, k, rows, cols, dataflow)
        rf, cf = -(-sr // rows), -(-sc // cols)
        height = t + rows + cols - 2 if dataflow == "os" else 2 * rows + cols + t - 2
        measured = height if dataflow == "os" else height + cols - 1
        ru = (rows, sr - (rf - 1) * rows)  # a full row fold, the last row fold
        cu = (cols, sc - (cf - 1) * cols)
        used = [cu[c] * ru[r] for c in (0, 1) for r in (0, 1)]  # indexed 2·last_col + last_row
        mapping.append((rf, cf, [u / area for u in used]))
        compute.append((rf, cf, [u * t / (area * measured) for u in used]))
        if dataflow == "os":
            counts = (cf * t * sr, rf * t * sc, sr * sc + rf * cf * (rows + cols))
        elif dataflow == "ws":
            counts = (cf * t * sr, sr * sc, rf * t * sc)
        else:
            counts = (sr * sc, cf * t * sr, rf * t * sc)
        reads = [a + b for a, b in zip(reads, counts)]
        if first is None:
            first = [offset + lo for lo, _ in _spans(dataflow, rows, t, min(rows, sr), min(cols, sc))]
        folds = rf * cf
        last = [offset + (folds - 1) * height + hi for _, hi in _spans(dataflow, rows, t, ru[1], cu[1])]
        offset += folds * height
    if first is None:
        return ScaleSimLayer(0, 0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return ScaleSimLayer(
        cycles=offset - 1,
        folds=sum(rf * cf for rf, cf, _ in mapping),
        mapping_efficiency=_fold_mean(mapping),
        compute_utilization=_fold_mean(compute),
        ifmap_reads=reads[0],
        filter_reads=reads[1],
        ofmap_writes=reads[2],
        ifmap_start=first[0] + 1,
        ifmap_stop=last[0] + 1,
        filter_start=first[1] + 1,
        filter_stop=last[1] + 1,
        ofmap_start=first[2],
        ofmap_stop=last[2],
    )


def _dram_words(layer: LayerResult, element_bytes: int) -> tuple[int, int, int]:
    detail = layer.costs["memory"].detail if "memory" in layer.costs else {}
    return tuple(
        -(-detail.get(f"{operand}_dram_bytes", 0) // element_bytes)
        for operand in ("ifmap", "filter", "ofmap")
    )


def scale_sim_rows(sim: Simulation) -> dict[str, list[list]]:
    """file name -> rows (LayerID first) of SCALE-Sim's three reports, values as SCALE-Sim's types.

    Per GEMM layer (see the module docstring): Total Cycles is the layer's duration in this simulator (the
    stall-free cycles of `scale_sim_gemm`, plus DRAM stalls under USER bandwidth, minus what grouping saves for
    a grouped sparse convolution); Stall Cycles is that duration minus the Matrix Unit's cycles; Overall Util %
    = MACs·100 / (Total Cycles·R·C). The SRAM columns are SCALE-Sim's (stall-free). The DRAM columns are this
    simulator's memory model in words (element_bytes each) per operand, transferred over the layer's window
    [0, Total Cycles − 1]: their averages are the bandwidth the layer needs (CALC) or uses (USER).
    """
    config = sim.config
    rows, cols, dataflow = config.array.array_height, config.array.array_width, config.array.dataflow
    area = rows * cols
    out = {name: [] for name in SCALE_SIM_HEADERS}
    for index, (layer, op) in enumerate(zip(sim.layers, sim.workload.ops)):
        shapes = gemm_shapes(sim.workload, op)
        if not shapes:
            continue
        view = scale_sim_gemm(shapes, rows, cols, dataflow)
        total = layer.end - layer.start
        stalls = max(0, total - layer.cycles("matrix"))
        macs = sum(m * n * k for m, n, k in shapes)
        out["COMPUTE_REPORT.csv"].append(
            [
                index,
                total,
                stalls,
                (macs * 100) / (total * area) if total else 0.0,
                view.mapping_efficiency * 100,
                view.compute_utilization * 100,
            ]
        )
        dram = _dram_words(layer, config.array.element_bytes)
        window = (0.0, float(total - 1)) if total else (0.0, 0.0)
        span = window[1] - window[0] + 1
        sram = (view.ifmap_reads, view.filter_reads, view.ofmap_writes)
        out["BANDWIDTH_REPORT.csv"].append(
            [index, *(count / total if total else 0.0 for count in sram), *(words / span for words in dram)]
        )
        out["DETAILED_ACCESS_REPORT.csv"].append(
            [
                index,
                float(view.ifmap_start),
                float(view.ifmap_stop),
                view.ifmap_reads,
                float(view.filter_start),
                float(view.filter_stop),
                view.filter_reads,
                float(view.ofmap_start),
                float(view.ofmap_stop),
                view.ofmap_writes,
                *(value for words in dram for value in (*window, words)),
            ]
        )
    return out


def _write_scale_sim(path: pathlib.Path, header: str, rows: list[list]) -> None:
    """One report as SCALE-Sim's simulator.py writes it: ``str`` of each value, ", " between, a trailing ","."""
    with open(path, "w", newline="") as handle:
        handle.write(header + "\n")
        handle.writelines(", ".join(str(value) for value in row) + ",\n" for row in rows)


def _write(path: pathlib.Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_reports(sim: Simulation, folder: str | pathlib.Path, chart: bool = True) -> dict:
    """Writes SCALE-Sim's COMPUTE_REPORT.csv, BANDWIDTH_REPORT.csv and DETAILED_ACCESS_REPORT.csv, this
    simulator's POINTACC_COMPUTE_REPORT.csv, POINTACC_BANDWIDTH_REPORT.csv, POINTACC_ACCESS_REPORT.csv and
    ENERGY_REPORT.csv, summary.json and (chart=True) layers.png into folder; returns the summary."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in scale_sim_rows(sim).items():
        _write_scale_sim(folder / name, SCALE_SIM_HEADERS[name], rows)
    compute, bandwidth, access, energy = [], [], [], []
    for layer in sim.layers:
        duration = layer.end - layer.start
        mxu = layer.costs.get("matrix")
        macs = mxu.actions.get("mac", 0) if mxu else 0
        compute.append(
            [
                layer.name,
                layer.op,
                layer.start,
                layer.end,
                duration,
                layer.cycles("mapping"),
                layer.cycles("matrix"),
                layer.cycles("dram"),
                macs,
                round(mxu.detail.get("utilisation", 0.0), 4) if mxu else 0.0,
            ]
        )
        read = sum(c.dram_read_bytes for c in layer.costs.values())
        write = sum(c.dram_write_bytes for c in layer.costs.values())
        bandwidth.append([layer.name, read, write, round((read + write) / duration, 3) if duration else 0.0])
        mem = layer.costs.get("memory")
        detail = mem.detail if mem else {}
        sram_read = sum(c.actions.get("sram_read", 0) for c in layer.costs.values())
        sram_write = sum(c.actions.get("sram_write", 0) for c in layer.costs.values())
        access.append(
            [
                layer.name,
                sram_read,
                sram_write,
                detail.get("gather_accesses", 0),
                detail.get("cache_misses", 0),
                round(detail.get("hit_rate", 0.0), 4),
                detail.get("line_points", ""),
                detail.get("psum_spill_bytes", 0),
                read,
                write,
            ]
        )
        energy.append(
            [
                layer.name,
                *(round(layer.energy_pj.get(u, 0.0), 3) for u in UNITS),
                round(layer.energy_pj.get("total", 0.0), 3),
            ]
        )
    _write(
        folder / "POINTACC_COMPUTE_REPORT.csv",
        [
            "layer",
            "op",
            "start_cycle",
            "end_cycle",
            "cycles",
            "mapping_cycles",
            "mxu_cycles",
            "dram_cycles",
            "macs",
            "mxu_utilization",
        ],
        compute,
    )
    _write(
        folder / "POINTACC_BANDWIDTH_REPORT.csv",
        ["layer", "dram_read_bytes", "dram_write_bytes", "avg_dram_bytes_per_cycle"],
        bandwidth,
    )
    _write(
        folder / "POINTACC_ACCESS_REPORT.csv",
        [
            "layer",
            "sram_reads",
            "sram_writes",
            "gather_accesses",
            "cache_misses",
            "cache_hit_rate",
            "line_points",
            "psum_spill_bytes",
            "dram_read_bytes",
            "dram_write_bytes",
        ],
        access,
    )
    _write(folder / "ENERGY_REPORT.csv", ["layer", *(f"{u}_pj" for u in UNITS), "total_pj"], energy)
    summary = sim.summary()
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    if chart:
        _chart(sim, folder / "layers.png")
    return summary


MAX_CHART_BARS = 300
"""Layers drawn as labelled bars; longer workloads are drawn as stacked steps without names, so that the
figure's size and drawing time stay bounded (matplotlib refuses images over 2^16 pixels a side)."""


def _chart(sim: Simulation, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer.name for layer in sim.layers]
    bars = len(names) <= MAX_CHART_BARS
    x = range(len(names))
    width = max(8, 0.18 * len(names) + 4) if bars else 16
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, 8), sharex=True)
    for axis, value, ylabel in (
        (top, lambda layer, unit: layer.cycles(unit), "busy cycles"),
        (bottom, lambda layer, unit: layer.energy_pj.get(unit, 0.0) / 1e6, "energy (µJ)"),
    ):
        base = [0.0] * len(names)
        for unit in UNITS:
            heights = [value(layer, unit) for layer in sim.layers]
            stacked = [b + h for b, h in zip(base, heights)]
            if bars:
                axis.bar(x, heights, bottom=base, label=unit, width=0.8)
            else:
                axis.stairs(stacked, baseline=base, fill=True, label=unit)
            base = stacked
        axis.set_ylabel(ylabel)
    top.legend(ncol=4, fontsize=8)
    top.set_title(f"{sim.workload.name} on {sim.config.run_name}: per-layer time and energy by unit")
    if bars:
        bottom.set_xticks(list(x))
        bottom.set_xticklabels(names, rotation=90, fontsize=6)
    else:
        bottom.set_xlabel(f"layer (0 to {len(names) - 1}, in execution order)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
