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

#include <limits>

#include "visionops/check.h"
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
// tensor stored contiguously in NCHW or channels_last order. index_t is int32
// whenever every tensor has < 2^31 elements: 64-bit division is emulated on the
// GPU and would dominate these kernels.
template <typename index_t>
struct Index4 {
  index_t outer, c, row, col;
};

template <bool kChannelsLast, typename index_t>
__device__ __forceinline__ Index4<index_t> unravel(index_t i, index_t C, index_t rows, index_t cols) {
  Index4<index_t> r;
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

template <bool kChannelsLast, typename index_t>
__device__ __forceinline__ index_t ravel(Index4<index_t> r, index_t C, index_t rows, index_t cols) {
  return kChannelsLast ? ((r.outer * rows + r.row) * cols + r.col) * C + r.c
                       : ((r.outer * C + r.c) * rows + r.row) * cols + r.col;
}

// Each thread computes kGroup channels of one output bin: the sample positions
// and bilinear weights are computed once and reused for every channel. In
// channels_last the group is kGroup consecutive channels and consecutive threads
// take consecutive groups, so a warp reads 128 contiguous channels per tap.
constexpr int kGroup = 4;
// widest bin (in cells per axis) whose weights the backward folds in registers
constexpr int kSpan = 6;

// ---------------------------------------------------------------- RoIAlign

// Calls visit(offset_in_plane, weight) for the four taps of every sample of bin (ph, pw).
template <typename T, typename index_t, typename Visit>
__device__ __forceinline__ void for_each_roi_align_tap(const RoiAlignBox<T>& box, index_t ph, index_t pw, index_t H,
                                                       index_t W, index_t sy, index_t sx, Visit visit) {
  int64_t iy0, iy1, ix0, ix1;
  box.y.valid_range(ph, H, iy0, iy1);
  box.x.valid_range(pw, W, ix0, ix1);
  for (int64_t iy = iy0; iy < iy1; ++iy) {
    int64_t yl, yh;
    T wyl, wyh;
    if (!bilinear_axis(box.y.sample(ph, iy), static_cast<int64_t>(H), yl, yh, wyl, wyh)) continue;
    for (int64_t ix = ix0; ix < ix1; ++ix) {
      int64_t xl, xh;
      T wxl, wxh;
      if (!bilinear_axis(box.x.sample(pw, ix), static_cast<int64_t>(W), xl, xh, wxl, wxh)) continue;
      const index_t rl = static_cast<index_t>(yl) * sy, rh = static_cast<index_t>(yh) * sy;
      const index_t cl = static_cast<index_t>(xl) * sx, ch = static_cast<index_t>(xh) * sx;
      visit(rl + cl, rh + ch, rl + ch, rh + cl, wyl * wxl, wyh * wxh, wyl * wxh, wyh * wxl);
    }
  }
}

template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void roi_align_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                                         scalar_t* __restrict__ output, index_t total, index_t N, index_t C,
                                         index_t H, index_t W, index_t PH, index_t PW,
                                         at::opmath_type<scalar_t> spatial_scale, int64_t sampling_ratio,
                                         bool aligned) {
  using T = at::opmath_type<scalar_t>;
  constexpr int G = kGroup;
  const index_t groups = (C + G - 1) / G;
  const index_t sy = kChannelsLast ? W * C : W, sx = kChannelsLast ? C : 1;
  const index_t channel_step = kChannelsLast ? 1 : H * W;  // from channel c to c + 1
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const auto o = unravel<kChannelsLast>(static_cast<index_t>(i), groups, PH, PW);
    const index_t c0 = o.c * G;
    const auto box = make_roi_align_box<T>(rois + o.outer * 5, spatial_scale, PH, PW, sampling_ratio, aligned, N);
    T acc[G];
#pragma unroll
    for (int j = 0; j < G; ++j) acc[j] = T(0);
    if (box.batch >= 0) {
      const index_t b = static_cast<index_t>(box.batch);
      const scalar_t* plane = input + (kChannelsLast ? b * H * W * C + c0 : (b * C + c0) * channel_step);
      const int n = C - c0 < G ? static_cast<int>(C - c0) : G;
      for_each_roi_align_tap<T, index_t>(
          box, o.row, o.col, H, W, sy, sx,
          [&](index_t a, index_t d, index_t e, index_t f, T wa, T wd, T we, T wf) {
#pragma unroll
            for (int j = 0; j < G; ++j) {
              if (j < n) {
                const scalar_t* p = plane + j * channel_step;
                acc[j] += wa * static_cast<T>(p[a]) + wd * static_cast<T>(p[d]) + we * static_cast<T>(p[e]) +
                          wf * static_cast<T>(p[f]);
              }
            }
          });
    }
#pragma unroll
    for (int j = 0; j < G; ++j) {
      if (c0 + j < C) {
        const Index4<index_t> out{o.outer, static_cast<index_t>(c0 + j), o.row, o.col};
        output[ravel<kChannelsLast>(out, C, PH, PW)] = static_cast<scalar_t>(acc[j] / box.count);
      }
    }
  }
}

