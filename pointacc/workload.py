"""Workloads: a JSON-Lines op trace plus an .npz of index arrays, or a SCALE-Sim GEMM topology CSV.

A trace folder holds ``trace.jsonl`` (one op record per line, in execution order) and optionally ``maps.npz``.
Every record has "op" (one of `FIELDS`) and a unique "name", plus the fields listed for its op:

    sort          n                                   sort n keys (coordinates) on the Mapping Unit
    downsample    n_in, n_out, stride                 output sites of a strided layer: sort + dedup
    kmap          map, n_in, n_out, kernel_size, stride, submanifold
                                                      kernel map search; optional coords_in / coords_out
                                                      (npz names of int32 (N, 4) coordinates), dilation
    sparse_conv   map, n_in, n_out, c_in, c_out, kernel_volume
                                                      gather-MatMul-scatter over map "map" (its pairs
                                                      as this op uses them); optional transposed
    linear        n, c_in, c_out                      pointwise layer (fusable with the next linear)
    knn           n_query, n_points, k
    ball_query    n_query, n_points, radius, k
    fps           n_points, n_samples                 farthest point sampling
    gather        n, c                                 gather n rows of c features (e.g. grouping)
    reduce        n_in, n_out, c                      scatter-reduce (max/mean pooling over groups)
    gemm          m, n, k                             a dense GEMM (SCALE-Sim topology rows)

Map "M" in maps.npz: "M.in" int32 (P,), "M.out" int32 (P,) (pairs grouped by offset, ascending output row
within an offset) and "M.sizes" int64 (K,) pairs per offset; coordinates int32 (N, 4) (batch, x, y, z). A record
may carry "layer" (the module name) and "shape" metadata; unknown extra fields are kept.

Everything is validated on loading, and every error names the file (and line) and the field:

- counts (n, n_in, n_out, n_query, n_points, n_samples, k, m) are integers in [0, MAX_ROWS]; channels (c, c_in,
  c_out) in [0, MAX_CHANNELS]; kernel_volume in [1, MAX_KERNEL_VOLUME]; kernel_size, stride and the optional
  dilation one integer or a list of 3, each >= 1 (kernel volume <= MAX_KERNEL_VOLUME, stride and dilation
  <= MAX_STRIDE); radius a finite number >= 0; map, coords_in and coords_out non-empty strings; submanifold and
  transposed booleans (limits in `pointacc.limits`); a kmap's optional kernel_volume is the product of its
  kernel_size.
- arrays: any integer dtype whose values fit (converted to the documented one), nothing else; a map's "in" and
  "out" have equal lengths, its sizes are >= 0 and add up to that length, there is one size per kernel offset
  (kernel_volume, or the product of the kmap's kernel_size), and its rows lie in [0, n_in) and [0, n_out) of
  every op that uses it; coordinates are (n_in, 4) / (n_out, 4) in the 16-bit packable range, unique for a
  kmap's inputs. A sparse_conv's kernel_volume matches the kmap that built its map.
- files: trace lines are UTF-8 JSON of at most MAX_LINE_BYTES; maps.npz is a zip of .npy arrays (no pickled
  objects) of at most MAX_ARRAY_BYTES in all; a corrupt or truncated archive is an error, not a crash.
"""

from __future__ import annotations

import json
import math
import pathlib
import reprlib
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pointacc.limits import (
    MAX_ARRAY_BYTES,
    MAX_CHANNELS,
    MAX_KERNEL_VOLUME,
    MAX_LINE_BYTES,
    MAX_ROWS,
    MAX_STRIDE,
    integer,
    number,
)

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
OPTIONAL: dict[str, tuple[str, ...]] = {
    "downsample": ("coords_in", "coords_out"),
    "kmap": ("coords_in", "coords_out", "dilation", "kernel_volume"),
    "sparse_conv": ("transposed",),
}
"""Optional fields the simulator reads (and so validates) when a record has them; besides these, any record
may name the "map" it waits for (the scheduler reads it)."""
TRACE = "trace.jsonl"
ARRAYS = "maps.npz"

