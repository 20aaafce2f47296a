// Convolution on CUDA: depthwise_conv2d (direct kernels) and conv2d (our
// im2col / col2im + at::mm, i.e. cuBLAS).
//
// Depthwise, simple and deterministic (no atomics anywhere):
// * forward: one thread per output element, in the output's memory order (for
//   channels_last consecutive threads take consecutive channels: coalesced);
// * grad_input: one thread per input element, gathering the taps that read it
//   (conv_source_output in conv.h), summed over the channel's m outputs;
// * grad_weight: one block per (output channel, tap), a fixed-shape tree
//   reduction over batch and pixels: bit-identical from run to run.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "visionops/check.h"
#include "visionops/conv.h"
#include "visionops/conv_ops.h"

namespace visionops {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) {
  // grid-stride loops cover anything beyond this
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20));
}

#define VISIONOPS_GRID_STRIDE_LOOP(i, n)                                                    \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// (n, c, y, x) of linear index i of an [N, C, Y, X] tensor stored NCHW or channels_last
template <bool kCL>
__device__ __forceinline__ void unravel(int64_t i, int64_t C, int64_t Y, int64_t X, int64_t& n, int64_t& c,
                                        int64_t& y, int64_t& x) {
  if (kCL) {
    c = i % C;
    i /= C;
    x = i % X;
    i /= X;
    y = i % Y;
    n = i / Y;
  } else {
    x = i % X;
    i /= X;
    y = i % Y;
    i /= Y;
    c = i % C;
    n = i / C;
  }
}

template <bool kCL>
__device__ __forceinline__ int64_t ravel(int64_t n, int64_t c, int64_t y, int64_t x, int64_t C, int64_t Y,
                                         int64_t X) {
  return kCL ? ((n * Y + y) * X + x) * C + c : ((n * C + c) * Y + y) * X + x;
}

// ---------------------------------------------------------------- depthwise

template <typename scalar_t, bool kCL>
__global__ void dw_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                                  const scalar_t* __restrict__ bias, scalar_t* __restrict__ output, ConvGeometry g,
                                  int64_t act, int64_t total) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(idx, total) {
    int64_t n, oc, oh, ow;
    unravel<kCL>(idx, g.OC, g.OH, g.OW, n, oc, oh, ow);
    const int64_t c = oc / g.m;
    T acc = bias ? static_cast<T>(bias[oc]) : T(0);
    const scalar_t* w = weight + oc * g.KH * g.KW;
    for (int64_t i = 0; i < g.KH; ++i) {
      const int64_t ih = oh * g.sh - g.pt + i * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t iw = ow * g.sw - g.pl + j * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        acc += static_cast<T>(w[i * g.KW + j]) * static_cast<T>(input[ravel<kCL>(n, c, ih, iw, g.C, g.H, g.W)]);
      }
    }
    output[idx] = static_cast<scalar_t>(apply_activation(acc, act));
  }
}

template <typename scalar_t, bool kCL>
__global__ void dw_grad_input_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ weight,
                                     scalar_t* __restrict__ grad_input, ConvGeometry g, int64_t total) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(idx, total) {
    int64_t n, c, ih, iw;
    unravel<kCL>(idx, g.C, g.H, g.W, n, c, ih, iw);
    T acc = T(0);
    for (int64_t i = 0; i < g.KH; ++i) {
      const int64_t oh = conv_source_output(ih, i, g.pt, g.sh, g.dh, g.OH);
      if (oh < 0) continue;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t ow = conv_source_output(iw, j, g.pl, g.sw, g.dw, g.OW);
        if (ow < 0) continue;
        for (int64_t k = 0; k < g.m; ++k) {
          const int64_t oc = c * g.m + k;
          acc += static_cast<T>(weight[(oc * g.KH + i) * g.KW + j]) *
                 static_cast<T>(grad[ravel<kCL>(n, oc, oh, ow, g.OC, g.OH, g.OW)]);
        }
      }
    }
    grad_input[idx] = static_cast<scalar_t>(acc);
  }
}