template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void roi_align_backward_atomic_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                                 at::opmath_type<scalar_t>* __restrict__ grad_input, index_t total,
                                                 index_t N, index_t C, index_t H, index_t W, index_t PH, index_t PW,
                                                 at::opmath_type<scalar_t> spatial_scale, int64_t sampling_ratio,
                                                 bool aligned) {
  using T = at::opmath_type<scalar_t>;
  constexpr int G = kGroup;
  const index_t groups = (C + G - 1) / G;
  const index_t sy = kChannelsLast ? W * C : W, sx = kChannelsLast ? C : 1;
  const index_t channel_step = kChannelsLast ? 1 : H * W;  // from channel c to c + 1
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const auto o = unravel<kChannelsLast>(static_cast<index_t>(i), groups, PH, PW);
    const index_t c0 = o.c * G;
    const auto box = make_roi_align_box<T>(rois + o.outer * 5, spatial_scale, PH, PW, sampling_ratio, aligned, N);
    if (box.batch < 0) continue;
    const int n = C - c0 < G ? static_cast<int>(C - c0) : G;
    T g[G];
#pragma unroll
    for (int j = 0; j < G; ++j) {
      const Index4<index_t> at{o.outer, static_cast<index_t>(c0 + j), o.row, o.col};
      g[j] = j < n ? static_cast<T>(grad[ravel<kChannelsLast>(at, C, PH, PW)]) / box.count : T(0);
    }
    const index_t b = static_cast<index_t>(box.batch);
    T* plane = grad_input + (kChannelsLast ? b * H * W * C + c0 : (b * C + c0) * channel_step);
    // Atomics dominate this kernel: fold each axis' samples into per-cell weights
    // first, so a bin costs (rows x cols) atomics (typically 4-9) instead of 4 per
    // sample (16 with sampling_ratio 2).
    AxisSpan<T, kSpan> ys, xs;
    if (fold_axis_samples(box.y, o.row, H, ys) && fold_axis_samples(box.x, o.col, W, xs)) {
#pragma unroll
      for (int a = 0; a < kSpan; ++a) {
        if (a >= ys.length) break;
        const index_t row = static_cast<index_t>(ys.first + a) * sy;
#pragma unroll
        for (int bb = 0; bb < kSpan; ++bb) {
          if (bb >= xs.length) break;
          const T w = ys.w[a] * xs.w[bb];
          if (w == T(0)) continue;
          const index_t cell = row + static_cast<index_t>(xs.first + bb) * sx;
#pragma unroll
          for (int j = 0; j < G; ++j)
            if (j < n) gpuAtomicAdd(plane + j * channel_step + cell, g[j] * w);
        }
      }
      continue;
    }
    for_each_roi_align_tap<T, index_t>(box, o.row, o.col, H, W, sy, sx,
                                       [&](index_t a, index_t d, index_t e, index_t f, T wa, T wd, T we, T wf) {
#pragma unroll
                                         for (int j = 0; j < G; ++j) {
                                           if (j < n) {
                                             T* p = plane + j * channel_step;
                                             gpuAtomicAdd(p + a, g[j] * wa);
                                             gpuAtomicAdd(p + d, g[j] * wd);
                                             gpuAtomicAdd(p + e, g[j] * we);
                                             gpuAtomicAdd(p + f, g[j] * wf);
                                           }
                                         }
                                       });
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
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void roi_align_backward_gather_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                                 at::opmath_type<scalar_t>* __restrict__ grad_input, index_t total,
                                                 index_t K, index_t N, index_t C, index_t H, index_t W, index_t PH,
                                                 index_t PW, at::opmath_type<scalar_t> spatial_scale,
                                                 int64_t sampling_ratio, bool aligned) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const auto p = unravel<kChannelsLast>(static_cast<index_t>(i), C, H, W);
    T acc = T(0);
    for (index_t k = 0; k < K; ++k) {
      const auto box = make_roi_align_box<T>(rois + k * 5, spatial_scale, PH, PW, sampling_ratio, aligned, N);
      if (box.batch != p.outer) continue;
      if (!axis_may_touch(box.y, PH, p.row) || !axis_may_touch(box.x, PW, p.col)) continue;
      for (index_t ph = 0; ph < PH; ++ph) {
        const T wy = roi_align_cell_weight(box.y, ph, H, p.row);
        if (wy == T(0)) continue;
        for (index_t pw = 0; pw < PW; ++pw) {
          const T wx = roi_align_cell_weight(box.x, pw, W, p.col);
          if (wx == T(0)) continue;
          const Index4<index_t> g{k, p.c, ph, pw};
          acc += static_cast<T>(grad[ravel<kChannelsLast>(g, C, PH, PW)]) * wy * wx / box.count;
        }
      }
    }
    grad_input[i] = acc;
  }
}

