"""Which devices the torchsparse:: operators have kernels for.

Every op has a CPU kernel (or, for the Python-defined validation ops torchsparse::check_*, a device-agnostic
implementation). In a CUDA build (csrc/**/*.cu compiled, FORCE_CUDA=1) every C++ op also has a CUDA kernel; the CUDA
CI job (.ci/cuda) sets TORCHSPARSE_EXPECT_CUDA=1 so that a build without CUDA kernels fails instead of skipping.
"""

import os

import pytest
import torch

import torchsparse.ops  # noqa: F401  (registers the C++ and the Triton ops)


def _kernel_ops() -> list[str]:
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("torchsparse::")]
    return sorted(n for n in names if not n.split("::")[1].startswith("check_"))


def _has(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, key)


def _triton(op: str) -> bool:
    """Triton ops (torch.library.triton_op) hold one CompositeExplicitAutograd kernel that serves every device."""
    return _has(op, "CompositeExplicitAutograd")


def test_every_op_has_a_cpu_kernel():
    ops = _kernel_ops()
    assert ops and [op for op in ops if not (_has(op, "CPU") or _triton(op))] == []


def test_every_op_has_a_cuda_kernel_in_a_cuda_build():
    ops = [op for op in _kernel_ops() if not _triton(op)]
    with_cuda = [op for op in ops if _has(op, "CUDA")]
    if not with_cuda:
        if os.getenv("TORCHSPARSE_EXPECT_CUDA") == "1":
            pytest.fail("TORCHSPARSE_EXPECT_CUDA=1 but no torchsparse:: op has a CUDA kernel (a CPU-only build)")
        pytest.skip("CPU-only build: no .cu file compiled")
    assert [op for op in ops if not _has(op, "CUDA")] == []
