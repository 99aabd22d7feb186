"""Sparse convolution by gather-GEMM-scatter over a kernel map (csrc/convolution/)."""

import torch
from torch import Tensor

from torchsparse import _C
from torchsparse.ops.checks import check_cpu_sizes, check_same_device


def conv3d(
    input: Tensor, weight: Tensor, in_rows: Tensor, out_rows: Tensor, sizes: Tensor, num_out: int
) -> Tensor:
    """Sparse convolution of features over precomputed pairs. Differentiable in input and weight.

    Args:
        input: float (N_in, C_in) features.
        weight: (K, C_in, C_out), same dtype and device as input.
        in_rows, out_rows: int32 (P,) pairs grouped by offset, each row at most once per offset
            (`kernel_map_pairs`).
        sizes: int64 (K,) on the CPU, pairs per offset.
        num_out: number of output rows.
        An identity offset (the centre of a submanifold map) runs as a plain GEMM on the input, without gather
        or scatter.

    Returns:
        (num_out, C_out): out[o] = sum over pairs (i, o) of offset k of input[i] @ weight[k]; rows without
        pairs are zero.
    """
    return torch.ops.torchsparse.conv3d(input, weight, in_rows, out_rows, sizes, num_out)


def conv3d_fused(
    input: Tensor,
    weight: Tensor,
    nbmap: Tensor,
    in_rows: Tensor,
    out_rows: Tensor,
    sizes: Tensor,
    tile: int,
    bias: Tensor | None = None,
    residual: Tensor | None = None,
    relu: bool = False,
    reduced_precision_reduction: bool = False,
) -> Tensor:
    """`conv3d` by output-stationary tiles over the neighbour table, with a fused epilogue. Differentiable in input,
    weight, bias and residual.

    Each tile of output rows is summed over all offsets while it stays in cache, then finished in place:
    ``out = conv + bias + residual``, then ``max(out, 0)`` when `relu` (in that order; NaN stays NaN).

    Args:
        input: floating (N_in, C_in) features. On the CPU float32 / float64 accumulate in their own dtype (an
            AVX-512 micro-kernel for float32 where the CPU has it, else MKL); bfloat16 / float16 are multiplied and
            summed in float32 and rounded once, after the epilogue (but see `reduced_precision_reduction`).
        weight: (K, C_in, C_out), same dtype and device.
        nbmap: int32 (M, K): input row of (output m, offset k), -1 where absent (`kernel_map`); checked, and it
            gives M, but the tiles are cut from the pairs.
        in_rows, out_rows, sizes: the same map as pairs (`kernel_map_pairs`), out_rows ascending strictly within
            each offset (ValueError otherwise); the forward and the backward pass read them.
        tile: output rows per tile (>= 1).
        bias: optional (C_out,) of input's dtype, added to every row (a folded BatchNorm's shift).
        residual: optional (M, C_out) of input's dtype, added row by row (a residual connection).
        relu: apply ReLU last.
        reduced_precision_reduction: float16 on a CPU with AVX512-FP16 (`cpu_has_avx512fp16`): multiply in float16
            and sum each output's products in float16 over runs of FP16_CHANNELS_PER_SUM input channels, those sums
            in float32 (1.3-1.9x faster in benchmarks/models/bench_minkunet.py --precision; relative error ~3x
            float16's rounding instead of ~1x). Elsewhere it changes nothing. As
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction.

    Returns:
        (M, C_out) of input's dtype, equal to `conv3d` on the pairs followed by the epilogue; deterministic for any
        thread count.
    """
    return torch.ops.torchsparse.conv3d_fused(
        input, weight, nbmap, in_rows, out_rows, sizes, tile, bias, residual, relu, reduced_precision_reduction
    )


#: Input channels whose float16 products one float16 sum covers in `conv3d_fused` with reduced_precision_reduction.
FP16_CHANNELS_PER_SUM: int = 2 * _C.FP16_PAIRS_PER_SUM


def cpu_has_avx512fp16() -> bool:
    """Whether `conv3d_fused` multiplies float16 in float16 on this CPU when reduced_precision_reduction is set."""
    return _C.cpu_has_avx512fp16()


def conv3d_weight_grad(
    input: Tensor, grad_output: Tensor, in_rows: Tensor, out_rows: Tensor, sizes: Tensor
) -> Tensor:
    """Weight gradient of `conv3d`: (K, C_in, C_out), grad[k] = input[in_k]^T @ grad_output[out_k]."""
    return torch.ops.torchsparse.conv3d_weight_grad(input, grad_output, in_rows, out_rows, sizes)


GROUP_TOLERANCE = 0.25
GROUP_MAX_PAIRS = 65536


