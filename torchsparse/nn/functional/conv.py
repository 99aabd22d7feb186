"""Sparse 3D convolution on SparseTensors."""

from collections.abc import Sequence

from torch import Tensor

from torchsparse import ops
from torchsparse.kernel_map import conv_output
from torchsparse.tensor import SparseTensor, to_triple

__all__ = ["conv3d"]


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
    kmap = out.kmap
    result = ops.conv3d(feats, weight, kmap.in_rows, kmap.out_rows, kmap.sizes, out.coords.shape[0])
    if bias is not None:
        result = result + bias
    return SparseTensor._derived(result, out.coords, out.stride, out.spatial_range, input.cache)
