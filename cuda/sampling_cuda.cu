// Grid sampling on CUDA: grid_sample, the fused affine / thin-plate-spline warps
// and the TPS grid, forward and backward. The per-point math is the HOST_DEVICE
// code of sampling.h that the CPU kernels use.
//
// One thread per output point (all channels in a loop), as the sampling
// coordinate is shared by the channels. The input gradient has two paths:
// atomics into an opmath buffer, and under torch.use_deterministic_algorithms(True)
// index_put_(accumulate=True) of all contributions, which torch sorts and sums
// deterministically (bit-identical from run to run); for more than 2^27
// contributions, one thread per (image, channel) plane visiting the output
// points in order (also deterministic, slow: it serialises each plane). TPS
// parameter gradients use fixed per-block partial sums reduced in a fixed order,
// so they are deterministic on both paths.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "visionops/check.h"
#include "visionops/sampling.h"
#include "visionops/sampling_ops.h"

namespace visionops {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20); }

#define VISIONOPS_GRID_STRIDE_LOOP(i, n)                                                    \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// ---------------------------------------------------------------- forward (any source)

template <typename scalar_t, typename Source>
__global__ void sample_forward_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output, Source src,
                                      int64_t total, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
                                      Strides4 s, Strides4 os, Interp interp, Padding padding, bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const int64_t n = i / (OH * OW), h = (i / OW) % OH, w = i % OW;
    T gx, gy;
    src(n, h, w, gx, gy);
    sample_point<T, scalar_t>(input + n * s.n, s, C, H, W, gx, gy, interp, padding, align_corners,
                              output + n * os.n + h * os.y + w * os.x, os.c);
  }
}

template <typename T, typename scalar_t>
struct MakeGrid {
  static GridSource<T, scalar_t> make(const std::vector<at::Tensor>& p, int64_t OH, int64_t OW, bool) {
    return {p[0].const_data_ptr<scalar_t>(), OH, OW};
  }
};
template <typename T, typename scalar_t>
struct MakeAffine {
  static AffineSource<T, scalar_t> make(const std::vector<at::Tensor>& p, int64_t OH, int64_t OW, bool align) {
    return {p[0].const_data_ptr<scalar_t>(), OH, OW, align};
  }
};
template <typename T, typename scalar_t>
struct MakeTPS {
  static TPSSource<T, scalar_t> make(const std::vector<at::Tensor>& p, int64_t OH, int64_t OW, bool align) {
    return {p[0].const_data_ptr<scalar_t>(), p[1].const_data_ptr<scalar_t>(), p[2].const_data_ptr<scalar_t>(),
            p[0].size(1), OH, OW, align};
  }
};

template <template <typename, typename> class MakeSource>
at::Tensor sample_forward(const at::Tensor& input, int64_t OH, int64_t OW, int64_t interpolation_mode,
                          int64_t padding_mode, bool align_corners, const char* name,
                          const std::vector<at::Tensor>& params) {
  const c10::cuda::CUDAGuard guard(input.device());
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  auto output = at::empty({input.size(0), input.size(1), OH, OW}, input.options(), fmt);
  if (output.numel() == 0) return output;
  if (input.size(2) == 0 || input.size(3) == 0) return output.zero_();
  const auto in = input.contiguous(fmt);
  std::vector<at::Tensor> p;
  for (const auto& t : params) p.push_back(t.contiguous());
  const int64_t total = output.size(0) * OH * OW;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "sampling_forward", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto src = MakeSource<T, scalar_t>::make(p, OH, OW, align_corners);
    sample_forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        in.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), src, total, in.size(1), in.size(2),
        in.size(3), OH, OW, strides_of(in), strides_of(output), static_cast<Interp>(interpolation_mode),
        static_cast<Padding>(padding_mode), align_corners);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor grid_sample_cuda(const at::Tensor& input, const at::Tensor& grid, int64_t interpolation_mode,
                            int64_t padding_mode, bool align_corners) {
  check_sampling_input("grid_sample", input, interpolation_mode, padding_mode);
  check_sampling_grid("grid_sample", input, grid);
  return sample_forward<MakeGrid>(input, grid.size(1), grid.size(2), interpolation_mode, padding_mode, align_corners,
                                  "grid_sample_cuda", {grid});
}

