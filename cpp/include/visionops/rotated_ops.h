// Host-side declarations shared by rotated_cpu.cpp and rotated_cuda.cu:
// argument checks (one set of messages for both devices).
#pragma once

#include <ATen/ATen.h>

namespace visionops {

void check_box_iou_rotated_args(const at::Tensor& boxes1, const at::Tensor& boxes2, int64_t mode, bool aligned);
void check_rotated_roi_forward_args(const char* op, const at::Tensor& input, const at::Tensor& rois,
                                    double spatial_scale, int64_t pooled_height, int64_t pooled_width);
void check_rotated_roi_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                                     int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                     int64_t channels, int64_t height, int64_t width);

}  // namespace visionops
