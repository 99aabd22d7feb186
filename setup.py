"""Builds torchsparse._C from csrc/ (and the simulator core pointacc._core from csrc/pointacc/ with pybind11)
and installs models/, datasets/, tools/ and assets/ as torchsparse.models, torchsparse.datasets, torchsparse.tools
and torchsparse.assets (the sample scan the tools default to, as package data; so are pointacc's presets).

CPU kernels are always built. CUDA kernels (csrc/**/*.cu) are built when FORCE_CUDA=1, or automatically when
torch was built with CUDA and nvcc is found (the pip packages nvidia-cuda-nvcc & co. matching torch's CUDA first,
then CUDA_HOME, then nvcc on PATH); FORCE_ONLY_CPU=1 turns CUDA off. No GPU is needed to build. TORCHSPARSE_SANITIZE=1 builds both
extensions with AddressSanitizer and UndefinedBehaviorSanitizer (.ci/sanitize runs the tests on such a build).
"""

import glob
import os
import site
import sys
import sysconfig

import torch


def _pip_cuda_home() -> str | None:
    """The CUDA toolkit of the pip packages nvidia-cuda-nvcc / -runtime / -cccl / -crt matching torch's CUDA
    (site-packages/nvidia/cu13 for CUDA 13), or None: nvcc, the CUDA headers and the cuBLAS / cuSPARSE headers that
    ATen's CUDA headers include all live there."""
    if torch.version.cuda is None:
        return None
    major = torch.version.cuda.split(".")[0]
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    for root in sorted(roots):
        home = os.path.join(root, "nvidia", f"cu{major}")
        if os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home
    return None


# The pip toolkit wins over one found on PATH (torch.utils.cpp_extension reads CUDA_HOME when imported); an explicit
# CUDA_HOME or CUDA_PATH is respected.
if not (os.getenv("CUDA_HOME") or os.getenv("CUDA_PATH")) and _pip_cuda_home():
    os.environ["CUDA_HOME"] = _pip_cuda_home()

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def _cuda_link_dirs() -> list[str]:
    """Library folders for linking against the CUDA runtime. The pip toolkit ships only libcudart.so.13 in lib/, so an
    unversioned libcudart.so link to it goes into build/cuda-link (the extension then needs libcudart.so.13, which
    torch itself loads)."""
    home = CUDA_HOME or ""
    dirs = [d for d in (os.path.join(home, "lib64"), os.path.join(home, "lib")) if os.path.isdir(d)]
    versioned = sorted(glob.glob(os.path.join(home, "lib", "libcudart.so.*")))
    if versioned and not os.path.exists(os.path.join(home, "lib", "libcudart.so")):
        link_dir = os.path.abspath(os.path.join("build", "cuda-link"))
        os.makedirs(link_dir, exist_ok=True)
        link = os.path.join(link_dir, "libcudart.so")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(versioned[0], link)
        dirs.append(link_dir)
    return dirs


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
    # No fused multiply-adds in our own kernels on either side (the host compiler fuses them on aarch64, nvcc on
    # every GPU): the CPU runs of the portable bodies then give the GPU's bits (GEMMs are cuBLAS's / MKL's own).
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off", *_sanitizer_flags()]
    if _with_cuda():
        sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
        nvcc = ["-O3", "--expt-relaxed-constexpr", "--extended-lambda", "--fmad=false"]
        return CUDAExtension(
            "torchsparse._C", sources, include_dirs=[os.path.abspath("csrc")], library_dirs=_cuda_link_dirs(),
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


class _BuildExtension(BuildExtension):
    """torch's BuildExtension, with the objects of an editable install kept in the ordinary build folder.

    pip's editable installs compile in a temporary folder that is deleted afterwards, and torch's ninja backend
    always reruns ninja (which relies on the objects it finds), so a later build of the same sources compiled every
    file again. With the objects kept in build/temp.<platform>-<python>, the folder `pip wheel .` and
    `setup.py build_ext` use, such a build recompiles only what changed: .ci/wheel packs the wheel after the
    README's editable install with little more than a link.
    """

    def finalize_options(self) -> None:
        super().finalize_options()
        if getattr(self, "editable_mode", False):
            self.build_temp = os.path.join("build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")


setup(
    packages=[
        "pointacc",
        "pointacc.units",
        "torchsparse",
        "torchsparse.ops",
        "torchsparse.ops.triton",
        "torchsparse.nn",
        "torchsparse.nn.functional",
        "torchsparse.nn.modules",
        "torchsparse.utils",
        "torchsparse.testing",
        "torchsparse.models",
        "torchsparse.models.bevfusion",
        "torchsparse.datasets",
        "torchsparse.tools",
        "torchsparse.assets",
    ],
    package_dir={
        "torchsparse.models": "models",
        "torchsparse.datasets": "datasets",
        "torchsparse.tools": "tools",
        "torchsparse.assets": "assets",
    },
    ext_modules=[_extension(), _pointacc_extension()],
    package_data={
        "pointacc": ["presets/*.cfg"],
        "torchsparse.assets": ["semantickitti/000000.bin", "semantickitti/000000.label", "semantickitti/README.md"],
        "torchsparse.testing": ["bevfusion_det_state_dict_keys.json"],
    },
    cmdclass={"build_ext": _BuildExtension},
)
