"""The Triton implicit GEMM (torchsparse/ops/triton/implicit_gemm.py) against the float64 references and dense conv3d.

Without a GPU these run in Triton's interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1), with
small shapes: the interpreter runs every program of the grid in Python. bfloat16 needs a GPU (the interpreter has
no bfloat16). Shapes are chosen so that tiles are partial (C_in 20 = 16 + 4, C_out 33 = 2 * 16 + 1) and offsets
absent from whole tiles are skipped.
"""

import pytest
import torch

import torchsparse
from torchsparse import SparseTensor, ops
from torchsparse.conv_output import centred_base
from torchsparse.nn import functional as F
from torchsparse.testing import dense_conv, random_coords, random_sparse_tensor
from torchsparse.testing.references import reference_conv3d_fused

pytestmark = pytest.mark.skipif(not ops.HAS_TRITON, reason="triton is not installed")

GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@pytest.fixture
def triton_device(device) -> str:
    if device == "cpu" and not ops.triton.interpreted():
        pytest.skip("CPU tensors run Triton kernels only under TRITON_INTERPRET=1 (set without a GPU)")
    return device


def _map(device, kernel=(3, 3, 3), num_points=60, seed=0):
    coords = random_coords(num_points, (6, 6, 6), batch_size=2, low=(-2, -2, -2), seed=seed).to(device)
    index, _ = ops.sorted_index(coords)
    nbmap = ops.kernel_map(index, coords, kernel, (1, 1, 1), (1, 1, 1), tuple(-k // 2 + 1 for k in kernel))
    return coords, nbmap


def _close(out, expected, dtype):
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    scale = expected.abs().max().clamp_min(1)
    assert out.dtype == dtype
    assert ((out.double().cpu() - expected).abs().max() / scale) <= tolerance


@pytest.mark.parametrize("split", [1, 2, 3, 4])
@pytest.mark.parametrize("sort", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_matches_reference(dtype, sort, split, triton_device):
    _, nbmap = _map(triton_device)
    feats = torch.randn(nbmap.shape[0], 20, dtype=dtype).to(triton_device)
    weight = (torch.randn(27, 20, 33, dtype=torch.float64) / 5).to(dtype).to(triton_device)
    orders = ops.implicit_gemm_orders(nbmap, split) if sort else None
    out = ops.implicit_gemm(feats, weight, nbmap, orders, split)
    _close(out, reference_conv3d_fused(feats.cpu(), weight.cpu(), nbmap.cpu()), dtype)


@GPU_ONLY
@pytest.mark.cuda
@pytest.mark.parametrize("sort", [False, True])
def test_bfloat16_on_gpu(sort):
    _, nbmap = _map("cuda")
    feats = torch.randn(nbmap.shape[0], 64, device="cuda", dtype=torch.bfloat16)
    weight = (torch.randn(27, 64, 64, device="cuda") / 8).bfloat16()
    orders = ops.implicit_gemm_orders(nbmap, 2) if sort else None
    out = ops.implicit_gemm(feats, weight, nbmap, orders, 2)
    _close(out, reference_conv3d_fused(feats.cpu(), weight.cpu(), nbmap.cpu()), torch.bfloat16)


@pytest.mark.parametrize("sort,split", [(False, 1), (True, 3)])
def test_gradcheck(sort, split, triton_device):
    _, nbmap = _map(triton_device, kernel=(2, 2, 2), num_points=12, seed=1)
    feats = torch.randn(nbmap.shape[0], 3, dtype=torch.float64, device=triton_device, requires_grad=True)
    weight = torch.randn(8, 3, 2, dtype=torch.float64, device=triton_device, requires_grad=True)
    orders = ops.implicit_gemm_orders(nbmap, split) if sort else None
    assert torch.autograd.gradcheck(
        lambda x, w: ops.implicit_gemm(x, w, nbmap, orders, split), (feats, weight), fast_mode=True
    )


def test_gradients_match_gather_scatter(triton_device):
    _, nbmap = _map(triton_device, seed=2)
    in_rows, out_rows, sizes = ops.kernel_map_pairs(nbmap)
    feats = torch.randn(nbmap.shape[0], 5, dtype=torch.float64, device=triton_device, requires_grad=True)
    weight = torch.randn(27, 5, 4, dtype=torch.float64, device=triton_device, requires_grad=True)
    grad = torch.randn(nbmap.shape[0], 4, dtype=torch.float64, device=triton_device)
    expected = torch.autograd.grad(ops.conv3d(feats, weight, in_rows, out_rows, sizes, nbmap.shape[0]), (feats, weight), grad)
    got = torch.autograd.grad(ops.implicit_gemm(feats, weight, nbmap, None, 2), (feats, weight), grad)
    for g, e in zip(got, expected):
        assert (g - e).abs().max() <= 1e-12


def test_opcheck(triton_device):
    _, nbmap = _map(triton_device, kernel=(2, 2, 2), num_points=12, seed=1)
    feats = torch.randn(nbmap.shape[0], 3, dtype=torch.float64, device=triton_device, requires_grad=True)
    weight = torch.randn(8, 3, 2, dtype=torch.float64, device=triton_device, requires_grad=True)
    args = (feats, weight, nbmap, ops.implicit_gemm_orders(nbmap, 2), 2)
    # Under the interpreter a Triton kernel cannot be traced (torch's wrap_triton hands the interpreted kernel
    # back unwrapped, and AOT dispatch would run it on FakeTensors): the AOT tests need a GPU.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if triton_device == "cuda":
        utils += ("test_aot_dispatch_dynamic",)
    result = torch.library.opcheck(torch.ops.torchsparse.implicit_gemm.default, args, test_utils=utils)
    assert set(result.values()) == {"SUCCESS"}


def test_deterministic(triton_device):
    _, nbmap = _map(triton_device, seed=4)
    feats = torch.randn(nbmap.shape[0], 17, device=triton_device)
    weight = torch.randn(27, 17, 18, device=triton_device)
    orders = ops.implicit_gemm_orders(nbmap, 4)
    first = ops.implicit_gemm(feats, weight, nbmap, orders, 4)
    assert torch.equal(first, ops.implicit_gemm(feats, weight, nbmap, orders, 4))


@pytest.mark.parametrize("shape", [(0, 27, 4), (5, 27, 0), (5, 0, 4)])
def test_empty(shape, triton_device):
    rows, volume, c_out = shape
    nbmap = torch.full((rows, volume), -1, dtype=torch.int32, device=triton_device)
    feats = torch.randn(3, 2, device=triton_device)
    weight = torch.randn(volume, 2, c_out, device=triton_device)
    for split, sort in [(1, False), (2, True)]:
        orders = ops.implicit_gemm_orders(nbmap, split) if sort else None
        out = ops.implicit_gemm(feats, weight, nbmap, orders, split)
        assert out.shape == (rows, c_out) and not out.any()


def test_orders():
    g = torch.Generator().manual_seed(0)
    nbmap = torch.where(torch.rand(50, 27, generator=g) < 0.3, torch.randint(0, 50, (50, 27), generator=g), -1)
    nbmap = nbmap.int()
    orders = ops.implicit_gemm_orders(nbmap, 3)
    assert orders.shape == (3, 50) and orders.dtype == torch.int32
    for s in range(3):
        assert torch.equal(orders[s].sort().values, torch.arange(50, dtype=torch.int32))
        masks = [tuple((nbmap[r, 9 * s:9 * s + 9] >= 0).tolist()) for r in orders[s].tolist()]
        keys = [sum(bit << i for i, bit in enumerate(mask)) for mask in masks]
        assert keys == sorted(keys, reverse=True)  # rows with one pattern are consecutive
    assert torch.equal(orders, ops.implicit_gemm_orders(nbmap, 3))
    # More than 62 offsets in one split: folded bits still group equal patterns.
    wide = torch.where(torch.rand(30, 125, generator=g) < 0.5, 0, -1).int()
    wide[10:20] = wide[0]
    order = ops.implicit_gemm_orders(wide, 1)[0].tolist()
    positions = sorted(order.index(r) for r in [0, *range(10, 20)])
    assert positions == list(range(positions[0], positions[0] + 11))


def test_transposed_nbmap():
    _, nbmap = _map("cpu", kernel=(2, 2, 2))
    table = ops.triton.transposed_nbmap(nbmap, nbmap.shape[0] + 3)
    assert table.shape == (nbmap.shape[0] + 3, 8) and table.dtype == torch.int32
    for m, row in enumerate(nbmap.tolist()):
        for k, i in enumerate(row):
            if i >= 0:
                assert table[i, k] == m
    assert int((table >= 0).sum()) == int((nbmap >= 0).sum())
    twice = torch.tensor([[0], [0]], dtype=torch.int32)
    with pytest.raises(ValueError, match="twice"):
        ops.triton.transposed_nbmap(twice, 1)


def test_rejects_bad_arguments(triton_device):
    _, nbmap = _map(triton_device, kernel=(2, 2, 2), num_points=12)
    n = nbmap.shape[0]
    feats = torch.randn(n, 3, device=triton_device)
    weight = torch.randn(8, 3, 2, device=triton_device)
    call = ops.implicit_gemm
    with pytest.raises(TypeError, match="nbmap must be int32"):
        call(feats, weight, nbmap.long(), None, 1)
    with pytest.raises(TypeError, match="weight must have"):
        call(feats, weight.double(), nbmap, None, 1)
    with pytest.raises(TypeError, match="input must be"):
        call(feats.int(), weight.int(), nbmap, None, 1)
    with pytest.raises(ValueError, match="weight must be"):
        call(feats, weight[:, :2], nbmap, None, 1)
    with pytest.raises(ValueError, match="nbmap must be"):
        call(feats, weight, nbmap[:, :4], None, 1)
    with pytest.raises(ValueError, match="split"):
        call(feats, weight, nbmap, None, 5)
    with pytest.raises(ValueError, match="orders must be"):
        call(feats, weight, nbmap, ops.implicit_gemm_orders(nbmap, 2), 1)
    with pytest.raises(IndexError, match="nbmap entries"):
        call(feats[:2], weight, nbmap, None, 1)
    bad = nbmap.clone()
    bad[0, 0] = -2
    with pytest.raises(IndexError, match="nbmap entries"):
        call(feats, weight, bad, None, 1)
    orders = ops.implicit_gemm_orders(nbmap, 1)
    orders[0, 0] = orders[0, 1]
    with pytest.raises(ValueError, match="permutation"):
        call(feats, weight, nbmap, orders, 1)
    orders[0, 0] = n
    with pytest.raises(ValueError, match="permutation"):
        call(feats, weight, nbmap, orders, 1)
    with pytest.raises(ValueError, match="same device"):
        call(feats, weight.to("meta"), nbmap, None, 1)


def test_meta_shapes():
    nbmap = torch.empty((7, 27), dtype=torch.int32, device="meta")
    out = ops.implicit_gemm(
        torch.empty((5, 4), device="meta", dtype=torch.float16), torch.empty((27, 4, 9), device="meta", dtype=torch.float16),
        nbmap, None, 2,
    )
    assert out.shape == (7, 9) and out.dtype == torch.float16 and out.device.type == "meta"


def test_export_sees_the_op(triton_device):
    _, nbmap = _map(triton_device, kernel=(2, 2, 2), num_points=12)

    class Layer(torch.nn.Module):
        def forward(self, feats, weight, nbmap):
            return ops.implicit_gemm(feats, weight, nbmap, None, 1) * 2

    args = (torch.randn(nbmap.shape[0], 3, device=triton_device), torch.randn(8, 3, 2, device=triton_device), nbmap)
    program = torch.export.export(Layer(), args)
    assert "torchsparse.implicit_gemm" in program.graph_module.code
    assert torch.equal(program.module()(*args), Layer()(*args))


# Through the layers: every convolution semantics, against dense conv3d and against gather-scatter.

CASES = [
    # kernel, stride, transposed, generative
    ((3, 3, 3), (1, 1, 1), False, False),
    ((2, 2, 2), (2, 2, 2), False, False),
    ((3, 3, 3), (2, 2, 2), False, False),
    ((2, 2, 2), (2, 2, 2), True, False),
    ((2, 2, 2), (2, 2, 2), False, True),
]


@pytest.mark.parametrize("dataflow", ["implicit_gemm", "implicit_gemm_sorted"])
@pytest.mark.parametrize("kernel,stride,transposed,generative", CASES)
def test_layers_match_gather_scatter(kernel, stride, transposed, generative, dataflow, triton_device):
    x = random_sparse_tensor(40, 4, (6, 6, 6), batch_size=2, dtype=torch.float64, device=triton_device, seed=5)
    if transposed or generative:  # a coarser level (its finer sites recorded in the cache)
        x = F.conv3d(x, torch.randn(8, 4, 4, dtype=torch.float64, device=x.feats.device), None, 2, 2)
    volume = kernel[0] * kernel[1] * kernel[2]
    weight = torch.randn(volume, 4, 5, dtype=torch.float64, device=triton_device, requires_grad=True)
    feats = x.feats.detach().requires_grad_()
    x = SparseTensor._derived(feats, x.coords, x.stride, x.spatial_range, x.cache)

    def run(dataflow, split=1):
        with torchsparse.config(dataflow=dataflow, split=split):
            out = F.conv3d(
                x, weight, None, kernel, stride, transposed=transposed, generative=generative
            )
        grads = torch.autograd.grad(out.feats.sum(), (feats, weight))
        return out, grads

    expected, expected_grads = run("gather_scatter")
    out, grads = run(dataflow, split=2)
    assert torch.equal(out.coords, expected.coords)
    assert (out.feats - expected.feats).abs().max() <= 1e-12
    for g, e in zip(grads, expected_grads):
        assert (g - e).abs().max() <= 1e-12
    if not (transposed or generative):
        base = centred_base(kernel, (1, 1, 1))
        dense = dense_conv(x.coords.cpu(), feats.detach().cpu(), weight.detach().cpu(), out.coords.cpu(), kernel, stride, (1, 1, 1), base)
        assert (out.feats.detach().cpu() - dense).abs().max() <= 1e-10


def test_autocast_float16(triton_device):
    x = random_sparse_tensor(60, 16, (6, 6, 6), device=triton_device, seed=6)
    weight = torch.randn(27, 16, 16, device=triton_device) / 4
    with torchsparse.config(dataflow="implicit_gemm_sorted"):
        reference = F.conv3d(x, weight, None, 3)
        with torch.autocast(triton_device, dtype=torch.float16):
            low = F.conv3d(x, weight, None, 3)
    assert low.feats.dtype == torch.float16
    assert (low.feats.float() - reference.feats).abs().max() <= 2e-2 * reference.feats.abs().max()


def test_auto_picks_implicit_gemm_on_cuda_only():
    from torchsparse.settings import auto_choice

    assert auto_choice(torch.float32, "cpu", 27).dataflow == "fused"
    assert auto_choice(torch.float16, "cuda", 27).dataflow == "implicit_gemm_sorted"
    assert auto_choice(torch.float16, "cuda", 1).dataflow == "gather_scatter"
    assert auto_choice(torch.int32, "cuda", 27).dataflow == "gather_scatter"


@GPU_ONLY
@pytest.mark.cuda
def test_compile_fullgraph_on_gpu():
    _, nbmap = _map("cuda")
    feats = torch.randn(nbmap.shape[0], 32, device="cuda", dtype=torch.float16)
    weight = torch.randn(27, 32, 32, device="cuda", dtype=torch.float16) / 8

    def layer(feats, weight):
        return torch.relu(ops.implicit_gemm(feats, weight, nbmap, None, 1))

    compiled = torch.compile(layer, fullgraph=True)
    assert torch.allclose(compiled(feats, weight), layer(feats, weight), atol=1e-2, rtol=1e-2)


@GPU_ONLY
@pytest.mark.cuda
def test_compile_network_with_the_triton_dataflow_on_gpu():
    # Compiled graphs take the automatic choice: on CUDA the sorted implicit GEMM, traced into inductor's graph.
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torchsparse.nn.Conv3d(4, 32, 3), torchsparse.nn.ReLU(), torchsparse.nn.Conv3d(32, 32, 2, stride=2),
        torchsparse.nn.Conv3d(32, 16, 2, stride=2, transposed=True),
    ).eval().cuda()
    x = random_sparse_tensor(2000, 4, (24, 24, 24), batch_size=2, device="cuda", seed=7)

    def run(feats, coords):
        return net(SparseTensor(feats, coords)).feats

    with torch.no_grad():
        eager = run(x.feats, x.coords)
        compiled = torch.compile(run, fullgraph=True)(x.feats, x.coords)
    torch.testing.assert_close(compiled, eager, atol=1e-3, rtol=1e-3)
