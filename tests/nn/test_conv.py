import itertools

import pytest
import torch

import torchsparse
import torchsparse.nn as spnn
import torchsparse.nn.functional as F
from torchsparse import SparseTensor
from torchsparse.conv_output import centred_base
from torchsparse.tensor import to_triple
from torchsparse.testing import (
    brute_force_generative_coords,
    brute_force_strided_coords,
    dense_conv,
    random_sparse_tensor,
)

KERNELS = [1, 2, 3, 5, (1, 1, 3), (3, 1, 3)]
STRIDES = [1, 2, 3, (1, 1, 2)]
DILATIONS = [1, 2]
TOL = 1e-10


@pytest.fixture(params=["fused", "gather_scatter"])
def dataflow(request):
    with torchsparse.config(dataflow=request.param):
        yield request.param


def _input(batch_size, device, channels=3, seed=0, **kwargs):
    return random_sparse_tensor(
        60, channels, extent=(7, 6, 8), batch_size=batch_size, low=(-4, -2, -5), dtype=torch.float64,
        device=device, seed=seed, **kwargs,
    )


def _geometry(kernel, stride, dilation, mode):
    ks, st, dl = to_triple(kernel, "k"), to_triple(stride, "s"), to_triple(dilation, "d")
    submanifold = st == (1, 1, 1)
    padding = tuple(k // 2 for k in ks) if mode == "spconv" else (0, 0, 0)
    base = tuple(-p for p in padding) if mode == "spconv" and not submanifold else centred_base(ks, dl)
    return ks, st, dl, padding, base


def _weight(ks, cin, cout, device, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(ks[0] * ks[1] * ks[2], cin, cout, generator=gen, dtype=torch.float64).to(device)


@pytest.mark.parametrize("kernel,stride,dilation", list(itertools.product(KERNELS, STRIDES, DILATIONS)))
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("mode", ["minkowski", "spconv"])
def test_conv_matches_dense(kernel, stride, dilation, batch_size, mode, device, dataflow):
    ks, st, dl, padding, base = _geometry(kernel, stride, dilation, mode)
    x = _input(batch_size, device, seed=sum(ks) * 7 + sum(st))
    weight = _weight(ks, 3, 4, device)
    y = F.conv3d(x, weight, None, ks, st, padding, dl, downsample_mode=mode)
    if st == (1, 1, 1):
        assert y.coords is x.coords
    elif mode == "minkowski":
        assert torch.equal(y.coords.cpu(), brute_force_strided_coords(x.coords.cpu(), st, st, (1, 1, 1), (0, 0, 0)))
    else:
        assert torch.equal(y.coords.cpu(), brute_force_strided_coords(x.coords.cpu(), ks, st, dl, base))
    assert y.stride == st
    expected = dense_conv(x.coords.cpu(), x.feats.cpu(), weight.cpu(), y.coords.cpu(), ks, st, dl, base)
    assert (y.feats.cpu() - expected).abs().max() <= TOL


@pytest.mark.parametrize("kernel,stride,dilation", list(itertools.product(KERNELS, STRIDES, DILATIONS)))
@pytest.mark.parametrize("mode", ["minkowski", "spconv"])
def test_transposed_matches_dense(kernel, stride, dilation, mode, device, dataflow):
    ks, st, dl, padding, base = _geometry(kernel, stride, dilation, mode)
    if st == (1, 1, 1):
        base = centred_base(ks, dl)
    x = _input(3, device, seed=sum(ks) + 11 * sum(st))
    down = F.conv3d(x, _weight(ks, 3, 5, device), None, ks, st, padding, dl, downsample_mode=mode)
    coarse = down.replace(torch.randn_like(down.feats))
    weight = _weight(ks, 5, 2, device, seed=2)
    up = F.conv3d(coarse, weight, None, ks, st, padding, dl, transposed=True, downsample_mode=mode)
    assert up.coords is x.coords and up.stride == x.stride
    expected = dense_conv(coarse.coords.cpu(), coarse.feats.cpu(), weight.cpu(), x.coords.cpu(), ks, st, dl, base,
                          transposed=True)
    assert (up.feats.cpu() - expected).abs().max() <= TOL


@pytest.mark.parametrize("kernel,stride,dilation", [(2, 2, 1), (3, 2, 1), (3, 1, 2), ((1, 1, 3), (1, 1, 2), 1), (5, 3, 1)])
@pytest.mark.parametrize("mode", ["minkowski", "spconv"])
def test_generative_matches_dense(kernel, stride, dilation, mode, device, dataflow):
    ks, st, dl = to_triple(kernel, "k"), to_triple(stride, "s"), to_triple(dilation, "d")
    padding = tuple(k // 2 for k in ks) if mode == "spconv" else (0, 0, 0)
    base = tuple(-p for p in padding) if mode == "spconv" else centred_base(ks, dl)
    x = _input(2, device)
    coarse = SparseTensor(x.feats, x.coords, stride=tuple(2 * s for s in st))
    weight = _weight(ks, 3, 4, device)
    y = F.conv3d(coarse, weight, None, ks, st, padding, dl, generative=True, downsample_mode=mode)
    assert torch.equal(y.coords.cpu(), brute_force_generative_coords(x.coords.cpu(), ks, st, dl, base))
    assert y.stride == (2, 2, 2)
    expected = dense_conv(x.coords.cpu(), x.feats.cpu(), weight.cpu(), y.coords.cpu(), ks, st, dl, base, transposed=True)
    assert (y.feats.cpu() - expected).abs().max() <= TOL


def test_spconv_output_clipped_to_grid(device):
    x = random_sparse_tensor(200, 2, extent=(9, 9, 9), batch_size=2, dtype=torch.float64, device=device, with_range=True)
    conv = spnn.Conv3d(2, 3, 3, stride=2, padding=1, downsample_mode="spconv").double().to(device)
    y = conv(x)
    assert y.spatial_range == (2, 5, 5, 5)
    assert torch.equal(y.coords.cpu(), brute_force_strided_coords(x.coords.cpu(), (3, 3, 3), (2, 2, 2), (1, 1, 1),
                                                                  (-1, -1, -1), (5, 5, 5)))
    # Equals the dense conv3d with padding 1, which zero-fills outside the grid.
    dense = torch.nn.functional.conv3d(x.dense(), conv.kernel.view(3, 3, 3, 2, 3).permute(4, 3, 2, 1, 0),
                                       stride=2, padding=1)
    assert (y.dense() - dense).abs().max() <= TOL


def test_large_span_and_negative_coordinates(device):
    x = random_sparse_tensor(150, 2, extent=(3000, 5, 4), batch_size=2, low=(-1500, -3, -2), dtype=torch.float64,
                             device=device, seed=4)
    weight = _weight((3, 3, 3), 2, 3, device)
    for stride in (1, 2):
        y = F.conv3d(x, weight, None, 3, stride)
        expected = dense_conv(x.coords.cpu(), x.feats.cpu(), weight.cpu(), y.coords.cpu(), (3, 3, 3), (stride,) * 3,
                              (1, 1, 1), (-1, -1, -1))
        assert (y.feats.cpu() - expected).abs().max() <= TOL


def test_transposed_without_prior_submanifold_conv(device):
    # TorchSparse raises KeyError here (issues #294, #346); the map must be built from the cached levels.
    x = _input(2, device)
    down = spnn.Conv3d(3, 4, 3, stride=2).double().to(device)(x)
    up = spnn.Conv3d(4, 2, 2, stride=2, transposed=True).double().to(device)
    y = up(down)
    assert y.coords is x.coords
    expected = dense_conv(down.coords.cpu(), down.feats.detach().cpu(), up.kernel.detach().cpu(), x.coords.cpu(),
                          (2, 2, 2), (2, 2, 2), (1, 1, 1), (0, 0, 0), transposed=True)
    assert (y.feats.detach().cpu() - expected).abs().max() <= TOL


def test_kernel_maps_are_cached_and_reused(device):
    x = _input(2, device, channels=4)
    a, b = spnn.Conv3d(4, 4, 3).to(device).double(), spnn.Conv3d(4, 4, 3).to(device).double()
    y = b(a(x))
    assert len(x.cache.kmaps) == 1 and y.cache is x.cache
    down = spnn.Conv3d(4, 4, 2, stride=2).to(device).double()(y)
    up = spnn.Conv3d(4, 4, 2, stride=2, transposed=True).to(device).double()(down)
    forward = [entry for key, entry in x.cache.kmaps.items() if key[0] == "forward"]
    transposed = [entry for key, entry in x.cache.kmaps.items() if key[0] == "transposed"]
    assert len(forward) == 2 and len(transposed) == 1
    # The transposed conv's map holds the forward pairs, swapped, in ascending output rows within each offset.
    t, f = transposed[0][2], forward[1][2]
    assert torch.equal(t.sizes, f.sizes)
    offset = torch.repeat_interleave(torch.arange(len(t.sizes)), t.sizes).tolist()
    assert sorted(zip(offset, t.out_rows.tolist(), t.in_rows.tolist())) == sorted(
        zip(offset, f.in_rows.tolist(), f.out_rows.tolist())
    )
    for rows in torch.split(t.out_rows.cpu(), t.sizes.tolist()):
        assert bool((rows[1:] > rows[:-1]).all())
    assert set(x.cache.coords) == {(1, 1, 1), (2, 2, 2)} and up.coords is x.coords


def test_bias_and_module_layout(device):
    x = _input(1, device)
    conv = spnn.Conv3d(3, 4, 1, bias=True).double().to(device)
    assert conv.kernel.shape == (3, 4) and set(conv.state_dict()) == {"kernel", "bias"}
    y = conv(x)
    assert (y.feats - (x.feats @ conv.kernel + conv.bias)).abs().max() <= TOL
    assert spnn.Conv3d(3, 4, 3).kernel.shape == (27, 3, 4)
    assert spnn.Conv3d(3, 4, 1, stride=2).kernel.shape == (1, 3, 4)


@pytest.mark.parametrize("stride,transposed", [(1, False), (2, False), (2, True)])
def test_gradcheck(stride, transposed, device, dataflow):
    x = random_sparse_tensor(30, 2, extent=(4, 4, 4), batch_size=2, dtype=torch.float64, device=device)
    if transposed:
        x = F.conv3d(x, _weight((2, 2, 2), 2, 2, device), None, 2, 2)
    weight = _weight((3, 3, 3) if not transposed else (2, 2, 2), 2, 3, device).requires_grad_()
    feats = x.feats.detach().requires_grad_()
    k = 2 if transposed else 3

    def fn(f, w):
        return F.conv3d(x.replace(f), w, None, k, stride, transposed=transposed).feats

    assert torch.autograd.gradcheck(fn, (feats, weight))


def test_empty_input(device):
    x = SparseTensor(torch.zeros(0, 3, device=device), torch.zeros(0, 4, dtype=torch.int32, device=device))
    for layer in (spnn.Conv3d(3, 4, 3), spnn.Conv3d(3, 4, 2, stride=2)):
        y = layer.to(device)(x)
        assert y.feats.shape == (0, 4)
    up = spnn.Conv3d(4, 2, 2, stride=2, transposed=True).to(device)(spnn.Conv3d(3, 4, 2, stride=2).to(device)(x))
    assert up.feats.shape == (0, 2)


def test_bad_arguments(device):
    x = _input(1, device)
    with pytest.raises(ValueError, match="kernel_size"):
        spnn.Conv3d(3, 4, 0)
    with pytest.raises(ValueError, match="stride"):
        spnn.Conv3d(3, 4, 3, stride=(1, 0, 1))
    with pytest.raises(ValueError, match="dilation"):
        spnn.Conv3d(3, 4, 3, dilation=-1)
    with pytest.raises(TypeError, match="kernel_size"):
        spnn.Conv3d(3, 4, 2.5)
    with pytest.raises(TypeError, match="dtype"):
        spnn.Conv3d(3, 4, 3).to(device)(x)  # float32 weight, float64 features
    with pytest.raises(ValueError, match="channels"):
        spnn.Conv3d(5, 4, 3).double().to(device)(x)
    with pytest.raises(ValueError, match="padding"):
        spnn.Conv3d(3, 4, 3, stride=2, padding=1).double().to(device)(x)
    with pytest.raises(ValueError, match="downsample_mode"):
        spnn.Conv3d(3, 4, 3, stride=2, downsample_mode="other").double().to(device)(x)
    with pytest.raises(ValueError, match="transposed conv"):
        spnn.Conv3d(3, 4, 2, stride=2, transposed=True).double().to(device)(x)
    dup = SparseTensor(torch.randn(2, 3, device=device), torch.tensor([[0, 1, 1, 1]] * 2, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="duplicate"):
        spnn.Conv3d(3, 4, 3).to(device)(dup)


def test_weight_on_other_device():
    x = _input(1, "cpu")
    with pytest.raises(ValueError, match="device"):
        F.conv3d(x, torch.empty(27, 3, 4, dtype=torch.float64, device="meta"))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x = random_sparse_tensor(300, 4, extent=(10, 10, 10), batch_size=2)
    net = torch.nn.Sequential(
        spnn.Conv3d(4, 8, 3), spnn.BatchNorm(8), spnn.ReLU(), spnn.Conv3d(8, 16, 2, stride=2), spnn.ReLU(),
        spnn.Conv3d(16, 8, 2, stride=2, transposed=True),
    ).eval()

    def run(feats, coords):
        return net(SparseTensor(feats, coords)).feats

    compiled = torch.compile(run, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x.feats, x.coords), run(x.feats, x.coords), atol=1e-5)
