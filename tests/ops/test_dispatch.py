"""Which devices the torchsparse:: operators have kernels for.

Every op has a CPU kernel (or, for the Python-defined validation ops torchsparse::check_*, a device-agnostic
implementation). In a CUDA build (csrc/**/*.cu compiled, FORCE_CUDA=1) every C++ op also has a CUDA kernel; the CUDA
CI job (.ci/cuda) sets TORCHSPARSE_EXPECT_CUDA=1 so that a build without CUDA kernels fails instead of skipping.
"""

import os

import pytest
import torch

import torchsparse._C  # noqa: F401


def _kernel_ops() -> list[str]:
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("torchsparse::")]
    return sorted(n for n in names if not n.split("::")[1].startswith("check_"))


def _has(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, key)


def test_every_op_has_a_cpu_kernel():
    ops = _kernel_ops()
    assert ops and [op for op in ops if not _has(op, "CPU")] == []


def test_every_op_has_a_cuda_kernel_in_a_cuda_build():
    ops = _kernel_ops()
    with_cuda = [op for op in ops if _has(op, "CUDA")]
    if not with_cuda:
        if os.getenv("TORCHSPARSE_EXPECT_CUDA") == "1":
            pytest.fail("TORCHSPARSE_EXPECT_CUDA=1 but no torchsparse:: op has a CUDA kernel (a CPU-only build)")
        pytest.skip("CPU-only build: no .cu file compiled")
    assert [op for op in ops if not _has(op, "CUDA")] == []
