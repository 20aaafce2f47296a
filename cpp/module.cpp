// The pybind11 module visionops._C. Loading this shared object runs the
// TORCH_LIBRARY registrations of ops.cpp and the kernel files; the module itself
// only reports how it was built.
#include <pybind11/pybind11.h>

#include <string>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "visionops compiled kernels; importing registers torch.ops.visionops.*";
  m.def("build_info", [] {
    py::dict info;
    info["version"] = VISIONOPS_VERSION;
    info["torch_version"] = VISIONOPS_TORCH_VERSION;
    info["cuda"] = static_cast<bool>(VISIONOPS_WITH_CUDA);
    info["cuda_archs"] = std::string(VISIONOPS_CUDA_ARCHS);
    info["cuda_compiler_version"] = std::string(VISIONOPS_CUDA_COMPILER_VERSION);
    info["cxx_standard"] = static_cast<long>(__cplusplus);
    return info;
  }, "How this extension was built: version, torch version, CUDA kernels and archs.");
}
