"""Triton kernels (tensor-core GEMMs) registered as torch.library.triton_op.

They run on CUDA tensors, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, which the test
suite uses on machines without a GPU). Importing this package needs `triton`; `torchsparse.ops` imports it only
when triton is installed.
"""

from torchsparse.ops.triton.implicit_gemm import (
    DTYPES,
    MAX_SPLIT,
    implicit_gemm,
    implicit_gemm_orders,
    interpreted,
    transposed_nbmap,
)

__all__ = ["DTYPES", "MAX_SPLIT", "implicit_gemm", "implicit_gemm_orders", "interpreted", "transposed_nbmap"]
