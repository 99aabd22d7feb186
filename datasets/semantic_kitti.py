"""SemanticKITTI: label maps, scan and label files, SPVNAS-style voxelisation and a Dataset.

Two label maps are provided, and they are not interchangeable:

* ``OFFICIAL``: the semantic-kitti-api ``config/semantic-kitti.yaml`` ``learning_map``: raw id -> 0..19 with
  0 = ignore (unlabeled, outlier, other-structure, other-object); bus and on-rails fold into other-vehicle,
  lane-marking into road, every moving-X into X. Use it with `torchsparse.datasets.semantic_kitti_metrics.iou_official`.
* ``SPVNAS``: the mapping of SPVNAS ``core/datasets/semantic_kitti.py``: 19 kept classes numbered 0..18 in
  ascending raw-id order (the same order as official classes 1..19), everything else -> 255 (ignore),
  including bus, on-rails, lane-marking and their moving variants; moving-X -> X for kept X. Use it with
  `torchsparse.datasets.semantic_kitti_metrics.iou_spvnas`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchsparse.tensor import SparseTensor
from torchsparse.utils import sparse_collate, sparse_quantize

__all__ = [
    "COLOR_MAP_BGR",
    "OFFICIAL",
    "OFFICIAL_CLASS_NAMES",
    "RAW_LABEL_NAMES",
    "SPLITS",
    "SPVNAS",
    "LabelMap",
    "SemanticKITTI",
    "collate_semantic_kitti",
    "get_label_map",
    "read_labels",
    "read_scan",
    "seed_worker",
    "voxelize_scan",
    "write_labels",
]

# Raw ids are < 260; lookup tables span 0..259.
NUM_RAW_IDS = 260

RAW_LABEL_NAMES: Mapping[int, str] = MappingProxyType({
    0: "unlabeled", 1: "outlier", 10: "car", 11: "bicycle", 13: "bus", 15: "motorcycle", 16: "on-rails",
    18: "truck", 20: "other-vehicle", 30: "person", 31: "bicyclist", 32: "motorcyclist", 40: "road",
    44: "parking", 48: "sidewalk", 49: "other-ground", 50: "building", 51: "fence", 52: "other-structure",
    60: "lane-marking", 70: "vegetation", 71: "trunk", 72: "terrain", 80: "pole", 81: "traffic-sign",
    99: "other-object", 252: "moving-car", 253: "moving-bicyclist", 254: "moving-person",
    255: "moving-motorcyclist", 256: "moving-on-rails", 257: "moving-bus", 258: "moving-truck",
    259: "moving-other-vehicle",
})

# Raw id -> (B, G, R) as in the yaml's ``color_map``.
COLOR_MAP_BGR: Mapping[int, tuple[int, int, int]] = MappingProxyType({
    0: (0, 0, 0), 1: (0, 0, 255), 10: (245, 150, 100), 11: (245, 230, 100), 13: (250, 80, 100),
    15: (150, 60, 30), 16: (255, 0, 0), 18: (180, 30, 80), 20: (255, 0, 0), 30: (30, 30, 255),
    31: (200, 40, 255), 32: (90, 30, 150), 40: (255, 0, 255), 44: (255, 150, 255), 48: (75, 0, 75),
    49: (75, 0, 175), 50: (0, 200, 255), 51: (50, 120, 255), 52: (0, 150, 255), 60: (170, 255, 150),
    70: (0, 175, 0), 71: (0, 60, 135), 72: (80, 240, 150), 80: (150, 240, 255), 81: (0, 0, 255),
    99: (255, 255, 50), 252: (245, 150, 100), 253: (200, 40, 255), 254: (30, 30, 255), 255: (90, 30, 150),
    256: (255, 0, 0), 257: (250, 80, 100), 258: (180, 30, 80), 259: (255, 0, 0),
})

# Official ``learning_map``: raw id -> learned class 0..19 (0 = ignore).
_OFFICIAL_LEARNING_MAP: Mapping[int, int] = MappingProxyType({
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10,
    48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0,
    252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
})

# Official ``learning_map_inv``: learned class 0..19 -> raw id.
_OFFICIAL_LEARNING_MAP_INV = (0, 10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81)

OFFICIAL_CLASS_NAMES: tuple[str, ...] = tuple(RAW_LABEL_NAMES[r] for r in _OFFICIAL_LEARNING_MAP_INV[1:])

# The classes SPVNAS keeps; its indices follow ascending raw id, not the order of this set.
_SPVNAS_KEPT = frozenset(OFFICIAL_CLASS_NAMES)

SPLITS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "train": ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"),
    "val": ("08",),
    "test": tuple(f"{s:02d}" for s in range(11, 22)),
})
# Sequences with public ground truth: a missing label file there is an error.
_LABELLED_SEQUENCES = frozenset(SPLITS["train"] + SPLITS["val"])


Array = np.ndarray | Tensor


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class LabelMap:
    """A mapping between raw SemanticKITTI ids and the classes a network predicts.

    Attributes:
        name: "official" or "spvnas".
        num_classes: number of class indices 0..num_classes-1 (for "official" this counts the ignore class 0).
        ignore_index: class given to raw ids that are not learned (0 for "official", 255 for "spvnas").
        raw_to_class: int64 (260,) read-only lookup table, raw id -> class or ignore_index.
        class_to_raw: int64 (num_classes,) read-only, class -> the raw id written for it in predictions.
        class_names: num_classes names, indexed by class.
    """

    name: str
    num_classes: int
    ignore_index: int
    raw_to_class: np.ndarray
    class_to_raw: np.ndarray
    class_names: tuple[str, ...]

    def to_classes(self, raw_ids: Array) -> Array:
        """Maps raw semantic ids to classes.

        Args:
            raw_ids: integer array or tensor of any shape, raw semantic ids (lower 16 bits of a label);
                ids outside 0..259 or without a learned class map to ``ignore_index``.

        Returns:
            int64 array (numpy for numpy input, torch on the input's device for a tensor) of raw_ids' shape.
        """
        table = torch.from_numpy(self.raw_to_class.copy())
        if isinstance(raw_ids, Tensor):
            if raw_ids.is_floating_point() or raw_ids.is_complex() or raw_ids.dtype == torch.bool:
                raise TypeError(f"raw_ids must hold integers, got {raw_ids.dtype}")
            ids = raw_ids.long()
            known = (ids >= 0) & (ids < NUM_RAW_IDS)
            out = table.to(ids.device)[ids.clamp(0, NUM_RAW_IDS - 1)]
            return torch.where(known, out, torch.full_like(out, self.ignore_index))
        ids = np.asarray(raw_ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"raw_ids must hold integers, got {ids.dtype}")
        ids = ids.astype(np.int64)
        known = (ids >= 0) & (ids < NUM_RAW_IDS)
        return np.where(known, self.raw_to_class[np.clip(ids, 0, NUM_RAW_IDS - 1)], self.ignore_index)

    def to_raw(self, classes: Array) -> Array:
        """Maps classes back to raw ids, e.g. to write predictions in the benchmark format.

        Args:
            classes: integer array or tensor of any shape, values in 0..num_classes-1 or ``ignore_index``
                (which becomes raw id 0, "unlabeled").

        Returns:
            int64 raw ids of classes' shape (numpy for numpy input, torch on the input's device for a tensor).
        """
        table = np.append(self.class_to_raw, 0)  # the extra slot holds ignore_index's raw id
        if isinstance(classes, Tensor):
            if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
                raise TypeError(f"classes must hold integers, got {classes.dtype}")
            values = classes.long()
        else:
            values = np.asarray(classes)
            if values.dtype.kind not in "iu":
                raise TypeError(f"classes must hold integers, got {values.dtype}")
            values = torch.from_numpy(values.astype(np.int64))
        ignored = values == self.ignore_index
        valid = ignored | ((values >= 0) & (values < self.num_classes))
        if not bool(valid.all()):
            bad = values[~valid][0].item()
            raise ValueError(
                f"classes must lie in 0..{self.num_classes - 1} or be {self.ignore_index} ({self.name}), "
                f"got {bad}"
            )
        rows = torch.where(ignored, torch.full_like(values, self.num_classes), values)
        out = torch.from_numpy(table).to(values.device)[rows]
        return out if isinstance(classes, Tensor) else out.numpy()

    def colors_rgb(self) -> np.ndarray:
        """The yaml's colour of each class (that of its raw id ``class_to_raw``), as RGB.

        Returns:
            uint8 (num_classes, 3) R, G, B.
        """
        return np.array([COLOR_MAP_BGR[int(r)][::-1] for r in self.class_to_raw], dtype=np.uint8)


def _official_label_map() -> LabelMap:
    table = np.zeros(NUM_RAW_IDS, dtype=np.int64)
    for raw, learned in _OFFICIAL_LEARNING_MAP.items():
        table[raw] = learned
    return LabelMap(
        name="official",
        num_classes=20,
        ignore_index=0,
        raw_to_class=_readonly(table),
        class_to_raw=_readonly(np.array(_OFFICIAL_LEARNING_MAP_INV, dtype=np.int64)),
        class_names=("unlabeled", *OFFICIAL_CLASS_NAMES),
    )


def _spvnas_label_map() -> LabelMap:
    # SPVNAS numbers its kept classes while walking the raw ids upwards; a moving-X id (> 250) takes X's
    # class when X is kept. Ids it does not know are ignored here (SPVNAS's table would give them 0).
    table = np.full(NUM_RAW_IDS, 255, dtype=np.int64)
    class_of_name: dict[str, int] = {}
    for raw in sorted(RAW_LABEL_NAMES):
        name = RAW_LABEL_NAMES[raw]
        if raw > 250:
            static = name.removeprefix("moving-")
            if static in class_of_name:
                table[raw] = class_of_name[static]
        elif name in _SPVNAS_KEPT:
            class_of_name[name] = len(class_of_name)
            table[raw] = class_of_name[name]
    names = tuple(class_of_name)
    raw_of_name = {name: raw for raw, name in RAW_LABEL_NAMES.items() if raw <= 250}
    return LabelMap(
        name="spvnas",
        num_classes=len(names),
        ignore_index=255,
        raw_to_class=_readonly(table),
        class_to_raw=_readonly(np.array([raw_of_name[n] for n in names], dtype=np.int64)),
        class_names=names,
    )


OFFICIAL = _official_label_map()
SPVNAS = _spvnas_label_map()


def get_label_map(name: str | LabelMap) -> LabelMap:
    """Returns the label map called ``name`` ("official" or "spvnas"); a LabelMap is returned as is."""
    if isinstance(name, LabelMap):
        return name
    if not isinstance(name, str):
        raise TypeError(f"label_map must be 'official', 'spvnas' or a LabelMap, got {type(name).__name__}")
    maps = {"official": OFFICIAL, "spvnas": SPVNAS}
    if name.lower() not in maps:
        raise ValueError(f"label_map must be one of {sorted(maps)}, got {name!r}")
    return maps[name.lower()]


def _file_size(path: str | os.PathLike, what: str) -> int:
    if not os.path.isfile(path):
        raise ValueError(f"{what} file {os.fspath(path)!r} does not exist")
    return os.path.getsize(path)


def read_scan(path: str | os.PathLike) -> np.ndarray:
    """Reads a velodyne scan.

    Args:
        path: a ``.bin`` file of float32 (x, y, z, remission) records.

    Returns:
        float32 (N, 4) x, y, z in metres and remission.
    """
    size = _file_size(path, "scan")
    if size % 16:
        raise ValueError(
            f"scan file {os.fspath(path)!r} has {size} bytes, not a multiple of 16 (4 float32 per point)"
        )
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


def read_labels(path: str | os.PathLike, num_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reads a ``.label`` file.

    Args:
        path: a file of uint32 per point, semantic id in the lower 16 bits and instance id in the upper 16.
        num_points: if given, the number of points the file must hold (that of its scan).

    Returns:
        (semantic, instance), both int64 (N,): raw semantic ids in 0..65535 and instance ids in 0..65535.
    """
    size = _file_size(path, "label")
    if size % 4:
        raise ValueError(
            f"label file {os.fspath(path)!r} has {size} bytes, not a multiple of 4 (uint32 per point)"
        )
    if num_points is not None and size // 4 != num_points:
        raise ValueError(
            f"label file {os.fspath(path)!r} holds {size // 4} labels, its scan has {num_points} points"
        )
    labels = np.fromfile(path, dtype=np.uint32)
    return (labels & 0xFFFF).astype(np.int64), (labels >> 16).astype(np.int64)


