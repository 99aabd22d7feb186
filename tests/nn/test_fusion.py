"""torchsparse.nn.fuse: BatchNorm folding, ReLU / residual epilogues, eval-only, the original left untouched."""

import pytest
import torch
from torch import nn

import torchsparse
import torchsparse.nn as spnn
from torchsparse import SparseTensor
from torchsparse.nn.fusion import FusedConv3d, fold_batchnorm
from torchsparse.testing import random_sparse_tensor
from torchsparse.testing.models import randomise_batchnorm


def _x(dtype=torch.float32, channels=4, seed=0):
    return random_sparse_tensor(400, channels, extent=(12, 12, 12), batch_size=2, dtype=dtype, seed=seed)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("kernel_shape", [(27, 4, 6), (4, 6)])
def test_fold_batchnorm_equals_conv_then_batchnorm_in_float64(affine, kernel_shape):
    kernel = torch.randn(kernel_shape, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64)
    bn = nn.BatchNorm1d(6, affine=affine).double().eval()
    randomise_batchnorm(bn, scale=0.3) if affine else bn.running_var.uniform_(0.5, 2.0)
    folded_kernel, folded_bias = fold_batchnorm(kernel, bias, bn)
    feats = torch.randn(10, 4, dtype=torch.float64)
    w = kernel.reshape(-1, 4, 6)[0]
    expected = bn(feats @ w + bias)
    assert torch.allclose(feats @ folded_kernel.reshape(-1, 4, 6)[0] + folded_bias, expected, rtol=1e-12, atol=1e-12)


def test_fold_batchnorm_needs_running_statistics():
    bn = nn.BatchNorm1d(3, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(torch.randn(27, 2, 3), None, bn)


@pytest.mark.parametrize("dataflow", ["fused", "gather_scatter"])
def test_sequential_conv_bn_relu_folds_in_float64(dataflow):
    net = nn.Sequential(
        spnn.Conv3d(4, 8, 3), spnn.BatchNorm(8), spnn.ReLU(True),
        spnn.Conv3d(8, 8, 2, stride=2, bias=True), spnn.BatchNorm(8),
        spnn.Conv3d(8, 6, 3), spnn.ReLU(True),
    ).double().eval()
    randomise_batchnorm(net, scale=0.3)
    fused = spnn.fuse(net)
    kinds = [type(m).__name__ for m in fused]
    assert kinds == ["FusedConv3d", "Identity", "Identity", "FusedConv3d", "Identity", "FusedConv3d", "Identity"]
    assert [m.relu for m in fused if isinstance(m, FusedConv3d)] == [True, False, True]
    x = _x(torch.float64)
    with torchsparse.config(dataflow=dataflow), torch.inference_mode():
        expected = net(SparseTensor(x.feats, x.coords)).feats
        got = fused(SparseTensor(x.feats, x.coords)).feats
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_fuse_copies_and_needs_eval_mode():
    net = nn.Sequential(spnn.Conv3d(4, 8, 3), spnn.BatchNorm(8), spnn.ReLU(True))
    with pytest.raises(ValueError, match="eval mode"):
        spnn.fuse(net)
    net.eval()
    fused = spnn.fuse(net)
    assert isinstance(net[0], spnn.Conv3d) and isinstance(net[1], spnn.BatchNorm)
    assert isinstance(fused[0], FusedConv3d)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        spnn.fuse(lambda x: x)


def test_fused_conv_residual_argument_checked():
    conv = FusedConv3d(spnn.Conv3d(4, 8, 3).eval())
    x = _x()
    with pytest.raises(ValueError, match="residual must be"):
        conv(x, residual=torch.zeros(len(x.feats) + 1, 8))


def test_autocast_converts_the_weight_once():
    conv = FusedConv3d(spnn.Conv3d(4, 8, 3).eval(), relu=True)
    x = _x()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = conv(x).feats
        cached = conv._converted[torch.bfloat16][1]
        second = conv(x).feats
        assert conv._converted[torch.bfloat16][1] is cached
    assert first.dtype == torch.bfloat16 and torch.equal(first, second)
    with torch.inference_mode():
        reference = conv(x).feats
    assert torch.allclose(first.float(), reference, rtol=2**-7, atol=1e-2)
