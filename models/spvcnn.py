"""SPVCNN (Tang et al., ECCV 2020): MinkUNet plus a high-resolution point branch (SPVConv)."""

from torch import Tensor, nn

import torchsparse.nn.functional as F
from torchsparse import PointTensor, SparseTensor
from torchsparse.models.minkunet import MinkUNet
from torchsparse.nn.functional.point_voxel import Orphans

__all__ = ["SPVCNN", "fuse_points", "points_to_voxels"]


class SPVCNN(MinkUNet):
    """MinkUNet whose voxel stages exchange features with a point branch (Tang et al., ECCV 2020; docs/conventions.md §2).

    Args:
        num_classes, cr, in_channels: as MinkUNet (same state-dict keys and parameter counts).
        pres, vres: point and voxel resolution in metres (0.05 and 0.05 as released).
        orphans: `point_to_voxel` policy for points whose voxel is missing; "clamp" as TorchSparse v2.1.
    """

    def __init__(
        self,
        num_classes: int = 19,
        cr: float = 1.0,
        in_channels: int = 4,
        pres: float = 0.05,
        vres: float = 0.05,
        orphans: Orphans = "clamp",
    ) -> None:
        super().__init__(num_classes, cr, in_channels)
        self.pres, self.vres, self.orphans = pres, vres, orphans
        self.dropout = nn.Dropout(0.3, True)

    def forward(self, x: SparseTensor) -> Tensor:
        """Per-point logits.

        Args:
            x: points with integer coordinates in units of pres (one per voxel as SPVNAS feeds it, or several)
                and features (N, in_channels).

        Returns:
            float (N, num_classes) logits in x's row order.
        """
        z = PointTensor(x.feats, x.coords)  # converted exactly (never narrower than float32)
        x0, z = F.initial_voxelize(z, self.pres, self.vres)
        x0 = self.stem(x0)
        z0 = F.voxel_to_point(x0, z)
        levels = [x0, F.point_to_voxel(x0, z0, self.orphans)]
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            levels.append(stage(levels[-1]))
        x0, x1, x2, x3, x4 = levels[0], *levels[2:]

        z1 = self._fuse(x4, z0, 0)
        y = self.up(1, self.up(0, self._to_voxels(x4, z1), x3), x2)
        z2 = self._fuse(y, z1, 1)
        y = self.up(3, self.up(2, self._to_voxels(y, z2), x1), x0)
        z3 = self._fuse(y, z2, 2)
        return self.classifier(z3.feats)

    def _fuse(self, x: SparseTensor, z: PointTensor, i: int) -> PointTensor:
        return fuse_points(x, z, self.point_transforms[i])

    def _to_voxels(self, x: SparseTensor, z: PointTensor) -> SparseTensor:
        return points_to_voxels(x, z, self.orphans, self.dropout)


def fuse_points(x: SparseTensor, z: PointTensor, transform: nn.Module) -> PointTensor:
    """SPVConv's fusion: voxel features interpolated at the points + transform(the previous point features)."""
    interpolated = F.voxel_to_point(x, z)
    return interpolated.replace(interpolated.feats + transform(z.feats))


def points_to_voxels(x: SparseTensor, z: PointTensor, orphans: Orphans, dropout: nn.Module) -> SparseTensor:
    """Point features averaged into x's voxels, then dropout (the input of the first up stages)."""
    y = F.point_to_voxel(x, z, orphans)
    return y.replace(dropout(y.feats))
