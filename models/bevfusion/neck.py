"""BEVFusion's camera neck, GeneralizedLSSFPN, in plain PyTorch with the official state-dict keys.

Reference: mit-han-lab/bevfusion db75150, mmdet3d/models/necks/generalized_lss.py with the arguments of
configs/nuscenes/det/transfusion/secfpn/camera+lidar/default.yaml (in_channels overridden to
[192, 384, 768] by swint_v0p075/default.yaml; docs/conventions.md §2).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvBNReLU", "GeneralizedLSSFPN"]


class ConvBNReLU(nn.Module):
    """mmcv's ConvModule with BN and ReLU: Conv2d (no bias) -> BatchNorm2d -> ReLU; keys ``conv``, ``bn``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class GeneralizedLSSFPN(nn.Module):
    """Top-down FPN that concatenates instead of adding: for i = n-2 .. 0,
    ``lat_i = fpn_convs[i](lateral_convs[i](cat([x_i, upsample(lat_{i+1}) to x_i's size])))``, with
    ``lat_{n-1} = x_{n-1}`` (the coarsest input, unconvolved).

    So ``lateral_convs[n-2]`` takes in_channels[n-2] + in_channels[n-1] channels and the others
    in_channels[i] + out_channels (BEVFusion: 448 and 1152). lateral_convs are 1x1, fpn_convs 3x3 (pad 1);
    all are Conv2d (no bias) + BatchNorm2d (eps 1e-5, momentum 0.1) + ReLU.

    The released config passes ``num_outs=3`` and ``start_level=0``; the reference forward ignores num_outs
    and returns len(in_channels) - 1 maps, as here.

    Args:
        in_channels: channels of the inputs, finest first (BEVFusion Swin-T: 192, 384, 768); at least 2.
        out_channels: channels of every output.
        align_corners: of the bilinear upsampling (False in the released config).
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (192, 384, 768),
        out_channels: int = 256,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"in_channels needs at least 2 levels, got {tuple(in_channels)}")
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.align_corners = align_corners
        n = len(self.in_channels)
        self.lateral_convs = nn.ModuleList(
            ConvBNReLU(
                self.in_channels[i] + (self.in_channels[i + 1] if i == n - 2 else out_channels),
                out_channels,
                1,
            )
            for i in range(n - 1)
        )
        self.fpn_convs = nn.ModuleList(
            ConvBNReLU(out_channels, out_channels, 3, padding=1) for _ in range(n - 1)
        )

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """Fuses multi-scale maps.

        Args:
            inputs: (B, in_channels[i], H_i, W_i) per level, finest first (e.g. Swin-T on 256 x 704:
                32 x 88, 16 x 44, 8 x 22).

        Returns:
            len(in_channels) - 1 maps (B, out_channels, H_i, W_i), finest first; BEVFusion uses the first
            (stride 8, 32 x 88).
        """
        if len(inputs) != len(self.in_channels) or any(
            x.dim() != 4 or x.shape[1] != c for x, c in zip(inputs, self.in_channels)
        ):
            shapes = [tuple(x.shape) for x in inputs]
            raise ValueError(
                f"inputs must be (B, C, H, W) with C = {self.in_channels} in order, got {shapes}"
            )
        laterals = list(inputs)
        for i in range(len(laterals) - 2, -1, -1):
            up = F.interpolate(
                laterals[i + 1], size=laterals[i].shape[2:], mode="bilinear", align_corners=self.align_corners
            )
            laterals[i] = self.fpn_convs[i](self.lateral_convs[i](torch.cat([laterals[i], up], dim=1)))
        return laterals[:-1]