at::Tensor affine_grid_sample_cuda(const at::Tensor& input, const at::Tensor& theta, int64_t height, int64_t width,
                                   int64_t interpolation_mode, int64_t padding_mode, bool align_corners) {
  check_sampling_input("affine_grid_sample", input, interpolation_mode, padding_mode);
  check_sampling_theta("affine_grid_sample", input, theta);
  check_output_size("affine_grid_sample", height, width);
  return sample_forward<MakeAffine>(input, height, width, interpolation_mode, padding_mode, align_corners,
                                    "affine_grid_sample_cuda", {theta});
}

at::Tensor tps_grid_sample_cuda(const at::Tensor& input, const at::Tensor& kernel_weights,
                                const at::Tensor& affine_weights, const at::Tensor& target_points, int64_t height,
                                int64_t width, int64_t interpolation_mode, int64_t padding_mode, bool align_corners) {
  check_sampling_input("tps_grid_sample", input, interpolation_mode, padding_mode);
  check_tps_params("tps_grid_sample", input, kernel_weights, affine_weights, target_points);
  check_output_size("tps_grid_sample", height, width);
  return sample_forward<MakeTPS>(input, height, width, interpolation_mode, padding_mode, align_corners,
                                 "tps_grid_sample_cuda", {kernel_weights, affine_weights, target_points});
}

// ---------------------------------------------------------------- grid_sample backward

template <typename scalar_t>
__global__ void grid_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ input,
                                 const scalar_t* __restrict__ grid, scalar_t* __restrict__ grad_grid, int64_t total,
                                 int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, Strides4 s, Strides4 gs,
                                 Interp interp, Padding padding, bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const int64_t n = i / (OH * OW), h = (i / OW) % OH, w = i % OW;
    T ox, oy;
    point_grid_grad<T, scalar_t>(input + n * s.n, s, C, H, W, static_cast<T>(grid[2 * i]),
                                 static_cast<T>(grid[2 * i + 1]), interp, padding, align_corners,
                                 grad + n * gs.n + h * gs.y + w * gs.x, gs.c, ox, oy);
    grad_grid[2 * i] = static_cast<scalar_t>(ox);
    grad_grid[2 * i + 1] = static_cast<scalar_t>(oy);
  }
}

template <typename scalar_t>
__global__ void input_grad_atomic_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ grid,
                                         at::opmath_type<scalar_t>* __restrict__ acc, int64_t total, int64_t C,
                                         int64_t H, int64_t W, int64_t OH, int64_t OW, Strides4 s, Strides4 gs,
                                         Interp interp, Padding padding, bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const int64_t n = i / (OH * OW), h = (i / OW) % OH, w = i % OW;
    int64_t offset[4];
    T weight[4];
    const int taps = point_taps<T>(H, W, s.y, s.x, static_cast<T>(grid[2 * i]), static_cast<T>(grid[2 * i + 1]),
                                   interp, padding, align_corners, offset, weight);
    if (taps == 0) continue;
    const scalar_t* g = grad + n * gs.n + h * gs.y + w * gs.x;
    T* plane = acc + n * s.n;
    for (int64_t c = 0; c < C; ++c) {
      const T go = static_cast<T>(g[c * gs.c]);
      for (int t = 0; t < taps; ++t) gpuAtomicAdd(plane + c * s.c + offset[t], weight[t] * go);
    }
  }
}

