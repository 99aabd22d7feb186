"""BEVFusion's camera-to-BEV view transforms (Lift-Splat-Shoot) in plain PyTorch, with the official state-dict
keys: `DepthLSSTransform` (detection; the depth net also sees a sparse LiDAR depth image) and `LSSTransform`
(map segmentation; image features only).

Every feature-map pixel of every camera is lifted to D depth bins (a softmax over bins times a C-channel
context vector), placed in the LiDAR frame with the calibration and augmentation matrices, and summed per BEV
cell ("splat", `bev_pool`). The grid's single height bin is folded into the channels and a small conv stack
halves the resolution: (B, N, 256, 32, 88) image features -> (B, 80, 180, 180) for detection.

Coordinate conventions (as in the reference): LiDAR frame x forward, y left, z up; camera frame x right, y
down, z along the optical axis; pixels (u, v) = (column, row) of the augmented 256 x 704 image. The BEV map is
(B, C, X, Y): dim 2 runs along LiDAR x, dim 3 along LiDAR y, cell i covering
[lower + i * step, lower + (i + 1) * step).

Reference: mit-han-lab/bevfusion db75150, mmdet3d/models/vtransforms/base.py (BaseTransform,
BaseDepthTransform), depth_lss.py, lss.py, mmdet3d/models/fusion_models/bevfusion.py (how the transform is
called) and the configs configs/nuscenes/det/transfusion/secfpn/camera+lidar/default.yaml (DepthLSS values)
with x/y bounds from .../camera+lidar/swint_v0p075/default.yaml, and configs/nuscenes/seg/camera-bev256d2.yaml
(LSS values); BEVFusion (Liu et al., ICRA 2023) and Lift-Splat-Shoot (Philion and Fidler, ECCV 2020),
docs/conventions.md §2.

Differences from the reference (the first two change no value; the third only results the reference leaves
unspecified or gets wrong in a degenerate case):

- The outer product depth x context is formed only for the frustum points that land inside the grid, not for
  all B * N * D * H * W of them (the reference builds the full (B, N, D, H, W, C) tensor, ~640 MB per sample
  in float32, then drops the points outside). Values and gradients are the same.
- The pooling plan (which frustum points land in which cell) depends only on the calibration and augmentation
  matrices, so it is cached and reused while they stay the same ("precomputation", BEVFusion §4; docs/conventions.md §2);
  the reference recomputes it every forward.
- In the sparse depth image, when several LiDAR points fall on one pixel the nearest is kept (the reference
  writes them with an indexed assignment, whose winner is unspecified), and points behind the camera are
  dropped (the reference clamps their depth to 1e-5 and only the image bounds test rejects them; one on the
  optical axis would be written with a negative depth). The reference also subtracts the LiDAR augmentation's
  translation from the caller's points in place; we do not modify the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from torchsparse import ops
from torchsparse.nn.cache import BEVPoolCache

__all__ = [
    "BaseTransform",
    "DepthLSSTransform",
    "FrustumPlan",
    "LSSTransform",
]


@dataclass(frozen=True)
class FrustumPlan:
    """Where the lifted frustum points go, for one set of calibration and augmentation matrices.

    Attributes:
        kept: int64 (M,) indices, ascending, into the flattened (B, N, D, H, W) frustum of the points inside
            the grid.
        pixel: int64 (M,) the same points' indices into the flattened (B, N, H, W) feature map (their
            context).
        coords: int32 (M, 4) their cells as (x, y, z, batch), each inside (X, Y, Z) and the batch.
        intervals: the engine's interval plan over `coords` (sort order and runs of equal cells), so that a
            cached plan also skips the sort of `bev_pool`.
    """

    kept: Tensor
    pixel: Tensor
    coords: Tensor
    intervals: ops.BEVPoolPlan


def _at_least_float32(x: Tensor) -> Tensor:
    # The reference pools in float32 (force_fp32) even when the network runs in half precision.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_matrices(name: str, matrix: Tensor, leading: tuple[int, ...]) -> None:
    if not isinstance(matrix, Tensor) or tuple(matrix.shape) != (*leading, 4, 4):
        got = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
        raise ValueError(f"{name} must be {(*leading, 4, 4)}, got {got}")


class BaseTransform(nn.Module):
    """Shared part of the LSS transforms: grid, frustum, geometry and pooling (the reference's BaseTransform).

    State (in this order, all `nn.Parameter(requires_grad=False)`, as saved in the official checkpoints):
    dx float32 (3,) cell size, bx float32 (3,) centre of cell 0, nx int64 (3,) cells per axis, frustum float32
    (D, fH, fW, 3) of (u, v, depth) per bin and feature pixel.

    Args:
        in_channels: image feature channels.
        out_channels: BEV feature channels C (the context vector).
        image_size: (H, W) of the (augmented) network input image.
        feature_size: (fH, fW) of the image features.
        xbound, ybound, zbound: (lower, upper, step) of the BEV grid per axis, metres, LiDAR frame.
        dbound: (lower, upper, step) of the depth bins, metres along the optical axis;
            D = len(arange(*dbound)).
        cache: reuse the pooling plan while the matrices repeat (``plan_cache``, a `torchsparse.nn.BEVPoolCache`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: Sequence[int],
        feature_size: Sequence[int],
        xbound: Sequence[float],
        ybound: Sequence[float],
        zbound: Sequence[float],
        dbound: Sequence[float],
        cache: bool = True,
    ) -> None:
        super().__init__()
        for name, bound in (("xbound", xbound), ("ybound", ybound), ("zbound", zbound), ("dbound", dbound)):
            if len(bound) != 3 or not bound[2] > 0 or not bound[1] > bound[0]:
                raise ValueError(
                    f"{name} must be (lower, upper, step) with upper > lower, step > 0, got {bound}"
                )
        self.in_channels = in_channels
        self.image_size = tuple(int(v) for v in image_size)
        self.feature_size = tuple(int(v) for v in feature_size)
        self.xbound, self.ybound, self.zbound, self.dbound = (
            tuple(float(v) for v in b) for b in (xbound, ybound, zbound, dbound)
        )
        bounds = (self.xbound, self.ybound, self.zbound)
        self.dx = nn.Parameter(torch.tensor([b[2] for b in bounds]), requires_grad=False)
        self.bx = nn.Parameter(torch.tensor([b[0] + b[2] / 2.0 for b in bounds]), requires_grad=False)
        # int() truncates like the reference's torch.LongTensor of the float quotients.
        self.nx = nn.Parameter(
            torch.tensor([int((b[1] - b[0]) / b[2]) for b in bounds], dtype=torch.int64), requires_grad=False
        )
        self.C = out_channels
        self.frustum = nn.Parameter(self.create_frustum(), requires_grad=False)
        self.D = self.frustum.shape[0]
        self.plan_cache = BEVPoolCache() if cache else None

    def create_frustum(self) -> Tensor:
        """float32 (D, fH, fW, 3): (u, v, d) with u = linspace(0, W - 1, fW), v = linspace(0, H - 1, fH) pixel
        positions in the augmented image and d = arange(*dbound) the bin depths."""
        (ih, iw), (fh, fw) = self.image_size, self.feature_size
        ds = torch.arange(*self.dbound, dtype=torch.float32).view(-1, 1, 1).expand(-1, fh, fw)
        d = ds.shape[0]
        us = torch.linspace(0, iw - 1, fw, dtype=torch.float32).view(1, 1, fw).expand(d, fh, fw)
        vs = torch.linspace(0, ih - 1, fh, dtype=torch.float32).view(1, fh, 1).expand(d, fh, fw)
        return torch.stack((us, vs, ds), -1)

    def get_geometry(
        self,
        camera2lidar_rots: Tensor,
        camera2lidar_trans: Tensor,
        intrins: Tensor,
        post_rots: Tensor,
        post_trans: Tensor,
        extra_rots: Tensor | None = None,
        extra_trans: Tensor | None = None,
    ) -> Tensor:
        """LiDAR-frame position of every frustum point, in float32.

        For frustum point (u, v, d): undo the image augmentation, p = post_rots^-1 ((u, v, d) - post_trans);
        unproject, q = camera2lidar_rots intrins^-1 (p_u p_d, p_v p_d, p_d) + camera2lidar_trans; apply the
        LiDAR augmentation, extra_rots q + extra_trans.

        Args:
            camera2lidar_rots: (B, N, 3, 3).
            camera2lidar_trans: (B, N, 3).
            intrins: (B, N, 3, 3) camera intrinsics of the original image.
            post_rots: (B, N, 3, 3) image augmentation (original pixel -> augmented pixel), rotation part.
            post_trans: (B, N, 3) its translation.
            extra_rots: optional (B, 3, 3) LiDAR augmentation rotation (scale included).
            extra_trans: optional (B, 3) LiDAR augmentation translation.

        Returns:
            float32 (B, N, D, fH, fW, 3) points (x, y, z) in the (augmented) LiDAR frame.
        """
        b, n = camera2lidar_trans.shape[:2]
        shapes = {
            "camera2lidar_rots": (camera2lidar_rots, (b, n, 3, 3)),
            "camera2lidar_trans": (camera2lidar_trans, (b, n, 3)),
            "intrins": (intrins, (b, n, 3, 3)),
            "post_rots": (post_rots, (b, n, 3, 3)),
            "post_trans": (post_trans, (b, n, 3)),
            "extra_rots": (extra_rots, (b, 3, 3)),
            "extra_trans": (extra_trans, (b, 3)),
        }
        for name, (t, shape) in shapes.items():
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} must be {shape}, got {tuple(t.shape)}")
        with torch.autocast(camera2lidar_trans.device.type, enabled=False):
            frustum = self.frustum.float()
            points = frustum - post_trans.float().view(b, n, 1, 1, 1, 3)
            points = torch.einsum("bnij,bndhwj->bndhwi", torch.inverse(post_rots.float()), points)
            points = torch.cat((points[..., :2] * points[..., 2:3], points[..., 2:3]), -1)
            combine = camera2lidar_rots.float() @ torch.inverse(intrins.float())
            points = torch.einsum("bnij,bndhwj->bndhwi", combine, points)
            points = points + camera2lidar_trans.float().view(b, n, 1, 1, 1, 3)
            if extra_rots is not None:
                points = torch.einsum("bij,bndhwj->bndhwi", extra_rots.float(), points)
            if extra_trans is not None:
                points = points + extra_trans.float().view(b, 1, 1, 1, 1, 3)
        return points

    def pooling_plan(
        self,
        camera2lidar: Tensor,
        camera_intrinsics: Tensor,
        img_aug_matrix: Tensor,
        lidar_aug_matrix: Tensor | None = None,
    ) -> FrustumPlan:
        """Cells of the frustum points inside the grid (cached by the matrices when `plan_cache` is set).

        A point's cell is ((p - (bx - dx / 2)) / dx) converted with `.long()`, i.e. truncated toward zero as
        in the reference, so points up to one cell below the lower bound still land in cell 0; cells outside
        [0, nx) are dropped.

        Args:
            camera2lidar: (B, N, 4, 4).
            camera_intrinsics: (B, N, 4, 4) (the upper-left 3 x 3 is used).
            img_aug_matrix: (B, N, 4, 4) original pixel -> augmented pixel (upper-left 3 x 3 and [:3, 3]).
            lidar_aug_matrix: optional (B, 4, 4) LiDAR augmentation; None means identity.
        """
        b, n = camera2lidar.shape[:2]
        _check_matrices("camera2lidar", camera2lidar, (b, n))
        _check_matrices("camera_intrinsics", camera_intrinsics, (b, n))
        _check_matrices("img_aug_matrix", img_aug_matrix, (b, n))
        if lidar_aug_matrix is not None:
            _check_matrices("lidar_aug_matrix", lidar_aug_matrix, (b,))

        def compute() -> FrustumPlan:
            return self._compute_plan(camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix)

        if self.plan_cache is None:
            return compute()
        # The versions change when load_state_dict or any in-place edit touches the grid or the frustum.
        stamp = tuple((p.data_ptr(), p._version) for p in (self.frustum, self.dx, self.bx, self.nx))
        key = (camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix is None, stamp)
        if lidar_aug_matrix is not None:
            key = key + (lidar_aug_matrix,)
        return self.plan_cache.lookup(key, compute)

    def _compute_plan(self, camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix) -> FrustumPlan:
        n = camera2lidar.shape[1]
        geom = self.get_geometry(
            camera2lidar[..., :3, :3],
            camera2lidar[..., :3, 3],
            camera_intrinsics[..., :3, :3],
            img_aug_matrix[..., :3, :3],
            img_aug_matrix[..., :3, 3],
            None if lidar_aug_matrix is None else lidar_aug_matrix[..., :3, :3],
            None if lidar_aug_matrix is None else lidar_aug_matrix[..., :3, 3],
        )
        dx, bx = self.dx.float(), self.bx.float()
        cells = ((geom - (bx - dx / 2.0)) / dx).long().view(-1, 3)
        nx = self.nx.to(cells.device)
        inside = ((cells >= 0) & (cells < nx)).all(dim=1)
        kept = inside.nonzero().squeeze(1)
        d, fh, fw = self.frustum.shape[:3]
        per_sample = n * d * fh * fw
        batch = torch.div(kept, per_sample, rounding_mode="floor")
        camera = torch.div(kept, d * fh * fw, rounding_mode="floor")
        pixel = camera * (fh * fw) + kept % (fh * fw)
        coords = torch.cat((cells[kept], batch.unsqueeze(1)), dim=1).int()
        grid = (int(self.nx[2]), int(self.nx[0]), int(self.nx[1]))
        return FrustumPlan(kept, pixel, coords, ops.bev_pool_plan(coords, camera2lidar.shape[0], grid))

    def pool_to_bev(self, depth: Tensor, context: Tensor, plan: FrustumPlan) -> Tensor:
        """Splats depth x context onto the grid and folds the height bins into the channels.

        Args:
            depth: (B, N, D, fH, fW) depth distribution per feature pixel.
            context: (B, N, C, fH, fW) context vector per feature pixel.
            plan: from `pooling_plan` for the same B, N.

        Returns:
            (B, C * Z, X, Y), float32 (float64 for float64 inputs); channel z * C + c holds context channel c
            of height bin z (the reference's torch.cat(x.unbind(dim=2), 1)).
        """
        c = context.shape[2]
        depth = _at_least_float32(depth).reshape(-1)
        context = _at_least_float32(context).permute(0, 1, 3, 4, 2).reshape(-1, c)
        feats = depth[plan.kept].unsqueeze(1) * context[plan.pixel]
        x = ops.bev_pool_apply(feats, plan.intervals)
        return torch.cat(x.unbind(dim=2), 1)

    def get_cam_feats(self, img: Tensor, depth: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, N, D, fH, fW) depth distribution and (B, N, C, fH, fW) context; defined by the subclasses."""
        raise NotImplementedError

    def forward(
        self,
        img: Tensor,
        points: Sequence[Tensor] | None,
        camera2ego: Tensor | None,
        lidar2ego: Tensor | None,
        lidar2camera: Tensor | None,
        lidar2image: Tensor | None,
        camera_intrinsics: Tensor,
        camera2lidar: Tensor,
        img_aug_matrix: Tensor,
        lidar_aug_matrix: Tensor | None = None,
        metas: object = None,
    ) -> Tensor:
        """Image features -> BEV features.

        The arguments come in the order the reference's fusion model passes them
        (mmdet3d/models/fusion_models/bevfusion.py, extract_camera_features), as explicit tensors, the way the
        data pipeline collects them.
        camera2ego, lidar2ego, lidar2camera and metas are accepted for that call and not used (as in the
        reference); pass None.

        Args:
            img: (B, N, in_channels, fH, fW) image features of N cameras.
            points: list of B float (P_b, >= 3) LiDAR points (x, y, z, ...) in the augmented LiDAR frame; used
                by DepthLSSTransform, ignored by LSSTransform (may be None there).
            lidar2image: (B, N, 4, 4) intrinsics @ lidar2camera, original image pixels; DepthLSSTransform
                only.
            camera_intrinsics: (B, N, 4, 4).
            camera2lidar: (B, N, 4, 4).
            img_aug_matrix: (B, N, 4, 4) original pixel -> augmented pixel.
            lidar_aug_matrix: (B, 4, 4) LiDAR augmentation (rotation, scale, translation); None for identity.

        Returns:
            (B, out_channels * Z, X / downsample, Y / downsample), float32 unless autocast is on.
        """
        expected = (self.in_channels, *self.feature_size)
        if img.dim() != 5 or tuple(img.shape[2:]) != expected:
            raise ValueError(f"img must be (B, N, {', '.join(map(str, expected))}), got {tuple(img.shape)}")
        depth_in = self._depth_input(points, lidar2image, img_aug_matrix, lidar_aug_matrix, img.shape[:2])
        depth, context = self.get_cam_feats(img, depth_in)
        plan = self.pooling_plan(camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix)
        return self.downsample(self.pool_to_bev(depth, context, plan))

    def _depth_input(self, points, lidar2image, img_aug_matrix, lidar_aug_matrix, bn) -> Tensor | None:
        return None


def _downsample_stack(channels: int, downsample: int) -> nn.Module:
    if downsample == 1:
        return nn.Identity()
    if downsample != 2:
        raise ValueError(f"downsample must be 1 or 2, got {downsample}")
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(True),
        nn.Conv2d(channels, channels, 3, stride=downsample, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(True),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(True),
    )


def _split(x: Tensor, b: int, n: int, d: int, c: int) -> tuple[Tensor, Tensor]:
    """depthnet output (B * N, D + C, fH, fW) -> softmax depth (B, N, D, fH, fW), context
    (B, N, C, fH, fW)."""
    depth = x[:, :d].softmax(dim=1)
    context = x[:, d : d + c]
    return depth.view(b, n, d, *x.shape[2:]), context.reshape(b, n, c, *x.shape[2:])


class LSSTransform(BaseTransform):
    """LSS view transform of the map-segmentation models: depthnet is one 1 x 1 conv to D + C channels.

    Keys: dx, bx, nx, frustum, depthnet.{weight,bias}, downsample.{0,1,3,4,6,7}.* (downsample 2).
    Defaults: configs/nuscenes/seg/camera-bev256d2.yaml (also fusion-bev256d2-lss.yaml): 256 -> 80 channels,
    image 256 x 704, features 32 x 88, x/y +-51.2 m step 0.4 (256 x 256 cells), z [-10, 10] one bin, depth
    [1, 60) step 0.5 (118 bins), downsample 2 -> (B, 80, 128, 128).
    """

    def __init__(
        self,
        in_channels: int = 256,
        out_channels: int = 80,
        image_size: Sequence[int] = (256, 704),
        feature_size: Sequence[int] = (32, 88),
        xbound: Sequence[float] = (-51.2, 51.2, 0.4),
        ybound: Sequence[float] = (-51.2, 51.2, 0.4),
        zbound: Sequence[float] = (-10.0, 10.0, 20.0),
        dbound: Sequence[float] = (1.0, 60.0, 0.5),
        downsample: int = 2,
        cache: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, image_size, feature_size, xbound, ybound, zbound, dbound, cache=cache
        )
        self.depthnet = nn.Conv2d(in_channels, self.D + self.C, 1)
        self.downsample = _downsample_stack(out_channels, downsample)

    def get_cam_feats(self, img: Tensor, depth: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, N, in_channels, fH, fW) -> depth (B, N, D, fH, fW) (softmax over D), context
        (B, N, C, fH, fW)."""
        b, n = img.shape[:2]
        x = self.depthnet(img.reshape(b * n, *img.shape[2:]))
        return _split(x, b, n, self.D, self.C)