// ---------------------------------------------------------------- RoIPool

template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void roi_pool_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                                        scalar_t* __restrict__ output, int64_t* __restrict__ argmax, index_t total,
                                        index_t N, index_t C, index_t H, index_t W, index_t PH, index_t PW,
                                        at::opmath_type<scalar_t> spatial_scale) {
  using T = at::opmath_type<scalar_t>;
  const index_t sx = kChannelsLast ? C : 1;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const auto o = unravel<kChannelsLast>(static_cast<index_t>(i), C, PH, PW);
    const auto box = make_roi_pool_box<T>(rois + o.outer * 5, spatial_scale, PH, PW, N);
    T best = T(0);
    index_t best_index = -1;
    if (box.batch >= 0) {
      const index_t b = static_cast<index_t>(box.batch);
      const scalar_t* plane = input + (kChannelsLast ? b * H * W * C + o.c : (b * C + o.c) * H * W);
      int64_t h0, h1, w0, w1;
      box.rows(o.row, H, h0, h1);
      box.cols(o.col, W, w0, w1);
      best_index = window_max<T, scalar_t, index_t>(plane, sx, W, static_cast<index_t>(h0), static_cast<index_t>(h1),
                                                    static_cast<index_t>(w0), static_cast<index_t>(w1), best);
    }
    output[i] = static_cast<scalar_t>(best);
    argmax[i] = best_index;
  }
}

template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void roi_pool_backward_atomic_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                                const int64_t* __restrict__ argmax,
                                                at::opmath_type<scalar_t>* __restrict__ grad_input, index_t total,
                                                index_t N, index_t C, index_t H, index_t W, index_t PH, index_t PW) {
  using T = at::opmath_type<scalar_t>;
  const index_t sx = kChannelsLast ? C : 1;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const int64_t a = argmax[i];
    if (a < 0 || a >= static_cast<int64_t>(H) * W) continue;
    const auto o = unravel<kChannelsLast>(static_cast<index_t>(i), C, PH, PW);
    const T b = static_cast<T>(rois[o.outer * 5]);
    if (!(b >= T(0) && b < static_cast<T>(N))) continue;
    const index_t n = static_cast<index_t>(b);
    T* plane = grad_input + (kChannelsLast ? n * H * W * C + o.c : (n * C + o.c) * H * W);
    gpuAtomicAdd(plane + static_cast<index_t>(a) * sx, static_cast<T>(grad[i]));
  }
}