_COUNTS = frozenset({"n", "n_in", "n_out", "n_query", "n_points", "n_samples", "k", "m"})
_CHANNELS = frozenset({"c", "c_in", "c_out"})
_TRIPLES = {"kernel_size": MAX_KERNEL_VOLUME, "stride": MAX_STRIDE, "dilation": MAX_STRIDE}
_NAMES = frozenset({"map", "coords_in", "coords_out"})
_FLAGS = frozenset({"submanifold", "transposed"})
# The engine's packable range (torchsparse._C.BATCH_MAX, COORD_MIN, COORD_MAX; this package imports no torch, so it
# keeps a copy, pinned equal by tests/pointacc/test_constants.py) and the key layout of the core (csrc/pointacc/).
BATCH_MAX = 32767
COORD_MIN = -32768
COORD_MAX = 32767
_PACKABLE = (
    (0, BATCH_MAX),
    (COORD_MIN, COORD_MAX),
    (COORD_MIN, COORD_MAX),
    (COORD_MIN, COORD_MAX),
)  # batch, x, y, z of the core's keys


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


def _volume(kernel_size: int | list[int]) -> int:
    """Offsets of a kernel given as one size or one size per axis."""
    return math.prod(kernel_size) if isinstance(kernel_size, list) else kernel_size**3


def _check_field(key: str, value) -> None:
    """Raises TypeError / ValueError naming `key` when `value` is not what the field holds."""
    if key in _COUNTS:
        integer(key, value, 0, MAX_ROWS)
    elif key in _CHANNELS:
        integer(key, value, 0, MAX_CHANNELS)
    elif key == "kernel_volume":
        integer(key, value, 1, MAX_KERNEL_VOLUME)
    elif key in _TRIPLES:
        if isinstance(value, list) and len(value) != 3:
            raise ValueError(f"{key} must be one integer or a list of 3, got {reprlib.repr(value)}")
        for item in value if isinstance(value, list) else [value]:
            integer(key, item, 1, _TRIPLES[key])
        if key == "kernel_size" and _volume(value) > MAX_KERNEL_VOLUME:
            raise ValueError(
                f"kernel_size {value} gives {_volume(value)} offsets, more than {MAX_KERNEL_VOLUME}"
            )
    elif key == "radius":
        number(key, value, 0, math.inf)
    elif key in _NAMES:
        if not isinstance(value, str) or not value:
            raise TypeError(f"{key} must be a non-empty string, got {reprlib.repr(value)}")
    elif key in _FLAGS and not isinstance(value, bool):
        raise TypeError(f"{key} must be true or false, got {reprlib.repr(value)}")


def check_op(record: object, where: str) -> dict:
    """Validates one op record (fields, limits and relations, see the module docstring).

    Args:
        record: a decoded JSON value.
        where: "file:line" (or another location) that prefixes every error.

    Returns:
        The record itself.

    Raises:
        WorkloadError: naming `where`, the record and the field.
    """
    if not isinstance(record, dict):
        raise WorkloadError(f"{where}: an op record must be a JSON object, got {type(record).__name__}")
    kind = record.get("op")
    if not isinstance(kind, str) or kind not in FIELDS:
        raise WorkloadError(f"{where}: unknown op {reprlib.repr(kind)}; expected one of {', '.join(FIELDS)}")
    if not isinstance(record.get("name"), str) or not record["name"]:
        raise WorkloadError(f"{where}: {kind} record needs a non-empty string 'name'")
    for key in FIELDS[kind]:
        if key not in record:
            raise WorkloadError(f"{where}: {kind} record {record['name']!r} lacks field {key!r}")
    try:
        for key in FIELDS[kind] + OPTIONAL.get(kind, ()) + ("map",):
            if key in record:
                _check_field(key, record[key])
        volume = record.get("kernel_volume")
        if kind == "kmap" and volume is not None and volume != _volume(record["kernel_size"]):
            raise ValueError(
                f"kernel_volume {volume} is not the product of kernel_size {record['kernel_size']}"
            )
    except (TypeError, ValueError) as error:
        raise WorkloadError(f"{where}: {kind} record {record['name']!r}: {error}") from None
    return record


