"""Sparse convolution by implicit GEMM on tensor cores (Triton), over the output-stationary neighbour table.

The dataflow of TorchSparse++ (Tang et al., "TorchSparse++: Efficient Training and Inference Framework for Sparse
Convolution on GPUs", MICRO 2023, section 4): each program owns a tile of BLOCK_M output rows × BLOCK_N output
channels and accumulates, offset by offset, the product of the input rows that the neighbour table names (gathered
while they are loaded, never written to a buffer) with that offset's weight, in float32 (float64 for float64
inputs). Every output element is written once: no atomics, deterministic results.

Sorted variant ("sparse mapping with reordering" in the paper): output rows are reordered by the bitmask of the
offsets present for them, so that rows with equal neighbour patterns share a tile and a tile skips every offset
absent from all of its rows. With `split` > 1 the offsets are cut into that many contiguous ranges, each with its
own order (sorted by its own part of the bitmask) and its own float32 partial output; the partials are summed in
split order, so results stay deterministic. The unsorted variant skips an offset only when a whole tile of
consecutive rows lacks it.

Kernels run on CUDA tensors, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``; tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from torchsparse.ops.checks import check_same_device, run_time_check

__all__ = ["implicit_gemm", "implicit_gemm_orders", "interpreted", "transposed_nbmap"]

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_SPLIT = 4

# Tile shapes tried by @triton.autotune on a GPU (tensor-core shapes: every block dimension >= 16); the first call
# for a new (C_in, C_out, kernel volume, dtypes) times them all on the user's GPU and keeps the fastest.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
    for m, n, k, w, s in [
        (64, 32, 32, 4, 3),
        (64, 64, 32, 4, 3),
        (128, 64, 32, 4, 3),
        (128, 128, 32, 8, 3),
        (64, 128, 64, 4, 3),
        (128, 64, 64, 8, 4),
        (32, 32, 16, 2, 4),
        (128, 32, 16, 4, 4),
    ]
]
# The interpreter runs every program of the grid in Python: one small fixed tile keeps tests fast.
_INTERPRETER_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}


def _prune(configs, named_args, **kwargs):
    """Drops tiles much wider than the channels (a C_in = 16 layer gains nothing from BLOCK_K = 64)."""
    c_in, c_out = named_args["in_channels"], named_args["out_channels"]
    kept = [
        c for c in configs
        if c.kwargs["BLOCK_K"] <= max(16, triton.next_power_of_2(c_in))
        and c.kwargs["BLOCK_N"] <= max(32, triton.next_power_of_2(c_out))
    ]
    return kept or configs[:1]


@triton.jit
def _implicit_gemm_kernel(
    input, weight, nbmap, orders, out,
    num_rows, in_channels, out_channels, kernel_volume, offsets_per_split,
    stride_in, stride_ic, stride_wk, stride_wi, stride_wo, stride_nm, stride_nk, stride_order, stride_os, stride_om,
    HAS_ORDERS: tl.constexpr, PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Grid: (row tiles, column tiles, splits). Row positions index the split's order (rows themselves if none).
    split = tl.program_id(2).to(tl.int64)
    positions = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_tile = positions < num_rows
    if HAS_ORDERS:
        rows = tl.load(orders + split * stride_order + positions, mask=in_tile, other=0).to(tl.int64)
    else:
        rows = positions.to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < out_channels
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    first = split * offsets_per_split
    last = tl.minimum(first + offsets_per_split, kernel_volume)
    for k in range(first, last):
        neighbours = tl.load(nbmap + rows * stride_nm + k * stride_nk, mask=in_tile, other=-1)
        if tl.max(neighbours, axis=0) >= 0:  # skip offsets absent from every row of the tile
            present = neighbours >= 0
            sources = tl.where(present, neighbours, 0).to(tl.int64) * stride_in
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
            for c in range(0, in_channels, BLOCK_K):
                chans = c + tl.arange(0, BLOCK_K)
                chan_ok = chans < in_channels
                a = tl.load(
                    input + sources[:, None] + chans[None, :] * stride_ic,
                    mask=present[:, None] & chan_ok[None, :], other=0.0,
                )
                b = tl.load(
                    weight + k * stride_wk + chans[:, None] * stride_wi + cols[None, :] * stride_wo,
                    mask=chan_ok[:, None] & col_ok[None, :], other=0.0,
                )
                part = tl.dot(a, b, part, input_precision=PRECISION, out_dtype=ACC_DTYPE)
            # Absent rows were loaded as zeros; 0 * inf in this offset's weight must not reach them.
            acc += tl.where(present[:, None], part, 0.0)
    tl.store(
        out + split * stride_os + rows[:, None] * stride_om + cols[None, :],
        acc.to(out.dtype.element_ty),
        mask=in_tile[:, None] & col_ok[None, :],
    )


_tuned_kernel = triton.autotune(
    configs=_GPU_CONFIGS, key=["in_channels", "out_channels", "kernel_volume"], prune_configs_by={"early_config_prune": _prune}
)(_implicit_gemm_kernel)


def interpreted() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1 when triton was imported): CPU tensors."""
    return type(_implicit_gemm_kernel).__name__ == "InterpretedFunction"


