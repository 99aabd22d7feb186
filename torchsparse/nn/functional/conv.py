"""Sparse 3D convolution on SparseTensors."""

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from torchsparse import ops
from torchsparse.conv_output import KernelMap, conv_output
from torchsparse.settings import Choice, ConvConfig, current_config, default_tile
from torchsparse.tensor import SparseTensor, to_triple

__all__ = ["conv3d", "layer_key"]


def layer_key(
    in_channels: int, out_channels: int, kernel_size, stride, dilation, transposed: bool, generative: bool, tensor_stride
) -> str:
    """Name of a layer group: convolutions with equal shapes and maps, which share one tuned choice."""
    kind = "generative" if generative else "transposed" if transposed else "conv"
    fmt = lambda t: "x".join(map(str, t))  # noqa: E731
    return (f"{kind} {in_channels}->{out_channels} k{fmt(kernel_size)} s{fmt(stride)} d{fmt(dilation)} "
            f"at stride {fmt(tensor_stride)}")


def _fused_supported(feats: Tensor) -> bool:
    return Choice("fused").supports(feats.dtype, feats.device)


def _choice(feats: Tensor, weight: Tensor, key: str) -> Choice:
    # Dynamo cannot read context variables: compiled graphs use the automatic choice.
    cfg = ConvConfig() if torch.compiler.is_compiling() else current_config()
    choice = cfg.plan.get(key)
    if choice is None:
        if cfg.dataflow == "fused" and not _fused_supported(feats):
            raise TypeError(f"the fused dataflow runs float32/float64 on the CPU, got {feats.dtype} on {feats.device}")
        dataflow = cfg.dataflow if cfg.dataflow != "auto" else "fused" if _fused_supported(feats) else "gather_scatter"
        choice = Choice(dataflow, cfg.tile if dataflow == "fused" else 0)
    if choice.dataflow == "fused" and not _fused_supported(feats):
        choice = Choice("gather_scatter")  # a plan tuned for float32 also serves other dtypes
    return choice


def _run(feats: Tensor, weight: Tensor, kmap: KernelMap, choice: Choice) -> Tensor:
    if choice.dataflow == "fused":
        tile = choice.tile
        if not tile:  # the row count of a strided output is data-dependent under torch.compile
            tile = 2048 if torch.compiler.is_compiling() else default_tile(kmap.nbmap.shape[0], torch.get_num_threads())
        return ops.conv3d_fused(feats, weight, kmap.nbmap, kmap.in_rows, kmap.out_rows, kmap.sizes, tile)
    return ops.conv3d(feats, weight, kmap.in_rows, kmap.out_rows, kmap.sizes, kmap.nbmap.shape[0])


def conv3d(
    input: SparseTensor,
    weight: Tensor,
    bias: Tensor | None = None,
    kernel_size: int | Sequence[int] = 3,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    transposed: bool = False,
    generative: bool = False,
    downsample_mode: str = "minkowski",
) -> SparseTensor:
    """Sparse convolution (submanifold, strided, transposed or generative; see torchsparse.kernel_map).

    Args:
        input: features (N, C_in).
        weight: (K, C_in, C_out), or (C_in, C_out) when K = 1; same dtype and device as the features. Row k
            belongs to kernel offset k in TorchSparse's order (x fastest for odd volumes, else z fastest).
        bias: optional (C_out,).
        kernel_size, stride, dilation: int or 3 ints, >= 1.
        padding: int or 3 ints, >= 0; only with downsample_mode="spconv".
        transposed: output sites are the finer level's sites recorded in the cache (pairs of the forward map,
            swapped); weight is still (K, C_in, C_out) with C_in the channels of `input`.
        generative: transposed with new output sites s * c + base + index_k * d.
        downsample_mode: "minkowski" (outputs unique(floor(c / s))) or "spconv" (outputs every reached site).

    Returns:
        SparseTensor with features (M, C_out) sharing input's cache.
    """
    ks = to_triple(kernel_size, "kernel_size")
    st = to_triple(stride, "stride")
    dl = to_triple(dilation, "dilation")
    pd = to_triple(padding, "padding", minimum=0)
    volume = ks[0] * ks[1] * ks[2]
    feats = input.feats
    if weight.dim() == 2:
        weight = weight.unsqueeze(0)
    if weight.dim() != 3 or weight.shape[0] != volume:
        raise ValueError(f"weight must be ({volume}, C_in, C_out) for kernel_size {ks}, got {tuple(weight.shape)}")
    if weight.shape[1] != feats.shape[1]:
        raise ValueError(f"input has {feats.shape[1]} channels but weight expects {weight.shape[1]}")
    if weight.dtype != feats.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from the features' dtype {feats.dtype}")
    if weight.device != feats.device:
        raise ValueError(f"weight is on device {weight.device} but the features are on {feats.device}")
    if bias is not None and (bias.shape != (weight.shape[2],) or bias.dtype != feats.dtype):
        raise ValueError(f"bias must be ({weight.shape[2]},) of dtype {feats.dtype}, got {tuple(bias.shape)} {bias.dtype}")
    out = conv_output(input, ks, st, dl, pd, transposed or generative, generative, downsample_mode)
    key = layer_key(weight.shape[1], weight.shape[2], ks, st, dl, transposed, generative, input.stride)
    choice = _choice(feats, weight, key)
    timings = None if torch.compiler.is_compiling() else current_config().timings
    if timings is None:
        result = _run(feats, weight, out.kmap, choice)
    else:
        start = time.perf_counter()
        result = _run(feats, weight, out.kmap, choice)
        timings.setdefault(key, {}).setdefault(choice, []).append(time.perf_counter() - start)
    if bias is not None:
        result = result + bias
    return SparseTensor._derived(result, out.coords, out.stride, out.spatial_range, input.cache)
