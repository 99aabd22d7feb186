"""Inputs and reference data for BEVFusion tests and demos: a nuScenes-like six-camera rig, a 32-beam LiDAR sweep,
and the official detection checkpoint's layout with random weights in it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from torchsparse.testing.generators import lidar_scan

__all__ = [
    "bevfusion_sample",
    "camera_rig",
    "official_dump",
    "official_keys",
    "random_official_state_dict",
]

_DUMP = Path(__file__).resolve().parent / "bevfusion_det_state_dict_keys.json"


def official_dump() -> dict:
    """The official BEVFusion detection checkpoint's layout (mit-han-lab/bevfusion db75150, derived by building
    its model classes on the CPU; no checkpoint was opened): ``keys`` (582 key -> shape, in order), ``num_params``,
    ``dtypes``, ``prefix_key_counts``, ``prefix_param_counts``, ``buffers_and_nontrainable`` and a few values
    (``deterministic_values``, ``frustum_corners``). A fresh dict on every call."""
    return json.loads(_DUMP.read_text())


def official_keys(prefix: str) -> list[tuple[str, list[int]]]:
    """(key without `prefix`, shape) of the official keys under `prefix` (e.g. "heads.object."), in order."""
    return [(k[len(prefix) :], v) for k, v in official_dump()["keys"].items() if k.startswith(prefix)]


def random_official_state_dict(prefix: str, seed: int = 0, scalar: int = 5) -> dict[str, Tensor]:
    """Random values in the official layout under `prefix` (keys without it), with BN statistics that keep
    activations O(1): 5-D spconv weights N(0, 2 / fan_in), other weights of >= 2 dims N(0, 1 / fan_in), norm weights
    U(0.75, 1.25), running variances U(0.5, 1.5), biases and running means N(0, 0.01), 0-dim entries
    (num_batches_tracked) `scalar`."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_keys(prefix):
        name = key.rsplit(".", 1)[1]
        if not shape:
            state[key] = torch.tensor(scalar)
        elif len(shape) == 5:
            fan_in = shape[0] * shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif name == "running_var":
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif name in ("weight", "in_proj_weight") and len(shape) > 1:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=gen) * fan_in**-0.5
        elif name == "weight":  # norms
            state[key] = torch.rand(shape, generator=gen) * 0.5 + 0.75
        else:  # bias, running_mean
            state[key] = torch.randn(shape, generator=gen) * 0.1
    return state

# nuScenes-like camera: 1600 x 900 images resized by 0.48 and cropped to 704 x 256 (test-time ImageAug3D of the
# reference's configs/nuscenes/default.yaml: 176 rows off the top, 32 columns off each side).
FOCAL, CENTRE_U, CENTRE_V = 1266.4, 816.3, 491.5
RESIZE, CROP = 0.48, (32.0, 176.0)


def _pose(yaw: float, translation) -> Tensor:
    """Camera (x right, y down, z forward) -> LiDAR (x forward, y left, z up) for a camera turned by yaw."""
    c, s = math.cos(yaw), math.sin(yaw)
    turn = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    look_along_x = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = turn @ look_along_x
    pose[:3, 3] = torch.as_tensor(translation, dtype=torch.float64)
    return pose


def camera_rig(num_cameras: int = 6, batch_size: int = 1, lidar_aug: Tensor | None = None) -> dict[str, Tensor]:
    """Calibration of cameras around the car at equal yaw steps (camera 0 looks forward), 1 m out, 0.3 m down.

    Args:
        num_cameras, batch_size: rig size.
        lidar_aug: optional (4, 4) LiDAR augmentation matrix; identity when None.

    Returns:
        float32 (batch_size, num_cameras, 4, 4) "camera2lidar", "camera_intrinsics", "lidar2image",
        "img_aug_matrix" and (batch_size, 4, 4) "lidar_aug_matrix".
    """
    yaws = [2 * math.pi * k / num_cameras for k in range(num_cameras)]
    camera2lidar = torch.stack([_pose(y, (math.cos(y), math.sin(y), -0.3)) for y in yaws])
    intrinsics = torch.eye(4, dtype=torch.float64)
    intrinsics[0, 0] = intrinsics[1, 1] = FOCAL
    intrinsics[0, 2], intrinsics[1, 2] = CENTRE_U, CENTRE_V
    intrinsics = intrinsics.expand(num_cameras, 4, 4)
    img_aug = torch.eye(4, dtype=torch.float64)
    img_aug[0, 0] = img_aug[1, 1] = RESIZE
    img_aug[0, 3], img_aug[1, 3] = -CROP[0], -CROP[1]
    rig = {
        "camera2lidar": camera2lidar,
        "camera_intrinsics": intrinsics,
        "lidar2image": intrinsics @ torch.inverse(camera2lidar),
        "img_aug_matrix": img_aug.expand(num_cameras, 4, 4),
    }
    rig = {k: v.expand(batch_size, *v.shape).float().contiguous() for k, v in rig.items()}
    aug = torch.eye(4) if lidar_aug is None else lidar_aug.float()
    rig["lidar_aug_matrix"] = aug.expand(batch_size, 4, 4).contiguous()
    return rig


def bevfusion_sample(batch_size: int = 1, num_cameras: int = 6, seed: int = 0) -> dict:
    """One BEVFusion input batch: normalised random images, a 32-beam-like sweep per sample and the rig.

    Returns:
        dict with "img" float32 (B, N, 3, 256, 704), "points" list of B float32 (P, 5) (x, y, z, intensity,
        time lag 0) and the tensors of `camera_rig`.
    """
    g = torch.Generator().manual_seed(seed)
    points = []
    for b in range(batch_size):
        scan = torch.from_numpy(lidar_scan(num_beams=32, points_per_beam=1080, seed=seed + b)).float()
        points.append(torch.cat([scan, torch.zeros(len(scan), 1)], 1))
    img = torch.randn(batch_size, num_cameras, 3, 256, 704, generator=g)
    return {"img": img, "points": points, **camera_rig(num_cameras, batch_size)}
