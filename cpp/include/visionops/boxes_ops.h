// Host-side declarations shared by boxes_cpu.cpp and boxes_cuda.cu.
#pragma once

#include <ATen/ATen.h>

namespace visionops {

void check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2);

}  // namespace visionops
