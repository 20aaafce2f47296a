// Grid sampling on the CPU: grid_sample, the fused affine and thin-plate-spline
// warps (the sampling coordinate is computed per output point, no grid is
// materialised) and the TPS grid with its parameter gradients.
//
// Every backward pass is deterministic whatever the thread count: grid
// gradients are per output point, input gradients are accumulated by tasks
// that each own whole (image, channel) planes and visit the output points in
// order, and TPS parameter gradients are per (image, control point) sums.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "visionops/check.h"
#include "visionops/cpu_isa.h"
#include "visionops/sampling.h"
#include "visionops/sampling_ops.h"

namespace visionops {

// ---------------------------------------------------------------- argument checks

void check_sampling_input(const char* op, const at::Tensor& input, int64_t interpolation_mode, int64_t padding_mode) {
  VISIONOPS_CHECK(input.dim() == 4, op, ": input must be a 4-D tensor [N, C, H, W], got a ", input.dim(), "-D tensor");
  VISIONOPS_CHECK(at::isFloatingType(input.scalar_type()), op, ": input must be a floating-point tensor, got ",
              input.scalar_type());
  VISIONOPS_CHECK(interpolation_mode == 0 || interpolation_mode == 1, op,
              ": interpolation_mode must be 0 (bilinear) or 1 (nearest), got ", interpolation_mode);
  VISIONOPS_CHECK(padding_mode >= 0 && padding_mode <= 2, op,
              ": padding_mode must be 0 (zeros), 1 (border) or 2 (reflection), got ", padding_mode);
}

void check_sampling_grid(const char* op, const at::Tensor& input, const at::Tensor& grid) {
  VISIONOPS_CHECK(grid.dim() == 4 && grid.size(3) == 2, op, ": grid must be a tensor [N, H_out, W_out, 2], got shape ",
              grid.sizes());
  VISIONOPS_CHECK(grid.size(0) == input.size(0), op, ": grid and input must have the same batch size, got ",
              grid.size(0), " and ", input.size(0));
  VISIONOPS_CHECK(grid.device() == input.device(), op, ": grid must be on the same device as input (", input.device(),
              "), got ", grid.device());
  VISIONOPS_CHECK(grid.scalar_type() == input.scalar_type(), op, ": grid must have the same dtype as input (",
              input.scalar_type(), "), got ", grid.scalar_type());
}

// The normalised output-pixel coordinates along one axis, as F.affine_grid:
// linspace(-1, 1), shrunk to the pixel centres unless align_corners; 0 for size 1.
at::Tensor sampling_base_coordinates(int64_t size, bool align_corners, const at::TensorOptions& options) {
  if (size <= 1) return at::zeros({size}, options);
  auto v = at::linspace(-1, 1, size, options);
  return align_corners ? v : v * (static_cast<double>(size - 1) / static_cast<double>(size));
}

at::Tensor sampling_base_grid(int64_t height, int64_t width, bool align_corners, bool ones_first,
                              const at::TensorOptions& options) {
  auto xs = sampling_base_coordinates(width, align_corners, options).view({1, width}).expand({height, width});
  auto ys = sampling_base_coordinates(height, align_corners, options).view({height, 1}).expand({height, width});
  auto ones = at::ones({height, width}, options);
  auto columns = ones_first ? std::vector<at::Tensor>{ones, xs, ys} : std::vector<at::Tensor>{xs, ys, ones};
  return at::stack(columns, -1).reshape({height * width, 3});
}

at::Tensor sampling_tps_affine_grad(const at::Tensor& grad_grid, bool align_corners, at::ScalarType dtype) {
  // symbolic sizes: tps_grid's autograd runs this on fake tensors when torch.compile traces the backward
  const auto B = grad_grid.sym_size(0), H = grad_grid.sym_size(1), W = grad_grid.sym_size(2);
  // a sum over every output point: 16-bit types are summed in float
  const auto acc = at::toOpMathType(dtype);
  const auto base = sampling_base_grid(H.guard_int(__FILE__, __LINE__), W.guard_int(__FILE__, __LINE__), align_corners,
                                       /*ones_first=*/true, grad_grid.options().dtype(acc));
  return at::matmul(base.t(), grad_grid.reshape_symint({B, H * W, 2}).to(acc)).to(dtype);
}

void check_sampling_output_grad(const char* op, const at::Tensor& grad, const at::Tensor& input) {
  VISIONOPS_CHECK(grad.dim() == 4 && grad.size(0) == input.size(0) && grad.size(1) == input.size(1), op,
                  ": grad must have shape [", input.size(0), ", ", input.size(1), ", H_out, W_out], got ", grad.sizes());
  VISIONOPS_CHECK(grad.device() == input.device(), op, ": grad must be on the same device as input (", input.device(),
                  "), got ", grad.device());
  VISIONOPS_CHECK(grad.scalar_type() == input.scalar_type(), op, ": grad must have the same dtype as input (",
                  input.scalar_type(), "), got ", grad.scalar_type());
}

void check_sampling_theta(const char* op, const at::Tensor& input, const at::Tensor& theta) {
  VISIONOPS_CHECK(theta.dim() == 3 && theta.size(1) == 2 && theta.size(2) == 3, op,
              ": theta must be a tensor [N, 2, 3], got shape ", theta.sizes());
  VISIONOPS_CHECK(theta.size(0) == input.size(0), op, ": theta and input must have the same batch size, got ",
              theta.size(0), " and ", input.size(0));
  VISIONOPS_CHECK(theta.device() == input.device(), op, ": theta must be on the same device as input (", input.device(),
              "), got ", theta.device());
  VISIONOPS_CHECK(theta.scalar_type() == input.scalar_type(), op, ": theta must have the same dtype as input (",
              input.scalar_type(), "), got ", theta.scalar_type());
}

void check_tps_params(const char* op, const at::Tensor& like, const at::Tensor& kernel_weights,
                      const at::Tensor& affine_weights, const at::Tensor& target_points) {
  VISIONOPS_CHECK(kernel_weights.dim() == 3 && kernel_weights.size(2) == 2, op,
              ": kernel_weights must be a tensor [B, K, 2], got shape ", kernel_weights.sizes());
  const int64_t B = kernel_weights.size(0), K = kernel_weights.size(1);
  VISIONOPS_CHECK(B == like.size(0), op, ": kernel_weights and input must have the same batch size, got ", B, " and ",
                  like.size(0));
  VISIONOPS_CHECK(affine_weights.dim() == 3 && affine_weights.size(0) == B && affine_weights.size(1) == 3 &&
                  affine_weights.size(2) == 2,
              op, ": affine_weights must be a tensor [", B, ", 3, 2], got shape ", affine_weights.sizes());
  VISIONOPS_CHECK(target_points.dim() == 3 && target_points.size(0) == B && target_points.size(1) == K &&
                  target_points.size(2) == 2,
              op, ": target_points must be a tensor [", B, ", ", K, ", 2], got shape ", target_points.sizes());
  for (const auto* t : {&kernel_weights, &affine_weights, &target_points}) {
    VISIONOPS_CHECK(t->device() == like.device(), op, ": kernel_weights, affine_weights and target_points must be on ",
                like.device(), ", got ", t->device());
    VISIONOPS_CHECK(t->scalar_type() == like.scalar_type(), op,
                ": kernel_weights, affine_weights and target_points must have dtype ", like.scalar_type(), ", got ",
                t->scalar_type());
  }
}

void check_output_size(const char* op, int64_t height, int64_t width) {
  VISIONOPS_CHECK(height >= 0 && width >= 0, op, ": output size must be non-negative, got (", height, ", ", width, ")");
}

// The pixel transform of one axis: x = ((g + 1) * scale - shift) / 2 is
// unnormalize() for align_corners (scale = size - 1, shift = 0) and not
// (scale = size, shift = 1); border padding clamps to [0, size - 1]; coordinates
// beyond +-kMaxCoordinate (and NaN) go to -100, outside any image.
template <typename T>
struct PixelAxis {
  T scale, shift, hi;
  int64_t size;
};

template <bool kBorder, typename T>
inline T pixel_coordinate(T g, const PixelAxis<T>& a) {
  T x = ((g + T(1)) * a.scale - a.shift) * T(0.5);
  if constexpr (kBorder) {
    x = x > T(0) ? x : T(0);
    x = x < a.hi ? x : a.hi;
  }
  const T big = static_cast<T>(kMaxCoordinate);
  return (x >= -big && x <= big) ? x : T(-100);
}

// pixel_coordinate with d(pixel)/d(grid), as source_coordinate: 0 where the
// border clamp or the out-of-range rule holds the coordinate fixed.
template <bool kBorder, typename T>
inline T pixel_coordinate_d(T g, const PixelAxis<T>& a, T& d) {
  T x = ((g + T(1)) * a.scale - a.shift) * T(0.5);
  T d_pad = T(1);
  if constexpr (kBorder) {
    d_pad = (x > T(0) && x < a.hi) ? T(1) : T(0);
    x = x > T(0) ? x : T(0);
    x = x < a.hi ? x : a.hi;
  }
  const T big = static_cast<T>(kMaxCoordinate);
  const bool ok = x >= -big && x <= big;
  d = ok ? a.scale * T(0.5) * d_pad : T(0);
  return ok ? x : T(-100);
}

#define VISIONOPS_SAMPLING_GATHER 0
namespace sampling_generic {
#include "sampling_cpu_kernels.inc"
}  // namespace sampling_generic
#undef VISIONOPS_SAMPLING_GATHER
#if VISIONOPS_X86_VARIANTS
#define VISIONOPS_SAMPLING_GATHER 8
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace sampling_avx2 {
#include "sampling_cpu_kernels.inc"
}  // namespace sampling_avx2
#pragma GCC pop_options
#undef VISIONOPS_SAMPLING_GATHER
#define VISIONOPS_SAMPLING_GATHER 16
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace sampling_avx512 {
#include "sampling_cpu_kernels.inc"
}  // namespace sampling_avx512
#pragma GCC pop_options
#undef VISIONOPS_SAMPLING_GATHER
#endif

namespace {

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Calls f(integral_constant<Interp>, integral_constant<Padding>): the per-point
// helpers of sampling.h are inlined with the modes as constants, so the point
// loops carry no mode branches.
template <typename F>
void with_modes(Interp interp, Padding padding, F&& f) {
  using I = Interp;
  using P = Padding;
  auto pad = [&](auto ki) {
    switch (padding) {
      case P::Zeros: return f(ki, std::integral_constant<P, P::Zeros>{});
      case P::Border: return f(ki, std::integral_constant<P, P::Border>{});
      default: return f(ki, std::integral_constant<P, P::Reflection>{});
    }
  };
  if (interp == I::Nearest) return pad(std::integral_constant<I, I::Nearest>{});
  return pad(std::integral_constant<I, I::Bilinear>{});
}

// A row of normalised source coordinates as (x, y) pairs. The affine and TPS
// warps read the base x coordinate from a table filled once per task
// (base_coordinate divides); the values are those of the sources' per-point
// operator(). A float / double grid is read in place.
template <typename T, typename scalar_t>
const T* source_row(const GridSource<T, scalar_t>& src, int64_t n, int64_t h, const T*, T* xy) {
  const scalar_t* g = src.grid + (n * src.OH + h) * src.OW * 2;
  if constexpr (std::is_same_v<T, scalar_t>) {
    return g;
  } else {
    for (int64_t i = 0; i < 2 * src.OW; ++i) xy[i] = static_cast<T>(g[i]);
    return xy;
  }
}

template <typename T, typename scalar_t>
const T* source_row(const AffineSource<T, scalar_t>& src, int64_t n, int64_t h, const T* base_x, T* xy) {
  const scalar_t* t = src.theta + n * 6;
  const T yt = base_coordinate<T>(h, src.OH, src.align_corners);
  const T t0 = static_cast<T>(t[0]), t1 = static_cast<T>(t[1]), t2 = static_cast<T>(t[2]);
  const T t3 = static_cast<T>(t[3]), t4 = static_cast<T>(t[4]), t5 = static_cast<T>(t[5]);
  for (int64_t w = 0; w < src.OW; ++w) {
    xy[2 * w] = t0 * base_x[w] + t1 * yt + t2;
    xy[2 * w + 1] = t3 * base_x[w] + t4 * yt + t5;
  }
  return xy;
}

template <typename T, typename scalar_t>
const T* source_row(const TPSSource<T, scalar_t>& src, int64_t n, int64_t h, const T* base_x, T* xy) {
  const T yt = base_coordinate<T>(h, src.OH, src.align_corners);
  const scalar_t* a = src.affine_weights + n * 6;
  const scalar_t* kw = src.kernel_weights + n * src.K * 2;
  const scalar_t* c = src.target_points + n * src.K * 2;
  if constexpr (std::is_same_v<scalar_t, float>) {
    // vectorised over the row's points (same expressions, a polynomial logarithm)
    VISIONOPS_ISA_KERNEL_WIDE(sampling, tps_points, float)(base_x, yt, src.OW, c, kw, a, src.K, xy);
    return xy;
  }
  for (int64_t w = 0; w < src.OW; ++w) {
    const T xt = base_x[w];
    T x = static_cast<T>(a[0]) + static_cast<T>(a[2]) * xt + static_cast<T>(a[4]) * yt;
    T y = static_cast<T>(a[1]) + static_cast<T>(a[3]) * xt + static_cast<T>(a[5]) * yt;
    for (int64_t k = 0; k < src.K; ++k) {
      const T dx = xt - static_cast<T>(c[2 * k]), dy = yt - static_cast<T>(c[2 * k + 1]);
      const T u = tps_radial(dx * dx + dy * dy);
      x += static_cast<T>(kw[2 * k]) * u;
      y += static_cast<T>(kw[2 * k + 1]) * u;
    }
    xy[2 * w] = x;
    xy[2 * w + 1] = y;
  }
  return xy;
}

// ---------------------------------------------------------------- forward (any source)

template <typename scalar_t, typename Source>
void sample_forward_impl(const at::Tensor& input, at::Tensor& output, const Source& src, Interp interp_,
                         Padding padding_, bool align_corners) {
  with_modes(interp_, padding_, [&](auto ki, auto kp) {
  constexpr Interp interp = decltype(ki)::value;
  constexpr Padding padding = decltype(kp)::value;
  using T = at::opmath_type<scalar_t>;
  const int64_t C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t N = output.size(0), OH = output.size(2), OW = output.size(3);
  const Strides4 s = strides_of(input), os = strides_of(output);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  // one task per run of output rows: no index division per point
  at::parallel_for(0, N * OH, std::max<int64_t>(1, 2048 / std::max<int64_t>(OW, 1)), [&](int64_t begin, int64_t end) {
    std::vector<T> xy(2 * OW), base_x(OW);
    for (int64_t w = 0; w < OW; ++w) base_x[w] = base_coordinate<T>(w, OW, align_corners);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / OH, h = row % OH;
      const T* g = source_row(src, n, h, base_x.data(), xy.data());
      const scalar_t* in_n = in + n * s.n;
      scalar_t* out_row = out + n * os.n + h * os.y;
      for (int64_t w = 0; w < OW; ++w) {
        sample_point<T, scalar_t>(in_n, s, C, H, W, g[2 * w], g[2 * w + 1], interp, padding, align_corners,
                                  out_row + w * os.x, os.c);
      }
    }
  });
  });
}

// Bilinear with zeros / border padding, one output row at a time: the row's
// source coordinates, then the taps. NCHW planes go through the vector kernels
// of sampling_cpu_kernels.inc; channels_last reads each point's channels
// contiguously. Same expressions as source_coordinate / Bilinear / sample_point
// in sampling.h, up to FMA contraction.
template <typename scalar_t, typename Source, Padding kPad>
void bilinear_rows_impl(const at::Tensor& input, at::Tensor& output, const Source& src, bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kBorder = kPad == Padding::Border;
  const int64_t C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t N = output.size(0), OH = output.size(2), OW = output.size(3);
  const Strides4 s = strides_of(input), os = strides_of(output);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const PixelAxis<T> ax_x{static_cast<T>(align_corners ? W - 1 : W), align_corners ? T(0) : T(1),
                          static_cast<T>(W - 1), W};
  const PixelAxis<T> ax_y{static_cast<T>(align_corners ? H - 1 : H), align_corners ? T(0) : T(1),
                          static_cast<T>(H - 1), H};
  // planes whose offsets fit int32 (the gathers' index type)
  const bool planar = s.x == 1 && s.y == W && os.x == 1 && os.y == OW && H * W < (int64_t(1) << 31);
  const auto row_kernel = VISIONOPS_ISA_KERNEL_WIDE(sampling, bilinear_row_planar, kBorder, T, scalar_t);
  at::parallel_for(0, N * OH, std::max<int64_t>(1, 2048 / std::max<int64_t>(OW, 1)), [&](int64_t begin, int64_t end) {
    std::vector<T> xy(2 * OW), base_x(OW);
    for (int64_t w = 0; w < OW; ++w) base_x[w] = base_coordinate<T>(w, OW, align_corners);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / OH, h = row % OH;
      const T* g = source_row(src, n, h, base_x.data(), xy.data());
      const scalar_t* in_n = in + n * s.n;
      scalar_t* out_row = out + n * os.n + h * os.y;
      if (planar) {
        row_kernel(in_n, s.c, C, ax_x, ax_y, g, OW, out_row, os.c);
        continue;
      }
      for (int64_t w = 0; w < OW; ++w) {
        const T x = pixel_coordinate<kBorder>(g[2 * w], ax_x);
        const T y = pixel_coordinate<kBorder>(g[2 * w + 1], ax_y);
        const T fx0 = floor_bounded(x), fy0 = floor_bounded(y);
        const int64_t xa = static_cast<int64_t>(fx0), ya = static_cast<int64_t>(fy0), xb = xa + 1, yb = ya + 1;
        const T ax = x - fx0, ay = y - fy0;
        const bool m00 = inside(xa, ya, W, H), m01 = inside(xb, ya, W, H), m10 = inside(xa, yb, W, H),
                   m11 = inside(xb, yb, W, H);
        const T w00 = (T(1) - ax) * (T(1) - ay), w01 = ax * (T(1) - ay), w10 = (T(1) - ax) * ay, w11 = ax * ay;
        const int64_t o00 = ya * s.y + xa * s.x;
        scalar_t* o = out_row + w * os.x;
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* p = in_n + o00 + c * s.c;
          T v = T(0);
          if (m00) v += w00 * static_cast<T>(p[0]);
          if (m01) v += w01 * static_cast<T>(p[s.x]);
          if (m10) v += w10 * static_cast<T>(p[s.y]);
          if (m11) v += w11 * static_cast<T>(p[s.y + s.x]);
          o[c * os.c] = static_cast<scalar_t>(v);
        }
      }
    }
  });
}

