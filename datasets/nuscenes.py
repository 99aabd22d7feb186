"""nuScenes for BEVFusion: reads the official JSON tables directly (no nuscenes-devkit needed).

Per sample (``NuScenes[i]``), following BEVFusion's nuscenes_dataset.py / loading.py / ImageAug3D (test time):

* ``points`` float32 (N, 5): x, y, z, intensity, time lag in seconds (0 for the key frame) in the key frame's LiDAR
  frame. Sweeps (previous LIDAR_TOP sample_data, at most ``sweeps``) are moved into the key frame through
  lidar -> ego -> global -> ego -> lidar; their points with |x| < 1 m and |y| < 1 m of their sensor are removed (the key frame's
  are kept, as in LoadPointsFromMultiSweeps).
* ``images`` float32 (6, 3, H, W) in the official camera order `CAMERAS`: resized by ``resize`` (0.48 for
  1600 x 900), cropped to ``image_size`` (rows off the top, columns split evenly between the sides: 176 and
  32 + 32 for the defaults), normalised with the ImageNet mean and std.
* ``camera2lidar``, ``camera_intrinsics``, ``lidar2image``, ``img_aug_matrix`` float32 (6, 4, 4).
  ``images`` and these four are absent with ``cameras=False`` (LiDAR-only models, LiDAR-only databases).
* ``lidar_aug_matrix`` (identity), ``lidar2ego``, ``ego2global`` float32 (4, 4).
* ``gt_boxes`` float32 (M, 9): BEVFusion's LiDAR-frame boxes (x, y, z, w, l, h, yaw, vx, vy): z is the box
  **bottom** centre (nuScenes centre z - h / 2); (w, l, h) is nuScenes' ``wlh``; nuScenes' yaw of the box in the
  LiDAR frame = -yaw - pi / 2; velocity is the devkit's ``box_velocity`` (from the neighbouring annotations,
  NaN -> 0) rotated into the LiDAR frame. Boxes whose category has no detection class and boxes with
  ``num_lidar_pts + num_radar_pts == 0`` (BEVFusion's ``use_valid_flag``) are dropped.
* ``gt_labels`` int64 (M,): index into `DETECTION_CLASSES` (the label order of BEVFusion's head, which imports it).
* ``gt_attributes`` list of M str: each box's own annotated attribute name ("" when it has none), as the
  devkit's ground truth carries it.
* ``sample_token`` str.

`collate_nuscenes` batches samples into BEVFusion's forward arguments; `detection_results` writes a sample's boxes
in the nuScenes submission format (global frame, nuScenes yaw; attributes by BEVFusion's velocity rule unless
given, e.g. the ground truth's own).

Splits resolve as nuscenes-devkit's detection evaluation resolves them: a predefined split name (mini_val,
val, ... with the devkit installed) selects those of its scenes that the database holds, any other name the
scenes listed for it in ``<root>/<version>/splits.json`` (again those present).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from torchsparse.classes import NUSCENES_DETECTION_CLASSES

__all__ = [
    "CAMERAS",
    "DEFAULT_ATTRIBUTE",
    "DETECTION_CLASSES",
    "MODEL_INPUTS",
    "RESULTS_META",
    "TABLES",
    "VERSION",
    "NuScenes",
    "box_attribute",
    "category_to_detection_name",
    "collate_nuscenes",
    "custom_splits",
    "default_split",
    "detection_results",
    "matrix_quaternion",
    "predefined_splits",
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
VERSION = "v1.0-mini"  # the table folder of the synthetic set and the loaders' default
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
DETECTION_CLASSES = NUSCENES_DETECTION_CLASSES  # label order; the model heads predict in it too
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
# The arguments of BEVFusion.forward that `collate_nuscenes` fills.
MODEL_INPUTS = ("img", "points", "camera2lidar", "camera_intrinsics", "img_aug_matrix", "lidar2image",
                "lidar_aug_matrix")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_split(version: str) -> str:
    """The evaluation split of an official nuScenes version: "mini_val" (v1.0-mini), "val" (v1.0-trainval),
    "test" (v1.0-test); the devkit ties these splits to versions by the same suffixes.

    Raises:
        ValueError: any other version (a custom database has no default split: name one of its splits.json).
    """
    for suffix, split in (("mini", "mini_val"), ("trainval", "val"), ("test", "test")):
        if version.endswith(suffix):
            return split
    raise ValueError(
        f"{version!r} is not an official nuScenes version (v1.0-mini, v1.0-trainval, v1.0-test), so it has no "
        "default split; name a split of its splits.json"
    )


def predefined_splits() -> dict[str, list[str]]:
    """nuscenes-devkit's predefined splits ({name: scene names}); empty without the devkit."""
    try:
        from nuscenes.utils.splits import create_splits_scenes
    except ImportError:
        return {}
    return create_splits_scenes()


