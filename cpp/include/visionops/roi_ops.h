// Host-side declarations shared by roi_cpu.cpp and roi_cuda.cu: argument checks
// (one set of messages for both devices) and the layout rule.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <optional>

namespace visionops {

// channels_last is kept only when the tensor is really laid out that way.
inline bool use_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat memory_format_for(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// [K, C, PH, PW] result of a pooling op in the chosen layout (argmax: dtype kLong).
inline at::Tensor empty_pooled(const at::Tensor& input, int64_t rois, int64_t pooled_height, int64_t pooled_width,
                               at::MemoryFormat fmt, std::optional<at::ScalarType> dtype = std::nullopt) {
  return at::empty({rois, input.size(1), pooled_height, pooled_width},
                   input.options().dtype(dtype.value_or(input.scalar_type())), fmt);
}

// Zeroed grad_input accumulator in the opmath dtype (float for half/bfloat16), so
// that many small contributions are not each rounded to 16 bits.
inline at::Tensor zeroed_grad_accumulator(const at::Tensor& grad, int64_t batch_size, int64_t channels, int64_t height,
                                          int64_t width, at::MemoryFormat fmt) {
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  return at::empty({batch_size, channels, height, width}, grad.options().dtype(acc_type), fmt).zero_();
}

inline at::Tensor as_grad_dtype(const at::Tensor& grad_acc, const at::Tensor& grad) {
  return grad_acc.scalar_type() == grad.scalar_type() ? grad_acc : grad_acc.to(grad.scalar_type());
}

void check_roi_forward_args(const char* op, const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                            int64_t pooled_height, int64_t pooled_width);
void check_roi_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& rois, int64_t pooled_height,
                             int64_t pooled_width, int64_t batch_size, int64_t channels, int64_t height,
                             int64_t width);
void check_argmax_like_grad(const char* op, const at::Tensor& argmax, const at::Tensor& grad);
// CPU only: the batch index of every RoI must name an image (CUDA cannot check
// without a host sync; there such RoIs pool to zero).
void check_roi_batch_indices(const char* op, const at::Tensor& rois, int64_t batch_size);

}  // namespace visionops