template <template <typename, typename> class MakeSource, typename... Args>
at::Tensor sample_forward(const at::Tensor& input, int64_t OH, int64_t OW, int64_t interpolation_mode,
                          int64_t padding_mode, bool align_corners, const char* name,
                          const std::vector<at::Tensor>& params, Args... args) {
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  auto output = at::empty({input.size(0), input.size(1), OH, OW}, input.options(), fmt);
  if (output.numel() == 0) return output;
  if (input.size(2) == 0 || input.size(3) == 0) return output.zero_();
  const auto in = input.contiguous(fmt);
  std::vector<at::Tensor> p;
  for (const auto& t : params) p.push_back(t.contiguous());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "sampling_forward", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto src = MakeSource<T, scalar_t>::make(p, OH, OW, align_corners, args...);
    const auto interp = static_cast<Interp>(interpolation_mode);
    const auto padding = static_cast<Padding>(padding_mode);
    // int32 pixel indices in the fast path: maps up to 2^30 pixels a side
    const bool small = in.size(2) < (int64_t(1) << 30) && in.size(3) < (int64_t(1) << 30);
    if (interp == Interp::Bilinear && padding == Padding::Zeros && small) {
      bilinear_rows_impl<scalar_t, decltype(src), Padding::Zeros>(in, output, src, align_corners);
    } else if (interp == Interp::Bilinear && padding == Padding::Border && small) {
      bilinear_rows_impl<scalar_t, decltype(src), Padding::Border>(in, output, src, align_corners);
    } else {
      sample_forward_impl<scalar_t>(in, output, src, interp, padding, align_corners);
    }
  });
  return output;
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