// Both gradients in one pass (outside deterministic mode): the grid gradient of a
// point and the atomic scatter of its input gradient, one launch and one read of
// grid and grad instead of two (the H100 run measured the separate kernels at
// 0.75x of torch's fused backward on 8x3x256x256). s: input's strides, as: acc's.
template <typename scalar_t>
__global__ void fused_backward_atomic_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ input,
                                             const scalar_t* __restrict__ grid,
                                             at::opmath_type<scalar_t>* __restrict__ acc,
                                             scalar_t* __restrict__ grad_grid, int64_t total, int64_t C, int64_t H,
                                             int64_t W, int64_t OH, int64_t OW, Strides4 s, Strides4 as,
                                             Strides4 gs, Interp interp, Padding padding, bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    const int64_t n = i / (OH * OW), h = (i / OW) % OH, w = i % OW;
    const T gx = static_cast<T>(grid[2 * i]), gy = static_cast<T>(grid[2 * i + 1]);
    const scalar_t* g = grad + n * gs.n + h * gs.y + w * gs.x;
    T ox, oy;
    point_grid_grad<T, scalar_t>(input + n * s.n, s, C, H, W, gx, gy, interp, padding, align_corners, g, gs.c, ox,
                                 oy);
    grad_grid[2 * i] = static_cast<scalar_t>(ox);
    grad_grid[2 * i + 1] = static_cast<scalar_t>(oy);
    int64_t offset[4];
    T weight[4];
    const int taps = point_taps<T>(H, W, as.y, as.x, gx, gy, interp, padding, align_corners, offset, weight);
    if (taps == 0) continue;
    T* plane = acc + n * as.n;
    for (int64_t c = 0; c < C; ++c) {
      const T go = static_cast<T>(g[c * gs.c]);
      for (int t = 0; t < taps; ++t) gpuAtomicAdd(plane + c * as.c + offset[t], weight[t] * go);
    }
  }
}

// Deterministic: thread (n, c) owns one plane and visits the points in order.
template <typename scalar_t>
__global__ void input_grad_plane_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ grid,
                                        at::opmath_type<scalar_t>* __restrict__ acc, int64_t planes, int64_t C,
                                        int64_t H, int64_t W, int64_t OH, int64_t OW, Strides4 s, Strides4 gs,
                                        Interp interp, Padding padding, bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(nc, planes) {
    const int64_t n = nc / C, c = nc % C, P = OH * OW;
    T* plane = acc + n * s.n + c * s.c;
    const scalar_t* gp = grad + n * gs.n + c * gs.c;
    const scalar_t* grid_n = grid + n * P * 2;
    for (int64_t p = 0; p < P; ++p) {
      int64_t offset[4];
      T weight[4];
      const int taps = point_taps<T>(H, W, s.y, s.x, static_cast<T>(grid_n[2 * p]),
                                     static_cast<T>(grid_n[2 * p + 1]), interp, padding, align_corners, offset, weight);
      if (taps == 0) continue;
      const T go = static_cast<T>(gp[(p / OW) * gs.y + (p % OW) * gs.x]);
      for (int t = 0; t < taps; ++t) plane[offset[t]] += weight[t] * go;
    }
  }
}

// Deterministic input gradient, step 1: the taps of every output point as
// plane-local cells y * W + x (H * W, a dummy slot, for missing taps) and weights.
template <typename scalar_t>
__global__ void taps_kernel(const scalar_t* __restrict__ grid, int64_t* __restrict__ cell,
                            at::opmath_type<scalar_t>* __restrict__ weight, int64_t points, int64_t H, int64_t W,
                            Interp interp, Padding padding, bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(i, points) {
    int64_t offset[4];
    T w[4];
    const int taps = point_taps<T>(H, W, W, 1, static_cast<T>(grid[2 * i]), static_cast<T>(grid[2 * i + 1]), interp,
                                   padding, align_corners, offset, w);
    for (int t = 0; t < 4; ++t) {
      cell[4 * i + t] = t < taps ? offset[t] : H * W;
      weight[4 * i + t] = t < taps ? w[t] : T(0);
    }
  }
}

// Step 2: every contribution weight * grad goes to index (n * C + c) * (H * W + 1)
// + cell of a flat buffer through index_put_(accumulate=True), which torch
// implements deterministically on CUDA (sort by index, then ordered segment sums).
// Memory: N * C * H_out * W_out * 4 entries; beyond kMaxEntries the slower
// one-thread-per-plane kernel is used instead.
constexpr int64_t kMaxEntries = int64_t(1) << 27;