class DepthLSSTransform(BaseTransform):
    """LSS view transform of BEVFusion detection: the depth net also sees a sparse LiDAR depth image.

    dtransform (1 -> 8 -> 32 -> 64 channels, stride 1, 4, 2: the 256 x 704 depth image down to the 32 x 88
    feature map) is concatenated in front of the image features; depthnet (3 x 3, 3 x 3, 1 x 1 convs) predicts
    D depth logits and C context channels.

    Keys (the official order): dx, bx, nx, frustum, dtransform.{0,1,3,4,6,7}.*, depthnet.{0,1,3,4,6}.*,
    downsample.{0,1,3,4,6,7}.*. Defaults: configs/nuscenes/det/transfusion/secfpn/camera+lidar (x/y bounds
    from its swint_v0p075/): 256 -> 80 channels, image 256 x 704, features 32 x 88, x/y +-54 m step 0.3
    (360 x 360 cells), z [-10, 10] one bin, depth [1, 60) step 0.5 (118 bins), downsample 2 ->
    (B, 80, 180, 180).
    """

    def __init__(
        self,
        in_channels: int = 256,
        out_channels: int = 80,
        image_size: Sequence[int] = (256, 704),
        feature_size: Sequence[int] = (32, 88),
        xbound: Sequence[float] = (-54.0, 54.0, 0.3),
        ybound: Sequence[float] = (-54.0, 54.0, 0.3),
        zbound: Sequence[float] = (-10.0, 10.0, 20.0),
        dbound: Sequence[float] = (1.0, 60.0, 0.5),
        downsample: int = 2,
        cache: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, image_size, feature_size, xbound, ybound, zbound, dbound, cache=cache
        )
        self.dtransform = nn.Sequential(
            nn.Conv2d(1, 8, 1),
            nn.BatchNorm2d(8),
            nn.ReLU(True),
            nn.Conv2d(8, 32, 5, stride=4, padding=2),
            nn.BatchNorm2d(32),
            nn.ReLU(True),
            nn.Conv2d(32, 64, 5, stride=2, padding=2),
            nn.BatchNorm2d(64),
            nn.ReLU(True),
        )
        self.depthnet = nn.Sequential(
            nn.Conv2d(in_channels + 64, in_channels, 3, padding=1),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(True),
            nn.Conv2d(in_channels, in_channels, 3, padding=1),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(True),
            nn.Conv2d(in_channels, self.D + self.C, 1),
        )
        self.downsample = _downsample_stack(out_channels, downsample)

    def depth_image(
        self,
        points: Sequence[Tensor],
        lidar2image: Tensor,
        img_aug_matrix: Tensor,
        lidar_aug_matrix: Tensor | None = None,
    ) -> Tensor:
        """Sparse depth image of each camera from the LiDAR points.

        A point p (augmented LiDAR frame) is taken back to the original LiDAR frame (lidar_aug^-1), to the
        camera, q = lidar2image[:3, :3] p + lidar2image[:3, 3]; its depth is q_z, its pixel (u, v) the first
        two entries of img_aug[:3, :3] (q_x / z, q_y / z, z) + img_aug[:3, 3] with z = clamp(q_z, 1e-5, 1e5).
        Pixel (row, column) = (floor v, floor u) when 0 <= v < H and 0 <= u < W and q_z > 0.

        Args:
            points: B float tensors (P_b, >= 3), columns x, y, z first; not modified.
            lidar2image: (B, N, 4, 4).
            img_aug_matrix: (B, N, 4, 4).
            lidar_aug_matrix: optional (B, 4, 4); None for identity.

        Returns:
            float32 (B, N, 1, H, W): the depth (metres along the optical axis) of the nearest point that
            projects into each pixel, 0 where none does.
        """
        if lidar2image is None or lidar2image.dim() != 4:
            raise ValueError("lidar2image must be (B, N, 4, 4)")
        b, n = lidar2image.shape[:2]
        _check_matrices("lidar2image", lidar2image, (b, n))
        _check_matrices("img_aug_matrix", img_aug_matrix, (b, n))
        if lidar_aug_matrix is not None:
            _check_matrices("lidar_aug_matrix", lidar_aug_matrix, (b,))
        if points is None or len(points) != b:
            raise ValueError(f"points must be a list of {b} (P, >= 3) tensors, got {type(points).__name__}")
        h, w = self.image_size
        out = torch.zeros(b, n * h * w, device=lidar2image.device)
        with torch.autocast(lidar2image.device.type, enabled=False):
            for i, cloud in enumerate(points):
                if cloud.dim() != 2 or cloud.shape[1] < 3:
                    raise ValueError(f"points[{i}] must be (P, >= 3), got {tuple(cloud.shape)}")
                xyz = cloud[:, :3].float().t()
                if lidar_aug_matrix is not None:
                    aug = lidar_aug_matrix[i].float()
                    xyz = torch.inverse(aug[:3, :3]) @ (xyz - aug[:3, 3:4])
                proj = lidar2image[i].float()
                cam = proj[:, :3, :3] @ xyz + proj[:, :3, 3:4]  # (N, 3, P)
                dist = cam[:, 2]
                z = cam[:, 2:3].clamp(1e-5, 1e5)
                uvz = torch.cat((cam[:, :2] / z, z), dim=1)
                img_aug = img_aug_matrix[i].float()
                uv = (img_aug[:, :3, :3] @ uvz + img_aug[:, :3, 3:4])[:, :2]
                u, v = uv[:, 0], uv[:, 1]
                valid = (v >= 0) & (v < h) & (u >= 0) & (u < w) & (dist > 0)
                camera = torch.arange(n, device=valid.device).view(n, 1).expand_as(valid)[valid]
                flat = (camera * h + v[valid].long()) * w + u[valid].long()
                out[i].scatter_reduce_(0, flat, dist[valid], "amin", include_self=False)
        return out.view(b, n, 1, h, w)

    def _depth_input(self, points, lidar2image, img_aug_matrix, lidar_aug_matrix, bn) -> Tensor:
        depth = self.depth_image(points, lidar2image, img_aug_matrix, lidar_aug_matrix)
        if tuple(depth.shape[:2]) != tuple(bn):
            raise ValueError(f"lidar2image is for {tuple(depth.shape[:2])} cameras, img for {tuple(bn)}")
        return depth

    def get_cam_feats(self, img: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, in_channels, fH, fW) features and (B, N, 1, H, W) depth image -> depth (B, N, D, fH, fW)
        (softmax over D), context (B, N, C, fH, fW)."""
        b, n = img.shape[:2]
        d = self.dtransform(depth.reshape(b * n, *depth.shape[2:]).to(img.dtype))
        x = self.depthnet(torch.cat([d, img.reshape(b * n, *img.shape[2:])], dim=1))
        return _split(x, b, n, self.D, self.C)
