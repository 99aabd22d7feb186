"""BEVFusion's LiDAR backbone: the SECOND-style SparseEncoder (spconv semantics) on our engine, with the
official state-dict keys and 5-D weight layout, so that `encoders.lidar.backbone.*` of an official checkpoint
loads directly.

Reference: mit-han-lab/bevfusion db75150, mmdet3d/models/backbones/sparse_encoder.py, mmdet3d/ops/sparse_block.py
and configs/nuscenes/det/transfusion/secfpn/lidar/voxelnet_0p075.yaml (docs/conventions.md §2).
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

import torchsparse.nn as spnn
from torchsparse import SparseTensor
from torchsparse.nn import functional as F
from torchsparse.tensor import to_triple

__all__ = [
    "SparseBasicBlock",
    "SparseEncoder",
    "SpconvLayoutConv3d",
    "from_spconv_layout",
    "to_spconv_layout",
]

# configs/nuscenes/det/transfusion/secfpn/lidar/voxelnet_0p075.yaml
ENCODER_CHANNELS = ((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128))
ENCODER_PADDINGS = ((0, 0, 1), (0, 0, 1), (0, 0, (1, 1, 0)), (0, 0))


def to_spconv_layout(kernel: Tensor, kernel_size: int | Sequence[int]) -> Tensor:
    """Our kernel as the 5-D weight of spconv 1.x (BEVFusion's checkpoints).

    Args:
        kernel: (K, C_in, C_out), or (C_in, C_out) when K = 1; row k belongs to kernel offset k in our order (x
            fastest for odd volumes, z fastest for even ones).
        kernel_size: (kx, ky, kz) or an int, with kx * ky * kz = K.

    Returns:
        (kx, ky, kz, C_in, C_out), contiguous: weight[ix, iy, iz] multiplies the input at
        stride * o - padding + (ix, iy, iz) * dilation, in (x, y, z) coordinate order.
    """
    kx, ky, kz = to_triple(kernel_size, "kernel_size")
    volume = kx * ky * kz
    if kernel.dim() == 2:
        kernel = kernel.unsqueeze(0)
    if kernel.dim() != 3 or kernel.shape[0] != volume:
        raise ValueError(
            f"kernel must be ({volume}, C_in, C_out) for kernel_size {(kx, ky, kz)}, "
            f"got {tuple(kernel.shape)}"
        )
    c_in, c_out = kernel.shape[1:]
    if volume % 2:  # x fastest: the rows are row-major over (z, y, x)
        return kernel.reshape(kz, ky, kx, c_in, c_out).permute(2, 1, 0, 3, 4).contiguous()
    return kernel.reshape(kx, ky, kz, c_in, c_out).contiguous()  # z fastest: row-major over (x, y, z)


def from_spconv_layout(weight: Tensor) -> Tensor:
    """The inverse of `to_spconv_layout`.

    Args:
        weight: (kx, ky, kz, C_in, C_out), spconv 1.x layout (spconv 2.x keeps (C_out, kx, ky, kz, C_in): permute
            it with (1, 2, 3, 4, 0) first).

    Returns:
        (K, C_in, C_out), K = kx * ky * kz, rows in our offset order, contiguous.
    """
    if weight.dim() != 5:
        raise ValueError(f"weight must be 5-D (kx, ky, kz, C_in, C_out), got {tuple(weight.shape)}")
    kx, ky, kz, c_in, c_out = weight.shape
    volume = kx * ky * kz
    if volume % 2:
        return weight.permute(2, 1, 0, 3, 4).reshape(volume, c_in, c_out).contiguous()
    return weight.reshape(volume, c_in, c_out).contiguous()


class SpconvLayoutConv3d(spnn.Conv3d):
    """`torchsparse.nn.Conv3d` whose state dict holds the kernel as spconv 1.x's ``weight``.

    The parameter stays ``kernel`` ((K, C_in, C_out), our offset order) for computation; ``state_dict()`` presents
    it as ``weight`` of shape (kx, ky, kz, C_in, C_out) and ``load_state_dict`` accepts that key (or our ``kernel``),
    so BEVFusion's checkpoints load unchanged. Bias-free like the official layers. Arguments as
    `torchsparse.nn.Conv3d`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.bias is not None:
            raise ValueError("the spconv-layout convolutions of BEVFusion have no bias; pass bias=False")
        self.register_state_dict_post_hook(_save_spconv_layout)
        self.register_load_state_dict_pre_hook(_load_spconv_layout)

    def spconv_weight_shape(self) -> tuple[int, ...]:
        return (*self.kernel_size, self.in_channels, self.out_channels)


def _save_spconv_layout(module: SpconvLayoutConv3d, state_dict, prefix: str, local_metadata) -> None:
    # The conv has no children, so this hook runs right after its own entry: re-inserting keeps the key order.
    state_dict[prefix + "weight"] = to_spconv_layout(state_dict.pop(prefix + "kernel"), module.kernel_size)


def _load_spconv_layout(
    module: SpconvLayoutConv3d,
    state_dict,
    prefix,
    local_metadata,
    strict,
    missing_keys,
    unexpected_keys,
    error_msgs,
) -> None:
    key = prefix + "weight"
    if key not in state_dict:
        return  # our own layout ("kernel"), or missing: the default loader reports it
    weight = state_dict.pop(key)
    expected = module.spconv_weight_shape()
    if tuple(weight.shape) != expected:
        error_msgs.append(
            f"size mismatch for {key}: copying a param with shape {tuple(weight.shape)} from checkpoint, the shape "
            f"in current model is {expected} (spconv layout kx, ky, kz, C_in, C_out)."
        )
        return
    state_dict[prefix + "kernel"] = from_spconv_layout(weight).reshape(module.kernel.shape)


def _conv_module(
    in_channels: int,
    out_channels: int,
    kernel_size,
    stride=1,
    padding=0,
    eps: float = 1e-3,
    momentum: float = 0.01,
) -> nn.Sequential:
    """make_sparse_convmodule: conv -> BN1d -> ReLU (keys 0.weight, 1.*). Stride 1 is submanifold (centred; the
    official padding k // 2 changes nothing), a larger stride is spconv's SparseConv3d with `padding`."""
    strided = to_triple(stride, "stride") != (1, 1, 1)
    conv = SpconvLayoutConv3d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding if strided else 0,
        downsample_mode="spconv" if strided else "minkowski",
    )
    return nn.Sequential(conv, spnn.BatchNorm(out_channels, eps=eps, momentum=momentum), spnn.ReLU(True))


