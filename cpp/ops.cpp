// Every visionops operator schema, in one place. Kernels are registered per
// device in <family>_cpu.cpp / <family>_cuda.cu; fake (meta) kernels, autograd
// and autocast rules in python/visionops/ops/<family>.py.
#include <torch/library.h>

TORCH_LIBRARY(visionops, m) {
  // ---- roi: RoIAlign (Mask R-CNN) and RoIPool (Fast R-CNN)
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
      "bool aligned) -> Tensor");
  // returns (output, argmax); argmax holds h * W + w of the max cell, -1 for empty bins
  m.def(
      "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
      "-> (Tensor, Tensor)");
  m.def(
      "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor");
}