at::Tensor deterministic_input_grad(const at::Tensor& grad, const at::Tensor& grid, int64_t N, int64_t C, int64_t H,
                                    int64_t W, Interp interp, Padding padding, bool align_corners,
                                    at::ScalarType acc_type, at::MemoryFormat fmt) {
  const int64_t P = grid.size(1) * grid.size(2), HW1 = H * W + 1;
  auto cell = at::empty({N, P * 4}, grid.options().dtype(at::kLong));
  auto weight = at::empty({N, P * 4}, grid.options().dtype(acc_type));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grid.scalar_type(), "grid_sample_taps_cuda", [&] {
    taps_kernel<scalar_t><<<blocks_for(N * P), kThreads, 0, stream>>>(
        grid.const_data_ptr<scalar_t>(), cell.mutable_data_ptr<int64_t>(),
        weight.mutable_data_ptr<at::opmath_type<scalar_t>>(), N * P, H, W, interp, padding, align_corners);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto plane = (at::arange(N, cell.options()).view({N, 1}) * C + at::arange(C, cell.options()).view({1, C})) * HW1;
  const auto index = (plane.unsqueeze(2) + cell.unsqueeze(1)).reshape({-1});
  const auto values = (weight.view({N, 1, P, 4}) * grad.contiguous().to(acc_type).reshape({N, C, P, 1})).reshape({-1});
  auto acc = at::zeros({N * C * HW1}, weight.options());
  c10::List<std::optional<at::Tensor>> indices;
  indices.push_back(index);
  acc.index_put_(indices, values, /*accumulate=*/true);
  return acc.view({N, C, HW1}).narrow(2, 0, H * W).reshape({N, C, H, W}).contiguous(fmt);
}

std::tuple<at::Tensor, at::Tensor> grid_sample_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                                             const at::Tensor& grid, int64_t interpolation_mode,
                                                             int64_t padding_mode, bool align_corners,
                                                             std::array<bool, 2> output_mask) {
  const char* op = "_grid_sample_backward";
  check_sampling_input(op, input, interpolation_mode, padding_mode);
  check_sampling_grid(op, input, grid);
  VISIONOPS_CHECK(grad.dim() == 4 && grad.size(0) == input.size(0) && grad.size(1) == input.size(1) &&
                  grad.size(2) == grid.size(1) && grad.size(3) == grid.size(2),
              op, ": grad must have shape [", input.size(0), ", ", input.size(1), ", ", grid.size(1), ", ",
              grid.size(2), "], got ", grad.sizes());
  VISIONOPS_CHECK(grad.device() == input.device(), op, ": grad must be on the same device as input");
  const c10::cuda::CUDAGuard guard(input.device());
  const auto interp = static_cast<Interp>(interpolation_mode);
  const auto padding = static_cast<Padding>(padding_mode);
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  const auto in = input.contiguous(fmt);
  const auto g = grad.contiguous(fmt);
  const auto gr = grid.contiguous();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t OH = grid.size(1), OW = grid.size(2), points = N * OH * OW;
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor grad_input = at::empty({0}, input.options());
  at::Tensor grad_grid = at::empty({0}, grid.options());
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  if (output_mask[0] && output_mask[1] && !deterministic && in.numel() != 0 && g.numel() != 0) {
    const auto acc_type = at::toOpMathType(input.scalar_type());
    auto acc = at::empty(input.sizes(), input.options().dtype(acc_type), fmt).zero_();  // at::zeros drops fmt
    grad_grid = at::empty(grid.sizes(), grid.options());  // every point written
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "grid_sample_backward_cuda", [&] {
      using T = at::opmath_type<scalar_t>;
      fused_backward_atomic_kernel<scalar_t><<<blocks_for(points), kThreads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), gr.const_data_ptr<scalar_t>(),
          acc.mutable_data_ptr<T>(), grad_grid.mutable_data_ptr<scalar_t>(), points, C, H, W, OH, OW, strides_of(in),
          strides_of(acc), strides_of(g), interp, padding, align_corners);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    grad_input = acc.scalar_type() == input.scalar_type() ? acc : acc.to(input.scalar_type());
    return {grad_input, grad_grid};
  }
  if (output_mask[0]) {
    const auto acc_type = at::toOpMathType(input.scalar_type());
    auto acc = at::empty(input.sizes(), input.options().dtype(acc_type), fmt).zero_();
    if (acc.numel() != 0 && g.numel() != 0 && deterministic && N * C * OH * OW * 4 <= kMaxEntries) {
      acc = deterministic_input_grad(g, gr, N, C, H, W, interp, padding, align_corners, acc_type, fmt);
    } else if (acc.numel() != 0 && g.numel() != 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "grid_sample_backward_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        if (deterministic) {
          input_grad_plane_kernel<scalar_t><<<blocks_for(N * C), kThreads, 0, stream>>>(
              g.const_data_ptr<scalar_t>(), gr.const_data_ptr<scalar_t>(), acc.mutable_data_ptr<T>(), N * C, C, H, W,
              OH, OW, strides_of(acc), strides_of(g), interp, padding, align_corners);
        } else {
          input_grad_atomic_kernel<scalar_t><<<blocks_for(points), kThreads, 0, stream>>>(
              g.const_data_ptr<scalar_t>(), gr.const_data_ptr<scalar_t>(), acc.mutable_data_ptr<T>(), points, C, H,
              W, OH, OW, strides_of(acc), strides_of(g), interp, padding, align_corners);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    grad_input = acc.scalar_type() == input.scalar_type() ? acc : acc.to(input.scalar_type());
  }
  if (output_mask[1]) {
    // grid_grad_kernel writes every point; nothing to read from an empty input
    grad_grid = in.numel() != 0 ? at::empty(grid.sizes(), grid.options()) : at::zeros(grid.sizes(), grid.options());
    if (grad_grid.numel() != 0 && in.numel() != 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "grid_sample_backward_cuda", [&] {
        grid_grad_kernel<scalar_t><<<blocks_for(points), kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), gr.const_data_ptr<scalar_t>(),
            grad_grid.mutable_data_ptr<scalar_t>(), points, C, H, W, OH, OW, strides_of(in), strides_of(g), interp,
            padding, align_corners);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  }
  return {grad_input, grad_grid};
}

