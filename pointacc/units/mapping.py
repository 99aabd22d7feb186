"""Mapping Unit: the ranking-based (sort / merge) unit that performs every mapping op.

Cycle model (ours; PointAcc publishes the mechanism, not these numbers):
- sort(n): a bitonic sorter of width W_s sorts blocks of W_s keys, pipelined at one block per cycle after a
  depth of log2(W_s)(log2(W_s)+1)/2 stages; then ceil(log2(ceil(n / W_s))) merge passes over all keys, each
  taking ceil(n / W_m) cycles on a merger of width W_m.
- kernel map: per searched offset, one merge of the sorted input keys with the sorted, shifted output keys,
  ceil(steps / W_m) cycles, where steps = the comparisons of the merge (trace fidelity: counted by the C++
  core on the real coordinates; analytic: n_in + n_out). With submanifold symmetry only (K + 1) / 2 offsets
  are searched; the others are their mirrors (pairs swapped). Keys that do not fit the coordinate buffer are
  streamed from DRAM once per searched offset.
- downsample: sort(n_in) + ceil(n_in / W_m) to drop duplicates.
- kNN / ball query: D distance units compute n_query x n_points distances, ceil(n_q n_p / D) cycles; kNN then
  ranks each query's distances through the sorter (n_q ceil(n_p / W_s) cycles); ball query keeps the first k
  inside the radius with the merger (ceil(n_q n_p / W_m)).
- farthest point sampling: sequential over samples: n_samples (ceil(n_points / D) + log2(D)) cycles.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from pointacc import _core
from pointacc.config import Config
from pointacc.units.base import UnitCost

__all__ = [
    "downsample",
    "farthest_point_sampling",
    "kernel_map",
    "kernel_offsets",
    "kmap",
    "neighbours",
    "sort",
]


KEY_BYTES = 8  # one packed coordinate key


def _log2(n: float) -> int:
    return max(0, math.ceil(math.log2(n))) if n > 1 else 0


def sort(config: Config, n: int) -> UnitCost:
    """Sorting n keys on the bitonic sorter and merger."""
    ws, wm = config.mapping.sorter_width, config.mapping.merger_width
    if n <= 0:
        return UnitCost()
    blocks = math.ceil(n / ws)
    depth = _log2(ws) * (_log2(ws) + 1) // 2
    passes = _log2(blocks)
    cycles = blocks + depth + passes * math.ceil(n / wm)
    compares = blocks * (ws // 2) * depth + passes * n
    return UnitCost(
        cycles, Counter(compare=compares), detail={"blocks": blocks, "depth": depth, "merge_passes": passes}
    )


def kernel_offsets(kernel_size: Sequence[int], dilation: Sequence[int] = (1, 1, 1)) -> np.ndarray:
    """int32 (K, 3) offsets in the engine's order: odd kernels centred with x fastest, even ones from 0 with z
    fastest (TorchSparse's order; a copy of torchsparse.ops.kernel_indices, since this package imports no torch,
    pinned equal by tests/pointacc/test_constants.py)."""
    volume = math.prod(kernel_size)
    ranges = [
        [(i - (k // 2 if volume % 2 else 0)) * d for i in range(k)] for k, d in zip(kernel_size, dilation)
    ]
    if volume % 2:
        rows = [(x, y, z) for z in ranges[2] for y in ranges[1] for x in ranges[0]]
    else:
        rows = [(x, y, z) for x, y, z in itertools.product(*ranges)]
    return np.asarray(rows, dtype=np.int32).reshape(-1, 3)


def kernel_map(
    in_coords: np.ndarray,
    out_coords: np.ndarray,
    kernel_size: Sequence[int],
    stride: Sequence[int] = (1, 1, 1),
    dilation: Sequence[int] = (1, 1, 1),
):
    """The Mapping Unit's pairs: input i meets output o at offset k when in_coords[i] = stride * out[o] + d_k.

    Args:
        in_coords, out_coords: int32 (N, 4) / (M, 4) compact (batch, x, y, z) coordinates, inputs unique.
        kernel_size, stride, dilation: per axis.

    Returns:
        in_rows int32 (P,), out_rows int32 (P,) grouped by offset, sizes int64 (K,), steps int64 (K,) merge
        comparisons per offset.
    """
    offsets = kernel_offsets(kernel_size, dilation)
    return _core.kernel_map(
        np.ascontiguousarray(in_coords, np.int32),
        np.ascontiguousarray(out_coords, np.int32),
        offsets,
        np.asarray(stride, np.int64),
    )


def kmap(
    config: Config, op: dict, in_coords: np.ndarray | None = None, out_coords: np.ndarray | None = None
) -> UnitCost:
    """A kernel-map op: merges per offset (real comparisons when coordinates are given)."""
    kernel_size = op["kernel_size"] if isinstance(op["kernel_size"], list) else [op["kernel_size"]] * 3
    volume = math.prod(kernel_size)
    symmetric = bool(op["submanifold"]) and config.mapping.symmetric and volume % 2 == 1
    searched = (volume + 1) // 2 if symmetric else volume
    detail = {"offsets": volume, "searched_offsets": searched}
    if in_coords is not None and out_coords is not None:
        stride, dilation = (
            value if isinstance(value, list) else [value] * 3
            for value in (op["stride"], op.get("dilation", 1))
        )
        _, _, sizes, steps = kernel_map(in_coords, out_coords, kernel_size, stride, dilation)
        per_offset = steps[:searched] if symmetric else steps
        detail.update(pairs=int(sizes.sum()), fidelity="trace")
    else:
        per_offset = np.full(searched, op["n_in"] + op["n_out"], dtype=np.int64)
        detail.update(fidelity="analytic")
    wm = config.mapping.merger_width
    cycles = int(sum(math.ceil(int(s) / wm) for s in per_offset))
    detail["merge_steps"] = int(per_offset.sum())
    # Both key lists stay in the coordinate buffer when they fit; otherwise every searched offset streams them
    # from DRAM again.
    key_bytes = (op["n_in"] + op["n_out"]) * KEY_BYTES
    spilled = key_bytes > config.memory.coord_buffer_kb * 1024
    detail["keys_on_chip"] = not spilled
    return UnitCost(cycles, Counter(compare=int(per_offset.sum())),
                    dram_read_bytes=searched * key_bytes if spilled else 0, detail=detail)


def downsample(config: Config, n_in: int) -> UnitCost:
    """Output sites of a strided layer: sort the coarsened keys, then drop duplicates in one merger pass."""
    cost = sort(config, n_in)
    dedup = math.ceil(n_in / config.mapping.merger_width)
    return cost + UnitCost(dedup, Counter(compare=n_in), detail={"dedup_cycles": dedup})


def neighbours(config: Config, op: dict) -> UnitCost:
    """kNN or ball query: distances on the distance units, then ranking (kNN) or radius selection."""
    nq, npts = op["n_query"], op["n_points"]
    d, ws, wm = config.mapping.distance_units, config.mapping.sorter_width, config.mapping.merger_width
    distances = nq * npts
    cycles = math.ceil(distances / d)
    if op["op"] == "knn":
        rank = nq * math.ceil(npts / ws)
        compares = distances * max(1, _log2(op["k"]))
    else:
        rank = math.ceil(distances / wm)
        compares = distances
    return UnitCost(
        cycles + rank,
        Counter(distance=distances, compare=compares),
        detail={"distance_cycles": cycles, "rank_cycles": rank},
    )


def farthest_point_sampling(config: Config, n_points: int, n_samples: int) -> UnitCost:
    """Sequential sampling: every new sample needs all distances to it and a max-reduction."""
    d = config.mapping.distance_units
    per_sample = math.ceil(n_points / d) + _log2(d)
    return UnitCost(
        n_samples * per_sample,
        Counter(distance=n_points * n_samples, compare=n_points * n_samples),
        detail={"cycles_per_sample": per_sample},
    )
