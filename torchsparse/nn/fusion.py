"""Inference-time fusion: `fuse(model)` returns an equivalent eval-mode model whose convolutions carry their
BatchNorm, ReLU and residual addition.

    model = torchsparse.nn.fuse(MinkUNet().eval())
    with torch.inference_mode():
        logits = model(x)

Modelled on torch.ao.quantization.fuse_modules and TensorRT's convolution / BatchNorm folding:
  - BatchNorm after a convolution is folded into its weight and bias: with s = gamma / sqrt(running_var + eps),
    W'[k, :, c] = W[k, :, c] * s[c] and b' = (b - running_mean) * s + beta;
  - a ReLU right after (the convolution or its BatchNorm) becomes the convolution's `relu` epilogue;
  - a residual block relu(net(x) + shortcut(x)) whose last layer of `net` is a convolution (+ BatchNorm) runs
    that convolution with `residual=shortcut(x)` and `relu=True`: the fused dataflow adds both in the output tile
    while it is in cache instead of three more passes over (N, C) features.
Blocks opt in to the residual rewrite by a method ``fuse_residual(self) -> (body, last_conv, shortcut)`` called
after their children were folded (torchsparse.models' residual blocks define it).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from torchsparse.nn import functional as F
from torchsparse.nn.functional.conv import _compute_dtype
from torchsparse.nn.modules.conv import Conv3d
from torchsparse.nn.modules.elementwise import BatchNorm, ReLU
from torchsparse.tensor import SparseTensor

__all__ = ["FusedConv3d", "FusedResidual", "fold_batchnorm", "fuse", "last_fused_conv"]


def fold_batchnorm(
    kernel: Tensor, bias: Tensor | None, bn: nn.BatchNorm1d
) -> tuple[Tensor, Tensor]:
    """The weight and bias of a convolution followed by BatchNorm in eval mode, computed in float64.

    Args:
        kernel: (K, C_in, C_out) or (C_in, C_out) convolution weight.
        bias: optional (C_out,) convolution bias.
        bn: BatchNorm over C_out channels with running statistics.

    Returns:
        (kernel', bias') in kernel's dtype and shape: kernel' = kernel * s over the output channel,
        bias' = (bias - running_mean) * s + beta, s = gamma / sqrt(running_var + eps).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    c_out = kernel.shape[-1]
    if bn.num_features != c_out:
        raise ValueError(f"BatchNorm has {bn.num_features} channels but the convolution outputs {c_out}")
    var, mean = bn.running_var.double(), bn.running_mean.double()
    scale = torch.rsqrt(var + bn.eps)
    shift = -mean * scale
    if bn.weight is not None:
        scale, shift = scale * bn.weight.double(), shift * bn.weight.double()
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    if bias is not None:
        shift = shift + bias.double() * scale
    return (kernel.double() * scale).to(kernel.dtype), shift.to(kernel.dtype)


class FusedConv3d(nn.Module):
    """A `Conv3d` with its BatchNorm folded in and a fused epilogue ``relu(conv + bias + residual)``.

    Built by `fuse`; holds the folded weight as a buffer (inference only). Under torch.autocast("cpu") the weight
    converted to the autocast dtype is kept and reused while the weight is unchanged ("converted once").
    """

    def __init__(self, conv: Conv3d, bn: nn.BatchNorm1d | None = None, relu: bool = False) -> None:
        super().__init__()
        kernel = conv.kernel.detach()
        bias = None if conv.bias is None else conv.bias.detach()
        if bn is not None:
            kernel, bias = fold_batchnorm(kernel, bias, bn)
        self.register_buffer("kernel", kernel.clone())
        self.register_buffer("bias", None if bias is None else bias.clone())
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = (
            conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        )
        self.transposed, self.generative, self.downsample_mode = conv.transposed, conv.generative, conv.downsample_mode
        self.relu = relu
        self._converted: dict[torch.dtype, tuple[int, Tensor, Tensor | None]] = {}
        self.choices: dict = {}  # measured automatic dataflows, as Conv3d's (the epilogue is part of what is timed)

    def _weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        if dtype == self.kernel.dtype:
            return self.kernel, self.bias
        cached = self._converted.get(dtype)
        if cached is None or cached[0] != self.kernel._version:
            bias = None if self.bias is None else self.bias.to(dtype)
            cached = (self.kernel._version, self.kernel.to(dtype), bias)
            self._converted[dtype] = cached
        return cached[1], cached[2]

    def forward(self, input: SparseTensor, residual: SparseTensor | Tensor | None = None) -> SparseTensor:
        dtype = _compute_dtype(input.feats)
        kernel, bias = self._weights(dtype)
        return F.conv3d(
            input, kernel, bias, self.kernel_size, self.stride, self.padding, self.dilation, self.transposed,
            self.generative, self.downsample_mode, residual=residual, relu=self.relu, choices=self.choices,
        )

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"bias={self.bias is not None}, relu={self.relu}")