@run_time_check("check_implicit_gemm_maps")
def _check_maps(nbmap: Tensor, orders: Tensor | None, num_in: int) -> None:
    """ValueError unless nbmap's entries lie in [-1, num_in) and each row of orders permutes [0, M)."""
    num_rows = nbmap.shape[0]
    if nbmap.numel() > 0:
        low, high = torch.aminmax(nbmap)
        low, high = int(low), int(high)
        if low < -1 or high >= num_in:
            raise IndexError(f"nbmap entries must be in [-1, {num_in}) (input rows, -1: absent), got {low}..{high}")
    if orders is not None and orders.numel() > 0:
        in_range = (orders >= 0) & (orders < num_rows)
        counts = torch.zeros(orders.shape, dtype=torch.int32, device=orders.device)
        counts.scatter_add_(1, torch.where(in_range, orders, 0).long(), in_range.int())
        if not bool(in_range.all() & (counts == 1).all()):
            raise ValueError(f"every row of orders must be a permutation of 0..{num_rows - 1} (implicit_gemm_orders)")


def _check_args(input: Tensor, weight: Tensor, nbmap: Tensor, orders: Tensor | None, split: int) -> None:
    """Shape, dtype and device checks, valid on FakeTensors (shared by the kernel and the fake kernel)."""
    check_same_device(input=input, weight=weight, nbmap=nbmap, **({} if orders is None else {"orders": orders}))
    torch._check_type(input.dtype in DTYPES, lambda: f"input must be float16, bfloat16, float32 or float64, got {input.dtype}")
    torch._check_type(weight.dtype == input.dtype, lambda: f"weight must have input's dtype {input.dtype}, got {weight.dtype}")
    torch._check_type(nbmap.dtype == torch.int32, lambda: f"nbmap must be int32, got {nbmap.dtype}")
    torch._check_value(input.dim() == 2, lambda: f"input must be (N, C_in), got {tuple(input.shape)}")
    torch._check_value(
        weight.dim() == 3 and weight.shape[1] == input.shape[1],
        lambda: f"weight must be (K, C_in={input.shape[1]}, C_out), got {tuple(weight.shape)}",
    )
    torch._check_value(
        nbmap.dim() == 2 and nbmap.shape[1] == weight.shape[0],
        lambda: f"nbmap must be (M, K={weight.shape[0]}), got {tuple(nbmap.shape)}",
    )
    torch._check_value(1 <= split <= MAX_SPLIT, lambda: f"split must be in [1, {MAX_SPLIT}], got {split}")
    if orders is not None:
        torch._check_type(orders.dtype == torch.int32, lambda: f"orders must be int32, got {orders.dtype}")
        torch._check_value(
            orders.dim() == 2 and orders.shape[0] == split and orders.shape[1] == nbmap.shape[0],
            lambda: f"orders must be (split={split}, M={nbmap.shape[0]}), got {tuple(orders.shape)}",
        )
    device = input.device.type
    torch._check_value(
        device in ("cuda", "meta") or (device == "cpu" and interpreted()),
        lambda: f"implicit_gemm runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), got {device}",
    )


