// Host-side argument checks shared by sampling_cpu.cpp and sampling_cuda.cu (one
// set of messages for both devices).
#pragma once

#include <ATen/ATen.h>

#include "visionops/roi_ops.h"  // use_channels_last, memory_format_for

namespace visionops {

void check_sampling_input(const char* op, const at::Tensor& input, int64_t interpolation_mode, int64_t padding_mode);
void check_sampling_grid(const char* op, const at::Tensor& input, const at::Tensor& grid);
void check_sampling_theta(const char* op, const at::Tensor& input, const at::Tensor& theta);
// grad of a warp's output: [N, C, H_out, W_out] with input's N, C, device and dtype
void check_sampling_output_grad(const char* op, const at::Tensor& grad, const at::Tensor& input);
// kernel_weights [B, K, 2], affine_weights [B, 3, 2], target_points [B, K, 2];
// `like` (the input, or kernel_weights itself) gives the batch size, dtype and
// device they must have.
void check_tps_params(const char* op, const at::Tensor& like, const at::Tensor& kernel_weights,
                      const at::Tensor& affine_weights, const at::Tensor& target_points);
void check_output_size(const char* op, int64_t height, int64_t width);
// The output pixels' normalised coordinates (x_t, y_t) as F.affine_grid places
// them: [H * W, 3] rows (x_t, y_t, 1) (affine: theta @ row) or, with
// ones_first, (1, x_t, y_t) (the TPS affine part).
at::Tensor sampling_base_grid(int64_t height, int64_t width, bool align_corners, bool ones_first,
                              const at::TensorOptions& options);
// d loss / d affine_weights [B, 3, 2] of a TPS grid from its gradient [B, H, W, 2]
// (the affine part is linear in the base grid: one GEMM), in `dtype`.
at::Tensor sampling_tps_affine_grad(const at::Tensor& grad_grid, bool align_corners, at::ScalarType dtype);

}  // namespace visionops
