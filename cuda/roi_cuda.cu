// RoIAlign and RoIPool on CUDA, forward and backward.
//
// One thread per output element, in the output's memory order: for
// channels_last inputs consecutive threads take consecutive channels, so every
// bilinear read of a warp is one coalesced transaction (torchvision copies such
// inputs to NCHW first). Backward has two paths: atomics into an opmath (float)
// buffer, and, under torch.use_deterministic_algorithms(True), a gather kernel
// where each thread owns one input cell and sums the RoIs' contributions in RoI
// order: bit-identical from run to run.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "visionops/roi.h"
#include "visionops/roi_ops.h"

namespace visionops {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) {
  // grid-stride loops cover anything beyond this
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20);
}

#define VISIONOPS_GRID_STRIDE_LOOP(i, n)                                                    \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// (outer, channel, row, col) of linear index `i` of a [outer, C, rows, cols]
// tensor stored contiguously in NCHW or channels_last order.
struct Index4 {
  int64_t outer, c, row, col;
};

template <bool kChannelsLast>
__device__ __forceinline__ Index4 unravel(int64_t i, int64_t C, int64_t rows, int64_t cols) {
  Index4 r;
  if (kChannelsLast) {
    r.c = i % C;
    i /= C;
    r.col = i % cols;
    i /= cols;
    r.row = i % rows;
    r.outer = i / rows;
  } else {
    r.col = i % cols;
    i /= cols;
    r.row = i % rows;
    i /= rows;
    r.c = i % C;
    r.outer = i / C;
  }
  return r;
}

template <bool kChannelsLast>
__device__ __forceinline__ int64_t ravel(Index4 r, int64_t C, int64_t rows, int64_t cols) {
  return kChannelsLast ? ((r.outer * rows + r.row) * cols + r.col) * C + r.c
                       : ((r.outer * C + r.c) * rows + r.row) * cols + r.col;
}

// ---------------------------------------------------------------- RoIAlign

template <typename scalar_t, bool kChannelsLast>
__global__ void roi_align_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                                         scalar_t* __restrict__ output, int64_t total, int64_t N, int64_t C,
                                         int64_t H, int64_t W, int64_t PH, int64_t PW,
                                         at::opmath_type<scalar_t> spatial_scale, int64_t sampling_ratio,
                                         bool aligned) {
  using T = at::opmath_type<scalar_t>;
  const int64_t sy = kChannelsLast ? W * C : W, sx = kChannelsLast ? C : 1;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const Index4 o = unravel<kChannelsLast>(i, C, PH, PW);
    const auto box = make_roi_align_box<T>(rois + o.outer * 5, spatial_scale, PH, PW, sampling_ratio, aligned, N);
    T acc = T(0);
    if (box.batch >= 0) {
      const scalar_t* plane = input + (kChannelsLast ? box.batch * H * W * C + o.c : (box.batch * C + o.c) * H * W);
      int64_t iy0, iy1, ix0, ix1;
      box.y.valid_range(o.row, H, iy0, iy1);
      box.x.valid_range(o.col, W, ix0, ix1);
      for (int64_t iy = iy0; iy < iy1; ++iy) {
        int64_t yl, yh;
        T wyl, wyh;
        if (!bilinear_axis(box.y.sample(o.row, iy), H, yl, yh, wyl, wyh)) continue;
        const scalar_t* row_l = plane + yl * sy;
        const scalar_t* row_h = plane + yh * sy;
        for (int64_t ix = ix0; ix < ix1; ++ix) {
          int64_t xl, xh;
          T wxl, wxh;
          if (!bilinear_axis(box.x.sample(o.col, ix), W, xl, xh, wxl, wxh)) continue;
          acc += wyl * (wxl * static_cast<T>(row_l[xl * sx]) + wxh * static_cast<T>(row_l[xh * sx])) +
                 wyh * (wxl * static_cast<T>(row_h[xl * sx]) + wxh * static_cast<T>(row_h[xh * sx]));
        }
      }
      acc /= box.count;
    }
    output[i] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void roi_align_backward_atomic_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                                 at::opmath_type<scalar_t>* __restrict__ grad_input, int64_t total,
                                                 int64_t N, int64_t C, int64_t H, int64_t W, int64_t PH, int64_t PW,
                                                 at::opmath_type<scalar_t> spatial_scale, int64_t sampling_ratio,
                                                 bool aligned) {
  using T = at::opmath_type<scalar_t>;
  const int64_t sy = kChannelsLast ? W * C : W, sx = kChannelsLast ? C : 1;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const Index4 o = unravel<kChannelsLast>(i, C, PH, PW);
    const auto box = make_roi_align_box<T>(rois + o.outer * 5, spatial_scale, PH, PW, sampling_ratio, aligned, N);
    if (box.batch < 0) continue;
    const T g = static_cast<T>(grad[i]) / box.count;
    T* plane = grad_input + (kChannelsLast ? box.batch * H * W * C + o.c : (box.batch * C + o.c) * H * W);
    int64_t iy0, iy1, ix0, ix1;
    box.y.valid_range(o.row, H, iy0, iy1);
    box.x.valid_range(o.col, W, ix0, ix1);
    for (int64_t iy = iy0; iy < iy1; ++iy) {
      int64_t yl, yh;
      T wyl, wyh;
      if (!bilinear_axis(box.y.sample(o.row, iy), H, yl, yh, wyl, wyh)) continue;
      for (int64_t ix = ix0; ix < ix1; ++ix) {
        int64_t xl, xh;
        T wxl, wxh;
        if (!bilinear_axis(box.x.sample(o.col, ix), W, xl, xh, wxl, wxh)) continue;
        gpuAtomicAdd(plane + yl * sy + xl * sx, g * wyl * wxl);
        gpuAtomicAdd(plane + yl * sy + xh * sx, g * wyl * wxh);
        gpuAtomicAdd(plane + yh * sy + xl * sx, g * wyh * wxl);
        gpuAtomicAdd(plane + yh * sy + xh * sx, g * wyh * wxh);
      }
    }
  }
}

