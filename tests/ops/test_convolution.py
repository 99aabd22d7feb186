import pytest
import torch
from torch.profiler import profile

from torchsparse import SparseTensor, ops
from torchsparse.conv_output import centred_base, conv_output
from torchsparse.ops.convolution import conv3d_grouped, conv3d_weight_grad_grouped
from torchsparse.testing import dense_conv, random_coords, random_sparse_tensor
from torchsparse.testing.references import reference_conv3d, reference_conv3d_weight_grad


def _map(device, kernel=(3, 3, 3), seed=0):
    coords = random_coords(150, (7, 7, 7), batch_size=2, low=(-3, -3, -3), seed=seed).to(device)
    index, _ = ops.sorted_index(coords)
    nbmap = ops.kernel_map(index, coords, kernel, (1, 1, 1), (1, 1, 1), tuple(-k // 2 + 1 for k in kernel))
    return coords, nbmap, *ops.kernel_map_pairs(nbmap)


def _reference(feats, weight, nbmap):
    """out[o] = sum_k feats[nbmap[o, k]] @ weight[k], one row at a time."""
    out = feats.new_zeros((nbmap.shape[0], weight.shape[2]))
    for o, row in enumerate(nbmap.tolist()):
        for k, i in enumerate(row):
            if i >= 0:
                out[o] += feats[i] @ weight[k]
    return out


@pytest.mark.parametrize("dataflow,tile", [("gather_scatter", 0), ("fused", 1), ("fused", 7), ("fused", 64), ("fused", 4096)])
@pytest.mark.parametrize("kernel", [(3, 3, 3), (2, 2, 2)])
def test_conv_matches_reference(dataflow, tile, kernel, device):
    # (3, 3, 3) has an identity centre offset (run without gather/scatter); (2, 2, 2) has none.
    coords, nbmap, in_rows, out_rows, sizes = _map(device, kernel)
    feats = torch.randn(len(coords), 5, dtype=torch.float64, device=device)
    weight = torch.randn(nbmap.shape[1], 5, 3, dtype=torch.float64, device=device)
    if dataflow == "fused":
        out = ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, tile)
    else:
        out = ops.conv3d(feats, weight, in_rows, out_rows, sizes, len(coords))
    assert (out - _reference(feats, weight, nbmap)).abs().max() <= 1e-12


def test_weight_grad_matches_reference(device):
    coords, nbmap, in_rows, out_rows, sizes = _map(device)
    feats = torch.randn(len(coords), 4, dtype=torch.float64, device=device)
    grad = torch.randn(len(coords), 3, dtype=torch.float64, device=device)
    expected = torch.zeros(27, 4, 3, dtype=torch.float64, device=device)
    for o, row in enumerate(nbmap.tolist()):
        for k, i in enumerate(row):
            if i >= 0:
                expected[k] += torch.outer(feats[i], grad[o])
    out = ops.conv3d_weight_grad(feats, grad, in_rows, out_rows, sizes)
    assert (out - expected).abs().max() <= 1e-12


@pytest.mark.parametrize("dataflow", ["gather_scatter", "fused"])
def test_gradcheck(dataflow, device):
    coords, nbmap, in_rows, out_rows, sizes = _map(device, seed=3)
    feats = torch.randn(len(coords), 3, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.randn(27, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    if dataflow == "fused":
        fn = lambda f, w: ops.conv3d_fused(f, w, nbmap, in_rows, out_rows, sizes, 16)
    else:
        fn = lambda f, w: ops.conv3d(f, w, in_rows, out_rows, sizes, len(coords))
    assert torch.autograd.gradcheck(fn, (feats, weight))


@pytest.mark.parametrize("dataflow", ["gather_scatter", "fused"])
def test_bitwise_repeatable_across_runs_and_threads(dataflow, device):
    coords, nbmap, in_rows, out_rows, sizes = _map(device, seed=5)
    feats = torch.randn(len(coords), 64, device=device)
    weight = torch.randn(27, 64, 64, device=device)

    def run():
        if dataflow == "fused":
            return ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, 32)
        return ops.conv3d(feats, weight, in_rows, out_rows, sizes, len(coords))

    _assert_repeatable_across_threads(run)



def _assert_repeatable_across_threads(run) -> None:
    """run() gives the same bits twice and with one thread."""
    threads = torch.get_num_threads()
    first = run()
    try:
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, run()) and torch.equal(first, single)

def test_bad_arguments(device):
    coords, nbmap, in_rows, out_rows, sizes = _map(device)
    feats = torch.randn(len(coords), 4, device=device)
    weight = torch.randn(27, 4, 3, device=device)
    with pytest.raises(TypeError, match="same dtype"):
        ops.conv3d(feats.double(), weight, in_rows, out_rows, sizes, len(coords))
    with pytest.raises(ValueError, match="channels"):
        ops.conv3d_fused(feats[:, :3], weight, nbmap, in_rows, out_rows, sizes, 8)
    with pytest.raises(IndexError, match=r"in_rows values must be in"):
        ops.conv3d(feats[:5], weight, in_rows, out_rows, sizes, len(coords))
    with pytest.raises(IndexError, match=r"out_rows values must be in"):
        ops.conv3d(feats, weight, in_rows, out_rows, sizes, 3)
    with pytest.raises(IndexError, match=r"nbmap values must be in"):
        ops.conv3d_fused(feats[:5], weight, nbmap, in_rows, out_rows, sizes, 8)
    with pytest.raises(ValueError, match="tile"):
        ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, 0)
    with pytest.raises(ValueError, match="sizes has"):
        ops.conv3d(feats, weight[:8], in_rows, out_rows, sizes, len(coords))


