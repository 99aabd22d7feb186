"""Runs a workload through the units and schedules them: per-layer and total cycles, traffic and energy.

Scheduling: the Mapping Unit and the compute side (Matrix Unit with the Memory Management Unit and DRAM) are
two resources. With `run.overlap`, a mapping op starts as soon as the Mapping Unit is free (kernel maps for
later layers are built while the Matrix Unit works; kNN waits for the features it ranks), a compute op starts
when both its map and the compute side are ready, and within a compute op DRAM transfers overlap the MACs
(double buffering): its time is max(MXU, DRAM); a mapping op likewise takes max(Mapping Unit, DRAM) when its
keys stream from DRAM. Without overlap everything runs one after another and the cycles of an op's units add.
With ``run.interface_bandwidth = calc`` (SCALE-Sim's InterfaceBandwidth CALC) transfers take no cycles: DRAM
never stalls, and the reports give the bandwidth each layer needs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pointacc import energy as energy_model
from pointacc.config import Config
from pointacc.units import dram, mapping, matrix, memory
from pointacc.units.base import UnitCost
from pointacc.workload import Workload

MAPPING_OPS = ("sort", "downsample", "kmap", "knn", "ball_query", "fps")
UNITS = ("mapping", "matrix", "memory", "dram")


@dataclass
class LayerResult:
    """One op: unit costs, schedule and energy.

    Attributes:
        name, op: the record's name and kind.
        costs: unit name -> UnitCost (only the units the op uses).
        start, end: schedule in cycles.
        energy_pj: unit name -> pJ, plus "total".
    """

    name: str
    op: str
    costs: dict[str, UnitCost]
    start: int = 0
    end: int = 0
    energy_pj: dict[str, float] = field(default_factory=dict)

    def cycles(self, unit: str) -> int:
        return self.costs[unit].cycles if unit in self.costs else 0

    @property
    def dram_bytes(self) -> int:
        return sum(c.dram_bytes for c in self.costs.values())


@dataclass
class Simulation:
    config: Config
    workload: Workload
    layers: list[LayerResult]
    total_cycles: int
    fidelity: str

    def busy(self, unit: str) -> int:
        return sum(layer.cycles(unit) for layer in self.layers)

    def energy_pj(self) -> dict[str, float]:
        out = {unit: sum(layer.energy_pj.get(unit, 0.0) for layer in self.layers) for unit in UNITS}
        out["total"] = sum(out.values())
        return out

    def summary(self) -> dict:
        """Totals for summary.json: cycles, latency, energy, DRAM bytes, time shares, config echo."""
        clock = self.config.array.clock_ghz
        busy = {unit: self.busy(unit) for unit in UNITS}
        macs = sum(
            layer.costs["matrix"].actions.get("mac", 0) for layer in self.layers if "matrix" in layer.costs
        )
        work = {"mapping": busy["mapping"], "data movement": busy["dram"], "MACs": busy["matrix"]}
        total_work = sum(work.values()) or 1
        return {
            "run_name": self.config.run_name,
            "workload": self.workload.name,
            "fidelity": self.fidelity,
            "ops": len(self.layers),
            "total_cycles": self.total_cycles,
            "latency_ms": self.total_cycles / (clock * 1e6),
            "macs": int(macs),
            "dram_read_bytes": sum(c.dram_read_bytes for layer in self.layers for c in layer.costs.values()),
            "dram_write_bytes": sum(
                c.dram_write_bytes for layer in self.layers for c in layer.costs.values()
            ),
            "energy_pj": self.energy_pj(),
            "busy_cycles": busy,
            "time_share": {
                unit: busy[unit] / self.total_cycles if self.total_cycles else 0.0 for unit in UNITS
            },
            "work_share": {name: value / total_work for name, value in work.items()},
            "config": self.config.as_dict(),
        }


def _triple(value) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [int(value)] * 3


def _fusable(config: Config, op: dict, following: dict | None) -> bool:
    """A linear layer hands its output on chip to the next one (same rows, matching widths)."""
    if not config.memory.fusion or following is None or op["op"] != "linear" or following["op"] != "linear":
        return False
    widest = max(op["c_in"], op["c_out"], following["c_out"])
    fits = config.array.array_height * widest * memory.PSUM_BYTES <= config.array.output_buffer_kb * 1024
    return fits and following["n"] == op["n"] and following["c_in"] == op["c_out"]


def _with_dram(config: Config, costs: dict[str, UnitCost]) -> dict[str, UnitCost]:
    read = sum(c.dram_read_bytes for c in costs.values())
    write = sum(c.dram_write_bytes for c in costs.values())
    if read or write:
        transfer = dram.transfer(config, read, write)
        # The bytes are already counted on the unit that caused them; the DRAM entry carries time and energy.
        # With interface_bandwidth = calc (SCALE-Sim's CALC) the interface is as fast as the layer needs: the
        # transfer never holds the array up, so it takes no cycles of its own.
        calc = config.run.interface_bandwidth == "calc"
        detail = {**transfer.detail, "interface_bandwidth": config.run.interface_bandwidth}
        costs["dram"] = UnitCost(0 if calc else transfer.cycles, transfer.actions, detail=detail)
    return costs


def offset_sizes(workload: Workload, op: dict) -> np.ndarray:
    """int64 (kernel volume,) pairs per kernel offset of a sparse_conv op: its map's sizes, or (no map) every
    output meeting one input per offset."""
    if workload.has_pairs(op["map"]):
        return np.asarray(workload.pairs(op["map"])[2], np.int64)
    return np.full(op["kernel_volume"], op["n_out"], np.int64)


def gemm_shapes(workload: Workload, op: dict) -> list[tuple[int, int, int]]:
    """The (M, N, K) GEMMs an op runs on the Matrix Unit, in order (none for ops without a GEMM)."""
    if op["op"] == "gemm":
        return [(op["m"], op["n"], op["k"])]
    if op["op"] == "linear":
        return [(op["n"], op["c_out"], op["c_in"])]
    if op["op"] == "sparse_conv":
        return [(int(m), op["c_out"], op["c_in"]) for m in offset_sizes(workload, op) if m > 0]
    return []


def cost_of(config: Config, workload: Workload, op: dict, index: int, fidelity: str) -> dict[str, UnitCost]:
    """Unit costs of ops[index] (needs the neighbours for fusion)."""
    kind = op["op"]
    ops = workload.ops
    if kind == "sort":
        return {"mapping": mapping.sort(config, op["n"])}
    if kind == "downsample":
        return {"mapping": mapping.downsample(config, op["n_in"])}
    if kind == "kmap":
        coords = None
        if (
            fidelity == "trace"
            and op.get("coords_in") in workload.arrays
            and op.get("coords_out") in workload.arrays
        ):
            coords = workload.arrays[op["coords_in"]], workload.arrays[op["coords_out"]]
        return _with_dram(config, {"mapping": mapping.kmap(config, op, *(coords or (None, None)))})
    if kind in ("knn", "ball_query"):
        return {"mapping": mapping.neighbours(config, op)}
    if kind == "fps":
        return {"mapping": mapping.farthest_point_sampling(config, op["n_points"], op["n_samples"])}
    if kind == "sparse_conv":
        sizes = offset_sizes(workload, op)
        in_rows = out_rows = None
        if fidelity == "trace" and workload.has_pairs(op["map"]):
            in_rows, out_rows, _ = workload.pairs(op["map"])
        costs = {
            "matrix": matrix.sparse_conv(config, sizes.tolist(), op["c_in"], op["c_out"]),
            "memory": memory.sparse_conv_traffic(config, op, sizes, in_rows, out_rows),
        }
        return _with_dram(config, costs)
    if kind == "linear":
        previous = ops[index - 1] if index > 0 else None
        following = ops[index + 1] if index + 1 < len(ops) else None
        fused_in = previous is not None and _fusable(config, previous, op)
        fused_out = _fusable(config, op, following)
        costs = {
            "matrix": matrix.linear(config, op["n"], op["c_in"], op["c_out"]),
            "memory": memory.linear_traffic(config, op, not fused_in, not fused_out),
        }
        return _with_dram(config, costs)
    if kind == "gemm":
        eb = config.array.element_bytes
        m, n, k = op["m"], op["n"], op["k"]
        costs = {
            "matrix": matrix.gemm(config, m, n, k),
            "memory": UnitCost(
                dram_read_bytes=(m * k + k * n) * eb,
                dram_write_bytes=m * n * eb,
                detail={
                    "ifmap_dram_bytes": m * k * eb,
                    "filter_dram_bytes": k * n * eb,
                    "ofmap_dram_bytes": m * n * eb,
                },
            ),
        }
        return _with_dram(config, costs)
    if kind == "gather":
        eb = config.array.element_bytes
        traffic = UnitCost(
            actions=Counter(sram_write=op["n"] * op["c"]), dram_read_bytes=op["n"] * op["c"] * eb
        )
        return _with_dram(config, {"memory": traffic})
    if kind == "reduce":
        lanes = config.array.array_width
        values = op["n_in"] * op["c"]
        return {
            "matrix": UnitCost(
                math.ceil(values / lanes),
                Counter(compare=values, sram_read=values, sram_write=op["n_out"] * op["c"]),
            )
        }
    raise ValueError(f"op {op['name']!r}: no unit handles op kind {kind!r}")


def simulate(
    config: Config, workload: Workload, fidelity: str | None = None, progress: Callable | None = None
) -> Simulation:
    """Simulates every op of the workload in order.

    Args:
        config: the accelerator.
        workload: ops and index arrays.
        fidelity: "trace" (real maps and coordinates through the C++ core, when the workload has them) or
            "analytic" (sizes only); default config.run.fidelity.
        progress: optional wrapper over the op iterator (e.g. tqdm).
    """
    fidelity = fidelity or config.run.fidelity
    if fidelity not in ("trace", "analytic"):
        raise ValueError(f"fidelity must be 'trace' or 'analytic', got {fidelity!r}")
    overlap = config.run.overlap
    map_free = compute_free = 0
    ready: dict[str, int] = {}
    layers = []
    iterator = enumerate(workload.ops)
    if progress is not None:
        iterator = progress(iterator, total=len(workload.ops))
    for index, op in iterator:
        costs = cost_of(config, workload, op, index, fidelity)
        layer = LayerResult(op["name"], op["op"], costs)
        if op["op"] in MAPPING_OPS:
            start = map_free if overlap else max(map_free, compute_free)
            if op["op"] == "knn":
                start = max(start, compute_free)  # ranks the features the previous layer produced
            mapped, transfer = layer.cycles("mapping"), layer.cycles("dram")
            layer.start = start
            layer.end = start + (max(mapped, transfer) if overlap else mapped + transfer)
            map_free = layer.end
            ready[op.get("map", op["name"])] = layer.end
            if not overlap:
                compute_free = layer.end
        else:
            start = max(compute_free, ready.get(op.get("map", ""), 0))
            if not overlap:
                start = max(start, map_free)
            compute = layer.cycles("matrix")
            transfer = layer.cycles("dram")
            duration = max(compute, transfer) if overlap else compute + transfer
            layer.start, layer.end = start, start + duration
            compute_free = layer.end
        layer.energy_pj = energy_model.energy_breakdown(
            config, {unit: cost.actions for unit, cost in costs.items()}
        )
        layers.append(layer)
    return Simulation(config, workload, layers, max(map_free, compute_free), fidelity)