at::Tensor grid_sample_cpu(const at::Tensor& input, const at::Tensor& grid, int64_t interpolation_mode,
                           int64_t padding_mode, bool align_corners) {
  check_sampling_input("grid_sample", input, interpolation_mode, padding_mode);
  check_sampling_grid("grid_sample", input, grid);
  return sample_forward<MakeGrid>(input, grid.size(1), grid.size(2), interpolation_mode, padding_mode, align_corners,
                                  "grid_sample_cpu", {grid});
}

at::Tensor affine_grid_sample_cpu(const at::Tensor& input, const at::Tensor& theta, int64_t height, int64_t width,
                                  int64_t interpolation_mode, int64_t padding_mode, bool align_corners) {
  check_sampling_input("affine_grid_sample", input, interpolation_mode, padding_mode);
  check_sampling_theta("affine_grid_sample", input, theta);
  check_output_size("affine_grid_sample", height, width);
  return sample_forward<MakeAffine>(input, height, width, interpolation_mode, padding_mode, align_corners,
                                    "affine_grid_sample_cpu", {theta});
}

at::Tensor tps_grid_sample_cpu(const at::Tensor& input, const at::Tensor& kernel_weights,
                               const at::Tensor& affine_weights, const at::Tensor& target_points, int64_t height,
                               int64_t width, int64_t interpolation_mode, int64_t padding_mode, bool align_corners) {
  check_sampling_input("tps_grid_sample", input, interpolation_mode, padding_mode);
  check_tps_params("tps_grid_sample", input, kernel_weights, affine_weights, target_points);
  check_output_size("tps_grid_sample", height, width);
  return sample_forward<MakeTPS>(input, height, width, interpolation_mode, padding_mode, align_corners,
                                 "tps_grid_sample_cpu", {kernel_weights, affine_weights, target_points});
}

// ---------------------------------------------------------------- grid_sample backward

template <typename scalar_t>
void grid_grad_impl(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& grid, at::Tensor& grad_grid,
                    Interp interp_, Padding padding_, bool align_corners) {
  with_modes(interp_, padding_, [&](auto ki, auto kp) {
  constexpr Interp interp = decltype(ki)::value;
  constexpr Padding padding = decltype(kp)::value;
  using T = at::opmath_type<scalar_t>;
  const int64_t C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t N = grid.size(0), OH = grid.size(1), OW = grid.size(2);
  const Strides4 s = strides_of(input), gs = strides_of(grad);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* gr = grid.const_data_ptr<scalar_t>();
  scalar_t* out = grad_grid.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, N * OH, std::max<int64_t>(1, 1024 / std::max<int64_t>(OW, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / OH, h = row % OH;
      for (int64_t w = 0; w < OW; ++w) {
        const int64_t i = row * OW + w;
        T ox, oy;
        point_grid_grad<T, scalar_t>(in + n * s.n, s, C, H, W, static_cast<T>(gr[2 * i]),
                                     static_cast<T>(gr[2 * i + 1]), interp, padding, align_corners,
                                     g + n * gs.n + h * gs.y + w * gs.x, gs.c, ox, oy);
        out[2 * i] = static_cast<scalar_t>(ox);
        out[2 * i + 1] = static_cast<scalar_t>(oy);
      }
    }
  });
  });
}