def test_empty(device):
    empty = torch.zeros(0, 4, dtype=torch.int32, device=device)
    index, _ = ops.sorted_index(empty)
    nbmap = ops.kernel_map(index, empty, (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1))
    pairs = ops.kernel_map_pairs(nbmap)
    weight = torch.randn(27, 4, 3, device=device)
    assert ops.conv3d_fused(torch.zeros(0, 4, device=device), weight, nbmap, *pairs, 8).shape == (0, 3)
    assert ops.conv3d(torch.zeros(0, 4, device=device), weight, *pairs, 0).shape == (0, 3)


def test_opcheck(device):
    coords, nbmap, in_rows, out_rows, sizes = _map(device)
    feats = torch.randn(len(coords), 4, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.randn(27, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    grad = torch.randn(len(coords), 3, dtype=torch.float64, device=device)
    T = torch.ops.torchsparse
    torch.library.opcheck(T.conv3d, (feats, weight, in_rows, out_rows, sizes, len(coords)))
    torch.library.opcheck(T.conv3d_fused, (feats, weight, nbmap, in_rows, out_rows, sizes, 16))
    torch.library.opcheck(T.conv3d_weight_grad, (feats.detach(), grad, in_rows, out_rows, sizes))


# ---------------------------------------------------------------------------------------------------------------
# The portable path (csrc/convolution/convolution_kernels.h): conv3d_grouped / conv3d_weight_grad_grouped run on the
# CPU the bodies, grouping plan and CSR sum that CUDA runs for conv3d, conv3d_fused and conv3d_weight_grad.

# (group_tolerance, group_max_pairs): equal counts only; 10 % padding; 50 % but only for groups of <= 30 pairs
# (most offsets of these maps have more: they run alone or with their mirror); everything in one batched GEMM.
GROUPINGS = [(0.0, 0), (0.1, 1 << 16), (0.5, 30), (1.0, 1 << 30)]
# Maps: name -> (kernel_size, stride, padding, mode, transposed).
MAPS = {
    "submanifold k3": ((3, 3, 3), (1, 1, 1), (0, 0, 0), "minkowski", False),
    "submanifold k133": ((1, 3, 3), (1, 1, 1), (0, 0, 0), "minkowski", False),
    "strided k2s2": ((2, 2, 2), (2, 2, 2), (0, 0, 0), "minkowski", False),
    "strided k3s2p1": ((3, 3, 3), (2, 2, 2), (1, 1, 1), "spconv", False),
    "transposed k2s2": ((2, 2, 2), (2, 2, 2), (0, 0, 0), "minkowski", True),
    "transposed k3s2p1": ((3, 3, 3), (2, 2, 2), (1, 1, 1), "spconv", True),
}


def _layer(name, device, cin=4, seed=0):
    """(input features, output coords, pairs, dense oracle of a weight) of one map kind, float64."""
    ks, st, padding, mode, transposed = MAPS[name]
    x = random_sparse_tensor(120, cin, extent=(7, 6, 8), batch_size=2, low=(-4, -2, -5), dtype=torch.float64,
                             device=device, seed=seed)
    dl = (1, 1, 1)
    base = tuple(-p for p in padding) if mode == "spconv" and st != (1, 1, 1) else centred_base(ks, dl)
    if transposed:
        down = conv_output(x, ks, st, dl, padding, False, False, mode)
        gen = torch.Generator().manual_seed(seed + 1)
        coarse = SparseTensor._derived(torch.randn(len(down.coords), cin, generator=gen, dtype=torch.float64).to(device),
                                       down.coords, down.stride, down.spatial_range, x.cache)
        out = conv_output(coarse, ks, st, dl, padding, True, False, mode)
        x_in = coarse
    else:
        out = conv_output(x, ks, st, dl, padding, False, False, mode)
        x_in = x
    km = out.kmap
    pairs = (km.in_rows, km.out_rows, km.sizes, len(out.coords))

    def oracle(feats, weight):
        return dense_conv(x_in.coords.cpu(), feats.cpu(), weight.cpu(), out.coords.cpu(), ks, st, dl, base, transposed)

    return x_in.feats, pairs, oracle


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("name", list(MAPS))
def test_grouped_matches_current_op_and_dense(name, grouping, device):
    feats, (in_rows, out_rows, sizes, num_out), oracle = _layer(name, device, seed=len(name))
    weight = torch.randn(len(sizes), feats.shape[1], 3, dtype=torch.float64, device=device)
    out = conv3d_grouped(feats, weight, in_rows, out_rows, sizes, num_out, *grouping)
    assert (out.cpu() - oracle(feats, weight)).abs().max() <= 1e-10
    assert (out - ops.conv3d(feats, weight, in_rows, out_rows, sizes, num_out)).abs().max() <= 1e-10
    grad = torch.randn(num_out, 3, dtype=torch.float64, device=device)
    grad_weight = conv3d_weight_grad_grouped(feats, grad, in_rows, out_rows, sizes, *grouping)
    expected = reference_conv3d_weight_grad(feats.cpu(), grad.cpu(), in_rows.cpu(), out_rows.cpu(), sizes)
    assert (grad_weight.cpu() - expected).abs().max() <= 1e-10
    assert (grad_weight - ops.conv3d_weight_grad(feats, grad, in_rows, out_rows, sizes)).abs().max() <= 1e-10


def _gemms(fn, operand=0):
    """(batch, rows) of the aten::mm / aten::bmm calls of fn on the CPU, in call order (batch 0 for mm): the first
    two dimensions of the given operand (1 for A^T B, whose pairs are the rows of the second)."""
    with profile(record_shapes=True) as prof:
        fn()
    shapes = []
    for e in prof.events():
        if e.name == "aten::mm":
            shapes.append((0, e.input_shapes[operand][0]))
        elif e.name == "aten::bmm":
            shapes.append(tuple(e.input_shapes[operand][:2]))
    return shapes


def test_grouping_plan():
    feats, (in_rows, out_rows, sizes, num_out), _ = _layer("submanifold k3", "cpu", seed=2)
    weight = torch.randn(27, feats.shape[1], 3, dtype=torch.float64)
    n = sizes.tolist()
    assert n[13] == len(feats)  # the centre is the identity offset
    rows = sum(n) - n[13]
    run = lambda *grouping: _gemms(lambda: conv3d_grouped(feats, weight, in_rows, out_rows, sizes, num_out, *grouping))
    # Tolerance 0: no padding, and the mirror offsets k, 26 - k (equal counts) share batched GEMMs: no lone offset.
    exact = run(0.0, 1 << 30)
    assert exact[0] == (0, len(feats))  # the identity offset: one GEMM on the whole input
    assert all(b >= 2 and b % 2 == 0 for b, _ in exact[1:]) and sum(b * m for b, m in exact[1:]) == rows
    assert len(exact) - 1 == len(set(n) - {n[13]})  # one GEMM per distinct count
    # Tolerance 1 without a size limit: all 26 offsets padded to the largest count in one batched GEMM.
    assert run(1.0, 1 << 30) == [(0, len(feats)), (26, max(n[:13] + n[14:]))]
    # The size limit below every count: only equal counts group, whatever the tolerance.
    assert run(1.0, 0) == exact
    # 20 % padding at most: rows padded per offset <= 0.2 * its group's count.
    loose = run(0.2, 1 << 30)
    assert rows <= sum(b * m for b, m in loose[1:]) <= rows / 0.8 and len(loose) < len(exact)


def test_grouped_weight_grad_plan():
    feats, (in_rows, out_rows, sizes, num_out), _ = _layer("strided k2s2", "cpu", seed=3)
    grad = torch.randn(num_out, 3, dtype=torch.float64)
    gemms = _gemms(lambda: conv3d_weight_grad_grouped(feats, grad, in_rows, out_rows, sizes, 1.0, 1 << 30), 1)
    assert gemms == [(8, max(sizes.tolist()))]  # no identity offset: all 8 offsets in one batched GEMM


def test_grouped_sums_any_pairs(device):
    # Rows repeated within an offset, empty offsets, output rows without pairs, an input row used by every offset.
    feats = torch.randn(6, 3, dtype=torch.float64, device=device)
    weight = torch.randn(4, 3, 2, dtype=torch.float64, device=device)
    in_rows = torch.tensor([0, 0, 5, 1, 1, 1, 2, 5], dtype=torch.int32, device=device)
    out_rows = torch.tensor([3, 3, 0, 4, 4, 0, 3, 6], dtype=torch.int32, device=device)
    sizes = torch.tensor([3, 0, 4, 1])
    for grouping in GROUPINGS:
        out = conv3d_grouped(feats, weight, in_rows, out_rows, sizes, 8, *grouping)
        assert (out.cpu() - reference_conv3d(feats.cpu(), weight.cpu(), in_rows.cpu(), out_rows.cpu(), sizes, 8)).abs().max() <= 1e-12
        assert torch.equal(out[[1, 2, 5, 7]], torch.zeros(4, 2, dtype=torch.float64, device=device))
        grad = conv3d_weight_grad_grouped(feats, out, in_rows, out_rows, sizes, *grouping)
        expected = reference_conv3d_weight_grad(feats.cpu(), out.cpu(), in_rows.cpu(), out_rows.cpu(), sizes)
        assert (grad.cpu() - expected).abs().max() <= 1e-12


def test_grouped_empty(device):
    weight = torch.randn(27, 4, 3, device=device)
    none = torch.zeros(0, dtype=torch.int32, device=device)
    sizes = torch.zeros(27, dtype=torch.long)
    assert torch.equal(conv3d_grouped(torch.randn(5, 4, device=device), weight, none, none, sizes, 7),
                       torch.zeros(7, 3, device=device))
    assert conv3d_grouped(torch.zeros(0, 4, device=device), weight, none, none, sizes, 0).shape == (0, 3)
    assert conv3d_grouped(torch.zeros(0, 4, device=device), weight[:, :, :0], none, none, sizes, 2**62).shape == (2**62, 0)
    grad = conv3d_weight_grad_grouped(torch.randn(5, 4, device=device), torch.randn(7, 3, device=device), none, none, sizes)
    assert torch.equal(grad, torch.zeros(27, 4, 3, device=device))


# Largest |error| against the float64 result of the same (rounded) inputs, for outputs of magnitude ~2: GEMM
# products are rounded to the dtype once, sums run in float32 and are rounded once (measured: 7e-4 and 5e-3;
# today's CPU conv3d, which sums in the dtype, is 2.5x-5x further off).
LOW_PRECISION_TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", list(LOW_PRECISION_TOL))
@pytest.mark.parametrize("name", ["submanifold k3", "strided k3s2p1"])
def test_grouped_low_precision(name, dtype, device):
    feats, (in_rows, out_rows, sizes, num_out), _ = _layer(name, device, cin=16, seed=4)
    feats = feats.to(dtype)
    weight = (torch.randn(len(sizes), 16, 8, device=device) / (len(sizes) * 16) ** 0.5).to(dtype)
    expected = reference_conv3d(feats.cpu(), weight.cpu(), in_rows.cpu(), out_rows.cpu(), sizes, num_out)
    for grouping in GROUPINGS:
        out = conv3d_grouped(feats, weight, in_rows, out_rows, sizes, num_out, *grouping)
        assert out.dtype == dtype
        assert (out.cpu().double() - expected).abs().max() <= LOW_PRECISION_TOL[dtype]
    grad = torch.randn(num_out, 8, device=device).to(dtype)
    grad_weight = conv3d_weight_grad_grouped(feats, grad, in_rows, out_rows, sizes)
    expected = reference_conv3d_weight_grad(feats.cpu(), grad.cpu(), in_rows.cpu(), out_rows.cpu(), sizes)
    # Sums of up to ~100 products of magnitude ~1 rounded once: relative to the largest entry.
    assert (grad_weight.cpu().double() - expected).abs().max() <= LOW_PRECISION_TOL[dtype] * expected.abs().max()


@pytest.mark.parametrize("grouping", [(0.0, 0), (1.0, 1 << 30)])
def test_grouped_gradcheck(grouping, device):
    feats, (in_rows, out_rows, sizes, num_out), _ = _layer("strided k3s2p1", device, cin=3, seed=5)
    feats = feats.detach().requires_grad_()
    weight = torch.randn(27, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda f, w: conv3d_grouped(f, w, in_rows, out_rows, sizes, num_out, *grouping)
    assert torch.autograd.gradcheck(fn, (feats, weight))


def test_grouped_opcheck(device):
    feats, (in_rows, out_rows, sizes, num_out), _ = _layer("submanifold k3", device)
    feats = feats.detach().requires_grad_()
    weight = torch.randn(27, feats.shape[1], 3, dtype=torch.float64, device=device, requires_grad=True)
    grad = torch.randn(num_out, 3, dtype=torch.float64, device=device)
    T = torch.ops.torchsparse
    torch.library.opcheck(T.conv3d_grouped, (feats, weight, in_rows, out_rows, sizes, num_out, 0.1, 64))
    torch.library.opcheck(T.conv3d_weight_grad_grouped, (feats.detach(), grad, in_rows, out_rows, sizes, 0.5, 1 << 20))


@pytest.mark.parametrize("grouping", [(0.0, 0), (0.25, 1 << 16)])
def test_grouped_bitwise_repeatable_across_threads(grouping, device):
    feats, (in_rows, out_rows, sizes, num_out), _ = _layer("submanifold k3", device, cin=64, seed=6)
    feats = feats.float()
    weight = torch.randn(27, 64, 64, device=device)
    grad = torch.randn(num_out, 64, device=device)

    def run():
        return (conv3d_grouped(feats, weight, in_rows, out_rows, sizes, num_out, *grouping),
                conv3d_weight_grad_grouped(feats, grad, in_rows, out_rows, sizes, *grouping))

    threads = torch.get_num_threads()
    first = run()
    try:
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    again = run()
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(first, single, again))


def test_grouped_bad_arguments(device):
    coords, _, in_rows, out_rows, sizes = _map(device)
    feats = torch.randn(len(coords), 4, device=device)
    weight = torch.randn(27, 4, 3, device=device)
    n = len(coords)
    for tolerance in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="group_tolerance"):
            conv3d_grouped(feats, weight, in_rows, out_rows, sizes, n, tolerance)
    with pytest.raises(ValueError, match="group_max_pairs"):
        conv3d_weight_grad_grouped(feats, feats[:, :3], in_rows, out_rows, sizes, 0.1, -1)
    with pytest.raises(TypeError, match="same dtype"):
        conv3d_grouped(feats.double(), weight, in_rows, out_rows, sizes, n)
    with pytest.raises(IndexError, match=r"in_rows values must be in"):
        conv3d_grouped(feats[:5], weight, in_rows, out_rows, sizes, n)
    with pytest.raises(IndexError, match=r"out_rows values must be in"):
        conv3d_weight_grad_grouped(feats, feats[:3, :3], in_rows, out_rows, sizes)
    with pytest.raises(ValueError, match="sizes must sum"):
        conv3d_grouped(feats, weight, in_rows[1:], out_rows[1:], sizes, n)
    with pytest.raises(ValueError, match="num_out"):
        conv3d_grouped(feats, weight, in_rows, out_rows, sizes, -1)


# ---------------------------------------------------------------------------------------------------------------
# CPU against CUDA (the main ops on CUDA run the portable path with the default grouping).

# Largest |difference| of CUDA to the CPU's portable path, outputs of magnitude ~1: cuBLAS and MKL round GEMMs
# differently (TF32 is off by default for float32 matmuls).
CUDA_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 6e-3, torch.bfloat16: 4e-2}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", list(CUDA_TOL))
@pytest.mark.parametrize("name", list(MAPS))
def test_cuda_matches_cpu(name, dtype):
    feats, (in_rows, out_rows, sizes, num_out), _ = _layer(name, "cpu", cin=16, seed=7)
    feats = feats.to(dtype)
    weight = (torch.randn(len(sizes), 16, 8) / (len(sizes) * 16) ** 0.5).to(dtype)
    grad = torch.randn(num_out, 8).to(dtype)
    cpu = (conv3d_grouped(feats, weight, in_rows, out_rows, sizes, num_out),
           conv3d_weight_grad_grouped(feats, grad, in_rows, out_rows, sizes))
    c = lambda t: t.cuda()
    cuda = (ops.conv3d(c(feats), c(weight), c(in_rows), c(out_rows), sizes, num_out),
            ops.conv3d_weight_grad(c(feats), c(grad), c(in_rows), c(out_rows), sizes))
    assert (cuda[0].cpu().double() - cpu[0].double()).abs().max() <= CUDA_TOL[dtype]
    scale = cpu[1].double().abs().max()
    assert (cuda[1].cpu().double() - cpu[1].double()).abs().max() <= CUDA_TOL[dtype] * scale
    again = ops.conv3d(c(feats), c(weight), c(in_rows), c(out_rows), sizes, num_out)
    assert torch.equal(again, cuda[0])  # no atomics: bitwise repeatable


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_fused_runs_the_portable_path():
    coords, nbmap, in_rows, out_rows, sizes = _map("cuda")
    feats = torch.randn(len(coords), 8, device="cuda", dtype=torch.float16)
    weight = torch.randn(27, 8, 4, device="cuda", dtype=torch.float16)
    fused = ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, 16)
    assert torch.equal(fused, ops.conv3d(feats, weight, in_rows, out_rows, sizes, len(coords)))
    assert torch.equal(fused, conv3d_grouped(feats, weight, in_rows, out_rows, sizes, len(coords)))