// ---------------------------------------------------------------- TPS grid and its gradients

template <typename scalar_t>
__global__ void tps_grid_kernel(TPSSource<at::opmath_type<scalar_t>, scalar_t> src, scalar_t* __restrict__ grid,
                                int64_t total, int64_t OH, int64_t OW) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(i, total) {
    T x, y;
    src(i / (OH * OW), (i / OW) % OH, i % OW, x, y);
    grid[2 * i] = static_cast<scalar_t>(x);
    grid[2 * i + 1] = static_cast<scalar_t>(y);
  }
}

at::Tensor tps_grid_cuda(const at::Tensor& kernel_weights, const at::Tensor& affine_weights,
                         const at::Tensor& target_points, int64_t height, int64_t width, bool align_corners) {
  check_tps_params("tps_grid", kernel_weights, kernel_weights, affine_weights, target_points);
  VISIONOPS_CHECK(at::isFloatingType(kernel_weights.scalar_type()), "tps_grid: kernel_weights must be floating-point");
  check_output_size("tps_grid", height, width);
  const c10::cuda::CUDAGuard guard(kernel_weights.device());
  const int64_t B = kernel_weights.size(0);
  auto grid = at::empty({B, height, width, 2}, kernel_weights.options());
  if (grid.numel() == 0) return grid;
  const auto kw = kernel_weights.contiguous(), aw = affine_weights.contiguous(), tp = target_points.contiguous();
  const int64_t total = B * height * width;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, kw.scalar_type(), "tps_grid_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const TPSSource<T, scalar_t> src{kw.const_data_ptr<scalar_t>(), aw.const_data_ptr<scalar_t>(),
                                     tp.const_data_ptr<scalar_t>(), kw.size(1), height, width, align_corners};
    tps_grid_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(src, grid.mutable_data_ptr<scalar_t>(),
                                                                          total, height, width);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grid;
}

constexpr int64_t kPointsPerBlock = 8192;

