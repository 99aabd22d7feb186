"""Write a small synthetic nuScenes set in the official on-disk format, deterministically from a seed.

Layout (as the official release; ``v1.0-mini`` is ``version``)::

    ROOT/v1.0-mini/{attribute,calibrated_sensor,category,ego_pose,instance,log,map,sample,
                    sample_annotation,sample_data,scene,sensor,visibility}.json
    ROOT/v1.0-mini/splits.json      the split (``{"mini_train": [...], "mini_val": [...]}``) in the devkit's
                                    custom-split file, so readers need no devkit to resolve it
    ROOT/samples/LIDAR_TOP/*.pcd.bin  key frames, float32 (N, 5): x, y, z, intensity, ring (LiDAR sensor frame)
    ROOT/sweeps/LIDAR_TOP/*.pcd.bin   sweeps between key frames (sample_data with is_key_frame false, evenly
                                    spaced, linked by prev / next with the key frames, sample_token of the
                                    following key frame)
    ROOT/samples/CAM_*/*.jpg        1600 x 900, each box's projected convex hull filled with its class colour
                                    (no camera sensors, records or images with ``cameras=False``: a LiDAR-only
                                    database)
    ROOT/maps/<token>.png           a tiny placeholder for the ``map`` table

By default scenes carry the names of the official v1.0-mini scenes (``mini_val``: scene-0103, scene-0916;
``mini_train``: scene-0061, ...; at most 10 scenes), so nuscenes-devkit's predefined ``mini_val`` split selects
them. ``version``, ``scene_names`` and ``split_names`` write a database under other names (say v1.0-synth with
scenes synth-000, ... and splits synth_train / synth_val), which the devkit evaluates through ``splits.json``.

Attributes: moving objects carry the moving attribute; a still truck is ``vehicle.stopped`` (waiting, not
parked), which BEVFusion's velocity rule for detections (`box_attribute`) would call ``vehicle.parked``.

Geometry: the ground is the global plane z = 0; the ego drives along its heading at 2 m/s; key frames are 0.5 s
apart, with ``sweeps_per_sample`` LiDAR sweeps between them (cameras: key frames only). The LiDAR sits 1.84 m
above the ego origin, turned by -90 degrees about z (x to the right of the car), as in the real rig. Cameras
follow the nuScenes channel layout (yaws 0, -55, 55, 180, 110, -110 degrees), intrinsics 1266.4 / 816.3 / 491.5.
Points lie on the ground and on the five upper faces of every box (no occlusion), plus 40 returns from the car's
own roof with |x|, |y| < 0.95 m around the sensor. Annotation translations are box centres in the global frame,
sizes are ``wlh``, rotations quaternions (w, x, y, z).

Every file is written atomically. `tools/make_synthetic_nuscenes.py` is the command line (it refuses a root
whose table folder holds a set that this module did not write: a real nuScenes release is never overwritten).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from torchsparse.datasets.nuscenes import CAMERAS, VERSION, matrix_quaternion, quaternion_matrix
from torchsparse.utils.io import atomic_open, atomic_path

__all__ = [
    "CATEGORIES",
    "MINI_TRAIN",
    "MINI_VAL",
    "cached_synthetic_nuscenes",
    "check_name",
    "is_synthetic",
    "make_synthetic_nuscenes",
]

CAMERA_YAWS_DEG = (0.0, -55.0, 55.0, 180.0, 110.0, -110.0)
FOCAL, CENTRE_U, CENTRE_V = 1266.4, 816.3, 491.5
IMAGE_W, IMAGE_H = 1600, 900
LIDAR_TRANSLATION = (0.94, 0.0, 1.84)
LIDAR_YAW = -math.pi / 2
KEY_FRAME_US = 500_000
# nuscenes-devkit utils/splits.py: the v1.0-mini scene names.
MINI_VAL = ("scene-0103", "scene-0916")
MINI_TRAIN = ("scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077", "scene-1094",
              "scene-1100")
EGO_SPEED = 2.0  # m/s

# The 23 categories of nuScenes v1.0 (index as in category.json since the lidarseg release is not reproduced).
CATEGORIES = (
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
)
ATTRIBUTES = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "pedestrian.moving",
)
VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))

# One object per entry: category, size (w, l, h), speed (m/s), attribute when moving / when still, RGB colour.
OBJECTS = (
    ("vehicle.car", (1.9, 4.5, 1.6), 1.5, "vehicle.moving", "vehicle.parked", (200, 30, 30)),
    ("human.pedestrian.adult", (0.7, 0.7, 1.75), 1.0, "pedestrian.moving", "pedestrian.standing", (30, 30, 200)),
    ("movable_object.trafficcone", (0.4, 0.4, 1.0), 0.0, None, None, (255, 140, 0)),
    ("vehicle.bicycle", (0.6, 1.8, 1.3), 0.0, "cycle.with_rider", "cycle.without_rider", (30, 180, 30)),
    ("vehicle.truck", (2.5, 7.0, 3.0), 1.0, "vehicle.moving", "vehicle.stopped", (120, 60, 160)),
    ("movable_object.barrier", (2.4, 0.5, 1.0), 0.0, None, None, (220, 220, 40)),
    ("human.pedestrian.child", (0.5, 0.5, 1.2), 0.0, "pedestrian.moving", "pedestrian.standing", (40, 200, 200)),
    ("animal", (0.4, 0.9, 0.6), 0.0, None, None, (140, 90, 40)),  # no detection class: loaders drop it
)


def _token(*parts) -> str:
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def _yaw_quaternion(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def _pose(rotation, translation) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = quaternion_matrix(rotation)
    m[:3, 3] = translation
    return m


def _camera_rotation(yaw: float) -> np.ndarray:
    """Camera (x right, y down, z forward) -> ego (x forward, y left, z up) for a camera turned by yaw."""
    c, s = math.cos(yaw), math.sin(yaw)
    turn = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    look_along_x = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    return turn @ look_along_x


def _box_corners(centre, wlh, yaw) -> np.ndarray:
    """(8, 3) corners of a box (global frame), bottom four first."""
    w, l, h = wlh
    x = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * l / 2
    y = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    z = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * h / 2
    c, s = math.cos(yaw), math.sin(yaw)
    pts = np.stack([c * x - s * y, s * x + c * y, z], 1)
    return pts + np.asarray(centre)


def _box_surface(rng: np.random.Generator, centre, wlh, yaw, density: float = 30.0) -> np.ndarray:
    """Points on the four sides and the top of a box (global frame)."""
    w, l, h = wlh
    out = []
    for axis, half, sign in ((0, l / 2, 1), (0, l / 2, -1), (1, w / 2, 1), (1, w / 2, -1), (2, h / 2, 1)):
        free = [a for a in range(3) if a != axis]
        ext = np.array([l, w, h])
        n = max(8, int(density * ext[free[0]] * ext[free[1]]))
        local = np.zeros((n, 3))
        local[:, axis] = sign * half
        for a in free:
            local[:, a] = (rng.random(n) - 0.5) * ext[a]
        out.append(local)
    local = np.concatenate(out)
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return local @ rot.T + np.asarray(centre)


def _transform(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:3, :3].T + m[:3, 3]


def _write_json(path: Path, obj) -> None:
    with atomic_open(path) as handle:
        handle.write(json.dumps(obj, indent=0, sort_keys=True) + "\n")


def check_name(value: str, what: str) -> str:
    """``value`` if it can name a folder, scene or split: a non-empty string without slashes or outer spaces."""
    if not isinstance(value, str) or not value or value != value.strip() or "/" in value or "\\" in value:
        raise ValueError(f"{what} {value!r} is not a usable name (empty, outer spaces or a slash)")
    return value


def make_synthetic_nuscenes(
    root,
    num_scenes: int = 2,
    samples_per_scene: int = 3,
    seed: int = 0,
    sweeps_per_sample: int = 2,
    *,
    version: str = VERSION,
    scene_names: Sequence[str] | None = None,
    split_names: tuple[str, str] = ("mini_train", "mini_val"),
    cameras: bool = True,
) -> Path:
    """Write a synthetic nuScenes set under ``root`` (see the module docstring) and return ``root`` as a Path.

    The same arguments always give the same bytes, and the LiDAR data and annotations do not depend on
    ``cameras``, ``version`` or the names. ``min(2, max(1, num_scenes // 2))`` scenes (the last ones) form the
    validation split, the others the training split.

    Args:
        root: folder to write into.
        num_scenes: scene count; at most 10 with the official names.
        samples_per_scene: key frames per scene.
        seed: seed of every random choice (and of the tokens).
        sweeps_per_sample: LiDAR sweeps between consecutive key frames, 0..9.
        version: the table folder's name.
        scene_names: ``num_scenes`` distinct scene names; None: the official v1.0-mini names.
        split_names: (training, validation) split names in ``splits.json``.
        cameras: False writes a LiDAR-only database (no camera sensors, sample_data or images).
    """
    max_scenes = len(MINI_TRAIN) + len(MINI_VAL)
    if scene_names is None:
        if not 1 <= num_scenes <= max_scenes:
            raise ValueError(f"need 1 <= num_scenes <= {max_scenes} (the v1.0-mini scene names), got {num_scenes}")
    else:
        scene_names = [check_name(n, "scene name") for n in scene_names]
        if len(scene_names) != num_scenes or len(set(scene_names)) != num_scenes:
            raise ValueError(f"scene_names must hold num_scenes = {num_scenes} distinct names, got {scene_names}")
    if samples_per_scene < 1 or not 0 <= sweeps_per_sample <= 9:
        raise ValueError(
            f"need num_scenes >= 1, samples_per_scene >= 1 and 0 <= sweeps_per_sample <= 9, got {num_scenes}, "
            f"{samples_per_scene}, {sweeps_per_sample}"
        )
    version = check_name(version, "version")
    split_names = tuple(check_name(n, "split name") for n in split_names)
    if len(split_names) != 2 or split_names[0] == split_names[1]:
        raise ValueError(f"split_names must be two different names (training, validation), got {split_names}")
    channels = ("LIDAR_TOP", *CAMERAS) if cameras else ("LIDAR_TOP",)
    root = Path(root)
    table_dir = root / version
    table_dir.mkdir(parents=True, exist_ok=True)
    (root / "maps").mkdir(exist_ok=True)
    for channel in channels:
        (root / "samples" / channel).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = {name: [] for name in ("ego_pose", "instance", "log", "map", "sample", "sample_annotation",
                               "sample_data", "scene")}

    # Static tables.
    category = [{"token": _token(seed, "category", n), "name": n, "description": n, "index": i}
                for i, n in enumerate(CATEGORIES)]
    cat_token = {c["name"]: c["token"] for c in category}
    attribute = [{"token": _token(seed, "attribute", n), "name": n, "description": n} for n in ATTRIBUTES]
    attr_token = {a["name"]: a["token"] for a in attribute}
    visibility = [{"token": tok, "level": lvl, "description": f"visibility of whole object is {lvl}"}
                  for tok, lvl in VISIBILITY]
    sensor, calibrated_sensor, calib_of = [], [], {}
    lidar_q = _yaw_quaternion(LIDAR_YAW)
    for channel in channels:
        s_tok = _token(seed, "sensor", channel)
        sensor.append({"token": s_tok, "channel": channel, "modality": "lidar" if channel == "LIDAR_TOP" else "camera"})
        if channel == "LIDAR_TOP":
            rec = {"translation": list(LIDAR_TRANSLATION), "rotation": lidar_q, "camera_intrinsic": []}
        else:
            yaw = math.radians(CAMERA_YAWS_DEG[CAMERAS.index(channel)])
            rec = {
                "translation": [1.0 * math.cos(yaw) + 0.5, 1.0 * math.sin(yaw), 1.5],
                "rotation": matrix_quaternion(_camera_rotation(yaw)),
                "camera_intrinsic": [[FOCAL, 0.0, CENTRE_U], [0.0, FOCAL, CENTRE_V], [0.0, 0.0, 1.0]],
            }
        rec = {"token": _token(seed, "calibrated_sensor", channel), "sensor_token": s_tok, **rec}
        calibrated_sensor.append(rec)
        calib_of[channel] = rec
    lidar2ego = _pose(calib_of["LIDAR_TOP"]["rotation"], calib_of["LIDAR_TOP"]["translation"])

    map_token = _token(seed, "map")
    map_png = Image.new("L", (8, 8), 0)
    with atomic_path(root / "maps" / f"{map_token}.png") as tmp:
        map_png.save(tmp, format="PNG")
    t["map"].append({"token": map_token, "log_tokens": [], "category": "semantic_prior",
                     "filename": f"maps/{map_token}.png"})

    n_val = min(2, max(1, num_scenes // 2))
    if scene_names is None:
        scene_names = [*MINI_TRAIN[: num_scenes - n_val], *MINI_VAL[:n_val]]
    splits = {split_names[0]: scene_names[: num_scenes - n_val], split_names[1]: scene_names[num_scenes - n_val :]}
    base_ts = 1_533_151_603_547_590
    for si in range(num_scenes):
        name = scene_names[si]
        log_tok = _token(seed, "log", si)
        t["log"].append({"token": log_tok, "logfile": f"synthetic-{seed}-{si}", "vehicle": "synthetic",
                         "date_captured": "2018-08-01", "location": "singapore-onenorth"})
        t["map"][0]["log_tokens"].append(log_tok)
        ego_yaw = float(rng.uniform(-math.pi, math.pi))
        ego_start = np.array([300.0 + 200 * si + rng.uniform(-5, 5), 600.0 + rng.uniform(-5, 5), 0.0])
        heading = np.array([math.cos(ego_yaw), math.sin(ego_yaw), 0.0])
        # Objects around the first ego pose, one per angular sector, 10-20 m away (far enough apart).
        objects = []
        offset = rng.uniform(0, 2 * math.pi / len(OBJECTS))
        for k, (cat, wlh, speed, attr_moving, attr_still, _) in enumerate(OBJECTS):
            bearing = ego_yaw + offset + 2 * math.pi * k / len(OBJECTS)
            dist = rng.uniform(10.0, 20.0)
            yaw = float(rng.uniform(-math.pi, math.pi))
            moving = speed > 0 and bool(rng.random() < 0.7)
            centre = ego_start + dist * np.array([math.cos(bearing), math.sin(bearing), 0.0])
            centre[2] = wlh[2] / 2
            velocity = speed * np.array([math.cos(yaw), math.sin(yaw), 0.0]) if moving else np.zeros(3)
            attrs = [attr_moving if moving else attr_still] if attr_moving else []
            objects.append((k, cat, wlh, yaw, centre, velocity, attrs))
        sample_tokens = [_token(seed, "sample", si, j) for j in range(samples_per_scene)]
        prev_camera_sd, lidar_chain = {}, []
        motion = (ego_start, heading, ego_yaw)
        ann_tokens = {k: [_token(seed, "ann", si, j, k) for j in range(samples_per_scene)] for k in range(len(OBJECTS))}
        for j, s_tok in enumerate(sample_tokens):
            ts = base_ts + si * 100_000_000 + j * KEY_FRAME_US
            dt = j * KEY_FRAME_US * 1e-6
            ego_t = ego_start + EGO_SPEED * dt * heading
            ego_q = _yaw_quaternion(ego_yaw)
            ego2global = _pose(ego_q, ego_t)
            t["sample"].append({
                "token": s_tok, "timestamp": ts, "scene_token": _token(seed, "scene", si),
                "prev": sample_tokens[j - 1] if j > 0 else "",
                "next": sample_tokens[j + 1] if j + 1 < samples_per_scene else "",
            })
            boxes = [(k, cat, wlh, yaw, centre + velocity * dt, velocity, attrs)
                     for k, cat, wlh, yaw, centre, velocity, attrs in objects]
            # Sweeps between the previous key frame and this one, then the key frame itself.
            if j > 0:
                for m in range(1, sweeps_per_sample + 1):
                    sweep_us = (j - 1) * KEY_FRAME_US + m * KEY_FRAME_US // (sweeps_per_sample + 1)
                    lidar_chain.append(
                        _lidar_frame(root, rng, seed, si, base_ts + si * 100_000_000 + sweep_us, sweep_us * 1e-6,
                                     s_tok, motion, objects, lidar2ego, calib_of["LIDAR_TOP"]["token"], t)[0]
                    )
            lidar_sd, counts = _lidar_frame(root, rng, seed, si, ts, dt, s_tok, motion, objects, lidar2ego,
                                            calib_of["LIDAR_TOP"]["token"], t)
            lidar_chain.append(lidar_sd)
            # Camera sample_data + ego_pose per channel.
            stem = f"synthetic-{seed}-{si:04d}__{{}}__{ts}"
            for channel in channels[1:]:
                sd_tok = _token(seed, "sample_data", si, j, channel)
                ep_tok = _token(seed, "ego_pose", si, j, channel)
                t["ego_pose"].append({"token": ep_tok, "timestamp": ts, "rotation": ego_q,
                                      "translation": [float(v) for v in ego_t]})
                filename = f"samples/{channel}/{stem.format(channel)}.jpg"
                t["sample_data"].append({
                    "token": sd_tok, "sample_token": s_tok, "ego_pose_token": ep_tok,
                    "calibrated_sensor_token": calib_of[channel]["token"], "timestamp": ts,
                    "fileformat": "jpg", "is_key_frame": True, "height": IMAGE_H, "width": IMAGE_W,
                    "filename": filename,
                    "prev": prev_camera_sd.get(channel, ""),
                    "next": _token(seed, "sample_data", si, j + 1, channel) if j + 1 < samples_per_scene else "",
                })
                prev_camera_sd[channel] = sd_tok
                cam2global = ego2global @ _pose(calib_of[channel]["rotation"], calib_of[channel]["translation"])
                _render(root / filename, np.linalg.inv(cam2global), boxes)
            # Annotations.
            for (k, cat, wlh, yaw, centre, velocity, attrs), count in zip(boxes, counts, strict=True):
                toks = ann_tokens[k]
                t["sample_annotation"].append({
                    "token": toks[j], "sample_token": s_tok, "instance_token": _token(seed, "instance", si, k),
                    "visibility_token": "4", "attribute_tokens": [attr_token[x] for x in attrs],
                    "translation": [float(v) for v in centre], "size": list(wlh),
                    "rotation": _yaw_quaternion(yaw), "prev": toks[j - 1] if j > 0 else "",
                    "next": toks[j + 1] if j + 1 < samples_per_scene else "",
                    "num_lidar_pts": int(count), "num_radar_pts": int(rng.integers(0, 5)),
                })
        for prev, record, nxt in zip([None, *lidar_chain[:-1]], lidar_chain, [*lidar_chain[1:], None], strict=True):
            record["prev"] = prev["token"] if prev else ""
            record["next"] = nxt["token"] if nxt else ""
        t["sample_data"].extend(lidar_chain)
        for k, cat, *_ in objects:
            t["instance"].append({
                "token": _token(seed, "instance", si, k), "category_token": cat_token[cat],
                "nbr_annotations": samples_per_scene, "first_annotation_token": ann_tokens[k][0],
                "last_annotation_token": ann_tokens[k][-1],
            })
        t["scene"].append({
            "token": _token(seed, "scene", si), "name": name, "description": f"synthetic scene {si}",
            "log_token": log_tok, "nbr_samples": samples_per_scene, "first_sample_token": sample_tokens[0],
            "last_sample_token": sample_tokens[-1],
        })

    tables = {"attribute": attribute, "calibrated_sensor": calibrated_sensor, "category": category,
              "sensor": sensor, "visibility": visibility, **t}
    for name, rows in tables.items():
        _write_json(table_dir / f"{name}.json", rows)
    _write_json(table_dir / "splits.json", splits)
    return root


def cached_synthetic_nuscenes(cache_dir=None, seed: int = 0) -> Path:
    """The default synthetic set (2 scenes x 3 samples), written on first use and reused afterwards.

    It lives in ``cache_dir`` or, by default, ``$TORCHSPARSE_CACHE`` or ``$XDG_CACHE_HOME/torchsparse`` (else
    ``~/.cache/torchsparse``), under ``synthetic_nuscenes-seed<seed>``. The set is written to a temporary folder
    beside it and renamed into place, so concurrent first uses (torchrun ranks) never see a partial set.
    """
    if cache_dir is None:
        xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        cache_dir = os.environ.get("TORCHSPARSE_CACHE") or Path(xdg) / "torchsparse"
    root = Path(cache_dir) / f"synthetic_nuscenes-seed{seed}"
    if (root / VERSION / "scene.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        make_synthetic_nuscenes(staging, seed=seed)
        os.rename(staging, root)
    except OSError:
        if not (root / VERSION / "scene.json").is_file():  # not lost to a concurrent writer: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _lidar_frame(root: Path, rng, seed, si, ts, dt, sample_token, motion, objects, lidar2ego, calib_token, t):
    """Writes one LIDAR_TOP cloud at time ``dt`` of the scene (a key frame if ``dt`` is a multiple of the
    key-frame period, else a sweep) and its ego pose; returns its sample_data record (prev / next unset) and the
    number of points on each box.

    The cloud: a ground disc (2-40 m), the five upper faces of every box, and ~40 returns from the car's own
    roof with |x|, |y| < 0.95 m (which loaders drop from sweeps), in the LiDAR frame, float32 (N, 5)
    x, y, z, intensity, ring.
    """
    ego_start, heading, ego_yaw = motion
    key = round(dt * 1e6) % KEY_FRAME_US == 0
    ego_t = ego_start + EGO_SPEED * dt * heading
    ego_q = _yaw_quaternion(ego_yaw)
    ego2global = _pose(ego_q, ego_t)
    sensor_global = _transform(ego2global, np.asarray(LIDAR_TRANSLATION))
    n_ground = 6000
    r = np.sqrt(rng.uniform(2.0**2, 40.0**2, n_ground))
    a = rng.uniform(0, 2 * math.pi, n_ground)
    ground = np.stack([sensor_global[0] + r * np.cos(a), sensor_global[1] + r * np.sin(a), np.zeros(n_ground)], 1)
    parts, counts = [ground], []
    for _, _, wlh, yaw, centre, velocity, _ in objects:
        surf = _box_surface(rng, centre + velocity * dt, wlh, yaw)
        parts.append(surf)
        counts.append(len(surf))
    lidar2global = ego2global @ lidar2ego
    lidar_pts = _transform(np.linalg.inv(lidar2global), np.concatenate(parts))
    n_roof = 40
    roof = np.concatenate([rng.uniform(-0.95, 0.95, (n_roof, 2)), rng.uniform(-0.4, -0.2, (n_roof, 1))], 1)
    lidar_pts = np.concatenate([lidar_pts, roof])
    elev = np.degrees(np.arctan2(lidar_pts[:, 2], np.linalg.norm(lidar_pts[:, :2], axis=1)))
    ring = np.clip(np.round((elev + 30.67) / (41.33 / 31)), 0, 31)
    intensity = rng.integers(0, 256, len(lidar_pts)).astype(np.float64)
    cloud = np.concatenate([lidar_pts, intensity[:, None], ring[:, None]], 1).astype(np.float32)
    filename = f"{'samples' if key else 'sweeps'}/LIDAR_TOP/synthetic-{seed}-{si:04d}__LIDAR_TOP__{ts}.pcd.bin"
    with atomic_path(root / filename) as tmp:
        cloud.tofile(tmp)
    ep_tok = _token(seed, "ego_pose", si, ts, "LIDAR_TOP")
    t["ego_pose"].append({"token": ep_tok, "timestamp": ts, "rotation": ego_q,
                          "translation": [float(v) for v in ego_t]})
    record = {
        "token": _token(seed, "sample_data", si, ts, "LIDAR_TOP"), "sample_token": sample_token,
        "ego_pose_token": ep_tok, "calibrated_sensor_token": calib_token, "timestamp": ts, "fileformat": "pcd",
        "is_key_frame": key, "height": 0, "width": 0, "filename": filename, "prev": "", "next": "",
    }
    return record, counts


def _render(path: Path, global2cam: np.ndarray, boxes) -> None:
    """Sky/ground background, then each box's projected convex hull filled with its class colour, far first."""
    img = Image.new("RGB", (IMAGE_W, IMAGE_H), (90, 90, 90))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, IMAGE_W, int(CENTRE_V)], fill=(150, 190, 230))
    colour = {o[0]: o[5] for o in OBJECTS}
    items = []
    for _, cat, wlh, yaw, centre, _, _ in boxes:
        corners = _transform(global2cam, _box_corners(centre, wlh, yaw))
        if (corners[:, 2] < 0.5).any():
            continue
        uv = corners[:, :2] / corners[:, 2:3] * FOCAL + np.array([CENTRE_U, CENTRE_V])
        items.append((float(corners[:, 2].mean()), cat, _convex_hull(uv)))
    for _, cat, hull in sorted(items, key=lambda x: -x[0]):
        draw.polygon([(float(u), float(v)) for u, v in hull], fill=colour[cat])
    with atomic_path(path) as tmp:
        img.save(tmp, format="JPEG", quality=90)


def _convex_hull(pts: np.ndarray) -> list:
    pts = sorted(map(tuple, pts.tolist()))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def is_synthetic(root, version: str = VERSION) -> bool:
    """Whether ``root``'s log table exists and lists only logs that `make_synthetic_nuscenes` writes."""
    try:
        logs = json.loads((Path(root) / version / "log.json").read_text())
        return bool(logs) and all(log.get("vehicle") == "synthetic" for log in logs)
    except (OSError, ValueError, AttributeError, TypeError):
        return False