// Channels per backward task. A function of the shape only, never of the thread
// count: the grid gradient is summed per channel block and the blocks are then
// added, so the grouping must not change with the machine or
// torch.set_num_threads (it did: results differed in the last bits). 32 tasks
// keep the usual core counts busy when the batch is one RGB image.
inline int64_t channel_block(int64_t N, int64_t C) {
  constexpr int64_t kTasks = 32;
  return std::clamp<int64_t>((N * C) / kTasks, 1, 16);
}

// grad_acc: opmath dtype, [N, C, H, W] in the input's layout. A task owns the
// planes of one image and a block of channels and visits the output points in
// order: deterministic, and the taps of a point are computed once per block.
template <typename scalar_t>
void input_grad_impl(const at::Tensor& grad, const at::Tensor& grid, at::Tensor& grad_acc, Interp interp_,
                     Padding padding_, bool align_corners) {
  with_modes(interp_, padding_, [&](auto ki, auto kp) {
  constexpr Interp interp = decltype(ki)::value;
  constexpr Padding padding = decltype(kp)::value;
  using T = at::opmath_type<scalar_t>;
  const int64_t C = grad_acc.size(1), H = grad_acc.size(2), W = grad_acc.size(3);
  const int64_t N = grid.size(0), OH = grid.size(1), OW = grid.size(2);
  const Strides4 s = strides_of(grad_acc), gs = strides_of(grad);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* gr = grid.const_data_ptr<scalar_t>();
  T* acc = grad_acc.mutable_data_ptr<T>();
  const int64_t block = channel_block(N, C);
  const int64_t blocks = (C + block - 1) / block;
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, c0 = (task % blocks) * block, c1 = std::min(C, c0 + block);
      T* acc_n = acc + n * s.n;
      const scalar_t* g_n = g + n * gs.n;
      const scalar_t* grid_n = gr + n * OH * OW * 2;
      for (int64_t h = 0; h < OH; ++h) {
        for (int64_t w = 0; w < OW; ++w) {
          const int64_t p = h * OW + w;
          int64_t offset[4];
          T weight[4];
          const int taps = point_taps<T>(H, W, s.y, s.x, static_cast<T>(grid_n[2 * p]),
                                         static_cast<T>(grid_n[2 * p + 1]), interp, padding, align_corners, offset,
                                         weight);
          if (taps == 0) continue;
          const scalar_t* gp = g_n + h * gs.y + w * gs.x;
          for (int64_t c = c0; c < c1; ++c) {
            const T go = static_cast<T>(gp[c * gs.c]);
            T* plane = acc_n + c * s.c;
            for (int t = 0; t < taps; ++t) plane[offset[t]] += weight[t] * go;
          }
        }
      }
    }
  });
  });
}

// The input gradient buffer is addressed with the input's strides: they must
// agree wherever a dimension has more than one element (a size-1 dimension's
// stride is free).
void check_gradient_layout(const at::Tensor& grad_acc, const at::Tensor& input) {
  if (!grad_acc.defined()) return;
  for (int64_t d = 0; d < 4; ++d) TORCH_INTERNAL_ASSERT(input.size(d) <= 1 || grad_acc.stride(d) == input.stride(d));
}

// Bilinear with zeros / border padding, through the row kernels of
// sampling_cpu_kernels.inc, for any coordinate source: a grid (grid_sample) or
// theta, whose rows of coordinates are recomputed here (affine_grid_sample, so
// that its backward never materialises the grid). grad_acc (opmath, the
// input's layout, uninitialised) receives the input gradient unless undefined;
// on_row(row, pairs) receives each output row's grid gradient ((x, y) pairs,
// opmath) when want_grid, every row exactly once.
// With enough images for every thread, one pass: a task per image and all its
// channels, the taps of each point computed once for both gradients. Otherwise
// two passes: the grid gradient by output rows (all channels at once), then the
// input gradient by (image, channel block) tasks that own their planes. The
// grouping depends on the shape only: deterministic.
template <typename scalar_t, Padding kPad, typename Source, typename OnRow>
void bilinear_backward_rows(const at::Tensor& grad, const at::Tensor& input, const Source& src, at::Tensor& grad_acc,
                            bool want_grid, bool align_corners, const OnRow& on_row) {
  using T = at::opmath_type<scalar_t>;
  const int64_t C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t N = grad.size(0), OH = grad.size(2), OW = grad.size(3);
  const Strides4 s = strides_of(input), gs = strides_of(grad);
  check_gradient_layout(grad_acc, input);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  T* acc = grad_acc.defined() ? grad_acc.mutable_data_ptr<T>() : nullptr;
  const PixelAxis<T> ax_x{static_cast<T>(align_corners ? W - 1 : W), align_corners ? T(0) : T(1),
                          static_cast<T>(W - 1), W};
  const PixelAxis<T> ax_y{static_cast<T>(align_corners ? H - 1 : H), align_corners ? T(0) : T(1),
                          static_cast<T>(H - 1), H};
  const int64_t block = channel_block(N, C);
  const int64_t blocks = (C + block - 1) / block;
  // NCHW planes are zeroed by the task that owns them, just before it
  // accumulates into them (still in cache); other layouts here.
  const bool planes_zeroed_by_task = acc != nullptr && s.c == H * W && s.y == W && s.x == 1;
  if (acc != nullptr && !planes_zeroed_by_task) grad_acc.zero_();
  const auto zero_planes = [&](int64_t n, int64_t c0, int64_t c1) {
    if (planes_zeroed_by_task) std::memset(acc + n * s.n + c0 * s.c, 0, sizeof(T) * (c1 - c0) * H * W);
  };
  const auto row_kernel = VISIONOPS_ISA_KERNEL_WIDE(sampling, bilinear_row_backward, kPad == Padding::Border, T, scalar_t);
  // per-task buffers: the row's base x coordinates, its source coordinates and its grid gradient
  struct Rows {
    std::vector<T> base_x, xy, pairs;
    Rows(int64_t OW, bool align) : base_x(OW), xy(2 * OW), pairs(2 * OW) {
      for (int64_t w = 0; w < OW; ++w) base_x[w] = base_coordinate<T>(w, OW, align);
    }
  };
  if (want_grid && acc != nullptr && N >= 2 * at::get_num_threads()) {
    at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
      Rows r(OW, align_corners);
      for (int64_t n = b; n < e; ++n) {
        zero_planes(n, 0, C);
        for (int64_t h = 0; h < OH; ++h) {
          row_kernel(in + n * s.n, acc + n * s.n, s.c, s.y, s.x, C, ax_x, ax_y,
                     source_row(src, n, h, r.base_x.data(), r.xy.data()), OW, g + n * gs.n + h * gs.y, gs.c, gs.x,
                     r.pairs.data());
          on_row(n * OH + h, r.pairs.data());
        }
      }
    });
    return;
  }
  if (want_grid) {
    at::parallel_for(0, N * OH, std::max<int64_t>(1, 1024 / std::max<int64_t>(OW * C, 1)), [&](int64_t b, int64_t e) {
      Rows r(OW, align_corners);
      for (int64_t row = b; row < e; ++row) {
        const int64_t n = row / OH, h = row % OH;
        row_kernel(in + n * s.n, nullptr, s.c, s.y, s.x, C, ax_x, ax_y,
                   source_row(src, n, h, r.base_x.data(), r.xy.data()), OW, g + n * gs.n + h * gs.y, gs.c, gs.x,
                   r.pairs.data());
        on_row(row, r.pairs.data());
      }
    });
  }
  if (acc != nullptr) {
    at::parallel_for(0, N * blocks, 1, [&](int64_t b, int64_t e) {
      Rows r(OW, align_corners);
      for (int64_t task = b; task < e; ++task) {
        const int64_t n = task / blocks, c0 = (task % blocks) * block, c1 = std::min(C, c0 + block);
        zero_planes(n, c0, c1);
        for (int64_t h = 0; h < OH; ++h)
          row_kernel(in + n * s.n + c0 * s.c, acc + n * s.n + c0 * s.c, s.c, s.y, s.x, c1 - c0, ax_x, ax_y,
                     source_row(src, n, h, r.base_x.data(), r.xy.data()), OW, g + n * gs.n + h * gs.y + c0 * gs.c,
                     gs.c, gs.x, nullptr);
      }
    });
  }
}