template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void roi_pool_backward_gather_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                                const int64_t* __restrict__ argmax,
                                                at::opmath_type<scalar_t>* __restrict__ grad_input, index_t total,
                                                index_t K, index_t N, index_t C, index_t H, index_t W, index_t PH,
                                                index_t PW, at::opmath_type<scalar_t> spatial_scale) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const auto p = unravel<kChannelsLast>(static_cast<index_t>(i), C, H, W);
    const int64_t cell = static_cast<int64_t>(p.row) * W + p.col;
    T acc = T(0);
    for (index_t k = 0; k < K; ++k) {
      const auto box = make_roi_pool_box<T>(rois + k * 5, spatial_scale, PH, PW, N);
      if (box.batch != p.outer) continue;
      for (index_t ph = 0; ph < PH; ++ph) {
        int64_t h0, h1;
        box.rows(ph, H, h0, h1);
        if (p.row < h0 || p.row >= h1) continue;
        for (index_t pw = 0; pw < PW; ++pw) {
          int64_t w0, w1;
          box.cols(pw, W, w0, w1);
          if (p.col < w0 || p.col >= w1) continue;
          const index_t g = ravel<kChannelsLast>(Index4<index_t>{k, p.c, ph, pw}, C, PH, PW);
          if (argmax[g] == cell) acc += static_cast<T>(grad[g]);
        }
      }
    }
    grad_input[i] = acc;
  }
}

// Picks int32 indexing when every tensor involved is small enough, and the
// layout, as compile-time `index_t` and `kCL` for the lambda it runs.
bool fits_int32(std::initializer_list<int64_t> numels) {
  for (const int64_t n : numels)
    if (n >= std::numeric_limits<int32_t>::max()) return false;
  return true;
}

#define VISIONOPS_DISPATCH_INDEX_LAYOUT(small, channels_last, ...)  \
  [&] {                                                            \
    if (small) {                                                   \
      using index_t = int32_t;                                     \
      if (channels_last) {                                         \
        constexpr bool kCL = true;                                 \
        __VA_ARGS__();                                             \
      } else {                                                     \
        constexpr bool kCL = false;                                \
        __VA_ARGS__();                                             \
      }                                                            \
    } else {                                                       \
      using index_t = int64_t;                                     \
      if (channels_last) {                                         \
        constexpr bool kCL = true;                                 \
        __VA_ARGS__();                                             \
      } else {                                                     \
        constexpr bool kCL = false;                                \
        __VA_ARGS__();                                             \
      }                                                            \
    }                                                              \
  }()

