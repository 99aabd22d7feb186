"""Sparse convolution module with TorchSparse's parameter names and layout (`kernel`, `bias`)."""

import math
from collections.abc import Sequence

import torch
from torch import nn

from torchsparse.nn import functional as F
from torchsparse.tensor import SparseTensor, to_triple

__all__ = ["Conv3d"]


class Conv3d(nn.Module):
    """Sparse 3D convolution; semantics in `torchsparse.nn.functional.conv3d`.

    Parameters:
        kernel: (K, C_in, C_out), or (C_in, C_out) for a 1x1x1 stride-1 convolution (TorchSparse layout).
        bias: (C_out,) when bias=True.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = False,
        transposed: bool = False,
        generative: bool = False,
        downsample_mode: str = "minkowski",
    ) -> None:
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"channels must be positive, got {in_channels} -> {out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = to_triple(kernel_size, "kernel_size")
        self.stride = to_triple(stride, "stride")
        self.padding = to_triple(padding, "padding", minimum=0)
        self.dilation = to_triple(dilation, "dilation")
        self.transposed, self.generative, self.downsample_mode = transposed, generative, downsample_mode
        volume = math.prod(self.kernel_size)
        shape = (in_channels, out_channels) if volume == 1 and self.stride == (1, 1, 1) else (volume, in_channels, out_channels)
        self.kernel = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.choices: dict = {}  # measured automatic dataflows (see F.conv3d's `choices`); not in the state dict
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan = (self.out_channels if self.transposed else self.in_channels) * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan)
        nn.init.uniform_(self.kernel, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: SparseTensor) -> SparseTensor:
        return F.conv3d(
            input, self.kernel, self.bias, self.kernel_size, self.stride, self.padding, self.dilation,
            self.transposed, self.generative, self.downsample_mode, choices=self.choices,
        )

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if any(self.padding):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1, 1):
            text += f", dilation={self.dilation}"
        if self.bias is None:
            text += ", bias=False"
        if self.transposed:
            text += ", transposed=True"
        if self.generative:
            text += ", generative=True"
        if self.downsample_mode != "minkowski":
            text += f", downsample_mode={self.downsample_mode!r}"
        return text