class FusedResidual(nn.Module):
    """relu(last(body(x)) + shortcut(x)) with the addition and ReLU in `last`'s epilogue."""

    def __init__(self, body: nn.Module, last: FusedConv3d, shortcut: nn.Module) -> None:
        super().__init__()
        self.body, self.last, self.shortcut = body, last, shortcut
        self.last.relu = True

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.last(self.body(x), residual=self.shortcut(x))


def _fold_sequential(seq: nn.Sequential) -> None:
    """Replaces each run Conv3d [BatchNorm] [ReLU] of seq by FusedConv3d and Identity placeholders (the indices,
    hence the state-dict keys of the other layers, stay)."""
    names = list(seq._modules)
    i = 0
    while i < len(names):
        conv = seq._modules[names[i]]
        if not isinstance(conv, Conv3d):
            i += 1
            continue
        j = i + 1
        bn = None
        if j < len(names) and isinstance(seq._modules[names[j]], BatchNorm):
            bn = seq._modules[names[j]]
            j += 1
        relu = j < len(names) and type(seq._modules[names[j]]) is ReLU
        if relu:
            j += 1
        seq._modules[names[i]] = FusedConv3d(conv, bn, relu)
        for k in range(i + 1, j):
            seq._modules[names[k]] = nn.Identity()
        i = j


def _fuse_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        _fuse_children(child)
        rewrite = getattr(child, "fuse_residual", None)
        if callable(rewrite):
            body, last, shortcut = rewrite()
            module._modules[name] = FusedResidual(body, last, shortcut)
    if isinstance(module, nn.Sequential):
        _fold_sequential(module)


def last_fused_conv(net: nn.Sequential) -> tuple[nn.Sequential, FusedConv3d]:
    """For a folded Sequential ending in a FusedConv3d (then only Identity): (the layers before it, it)."""
    layers = [m for m in net if not isinstance(m, nn.Identity)]
    if not layers or not isinstance(layers[-1], FusedConv3d) or layers[-1].relu:
        raise ValueError("a fusable residual branch must end in a convolution (+ BatchNorm) without ReLU")
    return nn.Sequential(*layers[:-1]), layers[-1]


def fuse(model: nn.Module) -> nn.Module:
    """An inference copy of `model` with BatchNorm folded into the preceding sparse convolutions and ReLU and
    residual additions applied in their output tiles.

    Folded: every `Conv3d` followed, inside an nn.Sequential, by `BatchNorm` and / or `ReLU` (the layers become
    nn.Identity, so other layers keep their names); residual blocks that define ``fuse_residual`` (MinkUNet's
    ResidualBlock, SPVNAS's blocks, BEVFusion's SparseBasicBlock). Anything else runs as before.

    Args:
        model: a module in eval mode (folding uses BatchNorm's running statistics, which training would change).

    Returns:
        A new module (the argument is left untouched) whose outputs equal the original's up to float rounding
        (within 1e-5 relative in float32 on the bundled models). Its folded weights are buffers: it is for
        inference, not training.

    Raises:
        ValueError: if any submodule is in training mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    training = [name or "model" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"fuse needs a model in eval mode (call model.eval()); in training mode: {training[:3]}")
    fused = copy.deepcopy(model)
    with torch.no_grad():
        _fuse_children(fused)
        rewrite = getattr(fused, "fuse_residual", None)
        if callable(rewrite):
            fused = FusedResidual(*rewrite())
    return fused.eval()
