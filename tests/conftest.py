import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. The variable is read when a kernel is
# defined, i.e. when torchsparse.ops is first imported, which no conftest or plugin does before this line.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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


@pytest.fixture(autouse=True)
def static_dataflows():
    """Runs every test with dataflow="auto" unmeasured (`ConvConfig.measure`), so that results are bitwise
    reproducible from one model instance to the next; the tests of the measured choice turn measuring on."""
    import torchsparse  # after TRITON_INTERPRET is set above

    with torchsparse.config(measure=False):
        yield