// Bilinear with zeros / border padding: either gradient or both, through
// bilinear_backward_rows (an undefined grad_acc or grad_grid is not computed).
// Other modes: both gradients in one pass, the taps of a
// point computed once for the input scatter and the grid gradient; tasks and
// their order are those of input_grad_impl, and with several channel blocks
// per image each block writes its share of the grid gradient to `partial`,
// added in block order. Deterministic either way.
template <typename scalar_t>
void both_grads_impl(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& grid, at::Tensor& grad_acc,
                     at::Tensor& grad_grid, Interp interp_, Padding padding_, bool align_corners) {
  with_modes(interp_, padding_, [&](auto ki, auto kp) {
  constexpr Interp interp = decltype(ki)::value;
  constexpr Padding padding = decltype(kp)::value;
  using T = at::opmath_type<scalar_t>;
  const int64_t C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t N = grid.size(0), OH = grid.size(1), OW = grid.size(2), P = OH * OW;
  const Strides4 s = strides_of(input), gs = strides_of(grad);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* gr = grid.const_data_ptr<scalar_t>();
  scalar_t* gg = grad_grid.defined() ? grad_grid.mutable_data_ptr<scalar_t>() : nullptr;
  if constexpr (interp == Interp::Bilinear && padding != Padding::Reflection) {
    const GridSource<T, scalar_t> src{gr, OH, OW};
    bilinear_backward_rows<scalar_t, padding>(grad, input, src, grad_acc, gg != nullptr, align_corners,
                                              [&](int64_t row, const T* pairs) {
                                                scalar_t* out = gg + row * OW * 2;
                                                for (int64_t i = 0; i < 2 * OW; ++i) out[i] = static_cast<scalar_t>(pairs[i]);
                                              });
    return;
  }
  check_gradient_layout(grad_acc, input);
  grad_acc.zero_();
  T* acc = grad_acc.mutable_data_ptr<T>();
  const int64_t block = channel_block(N, C);
  const int64_t blocks = (C + block - 1) / block;
  std::vector<T> partial(blocks > 1 ? blocks * N * P * 2 : 0);
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, blk = task % blocks, c0 = blk * block, c1 = std::min(C, c0 + block);
      const scalar_t* in_n = in + n * s.n;
      T* acc_n = acc + n * s.n;
      const scalar_t* g_n = g + n * gs.n;
      const scalar_t* grid_n = gr + n * P * 2;
      for (int64_t h = 0; h < OH; ++h) {
        for (int64_t w = 0; w < OW; ++w) {
          const int64_t p = h * OW + w;
          const scalar_t* gp = g_n + h * gs.y + w * gs.x;
          T dx, dy;
          const T x = source_coordinate(static_cast<T>(grid_n[2 * p]), W, padding, align_corners, dx);
          const T y = source_coordinate(static_cast<T>(grid_n[2 * p + 1]), H, padding, align_corners, dy);
          T ax = T(0), ay = T(0);
          if constexpr (interp == Interp::Nearest) {
            const int64_t xi = static_cast<int64_t>(s_rint(x)), yi = static_cast<int64_t>(s_rint(y));
            if (inside(xi, yi, W, H)) {
              T* a = acc_n + yi * s.y + xi * s.x;
              for (int64_t c = c0; c < c1; ++c) a[c * s.c] += T(1) * static_cast<T>(gp[c * gs.c]);
            }
          } else {
            const Bilinear<T> b(x, y);
            const int64_t x1 = b.x0 + 1, y1 = b.y0 + 1;
            const bool m00 = inside(b.x0, b.y0, W, H), m01 = inside(x1, b.y0, W, H), m10 = inside(b.x0, y1, W, H),
                       m11 = inside(x1, y1, W, H);
            const T w00 = (T(1) - b.fx) * (T(1) - b.fy), w01 = b.fx * (T(1) - b.fy), w10 = (T(1) - b.fx) * b.fy,
                    w11 = b.fx * b.fy;
            const int64_t o00 = b.y0 * s.y + b.x0 * s.x;
            for (int64_t c = c0; c < c1; ++c) {
              const scalar_t* pi = in_n + o00 + c * s.c;
              T* pa = acc_n + o00 + c * s.c;
              const T go = static_cast<T>(gp[c * gs.c]);
              const T v00 = m00 ? static_cast<T>(pi[0]) : T(0), v01 = m01 ? static_cast<T>(pi[s.x]) : T(0),
                      v10 = m10 ? static_cast<T>(pi[s.y]) : T(0), v11 = m11 ? static_cast<T>(pi[s.y + s.x]) : T(0);
              ax += go * ((v01 - v00) * (T(1) - b.fy) + (v11 - v10) * b.fy);
              ay += go * ((v10 - v00) * (T(1) - b.fx) + (v11 - v01) * b.fx);
              if (m00) pa[0] += w00 * go;
              if (m01) pa[s.x] += w01 * go;
              if (m10) pa[s.y] += w10 * go;
              if (m11) pa[s.y + s.x] += w11 * go;
            }
          }
          if (blocks == 1) {
            gg[(n * P + p) * 2] = static_cast<scalar_t>(ax * dx);
            gg[(n * P + p) * 2 + 1] = static_cast<scalar_t>(ay * dy);
          } else {
            T* q = partial.data() + ((blk * N + n) * P + p) * 2;
            q[0] = ax;
            q[1] = ay;
          }
        }
      }
    }
  });
  if (blocks > 1) {
    at::parallel_for(0, N * P, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T sx = T(0), sy = T(0);
        for (int64_t blk = 0; blk < blocks; ++blk) {
          sx += partial[(blk * N * P + i) * 2];
          sy += partial[(blk * N * P + i) * 2 + 1];
        }
        T dx, dy;
        source_coordinate(static_cast<T>(gr[2 * i]), W, padding, align_corners, dx);
        source_coordinate(static_cast<T>(gr[2 * i + 1]), H, padding, align_corners, dy);
        gg[2 * i] = static_cast<scalar_t>(sx * dx);
        gg[2 * i + 1] = static_cast<scalar_t>(sy * dy);
      }
    });
  }
  });
}