# ---------------------------------------------------------------------------------------------------------------
# conv3d_fused's epilogue (bias, residual, ReLU in the output tile) and bfloat16 / float16 on the CPU (float32
# accumulation, one rounding per output): against the float64 one-row-at-a-time reference.


def _epilogue_inputs(nbmap, c_out, dtype, device, with_bias, with_residual, seed=0):
    g = torch.Generator().manual_seed(seed)
    bias = torch.randn(c_out, generator=g, dtype=torch.float64).to(device, dtype) if with_bias else None
    residual = (
        torch.randn(nbmap.shape[0], c_out, generator=g, dtype=torch.float64).to(device, dtype) if with_residual else None
    )
    return bias, residual


@pytest.mark.parametrize("with_bias,with_residual,relu", [(True, False, False), (False, True, True), (True, True, True)])
@pytest.mark.parametrize("tile", [1, 7, 4096])
def test_fused_epilogue_matches_reference(with_bias, with_residual, relu, tile, device):
    from torchsparse.testing.references import reference_conv3d_fused

    coords, nbmap, in_rows, out_rows, sizes = _map(device, seed=7)
    feats = torch.randn(len(coords), 5, dtype=torch.float64, device=device)
    weight = torch.randn(27, 5, 6, dtype=torch.float64, device=device)
    bias, residual = _epilogue_inputs(nbmap, 6, torch.float64, device, with_bias, with_residual)
    out = ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, tile, bias, residual, relu)
    expected = reference_conv3d_fused(
        feats.cpu(), weight.cpu(), nbmap.cpu(), None if bias is None else bias.cpu(),
        None if residual is None else residual.cpu(), relu,
    )
    assert (out.cpu() - expected).abs().max() <= 1e-12


