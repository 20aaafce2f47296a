// Host-side declarations shared by roi_cpu.cpp and roi_cuda.cu: argument checks
// (one set of messages for both devices) and the layout rule.
#pragma once

#include <ATen/ATen.h>

namespace visionops {

// channels_last is kept only when the tensor is really laid out that way.
inline bool use_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat memory_format_for(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

void check_roi_forward_args(const char* op, const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                            int64_t pooled_height, int64_t pooled_width);
void check_roi_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& rois, int64_t pooled_height,
                             int64_t pooled_width, int64_t batch_size, int64_t channels, int64_t height,
                             int64_t width);
// CPU only: the batch index of every RoI must name an image (CUDA cannot check
// without a host sync; there such RoIs pool to zero).
void check_roi_batch_indices(const char* op, const at::Tensor& rois, int64_t batch_size);

}  // namespace visionops