std::tuple<at::Tensor, at::Tensor> grid_sample_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
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
  const auto interp = static_cast<Interp>(interpolation_mode);
  const auto padding = static_cast<Padding>(padding_mode);
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  const auto in = input.contiguous(fmt);
  const auto g = grad.contiguous(fmt);
  const auto gr = grid.contiguous();
  at::Tensor grad_input = at::empty({0}, input.options());
  at::Tensor grad_grid = at::empty({0}, grid.options());
  // bilinear zeros / border: one pass for either gradient or both (the row kernels)
  const bool row_kernels = interp == Interp::Bilinear && padding != Padding::Reflection;
  if ((output_mask[0] && output_mask[1]) || (row_kernels && (output_mask[0] || output_mask[1]))) {
    const auto acc_type = at::toOpMathType(input.scalar_type());
    at::Tensor acc, grid_out;
    // both_grads_impl writes every element of either (zeroing the input gradient itself)
    if (output_mask[0]) acc = at::empty(input.sizes(), input.options().dtype(acc_type), fmt);
    if (output_mask[1]) grid_out = at::empty(grid.sizes(), grid.options());
    if (in.numel() != 0 && g.numel() != 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "grid_sample_backward_cpu", [&] {
        both_grads_impl<scalar_t>(g, in, gr, acc, grid_out, interp, padding, align_corners);
      });
    } else {
      if (acc.defined()) acc.zero_();
      if (grid_out.defined()) grid_out.zero_();
    }
    if (output_mask[0]) grad_input = acc.scalar_type() == input.scalar_type() ? acc : acc.to(input.scalar_type());
    if (output_mask[1]) grad_grid = grid_out;
    return {grad_input, grad_grid};
  }
  if (output_mask[0]) {
    const auto acc_type = at::toOpMathType(input.scalar_type());
    auto acc = at::empty(input.sizes(), input.options().dtype(acc_type), fmt).zero_();
    if (acc.numel() != 0 && g.numel() != 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "grid_sample_backward_cpu", [&] {
        input_grad_impl<scalar_t>(g, gr, acc, interp, padding, align_corners);
      });
    }
    grad_input = acc.scalar_type() == input.scalar_type() ? acc : acc.to(input.scalar_type());
  }
  if (output_mask[1]) {
    grad_grid = at::zeros(grid.sizes(), grid.options());
    if (grad_grid.numel() != 0 && in.numel() != 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "grid_sample_backward_cpu", [&] {
        grid_grad_impl<scalar_t>(g, in, gr, grad_grid, interp, padding, align_corners);
      });
    }
  }
  return {grad_input, grad_grid};
}

// ---------------------------------------------------------------- fused warps' backward

// The backward of a fused warp (affine or TPS): returns the input gradient
// ([0] unless output_mask[0]) and gives each output row's grid gradient, in
// opmath precision, to on_row(row, pairs) when output_mask[1]. Bilinear with
// zeros / border padding recomputes each row's coordinates from `src` and
// never materialises the grid or its gradient; other modes take the grid from
// make_grid() and run grid_sample's backward. g and in: grad and input in the
// layout `fmt`.
template <typename scalar_t, typename Source, typename MakeGridFn, typename OnRow>
at::Tensor warp_backward(const at::Tensor& g, const at::Tensor& in, const Source& src, const MakeGridFn& make_grid,
                         int64_t interpolation_mode, int64_t padding_mode, bool align_corners, at::MemoryFormat fmt,
                         std::array<bool, 2> output_mask, const OnRow& on_row) {
  using T = at::opmath_type<scalar_t>;
  const auto interp = static_cast<Interp>(interpolation_mode);
  const auto padding = static_cast<Padding>(padding_mode);
  const auto dtype = in.scalar_type();
  if (interp == Interp::Bilinear && padding != Padding::Reflection) {
    at::Tensor acc;
    if (output_mask[0]) acc = at::empty(in.sizes(), in.options().dtype(at::toOpMathType(dtype)), fmt);
    if (in.numel() != 0 && g.numel() != 0) {
      if (padding == Padding::Zeros) {
        bilinear_backward_rows<scalar_t, Padding::Zeros>(g, in, src, acc, output_mask[1], align_corners, on_row);
      } else {
        bilinear_backward_rows<scalar_t, Padding::Border>(g, in, src, acc, output_mask[1], align_corners, on_row);
      }
    } else if (acc.defined()) {
      acc.zero_();
    }
    if (!output_mask[0]) return at::empty({0}, in.options());
    return acc.scalar_type() == dtype ? acc : acc.to(dtype);
  }
  const at::Tensor grid = make_grid();
  auto [grad_input, grad_grid] =
      grid_sample_backward_cpu(g, in, grid, interpolation_mode, padding_mode, align_corners, output_mask);
  if (output_mask[1] && in.numel() != 0) {
    const int64_t rows = grid.size(0) * grid.size(1), OW = grid.size(2);
    const scalar_t* gp = grad_grid.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t b, int64_t e) {
      std::vector<T> pairs(2 * OW);
      for (int64_t row = b; row < e; ++row) {
        for (int64_t i = 0; i < 2 * OW; ++i) pairs[i] = static_cast<T>(gp[row * OW * 2 + i]);
        on_row(row, pairs.data());
      }
    });
  }
  return grad_input;
}

// ---------------------------------------------------------------- affine_grid_sample backward

// The theta gradient of one output row from its grid gradient `pairs`: the row
// adds sum_w g_x[w] (x_t[w], y_t, 1) to theta's first row and
// sum_w g_y[w] (x_t[w], y_t, 1) to its second. Summed in double, in point order;
// rows are then added per image in row order, so the result does not depend
// on how rows were spread over threads.
template <typename T>
void theta_row_sums(const T* pairs, const std::vector<double>& base_x, double y_t, double* sums) {
  double sx = 0, sxx = 0, sy = 0, syx = 0;
  for (size_t w = 0; w < base_x.size(); ++w) {
    const double gx = static_cast<double>(pairs[2 * w]), gy = static_cast<double>(pairs[2 * w + 1]);
    sx += gx;
    sxx += gx * base_x[w];
    sy += gy;
    syx += gy * base_x[w];
  }
  sums[0] = sxx;
  sums[1] = sx * y_t;
  sums[2] = sx;
  sums[3] = syx;
  sums[4] = sy * y_t;
  sums[5] = sy;
}

// The grid F.affine_grid would give, [N, OH, OW, 2] in theta's dtype, computed
// as the fused forward computes its coordinates (opmath type, then rounded).
template <typename scalar_t>
at::Tensor affine_grid_from_theta(const at::Tensor& theta, int64_t OH, int64_t OW, bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  const int64_t N = theta.size(0);
  auto grid = at::empty({N, OH, OW, 2}, theta.options());
  const AffineSource<T, scalar_t> src{theta.const_data_ptr<scalar_t>(), OH, OW, align_corners};
  scalar_t* out = grid.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, N * OH, 64, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      for (int64_t w = 0; w < OW; ++w) {
        T x, y;
        src(row / OH, row % OH, w, x, y);
        out[(row * OW + w) * 2] = static_cast<scalar_t>(x);
        out[(row * OW + w) * 2 + 1] = static_cast<scalar_t>(y);
      }
    }
  });
  return grid;
}

// The backward of the fused affine warp. Bilinear with zeros / border padding
// (the STN case) never materialises the grid nor its gradient: each output
// row's coordinates are recomputed from theta and its grid gradient is reduced
// to theta at once. Other modes materialise the grid and run grid_sample's
// backward, then reduce its grid gradient the same way.
std::tuple<at::Tensor, at::Tensor> affine_grid_sample_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                                                   const at::Tensor& theta, int64_t interpolation_mode,
                                                                   int64_t padding_mode, bool align_corners,
                                                                   std::array<bool, 2> output_mask) {
  const char* op = "_affine_grid_sample_backward";
  check_sampling_input(op, input, interpolation_mode, padding_mode);
  check_sampling_theta(op, input, theta);
  check_sampling_output_grad(op, grad, input);
  const int64_t N = grad.size(0), OH = grad.size(2), OW = grad.size(3);
  const auto fmt = memory_format_for(use_channels_last(input));
  const auto in = input.contiguous(fmt);
  const auto g = grad.contiguous(fmt);
  const auto th = theta.contiguous();
  at::Tensor grad_input = at::empty({0}, input.options());
  std::vector<double> row_sums(output_mask[1] ? N * OH * 6 : 0, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "affine_grid_sample_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    std::vector<double> base_x(OW);
    for (int64_t w = 0; w < OW; ++w) base_x[w] = static_cast<double>(base_coordinate<T>(w, OW, align_corners));
    const auto on_row = [&](int64_t row, const T* pairs) {
      const double y_t = static_cast<double>(base_coordinate<T>(row % OH, OH, align_corners));
      theta_row_sums(pairs, base_x, y_t, row_sums.data() + row * 6);
    };
    const AffineSource<T, scalar_t> src{th.const_data_ptr<scalar_t>(), OH, OW, align_corners};
    grad_input = warp_backward<scalar_t>(
        g, in, src, [&] { return affine_grid_from_theta<scalar_t>(th, OH, OW, align_corners); }, interpolation_mode,
        padding_mode, align_corners, fmt, output_mask, on_row);
  });
  at::Tensor grad_theta = at::empty({0}, theta.options());
  if (output_mask[1]) {
    auto sums = at::zeros({N, 2, 3}, theta.options().dtype(at::kDouble));
    double* out = sums.mutable_data_ptr<double>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < OH; ++h)
        for (int k = 0; k < 6; ++k) out[n * 6 + k] += row_sums[(n * OH + h) * 6 + k];
    grad_theta = sums.to(theta.scalar_type());
  }
  return {grad_input, grad_theta};
}