@triton_op("torchsparse::implicit_gemm", mutates_args=())
def implicit_gemm(input: Tensor, weight: Tensor, nbmap: Tensor, orders: Tensor | None, split: int) -> Tensor:
    """Sparse convolution over the neighbour table by implicit GEMM. Differentiable in input and weight.

    Args:
        input: (N, C_in) float16, bfloat16, float32 or float64 features (CUDA; CPU under TRITON_INTERPRET=1).
        weight: (K, C_in, C_out), input's dtype and device.
        nbmap: int32 (M, K): the input row of (output m, offset k), -1 where absent (`KernelMap.nbmap`).
        orders: None (rows in their own order), or int32 (split, M) where row s permutes the output rows for the
            offsets of split s (`implicit_gemm_orders`).
        split: 1 to 4; the offsets are cut into `split` ranges of ceil(K / split), each summed into its own partial.

    Returns:
        (M, C_out) in input's dtype: out[m] = sum over k with nbmap[m, k] >= 0 of input[nbmap[m, k]] @ weight[k],
        accumulated in float32 (float64 for float64; float32 GEMMs use TF32 where
        torch.get_float32_matmul_precision() is not "highest"). Deterministic.
    """
    _check_args(input, weight, nbmap, orders, split)
    _check_maps(nbmap, orders, input.shape[0])
    num_rows, kernel_volume = nbmap.shape
    c_in, c_out = weight.shape[1], weight.shape[2]
    acc_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    partial_dtype = input.dtype if split == 1 else acc_dtype
    partials = torch.empty((split, num_rows, c_out), dtype=partial_dtype, device=input.device)
    if num_rows > 0 and c_out > 0:
        precision = None  # float16 / bfloat16: tensor cores as Triton compiles them by default
        if input.dtype in (torch.float32, torch.float64):
            tf32 = input.dtype == torch.float32 and input.is_cuda and torch.get_float32_matmul_precision() != "highest"
            precision = "tf32" if tf32 else "ieee"
        per_split = triton.cdiv(kernel_volume, split)
        placeholder = nbmap if orders is None else orders.contiguous()  # never read without HAS_ORDERS
        args = (
            input, weight, nbmap, placeholder, partials,
            num_rows, c_in, c_out, kernel_volume, per_split,
            input.stride(0), input.stride(1), weight.stride(0), weight.stride(1), weight.stride(2),
            nbmap.stride(0), nbmap.stride(1), placeholder.stride(0), partials.stride(0), partials.stride(1),
        )
        constants = {
            "HAS_ORDERS": orders is not None, "PRECISION": precision,
            "ACC_DTYPE": tl.float64 if acc_dtype == torch.float64 else tl.float32,
        }
        if interpreted() or not input.is_cuda:
            blocks = _INTERPRETER_BLOCKS
            grid = (triton.cdiv(num_rows, blocks["BLOCK_M"]), triton.cdiv(c_out, blocks["BLOCK_N"]), split)
            wrap_triton(_implicit_gemm_kernel)[grid](*args, **constants, **blocks)
        else:
            def grid(meta):
                return (triton.cdiv(num_rows, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]), split)

            wrap_triton(_tuned_kernel)[grid](*args, **constants)
    if split == 1:
        return partials[0]
    out = partials[0]
    for s in range(1, split):  # a fixed order: bitwise repeatable
        out = out + partials[s]
    return out.to(input.dtype)


@implicit_gemm.register_fake
def _(input, weight, nbmap, orders, split):
    _check_args(input, weight, nbmap, orders, split)
    return input.new_empty((nbmap.shape[0], weight.shape[2]))


