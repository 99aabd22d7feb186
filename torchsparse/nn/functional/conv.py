"""Sparse 3D convolution on SparseTensors."""

from collections.abc import Sequence

import torch
from torch import Tensor

from torchsparse import ops
from torchsparse.conv_output import KernelMap, conv_output
from torchsparse.profiling import region, stopwatch
from torchsparse.settings import (
    CONV3D,
    IMPLICIT_GEMM,
    Choice,
    ConvConfig,
    auto_candidates,
    auto_choice,
    choose,
    current_config,
    default_tile,
)
from torchsparse.tensor import SparseTensor, to_triple

__all__ = ["conv3d", "layer_key"]


def layer_key(
    in_channels: int, out_channels: int, kernel_size, stride, dilation, transposed: bool, generative: bool, tensor_stride
) -> str:
    """Name of a layer group: convolutions with equal shapes and maps, which share one tuned choice."""
    kind = "generative" if generative else "transposed" if transposed else "conv"
    fmt = lambda t: "x".join(map(str, t))
    return (f"{kind} {in_channels}->{out_channels} k{fmt(kernel_size)} s{fmt(stride)} d{fmt(dilation)} "
            f"at stride {fmt(tensor_stride)}")


def _choice(cfg: ConvConfig, feats: Tensor, weight: Tensor, key: str) -> Choice:
    choice = cfg.plan.get(key)
    if choice is None:
        if cfg.dataflow == "auto":  # the automatic dataflow, with the parameters set in cfg
            return cfg.choice(auto_choice(feats.dtype, feats.device, weight.shape[0]).dataflow)
        choice = cfg.choice(cfg.dataflow)
        if not choice.supports(feats.dtype, feats.device):
            raise TypeError(
                f"dataflow {cfg.dataflow!r} does not run {feats.dtype} features on {feats.device} "
                "(see torchsparse.settings.DATAFLOWS)"
            )
    if not choice.supports(feats.dtype, feats.device):
        # A plan tuned for one dtype or device also serves others: their automatic choice.
        choice = auto_choice(feats.dtype, feats.device, weight.shape[0])
    return choice


# A layer whose automatic choice runs faster than this keeps it without measuring the others: timing them would
# cost more than they could save.
MEASURE_ABOVE_SECONDS = 2e-3
# A candidate more than MEASURE_MARGIN faster than the default on its first run gets MEASURE_ROUNDS more runs.
MEASURE_MARGIN = 0.1
MEASURE_ROUNDS = 2


def _measure(cfg: ConvConfig, feats: Tensor, weight: Tensor, key: str, run) -> tuple[Tensor, Choice]:
    """Times `auto_candidates` on this very input and returns (the winner's output, the winner): one run each,
    then interleaved rounds of the default and the candidates that beat it by MEASURE_MARGIN, `settings.choose`."""
    candidates = [cfg.choice(c.dataflow) for c in auto_candidates(feats.dtype, feats.device, weight.shape[0])]
    outputs: dict[Choice, Tensor] = {}
    runs: dict[Choice, list[float]] = {}

    def timed_run(choice: Choice) -> None:
        with _conv_region(key, choice, feats.device), stopwatch(feats.device) as seconds:
            outputs[choice] = run(choice)
        runs.setdefault(choice, []).extend(seconds)

    default = candidates[0]
    timed_run(default)
    if len(candidates) == 1 or runs[default][0] < MEASURE_ABOVE_SECONDS:
        return outputs[default], default
    for choice in candidates[1:]:
        timed_run(choice)
    # Only a candidate that looked clearly faster once is timed again, interleaved with the default: most layers
    # cost two runs, and a single lucky run cannot win.
    contenders = [c for c in candidates[1:] if runs[c][0] < (1 - MEASURE_MARGIN) * runs[default][0]]
    if not contenders:
        return outputs[default], default
    for _ in range(MEASURE_ROUNDS):
        for choice in (default, *contenders):
            timed_run(choice)
    best = choose(runs, default)
    return outputs[best], best


def _run(
    feats: Tensor, weight: Tensor, kmap: KernelMap, choice: Choice, bias: Tensor | None = None,
    residual: Tensor | None = None, relu: bool = False, reduced_precision_reduction: bool = False,
) -> Tensor:
    """The convolution, then the epilogue (+ bias, + residual, ReLU): in the fused dataflow's tiles, else by ATen.
    reduced_precision_reduction: `ConvConfig`'s, for the fused dataflow."""
    if choice.dataflow == "fused":
        tile = choice.tile
        if not tile:  # the row count of a strided output is data-dependent under torch.compile
            tile = 2048 if torch.compiler.is_compiling() else default_tile(kmap.nbmap.shape[0], torch.get_num_threads())
        return ops.conv3d_fused(
            feats, weight, kmap.nbmap, kmap.in_rows, kmap.out_rows, kmap.sizes, tile, bias, residual, relu,
            reduced_precision_reduction,
        )
    if choice.dataflow in IMPLICIT_GEMM:
        orders = kmap.sorted_orders(choice.split) if choice.dataflow == "implicit_gemm_sorted" else None
        out = ops.implicit_gemm(feats, weight, kmap.nbmap, orders, choice.split)
    elif feats.device.type == "cpu":
        out = ops.conv3d(feats, weight, kmap.in_rows, kmap.out_rows, kmap.sizes, kmap.nbmap.shape[0])
    else:
        out = ops.conv3d_grouped(
            feats, weight, kmap.in_rows, kmap.out_rows, kmap.sizes, kmap.nbmap.shape[0], choice.group_tolerance,
            choice.group_max_pairs,
        )
    if bias is not None:
        out = out + bias
    if residual is not None:
        out = out + residual
    return torch.relu(out) if relu else out