# Tolerances: the reference sums the low-precision inputs exactly (float64); the op accumulates in float32 and
# rounds once, so the error is one rounding of the output (2^-8 bfloat16, 2^-11 float16, relative) plus float32
# accumulation (~1e-6 relative to the sum of |products|).
LOW_PRECISION = [(torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-11)]


@pytest.mark.parametrize("dtype,rounding", LOW_PRECISION)
@pytest.mark.parametrize("c_in,c_out", [(5, 3), (33, 19), (64, 64)])
def test_fused_low_precision_matches_reference(dtype, rounding, c_in, c_out):
    from torchsparse.testing.references import reference_conv3d_fused

    coords, nbmap, in_rows, out_rows, sizes = _map("cpu", seed=11)
    feats = torch.randn(len(coords), c_in).to(dtype)
    weight = (torch.randn(27, c_in, c_out) / c_in**0.5).to(dtype)
    bias, residual = _epilogue_inputs(nbmap, c_out, dtype, "cpu", True, True)
    out = ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, 16, bias, residual, True)
    assert out.dtype == dtype
    expected = reference_conv3d_fused(feats, weight, nbmap, bias, residual, True)
    magnitude = reference_conv3d_fused(feats.abs(), weight.abs(), nbmap, bias.abs(), residual.abs())
    assert ((out.double() - expected).abs() <= expected.abs() * rounding + magnitude * 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_low_precision_bitwise_repeatable_across_threads(dtype):
    coords, nbmap, in_rows, out_rows, sizes = _map("cpu", seed=5)
    feats = torch.randn(len(coords), 32).to(dtype)
    weight = torch.randn(27, 32, 16).to(dtype)
    residual = torch.randn(len(coords), 16).to(dtype)
    run = lambda: ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, 8, None, residual, True)
    _assert_repeatable_across_threads(run)


