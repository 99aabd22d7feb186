"""Workloads: a JSON-Lines op trace plus an .npz of index arrays, or a SCALE-Sim GEMM topology CSV.

A trace folder holds ``trace.jsonl`` (one op record per line, in execution order) and optionally ``maps.npz``.
Every record has "op" (one of `FIELDS`) and a unique "name", plus the fields listed for its op:

    sort          n                                   sort n keys (coordinates) on the Mapping Unit
    downsample    n_in, n_out, stride                 output sites of a strided layer: sort + dedup
    kmap          map, n_in, n_out, kernel_size, stride, submanifold
                                                      kernel map search; optional coords_in / coords_out
                                                      (npz names of int32 (N, 4) coordinates) and offsets
    sparse_conv   map, n_in, n_out, c_in, c_out, kernel_volume
                                                      gather-MatMul-scatter over map "map"; optional
                                                      transposed (pairs used swapped)
    linear        n, c_in, c_out                      pointwise layer (fusable with the next linear)
    knn           n_query, n_points, k
    ball_query    n_query, n_points, radius, k
    fps           n_points, n_samples                 farthest point sampling
    gather        n, c                                 gather n rows of c features (e.g. grouping)
    reduce        n_in, n_out, c                      scatter-reduce (max/mean pooling over groups)
    gemm          m, n, k                             a dense GEMM (SCALE-Sim topology rows)

Map "M" in maps.npz: "M.in" int32 (P,), "M.out" int32 (P,) (pairs grouped by offset, ascending output row
within an offset) and "M.sizes" int64 (K,) pairs per offset. A record may carry "layer" (the module name) and
"shape" metadata; unknown extra fields are kept.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

FIELDS: dict[str, tuple[str, ...]] = {
    "sort": ("n",),
    "downsample": ("n_in", "n_out", "stride"),
    "kmap": ("map", "n_in", "n_out", "kernel_size", "stride", "submanifold"),
    "sparse_conv": ("map", "n_in", "n_out", "c_in", "c_out", "kernel_volume"),
    "linear": ("n", "c_in", "c_out"),
    "knn": ("n_query", "n_points", "k"),
    "ball_query": ("n_query", "n_points", "radius", "k"),
    "fps": ("n_points", "n_samples"),
    "gather": ("n", "c"),
    "reduce": ("n_in", "n_out", "c"),
    "gemm": ("m", "n", "k"),
}
TRACE = "trace.jsonl"
ARRAYS = "maps.npz"


class WorkloadError(ValueError):
    """A trace or topology that cannot be used; the message names the file and line."""


@dataclass
class Workload:
    """Ops in execution order and the index arrays they refer to.

    Attributes:
        name: the workload's name (folder or file stem).
        ops: op records (dicts), validated.
        arrays: name -> numpy array (kernel maps, coordinates); may be empty.
        meta: free-form information about the source (model, input, engine version).
    """

    name: str
    ops: list[dict]
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def pairs(self, map_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(in_rows int32 (P,), out_rows int32 (P,), sizes int64 (K,)) of a kernel map."""
        try:
            return (
                self.arrays[f"{map_name}.in"],
                self.arrays[f"{map_name}.out"],
                self.arrays[f"{map_name}.sizes"],
            )
        except KeyError:
            raise WorkloadError(f"workload {self.name!r} has no index arrays for map {map_name!r}") from None

    def has_pairs(self, map_name: str) -> bool:
        return f"{map_name}.sizes" in self.arrays


def check_op(record: object, where: str) -> dict:
    """Validates one op record; `where` (file:line) prefixes every error."""
    if not isinstance(record, dict):
        raise WorkloadError(f"{where}: an op record must be a JSON object, got {type(record).__name__}")
    kind = record.get("op")
    if kind not in FIELDS:
        raise WorkloadError(f"{where}: unknown op {kind!r}; expected one of {', '.join(FIELDS)}")
    if not isinstance(record.get("name"), str) or not record["name"]:
        raise WorkloadError(f"{where}: {kind} record needs a non-empty string 'name'")
    for key in FIELDS[kind]:
        if key not in record:
            raise WorkloadError(f"{where}: {kind} record {record['name']!r} lacks field {key!r}")
        value = record[key]
        if key in ("map", "submanifold"):
            continue
        values = value if isinstance(value, list) else [value]
        if not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values
        ):
            raise WorkloadError(
                f"{where}: {kind} record {record['name']!r}: {key} must be >= 0, got {value!r}"
            )
    return record


def load_workload(path: str | pathlib.Path) -> Workload:
    """Reads a trace folder, a .jsonl file (arrays from a sibling maps.npz) or a SCALE-Sim topology .csv."""
    path = pathlib.Path(path)
    if path.suffix == ".csv":
        return read_topology(path)
    trace = path / TRACE if path.is_dir() else path
    if not trace.is_file():
        raise WorkloadError(f"no trace at {path} (expected a folder with {TRACE}, a .jsonl or a .csv)")
    ops, meta, names = [], {}, set()
    with open(trace) as handle:
        for number, line in enumerate(handle, 1):
            where = f"{trace}:{number}"
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise WorkloadError(f"{where}: not JSON ({error.msg})") from None
            if isinstance(record, dict) and record.get("op") == "meta":
                meta.update({k: v for k, v in record.items() if k != "op"})
                continue
            record = check_op(record, where)
            if record["name"] in names:
                raise WorkloadError(f"{where}: op name {record['name']!r} is used twice")
            names.add(record["name"])
            ops.append(record)
    arrays: Mapping[str, np.ndarray] = {}
    npz = trace.parent / ARRAYS
    if npz.is_file():
        try:
            with np.load(npz) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as error:
            raise WorkloadError(f"{npz}: cannot read index arrays ({error})") from None
    workload = Workload(path.stem if path.is_file() else path.name, ops, arrays, meta)
    for op in ops:
        for key in ("map",):
            if key in op and arrays and not workload.has_pairs(op[key]):
                raise WorkloadError(
                    f"{trace}: op {op['name']!r} refers to map {op[key]!r}, absent from {npz.name}"
                )
    return workload


def write_workload(
    folder: str | pathlib.Path,
    ops: Sequence[dict],
    arrays: Mapping[str, np.ndarray] | None = None,
    meta: dict | None = None,
) -> pathlib.Path:
    """Writes trace.jsonl (and maps.npz when arrays are given) into folder; returns the folder."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / TRACE, "w") as handle:
        if meta:
            handle.write(json.dumps({"op": "meta", **meta}) + "\n")
        for number, op in enumerate(ops, 1):
            check_op(op, f"op {number}")
            handle.write(json.dumps(op) + "\n")
    if arrays:
        np.savez_compressed(folder / ARRAYS, **arrays)
    return folder


def read_topology(path: str | pathlib.Path) -> Workload:
    """A SCALE-Sim GEMM topology CSV as it is: a header, then rows `name, M, N, K,` -> gemm ops."""
    from pointacc.units.matrix import read_topology_csv

    path = pathlib.Path(path)
    try:
        rows = read_topology_csv(path)
    except ValueError as error:
        raise WorkloadError(str(error)) from None
    if not rows:
        raise WorkloadError(f"{path}: no GEMM rows")
    return Workload(
        path.stem, [{"op": "gemm", "name": name, "m": m, "n": n, "k": k} for name, m, n, k in rows]
    )