// Block (b * K + k, chunk) sums the 4 gradient terms of control point k of image b
// over a chunk of output points into partial[((b * K + k) * chunks + chunk) * 4 + j].
// The tree reduction in shared memory has a fixed shape: deterministic.
template <typename scalar_t>
__global__ void tps_grid_backward_kernel(const scalar_t* __restrict__ grad_grid, const scalar_t* __restrict__ kw,
                                         const scalar_t* __restrict__ tp, double* __restrict__ partial, int64_t K,
                                         int64_t OH, int64_t OW, int64_t chunks, bool align_corners) {
  // Per-point terms and sums in double, as the CPU kernel: these gradients sum
  // thousands of large, cancelling terms (float32 was 2.5x further from the float64
  // result than the CPU on the RARE sizes, H200 run).
  using T = double;
  __shared__ T shared[4][kThreads];
  const int64_t bk = blockIdx.x, b = bk / K, chunk = blockIdx.y, P = OH * OW;
  const T cx = static_cast<T>(tp[2 * bk]), cy = static_cast<T>(tp[2 * bk + 1]);
  const T wx = static_cast<T>(kw[2 * bk]), wy = static_cast<T>(kw[2 * bk + 1]);
  T acc[4] = {T(0), T(0), T(0), T(0)};
  const int64_t start = chunk * kPointsPerBlock;
  const int64_t stop = P < start + kPointsPerBlock ? P : start + kPointsPerBlock;
  const scalar_t* gb = grad_grid + b * P * 2;
  for (int64_t p = start + threadIdx.x; p < stop; p += blockDim.x) {
    const T xt = base_coordinate<T>(p % OW, OW, align_corners), yt = base_coordinate<T>(p / OW, OH, align_corners);
    const T dx = xt - cx, dy = yt - cy, s = dx * dx + dy * dy;
    const T gx = static_cast<T>(gb[2 * p]), gy = static_cast<T>(gb[2 * p + 1]);
    const T u = tps_radial(s);
    acc[0] += gx * u;
    acc[1] += gy * u;
    // d U / d c = dU/ds * 2 (c - p)
    const T f = (gx * wx + gy * wy) * tps_radial_ds(s) * T(2);
    acc[2] -= f * dx;
    acc[3] -= f * dy;
  }
  for (int j = 0; j < 4; ++j) shared[j][threadIdx.x] = acc[j];
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride)
      for (int j = 0; j < 4; ++j) shared[j][threadIdx.x] += shared[j][threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0)
    for (int j = 0; j < 4; ++j) partial[(bk * chunks + chunk) * 4 + j] = static_cast<double>(shared[j][0]);
}

std::tuple<at::Tensor, at::Tensor> tps_grid_backward_cuda(const at::Tensor& grad_grid,
                                                          const at::Tensor& kernel_weights,
                                                          const at::Tensor& target_points, bool align_corners) {
  const char* op = "_tps_grid_backward";
  VISIONOPS_CHECK(grad_grid.dim() == 4 && grad_grid.size(3) == 2 && grad_grid.size(0) == kernel_weights.size(0), op,
              ": grad_grid must be a tensor [B, H, W, 2], got ", grad_grid.sizes());
  VISIONOPS_CHECK(kernel_weights.dim() == 3 && kernel_weights.size(2) == 2 && target_points.sizes() == kernel_weights.sizes(),
              op, ": kernel_weights and target_points must be tensors [B, K, 2] of the same shape");
  VISIONOPS_CHECK(grad_grid.scalar_type() == kernel_weights.scalar_type(), op,
              ": grad_grid must have the dtype of kernel_weights");
  VISIONOPS_CHECK(grad_grid.device() == kernel_weights.device() && target_points.device() == kernel_weights.device(), op,
                  ": grad_grid, kernel_weights and target_points must be on one device");
  const c10::cuda::CUDAGuard guard(kernel_weights.device());
  const int64_t B = kernel_weights.size(0), K = kernel_weights.size(1);
  const int64_t OH = grad_grid.size(1), OW = grad_grid.size(2), P = OH * OW;
  if (B * K == 0 || P == 0) {
    return {at::zeros(kernel_weights.sizes(), kernel_weights.options()),
            at::zeros(target_points.sizes(), target_points.options())};
  }
  const int64_t chunks = (P + kPointsPerBlock - 1) / kPointsPerBlock;
  VISIONOPS_CHECK(B * K <= 2147483647 && chunks <= 65535, op, ": control points (", B * K, ") or output grid (", P,
                  " points) too large for one launch");
  auto partial = at::empty({B, K, chunks, 4}, kernel_weights.options().dtype(at::kDouble));
  const auto g = grad_grid.contiguous(), kw = kernel_weights.contiguous(), tp = target_points.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, kw.scalar_type(), "tps_grid_backward_cuda", [&] {
    const dim3 blocks(static_cast<unsigned>(B * K), static_cast<unsigned>(chunks));
    tps_grid_backward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), kw.const_data_ptr<scalar_t>(), tp.const_data_ptr<scalar_t>(),
        partial.mutable_data_ptr<double>(), K, OH, OW, chunks, align_corners);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto sums = partial.sum(2);  // [B, K, 4]; torch's reductions are deterministic
  return {sums.narrow(2, 0, 2).contiguous().to(kernel_weights.scalar_type()),
          sums.narrow(2, 2, 2).contiguous().to(kernel_weights.scalar_type())};
}

