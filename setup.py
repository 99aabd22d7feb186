"""Builds torchsparse._C from csrc/ (and the simulator core pointacc._core from csrc/pointacc/ with pybind11)
and installs models/, datasets/ and tools/ as torchsparse.models, torchsparse.datasets and torchsparse.tools.

CPU kernels are always built. CUDA kernels (csrc/**/*.cu) are built when FORCE_CUDA=1, or automatically when
torch was built with CUDA and nvcc is found; FORCE_ONLY_CPU=1 turns CUDA off. TORCHSPARSE_SANITIZE=1 builds both
extensions with AddressSanitizer and UndefinedBehaviorSanitizer (.ci/sanitize runs the tests on such a build).
"""

import glob
import os

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

import torch


def _with_cuda() -> bool:
    if os.getenv("FORCE_ONLY_CPU", "0") == "1":
        return False
    if os.getenv("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _sanitizer_flags() -> list[str]:
    if os.getenv("TORCHSPARSE_SANITIZE", "0") != "1":
        return []
    return ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]


def _extension():
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    sources = [s for s in sources if not s.startswith(os.path.join("csrc", "pointacc"))]
    cxx = ["-O3", "-fopenmp", *_sanitizer_flags()]
    if _with_cuda():
        sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
        nvcc = ["-O3", "--expt-relaxed-constexpr"]
        return CUDAExtension(
            "torchsparse._C", sources, include_dirs=[os.path.abspath("csrc")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp", *_sanitizer_flags()],
        )
    return CppExtension(
        "torchsparse._C", sources, include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp", *_sanitizer_flags()],
    )


def _pointacc_extension():
    """The simulator's C++ core: plain pybind11, no torch."""
    return Pybind11Extension(
        "pointacc._core", sorted(glob.glob("csrc/pointacc/*.cpp")), extra_compile_args=["-O3", *_sanitizer_flags()],
        extra_link_args=_sanitizer_flags(),
    )


setup(
    packages=[
        "pointacc",
        "pointacc.units",
        "torchsparse",
        "torchsparse.ops",
        "torchsparse.nn",
        "torchsparse.nn.functional",
        "torchsparse.nn.modules",
        "torchsparse.utils",
        "torchsparse.testing",
        "torchsparse.models",
        "torchsparse.models.bevfusion",
        "torchsparse.datasets",
        "torchsparse.tools",
    ],
    package_dir={"torchsparse.models": "models", "torchsparse.datasets": "datasets", "torchsparse.tools": "tools"},
    ext_modules=[_extension(), _pointacc_extension()],
    package_data={"pointacc": ["presets/*.cfg"]},
    cmdclass={"build_ext": BuildExtension},
)
