#!/usr/bin/env bash
# Device check in one command, on a machine with an NVIDIA GPU: builds torchsparse with CUDA for the local GPU
# against the machine's own torch, runs the whole test suite with the CUDA cases executing (TORCHSPARSE_EXPECT_CUDA:
# a build without CUDA kernels fails), then the GPU benchmarks, each under its own time limit and all of them before
# a deadline, so that one call returns every number it got. Output goes to benchmarks/results/ (device_check.log,
# device_check_build.log, one bench_*.log per benchmark, their CSV and PNG files), and is copied to $OUT when set.
# Target: under 8 minutes on a 16-core machine with one H200 (build ~2-3 min, tests ~2-3 min, benchmarks ~3 min:
# kernel maps, point-voxel ops and bev_pool under 30 s each, convolution ~1-2 min, most of it Triton compiling and
# autotuning its tiles for 6 layer shapes x 3 dtypes).
#
# Usage: benchmarks/device_check.sh        (TORCH_CUDA_ARCH_LIST defaults to the local GPU's, MAX_JOBS to 16)
#   DEVICE_CHECK_TESTS=0     skip the test suite          DEVICE_CHECK_BENCH=0   skip the benchmarks
#   DEVICE_CHECK_DEADLINE=s  no benchmark runs past s seconds after the start (default 570: one 10-minute call)
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=benchmarks/results
mkdir -p "${RESULTS}"
if [ -n "${OUT:-}" ]; then
  mkdir -p "${OUT}"
  trap 'find "${RESULTS}" -maxdepth 1 -type f ! -name device_check.log -exec cp {} "${OUT}/" \;' EXIT
fi
exec > >(tee "${RESULTS}/device_check.log" ${OUT:+"${OUT}/device_check.log"}) 2>&1
export PYTHONUNBUFFERED=1  # a benchmark stopped by its time limit keeps what it printed

PYTHON=${PYTHON:-python3}
start=$(date +%s)
deadline=$(( start + ${DEVICE_CHECK_DEADLINE:-570} ))
"${PYTHON}" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check needs an NVIDIA GPU"
print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
arch=$("${PYTHON}" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-${arch}}" MAX_JOBS="${MAX_JOBS:-16}" \
  "${PYTHON}" setup.py build_ext --inplace > "${RESULTS}/device_check_build.log" 2>&1 \
  || { tail -40 "${RESULTS}/device_check_build.log"; exit 1; }
echo "CUDA build: $(( $(date +%s) - start )) s for $(find csrc -name '*.cu' | wc -l) .cu files (sm_${arch/./})"

# The tests run from the checkout (the build above is in place); the summary line gives passed / skipped / failed.
status=0
if [ "${DEVICE_CHECK_TESTS:-1}" != 0 ]; then
  tests_start=$(date +%s)
  TORCHSPARSE_EXPECT_CUDA=1 "${PYTHON}" -m pytest -q -p no:cacheprovider --import-mode=importlib tests || status=$?
  echo "tests: exit ${status} after $(( $(date +%s) - tests_start )) s"
fi

# bench NAME LIMIT_S ARGS...: runs benchmarks/ops/NAME.py (benchmarks/models/NAME.py if that exists) ARGS under min(LIMIT_S, time left before the deadline),
# its output also in benchmarks/results/NAME.log; a failure or timeout (exit 124) marks the check failed.
bench() {
  local name=$1 limit=$2 rc=0 t0
  shift 2
  t0=$(date +%s)
  local left=$(( deadline - t0 ))
  if [ "${left}" -lt 30 ]; then
    echo "== ${name}: skipped, $(( t0 - start )) s used of DEVICE_CHECK_DEADLINE"
    status=1
    return
  fi
  [ "${limit}" -le "${left}" ] || limit=${left}
  echo "== ${name} $* (limit ${limit} s)"
  local script="benchmarks/ops/${name}.py"
  [ -f "benchmarks/models/${name}.py" ] && script="benchmarks/models/${name}.py"
  timeout --kill-after=10 "${limit}" "${PYTHON}" "${script}" "$@" 2>&1 | tee "${RESULTS}/${name}.log" \
    || rc=$?
  echo "== ${name}: exit ${rc} after $(( $(date +%s) - t0 )) s"
  [ "${rc}" -eq 0 ] || status=1
}

# The short, predictable ones first; the convolution comparison (Triton compiles and autotunes its tiles on first use,
# TRITON_PRINT_AUTOTUNING logs each pick and its tuning time) prints every layer's rows as it goes, so a run cut
# short by the deadline still gives the layers it reached.
if [ "${DEVICE_CHECK_BENCH:-1}" != 0 ]; then
  dtypes=(--dtype float16 bfloat16 float32)
  bench bench_kernel_map 90 --device cuda --threads "$(nproc)"
  bench bench_point_voxel 60 --device cuda "${dtypes[@]}"
  bench bench_bev_pool 90 --device cuda "${dtypes[@]}"
  TRITON_PRINT_AUTOTUNING=1 bench bench_convolution 300 --device cuda "${dtypes[@]}"
  bench bench_minkunet 240 --device cuda --cr 1.0 --batch 8
fi
echo "device check: exit ${status} after $(( $(date +%s) - start )) s"
exit "${status}"
