"""Mixed precision end to end: the point-cloud models and BEVFusion's LiDAR encoder under torch.autocast.

Random weights (the agreement of the argmax with float32 does not need trained ones) and a small random scene.
On the CPU the convolutions take the automatic dataflow (fused: float32 accumulation, one rounding per output);
on a GPU the sorted implicit GEMM in Triton (tensor cores, float32 accumulation). Point-voxel ops keep float32
accumulation either way.
"""

import pytest
import torch

import torchsparse
from torchsparse.models import get_model
from torchsparse.models.bevfusion.lidar import SparseEncoder
from torchsparse.testing import random_coords, random_sparse_tensor

DTYPES = [torch.bfloat16, torch.float16]


def _agreement(low: torch.Tensor, reference: torch.Tensor) -> float:
    return float((low.float().argmax(1) == reference.argmax(1)).float().mean())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["MinkUNet", "SPVCNN"])
def test_segmentation_models_under_autocast(name, dtype, device):
    torch.manual_seed(0)
    model = get_model(name).eval().to(device)
    x = random_sparse_tensor(2500, 4, extent=(48, 48, 16), device=device, seed=1)
    with torch.inference_mode():
        reference = model(x)
        with torch.autocast(device, dtype=dtype):
            low = model(x)
    reference, low = (getattr(t, "feats", t) for t in (reference, low))
    assert low.dtype == dtype and bool(torch.isfinite(low).all())
    assert _agreement(low, reference) >= 0.95


@pytest.mark.parametrize("dtype", DTYPES)
def test_bevfusion_lidar_encoder_under_autocast(dtype, device):
    torch.manual_seed(0)
    encoder = SparseEncoder().eval().to(device)
    coords = random_coords(3000, (200, 200, 41), low=(620, 620, 0), seed=2).to(device)
    feats = torch.randn(coords.shape[0], 5, device=device)
    with torch.inference_mode():
        reference = encoder(feats, coords, 1)
        with torch.autocast(device, dtype=dtype):
            low = encoder(feats, coords, 1)
    assert low.dtype == dtype and low.shape == reference.shape
    scale = reference.abs().max()
    assert float((low.float() - reference).abs().max()) <= 0.1 * float(scale)


def test_autocast_leaves_float64_alone():
    model = get_model("MinkUNet").eval().double()
    x = random_sparse_tensor(300, 4, extent=(16, 16, 8), dtype=torch.float64, seed=3)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), torchsparse.config(measure=False):
        out = model(x)
    assert getattr(out, "feats", out).dtype == torch.float64