# float16 with reduced_precision_reduction on a CPU with AVX512-FP16: float16 products summed in float16 over runs of
# FP16_CHANNELS_PER_SUM channels (FP16_CHANNELS_PER_SUM / 2 per lane), then in float32. Each float16 FMA rounds once
# (<= 2^-11 relative to its partial sum, itself <= the run's sum of |products|), so |error| <= one output rounding
# + (FP16_CHANNELS_PER_SUM / 2) 2^-11 of the sum of |products|: a bound that holds for any data. On random data the
# error is ~3x one output rounding (RMS), well inside that; the statistical test below pins it.
FP16_RUN = ops.FP16_CHANNELS_PER_SUM // 2


@pytest.mark.parametrize("c_in,c_out", [(1, 1), (5, 3), (33, 19), (64, 64), (65, 130), (128, 96)])
@pytest.mark.parametrize("tile", [5, 4096])
def test_fused_fp16_reduced_precision_matches_reference(c_in, c_out, tile):
    from torchsparse.testing.references import reference_conv3d_fused

    coords, nbmap, in_rows, out_rows, sizes = _map("cpu", seed=13)
    g = torch.Generator().manual_seed(c_in)
    feats = torch.randn(len(coords), c_in, generator=g).half()
    weight = (torch.randn(27, c_in, c_out, generator=g) / c_in**0.5).half()
    bias, residual = _epilogue_inputs(nbmap, c_out, torch.float16, "cpu", True, True)
    args = (feats, weight, nbmap, in_rows, out_rows, sizes, tile, bias, residual, True)
    out = ops.conv3d_fused(*args, reduced_precision_reduction=True)
    exact = ops.conv3d_fused(*args)
    assert out.dtype == torch.float16
    expected = reference_conv3d_fused(feats, weight, nbmap, bias, residual, True)
    magnitude = reference_conv3d_fused(feats.abs(), weight.abs(), nbmap, bias.abs(), residual.abs())
    error = (out.double() - expected).abs()
    assert (error <= expected.abs() * 2.0**-11 + magnitude * (FP16_RUN * 2.0**-11 + 1e-6)).all()
    # The path runs where the CPU has AVX512-FP16 (and changes the bits), else the flag changes nothing.
    assert torch.equal(out, exact) != ops.cpu_has_avx512fp16()
    # Statistically: RMS error within 4 output roundings (float32 sums: ~1).
    assert error.norm() <= 4 * 2.0**-11 * expected.norm()