def _autocast_dtype(feats: Tensor) -> torch.dtype | None:
    """bfloat16 / float16 under torch.autocast(device, dtype=...) for non-float64 floating CPU or CUDA features."""
    device = feats.device.type
    if (
        device in ("cpu", "cuda")
        and feats.is_floating_point()
        and feats.dtype != torch.float64
        and torch.is_autocast_enabled(device)
        and torch.get_autocast_dtype(device) in (torch.bfloat16, torch.float16)
    ):
        return torch.get_autocast_dtype(device)
    return None


def _compute_dtype(feats: Tensor) -> torch.dtype:
    """The autocast dtype where `_autocast_dtype` gives one, else the features' dtype."""
    return _autocast_dtype(feats) or feats.dtype


def _conv_region(key: str, choice: Choice, device: torch.device):
    """The profiling region of one convolution: keyed (CONV3D, layer key, choice), named after the dataflow."""
    return region((CONV3D, key, choice), device, f"{CONV3D} {choice.dataflow}")


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
    *,
    residual: SparseTensor | Tensor | None = None,
    relu: bool = False,
    choices: dict | None = None,
) -> SparseTensor:
    """Sparse convolution (submanifold, strided, transposed or generative; see torchsparse.conv_output), with an
    optional epilogue ``relu(conv + bias + residual)`` that the fused dataflow applies to each output tile in cache.

    Under ``torch.autocast("cpu" or "cuda", dtype=torch.bfloat16 / torch.float16)`` the features, weight, bias and
    residual are converted to that dtype (a weight already in it is used as is) and the output has it; the fused
    CPU dataflow computes such layers in float32 and rounds each output once, except float16 on CPUs with
    AVX512-FP16 while `ConvConfig.reduced_precision_reduction` is set (float16 products, float16 sums over runs of
    input channels; see README, "CPU precision"); the implicit GEMM on CUDA multiplies in that dtype on tensor
    cores and accumulates in float32.

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
        residual: optional features (M, C_out) added after the bias, in the output's row order (a SparseTensor at
            the output's sites, or its features).
        relu: apply ReLU last.
        choices: the calling layer's memo of measured automatic choices (`spnn.Conv3d` keeps one), by (layer key,
            dtype, device). With dataflow="auto" and `measure` set, the first inference call (no autograd) of a
            layer taking >= MEASURE_ABOVE_SECONDS times `auto_candidates` on its input and keeps the fastest
            (`_measure`); later layers of the same group in the same pass take that choice without measuring
            (`TensorCache.choices`); a plan entry or an explicit dataflow overrides the memo. Outputs of different
            dataflows agree to rounding, not bitwise: set measure=False for bitwise-reproducible runs.

    Every call runs inside a `torchsparse.profiling.region` keyed (settings.CONV3D, layer key, choice): `torchsparse.tune`
    and profilers read the time per layer group and dataflow from it.

    Returns:
        SparseTensor with features (M, C_out) sharing input's cache.
    """
    ks = to_triple(kernel_size, "kernel_size")
    st = to_triple(stride, "stride")
    dl = to_triple(dilation, "dilation")
    pd = to_triple(padding, "padding", minimum=0)
    volume = ks[0] * ks[1] * ks[2]
    feats = input.feats
    autocast = _autocast_dtype(feats)
    dtype = autocast or feats.dtype
    if isinstance(residual, SparseTensor):
        residual = residual.feats
    if autocast is not None:  # every operand in the autocast dtype (no-op where it is)
        feats = feats.to(dtype)
        weight, bias = weight.to(dtype), None if bias is None else bias.to(dtype)
        residual = None if residual is None else residual.to(dtype)
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
    if residual is not None and (residual.shape != (out.kmap.nbmap.shape[0], weight.shape[2]) or residual.dtype != dtype):
        raise ValueError(
            f"residual must be ({out.kmap.nbmap.shape[0]}, {weight.shape[2]}) of dtype {dtype}, got "
            f"{tuple(residual.shape)} {residual.dtype}"
        )
    key = layer_key(weight.shape[1], weight.shape[2], ks, st, dl, transposed, generative, input.stride)
    # Dynamo cannot read context variables: compiled graphs use the automatic choice.
    compiling = torch.compiler.is_compiling()
    cfg = ConvConfig() if compiling else current_config()
    memo = (key, feats.dtype, feats.device)
    measured = (
        choices is not None and cfg.measure and cfg.dataflow == "auto" and key not in cfg.plan and not compiling
    )
    if measured and memo not in choices and memo in input.cache.choices:
        choices[memo] = input.cache.choices[memo]  # measured by another layer of the group in this pass
    reduced = cfg.reduced_precision_reduction
    if measured and memo not in choices and not torch.is_grad_enabled():
        result, choices[memo] = _measure(
            cfg, feats, weight, key, lambda choice: _run(feats, weight, out.kmap, choice, bias, residual, relu, reduced)
        )
        input.cache.choices[memo] = choices[memo]
    else:
        choice = choices[memo] if measured and memo in choices else _choice(cfg, feats, weight, key)
        with _conv_region(key, choice, feats.device):
            result = _run(feats, weight, out.kmap, choice, bias, residual, relu, reduced)
    return SparseTensor._derived(result, out.coords, out.stride, out.spatial_range, input.cache)
