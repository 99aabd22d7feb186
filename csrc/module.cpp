// The extension module torchsparse._C: importing it registers the ops (the torchsparse operator library, whose
// schemas each op family adds with TORCH_LIBRARY_FRAGMENT). It also exposes, with the plain CPython API, the
// constants and the kernel offset order that the C++ defines, so that Python reads them instead of restating them:
// BATCH_MAX, COORD_MIN, COORD_MAX (the packable range, common/coords.h), MAX_GEOMETRY (common/checks.h),
// HASH_CAPACITY_SCALE, HASH_CAPACITY_PAD (common/hash_table.h), FP16_PAIRS_PER_SUM and cpu_has_avx512fp16()
// (convolution/tile_cpu.h) and kernel_indices(kx, ky, kz).
#include <Python.h>
#include <torch/library.h>

#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/coords.h"
#include "common/hash_table.h"
#include "convolution/tile_cpu.h"

namespace {

// kernel_indices(kx, ky, kz) -> list of K tuples (ix, iy, iz): the per-axis kernel index of each offset
// k = 0..K-1 in the order every op numbers them (KernelGeometry::index: x fastest for odd volumes, else z fastest).
PyObject* kernel_indices(PyObject* /*module*/, PyObject* args) {
  long long kx = 0, ky = 0, kz = 0;
  if (!PyArg_ParseTuple(args, "LLL:kernel_indices", &kx, &ky, &kz)) {
    return nullptr;
  }
  torchsparse::KernelGeometry geometry;
  try {
    const std::vector<int64_t> size{kx, ky, kz}, one{1, 1, 1}, zero{0, 0, 0};
    geometry = torchsparse::make_geometry(size, one, one, zero);
  } catch (const c10::Error& error) {
    PyErr_SetString(PyExc_ValueError, error.what_without_backtrace());
    return nullptr;
  }
  PyObject* out = PyList_New(geometry.volume());
  if (out == nullptr) {
    return nullptr;
  }
  for (int64_t k = 0; k < geometry.volume(); ++k) {
    int64_t idx[3];
    geometry.index(k, idx);
    PyObject* item = Py_BuildValue("(LLL)", static_cast<long long>(idx[0]), static_cast<long long>(idx[1]),
                                   static_cast<long long>(idx[2]));
    if (item == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyList_SET_ITEM(out, k, item);
  }
  return out;
}

// cpu_has_avx512fp16() -> bool: whether conv3d_fused can multiply float16 in float16 on this CPU.
PyObject* cpu_has_avx512fp16(PyObject* /*module*/, PyObject* /*args*/) {
  return PyBool_FromLong(torchsparse::cpu_has_avx512fp16());
}

PyMethodDef methods[] = {
    {"kernel_indices", kernel_indices, METH_VARARGS,
     "kernel_indices(kx, ky, kz) -> list of (ix, iy, iz) per-axis kernel indices in offset order"},
    {"cpu_has_avx512fp16", cpu_has_avx512fp16, METH_NOARGS,
     "cpu_has_avx512fp16() -> whether conv3d_fused can multiply float16 in float16 on this CPU (AVX512-FP16)"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "torchsparse operators", -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) {
    return nullptr;
  }
  const std::pair<const char*, int64_t> constants[] = {
      {"BATCH_MAX", torchsparse::kBatchMax},
      {"COORD_MIN", torchsparse::kCoordMin},
      {"COORD_MAX", torchsparse::kCoordMax},
      {"MAX_GEOMETRY", torchsparse::kMaxGeometry},
      {"HASH_CAPACITY_SCALE", torchsparse::kHashCapacityScale},
      {"HASH_CAPACITY_PAD", torchsparse::kHashCapacityPad},
      {"FP16_PAIRS_PER_SUM", torchsparse::FP16_PAIRS_PER_SUM},
  };
  for (const auto& [name, value] : constants) {
    if (PyModule_AddIntConstant(module, name, static_cast<long>(value)) < 0) {
      Py_DECREF(module);
      return nullptr;
    }
  }
  return module;
}
}

TORCH_LIBRARY(torchsparse, m) {}