def _read_trace(trace: pathlib.Path) -> tuple[list[dict], list[int], dict]:
    """(ops, their line numbers, meta) of a trace.jsonl."""
    ops, lines, meta, names = [], [], {}, set()
    try:
        with open(trace, "rb") as handle:
            number = 0
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                number += 1
                where = f"{trace}:{number}"
                if len(raw) > MAX_LINE_BYTES:
                    raise WorkloadError(f"{where}: a line is longer than {MAX_LINE_BYTES} bytes")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise WorkloadError(f"{where}: not UTF-8 text (byte {error.start})") from None
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as error:
                    raise WorkloadError(f"{where}: not JSON ({error.msg})") from None
                except (ValueError, RecursionError) as error:  # an int of > 4300 digits, deep nesting
                    raise WorkloadError(f"{where}: not usable JSON ({error})") from None
                if isinstance(record, dict) and record.get("op") == "meta":
                    meta.update({k: v for k, v in record.items() if k != "op"})
                    continue
                record = check_op(record, where)
                if record["name"] in names:
                    raise WorkloadError(f"{where}: op name {record['name']!r} is used twice")
                names.add(record["name"])
                ops.append(record)
                lines.append(number)
    except OSError as error:
        raise WorkloadError(f"cannot read trace {trace}: {error.strerror or error}") from None
    if not ops:
        raise WorkloadError(f"{trace}: no op records")
    return ops, lines, meta


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One .npy member, refused before any allocation when its header promises more than the member holds."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        try:
            shape, fortran, dtype = read_header(member)
        # numpy parses the header text with ast and tokenize, whose errors on bad bytes vary (SyntaxError,
        # tokenize.TokenError, ValueError, ...): every one of them means a corrupt header.
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"corrupt .npy header ({type(error).__name__}: {error})") from None
        if dtype.hasobject:
            raise ValueError("holds Python objects")
        if any(extent < 0 for extent in shape):
            raise ValueError(f"negative shape {shape}")
        size = math.prod(shape) * dtype.itemsize
        if size > info.file_size:
            raise ValueError(f"truncated: the header promises {size} bytes, the member has {info.file_size}")
        data = member.read(size)
        if len(data) != size:
            raise ValueError(f"truncated: {len(data)} of {size} bytes")
        return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _read_arrays(npz: pathlib.Path) -> dict[str, np.ndarray]:
    """The arrays of maps.npz, or WorkloadError naming the file (and the array)."""
    name = "?"
    try:
        with zipfile.ZipFile(npz) as archive:
            members = archive.infolist()
            total = sum(info.file_size for info in members)
            if total > MAX_ARRAY_BYTES:
                raise WorkloadError(
                    f"{npz}: {total} bytes of arrays, more than the {MAX_ARRAY_BYTES} allowed"
                )
            arrays = {}
            for info in members:
                name = info.filename.removesuffix(".npy")
                if info.is_dir() or not info.filename.endswith(".npy"):
                    raise ValueError("not a .npy array")
                arrays[name] = _read_npy(archive, info)
            return arrays
    except WorkloadError:
        raise
    except (OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error) as error:
        raise WorkloadError(f"{npz}: not a readable .npz archive ({error})") from None
    except ValueError as error:  # also numpy's header errors
        raise WorkloadError(f"{npz}: array {name!r}: {error}") from None


