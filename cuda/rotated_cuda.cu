// Rotated boxes on CUDA: box_iou_rotated, roi_align_rotated and
// roi_pool_rotated (forward and backward).
//
// Every kernel uses the HOST_DEVICE geometry of visionops/rotated.h, exactly as
// rotated_cpu.cpp does: same sample positions, same lattice search, same visit
// order. box_iou_rotated is one thread per output pair over an int64
// grid-stride loop (no N x M cap). The pooling ops take one thread per output
// element; backward has an atomic path and, under
// torch.use_deterministic_algorithms(True), a gather path where each thread
// owns one input cell and sums the RoIs' contributions in RoI order.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "visionops/check.h"
#include "visionops/roi.h"
#include "visionops/roi_ops.h"
#include "visionops/rotated.h"
#include "visionops/rotated_ops.h"

namespace visionops {
namespace {

constexpr int kThreads = 256;

int64_t grid_for(int64_t n) {
  // grid-stride loops cover anything beyond this
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20);
}

#define VISIONOPS_ROTATED_LOOP(i, n)                                                        \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// (outer, channel, row, col) of linear index i of a [outer, C, rows, cols]
// tensor stored contiguously in NCHW or channels_last order.
struct Pos4 {
  int64_t outer, c, row, col;
};

template <bool kChannelsLast>
__device__ __forceinline__ Pos4 split_index(int64_t i, int64_t C, int64_t rows, int64_t cols) {
  Pos4 r;
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
__device__ __forceinline__ int64_t join_index(Pos4 r, int64_t C, int64_t rows, int64_t cols) {
  return kChannelsLast ? ((r.outer * rows + r.row) * cols + r.col) * C + r.c
                       : ((r.outer * C + r.c) * rows + r.row) * cols + r.col;
}

// offset of (image n, channel c) in a [N, C, H, W] tensor; cells are then `stride` apart
template <bool kChannelsLast>
__device__ __forceinline__ int64_t plane_offset(int64_t n, int64_t c, int64_t C, int64_t H, int64_t W) {
  return kChannelsLast ? n * H * W * C + c : (n * C + c) * H * W;
}

// ---------------------------------------------------------------- box_iou_rotated

template <typename scalar_t>
__global__ void box_iou_rotated_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                       scalar_t* __restrict__ out, int64_t total, int64_t M, bool aligned, int mode) {
  VISIONOPS_ROTATED_LOOP(p, total) {
    const int64_t i = aligned ? p : p / M, j = aligned ? p : p % M;
    out[p] = rotated_iou(a + i * 5, b + j * 5, mode);
  }
}

// ---------------------------------------------------------------- roi_align_rotated

template <typename scalar_t, bool kChannelsLast>
__global__ void roi_align_rotated_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                                                 scalar_t* __restrict__ output, int64_t total, int64_t N, int64_t C,
                                                 int64_t H, int64_t W, int64_t PH, int64_t PW,
                                                 at::opmath_type<scalar_t> spatial_scale, int64_t sampling_ratio,
                                                 bool aligned) {
  using T = at::opmath_type<scalar_t>;
  const int64_t sx = kChannelsLast ? C : 1;
  VISIONOPS_ROTATED_LOOP(idx, total) {
    const Pos4 o = split_index<kChannelsLast>(idx, C, PH, PW);
    const auto roi =
        make_rotated_align_roi<T>(rois + o.outer * 6, spatial_scale, PH, PW, sampling_ratio, aligned, N);
    T acc = T(0);
    if (roi.batch >= 0) {
      const scalar_t* plane = input + plane_offset<kChannelsLast>(roi.batch, o.c, C, H, W);
      const RotatedLattice l = roi.lattice(o.row, o.col);
      int64_t j0, j1;
      l.rows(-1.0, static_cast<double>(W), -1.0, static_cast<double>(H), j0, j1);
      for (int64_t j = j0; j < j1; ++j) {
        const T vv = roi.v(o.row, j);
        int64_t i0, i1;
        l.cols(static_cast<double>(vv), -1.0, static_cast<double>(W), -1.0, static_cast<double>(H), i0, i1);
        for (int64_t i = i0; i < i1; ++i) {
          const T uu = roi.u(o.col, i);
          int64_t yl, yh, xl, xh;
          T wyl, wyh, wxl, wxh;
          if (!bilinear_axis(roi.y(uu, vv), H, yl, yh, wyl, wyh)) continue;
          if (!bilinear_axis(roi.x(uu, vv), W, xl, xh, wxl, wxh)) continue;
          acc += wyl * wxl * static_cast<T>(plane[(yl * W + xl) * sx]) +
                 wyl * wxh * static_cast<T>(plane[(yl * W + xh) * sx]) +
                 wyh * wxl * static_cast<T>(plane[(yh * W + xl) * sx]) +
                 wyh * wxh * static_cast<T>(plane[(yh * W + xh) * sx]);
        }
      }
      acc /= roi.count;
    }
    output[idx] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void roi_align_rotated_backward_atomic_kernel(const scalar_t* __restrict__ grad,
                                                         const scalar_t* __restrict__ rois,
                                                         at::opmath_type<scalar_t>* __restrict__ grad_input,
                                                         int64_t total, int64_t N, int64_t C, int64_t H, int64_t W,
                                                         int64_t PH, int64_t PW,
                                                         at::opmath_type<scalar_t> spatial_scale,
                                                         int64_t sampling_ratio, bool aligned) {
  using T = at::opmath_type<scalar_t>;
  const int64_t sx = kChannelsLast ? C : 1;
  VISIONOPS_ROTATED_LOOP(idx, total) {
    const Pos4 o = split_index<kChannelsLast>(idx, C, PH, PW);
    const auto roi =
        make_rotated_align_roi<T>(rois + o.outer * 6, spatial_scale, PH, PW, sampling_ratio, aligned, N);
    if (roi.batch < 0) continue;
    const T g = static_cast<T>(grad[idx]) / roi.count;
    T* plane = grad_input + plane_offset<kChannelsLast>(roi.batch, o.c, C, H, W);
    const RotatedLattice l = roi.lattice(o.row, o.col);
    int64_t j0, j1;
    l.rows(-1.0, static_cast<double>(W), -1.0, static_cast<double>(H), j0, j1);
    for (int64_t j = j0; j < j1; ++j) {
      const T vv = roi.v(o.row, j);
      int64_t i0, i1;
      l.cols(static_cast<double>(vv), -1.0, static_cast<double>(W), -1.0, static_cast<double>(H), i0, i1);
      for (int64_t i = i0; i < i1; ++i) {
        const T uu = roi.u(o.col, i);
        int64_t yl, yh, xl, xh;
        T wyl, wyh, wxl, wxh;
        if (!bilinear_axis(roi.y(uu, vv), H, yl, yh, wyl, wyh)) continue;
        if (!bilinear_axis(roi.x(uu, vv), W, xl, xh, wxl, wxh)) continue;
        gpuAtomicAdd(plane + (yl * W + xl) * sx, g * wyl * wxl);
        gpuAtomicAdd(plane + (yl * W + xh) * sx, g * wyl * wxh);
        gpuAtomicAdd(plane + (yh * W + xl) * sx, g * wyh * wxl);
        gpuAtomicAdd(plane + (yh * W + xh) * sx, g * wyh * wxh);
      }
    }
  }
}

// Deterministic backward: one thread per grad_input cell; RoIs, bins and
// samples visited in a fixed order. Only the samples within one cell of this
// cell are enumerated (lattice search on the 2 x 2 cell neighbourhood).
template <typename scalar_t, bool kChannelsLast>
__global__ void roi_align_rotated_backward_gather_kernel(const scalar_t* __restrict__ grad,
                                                         const scalar_t* __restrict__ rois,
                                                         at::opmath_type<scalar_t>* __restrict__ grad_input,
                                                         int64_t total, int64_t K, int64_t N, int64_t C, int64_t H,
                                                         int64_t W, int64_t PH, int64_t PW,
                                                         at::opmath_type<scalar_t> spatial_scale,
                                                         int64_t sampling_ratio, bool aligned) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_ROTATED_LOOP(idx, total) {
    const Pos4 p = split_index<kChannelsLast>(idx, C, H, W);
    const double px = static_cast<double>(p.col), py = static_cast<double>(p.row);
    T acc = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const auto roi = make_rotated_align_roi<T>(rois + k * 6, spatial_scale, PH, PW, sampling_ratio, aligned, N);
      if (roi.batch != p.outer) continue;
      const double dx = px - static_cast<double>(roi.cx), dy = py - static_cast<double>(roi.cy);
      const double reach = roi.radius();
      if (dx * dx + dy * dy > reach * reach) continue;
      const T inv = T(1) / roi.count;
      for (int64_t ph = 0; ph < PH; ++ph) {
        for (int64_t pw = 0; pw < PW; ++pw) {
          RotatedLattice l = roi.lattice(ph, pw);
          l.allow_whole = false;
          int64_t j0, j1;
          l.rows(px - 1.0, px + 1.0, py - 1.0, py + 1.0, j0, j1);
          T w = T(0);
          for (int64_t j = j0; j < j1; ++j) {
            const T vv = roi.v(ph, j);
            int64_t i0, i1;
            l.cols(static_cast<double>(vv), px - 1.0, px + 1.0, py - 1.0, py + 1.0, i0, i1);
            for (int64_t i = i0; i < i1; ++i) {
              const T uu = roi.u(pw, i);
              int64_t yl, yh, xl, xh;
              T wyl, wyh, wxl, wxh;
              if (!bilinear_axis(roi.y(uu, vv), H, yl, yh, wyl, wyh)) continue;
              if (!bilinear_axis(roi.x(uu, vv), W, xl, xh, wxl, wxh)) continue;
              const T wy = (yl == p.row ? wyl : T(0)) + (yh == p.row ? wyh : T(0));
              const T wx = (xl == p.col ? wxl : T(0)) + (xh == p.col ? wxh : T(0));
              w += wy * wx;
            }
          }
          if (w != T(0)) {
            const int64_t g = join_index<kChannelsLast>(Pos4{k, p.c, ph, pw}, C, PH, PW);
            acc += static_cast<T>(grad[g]) * inv * w;
          }
        }
      }
    }
    grad_input[idx] = acc;
  }
}

