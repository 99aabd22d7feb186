#!/usr/bin/env bash
# Device check in one command, on a machine with an NVIDIA GPU: builds torchsparse with CUDA for the local GPU
# against the machine's own torch, runs the whole test suite with the CUDA cases executing (TORCHSPARSE_EXPECT_CUDA:
# a build without CUDA kernels fails), then the GPU benchmarks. Output also goes to benchmarks/results/device_check.log.
# Target: under 8 minutes on a 16-core machine with one H200.
#
# Usage: benchmarks/device_check.sh        (TORCH_CUDA_ARCH_LIST defaults to the local GPU's, MAX_JOBS to 16)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
exec > >(tee benchmarks/results/device_check.log) 2>&1

PYTHON=${PYTHON:-python3}
"${PYTHON}" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check needs an NVIDIA GPU"
print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
arch=$("${PYTHON}" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
start=$(date +%s)
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-${arch}}" MAX_JOBS="${MAX_JOBS:-16}" \
  "${PYTHON}" setup.py build_ext --inplace > benchmarks/results/device_check_build.log 2>&1 \
  || { tail -40 benchmarks/results/device_check_build.log; exit 1; }
echo "CUDA build: $(( $(date +%s) - start )) s for $(find csrc -name '*.cu' | wc -l) .cu files (sm_${arch/./})"

# The tests run from the checkout (the build above is in place); the summary line gives passed / skipped / failed.
status=0
TORCHSPARSE_EXPECT_CUDA=1 "${PYTHON}" -m pytest -q -p no:cacheprovider --import-mode=importlib tests || status=$?

"${PYTHON}" benchmarks/ops/bench_kernel_map.py --device cuda --threads "$(nproc)"
exit "${status}"