// one block per (output channel, tap); fixed reduction tree -> deterministic
template <typename scalar_t, bool kCL>
__global__ void dw_grad_weight_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ input,
                                      scalar_t* __restrict__ grad_weight, ConvGeometry g) {
  using T = at::opmath_type<scalar_t>;
  __shared__ T partial[kThreads];
  const int64_t KK = g.KH * g.KW;
  const int64_t oc = blockIdx.x / KK, t = blockIdx.x % KK;
  const int64_t i = t / g.KW, j = t % g.KW, c = oc / g.m;
  const int64_t positions = g.N * g.OH * g.OW;
  T acc = T(0);
  for (int64_t p = threadIdx.x; p < positions; p += blockDim.x) {
    const int64_t ow = p % g.OW, oh = (p / g.OW) % g.OH, n = p / (g.OW * g.OH);
    const int64_t ih = oh * g.sh - g.pt + i * g.dh, iw = ow * g.sw - g.pl + j * g.dw;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
    acc += static_cast<T>(grad[ravel<kCL>(n, oc, oh, ow, g.OC, g.OH, g.OW)]) *
           static_cast<T>(input[ravel<kCL>(n, c, ih, iw, g.C, g.H, g.W)]);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_weight[blockIdx.x] = static_cast<scalar_t>(partial[0]);
}

at::Tensor depthwise_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t activation) {
  const auto g = check_depthwise_args("depthwise_conv2d", input, weight, bias, stride, padding, dilation, activation);
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = conv_channels_last(input);
  const auto fmt = conv_memory_format(cl);
  auto output = at::empty({g.N, g.OC, g.OH, g.OW}, input.options(), fmt);
  const int64_t total = output.numel();
  if (total == 0) return output;
  const auto in = input.contiguous(fmt);
  const auto w = weight.contiguous();
  const auto b = bias.has_value() ? bias->contiguous() : at::Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_cuda", [&] {
    const scalar_t* bp = bias.has_value() ? b.const_data_ptr<scalar_t>() : nullptr;
    if (cl) {
      dw_forward_kernel<scalar_t, true><<<blocks_for(total), kThreads, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp, output.mutable_data_ptr<scalar_t>(), g,
          activation, total);
    } else {
      dw_forward_kernel<scalar_t, false><<<blocks_for(total), kThreads, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp, output.mutable_data_ptr<scalar_t>(), g,
          activation, total);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& output,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t activation,
    std::array<bool, 3> output_mask) {
  const char* op = "_depthwise_conv2d_backward";
  const auto g = check_depthwise_args(op, input, weight, std::nullopt, stride, padding, dilation, activation);
  check_conv_grad(op, grad, input, g);
  VISIONOPS_CHECK(activation == kActNone || (output.has_value() && output->sizes() == grad.sizes()), op,
                  ": output (the forward result) is needed to differentiate through the activation");
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = conv_channels_last(input);
  const auto fmt = conv_memory_format(cl);
  const auto go = grad_through_activation(grad, output, activation).contiguous(fmt);
  at::Tensor gi = output_mask[0] ? at::zeros_like(input, fmt) : unwanted_grad(input);
  at::Tensor gw = output_mask[1] ? at::zeros_like(weight, at::MemoryFormat::Contiguous) : unwanted_grad(weight);
  at::Tensor gb = output_mask[2] ? conv_bias_grad(go) : unwanted_grad(weight);
  if (go.numel() == 0 || input.numel() == 0) return {gi, gw, gb};
  const auto in = input.contiguous(fmt);
  const auto w = weight.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_backward_cuda",
                                  [&] {
    if (output_mask[0]) {
      const int64_t total = gi.numel();
      if (cl) {
        dw_grad_input_kernel<scalar_t, true><<<blocks_for(total), kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), gi.mutable_data_ptr<scalar_t>(), g, total);
      } else {
        dw_grad_input_kernel<scalar_t, false><<<blocks_for(total), kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), gi.mutable_data_ptr<scalar_t>(), g, total);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (output_mask[1]) {
      const int64_t blocks = g.OC * g.KH * g.KW;
      if (cl) {
        dw_grad_weight_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), gw.mutable_data_ptr<scalar_t>(), g);
      } else {
        dw_grad_weight_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), gw.mutable_data_ptr<scalar_t>(), g);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {gi, gw, gb};
}

