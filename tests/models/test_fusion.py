"""torchsparse.nn.fuse on the model zoo: outputs equal to the unfused models within 1e-5 relative in float32, and
bfloat16 / float16 under torch.autocast keeping the float32 argmax class of >= 99 % of the real scan's voxels."""

import json
from pathlib import Path

import pytest
import torch

import torchsparse
import torchsparse.nn as spnn
from torchsparse import SparseTensor, models
from torchsparse.nn.fusion import FusedConv3d, FusedResidual
from torchsparse.testing import random_sparse_tensor
from torchsparse.testing.models import randomise_batchnorm, rounded_scan

REFERENCE = Path(__file__).resolve().parent / "reference"
EXAMPLE_CONFIG = json.loads((REFERENCE / "spvnas_example_net_config.json").read_text())


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _segmentation_models():
    return {
        "MinkUNet": lambda: models.MinkUNet(cr=0.5),
        "SPVCNN": lambda: models.SPVCNN(cr=0.5),
        "SPVNAS": lambda: models.SPVNAS(EXAMPLE_CONFIG),
    }


@pytest.mark.parametrize("name", list(_segmentation_models()))
@pytest.mark.parametrize("dataflow", ["fused", "gather_scatter"])
def test_fused_segmentation_model_equals_unfused(name, dataflow):
    torch.manual_seed(0)
    model = _segmentation_models()[name]().eval()
    randomise_batchnorm(model)
    fused = spnn.fuse(model)
    residuals = [m for m in fused.modules() if isinstance(m, FusedResidual)]
    assert residuals and not any(isinstance(m, spnn.BatchNorm) for m in fused.modules())
    x = random_sparse_tensor(2500, 4, extent=(48, 48, 16), batch_size=2, seed=3)
    with torchsparse.config(dataflow=dataflow), torch.inference_mode():
        expected = model(SparseTensor(x.feats, x.coords))
        got = fused(SparseTensor(x.feats, x.coords))
    assert _relative_error(got, expected) <= 1e-5


def test_fused_bevfusion_lidar_encoder_equals_unfused():
    from torchsparse.models.bevfusion.lidar import SparseEncoder

    torch.manual_seed(0)
    encoder = SparseEncoder(sparse_shape=(64, 64, 41)).eval()
    randomise_batchnorm(encoder)
    fused = spnn.fuse(encoder)
    assert sum(isinstance(m, FusedResidual) for m in fused.modules()) == 8
    assert sum(isinstance(m, FusedConv3d) for m in fused.modules()) == 2 * 8 + 5
    g = torch.Generator().manual_seed(4)
    cells = torch.unique(torch.randint(0, 64, (3000, 3), generator=g) % torch.tensor([64, 64, 41]), dim=0)
    coords = torch.cat([torch.zeros(len(cells), 1, dtype=torch.int64), cells], 1).int()
    feats = torch.randn(len(cells), 5, generator=g)
    with torch.inference_mode():
        expected = encoder(feats, coords, 1)
        got = fused(feats, coords, 1)
    assert _relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_keeps_the_float32_argmax_on_the_real_scan(dtype):
    """RANDOM weights (random BatchNorm statistics): a check of the numerics, not of accuracy."""
    torch.manual_seed(0)
    model = models.MinkUNet(cr=0.5).eval()
    randomise_batchnorm(model)
    fused = spnn.fuse(model)
    x = rounded_scan(20000)
    with torch.inference_mode():
        reference = fused(SparseTensor(x.feats, x.coords)).argmax(1)
        with torch.autocast("cpu", dtype=dtype):
            low = fused(SparseTensor(x.feats, x.coords))
    assert low.dtype == dtype
    assert (low.argmax(1) == reference).double().mean() >= 0.99