def implicit_gemm_orders(nbmap: Tensor, split: int = 1) -> Tensor:
    """Row orders for the sorted variant of `implicit_gemm`.

    Args:
        nbmap: int32 (M, K) neighbour table, -1 where absent.
        split: 1 to 4 offset ranges of ceil(K / split) offsets, as in `implicit_gemm`.

    Returns:
        int32 (split, M): row s lists the output rows sorted (stably, descending) by the bitmask of the offsets of
        split s present for them. A range of more than 62 offsets is folded into 62 bits (offset j of n sets bit
        j * 62 // n), which still groups equal patterns.
    """
    torch._check_value(1 <= split <= MAX_SPLIT, lambda: f"split must be in [1, {MAX_SPLIT}], got {split}")
    torch._check_value(nbmap.dim() == 2, lambda: f"nbmap must be (M, K), got {tuple(nbmap.shape)}")
    num_rows, kernel_volume = nbmap.shape
    per_split = -(-kernel_volume // split) if kernel_volume else 0
    orders = []
    for s in range(split):
        present = (nbmap[:, s * per_split:(s + 1) * per_split] >= 0).long()
        n = present.shape[1]
        bits = min(n, 62)
        if n == 0:
            keys = present.new_zeros(num_rows)
        else:
            bucket = torch.arange(n, device=nbmap.device) * bits // n
            folded = present.new_zeros((num_rows, bits)).scatter_reduce_(
                1, bucket.expand(num_rows, n), present, "amax"
            )
            keys = (folded << torch.arange(bits, device=nbmap.device)).sum(1)
        orders.append(torch.argsort(keys, descending=True, stable=True).int())
    return torch.stack(orders) if orders else nbmap.new_empty((0, num_rows))


def transposed_nbmap(nbmap: Tensor, num_in: int) -> Tensor:
    """The neighbour table of the transposed convolution: int32 (num_in, K), out[nbmap[m, k], k] = m, else -1.

    Raises ValueError if an input row occurs twice in one column of nbmap (then no such table exists; kernel maps
    never do this).
    """
    num_rows, kernel_volume = nbmap.shape
    present = nbmap >= 0
    rows = torch.arange(num_rows, device=nbmap.device, dtype=torch.int32).unsqueeze(1).expand_as(nbmap)[present]
    offsets = torch.arange(kernel_volume, device=nbmap.device).expand_as(nbmap)[present]
    sources = nbmap[present].long()
    counts = torch.zeros((num_in, kernel_volume), dtype=torch.int32, device=nbmap.device)
    counts.index_put_((sources, offsets), torch.ones_like(rows), accumulate=True)
    if counts.numel() > 0 and int(counts.max()) > 1:
        raise ValueError("nbmap names one input row twice for one offset: it has no transposed table")
    return torch.full_like(counts, -1).index_put_((sources, offsets), rows)


def _setup_context(ctx, inputs, output):
    input, weight, nbmap, _, split = inputs
    ctx.save_for_backward(input, weight, nbmap)
    ctx.split = split


def _backward(ctx, grad_output):
    input, weight, nbmap = ctx.saved_tensors
    grad_input = grad_weight = None
    grad_output = grad_output.contiguous()
    if ctx.needs_input_grad[0]:
        # The same kernel over the transposed table with each W_k transposed (a strided view, no copy).
        grad_input = implicit_gemm(
            grad_output, weight.transpose(1, 2), transposed_nbmap(nbmap, input.shape[0]), None, ctx.split
        )
    if ctx.needs_input_grad[1]:
        # Per offset, input[in_k]^T @ grad_output[out_k]: gather + one batched GEMM per group (cuBLAS on a GPU).
        in_rows, out_rows, sizes = torch.ops.torchsparse.kernel_map_pairs(nbmap)
        grad_weight = torch.ops.torchsparse.conv3d_weight_grad(input, grad_output, in_rows, out_rows, sizes)
    return grad_input, grad_weight, None, None, None


implicit_gemm.register_autograd(_backward, setup_context=_setup_context)