def conv3d_grouped(
    input: Tensor,
    weight: Tensor,
    in_rows: Tensor,
    out_rows: Tensor,
    sizes: Tensor,
    num_out: int,
    group_tolerance: float = GROUP_TOLERANCE,
    group_max_pairs: int = GROUP_MAX_PAIRS,
) -> Tensor:
    """`conv3d` by the portable path that CUDA runs, on any device. Differentiable in input and weight.

    One gather of all offsets into a padded buffer, one GEMM per lone offset and one batched GEMM per group of
    offsets, an identity offset as one GEMM on the input, then an output-stationary sum: each output row adds its
    products in offset order (float accumulation for half / bfloat16), without atomics, so the result is bitwise
    repeatable. Groups: the symmetric offsets k and K-1-k of equal counts always share one; another offset joins a
    group when its count is >= (1 - group_tolerance) * the group's largest count and that count is <=
    group_max_pairs (a larger GEMM fills the device alone, padding it only adds work).

    Args:
        input, weight, in_rows, out_rows, sizes, num_out: as `conv3d` (any pairs; repeated rows are summed).
        group_tolerance: largest fraction of padding rows per grouped offset, in [0, 1]; 0 groups equal counts only.
        group_max_pairs: largest pair count of a group padded for smaller offsets (>= 0).

    Returns:
        (num_out, C_out) as `conv3d`.
    """
    return torch.ops.torchsparse.conv3d_grouped(
        input, weight, in_rows, out_rows, sizes, num_out, group_tolerance, group_max_pairs
    )


def conv3d_weight_grad_grouped(
    input: Tensor,
    grad_output: Tensor,
    in_rows: Tensor,
    out_rows: Tensor,
    sizes: Tensor,
    group_tolerance: float = GROUP_TOLERANCE,
    group_max_pairs: int = GROUP_MAX_PAIRS,
) -> Tensor:
    """`conv3d_weight_grad` by the portable path that CUDA runs (grouped as `conv3d_grouped`): (K, C_in, C_out)."""
    return torch.ops.torchsparse.conv3d_weight_grad_grouped(
        input, grad_output, in_rows, out_rows, sizes, group_tolerance, group_max_pairs
    )


def _check_grouping(group_tolerance, group_max_pairs):
    torch._check_value(0 <= group_tolerance <= 1, lambda: "group_tolerance must be in [0, 1]")
    torch._check_value(group_max_pairs >= 0, lambda: "group_max_pairs must be >= 0")


@torch.library.register_fake("torchsparse::conv3d")
def _fake_conv3d(input, weight, in_rows, out_rows, sizes, num_out):
    check_same_device(input=input, weight=weight, in_rows=in_rows, out_rows=out_rows)
    check_cpu_sizes(sizes, input)
    torch._check_value(weight.dim() == 3, lambda: "weight must be (K, C_in, C_out)")
    torch._check_value(input.dim() == 2 and input.shape[1] == weight.shape[1], lambda: "input must be (N, C_in)")
    torch._check_type(input.dtype == weight.dtype, lambda: "input and weight must have the same dtype")
    torch._check_value(num_out >= 0, lambda: "num_out must be >= 0")
    return input.new_empty((num_out, weight.shape[2]))


@torch.library.register_fake("torchsparse::conv3d_fused")
def _(input, weight, nbmap, in_rows, out_rows, sizes, tile, bias=None, residual=None, relu=False,
      reduced_precision_reduction=False):
    check_same_device(input=input, weight=weight, nbmap=nbmap, in_rows=in_rows, out_rows=out_rows)
    check_cpu_sizes(sizes, input)
    torch._check_value(weight.dim() == 3, lambda: "weight must be (K, C_in, C_out)")
    torch._check_value(input.dim() == 2 and input.shape[1] == weight.shape[1], lambda: "input must be (N, C_in)")
    torch._check_type(input.dtype == weight.dtype, lambda: "input and weight must have the same dtype")
    torch._check_value(nbmap.dim() == 2 and nbmap.shape[1] == weight.shape[0], lambda: "nbmap must be (M, K)")
    torch._check_value(tile >= 1, lambda: "tile must be >= 1")
    m, c_out = nbmap.shape[0], weight.shape[2]
    if bias is not None:
        check_same_device(input=input, bias=bias)
        torch._check_value(bias.dim() == 1 and bias.shape[0] == c_out, lambda: "bias must be (C_out,)")
        torch._check_type(bias.dtype == input.dtype, lambda: "bias must have input's dtype")
    if residual is not None:
        check_same_device(input=input, residual=residual)
        torch._check_value(
            residual.dim() == 2 and residual.shape[0] == m and residual.shape[1] == c_out,
            lambda: "residual must be (M, C_out)",
        )
        torch._check_type(residual.dtype == input.dtype, lambda: "residual must have input's dtype")
    return input.new_empty((m, c_out))