template <typename T>
__device__ __forceinline__ bool axis_may_touch(const RoiAlignAxis<T>& axis, int64_t bins, int64_t cell) {
  if (axis.grid <= 0) return false;
  T lo0, hi0, lo1, hi1;
  axis.extent(0, lo0, hi0);
  axis.extent(bins - 1, lo1, hi1);
  const T lo = lo0 < lo1 ? lo0 : lo1, hi = hi0 > hi1 ? hi0 : hi1;
  return hi >= static_cast<T>(cell - 1) && lo <= static_cast<T>(cell + 1);
}

// Deterministic backward: one thread per grad_input cell, RoIs visited in order.
template <typename scalar_t, bool kChannelsLast>
__global__ void roi_align_backward_gather_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                                 at::opmath_type<scalar_t>* __restrict__ grad_input, int64_t total,
                                                 int64_t K, int64_t N, int64_t C, int64_t H, int64_t W, int64_t PH,
                                                 int64_t PW, at::opmath_type<scalar_t> spatial_scale,
                                                 int64_t sampling_ratio, bool aligned) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const Index4 p = unravel<kChannelsLast>(i, C, H, W);
    T acc = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const auto box = make_roi_align_box<T>(rois + k * 5, spatial_scale, PH, PW, sampling_ratio, aligned, N);
      if (box.batch != p.outer) continue;
      if (!axis_may_touch(box.y, PH, p.row) || !axis_may_touch(box.x, PW, p.col)) continue;
      for (int64_t ph = 0; ph < PH; ++ph) {
        const T wy = roi_align_cell_weight(box.y, ph, H, p.row);
        if (wy == T(0)) continue;
        for (int64_t pw = 0; pw < PW; ++pw) {
          const T wx = roi_align_cell_weight(box.x, pw, W, p.col);
          if (wx == T(0)) continue;
          const Index4 g{k, p.c, ph, pw};
          acc += static_cast<T>(grad[ravel<kChannelsLast>(g, C, PH, PW)]) * wy * wx / box.count;
        }
      }
    }
    grad_input[i] = acc;
  }
}

// ---------------------------------------------------------------- RoIPool

