// Host-side declarations shared by conv_cpu.cpp and conv_cuda.cu: argument
// checks (one set of messages for both devices) and small ATen helpers.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

#include "visionops/conv.h"

namespace visionops {

// Checks every argument of depthwise_conv2d / conv2d and returns the geometry.
// padding is (top, bottom, left, right).
ConvGeometry check_depthwise_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t activation);
ConvGeometry check_conv2d_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups);
// grad must have the output's shape [N, OC, OH, OW] and input's dtype/device.
void check_conv_grad(const char* op, const at::Tensor& grad, const at::Tensor& input, const ConvGeometry& g);

// channels_last is kept only when the input is really laid out that way.
inline bool conv_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat conv_memory_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The gradient that reaches the convolution through the fused activation.
inline at::Tensor grad_through_activation(const at::Tensor& grad, const std::optional<at::Tensor>& output,
                                          int64_t activation) {
  if (activation == kActNone) return grad;
  const auto& y = output.value();
  auto blocked = activation == kActRelu ? y.le(0) : at::logical_or(y.le(0), y.ge(6));
  return grad.masked_fill(blocked, 0);
}

// Bias gradient: sum over batch and pixels, accumulated in float for 16-bit grads.
inline at::Tensor conv_bias_grad(const at::Tensor& grad) {
  const auto acc = at::toOpMathType(grad.scalar_type());
  return grad.sum({0, 2, 3}, false, acc).to(grad.scalar_type());
}

// conv2d by our im2col / col2im and at::mm (cuBLAS on CUDA), shared by both
// devices; each device supplies its im2col (image [Cg, H, W] -> cols [Cg*KH*KW, OH*OW])
// and col2im (cols -> image, overwriting it).
using Im2ColFn = void (*)(const at::Tensor& src, const ConvGeometry& g, at::Tensor& dst);
at::Tensor conv2d_gemm_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const ConvGeometry& g, Im2ColFn im2col);
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_gemm_backward(const at::Tensor& grad, const at::Tensor& input,
                                                                    const at::Tensor& weight, const ConvGeometry& g,
                                                                    std::array<bool, 3> output_mask, Im2ColFn im2col,
                                                                    Im2ColFn col2im);

// Placeholder for a gradient that output_mask says is not wanted.
inline at::Tensor unwanted_grad(const at::Tensor& like) { return at::empty({0}, like.options()); }

}  // namespace visionops