@torch.library.register_fake("torchsparse::conv3d_weight_grad")
def _fake_conv3d_weight_grad(input, grad_output, in_rows, out_rows, sizes):
    check_same_device(input=input, grad_output=grad_output, in_rows=in_rows, out_rows=out_rows)
    check_cpu_sizes(sizes, input)
    torch._check_type(input.dtype == grad_output.dtype, lambda: "input and grad_output must have the same dtype")
    return input.new_empty((sizes.shape[0], input.shape[1], grad_output.shape[1]))


@torch.library.register_fake("torchsparse::conv3d_grouped")
def _(input, weight, in_rows, out_rows, sizes, num_out, group_tolerance, group_max_pairs):
    _check_grouping(group_tolerance, group_max_pairs)
    return _fake_conv3d(input, weight, in_rows, out_rows, sizes, num_out)


@torch.library.register_fake("torchsparse::conv3d_weight_grad_grouped")
def _(input, grad_output, in_rows, out_rows, sizes, group_tolerance, group_max_pairs):
    _check_grouping(group_tolerance, group_max_pairs)
    return _fake_conv3d_weight_grad(input, grad_output, in_rows, out_rows, sizes)


def _setup_context(ctx, inputs, output):
    input, weight, in_rows, out_rows, sizes = inputs[:5]
    ctx.save_for_backward(input, weight, in_rows, out_rows, sizes)


def _backward(ctx, grad_output):
    input, weight, in_rows, out_rows, sizes = ctx.saved_tensors
    grad_input = grad_weight = None
    if ctx.needs_input_grad[0]:
        # The input gradient is the same convolution run backwards: pairs swapped, each W_k transposed.
        grad_input = conv3d(grad_output, weight.transpose(1, 2), out_rows, in_rows, sizes, input.shape[0])
    if ctx.needs_input_grad[1]:
        grad_weight = conv3d_weight_grad(input, grad_output, in_rows, out_rows, sizes)
    return grad_input, grad_weight, None, None, None, None


torch.library.register_autograd("torchsparse::conv3d", _backward, setup_context=_setup_context)


def _setup_context_fused(ctx, inputs, output):
    input, weight, _, in_rows, out_rows, sizes = inputs[:6]
    relu = inputs[9] if len(inputs) > 9 else False
    ctx.relu = relu
    # The ReLU mask is read from the output (out > 0 exactly where the pre-activation is > 0).
    ctx.save_for_backward(input, weight, in_rows, out_rows, sizes, output if relu else None)


def _backward_fused(ctx, grad_output):
    input, weight, in_rows, out_rows, sizes, output = ctx.saved_tensors
    if ctx.relu:
        grad_output = grad_output * (output > 0)
    grad_input = grad_weight = grad_bias = grad_residual = None
    if ctx.needs_input_grad[0]:
        grad_input = conv3d(grad_output, weight.transpose(1, 2), out_rows, in_rows, sizes, input.shape[0])
    if ctx.needs_input_grad[1]:
        grad_weight = conv3d_weight_grad(input, grad_output, in_rows, out_rows, sizes)
    # Calls that leave the epilogue arguments at their defaults pass fewer inputs.
    needs = (*ctx.needs_input_grad, False, False, False)
    if needs[7]:
        grad_bias = grad_output.sum(0)
    if needs[8]:
        grad_residual = grad_output
    grads = (grad_input, grad_weight, None, None, None, None, None, grad_bias, grad_residual, None, None)
    return grads[: len(ctx.needs_input_grad)]


torch.library.register_autograd("torchsparse::conv3d_fused", _backward_fused, setup_context=_setup_context_fused)


def _setup_context_grouped(ctx, inputs, output):
    _setup_context(ctx, inputs, output)
    ctx.grouping = inputs[6:]


def _backward_grouped(ctx, grad_output):
    input, weight, in_rows, out_rows, sizes = ctx.saved_tensors
    grad_input = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_input = conv3d_grouped(
            grad_output, weight.transpose(1, 2), out_rows, in_rows, sizes, input.shape[0], *ctx.grouping
        )
    if ctx.needs_input_grad[1]:
        grad_weight = conv3d_weight_grad_grouped(input, grad_output, in_rows, out_rows, sizes, *ctx.grouping)
    return grad_input, grad_weight, None, None, None, None, None, None


torch.library.register_autograd(
    "torchsparse::conv3d_grouped", _backward_grouped, setup_context=_setup_context_grouped
)