// ---------------------------------------------------------------- TPS grid and its gradients

at::Tensor tps_grid_cpu(const at::Tensor& kernel_weights, const at::Tensor& affine_weights,
                        const at::Tensor& target_points, int64_t height, int64_t width, bool align_corners) {
  check_tps_params("tps_grid", kernel_weights, kernel_weights, affine_weights, target_points);
  VISIONOPS_CHECK(at::isFloatingType(kernel_weights.scalar_type()), "tps_grid: kernel_weights must be floating-point");
  check_output_size("tps_grid", height, width);
  const int64_t B = kernel_weights.size(0);
  auto grid = at::empty({B, height, width, 2}, kernel_weights.options());
  if (grid.numel() == 0) return grid;
  const auto kw = kernel_weights.contiguous(), aw = affine_weights.contiguous(), tp = target_points.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, kw.scalar_type(), "tps_grid_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const TPSSource<T, scalar_t> src{kw.const_data_ptr<scalar_t>(), aw.const_data_ptr<scalar_t>(),
                                     tp.const_data_ptr<scalar_t>(), kw.size(1), height, width, align_corners};
    scalar_t* out = grid.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * height, std::max<int64_t>(1, 256 / width), [&](int64_t begin, int64_t end) {
      std::vector<T> xy(2 * width), base_x(width);
      for (int64_t w = 0; w < width; ++w) base_x[w] = base_coordinate<T>(w, width, align_corners);
      for (int64_t row = begin; row < end; ++row) {
        const T* g = source_row(src, row / height, row % height, base_x.data(), xy.data());
        scalar_t* out_row = out + row * width * 2;
        for (int64_t i = 0; i < 2 * width; ++i) out_row[i] = static_cast<scalar_t>(g[i]);
      }
    });
  });
  return grid;
}

// d loss / d kernel_weights and d loss / d target_points from d loss / d grid.
// One task per (image, control point) sums over the output points in order,
// in double: a 2048 x 2048 grid adds 4M terms.
std::tuple<at::Tensor, at::Tensor> tps_grid_backward_cpu(const at::Tensor& grad_grid,
                                                         const at::Tensor& kernel_weights,
                                                         const at::Tensor& target_points, bool align_corners) {
  const char* op = "_tps_grid_backward";
  VISIONOPS_CHECK(grad_grid.dim() == 4 && grad_grid.size(3) == 2 && grad_grid.size(0) == kernel_weights.size(0), op,
              ": grad_grid must be a tensor [B, H, W, 2], got ", grad_grid.sizes());
  VISIONOPS_CHECK(kernel_weights.dim() == 3 && kernel_weights.size(2) == 2 && target_points.sizes() == kernel_weights.sizes(),
              op, ": kernel_weights and target_points must be tensors [B, K, 2] of the same shape");
  VISIONOPS_CHECK(grad_grid.scalar_type() == kernel_weights.scalar_type(), op,
              ": grad_grid must have the dtype of kernel_weights");
  const int64_t B = kernel_weights.size(0), K = kernel_weights.size(1);
  const int64_t OH = grad_grid.size(1), OW = grad_grid.size(2);
  auto grad_kw = at::zeros({B, K, 2}, kernel_weights.options().dtype(at::kDouble));
  auto grad_tp = at::zeros({B, K, 2}, kernel_weights.options().dtype(at::kDouble));
  if (B * K != 0 && OH * OW != 0) {
    const auto g = grad_grid.contiguous(), kw = kernel_weights.contiguous(), tp = target_points.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, kw.scalar_type(), "tps_grid_backward_cpu", [&] {
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const scalar_t* kwp = kw.const_data_ptr<scalar_t>();
      const scalar_t* tpp = tp.const_data_ptr<scalar_t>();
      double* gk = grad_kw.mutable_data_ptr<double>();
      double* gt = grad_tp.mutable_data_ptr<double>();
      if constexpr (std::is_same_v<scalar_t, float>) {
        // vectorised over the points of each output row (a polynomial logarithm);
        // the casts only name the types this branch runs with (a non-template
        // lambda compiles it for every scalar_t)
        const float* g_f = reinterpret_cast<const float*>(gp);
        const float* kw_f = reinterpret_cast<const float*>(kwp);
        const float* tp_f = reinterpret_cast<const float*>(tpp);
        std::vector<float> base_x(OW);
        for (int64_t w = 0; w < OW; ++w) base_x[w] = base_coordinate<float>(w, OW, align_corners);
        const auto point_kernel = VISIONOPS_ISA_KERNEL_WIDE(sampling, tps_control_point_grad, float);
        at::parallel_for(0, B * K, 1, [&](int64_t begin, int64_t end) {
          for (int64_t bk = begin; bk < end; ++bk) {
            const float* gb = g_f + (bk / K) * OH * OW * 2;
            double sums[4] = {0, 0, 0, 0};
            for (int64_t h = 0; h < OH; ++h) {
              point_kernel(base_x.data(), base_coordinate<float>(h, OH, align_corners), OW, gb + h * OW * 2,
                           tp_f[2 * bk], tp_f[2 * bk + 1], kw_f[2 * bk], kw_f[2 * bk + 1], sums);
            }
            gk[2 * bk] = sums[0];
            gk[2 * bk + 1] = sums[1];
            gt[2 * bk] = sums[2];
            gt[2 * bk + 1] = sums[3];
          }
        });
        return;
      }
      at::parallel_for(0, B * K, 1, [&](int64_t begin, int64_t end) {
        for (int64_t bk = begin; bk < end; ++bk) {
          const int64_t b = bk / K;
          const double cx = static_cast<double>(tpp[2 * bk]), cy = static_cast<double>(tpp[2 * bk + 1]);
          const double wx = static_cast<double>(kwp[2 * bk]), wy = static_cast<double>(kwp[2 * bk + 1]);
          double skx = 0, sky = 0, stx = 0, sty = 0;
          const scalar_t* gb = gp + b * OH * OW * 2;
          for (int64_t h = 0; h < OH; ++h) {
            const double yt = base_coordinate<double>(h, OH, align_corners);
            for (int64_t w = 0; w < OW; ++w) {
              const double xt = base_coordinate<double>(w, OW, align_corners);
              const double dx = xt - cx, dy = yt - cy, s = dx * dx + dy * dy;
              const double gx = static_cast<double>(gb[2 * (h * OW + w)]),
                           gy = static_cast<double>(gb[2 * (h * OW + w) + 1]);
              skx += gx * tps_radial(s);
              sky += gy * tps_radial(s);
              // d U / d c = dU/ds * 2 (c - p)
              const double f = (gx * wx + gy * wy) * tps_radial_ds(s) * 2.0;
              stx -= f * dx;
              sty -= f * dy;
            }
          }
          gk[2 * bk] = skx;
          gk[2 * bk + 1] = sky;
          gt[2 * bk] = stx;
          gt[2 * bk + 1] = sty;
        }
      });
    });
  }
  return {grad_kw.to(kernel_weights.scalar_type()), grad_tp.to(kernel_weights.scalar_type())};
}

// ---------------------------------------------------------------- tps_grid_sample backward