// ---------------------------------------------------------------- conv2d: im2col / col2im

template <typename scalar_t>
__global__ void im2col_kernel(const scalar_t* __restrict__ img, scalar_t* __restrict__ cols, ConvGeometry g,
                              int64_t total) {
  const int64_t OHW = g.OH * g.OW, KK = g.KH * g.KW;
  VISIONOPS_GRID_STRIDE_LOOP(idx, total) {
    const int64_t p = idx % OHW, row = idx / OHW;
    const int64_t c = row / KK, i = (row % KK) / g.KW, j = row % g.KW;
    const int64_t ih = (p / g.OW) * g.sh - g.pt + i * g.dh, iw = (p % g.OW) * g.sw - g.pl + j * g.dw;
    cols[idx] = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W ? img[(c * g.H + ih) * g.W + iw] : scalar_t(0);
  }
}

// one thread per image element, gathering its column entries (no atomics)
template <typename scalar_t>
__global__ void col2im_kernel(const scalar_t* __restrict__ cols, scalar_t* __restrict__ img, ConvGeometry g,
                              int64_t total) {
  using T = at::opmath_type<scalar_t>;
  const int64_t OHW = g.OH * g.OW, KK = g.KH * g.KW;
  VISIONOPS_GRID_STRIDE_LOOP(idx, total) {
    const int64_t iw = idx % g.W, ih = (idx / g.W) % g.H, c = idx / (g.W * g.H);
    T acc = T(0);
    for (int64_t i = 0; i < g.KH; ++i) {
      const int64_t oh = conv_source_output(ih, i, g.pt, g.sh, g.dh, g.OH);
      if (oh < 0) continue;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t ow = conv_source_output(iw, j, g.pl, g.sw, g.dw, g.OW);
        if (ow < 0) continue;
        acc += static_cast<T>(cols[(c * KK + i * g.KW + j) * OHW + oh * g.OW + ow]);
      }
    }
    img[idx] = static_cast<scalar_t>(acc);
  }
}

void im2col_cuda(const at::Tensor& img, const ConvGeometry& g, at::Tensor& cols) {
  const int64_t total = cols.numel();
  if (total == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, img.scalar_type(), "im2col_cuda", [&] {
    im2col_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        img.const_data_ptr<scalar_t>(), cols.mutable_data_ptr<scalar_t>(), g, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void col2im_cuda(const at::Tensor& cols, const ConvGeometry& g, at::Tensor& img) {
  const int64_t total = img.numel();
  if (total == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cols.scalar_type(), "col2im_cuda", [&] {
    col2im_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        cols.const_data_ptr<scalar_t>(), img.mutable_data_ptr<scalar_t>(), g, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto g = check_conv2d_args("conv2d", input, weight, bias, stride, padding, dilation, groups);
  c10::cuda::CUDAGuard guard(input.device());
  return conv2d_gemm_forward(input, weight, bias, g, &im2col_cuda);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                                                    const at::Tensor& weight, at::IntArrayRef stride,
                                                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                                                    int64_t groups, std::array<bool, 3> output_mask) {
  const auto g = check_conv2d_args("_conv2d_backward", input, weight, std::nullopt, stride, padding, dilation, groups);
  check_conv_grad("_conv2d_backward", grad, input, g);
  c10::cuda::CUDAGuard guard(input.device());
  return conv2d_gemm_backward(grad, input, weight, g, output_mask, &im2col_cuda, &col2im_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, CUDA, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cuda);
  m.impl("_depthwise_conv2d_backward", &depthwise_conv2d_backward_cuda);
  m.impl("conv2d", &conv2d_cuda);
  m.impl("_conv2d_backward", &conv2d_backward_cuda);
}

}  // namespace visionops