def test_fused_fp16_reduced_precision_bitwise_repeatable_across_threads_and_tiles():
    coords, nbmap, in_rows, out_rows, sizes = _map("cpu", seed=5)
    feats = torch.randn(len(coords), 48).half()
    weight = torch.randn(27, 48, 40).half()
    residual = torch.randn(len(coords), 40).half()

    def run(tile=8):
        return ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, tile, None, residual, True, True)

    _assert_repeatable_across_threads(run)
    assert torch.equal(run(8), run(1)) and torch.equal(run(8), run(4096))


def test_fused_fp16_reduced_precision_keeps_absent_rows_and_non_finite_values():
    """An absent neighbour's row is never read (an inf there stays out); inf / NaN of a present row propagate as in
    float32; the odd last channel reads no byte past its row (the last row of the input, C_in odd)."""
    coords, nbmap, in_rows, out_rows, sizes = _map("cpu", seed=9)
    c_in = 7
    feats = torch.randn(len(coords) + 1, c_in).half()
    feats[-1] = float("inf")  # a row no pair reads
    weight = torch.randn(27, c_in, 5).half()
    used = feats[:-1].contiguous()  # the last row of its own allocation
    out = ops.conv3d_fused(used, weight, nbmap, in_rows, out_rows, sizes, 16, reduced_precision_reduction=True)
    assert torch.isfinite(out).all()
    poisoned = used.clone()
    poisoned[0, 3] = float("nan")
    out = ops.conv3d_fused(poisoned, weight, nbmap, in_rows, out_rows, sizes, 16, reduced_precision_reduction=True)
    readers = (nbmap == 0).any(1)
    assert out[readers].isnan().all(1).all() and not out[~readers].isnan().any()


