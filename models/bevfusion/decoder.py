"""BEVFusion's fuser and BEV decoder in plain PyTorch, with the official state-dict keys: ConvFuser (camera +
LiDAR BEV maps -> 256 channels), SECOND (2-D backbone) and SECONDFPN (neck) -> 512 channels at 180 x 180.

Reference: mit-han-lab/bevfusion db75150, mmdet3d/models/fusers/conv.py, mmdet3d/models/backbones/second.py,
mmdet3d/models/necks/second.py and configs/nuscenes/det/transfusion/secfpn/default.yaml (docs/conventions.md §2).
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["SECOND", "SECONDFPN", "ConvFuser"]


class ConvFuser(nn.Sequential):
    """Concatenates BEV maps along channels -> Conv2d 3x3 (no bias) -> BatchNorm2d -> ReLU (keys 0.*, 1.*).

    The BatchNorm keeps torch's defaults (eps 1e-5, momentum 0.1), as the reference's plain nn.BatchNorm2d.

    Args:
        in_channels: channels of each input, in input order (BEVFusion: camera 80, LiDAR 256).
        out_channels: output channels.
    """

    def __init__(self, in_channels: Sequence[int] = (80, 256), out_channels: int = 256) -> None:
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        super().__init__(
            nn.Conv2d(sum(self.in_channels), out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(True),
        )

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """(B, C_i, H, W) per input, in the order of in_channels -> (B, out_channels, H, W)."""
        if len(inputs) != len(self.in_channels) or any(
            x.dim() != 4 or x.shape[1] != c for x, c in zip(inputs, self.in_channels)
        ):
            shapes = [tuple(x.shape) for x in inputs]
            raise ValueError(
                f"inputs must be (B, C, H, W) with C = {self.in_channels} in order, got {shapes}"
            )
        return super().forward(torch.cat(list(inputs), dim=1))


class SECOND(nn.Module):
    """SECOND's 2-D backbone: per stage, Conv2d 3x3 (stride s, pad 1) -> BN -> ReLU, then layer_num times
    Conv2d 3x3 -> BN -> ReLU; convs without bias, BatchNorm2d eps 1e-3, momentum 0.01 (keys blocks.i.j).

    Args:
        in_channels: input channels.
        out_channels: output channels per stage.
        layer_nums: extra 3x3 conv layers per stage.
        layer_strides: stride of each stage's first conv.
        eps, momentum: of every BatchNorm2d.
    """

    def __init__(
        self,
        in_channels: int = 256,
        out_channels: Sequence[int] = (128, 256),
        layer_nums: Sequence[int] = (5, 5),
        layer_strides: Sequence[int] = (1, 2),
        eps: float = 1e-3,
        momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if not len(out_channels) == len(layer_nums) == len(layer_strides):
            raise ValueError("out_channels, layer_nums and layer_strides must have one entry per stage")
        in_filters = [in_channels, *out_channels[:-1]]
        blocks = []
        for c_in, c_out, num, stride in zip(in_filters, out_channels, layer_nums, layer_strides):
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out, eps=eps, momentum=momentum),
                nn.ReLU(True),
            ]
            for _ in range(num):
                layers += [
                    nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out, eps=eps, momentum=momentum),
                    nn.ReLU(True),
                ]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """(B, in_channels, H, W) -> one (B, out_channels[i], H_i, W_i) per stage, H_i = H / prod(strides[:i+1])."""
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return tuple(outs)


class SECONDFPN(nn.Module):
    """SECOND's neck: upsamples each stage to a common resolution and concatenates (keys deblocks.i.j).

    Each deblock is [up, BN, ReLU]: up is ConvTranspose2d(kernel = stride = s) for s > 1, Conv2d 1x1 for s = 1
    (use_conv_for_no_stride, as configured in BEVFusion) and Conv2d(kernel = stride = round(1 / s)) for s < 1;
    no bias; BatchNorm2d eps 1e-3, momentum 0.01.

    Args:
        in_channels: channels of each input level.
        out_channels: channels of each upsampled level.
        upsample_strides: upsampling factor of each level.
        eps, momentum: of every BatchNorm2d.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (128, 256),
        out_channels: Sequence[int] = (256, 256),
        upsample_strides: Sequence[float] = (1, 2),
        eps: float = 1e-3,
        momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if not len(in_channels) == len(out_channels) == len(upsample_strides):
            raise ValueError("in_channels, out_channels and upsample_strides must have one entry per level")
        self.in_channels = tuple(in_channels)
        deblocks = []
        for c_in, c_out, stride in zip(in_channels, out_channels, upsample_strides):
            if stride > 1:
                up: nn.Module = nn.ConvTranspose2d(c_in, c_out, int(stride), stride=int(stride), bias=False)
            else:
                down = round(1 / stride)
                up = nn.Conv2d(c_in, c_out, down, stride=down, bias=False)
            deblocks.append(
                nn.Sequential(up, nn.BatchNorm2d(c_out, eps=eps, momentum=momentum), nn.ReLU(True))
            )
        self.deblocks = nn.ModuleList(deblocks)

    def forward(self, x: Sequence[Tensor]) -> Tensor:
        """One (B, in_channels[i], H_i, W_i) per level -> (B, sum(out_channels), H, W).

        The reference returns this tensor wrapped in a one-element list.
        """
        if len(x) != len(self.deblocks):
            raise ValueError(f"expected {len(self.deblocks)} levels, got {len(x)}")
        return torch.cat([deblock(level) for deblock, level in zip(self.deblocks, x)], dim=1)