def _integers(arrays: dict, name: str, ndim: int, low: int, high: int, dtype, where: str) -> np.ndarray:
    """arrays[name] checked (integer dtype, `ndim` dimensions, values in [low, high]) and converted to `dtype`
    in place."""
    array = arrays[name]
    if array.dtype.kind not in "iu" and array.size:
        raise WorkloadError(f"{where}: array {name!r} must hold integers, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise WorkloadError(f"{where}: array {name!r} must have {ndim} dimension(s), got shape {array.shape}")
    if array.size and (array.min() < low or array.max() > high):
        raise WorkloadError(
            f"{where}: array {name!r} holds values in [{array.min()}, {array.max()}], outside [{low}, {high}]"
        )
    arrays[name] = array.astype(dtype, copy=False)
    return arrays[name]


class _ArrayChecks:
    """Checks of the arrays that ops refer to, each array once, then each op against what they hold."""

    def __init__(self, workload: Workload, npz: pathlib.Path) -> None:
        self.arrays, self.npz = workload.arrays, npz
        self.maps: dict[
            str, tuple[int, int, int]
        ] = {}  # name -> (offsets, 1 + largest in row, 1 + largest out)
        self.coords: dict[str, int] = {}  # name -> rows
        self.unique: set[str] = set()

    def map(self, name: str) -> tuple[int, int, int]:
        if name not in self.maps:
            for suffix in ("in", "out", "sizes"):
                if f"{name}.{suffix}" not in self.arrays:
                    raise WorkloadError(f"{self.npz}: map {name!r} lacks array '{name}.{suffix}'")
            sizes = _integers(self.arrays, f"{name}.sizes", 1, 0, MAX_ROWS, np.int64, str(self.npz))
            if len(sizes) > MAX_KERNEL_VOLUME:
                raise WorkloadError(
                    f"{self.npz}: map {name!r} has {len(sizes)} offsets, over {MAX_KERNEL_VOLUME}"
                )
            ins = _integers(self.arrays, f"{name}.in", 1, 0, MAX_ROWS, np.int32, str(self.npz))
            outs = _integers(self.arrays, f"{name}.out", 1, 0, MAX_ROWS, np.int32, str(self.npz))
            if not len(ins) == len(outs) == int(sizes.sum()):
                raise WorkloadError(
                    f"{self.npz}: map {name!r} has {len(ins)} input rows, {len(outs)} output rows and sizes "
                    f"adding up to {int(sizes.sum())}; all three must be equal"
                )
            self.maps[name] = (
                len(sizes),
                int(ins.max()) + 1 if len(ins) else 0,
                int(outs.max()) + 1 if len(outs) else 0,
            )
        return self.maps[name]

    def coordinates(self, name: str, unique: bool) -> int:
        if name not in self.coords:
            array = _integers(self.arrays, name, 2, COORD_MIN, COORD_MAX, np.int32, str(self.npz))
            if array.shape[1] != 4:
                raise WorkloadError(
                    f"{self.npz}: coordinates {name!r} must be (N, 4), got shape {array.shape}"
                )
            for column, (low, high) in enumerate(_PACKABLE):
                values = array[:, column]
                if len(values) and (values.min() < low or values.max() > high):
                    axis = "bxyz"[column]
                    raise WorkloadError(
                        f"{self.npz}: coordinates {name!r}: {axis} must lie in [{low}, {high}], got "
                        f"[{values.min()}, {values.max()}]"
                    )
            self.coords[name] = len(array)
        if unique and name not in self.unique:
            # The core's packed keys (checked in range above): one sort of int64 instead of rows.
            b, x, y, z = (self.arrays[name][:, i].astype(np.int64) for i in range(4))
            keys = np.sort((b << 48) | ((x - COORD_MIN) << 32) | ((y - COORD_MIN) << 16) | (z - COORD_MIN))
            if (keys[1:] == keys[:-1]).any():
                raise WorkloadError(f"{self.npz}: coordinates {name!r} repeat a row")
            self.unique.add(name)
        return self.coords[name]

    def op(self, op: dict, where: str, kmap_volumes: dict[str, int]) -> None:
        label = f"{where}: {op['op']} {op['name']!r}"
        if "map" in FIELDS[op["op"]]:
            if f"{op['map']}.sizes" not in self.arrays:
                raise WorkloadError(f"{label} refers to map {op['map']!r}, absent from {self.npz.name}")
            offsets, in_rows, out_rows = self.map(op["map"])
            if op["op"] == "sparse_conv":
                volume, source = op["kernel_volume"], "kernel_volume"
            else:
                volume, source = _volume(op["kernel_size"]), f"the volume of kernel_size {op['kernel_size']}"
            if offsets != volume:
                raise WorkloadError(
                    f"{label}: array '{op['map']}.sizes' has {offsets} offsets, {source} is {volume}"
                )
            if op["op"] == "sparse_conv" and kmap_volumes.get(op["map"], volume) != volume:
                raise WorkloadError(
                    f"{label}: kernel_volume {volume} differs from the {kmap_volumes[op['map']]} offsets of the "
                    f"kmap that built map {op['map']!r}"
                )
            for rows, count, side in ((in_rows, op["n_in"], "input"), (out_rows, op["n_out"], "output")):
                if rows > count:
                    field_name = "n_in" if side == "input" else "n_out"
                    raise WorkloadError(
                        f"{label}: map {op['map']!r} has {side} row {rows - 1}, not below {field_name} = {count}"
                    )
        for key, count in (("coords_in", "n_in"), ("coords_out", "n_out")):
            if key in op and key in OPTIONAL.get(op["op"], ()):
                if op[key] not in self.arrays:
                    raise WorkloadError(
                        f"{label} refers to coordinates {op[key]!r}, absent from {self.npz.name}"
                    )
                rows = self.coordinates(op[key], unique=op["op"] == "kmap" and key == "coords_in")
                if rows != op[count]:
                    raise WorkloadError(f"{label}: {key} {op[key]!r} has {rows} rows, {count} is {op[count]}")


def load_workload(path: str | pathlib.Path, topology: str = "auto") -> Workload:
    """Reads a trace folder, a .jsonl file (arrays from a sibling maps.npz) or a SCALE-Sim topology .csv.

    ``topology`` says how a .csv is read: "gemm" (rows ``name, M, N, K``), "conv" (SCALE-Sim's convolution
    rows) or "auto" (each row by its number of fields); see `pointacc.units.matrix.read_topology_csv`.

    Raises:
        WorkloadError: a file that cannot be read or a value that fails the checks of the module docstring;
            the message names the file, the line where there is one, and the field or array.
    """
    path = pathlib.Path(path)
    if path.suffix == ".csv":
        return read_topology(path, topology)
    try:
        trace = path / TRACE if path.is_dir() else path
        if not trace.is_file():
            raise WorkloadError(f"{path}: no trace here (expected a folder with {TRACE}, a .jsonl or a .csv)")
        ops, lines, meta = _read_trace(trace)
        npz = trace.parent / ARRAYS
        if npz.exists() and not npz.is_file():
            raise WorkloadError(f"{npz}: not a file")
        arrays = _read_arrays(npz) if npz.exists() else {}
    except OSError as error:
        raise WorkloadError(f"cannot read {path}: {error.strerror or error}") from None
    workload = Workload(path.stem if path.is_file() else path.name, ops, arrays, meta)
    if arrays:
        checks = _ArrayChecks(workload, npz)
        kmap_volumes = {op["map"]: _volume(op["kernel_size"]) for op in ops if op["op"] == "kmap"}
        for op, line in zip(ops, lines):
            checks.op(op, f"{trace}:{line}", kmap_volumes)
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


def read_topology(path: str | pathlib.Path, kind: str = "gemm") -> Workload:
    """A SCALE-Sim topology CSV as it is (GEMM rows `name, M, N, K,` or conv rows, see
    `pointacc.units.matrix.read_topology_csv`) -> one gemm op per layer."""
    from pointacc.units.matrix import read_topology_csv

    path = pathlib.Path(path)
    try:
        rows = read_topology_csv(path, kind)
    except ValueError as error:
        raise WorkloadError(str(error)) from None
    if not rows:
        raise WorkloadError(f"{path}: no {'GEMM' if kind == 'gemm' else 'layer'} rows")
    return Workload(
        path.stem, [{"op": "gemm", "name": name, "m": m, "n": n, "k": k} for name, m, n, k in rows]
    )
