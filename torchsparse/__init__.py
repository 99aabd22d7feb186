"""torchsparse: sparse 3D point-cloud inference engine for PyTorch."""

import torch  # noqa: F401  (the extension needs torch's libraries loaded first)

from torchsparse import _C  # noqa: F401  (registers the torchsparse:: operators)
from torchsparse.settings import Choice, ConvConfig, config
from torchsparse.tensor import PointTensor, SparseTensor, cat
from torchsparse.tuning import tune

__version__ = "0.1.0"
__all__ = ["Choice", "ConvConfig", "PointTensor", "SparseTensor", "__version__", "cat", "config", "tune"]