template <typename scalar_t, bool kChannelsLast>
__global__ void roi_pool_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                                        scalar_t* __restrict__ output, int64_t* __restrict__ argmax, int64_t total,
                                        int64_t N, int64_t C, int64_t H, int64_t W, int64_t PH, int64_t PW,
                                        at::opmath_type<scalar_t> spatial_scale) {
  using T = at::opmath_type<scalar_t>;
  const int64_t sx = kChannelsLast ? C : 1;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const Index4 o = unravel<kChannelsLast>(i, C, PH, PW);
    const auto box = make_roi_pool_box<T>(rois + o.outer * 5, spatial_scale, PH, PW, N);
    T best = T(0);
    int64_t best_index = -1;
    if (box.batch >= 0) {
      const scalar_t* plane = input + (kChannelsLast ? box.batch * H * W * C + o.c : (box.batch * C + o.c) * H * W);
      int64_t h0, h1, w0, w1;
      box.rows(o.row, H, h0, h1);
      box.cols(o.col, W, w0, w1);
      best_index = window_max(plane, sx, W, h0, h1, w0, w1, best);
    }
    output[i] = static_cast<scalar_t>(best_index < 0 ? T(0) : best);
    argmax[i] = best_index;
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void roi_pool_backward_atomic_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                                const int64_t* __restrict__ argmax,
                                                at::opmath_type<scalar_t>* __restrict__ grad_input, int64_t total,
                                                int64_t N, int64_t C, int64_t H, int64_t W, int64_t PH, int64_t PW) {
  using T = at::opmath_type<scalar_t>;
  const int64_t sx = kChannelsLast ? C : 1;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const int64_t a = argmax[i];
    if (a < 0 || a >= H * W) continue;
    const Index4 o = unravel<kChannelsLast>(i, C, PH, PW);
    const T b = static_cast<T>(rois[o.outer * 5]);
    if (!(b >= T(0) && b < static_cast<T>(N))) continue;
    const int64_t n = static_cast<int64_t>(b);
    T* plane = grad_input + (kChannelsLast ? n * H * W * C + o.c : (n * C + o.c) * H * W);
    gpuAtomicAdd(plane + a * sx, static_cast<T>(grad[i]));
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void roi_pool_backward_gather_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                                const int64_t* __restrict__ argmax,
                                                at::opmath_type<scalar_t>* __restrict__ grad_input, int64_t total,
                                                int64_t K, int64_t N, int64_t C, int64_t H, int64_t W, int64_t PH,
                                                int64_t PW, at::opmath_type<scalar_t> spatial_scale) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const Index4 p = unravel<kChannelsLast>(i, C, H, W);
    const int64_t cell = p.row * W + p.col;
    T acc = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const auto box = make_roi_pool_box<T>(rois + k * 5, spatial_scale, PH, PW, N);
      if (box.batch != p.outer) continue;
      for (int64_t ph = 0; ph < PH; ++ph) {
        int64_t h0, h1;
        box.rows(ph, H, h0, h1);
        if (p.row < h0 || p.row >= h1) continue;
        for (int64_t pw = 0; pw < PW; ++pw) {
          int64_t w0, w1;
          box.cols(pw, W, w0, w1);
          if (p.col < w0 || p.col >= w1) continue;
          const int64_t g = ravel<kChannelsLast>(Index4{k, p.c, ph, pw}, C, PH, PW);
          if (argmax[g] == cell) acc += static_cast<T>(grad[g]);
        }
      }
    }
    grad_input[i] = acc;
  }
}