def test_fused_needs_outputs_ascending_within_each_offset():
    """conv3d_fused cuts its tiles from the pairs: out_rows must ascend within each offset (kernel_map_pairs' order,
    which every map of torchsparse.conv_output keeps, transposed maps included)."""
    coords, nbmap, in_rows, out_rows, sizes = _map("cpu", seed=2)
    feats, weight = torch.randn(len(coords), 3), torch.randn(27, 3, 2)
    k = int(torch.nonzero(sizes >= 2)[0])
    start = int(sizes[:k].sum())
    swapped_in, swapped_out = in_rows.clone(), out_rows.clone()
    swapped_in[[start, start + 1]] = in_rows[[start + 1, start]]
    swapped_out[[start, start + 1]] = out_rows[[start + 1, start]]  # the same pairs, one offset out of order
    with pytest.raises(ValueError, match=f"out_rows must ascend strictly within each offset.*offset {k}"):
        ops.conv3d_fused(feats, weight, nbmap, swapped_in, swapped_out, sizes, 8)


def test_fused_epilogue_gradcheck(device):
    coords, nbmap, in_rows, out_rows, sizes = _map(device, seed=3)
    # Features away from the ReLU kink: gradcheck's finite differences must not cross it.
    feats = torch.randn(len(coords), 3, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.randn(27, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    residual = torch.randn(len(coords), 2, dtype=torch.float64, device=device)
    pre = ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, 16, bias, residual).detach()
    residual = (residual + torch.where(pre.abs() < 0.1, 0.5, 0.0)).requires_grad_()

    def fn(f, w, b, r):
        return ops.conv3d_fused(f, w, nbmap, in_rows, out_rows, sizes, 16, b, r, True)

    assert torch.autograd.gradcheck(fn, (feats, weight, bias, residual))


def test_fused_epilogue_opcheck(device):
    coords, nbmap, in_rows, out_rows, sizes = _map(device)
    feats = torch.randn(len(coords), 4, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.randn(27, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    residual = torch.randn(len(coords), 3, dtype=torch.float64, device=device, requires_grad=True)
    T = torch.ops.torchsparse
    torch.library.opcheck(T.conv3d_fused, (feats, weight, nbmap, in_rows, out_rows, sizes, 16, bias, residual, True))
    torch.library.opcheck(T.conv3d_fused, (feats, weight, nbmap, in_rows, out_rows, sizes, 16, None, residual, False))
    low = (feats.detach().bfloat16(), weight.detach().bfloat16(), nbmap, in_rows, out_rows, sizes, 16)
    if device == "cpu":
        torch.library.opcheck(T.conv3d_fused, (*low, bias.detach().bfloat16(), None, True))
        # float16 with float16 products (on CPUs with AVX512-FP16; elsewhere the same float32 path)
        half = (feats.detach().half(), weight.detach().half(), nbmap, in_rows, out_rows, sizes, 16)
        torch.library.opcheck(T.conv3d_fused, (*half, bias.detach().half(), residual.detach().half(), True, True))


def test_fused_epilogue_bad_arguments():
    coords, nbmap, in_rows, out_rows, sizes = _map("cpu")
    feats = torch.randn(len(coords), 4)
    weight = torch.randn(27, 4, 3)
    args = (feats, weight, nbmap, in_rows, out_rows, sizes, 8)
    with pytest.raises(ValueError, match="bias must be"):
        ops.conv3d_fused(*args, torch.randn(4))
    with pytest.raises(TypeError, match="bias must have input's dtype"):
        ops.conv3d_fused(*args, torch.randn(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="residual must be"):
        ops.conv3d_fused(*args, None, torch.randn(len(coords) - 1, 3))
    with pytest.raises(TypeError, match="residual must have input's dtype"):
        ops.conv3d_fused(*args, None, torch.randn(len(coords), 3).bfloat16())


def test_fused_epilogue_on_empty_map():
    empty = torch.zeros(0, 4, dtype=torch.int32)
    index, _ = ops.sorted_index(empty)
    nbmap = ops.kernel_map(index, empty, (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1))
    pairs = ops.kernel_map_pairs(nbmap)
    for dtype in (torch.float32, torch.bfloat16):
        out = ops.conv3d_fused(
            torch.zeros(0, 4, dtype=dtype), torch.randn(27, 4, 3, dtype=dtype), nbmap, *pairs, 8,
            torch.randn(3, dtype=dtype), torch.zeros(0, 3, dtype=dtype), True,
        )
        assert out.shape == (0, 3) and out.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel", [(3, 3, 3), (2, 2, 2)])
def test_fused_bitwise_equal_across_tile_sizes(kernel, dtype):
    # The tile follows the thread count (default_tile): every output row must sum its offsets in the same order
    # whatever the tiling, also on maps where some offset covers every row of one tile but not of another.
    coords, nbmap, in_rows, out_rows, sizes = _map("cpu", kernel, seed=9)
    feats = torch.randn(len(coords), 24).to(dtype)
    weight = torch.randn(nbmap.shape[1], 24, 20).to(dtype)
    outs = [ops.conv3d_fused(feats, weight, nbmap, in_rows, out_rows, sizes, tile) for tile in (1, 3, 7, 64, 4096)]
    assert all(torch.equal(outs[0], out) for out in outs[1:])
