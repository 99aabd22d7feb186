"""nuScenes for BEVFusion: reads the official JSON tables directly (no nuscenes-devkit needed).

Per sample (``NuScenes[i]``), following BEVFusion's nuscenes_dataset.py / loading.py / ImageAug3D (test time):

* ``points`` float32 (N, 5): x, y, z, intensity, time lag in seconds (0 for the key frame) in the key frame's LiDAR
  frame. Sweeps (previous LIDAR_TOP sample_data, at most ``sweeps``) are moved into the key frame through
  lidar -> ego -> global -> ego -> lidar; their points within 1 m of their sensor are removed (the key frame's
  are kept, as in LoadPointsFromMultiSweeps).
* ``images`` float32 (6, 3, H, W) in the official camera order `CAMERAS`: resized by ``resize`` (0.48 for
  1600 x 900), cropped to ``image_size`` (rows off the top, columns split evenly between the sides: 176 and
  32 + 32 for the defaults), normalised with the ImageNet mean and std.
* ``camera2lidar``, ``camera_intrinsics``, ``lidar2image``, ``img_aug_matrix`` float32 (6, 4, 4);
  ``lidar_aug_matrix`` (identity), ``lidar2ego``, ``ego2global`` float32 (4, 4).
* ``gt_boxes`` float32 (M, 9): BEVFusion's LiDAR-frame boxes (x, y, z, w, l, h, yaw, vx, vy): z is the box
  **bottom** centre (nuScenes centre z - h / 2); (w, l, h) is nuScenes' ``wlh``; nuScenes' yaw of the box in the
  LiDAR frame = -yaw - pi / 2; velocity is the devkit's ``box_velocity`` (from the neighbouring annotations,
  NaN -> 0) rotated into the LiDAR frame. Boxes whose category has no detection class and boxes with
  ``num_lidar_pts + num_radar_pts == 0`` (BEVFusion's ``use_valid_flag``) are dropped.
* ``gt_labels`` int64 (M,): index into `DETECTION_CLASSES` (the label order of BEVFusion's head, which imports it).
* ``sample_token`` str.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "CAMERAS",
    "DETECTION_CLASSES",
    "TABLES",
    "NuScenes",
    "category_to_detection_name",
    "quaternion_matrix",
]

TABLES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
DETECTION_CLASSES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
# nuscenes-devkit eval/detection/utils.py category_to_detection_name.
_DETECTION_NAME = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def category_to_detection_name(category_name: str) -> str | None:
    """Full nuScenes category name -> detection class name, or None (as the devkit's function)."""
    return _DETECTION_NAME.get(category_name)


def quaternion_matrix(q: Sequence[float]) -> np.ndarray:
    """(3, 3) float64 rotation matrix of a quaternion (w, x, y, z)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _pose(record: dict) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = quaternion_matrix(record["rotation"])
    m[:3, 3] = record["translation"]
    return m


class NuScenes(Dataset):
    """Key-frame samples of an official nuScenes root (``root/<version>/*.json`` + ``samples/``, ``sweeps/``).

    Args:
        root: dataset root.
        version: table folder, e.g. "v1.0-mini", "v1.0-trainval".
        split: a key of ``root/splits.json`` (``{"train": [scene names], "val": [...]}``); None: every scene.
        scenes: scene names to use; overrides ``split``.
        sweeps: number of previous LiDAR sweeps merged into each sample (0..9 in BEVFusion's configs).
        image_size: (H, W) after the crop.
        resize: image scale before the crop (BEVFusion test time: 0.48).
    """

    def __init__(
        self,
        root,
        version: str = "v1.0-mini",
        split: str | None = "val",
        scenes: Sequence[str] | None = None,
        sweeps: int = 0,
        image_size: tuple[int, int] = (256, 704),
        resize: float = 0.48,
    ) -> None:
        self.root = Path(root)
        self.version = version
        self.sweeps = int(sweeps)
        self.image_size = tuple(image_size)
        self.resize = float(resize)
        if self.sweeps < 0:
            raise ValueError(f"sweeps must be >= 0, got {sweeps}")
        self.tables = {name: self._load_table(name) for name in TABLES}
        self.index = {name: {r["token"]: r for r in rows} for name, rows in self.tables.items()}
        self._channel = {}
        for cs in self.tables["calibrated_sensor"]:
            self._channel[cs["token"]] = self.get("sensor", cs["sensor_token"])["channel"]
        self._data: dict[str, dict[str, str]] = {}  # sample token -> channel -> key-frame sample_data token
        for sd in self.tables["sample_data"]:
            if sd["is_key_frame"]:
                self._data.setdefault(sd["sample_token"], {})[self._channel[sd["calibrated_sensor_token"]]] = sd[
                    "token"
                ]
        self._anns: dict[str, list[dict]] = {}
        for ann in self.tables["sample_annotation"]:
            self._anns.setdefault(ann["sample_token"], []).append(ann)

        if scenes is None and split is not None:
            scenes = self._split_scenes(split)
        by_name = {s["name"]: s for s in self.tables["scene"]}
        if scenes is None:
            chosen = list(self.tables["scene"])
        else:
            missing = [n for n in scenes if n not in by_name]
            if missing:
                raise ValueError(f"scene(s) {missing} not in {self.root / version / 'scene.json'}")
            chosen = [by_name[n] for n in scenes]
        self.sample_tokens: list[str] = []
        for scene in chosen:
            token = scene["first_sample_token"]
            while token:
                self.sample_tokens.append(token)
                token = self.get("sample", token)["next"]

    # -- tables ---------------------------------------------------------------------------------------------
    def _load_table(self, name: str) -> list[dict]:
        path = self.root / self.version / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"nuScenes table {name!r} missing: {path} does not exist")
        with open(path) as f:
            return json.load(f)

    def get(self, table: str, token: str) -> dict:
        """The record of ``table`` with ``token`` (ValueError naming both when absent)."""
        try:
            return self.index[table][token]
        except KeyError:
            raise ValueError(f"token {token!r} not found in nuScenes table {table!r}") from None

    def _split_scenes(self, split: str) -> list[str]:
        path = self.root / "splits.json"
        if not path.is_file():
            raise ValueError(
                f"split {split!r} needs {path} ({{split: [scene names]}}); or pass scenes=[...] instead"
            )
        with open(path) as f:
            splits = json.load(f)
        if split not in splits:
            raise ValueError(f"split {split!r} not in {path} (has {sorted(splits)})")
        return list(splits[split])

    def _file(self, sd: dict) -> Path:
        path = self.root / sd["filename"]
        if not path.is_file():
            raise ValueError(f"file of sample_data {sd['token']!r} missing: {path} does not exist")
        return path

    def _sensor2global(self, sd: dict) -> tuple[np.ndarray, np.ndarray]:
        """(sensor -> ego, ego -> global) 4 x 4 float64 for one sample_data record."""
        return (
            _pose(self.get("calibrated_sensor", sd["calibrated_sensor_token"])),
            _pose(self.get("ego_pose", sd["ego_pose_token"])),
        )

    # -- dataset --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sample_tokens)

    def __getitem__(self, i: int) -> dict:
        token = self.sample_tokens[i]
        data = self._data.get(token, {})
        for channel in ("LIDAR_TOP", *CAMERAS):
            if channel not in data:
                raise ValueError(f"sample {token!r} has no key-frame sample_data for {channel}")
        lidar_sd = self.get("sample_data", data["LIDAR_TOP"])
        lidar2ego, ego2global = self._sensor2global(lidar_sd)
        lidar2global = ego2global @ lidar2ego
        global2lidar = np.linalg.inv(lidar2global)

        points = self._points(lidar_sd, global2lidar)

        camera2lidar, intrinsics, images = [], [], []
        for channel in CAMERAS:
            sd = self.get("sample_data", data[channel])
            cam2ego, cam_ego2global = self._sensor2global(sd)
            camera2lidar.append(global2lidar @ cam_ego2global @ cam2ego)
            k = np.eye(4)
            k[:3, :3] = np.asarray(self.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
            intrinsics.append(k)
            images.append(self._image(sd))
        camera2lidar = np.stack(camera2lidar)
        intrinsics = np.stack(intrinsics)
        lidar2image = intrinsics @ np.linalg.inv(camera2lidar)
        img_aug = np.stack([self._img_aug_matrix(self.get("sample_data", data[c])) for c in CAMERAS])

        boxes, labels = self._boxes(token, lidar2global)

        def f32(a):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        return {
            "sample_token": token,
            "points": f32(points),
            "images": torch.stack(images),
            "camera2lidar": f32(camera2lidar),
            "camera_intrinsics": f32(intrinsics),
            "lidar2image": f32(lidar2image),
            "img_aug_matrix": f32(img_aug),
            "lidar_aug_matrix": torch.eye(4),
            "lidar2ego": f32(lidar2ego),
            "ego2global": f32(ego2global),
            "gt_boxes": f32(boxes.reshape(-1, 9)),
            "gt_labels": torch.from_numpy(labels.astype(np.int64)),
        }

    def _read_bin(self, sd: dict) -> np.ndarray:
        path = self._file(sd)
        raw = np.fromfile(path, dtype=np.float32)
        if raw.size % 5:
            raise ValueError(f"{path}: {raw.size} floats is not a multiple of 5 (x, y, z, intensity, ring)")
        pts = raw.reshape(-1, 5).astype(np.float64)
        pts[:, 4] = 0.0
        return pts

    def _points(self, lidar_sd: dict, global2lidar: np.ndarray) -> np.ndarray:
        key = self._read_bin(lidar_sd)
        parts = [key]
        sd = lidar_sd
        for _ in range(self.sweeps):
            if not sd["prev"]:
                break
            sd = self.get("sample_data", sd["prev"])
            pts = self._read_bin(sd)
            pts = pts[np.linalg.norm(pts[:, :2], axis=1) >= 1.0]  # remove_close, radius 1 m
            s2e, e2g = self._sensor2global(sd)
            m = global2lidar @ e2g @ s2e
            pts[:, :3] = pts[:, :3] @ m[:3, :3].T + m[:3, 3]
            pts[:, 4] = (lidar_sd["timestamp"] - sd["timestamp"]) * 1e-6
            parts.append(pts)
        return np.concatenate(parts)

    def _aug_params(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """ImageAug3D at test time: resize dims and crop box (bot_pct_lim = (0, 0), centred columns)."""
        fh, fw = self.image_size
        new_w, new_h = int(width * self.resize), int(height * self.resize)
        crop_h = int(new_h) - fh
        crop_w = int(max(0, new_w - fw) / 2)
        return (new_w, new_h), (crop_w, crop_h, crop_w + fw, crop_h + fh)

    def _img_aug_matrix(self, sd: dict) -> np.ndarray:
        width, height = sd["width"], sd["height"]
        if not width or not height:
            width, height = Image.open(self._file(sd)).size
        _, crop = self._aug_params(width, height)
        m = np.eye(4)
        m[0, 0] = m[1, 1] = self.resize
        m[0, 3], m[1, 3] = -crop[0], -crop[1]
        return m

    def _image(self, sd: dict) -> torch.Tensor:
        with Image.open(self._file(sd)) as img:
            img = img.convert("RGB")
            dims, crop = self._aug_params(*img.size)
            img = img.resize(dims).crop(crop)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return ((x - mean) / std).contiguous()

    def _velocity(self, ann: dict, max_time_diff: float = 1.5) -> np.ndarray:
        """nuscenes-devkit NuScenes.box_velocity: global (vx, vy, vz) in m/s, NaN when unknown."""
        has_prev, has_next = bool(ann["prev"]), bool(ann["next"])
        if not has_prev and not has_next:
            return np.full(3, np.nan)
        first = self.get("sample_annotation", ann["prev"]) if has_prev else ann
        last = self.get("sample_annotation", ann["next"]) if has_next else ann
        diff = np.asarray(last["translation"]) - np.asarray(first["translation"])
        dt = 1e-6 * (self.get("sample", last["sample_token"])["timestamp"]
                     - self.get("sample", first["sample_token"])["timestamp"])
        if has_prev and has_next:
            max_time_diff *= 2
        if dt > max_time_diff or dt <= 0:
            return np.full(3, np.nan)
        return diff / dt

    def _boxes(self, sample_token: str, lidar2global: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        global2lidar = np.linalg.inv(lidar2global)
        boxes, labels = [], []
        for ann in self._anns.get(sample_token, []):
            instance = self.get("instance", ann["instance_token"])
            name = category_to_detection_name(self.get("category", instance["category_token"])["name"])
            if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
                continue
            centre = global2lidar[:3, :3] @ np.asarray(ann["translation"]) + global2lidar[:3, 3]
            rot = global2lidar[:3, :3] @ quaternion_matrix(ann["rotation"])
            yaw_nusc = math.atan2(rot[1, 0], rot[0, 0])
            w, l, h = ann["size"]
            vx, vy = np.nan_to_num(self._velocity(ann)[:2], nan=0.0)
            velocity = global2lidar[:3, :3] @ np.array([vx, vy, 0.0])  # vz = 0 first, as BEVFusion's converter
            yaw = -yaw_nusc - math.pi / 2  # not wrapped, as in BEVFusion's infos
            boxes.append([centre[0], centre[1], centre[2] - h / 2, w, l, h, yaw, velocity[0], velocity[1]])
            labels.append(DETECTION_CLASSES.index(name))
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 9), np.asarray(labels, dtype=np.int64)
