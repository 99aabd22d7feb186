"""MinkUNet (Choy et al. 2019) as released with SPVNAS: the voxel U-Net, layer for layer with TorchSparse v2.1
state-dict keys, so that official checkpoints load."""

from torch import Tensor, nn

import torchsparse
import torchsparse.nn as spnn
from torchsparse import SparseTensor

__all__ = ["MinkUNet", "ResidualBlock", "conv_block", "num_parameters", "unet_channels"]

BASE_CHANNELS = (32, 32, 64, 128, 256, 256, 128, 96, 96)


def unet_channels(cr: float) -> list[int]:
    """The 9 widths (stem, 4 stages, 4 up stages) at width multiplier cr, each int()-truncated as released."""
    if not cr > 0:
        raise ValueError(f"cr must be > 0, got {cr}")
    channels = [int(cr * c) for c in BASE_CHANNELS]
    if min(channels) < 1:
        raise ValueError(f"cr={cr} makes a layer 0 channels wide")
    return channels


def conv_block(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, transposed: bool = False
):
    """Conv3d -> BatchNorm -> ReLU as a Sequential (keys 0.kernel, 1.*)."""
    return nn.Sequential(
        spnn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, transposed=transposed),
        spnn.BatchNorm(out_channels),
        spnn.ReLU(True),
    )


class _Block(nn.Module):
    """A layer sequence kept under `.net`, as the released checkpoints name it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.net(x)


class ResidualBlock(nn.Module):
    """ReLU(net(x) + downsample(x)); net = [Conv3d k3, BN, ReLU, Conv3d k3, BN]; downsample = identity or
    [Conv3d k1, BN] when the width changes."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            spnn.Conv3d(in_channels, out_channels, 3),
            spnn.BatchNorm(out_channels),
            spnn.ReLU(True),
            spnn.Conv3d(out_channels, out_channels, 3),
            spnn.BatchNorm(out_channels),
        )
        self.downsample = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(spnn.Conv3d(in_channels, out_channels, 1), spnn.BatchNorm(out_channels))
        )
        self.relu = spnn.ReLU(True)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.relu(self.net(x) + self.downsample(x))

    def fuse_residual(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        """For `torchsparse.nn.fuse`, once net and downsample are folded: (net up to its last conv, that conv,
        downsample); the addition and ReLU move into the last conv's epilogue."""
        body, last = spnn.fusion.last_fused_conv(self.net)
        return body, last, self.downsample


class MinkUNet(nn.Module):
    """Voxel U-Net for semantic segmentation (Tang et al., ECCV 2020, SPVNAS release; docs/conventions.md §2).

    Args:
        num_classes: output classes (19 for SemanticKITTI in SPVNAS's class order).
        cr: width multiplier; released 0.5, 0.64, 1.0 (5.45 M / 8.79 M / 21.78 M parameters).
        in_channels: input features per voxel (x, y, z, intensity).

    `point_transforms` is defined but unused, as in the release, so MinkUNet and SPVCNN share state-dict keys.
    """

    def __init__(self, num_classes: int = 19, cr: float = 1.0, in_channels: int = 4) -> None:
        super().__init__()
        cs = unet_channels(cr)
        self.channels = cs
        self.stem = nn.Sequential(
            spnn.Conv3d(in_channels, cs[0], 3),
            spnn.BatchNorm(cs[0]),
            spnn.ReLU(True),
            spnn.Conv3d(cs[0], cs[0], 3),
            spnn.BatchNorm(cs[0]),
            spnn.ReLU(True),
        )
        for i in range(4):
            stage = nn.Sequential(
                _Block(conv_block(cs[i], cs[i], kernel_size=2, stride=2)),
                ResidualBlock(cs[i], cs[i + 1]),
                ResidualBlock(cs[i + 1], cs[i + 1]),
            )
            self.add_module(f"stage{i + 1}", stage)
        skips = (cs[3], cs[2], cs[1], cs[0])
        for i in range(4):
            up = nn.ModuleList(
                [
                    _Block(conv_block(cs[4 + i], cs[5 + i], kernel_size=2, stride=2, transposed=True)),
                    nn.Sequential(
                        ResidualBlock(cs[5 + i] + skips[i], cs[5 + i]), ResidualBlock(cs[5 + i], cs[5 + i])
                    ),
                ]
            )
            self.add_module(f"up{i + 1}", up)
        self.classifier = nn.Sequential(nn.Linear(cs[8], num_classes))
        self.point_transforms = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(cs[0], cs[4]), nn.BatchNorm1d(cs[4]), nn.ReLU(True)),
                nn.Sequential(nn.Linear(cs[4], cs[6]), nn.BatchNorm1d(cs[6]), nn.ReLU(True)),
                nn.Sequential(nn.Linear(cs[6], cs[8]), nn.BatchNorm1d(cs[8]), nn.ReLU(True)),
            ]
        )

    def encode(self, x: SparseTensor) -> list[SparseTensor]:
        """Stem and the four stages: the tensors at strides 1, 2, 4, 8, 16."""
        levels = [self.stem(x)]
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            levels.append(stage(levels[-1]))
        return levels

    def up(self, i: int, y: SparseTensor, skip: SparseTensor) -> SparseTensor:
        """Up stage i (0..3): transposed conv onto the finer level, concatenate the skip, residual blocks."""
        deconv, fuse = getattr(self, f"up{i + 1}")
        return fuse(torchsparse.cat([deconv(y), skip]))

    def forward(self, x: SparseTensor) -> Tensor:
        """Per-voxel logits.

        Args:
            x: voxels with features (N, in_channels) (metric x, y, z, intensity), stride 1, unique coords.

        Returns:
            float (N, num_classes) logits in x's row order.
        """
        levels = self.encode(x)
        y = levels[4]
        for i in range(4):
            y = self.up(i, y, levels[3 - i])
        return self.classifier(y.feats)


def num_parameters(model: nn.Module) -> int:
    """Number of parameter elements (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