// ---------------------------------------------------------------- op entry points

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  check_roi_forward_args("roi_align", input, rois, spatial_scale, pooled_height, pooled_width);
  const c10::cuda::CUDAGuard guard(input.device());
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  auto output = empty_pooled(input, rois.size(0), pooled_height, pooled_width, fmt);
  if (output.numel() == 0) return output;
  if (input.numel() == 0) return output.zero_();
  const auto in = input.contiguous(fmt);
  const auto r = rois.contiguous();
  const int64_t C = in.size(1), G = kGroup;
  const int64_t total = r.size(0) * ((C + G - 1) / G) * pooled_height * pooled_width;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    VISIONOPS_DISPATCH_INDEX_LAYOUT(fits_int32({in.numel(), output.numel(), r.numel()}), cl, [&] {
      roi_align_forward_kernel<scalar_t, index_t, kCL><<<blocks_for(total), kThreads, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), total,
          in.size(0), C, in.size(2), in.size(3), pooled_height, pooled_width, static_cast<T>(spatial_scale),
          sampling_ratio, aligned);
    });
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
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  auto grad_acc = zeroed_grad_accumulator(grad, batch_size, channels, height, width, fmt);
  if (grad.numel() != 0 && grad_acc.numel() != 0) {
    const auto g = grad.contiguous(fmt);
    const auto r = rois.contiguous();
    const int64_t G = kGroup;
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
      using T = at::opmath_type<scalar_t>;
      const T scale = static_cast<T>(spatial_scale);
      VISIONOPS_DISPATCH_INDEX_LAYOUT(fits_int32({g.numel(), grad_acc.numel(), r.numel()}), cl, [&] {
        if (deterministic) {
          const int64_t total = grad_acc.numel();
          roi_align_backward_gather_kernel<scalar_t, index_t, kCL><<<blocks_for(total), kThreads, 0, stream>>>(
              g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), grad_acc.mutable_data_ptr<T>(), total,
              r.size(0), batch_size, channels, height, width, pooled_height, pooled_width, scale, sampling_ratio,
              aligned);
        } else {
          const int64_t total = r.size(0) * ((channels + G - 1) / G) * pooled_height * pooled_width;
          roi_align_backward_atomic_kernel<scalar_t, index_t, kCL><<<blocks_for(total), kThreads, 0, stream>>>(
              g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), grad_acc.mutable_data_ptr<T>(), total,
              batch_size, channels, height, width, pooled_height, pooled_width, scale, sampling_ratio, aligned);
        }
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return as_grad_dtype(grad_acc, grad);
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                                         double spatial_scale, int64_t pooled_height,
                                                         int64_t pooled_width) {
  check_roi_forward_args("roi_pool", input, rois, spatial_scale, pooled_height, pooled_width);
  const c10::cuda::CUDAGuard guard(input.device());
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  auto output = empty_pooled(input, rois.size(0), pooled_height, pooled_width, fmt);
  auto argmax = empty_pooled(input, rois.size(0), pooled_height, pooled_width, fmt, at::kLong);
  if (output.numel() == 0) return {output, argmax};
  if (input.numel() == 0) return {output.zero_(), argmax.fill_(-1)};
  const auto in = input.contiguous(fmt);
  const auto r = rois.contiguous();
  const int64_t total = output.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    VISIONOPS_DISPATCH_INDEX_LAYOUT(fits_int32({in.numel(), output.numel(), r.numel()}), cl, [&] {
      roi_pool_forward_kernel<scalar_t, index_t, kCL><<<blocks_for(total), kThreads, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
          argmax.mutable_data_ptr<int64_t>(), total, in.size(0), in.size(1), in.size(2), in.size(3), pooled_height,
          pooled_width, static_cast<T>(spatial_scale));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, argmax};
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  check_roi_backward_args("_roi_pool_backward", grad, rois, pooled_height, pooled_width, batch_size, channels, height,
                          width);
  check_argmax_like_grad("_roi_pool_backward", argmax, grad);
  const c10::cuda::CUDAGuard guard(grad.device());
  const bool cl = use_channels_last(argmax);
  const auto fmt = memory_format_for(cl);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  auto grad_acc = zeroed_grad_accumulator(grad, batch_size, channels, height, width, fmt);
  if (grad.numel() != 0 && grad_acc.numel() != 0) {
    const auto g = grad.contiguous(fmt);
    const auto a = argmax.contiguous(fmt);
    const auto r = rois.contiguous();
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_cuda", [&] {
      using T = at::opmath_type<scalar_t>;
      VISIONOPS_DISPATCH_INDEX_LAYOUT(fits_int32({g.numel(), grad_acc.numel(), r.numel()}), cl, [&] {
        if (deterministic) {
          const int64_t total = grad_acc.numel();
          roi_pool_backward_gather_kernel<scalar_t, index_t, kCL><<<blocks_for(total), kThreads, 0, stream>>>(
              g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), a.const_data_ptr<int64_t>(),
              grad_acc.mutable_data_ptr<T>(), total, r.size(0), batch_size, channels, height, width, pooled_height,
              pooled_width, static_cast<T>(spatial_scale));
        } else {
          const int64_t total = g.numel();
          roi_pool_backward_atomic_kernel<scalar_t, index_t, kCL><<<blocks_for(total), kThreads, 0, stream>>>(
              g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), a.const_data_ptr<int64_t>(),
              grad_acc.mutable_data_ptr<T>(), total, batch_size, channels, height, width, pooled_height,
              pooled_width);
        }
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return as_grad_dtype(grad_acc, grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, CUDA, m) {
  m.impl("roi_align", &roi_align_forward_cuda);
  m.impl("_roi_align_backward", &roi_align_backward_cuda);
  m.impl("roi_pool", &roi_pool_forward_cuda);
  m.impl("_roi_pool_backward", &roi_pool_backward_cuda);
}

}  // namespace visionops
