// The extension module torchsparse._C: a Python module with no functions (importing it registers the ops) and
// the torchsparse operator library, whose schemas each op family adds with TORCH_LIBRARY_FRAGMENT.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "torchsparse operators", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(torchsparse, m) {}