// The TPS parameter gradients of one output row (y_t; columns base_x) from its
// grid gradient `pairs`, summed in point order: sums[0..5] the affine weights
// ([3, 2] row-major: 1, x_t, y_t times (g_x, g_y)), then per control point k
// sums[6 + 4k ..] = (kernel weight x, y, target point x, y) as in
// tps_grid_backward_cpu: sum g U(s) and sum (g . w) U'(s) 2 (c - p).
template <typename T, typename scalar_t>
void tps_row_sums(const T* pairs, const std::vector<T>& base_x, T y_t, const scalar_t* kernel_weights,
                  const scalar_t* target_points, int64_t K, double* sums) {
  double sx = 0, sy = 0, sxx = 0, syx = 0;
  for (size_t w = 0; w < base_x.size(); ++w) {
    const double gx = static_cast<double>(pairs[2 * w]), gy = static_cast<double>(pairs[2 * w + 1]);
    sx += gx;
    sy += gy;
    sxx += gx * static_cast<double>(base_x[w]);
    syx += gy * static_cast<double>(base_x[w]);
  }
  const double yt = static_cast<double>(y_t);
  const double affine[6] = {sx, sy, sxx, syx, sx * yt, sy * yt};
  std::copy(affine, affine + 6, sums);
  double* point_sums = sums + 6;
  std::fill(point_sums, point_sums + 4 * K, 0.0);
  const int64_t count = static_cast<int64_t>(base_x.size());
  if constexpr (std::is_same_v<T, float>) {
    // vectorised over the row's points (a polynomial logarithm), as tps_grid_backward_cpu
    const auto point_kernel = VISIONOPS_ISA_KERNEL_WIDE(sampling, tps_control_point_grad, float);
    for (int64_t k = 0; k < K; ++k) {
      point_kernel(base_x.data(), y_t, count, pairs, static_cast<float>(target_points[2 * k]),
                   static_cast<float>(target_points[2 * k + 1]), static_cast<float>(kernel_weights[2 * k]),
                   static_cast<float>(kernel_weights[2 * k + 1]), point_sums + 4 * k);
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const T cx = static_cast<T>(target_points[2 * k]), cy = static_cast<T>(target_points[2 * k + 1]);
      const T wx = static_cast<T>(kernel_weights[2 * k]), wy = static_cast<T>(kernel_weights[2 * k + 1]);
      double* out = point_sums + 4 * k;
      for (int64_t w = 0; w < count; ++w) {
        const T dx = base_x[w] - cx, dy = y_t - cy, sq = dx * dx + dy * dy;
        const T gx = pairs[2 * w], gy = pairs[2 * w + 1];
        const T u = tps_radial(sq), f = (gx * wx + gy * wy) * tps_radial_ds(sq) * T(2);
        out[0] += static_cast<double>(gx * u);
        out[1] += static_cast<double>(gy * u);
        out[2] -= static_cast<double>(f * dx);
        out[3] -= static_cast<double>(f * dy);
      }
    }
  }
}

// The backward of the fused TPS warp: (grad_input, grad_kernel_weights,
// grad_affine_weights, grad_target_points). As for the affine warp, bilinear
// with zeros / border padding (RARE's case) never materialises the grid nor its
// gradient: each output row's coordinates are recomputed from the TPS and its
// grid gradient is reduced to the parameters at once, in float32 terms summed
// in double (16-bit parameters no longer see 16-bit grid-gradient terms).
// Other modes materialise the grid and run grid_sample's backward. Rows are
// summed per image in row order: the result does not depend on the threads.
// The per-row sums take N * H_out * (6 + 4K) doubles (RARE's batch of 64,
// 32 rows, K = 20: 1.4 MB), less than the grid whenever 6 + 4K < W_out.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tps_grid_sample_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& kernel_weights,
    const at::Tensor& affine_weights, const at::Tensor& target_points, int64_t interpolation_mode,
    int64_t padding_mode, bool align_corners, std::array<bool, 2> output_mask) {
  const char* op = "_tps_grid_sample_backward";
  check_sampling_input(op, input, interpolation_mode, padding_mode);
  check_tps_params(op, input, kernel_weights, affine_weights, target_points);
  check_sampling_output_grad(op, grad, input);
  const int64_t N = grad.size(0), OH = grad.size(2), OW = grad.size(3), K = kernel_weights.size(1);
  const auto fmt = memory_format_for(use_channels_last(input));
  const auto in = input.contiguous(fmt);
  const auto g = grad.contiguous(fmt);
  const auto kw = kernel_weights.contiguous(), aw = affine_weights.contiguous(), tp = target_points.contiguous();
  const int64_t per_row = 6 + 4 * K;
  at::Tensor grad_input = at::empty({0}, input.options());
  std::vector<double> row_sums(output_mask[1] ? N * OH * per_row : 0, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "tps_grid_sample_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    std::vector<T> base_x(OW);
    for (int64_t w = 0; w < OW; ++w) base_x[w] = base_coordinate<T>(w, OW, align_corners);
    const scalar_t* kwp = kw.const_data_ptr<scalar_t>();
    const scalar_t* tpp = tp.const_data_ptr<scalar_t>();
    const auto on_row = [&](int64_t row, const T* pairs) {
      const int64_t n = row / OH;
      tps_row_sums(pairs, base_x, base_coordinate<T>(row % OH, OH, align_corners), kwp + n * K * 2, tpp + n * K * 2, K,
                   row_sums.data() + row * per_row);
    };
    const TPSSource<T, scalar_t> src{kwp, aw.const_data_ptr<scalar_t>(), tpp, K, OH, OW, align_corners};
    grad_input = warp_backward<scalar_t>(
        g, in, src, [&] { return tps_grid_cpu(kw, aw, tp, OH, OW, align_corners); }, interpolation_mode,
        padding_mode, align_corners, fmt, output_mask, on_row);
  });
  if (!output_mask[1]) {
    const auto none = [&] { return at::empty({0}, kernel_weights.options()); };  // three distinct tensors
    return {grad_input, none(), none(), none()};
  }
  auto grad_kw = at::zeros({N, K, 2}, kernel_weights.options().dtype(at::kDouble));
  auto grad_aw = at::zeros({N, 3, 2}, kernel_weights.options().dtype(at::kDouble));
  auto grad_tp = at::zeros({N, K, 2}, kernel_weights.options().dtype(at::kDouble));
  double* gk = grad_kw.mutable_data_ptr<double>();
  double* ga = grad_aw.mutable_data_ptr<double>();
  double* gt = grad_tp.mutable_data_ptr<double>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t h = 0; h < OH; ++h) {
      const double* r = row_sums.data() + (n * OH + h) * per_row;
      for (int i = 0; i < 6; ++i) ga[n * 6 + i] += r[i];
      for (int64_t k = 0; k < K; ++k) {
        gk[(n * K + k) * 2] += r[6 + 4 * k];
        gk[(n * K + k) * 2 + 1] += r[6 + 4 * k + 1];
        gt[(n * K + k) * 2] += r[6 + 4 * k + 2];
        gt[(n * K + k) * 2 + 1] += r[6 + 4 * k + 3];
      }
    }
  }
  const auto dtype = kernel_weights.scalar_type();
  return {grad_input, grad_kw.to(dtype), grad_aw.to(dtype), grad_tp.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, CPU, m) {
  m.impl("grid_sample", &grid_sample_cpu);
  m.impl("_grid_sample_backward", &grid_sample_backward_cpu);
  m.impl("affine_grid_sample", &affine_grid_sample_cpu);
  m.impl("_affine_grid_sample_backward", &affine_grid_sample_backward_cpu);
  m.impl("tps_grid", &tps_grid_cpu);
  m.impl("_tps_grid_backward", &tps_grid_backward_cpu);
  m.impl("tps_grid_sample", &tps_grid_sample_cpu);
  m.impl("_tps_grid_sample_backward", &tps_grid_sample_backward_cpu);
}

}  // namespace visionops
