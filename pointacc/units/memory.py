"""Memory Management Unit: buffers, tiling, the gathered-input cache, and temporal fusion of pointwise layers.

Traffic model (ours, after the mechanisms PointAcc publishes):
- Gather. Input features are read through a cache whose line holds `line_points` consecutive input rows
  (line = line_points x C_in x element bytes; capacity cache_kb). Trace fidelity simulates the cache (LRU,
  FIFO or direct-mapped, `ways`) over the real stream of input rows in the chosen gather order: "output"
  visits each output's neighbours in offset order, "offset" streams offset after offset. DRAM reads are
  misses x line bytes. Without caching every gathered row comes from DRAM. Configurable caching
  (`reconfigure`) picks, per layer, the line size in {1, 2, 4, 8, 16} points with the least DRAM traffic.
  Analytic fidelity assumes compulsory misses when the whole input fits, else one miss per access for
  offset-major, and for output-major the compulsory misses plus the share (1 - cache / input) of the reuse.
- Partial sums. Output-major order finishes each output before the next: partial sums stay in the array.
  Offset-major accumulates all outputs across offsets: when n_out x C_out x 4 bytes exceed the output buffer,
  the excess is spilled and reloaded once per further offset.
- Weights are read once when they fit the weight buffer, else once per output tile.
- Maps: the pairs (8 bytes each) stay on chip when they fit the map buffer, else are written by the Mapping
  Unit and read back by the gather (2 x 8 bytes per pair).
- Fusion. A chain of `linear` layers over the same rows keeps its intermediates on chip when the tile of
  rows x widest layer fits the output buffer; unfused, each intermediate is written and read back.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from pointacc import _core
from pointacc.config import Config
from pointacc.units.base import UnitCost

__all__ = ["LINE_CHOICES", "gather", "linear_traffic", "sparse_conv_traffic"]

LINE_CHOICES = (1, 2, 4, 8, 16)
PSUM_BYTES = 4  # partial sums are kept in 32 bits


def _cache_geometry(config: Config, line_bytes: int) -> tuple[int, int]:
    lines = max(1, int(config.memory.cache_kb * 1024) // line_bytes)
    ways = 1 if config.memory.policy == "direct" else min(config.memory.ways, lines)
    return max(1, lines // ways), ways


def gather(
    config: Config,
    n_in: int,
    c_in: int,
    in_rows: np.ndarray | None = None,
    out_rows: np.ndarray | None = None,
    n_out: int = 0,
    line_points: int | None = None,
) -> UnitCost:
    """DRAM and SRAM traffic of gathering input rows for one layer.

    Args:
        n_in, c_in: input rows and channels.
        in_rows, out_rows: int32 (P,) pairs grouped by offset (trace fidelity); None for analytic.
        n_out: output rows (needed with pairs).
        line_points: points per cache line; default config.memory.line_points.
    """
    eb = config.array.element_bytes
    row_bytes = c_in * eb
    accesses = len(in_rows) if in_rows is not None else n_in
    if row_bytes == 0:  # no channels: nothing to move, and no line size to divide the cache by
        return UnitCost(detail={"gather_accesses": accesses, "cache_misses": 0, "hit_rate": 1.0})
    if not config.memory.caching:
        return UnitCost(
            actions=Counter(sram_write=accesses * c_in, sram_read=accesses * c_in),
            dram_read_bytes=accesses * row_bytes,
            detail={"gather_accesses": accesses, "hit_rate": 0.0},
        )
    if line_points is None and config.memory.reconfigure and in_rows is not None:
        costs = [gather(config, n_in, c_in, in_rows, out_rows, n_out, p) for p in LINE_CHOICES]
        best = min(costs, key=lambda c: (c.dram_read_bytes, -c.detail["line_points"]))
        best.detail["reconfigured"] = True
        return best
    points = line_points or config.memory.line_points
    line_bytes = points * row_bytes
    sets, ways = _cache_geometry(config, line_bytes)
    compulsory = math.ceil(n_in / points)
    if in_rows is not None:
        _, hits = _core.gather_cache(
            np.ascontiguousarray(in_rows, np.int32),
            np.ascontiguousarray(out_rows, np.int32),
            int(n_out),
            config.memory.gather_order,
            points,
            sets,
            ways,
            config.memory.policy,
        )
        misses = accesses - hits
    else:
        capacity = sets * ways
        if compulsory <= capacity:
            misses = compulsory
        elif config.memory.gather_order == "offset":
            misses = accesses
        else:  # the reuse that the cache can no longer hold turns into misses
            misses = compulsory + math.ceil((accesses - compulsory) * (1 - capacity / compulsory))
    return UnitCost(
        actions=Counter(sram_read=accesses * c_in, sram_write=misses * points * c_in),
        dram_read_bytes=misses * line_bytes,
        detail={
            "gather_accesses": accesses,
            "cache_misses": int(misses),
            "line_points": points,
            "hit_rate": 1 - misses / accesses if accesses else 1.0,
            "cache_sets": sets,
            "cache_ways": ways,
        },
    )


def sparse_conv_traffic(config: Config, op: dict, sizes: np.ndarray, in_rows=None, out_rows=None) -> UnitCost:
    """All off-chip and buffer traffic of one sparse convolution except the MXU's own operand reads."""
    eb = config.array.element_bytes
    n_in, n_out, c_in, c_out = op["n_in"], op["n_out"], op["c_in"], op["c_out"]
    volume = int(np.count_nonzero(sizes)) or 1
    pairs = int(sizes.sum())
    cost = gather(config, n_in, c_in, in_rows, out_rows, n_out)
    out_bytes = n_out * c_out * PSUM_BYTES
    out_buffer = int(config.array.output_buffer_kb * 1024)
    tiles = max(1, math.ceil(out_bytes / out_buffer))
    weight_bytes = sizes.shape[0] * c_in * c_out * eb
    weight_reads = 1 if weight_bytes <= config.array.weight_buffer_kb * 1024 else tiles
    spill = 0
    if config.memory.gather_order == "offset" and out_bytes > out_buffer:
        spill = (out_bytes - out_buffer) * (volume - 1)
    map_bytes = 0 if pairs * 8 <= config.memory.map_buffer_kb * 1024 else pairs * 8
    cost = cost + UnitCost(
        actions=Counter(sram_write=n_out * c_out, sram_read=weight_reads * weight_bytes // eb),
        dram_read_bytes=weight_reads * weight_bytes + spill + map_bytes,
        dram_write_bytes=n_out * c_out * eb + spill + map_bytes,
        detail={
            "output_tiles": tiles,
            "weight_reads": weight_reads,
            "psum_spill_bytes": 2 * spill,
            "map_bytes_off_chip": 2 * map_bytes,
            "filter_dram_bytes": weight_reads * weight_bytes,
            "ofmap_dram_bytes": n_out * c_out * eb,
        },
    )
    cost.detail["ifmap_dram_bytes"] = cost.dram_read_bytes - weight_reads * weight_bytes - spill - map_bytes
    return cost


def linear_traffic(config: Config, op: dict, read_input: bool, write_output: bool) -> UnitCost:
    """Traffic of a pointwise layer; fused neighbours skip the input read or the output write."""
    eb = config.array.element_bytes
    n, c_in, c_out = op["n"], op["c_in"], op["c_out"]
    weight_bytes = c_in * c_out * eb
    return UnitCost(
        actions=Counter(sram_read=n * c_in + c_in * c_out, sram_write=n * c_out),
        dram_read_bytes=(n * c_in * eb if read_input else 0) + weight_bytes,
        dram_write_bytes=n * c_out * eb if write_output else 0,
        detail={
            "input_from_dram": read_input,
            "output_to_dram": write_output,
            "ifmap_dram_bytes": n * c_in * eb if read_input else 0,
            "filter_dram_bytes": weight_bytes,
            "ofmap_dram_bytes": n * c_out * eb if write_output else 0,
        },
    )
