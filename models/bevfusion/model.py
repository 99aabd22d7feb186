"""BEVFusion (Liu et al., ICRA 2023; mit-han-lab/bevfusion at db75150): camera + LiDAR fusion in bird's-eye view.

Detection (nuScenes, TransFusion head) and map segmentation configurations, with the official module tree so
that `state_dict()` equals the official checkpoint's keys and shapes:

    encoders.camera.{backbone (Swin-T), neck (GeneralizedLSSFPN), vtransform (DepthLSS / LSS)}
    encoders.lidar.backbone (SparseEncoder on our engine, spconv semantics)
    fuser (ConvFuser) -> decoder.{backbone (SECOND), neck (SECONDFPN)} -> heads.{object | map}
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchsparse.models.bevfusion.decoder import SECOND, SECONDFPN, ConvFuser
from torchsparse.models.bevfusion.head import TransFusionHead
from torchsparse.models.bevfusion.lidar import SparseEncoder
from torchsparse.models.bevfusion.neck import GeneralizedLSSFPN
from torchsparse.models.bevfusion.seg import BEVSegmentationHead
from torchsparse.models.bevfusion.swin import SwinTransformer
from torchsparse.models.bevfusion.vtransform import DepthLSSTransform, LSSTransform
from torchsparse.ops.hard_voxelize import voxelize_mean
from torchsparse.profiling import region

__all__ = ["TASKS", "BEVFusion"]

# task -> LiDAR voxelization (configs/nuscenes/det/.../swint_v0p075 and configs/nuscenes/seg/fusion-bev256d2-lss)
TASKS = {
    "det": {"voxel_size": (0.075, 0.075, 0.2), "point_range": (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0),
            "sparse_shape": (1440, 1440, 41), "max_points": 10, "max_voxels": 160_000},
    "seg": {"voxel_size": (0.1, 0.1, 0.2), "point_range": (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
            "sparse_shape": (1024, 1024, 41), "max_points": 10, "max_voxels": 160_000},
}


class BEVFusion(nn.Module):
    """Camera + LiDAR BEVFusion.

    Args:
        task: "det" (3D detection: Swin-T + DepthLSS + SparseEncoder + TransFusion, the official
            convfuser checkpoint's layout) or "seg" (BEV map segmentation: LSS camera transform, segmentation
            head over 6 map classes).
    """

    def __init__(self, task: str = "det") -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        self.task = task
        self.lidar_config = TASKS[task]
        vtransform = DepthLSSTransform() if task == "det" else LSSTransform()
        camera = nn.ModuleDict({"backbone": SwinTransformer(), "neck": GeneralizedLSSFPN(), "vtransform": vtransform})
        lidar = nn.ModuleDict({"backbone": SparseEncoder(sparse_shape=self.lidar_config["sparse_shape"])})
        self.encoders = nn.ModuleDict({"camera": camera, "lidar": lidar})
        self.fuser = ConvFuser((80, 256), 256)
        self.decoder = nn.ModuleDict({"backbone": SECOND(), "neck": SECONDFPN()})
        if task == "det":
            self.heads = nn.ModuleDict({"object": TransFusionHead()})
        else:
            self.heads = nn.ModuleDict({"map": BEVSegmentationHead(in_channels=512)})

    def voxelize(self, points: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Hard voxelization (<= 10 points per voxel, mean) of each sample: feats (M, 5), coords int32 (M, 4)
        (batch, x, y, z)."""
        feats, coords = [], []
        cfg = self.lidar_config
        for b, cloud in enumerate(points):
            f, c, _ = voxelize_mean(cloud, cfg["voxel_size"], cfg["point_range"], cfg["max_points"], cfg["max_voxels"])
            feats.append(f)
            coords.append(torch.cat([torch.full_like(c[:, :1], b), c], 1))
        return torch.cat(feats), torch.cat(coords)

    def forward(
        self,
        img: Tensor,
        points: Sequence[Tensor],
        camera2lidar: Tensor,
        camera_intrinsics: Tensor,
        img_aug_matrix: Tensor,
        lidar2image: Tensor,
        lidar_aug_matrix: Tensor | None = None,
    ):
        """Runs the model on a batch.

        Args:
            img: float (B, N, 3, 256, 704) normalised camera images (N = 6 on nuScenes).
            points: B float tensors (P_b, 5) of LiDAR points (x, y, z, intensity, time lag) in the (augmented)
                LiDAR frame.
            camera2lidar, camera_intrinsics, img_aug_matrix, lidar2image: float (B, N, 4, 4) calibration and
                image-augmentation matrices.
            lidar_aug_matrix: float (B, 4, 4) or None (identity).

        Each module runs in a `torchsparse.profiling.region` named after it ("camera.backbone", "camera.neck",
        "camera.vtransform", "lidar.voxelize", "lidar.backbone", "fuser", "decoder", "head"): inside
        ``torchsparse.profiling.timed()`` they give the seconds per module, synchronised on CUDA.

        Returns:
            det: one dict per sample with "boxes" (n, 9) = (x, y, z, w, l, h, yaw, vx, vy) in the LiDAR frame
            (z at the box bottom), "scores" (n,), "labels" int64 (n,). seg: (B, 6, 200, 200) class probabilities.
        """
        clock = functools.partial(region, device=img.device)
        b, n = img.shape[:2]
        camera = self.encoders["camera"]
        with clock("camera.backbone"):
            features = camera["backbone"](img.flatten(0, 1))
        with clock("camera.neck"):
            feature = camera["neck"](features)[0]
            feature = feature.view(b, n, *feature.shape[1:])
        with clock("camera.vtransform"):
            camera_bev = camera["vtransform"](
                feature, points, None, None, None, lidar2image, camera_intrinsics, camera2lidar, img_aug_matrix,
                lidar_aug_matrix,
            )
        with clock("lidar.voxelize"):
            feats, coords = self.voxelize(points)
        with clock("lidar.backbone"):
            lidar_bev = self.encoders["lidar"]["backbone"](feats, coords, b)
        with clock("fuser"):
            fused = self.fuser([camera_bev, lidar_bev])
        with clock("decoder"):
            fused = self.decoder["neck"](self.decoder["backbone"](fused))
        with clock("head"):
            if self.task == "det":
                head = self.heads["object"]
                return head.decode(head(fused))
            return self.heads["map"](fused)