class SparseBasicBlock(nn.Module):
    """ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + x) with submanifold 3x3x3 convs (mmdet3d SparseBasicBlock)."""

    def __init__(self, channels: int, eps: float = 1e-3, momentum: float = 0.01) -> None:
        super().__init__()
        self.conv1 = SpconvLayoutConv3d(channels, channels, 3)
        self.bn1 = spnn.BatchNorm(channels, eps=eps, momentum=momentum)
        self.conv2 = SpconvLayoutConv3d(channels, channels, 3)
        self.bn2 = spnn.BatchNorm(channels, eps=eps, momentum=momentum)
        self.relu = spnn.ReLU(True)

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)

    def fuse_residual(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        """For `torchsparse.nn.fuse`: (conv1 + bn1 + ReLU, conv2 + bn2, identity), both convs folded."""
        return spnn.FusedConv3d(self.conv1, self.bn1, relu=True), spnn.FusedConv3d(self.conv2, self.bn2), nn.Identity()


def _padding(value) -> int | tuple[int, int, int]:
    return value if isinstance(value, int) else tuple(value)


class SparseEncoder(nn.Module):
    """Sparse voxel encoder of BEVFusion's LiDAR branch (SECOND's middle encoder, spconv semantics).

    Defaults are BEVFusion's nuScenes detection configuration: grid 1440 x 1440 x 41 (x, y, z), conv_input
    SubM(5 -> 16), four stages of basic blocks each but the last ending in a k3 s2 convolution (paddings 1, 1,
    (1, 1, 0)), conv_out k(1, 1, 3) s(1, 1, 2) p0 -> dense (B, 128, 180, 180, 2) -> BEV (B, 256, 180, 180).

    Args:
        in_channels: voxel feature channels (x, y, z, intensity, time lag).
        sparse_shape: grid extent (X, Y, Z) in voxels.
        base_channels: output channels of conv_input.
        output_channels: output channels of conv_out.
        encoder_channels: per stage, the output channels of each block.
        encoder_paddings: per stage and block, the padding (int or 3 ints) used by that block if it is strided.
        block_type: "basicblock" (BEVFusion: residual blocks, the last block of a stage but the last stage is a
            strided conv) or "conv_module" (SECOND: the first block of a stage but the first is a strided conv,
            the others submanifold conv modules).
        eps, momentum: of every BatchNorm1d (the official BN1d eps 1e-3, momentum 0.01).

    State-dict keys and shapes equal the official ones: ``conv_input.{0.weight,1.*}``,
    ``encoder_layers.encoder_layer{i}.{j}.{conv1,bn1,conv2,bn2}.*`` for basic blocks,
    ``encoder_layers.encoder_layer{i}.{j}.{0.weight,1.*}`` for conv modules, ``conv_out.{0.weight,1.*}``;
    conv weights (kx, ky, kz, C_in, C_out).
    """

    def __init__(
        self,
        in_channels: int = 5,
        sparse_shape: Sequence[int] = (1440, 1440, 41),
        base_channels: int = 16,
        output_channels: int = 128,
        encoder_channels: Sequence[Sequence[int]] = ENCODER_CHANNELS,
        encoder_paddings: Sequence[Sequence] = ENCODER_PADDINGS,
        block_type: str = "basicblock",
        eps: float = 1e-3,
        momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if block_type not in ("basicblock", "conv_module"):
            raise ValueError(f"block_type must be 'basicblock' or 'conv_module', got {block_type!r}")
        if len(encoder_channels) != len(encoder_paddings) or any(
            len(c) != len(p) for c, p in zip(encoder_channels, encoder_paddings)
        ):
            raise ValueError("encoder_paddings must have one entry per block of encoder_channels")
        self.in_channels = in_channels
        self.sparse_shape = to_triple(tuple(sparse_shape), "sparse_shape")
        norm = {"eps": eps, "momentum": momentum}
        self.conv_input = _conv_module(in_channels, base_channels, 3, **norm)

        self.encoder_layers = nn.Sequential()
        channels = base_channels
        num_stages = len(encoder_channels)
        for i, blocks in enumerate(encoder_channels):
            layers = []
            for j, out_channels in enumerate(blocks):
                padding = _padding(encoder_paddings[i][j])
                if block_type == "conv_module":
                    if i != 0 and j == 0:
                        layers.append(_conv_module(channels, out_channels, 3, 2, padding, **norm))
                    else:
                        layers.append(_conv_module(channels, out_channels, 3, **norm))
                elif j == len(blocks) - 1 and i != num_stages - 1:
                    layers.append(_conv_module(channels, out_channels, 3, 2, padding, **norm))
                else:
                    if out_channels != channels:
                        raise ValueError(
                            f"a basic block keeps its width: stage {i + 1} block {j + 1} maps "
                            f"{channels} -> {out_channels} channels"
                        )
                    layers.append(SparseBasicBlock(out_channels, **norm))
                channels = out_channels
            self.encoder_layers.add_module(f"encoder_layer{i + 1}", nn.Sequential(*layers))

        self.conv_out = _conv_module(channels, output_channels, (1, 1, 3), (1, 1, 2), 0, **norm)
        self.output_shape = self._output_shape()

    def _output_shape(self) -> tuple[int, int, int]:
        """Grid (X, Y, Z) of conv_out's output: (size + 2p - d(k - 1) - 1) // s + 1 per strided conv."""
        size = self.sparse_shape
        for module in self.modules():
            if isinstance(module, SpconvLayoutConv3d) and module.stride != (1, 1, 1):
                size = tuple(
                    (n + 2 * p - d * (k - 1) - 1) // s + 1
                    for n, p, d, k, s in zip(
                        size, module.padding, module.dilation, module.kernel_size, module.stride
                    )
                )
        return size  # type: ignore[return-value]

    @property
    def bev_channels(self) -> int:
        """Channels of the BEV output: output_channels times the height left after conv_out."""
        return self.conv_out[0].out_channels * self.output_shape[2]

    def forward(self, feats: Tensor, coords: Tensor, batch_size: int) -> Tensor:
        """Encodes voxels into a dense bird's-eye-view map.

        Args:
            feats: floating (N, in_channels) voxel features.
            coords: int32 (N, 4) unique voxel coordinates (batch, x, y, z) with 0 <= batch < batch_size and
                0 <= x, y, z < sparse_shape (BEVFusion's voxelization writes x, y, z in this order).
            batch_size: number of samples B.

        Returns:
            (B, C * D, X', Y'), e.g. (B, 256, 180, 180): conv_out's dense (B, C, X', Y', D) with the height folded
            into the channels as channel c * D + d, as the reference's ``permute(0, 1, 4, 2, 3).view(N, C * D, H,
            W)`` of spconv's dense (N, C, x, y, z).
        """
        if feats.dim() != 2 or feats.shape[1] != self.in_channels:
            raise ValueError(f"feats must be (N, {self.in_channels}), got {tuple(feats.shape)}")
        if coords.dim() != 2 or coords.shape[1] != 4 or coords.shape[0] != feats.shape[0]:
            raise ValueError(
                f"coords must be ({feats.shape[0]}, 4) as (batch, x, y, z), got {tuple(coords.shape)}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        spatial_range = (batch_size, *self.sparse_shape)
        if coords.numel() and not torch.compiler.is_compiling():
            low, high = coords.amin(0).tolist(), coords.amax(0).tolist()
            if min(low) < 0 or any(h >= r for h, r in zip(high, spatial_range)):
                raise ValueError(
                    f"coords span {low}..{high}, outside (batch_size, *sparse_shape) = {spatial_range}"
                )
        x = SparseTensor(feats, coords.int(), spatial_range=spatial_range)
        x = self.conv_input(x)
        x = self.encoder_layers(x)
        x = self.conv_out(x)
        return F.to_bev(x, "z")