// The fused affine warp's backward on the GPU: the grid is materialised (one
// small GEMM per image) and given to grid_sample's backward kernels, and its
// gradient is reduced to theta by a second GEMM. The CPU kernel is fused
// instead; a fused CUDA version waits for a GPU to measure it on.
std::tuple<at::Tensor, at::Tensor> affine_grid_sample_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                                                    const at::Tensor& theta, int64_t interpolation_mode,
                                                                    int64_t padding_mode, bool align_corners,
                                                                    std::array<bool, 2> output_mask) {
  const char* op = "_affine_grid_sample_backward";
  check_sampling_input(op, input, interpolation_mode, padding_mode);
  check_sampling_theta(op, input, theta);
  check_sampling_output_grad(op, grad, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t N = grad.size(0), OH = grad.size(2), OW = grad.size(3);
  // base and grid in float for 16-bit types: the fused forward computes its coordinates in float too
  const auto acc = at::toOpMathType(theta.scalar_type());
  const auto base = sampling_base_grid(OH, OW, align_corners, /*ones_first=*/false, theta.options().dtype(acc));
  const auto grid = at::matmul(base, theta.transpose(1, 2).to(acc)).to(theta.scalar_type()).view({N, OH, OW, 2});
  auto [grad_input, grad_grid] =
      grid_sample_backward_cuda(grad, input, grid, interpolation_mode, padding_mode, align_corners, output_mask);
  at::Tensor grad_theta = at::empty({0}, theta.options());
  if (output_mask[1]) {
    // d loss / d theta[n, i, j] = sum over output points p of grad_grid[n, p, i] * base[p, j]
    grad_theta = at::matmul(grad_grid.reshape({N, OH * OW, 2}).transpose(1, 2).to(acc), base).to(theta.scalar_type());
  }
  return {grad_input, grad_theta};
}

// The fused TPS warp's backward on the GPU: the grid is rebuilt with the
// tps_grid kernel, grid_sample's backward kernels give the input and grid
// gradients, and the grid gradient goes to the parameters (tps_grid's backward
// kernel + one GEMM for the affine part). The CPU kernel is fused instead.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tps_grid_sample_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& kernel_weights,
    const at::Tensor& affine_weights, const at::Tensor& target_points, int64_t interpolation_mode,
    int64_t padding_mode, bool align_corners, std::array<bool, 2> output_mask) {
  const char* op = "_tps_grid_sample_backward";
  check_sampling_input(op, input, interpolation_mode, padding_mode);
  check_tps_params(op, input, kernel_weights, affine_weights, target_points);
  check_sampling_output_grad(op, grad, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto grid = tps_grid_cuda(kernel_weights, affine_weights, target_points, grad.size(2), grad.size(3),
                                  align_corners);
  auto [grad_input, grad_grid] =
      grid_sample_backward_cuda(grad, input, grid, interpolation_mode, padding_mode, align_corners, output_mask);
  if (!output_mask[1]) {
    const auto none = [&] { return at::empty({0}, kernel_weights.options()); };  // three distinct tensors
    return {grad_input, none(), none(), none()};
  }
  auto [grad_kernel, grad_points] = tps_grid_backward_cuda(grad_grid, kernel_weights, target_points, align_corners);
  auto grad_affine = sampling_tps_affine_grad(grad_grid, align_corners, affine_weights.scalar_type());
  return {grad_input, grad_kernel, grad_affine, grad_points};
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, CUDA, m) {
  m.impl("grid_sample", &grid_sample_cuda);
  m.impl("_grid_sample_backward", &grid_sample_backward_cuda);
  m.impl("affine_grid_sample", &affine_grid_sample_cuda);
  m.impl("_affine_grid_sample_backward", &affine_grid_sample_backward_cuda);
  m.impl("tps_grid", &tps_grid_cuda);
  m.impl("_tps_grid_backward", &tps_grid_backward_cuda);
  m.impl("tps_grid_sample", &tps_grid_sample_cuda);
  m.impl("_tps_grid_sample_backward", &tps_grid_sample_backward_cuda);
}

}  // namespace visionops
