// Host-side argument checks shared by sampling_cpu.cpp and sampling_cuda.cu (one
// set of messages for both devices).
#pragma once

#include <ATen/ATen.h>

#include "visionops/roi_ops.h"  // use_channels_last, memory_format_for

namespace visionops {

void check_sampling_input(const char* op, const at::Tensor& input, int64_t interpolation_mode, int64_t padding_mode);
void check_sampling_grid(const char* op, const at::Tensor& input, const at::Tensor& grid);
void check_sampling_theta(const char* op, const at::Tensor& input, const at::Tensor& theta);
// kernel_weights [B, K, 2], affine_weights [B, 3, 2], target_points [B, K, 2];
// `like` gives the dtype and device they must have.
void check_tps_params(const char* op, const at::Tensor& like, const at::Tensor& kernel_weights,
                      const at::Tensor& affine_weights, const at::Tensor& target_points);
void check_output_size(const char* op, int64_t height, int64_t width);

}  // namespace visionops