// ---------------------------------------------------------------- roi_pool_rotated

template <typename scalar_t, bool kChannelsLast>
__global__ void roi_pool_rotated_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                                                scalar_t* __restrict__ output, int64_t* __restrict__ argmax,
                                                int64_t total, int64_t N, int64_t C, int64_t H, int64_t W,
                                                int64_t PH, int64_t PW, at::opmath_type<scalar_t> spatial_scale) {
  using T = at::opmath_type<scalar_t>;
  const int64_t sx = kChannelsLast ? C : 1;
  const double x0 = -0.5, x1 = static_cast<double>(W) - 0.5, y0 = -0.5, y1 = static_cast<double>(H) - 0.5;
  VISIONOPS_ROTATED_LOOP(idx, total) {
    const Pos4 o = split_index<kChannelsLast>(idx, C, PH, PW);
    const auto roi = make_rotated_pool_roi<T>(rois + o.outer * 6, spatial_scale, PH, PW, N);
    T best = T(0);
    int64_t best_cell = -1;
    if (roi.batch >= 0) {
      const scalar_t* plane = input + plane_offset<kChannelsLast>(roi.batch, o.c, C, H, W);
      const RotatedLattice l = roi.lattice(o.row, o.col);
      int64_t j0, j1;
      l.rows(x0, x1, y0, y1, j0, j1);
      bool nan = false;
      for (int64_t j = j0; j < j1 && !nan; ++j) {
        const T vv = roi.v(o.row, j);
        int64_t i0, i1;
        l.cols(static_cast<double>(vv), x0, x1, y0, y1, i0, i1);
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t cell = roi.cell(roi.u(o.col, i), vv, H, W);
          if (cell < 0) continue;
          const T v = static_cast<T>(plane[cell * sx]);
          if (best_cell < 0 || v > best || !(v == v)) {
            best = v;
            best_cell = cell;
          }
          if (!(best == best)) {  // NaN propagates (as torch.max)
            nan = true;
            break;
          }
        }
      }
    }
    output[idx] = static_cast<scalar_t>(best);
    argmax[idx] = best_cell;
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void roi_pool_rotated_backward_atomic_kernel(const scalar_t* __restrict__ grad,
                                                        const scalar_t* __restrict__ rois,
                                                        const int64_t* __restrict__ argmax,
                                                        at::opmath_type<scalar_t>* __restrict__ grad_input,
                                                        int64_t total, int64_t N, int64_t C, int64_t H, int64_t W,
                                                        int64_t PH, int64_t PW) {
  using T = at::opmath_type<scalar_t>;
  const int64_t sx = kChannelsLast ? C : 1;
  VISIONOPS_ROTATED_LOOP(idx, total) {
    const int64_t a = argmax[idx];
    if (a < 0 || a >= H * W) continue;
    const Pos4 o = split_index<kChannelsLast>(idx, C, PH, PW);
    const T b = static_cast<T>(rois[o.outer * 6]);
    if (!(b >= T(0) && b < static_cast<T>(N))) continue;
    T* plane = grad_input + plane_offset<kChannelsLast>(static_cast<int64_t>(b), o.c, C, H, W);
    gpuAtomicAdd(plane + a * sx, static_cast<T>(grad[idx]));
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void roi_pool_rotated_backward_gather_kernel(const scalar_t* __restrict__ grad,
                                                        const scalar_t* __restrict__ rois,
                                                        const int64_t* __restrict__ argmax,
                                                        at::opmath_type<scalar_t>* __restrict__ grad_input,
                                                        int64_t total, int64_t K, int64_t N, int64_t C, int64_t H,
                                                        int64_t W, int64_t PH, int64_t PW,
                                                        at::opmath_type<scalar_t> spatial_scale) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_ROTATED_LOOP(idx, total) {
    const Pos4 p = split_index<kChannelsLast>(idx, C, H, W);
    const int64_t cell = p.row * W + p.col;
    T acc = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const auto roi = make_rotated_pool_roi<T>(rois + k * 6, spatial_scale, PH, PW, N);
      if (roi.batch != p.outer) continue;
      // a RoI's argmax cells lie within its reach (quick rejection of far RoIs)
      const double dx = static_cast<double>(p.col) - static_cast<double>(roi.cx);
      const double dy = static_cast<double>(p.row) - static_cast<double>(roi.cy);
      const double reach = roi.radius();
      if (dx * dx + dy * dy > reach * reach) continue;
      for (int64_t bin = 0; bin < PH * PW; ++bin) {
        const int64_t g = join_index<kChannelsLast>(Pos4{k, p.c, bin / PW, bin % PW}, C, PH, PW);
        if (argmax[g] == cell) acc += static_cast<T>(grad[g]);
      }
    }
    grad_input[idx] = acc;
  }
}

// ---------------------------------------------------------------- op entry points

at::Tensor box_iou_rotated_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, int64_t mode, bool aligned) {
  check_box_iou_rotated_args(boxes1, boxes2, mode, aligned);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  auto out = aligned ? at::empty({boxes1.size(0)}, boxes1.options())
                     : at::empty({boxes1.size(0), boxes2.size(0)}, boxes1.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const auto a = boxes1.contiguous();
  const auto b = boxes2.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "box_iou_rotated_cuda", [&] {
    box_iou_rotated_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(
        a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), total,
        b.size(0), aligned, static_cast<int>(mode));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor roi_align_rotated_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                          int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                          bool aligned) {
  check_rotated_roi_forward_args("roi_align_rotated", input, rois, spatial_scale, pooled_height, pooled_width);
  const c10::cuda::CUDAGuard guard(input.device());
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  auto output = empty_pooled(input, rois.size(0), pooled_height, pooled_width, fmt);
  if (output.numel() == 0) return output;
  if (input.numel() == 0) return output.zero_();
  const auto in = input.contiguous(fmt);
  const auto r = rois.contiguous();
  const int64_t total = output.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_rotated_forward_cuda",
                                  [&] {
                                    using T = at::opmath_type<scalar_t>;
                                    auto kernel = cl ? roi_align_rotated_forward_kernel<scalar_t, true>
                                                     : roi_align_rotated_forward_kernel<scalar_t, false>;
                                    kernel<<<grid_for(total), kThreads, 0, stream>>>(
                                        in.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
                                        output.mutable_data_ptr<scalar_t>(), total, in.size(0), in.size(1),
                                        in.size(2), in.size(3), pooled_height, pooled_width,
                                        static_cast<T>(spatial_scale), sampling_ratio, aligned);
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
  return output;
}

at::Tensor roi_align_rotated_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                           int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                           int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                           bool aligned) {
  check_rotated_roi_backward_args("_roi_align_rotated_backward", grad, rois, pooled_height, pooled_width, batch_size,
                                  channels, height, width);
  const c10::cuda::CUDAGuard guard(grad.device());
  const bool cl = use_channels_last(grad);
  const auto fmt = memory_format_for(cl);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  auto grad_acc = zeroed_grad_accumulator(grad, batch_size, channels, height, width, fmt);
  if (grad.numel() != 0 && grad_acc.numel() != 0) {
    const auto g = grad.contiguous(fmt);
    const auto r = rois.contiguous();
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_rotated_backward_cuda", [&] {
          using T = at::opmath_type<scalar_t>;
          const T scale = static_cast<T>(spatial_scale);
          if (deterministic) {
            const int64_t total = grad_acc.numel();
            auto kernel = cl ? roi_align_rotated_backward_gather_kernel<scalar_t, true>
                             : roi_align_rotated_backward_gather_kernel<scalar_t, false>;
            kernel<<<grid_for(total), kThreads, 0, stream>>>(
                g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), grad_acc.mutable_data_ptr<T>(), total,
                r.size(0), batch_size, channels, height, width, pooled_height, pooled_width, scale, sampling_ratio,
                aligned);
          } else {
            const int64_t total = g.numel();
            auto kernel = cl ? roi_align_rotated_backward_atomic_kernel<scalar_t, true>
                             : roi_align_rotated_backward_atomic_kernel<scalar_t, false>;
            kernel<<<grid_for(total), kThreads, 0, stream>>>(
                g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), grad_acc.mutable_data_ptr<T>(), total,
                batch_size, channels, height, width, pooled_height, pooled_width, scale, sampling_ratio, aligned);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return as_grad_dtype(grad_acc, grad);
}

std::tuple<at::Tensor, at::Tensor> roi_pool_rotated_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                                                 double spatial_scale, int64_t pooled_height,
                                                                 int64_t pooled_width) {
  check_rotated_roi_forward_args("roi_pool_rotated", input, rois, spatial_scale, pooled_height, pooled_width);
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_rotated_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    auto kernel = cl ? roi_pool_rotated_forward_kernel<scalar_t, true> : roi_pool_rotated_forward_kernel<scalar_t, false>;
    kernel<<<grid_for(total), kThreads, 0, stream>>>(
        in.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
        argmax.mutable_data_ptr<int64_t>(), total, in.size(0), in.size(1), in.size(2), in.size(3), pooled_height,
        pooled_width, static_cast<T>(spatial_scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, argmax};
}

at::Tensor roi_pool_rotated_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                          double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                          int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  check_rotated_roi_backward_args("_roi_pool_rotated_backward", grad, rois, pooled_height, pooled_width, batch_size,
                                  channels, height, width);
  check_argmax_like_grad("_roi_pool_rotated_backward", argmax, grad);
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
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_rotated_backward_cuda", [&] {
          using T = at::opmath_type<scalar_t>;
          if (deterministic) {
            const int64_t total = grad_acc.numel();
            auto kernel = cl ? roi_pool_rotated_backward_gather_kernel<scalar_t, true>
                             : roi_pool_rotated_backward_gather_kernel<scalar_t, false>;
            kernel<<<grid_for(total), kThreads, 0, stream>>>(
                g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), a.const_data_ptr<int64_t>(),
                grad_acc.mutable_data_ptr<T>(), total, r.size(0), batch_size, channels, height, width,
                pooled_height, pooled_width, static_cast<T>(spatial_scale));
          } else {
            const int64_t total = g.numel();
            auto kernel = cl ? roi_pool_rotated_backward_atomic_kernel<scalar_t, true>
                             : roi_pool_rotated_backward_atomic_kernel<scalar_t, false>;
            kernel<<<grid_for(total), kThreads, 0, stream>>>(
                g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), a.const_data_ptr<int64_t>(),
                grad_acc.mutable_data_ptr<T>(), total, batch_size, channels, height, width, pooled_height,
                pooled_width);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return as_grad_dtype(grad_acc, grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, CUDA, m) {
  m.impl("box_iou_rotated", &box_iou_rotated_cuda);
  m.impl("roi_align_rotated", &roi_align_rotated_forward_cuda);
  m.impl("_roi_align_rotated_backward", &roi_align_rotated_backward_cuda);
  m.impl("roi_pool_rotated", &roi_pool_rotated_forward_cuda);
  m.impl("_roi_pool_rotated_backward", &roi_pool_rotated_backward_cuda);
}

}  // namespace visionops