def _as_label_array(values: Array, name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > 0xFFFF):
        raise ValueError(f"{name} must lie in 0..65535, got {array.min()}..{array.max()}")
    return array.astype(np.uint32)


def write_labels(path: str | os.PathLike, semantic: Array, instance: Array | None = None) -> None:
    """Writes labels in the official ``.label`` format, creating parent folders.

    Args:
        path: destination file.
        semantic: integer (N,) raw semantic ids in 0..65535 (numpy or torch).
        instance: optional integer (N,) instance ids in 0..65535; zeros when omitted.
    """
    sem = _as_label_array(semantic, "semantic")
    inst = np.zeros_like(sem) if instance is None else _as_label_array(instance, "instance")
    if inst.shape != sem.shape:
        raise ValueError(f"instance has shape {inst.shape}, semantic has {sem.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ((inst << 16) | sem).astype(np.uint32).tofile(path)


def _check_points(points: Array) -> np.ndarray:
    array = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    if array.dtype.kind != "f":
        raise TypeError(f"points must be floating point, got {array.dtype}")
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"points must be (N, 4) x, y, z, remission, got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("points must hold at least one point")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array).all(axis=1)).sum())
        raise ValueError(f"points contain NaN or inf ({bad} of {array.shape[0]} rows)")
    return array.astype(np.float32, copy=False)


def _check_voxel_size(voxel_size: float) -> float:
    if isinstance(voxel_size, bool) or not isinstance(voxel_size, (int, float)):
        raise TypeError(f"voxel_size must be a number, got {type(voxel_size).__name__}")
    if not math.isfinite(voxel_size) or voxel_size <= 0:
        raise ValueError(f"voxel_size must be positive and finite, got {voxel_size}")
    return float(voxel_size)


def voxelize_scan(points: Array, voxel_size: float = 0.05) -> tuple[SparseTensor, Tensor, Tensor]:
    """SPVNAS test-time voxelisation: one voxel per occupied cell of round(xyz / voxel_size).

    The division and rounding happen in float32 (half to even), as SPVNAS does with its float32 scan; the
    cell indices are shifted so that their per-axis minimum is 0.

    Args:
        points: float (N, 4) x, y, z, remission, N >= 1, finite (numpy or torch).
        voxel_size: cell edge in metres, > 0.

    Returns:
        (lidar, index, inverse): ``lidar`` a SparseTensor with feats float32 (M, 4) = the (x, y, z,
        remission) of the first point of each voxel, coords int32 (M, 4) = (0, x, y, z) unique and sorted
        lexicographically, spatial_range (1, X, Y, Z); ``index`` int64 (M,) the row of that first point;
        ``inverse`` int64 (N,) the voxel row of every point, so lidar.coords[inverse] is each point's voxel.
    """
    array = _check_points(points)
    size = _check_voxel_size(voxel_size)
    with np.errstate(over="ignore"):
        cells = np.round(array[:, :3] / np.float32(size))
    if not np.isfinite(cells).all() or np.abs(cells).max() >= 2**30:
        raise ValueError(f"points / voxel_size overflows the int32 voxel grid (voxel_size={size})")
    grid = cells.astype(np.int64)
    grid -= grid.min(axis=0)
    voxels, index, inverse = sparse_quantize(torch.from_numpy(grid), return_index=True, return_inverse=True)
    coords = torch.cat([torch.zeros((voxels.shape[0], 1), dtype=torch.int32), voxels], dim=1)
    spatial_range = (1, *(int(v) + 1 for v in voxels.amax(dim=0).tolist()))
    feats = torch.from_numpy(array[index.numpy()])
    return SparseTensor(feats, coords, spatial_range=spatial_range), index, inverse


def _normalise_sequence(sequence: int | str) -> str:
    if isinstance(sequence, bool) or not isinstance(sequence, (int, str)):
        raise TypeError(f"sequences must hold ints or digit strings, got {sequence!r}")
    if isinstance(sequence, str) and not sequence.isdigit():
        raise ValueError(f"sequences must hold ints or digit strings, got {sequence!r}")
    return f"{int(sequence):02d}"


class SemanticKITTI(torch.utils.data.Dataset):
    """SemanticKITTI scans, voxelised as SPVNAS does.

    Reads ``root/sequences/NN/velodyne/XXXXXX.bin`` and, where present,
    ``root/sequences/NN/labels/XXXXXX.label``.
    Sequences 00-10 must have a label file for every scan; other sequences use labels only when their
    ``labels`` folder exists, and then need one for every scan.

    Args:
        root: dataset folder holding ``sequences``.
        split: "train" (00-07, 09, 10), "val" (08) or "test" (11-21); "val" when neither split nor sequences
            is given. Give either split or sequences, not both.
        sequences: explicit sequence numbers (ints or digit strings) instead of a split.
        voxel_size: cell edge in metres.
        label_map: "spvnas", "official" or a LabelMap, the classes of the targets.
        training: SPVNAS's training behaviour: a random rotation about z by theta in [0, 2 pi) and a random
            scale in [0.95, 1.05], xyz -> (xyz @ [[c, s, 0], [-s, c, 0], [0, 0, 1]]) * scale, before
            voxelisation (the features carry the transformed xyz), then at most ``max_voxels`` voxels chosen
            at random. Without it scans are used as they are and never capped.
        max_voxels: voxel cap in training, >= 1.
        seed: seed of the dataset's own numpy Generator, making training samples reproducible.

    Each item is a dict:
        "lidar": SparseTensor as `voxelize_scan` (M voxels, after the cap in training).
        "targets": int64 (M,) class of the first point of each voxel (labelled scans only).
        "targets_mapped": int64 (N,) class of every point (labelled scans only).
        "inverse_map": int64 (N,) voxel row of every point; -1 for points whose voxel the training cap
            dropped.
        "num_points": int N.
        "file_name": str, the ``.bin`` path.

    With DataLoader workers, pass ``worker_init_fn=seed_worker`` so that workers do not repeat each other's
    random draws.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        *,
        sequences: Sequence[int | str] | None = None,
        voxel_size: float = 0.05,
        label_map: str | LabelMap = "spvnas",
        training: bool = False,
        max_voxels: int = 80000,
        seed: int | None = None,
    ) -> None:
        if split is not None and sequences is not None:
            raise ValueError("give either split or sequences, not both")
        if sequences is None:
            split = "val" if split is None else split
            if split not in SPLITS:
                raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
            names = list(SPLITS[split])
        else:
            if isinstance(sequences, (str, int)):
                raise TypeError(f"sequences must be a list of sequence numbers, got {sequences!r}")
            names = [_normalise_sequence(s) for s in sequences]
            if not names:
                raise ValueError("sequences must not be empty")
        if isinstance(max_voxels, bool) or not isinstance(max_voxels, int) or max_voxels < 1:
            raise ValueError(f"max_voxels must be a positive int, got {max_voxels!r}")
        self.root = Path(root)
        self.split = split
        self.sequences = tuple(names)
        self.voxel_size = _check_voxel_size(voxel_size)
        self.label_map = get_label_map(label_map)
        self.training = bool(training)
        self.max_voxels = max_voxels
        self.seed = seed
        self._rng = np.random.default_rng(seed)

        if not self.root.is_dir():
            raise ValueError(f"root {os.fspath(root)!r} is not a folder")
        self.files: list[str] = []
        self.label_files: list[str | None] = []
        for name in self.sequences:
            velodyne = self.root / "sequences" / name / "velodyne"
            if not velodyne.is_dir():
                raise ValueError(f"sequence {name}: folder {os.fspath(velodyne)!r} does not exist")
            scans = sorted(p for p in velodyne.iterdir() if p.suffix == ".bin")
            if not scans:
                raise ValueError(f"sequence {name}: folder {os.fspath(velodyne)!r} holds no .bin scans")
            labels_dir = velodyne.parent / "labels"
            labelled = name in _LABELLED_SEQUENCES or labels_dir.is_dir()
            for scan in scans:
                label = labels_dir / (scan.stem + ".label")
                if labelled and not label.is_file():
                    raise ValueError(
                        f"sequence {name}: scan {os.fspath(scan)!r} has no label file {os.fspath(label)!r}"
                    )
                self.files.append(os.fspath(scan))
                self.label_files.append(os.fspath(label) if labelled else None)

    def __len__(self) -> int:
        return len(self.files)

    def _augment(self, points: np.ndarray) -> np.ndarray:
        theta = self._rng.uniform(0.0, 2.0 * np.pi)
        scale = self._rng.uniform(0.95, 1.05)
        c, s = np.cos(theta), np.sin(theta)
        rotation = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        out = points.copy()
        out[:, :3] = (points[:, :3].astype(np.float64) @ rotation) * scale
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scans")
        file_name = self.files[index]
        points = read_scan(file_name)
        if self.training:
            points = self._augment(points)
        lidar, rows, inverse = voxelize_scan(points, self.voxel_size)
        if self.training and len(lidar) > self.max_voxels:
            keep = torch.from_numpy(np.sort(self._rng.choice(len(lidar), self.max_voxels, replace=False)))
            new_row = torch.full((len(lidar),), -1, dtype=torch.int64)
            new_row[keep] = torch.arange(keep.numel())
            inverse = new_row[inverse]
            rows = rows[keep]
            lidar = SparseTensor(lidar.feats[keep], lidar.coords[keep], spatial_range=lidar.spatial_range)
        sample: dict[str, Any] = {"lidar": lidar}
        label_file = self.label_files[index]
        if label_file is not None:
            semantic, _ = read_labels(label_file, num_points=points.shape[0])
            per_point = torch.from_numpy(self.label_map.to_classes(semantic))
            sample["targets"] = per_point[rows]
            sample["targets_mapped"] = per_point
        sample["inverse_map"] = inverse
        sample["num_points"] = int(points.shape[0])
        sample["file_name"] = file_name
        return sample

    @staticmethod
    def collate_fn(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The DataLoader ``collate_fn`` of this dataset: `collate_semantic_kitti`."""
        return collate_semantic_kitti(samples)


def collate_semantic_kitti(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader collate_fn for `SemanticKITTI` items.

    Args:
        samples: B items with the same keys.

    Returns:
        dict with "lidar" one SparseTensor (sample k has batch index k, rows in sample order), "targets"
        int64 (sum M,) concatenated in the same row order, and every per-point entry ("targets_mapped",
        "inverse_map") and "num_points", "file_name" as lists of B entries.
    """
    if not samples:
        raise ValueError("collate_semantic_kitti needs at least one sample")
    keys = list(samples[0])
    for k, sample in enumerate(samples):
        if list(sample) != keys:
            raise ValueError(f"samples[{k}] has keys {list(sample)}, samples[0] has {keys} (labelled and "
                             "unlabelled scans cannot share a batch)")
    out: dict[str, Any] = {}
    for key in keys:
        values = [sample[key] for sample in samples]
        if key == "lidar":
            out[key] = sparse_collate(values)
        elif key == "targets":
            out[key] = torch.cat(values)
        else:
            out[key] = values
    return out


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` giving each worker's copy of a SemanticKITTI its own random stream.

    The stream derives from the dataset's ``seed`` (fresh entropy when None) and the worker's torch seed,
    which changes every epoch and is reproducible when the DataLoader's ``generator`` is seeded.
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        raise ValueError("seed_worker must run inside a DataLoader worker")
    dataset = info.dataset
    if not isinstance(dataset, SemanticKITTI):
        raise TypeError(f"seed_worker expects a SemanticKITTI dataset, got {type(dataset).__name__}")
    entropy = dataset.seed if dataset.seed is not None else np.random.SeedSequence().entropy
    stream = np.random.SeedSequence(entropy, spawn_key=(info.seed % 2**63, worker_id))
    dataset._rng = np.random.default_rng(stream)
