"""Reports of a simulation: SCALE-Sim-style CSVs, summary.json and a per-layer chart."""

from __future__ import annotations

import csv
import json
import pathlib

from pointacc.simulate import UNITS, Simulation

__all__ = ["write_reports"]


def _write(path: pathlib.Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_reports(sim: Simulation, folder: str | pathlib.Path, chart: bool = True) -> dict:
    """Writes COMPUTE_REPORT.csv, BANDWIDTH_REPORT.csv, DETAILED_ACCESS_REPORT.csv, ENERGY_REPORT.csv,
    summary.json and (chart=True) layers.png into folder; returns the summary."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
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
        folder / "COMPUTE_REPORT.csv",
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
        folder / "BANDWIDTH_REPORT.csv",
        ["layer", "dram_read_bytes", "dram_write_bytes", "avg_dram_bytes_per_cycle"],
        bandwidth,
    )
    _write(
        folder / "DETAILED_ACCESS_REPORT.csv",
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