// ---------------------------------------------------------------- op entry points

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  check_roi_forward_args("roi_align", input, rois, spatial_scale, pooled_height, pooled_width);
  const c10::cuda::CUDAGuard guard(input.device());
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  auto output = at::empty({rois.size(0), input.size(1), pooled_height, pooled_width}, input.options(), fmt);
  if (output.numel() == 0) return output;
  if (input.numel() == 0) return output.zero_();
  const auto in = input.contiguous(fmt);
  const auto r = rois.contiguous();
  const int64_t total = output.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    auto kernel = cl ? roi_align_forward_kernel<scalar_t, true> : roi_align_forward_kernel<scalar_t, false>;
    kernel<<<blocks_for(total), kThreads, 0, stream>>>(
        in.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), total,
        in.size(0), in.size(1), in.size(2), in.size(3), pooled_height, pooled_width, static_cast<T>(spatial_scale),
        sampling_ratio, aligned);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_backward_args("_roi_align_backward", grad, rois, pooled_height, pooled_width, batch_size, channels,
                          height, width);
  const c10::cuda::CUDAGuard guard(grad.device());
  const bool cl = use_channels_last(grad);
  const auto fmt = memory_format_for(cl);
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  auto grad_acc = at::empty({batch_size, channels, height, width}, grad.options().dtype(acc_type), fmt).zero_();
  if (grad.numel() != 0 && grad_acc.numel() != 0) {
    const auto g = grad.contiguous(fmt);
    const auto r = rois.contiguous();
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
      using T = at::opmath_type<scalar_t>;
      const T scale = static_cast<T>(spatial_scale);
      if (deterministic) {
        const int64_t total = grad_acc.numel();
        auto kernel = cl ? roi_align_backward_gather_kernel<scalar_t, true>
                         : roi_align_backward_gather_kernel<scalar_t, false>;
        kernel<<<blocks_for(total), kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), grad_acc.mutable_data_ptr<T>(), total,
            r.size(0), batch_size, channels, height, width, pooled_height, pooled_width, scale, sampling_ratio,
            aligned);
      } else {
        const int64_t total = g.numel();
        auto kernel = cl ? roi_align_backward_atomic_kernel<scalar_t, true>
                         : roi_align_backward_atomic_kernel<scalar_t, false>;
        kernel<<<blocks_for(total), kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), grad_acc.mutable_data_ptr<T>(), total,
            batch_size, channels, height, width, pooled_height, pooled_width, scale, sampling_ratio, aligned);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return grad_acc.scalar_type() == grad.scalar_type() ? grad_acc : grad_acc.to(grad.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                                         double spatial_scale, int64_t pooled_height,
                                                         int64_t pooled_width) {
  check_roi_forward_args("roi_pool", input, rois, spatial_scale, pooled_height, pooled_width);
  const c10::cuda::CUDAGuard guard(input.device());
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  auto output = at::empty({rois.size(0), input.size(1), pooled_height, pooled_width}, input.options(), fmt);
  auto argmax = at::empty({rois.size(0), input.size(1), pooled_height, pooled_width}, input.options().dtype(at::kLong),
                          fmt);
  if (output.numel() == 0) return {output, argmax};
  if (input.numel() == 0) return {output.zero_(), argmax.fill_(-1)};
  const auto in = input.contiguous(fmt);
  const auto r = rois.contiguous();
  const int64_t total = output.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    auto kernel = cl ? roi_pool_forward_kernel<scalar_t, true> : roi_pool_forward_kernel<scalar_t, false>;
    kernel<<<blocks_for(total), kThreads, 0, stream>>>(
        in.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
        argmax.mutable_data_ptr<int64_t>(), total, in.size(0), in.size(1), in.size(2), in.size(3), pooled_height,
        pooled_width, static_cast<T>(spatial_scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, argmax};
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  check_roi_backward_args("_roi_pool_backward", grad, rois, pooled_height, pooled_width, batch_size, channels, height,
                          width);
  TORCH_CHECK(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kLong, "_roi_pool_backward: argmax must be ",
              "an int64 tensor shaped like grad, got ", argmax.scalar_type(), " ", argmax.sizes());
  const c10::cuda::CUDAGuard guard(grad.device());
  const bool cl = use_channels_last(argmax);
  const auto fmt = memory_format_for(cl);
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  auto grad_acc = at::empty({batch_size, channels, height, width}, grad.options().dtype(acc_type), fmt).zero_();
  if (grad.numel() != 0 && grad_acc.numel() != 0) {
    const auto g = grad.contiguous(fmt);
    const auto a = argmax.contiguous(fmt);
    const auto r = rois.contiguous();
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_cuda", [&] {
      using T = at::opmath_type<scalar_t>;
      if (deterministic) {
        const int64_t total = grad_acc.numel();
        auto kernel = cl ? roi_pool_backward_gather_kernel<scalar_t, true>
                         : roi_pool_backward_gather_kernel<scalar_t, false>;
        kernel<<<blocks_for(total), kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), a.const_data_ptr<int64_t>(),
            grad_acc.mutable_data_ptr<T>(), total, r.size(0), batch_size, channels, height, width, pooled_height,
            pooled_width, static_cast<T>(spatial_scale));
      } else {
        const int64_t total = g.numel();
        auto kernel = cl ? roi_pool_backward_atomic_kernel<scalar_t, true>
                         : roi_pool_backward_atomic_kernel<scalar_t, false>;
        kernel<<<blocks_for(total), kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), a.const_data_ptr<int64_t>(),
            grad_acc.mutable_data_ptr<T>(), total, batch_size, channels, height, width, pooled_height, pooled_width);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return grad_acc.scalar_type() == grad.scalar_type() ? grad_acc : grad_acc.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, CUDA, m) {
  m.impl("roi_align", &roi_align_forward_cuda);
  m.impl("_roi_align_backward", &roi_align_backward_cuda);
  m.impl("roi_pool", &roi_pool_forward_cuda);
  m.impl("_roi_pool_backward", &roi_pool_backward_cuda);
}

}  // namespace visionops