def custom_splits(root, version: str) -> dict[str, list[str]]:
    """The custom splits of ``<root>/<version>/splits.json`` ({name: scene names}); empty without the file.

    Raises:
        ValueError: the file is not JSON or not a mapping of names to lists of scene names.
    """
    path = Path(root) / version / "splits.json"
    if not path.is_file():
        return {}
    try:
        splits = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    if not isinstance(splits, dict) or not all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in splits.values()
    ):
        raise ValueError(f"{path} must map split names to lists of scene names")
    return splits


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


def matrix_quaternion(r: np.ndarray) -> list[float]:
    """Rotation matrix -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    t = np.trace(r)
    if t > 0:
        s = math.sqrt(t + 1.0) * 2
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
        q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] > r[2, 2]:
        s = math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q = q if q[0] >= 0 else -q
    return [float(v) for v in q / np.linalg.norm(q)]


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
        split: a split name, resolved as the devkit's detection evaluation does: with nuscenes-devkit
            installed, one of its predefined splits ("mini_val", "val", ...; see `default_split`) takes its
            scenes from the devkit; any other name (or any name without the devkit) is a key of
            ``root/<version>/splits.json`` (the devkit's custom-split file, ``{name: [scene names]}``). Scenes
            of the split that the database lacks are skipped, as the devkit skips them (an error only when
            none is present). None: every scene.
        scenes: scene names to use, each of which must be in the database; overrides ``split``.
        sweeps: number of previous LiDAR sweeps merged into each sample (0..9 in BEVFusion's configs).
        image_size: (H, W) after the crop.
        resize: image scale before the crop (BEVFusion test time: 0.48).
        cameras: read the six cameras (images and calibration). False reads LiDAR and annotations only, for
            LiDAR-only models and databases without camera records or files.
    """

    def __init__(
        self,
        root,
        version: str = VERSION,
        split: str | None = None,
        scenes: Sequence[str] | None = None,
        sweeps: int = 0,
        image_size: tuple[int, int] = (256, 704),
        resize: float = 0.48,
        cameras: bool = True,
    ) -> None:
        self.root = Path(root)
        self.version = version
        self.cameras = bool(cameras)
        self.sweeps = int(sweeps)
        self.image_size = tuple(image_size)
        self.resize = float(resize)
        if self.sweeps < 0:
            raise ValueError(f"sweeps must be >= 0, got {sweeps}")
        if not (self.root / version).is_dir():
            raise ValueError(f"no nuScenes version {version!r} in {self.root}: {self.root / version} is not a folder")
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

        by_name = {s["name"]: s for s in self.tables["scene"]}
        if scenes is None and split is not None:
            listed = self._split_scenes(split)
            scenes = [n for n in listed if n in by_name]
            if not scenes:
                raise ValueError(
                    f"none of the {len(listed)} scenes of split {split!r} (e.g. {listed[:3]}) is in "
                    f"{self.root / version / 'scene.json'}"
                )
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

    def input_files(self, indices: Iterable[int] = ()) -> list[Path]:
        """Files that reading the samples ``indices`` (and evaluating them with nuscenes-devkit) opens, for tools
        that refuse to write onto their inputs.

        Every table of the version folder (nuscenes-devkit loads them all) and, per sample, its key-frame files
        and the `sweeps` records before each (the LiDAR sweeps merged into it; for the cameras, files that are
        not read, which is harmless here).
        """
        files = sorted((self.root / self.version).glob("*.json"))
        wanted = {self.sample_tokens[i] for i in indices}
        for record in self.tables["sample_data"]:
            if not (record["is_key_frame"] and record["sample_token"] in wanted):
                continue
            for _ in range(self.sweeps + 1):
                files.append(self.root / record["filename"])
                if not record["prev"]:
                    break
                record = self.get("sample_data", record["prev"])
        return files

    @property
    def has_cameras(self) -> bool:
        """Whether the database has a sensor for each of the six `CAMERAS`."""
        channels = {sensor["channel"] for sensor in self.tables["sensor"]}
        return all(channel in channels for channel in CAMERAS)

    def _split_scenes(self, split: str) -> list[str]:
        # The devkit's DetectionEval: a predefined name wins over splits.json (is_predefined_split first).
        predefined = predefined_splits()
        if split in predefined:
            return list(predefined[split])
        path = self.root / self.version / "splits.json"
        splits = custom_splits(self.root, self.version)
        if split in splits:
            return list(splits[split])
        raise ValueError(
            f"split {split!r} is neither in {path} (has {sorted(splits)}) nor a predefined nuscenes-devkit split"
            f"{' (has ' + str(sorted(predefined)) + ')' if predefined else ' (nuscenes-devkit not installed)'}; "
            "or pass scenes=[...]"
        )

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
        for channel in ("LIDAR_TOP", *(CAMERAS if self.cameras else ())):
            if channel not in data:
                hint = "" if channel == "LIDAR_TOP" else " (a LiDAR-only database? pass cameras=False)"
                raise ValueError(f"sample {token!r} has no key-frame sample_data for {channel}{hint}")
        lidar_sd = self.get("sample_data", data["LIDAR_TOP"])
        lidar2ego, ego2global = self._sensor2global(lidar_sd)
        lidar2global = ego2global @ lidar2ego
        global2lidar = np.linalg.inv(lidar2global)

        points = self._points(lidar_sd, global2lidar)
        boxes, labels, attributes = self._boxes(token, lidar2global)

        def f32(a):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        sample = {
            "sample_token": token,
            "points": f32(points),
            "lidar_aug_matrix": torch.eye(4),
            "lidar2ego": f32(lidar2ego),
            "ego2global": f32(ego2global),
            "gt_boxes": f32(boxes.reshape(-1, 9)),
            "gt_labels": torch.from_numpy(labels.astype(np.int64)),
            "gt_attributes": attributes,
        }
        if self.cameras:
            sample.update(self._cameras(data, global2lidar))
        return sample

    def _cameras(self, data: dict[str, str], global2lidar: np.ndarray) -> dict[str, torch.Tensor]:
        """The six images and their calibration and augmentation matrices (see the module docstring)."""
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

        def f32(a):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        return {
            "images": torch.stack(images),
            "camera2lidar": f32(camera2lidar),
            "camera_intrinsics": f32(intrinsics),
            "lidar2image": f32(lidar2image),
            "img_aug_matrix": f32(img_aug),
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
            # LoadPointsFromMultiSweeps._remove_close (and the devkit's remove_close): |x| < 1 and |y| < 1 m.
            pts = pts[~((np.abs(pts[:, 0]) < 1.0) & (np.abs(pts[:, 1]) < 1.0))]
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

    def _boxes(self, sample_token: str, lidar2global: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        global2lidar = np.linalg.inv(lidar2global)
        boxes, labels, attributes = [], [], []
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
            attributes.append(self._attribute(ann))
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 9), np.asarray(labels, dtype=np.int64), attributes

    def _attribute(self, ann: dict) -> str:
        """The annotation's attribute name, "" without one (the devkit's load_gt, which allows at most one)."""
        tokens = ann["attribute_tokens"]
        if len(tokens) > 1:
            raise ValueError(f"sample_annotation {ann['token']!r} has {len(tokens)} attributes; nuScenes allows one")
        return self.get("attribute", tokens[0])["name"] if tokens else ""


def collate_nuscenes(samples: Sequence[dict]) -> dict:
    """Batches `NuScenes` samples into BEVFusion's forward arguments plus bookkeeping.

    Returns:
        ``img`` float32 (B, 6, 3, H, W); ``points`` list of B float32 (N_b, 5); ``camera2lidar``,
        ``camera_intrinsics``, ``lidar2image``, ``img_aug_matrix`` float32 (B, 6, 4, 4) (these five only for
        samples read with cameras); ``lidar_aug_matrix``, ``lidar2ego``, ``ego2global`` float32 (B, 4, 4);
        ``gt_boxes`` / ``gt_labels`` / ``gt_attributes`` lists of B; ``sample_token`` list of B str.
        ``{k: batch[k] for k in MODEL_INPUTS}`` is BEVFusion's input.
    """
    if not samples:
        raise ValueError("collate_nuscenes needs at least one sample")
    with_cameras = {"images" in s for s in samples}
    if len(with_cameras) > 1:
        raise ValueError("collate_nuscenes got samples with and without cameras")
    batch = {}
    if with_cameras.pop():
        batch["img"] = torch.stack([s["images"] for s in samples])
        for key in ("camera2lidar", "camera_intrinsics", "lidar2image", "img_aug_matrix"):
            batch[key] = torch.stack([s[key] for s in samples])
    for key in ("points", "gt_boxes", "gt_labels", "gt_attributes", "sample_token"):
        batch[key] = [s[key] for s in samples]
    for key in ("lidar_aug_matrix", "lidar2ego", "ego2global"):
        batch[key] = torch.stack([s[key] for s in samples])
    return batch


# -- detection results in the nuScenes submission format ------------------------------------------------------
# mmdet3d's NuScenesDataset.DefaultAttribute, used by BEVFusion's _format_bbox.
DEFAULT_ATTRIBUTE = {
    "car": "vehicle.parked",
    "pedestrian": "pedestrian.moving",
    "trailer": "vehicle.parked",
    "truck": "vehicle.parked",
    "bus": "vehicle.moving",
    "motorcycle": "cycle.without_rider",
    "construction_vehicle": "vehicle.parked",
    "bicycle": "cycle.without_rider",
    "barrier": "",
    "traffic_cone": "",
}
RESULTS_META = {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}


def box_attribute(name: str, velocity: Sequence[float]) -> str:
    """The attribute of a detected box by BEVFusion's velocity rule (speed > 0.2 m/s counts as moving).

    This is BEVFusion's (mmdet3d's) ``_format_bbox`` rule for model outputs, which predict no attribute: a
    still vehicle is ``vehicle.parked`` (a bus ``vehicle.stopped``), a still pedestrian ``pedestrian.standing``.
    It cannot tell a stopped vehicle from a parked one, so annotations written through it do not reach the
    devkit's maximum attr_err; pass the annotations' own attributes to `detection_results` for that.
    """
    if math.hypot(velocity[0], velocity[1]) > 0.2:
        if name in ("car", "construction_vehicle", "bus", "truck", "trailer"):
            return "vehicle.moving"
        if name in ("bicycle", "motorcycle"):
            return "cycle.with_rider"
    elif name == "pedestrian":
        return "pedestrian.standing"
    elif name == "bus":
        return "vehicle.stopped"
    return DEFAULT_ATTRIBUTE[name]


def detection_results(
    sample_token: str,
    boxes,
    scores,
    labels,
    lidar2ego,
    ego2global,
    max_boxes: int = 500,
    attributes: Sequence[str] | None = None,
) -> list[dict]:
    """A sample's boxes as nuScenes submission records (the value of ``results[sample_token]``).

    Args:
        sample_token: the sample's token.
        boxes: float (M, 9) BEVFusion LiDAR-frame boxes (x, y, z bottom, w, l, h, yaw, vx, vy), as the model and
            `NuScenes` ground truth give them.
        scores: float (M,) detection scores.
        labels: int (M,) indices into `DETECTION_CLASSES`.
        lidar2ego, ego2global: float (4, 4) transforms of the sample's LiDAR key frame.
        max_boxes: the devkit's limit per sample; the highest scores are kept.
        attributes: M attribute names (e.g. ``gt_attributes`` of a `NuScenes` sample), or None (the default,
            for model outputs): BEVFusion's velocity rule `box_attribute`.

    Returns:
        Up to ``max_boxes`` dicts, highest score first: translation (global box centre), size (w, l, h), rotation
        (global quaternion w, x, y, z of nuScenes yaw = -yaw - pi / 2), velocity (global vx, vy), detection_name,
        detection_score, attribute_name (``attributes[i]`` or `box_attribute`).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 9)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"boxes, scores and labels disagree in length: {len(boxes)}, {len(scores)}, {len(labels)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(DETECTION_CLASSES)):
        raise ValueError(f"labels must lie in [0, {len(DETECTION_CLASSES)}), got {labels.min()}..{labels.max()}")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"sample {sample_token}: boxes or scores contain NaN or inf")
    if attributes is not None:
        attributes = list(attributes)
        if len(attributes) != len(boxes) or not all(isinstance(a, str) for a in attributes):
            raise ValueError(f"attributes must be {len(boxes)} strings, one per box, got {len(attributes)} values")
    lidar2global = np.asarray(ego2global, dtype=np.float64) @ np.asarray(lidar2ego, dtype=np.float64)
    rotation = lidar2global[:3, :3]
    records = []
    for i in np.argsort(-scores, kind="stable")[:max_boxes]:
        x, y, z, w, l, h, yaw, vx, vy = boxes[i]
        centre = rotation @ np.array([x, y, z + h / 2]) + lidar2global[:3, 3]
        yaw_nusc = -yaw - math.pi / 2
        c, s = math.cos(yaw_nusc), math.sin(yaw_nusc)
        box_rotation = rotation @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        velocity = (rotation @ np.array([vx, vy, 0.0]))[:2]
        name = DETECTION_CLASSES[labels[i]]
        records.append({
            "sample_token": sample_token,
            "translation": [float(v) for v in centre],
            "size": [float(w), float(l), float(h)],
            "rotation": matrix_quaternion(box_rotation),
            "velocity": [float(v) for v in velocity],
            "detection_name": name,
            "detection_score": float(scores[i]),
            "attribute_name": box_attribute(name, velocity) if attributes is None else attributes[i],
        })
    return records
