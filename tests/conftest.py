import pytest
import torch

DEVICE_PARAMS = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")],
    ),
]


@pytest.fixture(params=DEVICE_PARAMS)
def device(request) -> str:
    return request.param
