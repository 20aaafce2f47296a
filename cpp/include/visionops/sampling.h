// Grid-sampling math shared by the CPU (.cpp) and CUDA (.cu) kernels: mapping
// normalised coordinates to pixels with the three padding modes (and the
// derivative of that map), bilinear / nearest taps, the affine base grid and
// the thin-plate-spline radial basis. Semantics are those of
// torch.nn.functional.grid_sample / affine_grid.
#pragma once

#include <cmath>
#include <cstdint>

#include "visionops/common.h"

namespace visionops {

enum class Interp : int64_t { Bilinear = 0, Nearest = 1 };
enum class Padding : int64_t { Zeros = 0, Border = 1, Reflection = 2 };

// Thin wrappers: device code needs the CUDA overloads, host code std::.
#if defined(__CUDA_ARCH__)
VISIONOPS_HOST_DEVICE float s_floor(float v) { return floorf(v); }
VISIONOPS_HOST_DEVICE double s_floor(double v) { return ::floor(v); }
VISIONOPS_HOST_DEVICE float s_fmod(float a, float b) { return fmodf(a, b); }
VISIONOPS_HOST_DEVICE double s_fmod(double a, double b) { return ::fmod(a, b); }
VISIONOPS_HOST_DEVICE float s_rint(float v) { return rintf(v); }
VISIONOPS_HOST_DEVICE double s_rint(double v) { return ::rint(v); }
VISIONOPS_HOST_DEVICE float s_log(float v) { return logf(v); }
VISIONOPS_HOST_DEVICE double s_log(double v) { return ::log(v); }
#else
template <typename T>
inline T s_floor(T v) { return std::floor(v); }
template <typename T>
inline T s_fmod(T a, T b) { return std::fmod(a, b); }
template <typename T>
inline T s_rint(T v) { return std::nearbyint(v); }  // round half to even, as torch's nearest mode
template <typename T>
inline T s_log(T v) { return std::log(v); }
#endif

// [-1, 1] -> pixel coordinate; `scale` is d(pixel)/d(normalised).
template <typename T>
VISIONOPS_HOST_DEVICE T unnormalize(T c, int64_t size, bool align_corners, T& scale) {
  if (align_corners) {
    scale = static_cast<T>(size - 1) / T(2);
    return (c + T(1)) * scale;
  }
  scale = static_cast<T>(size) / T(2);
  return ((c + T(1)) * static_cast<T>(size) - T(1)) / T(2);
}

// Clamp into [0, size - 1]; the derivative is 0 on (and beyond) the clamp limits.
template <typename T>
VISIONOPS_HOST_DEVICE T clip_coordinate(T c, int64_t size, T& d) {
  const T hi = static_cast<T>(size - 1);
  if (!(c > T(0))) {  // also catches NaN
    d = T(0);
    return T(0);
  }
  if (c >= hi) {
    d = T(0);
    return hi;
  }
  d = T(1);
  return c;
}

// Reflect c into [twice_low / 2, twice_high / 2] (mirror at the ends, repeated).
template <typename T>
VISIONOPS_HOST_DEVICE T reflect_coordinate(T c, int64_t twice_low, int64_t twice_high, T& d) {
  if (twice_low == twice_high) {
    d = T(0);
    return T(0);
  }
  const T low = static_cast<T>(twice_low) / T(2);
  const T span = static_cast<T>(twice_high - twice_low) / T(2);
  T v = c - low;
  T sign = T(1);
  if (v < T(0)) {
    sign = T(-1);
    v = -v;
  }
  const T rem = s_fmod(v, span);
  const T flips = s_floor(v / span);
  // parity of a float count of flips: exact for any flips below 2^53 / 2^24
  const bool even = s_fmod(flips, T(2)) == T(0);
  if (even) {
    d = sign;
    return rem + low;
  }
  d = -sign;
  return span - rem + low;
}

// Pixel coordinate actually sampled for normalised c, with d(pixel)/d(c).
// Non-finite or huge values become -100 (outside any map), so no float -> int
// conversion overflows; with zeros padding they read 0, as in torch.
template <typename T>
VISIONOPS_HOST_DEVICE T source_coordinate(T c, int64_t size, Padding padding, bool align_corners, T& d) {
  T scale;
  T v = unnormalize(c, size, align_corners, scale);
  T d_pad = T(1);
  if (padding == Padding::Border) {
    v = clip_coordinate(v, size, d_pad);
  } else if (padding == Padding::Reflection) {
    T d_ref, d_clip;
    v = align_corners ? reflect_coordinate(v, 0, 2 * (size - 1), d_ref)
                      : reflect_coordinate(v, -1, 2 * size - 1, d_ref);
    v = clip_coordinate(v, size, d_clip);
    d_pad = d_ref * d_clip;
  }
  if (!is_finite_value(v) || v > T(kMaxCoordinate) || v < T(-kMaxCoordinate)) {
    d = T(0);
    return T(-100);
  }
  d = scale * d_pad;
  return v;
}

// floor of a value known to be finite and within +-2^30.
template <typename T>
VISIONOPS_HOST_DEVICE T floor_bounded(T v) {
  const T t = static_cast<T>(static_cast<int64_t>(v));
  return t > v ? t - T(1) : t;
}

// The four bilinear taps around (x, y): corners x0, x0 + 1 and y0, y0 + 1 with
// fractional parts fx, fy. Corners outside the map read 0 (after padding, the
// coordinate itself is already inside for border / reflection).
template <typename T>
struct Bilinear {
  int64_t x0, y0;
  T fx, fy;
  VISIONOPS_HOST_DEVICE Bilinear(T x, T y) {
    // x, y come from source_coordinate: finite and within +-2^30, so the
    // truncating conversion is safe (and cheaper than a libm floor call)
    const T xf = floor_bounded(x), yf = floor_bounded(y);
    x0 = static_cast<int64_t>(xf);
    y0 = static_cast<int64_t>(yf);
    fx = x - xf;
    fy = y - yf;
  }
};

VISIONOPS_HOST_DEVICE bool inside(int64_t x, int64_t y, int64_t W, int64_t H) {
  return x >= 0 && x < W && y >= 0 && y < H;
}

// Coordinate of output column / row i of an affine_grid base grid with `size`
// samples: linspace(-1, 1) (align_corners) or the pixel centres, 0 for size 1.
template <typename T>
VISIONOPS_HOST_DEVICE T base_coordinate(int64_t i, int64_t size, bool align_corners) {
  if (size <= 1) return T(0);
  const T step = T(2) / static_cast<T>(size - 1);
  T v = T(-1) + step * static_cast<T>(i);
  if (!align_corners) v = v * static_cast<T>(size - 1) / static_cast<T>(size);
  return v;
}

// TPS radial basis U as a function of the squared distance s = r^2:
// U = s log s (= r^2 log r^2), U(0) = 0.
template <typename T>
VISIONOPS_HOST_DEVICE T tps_radial(T s) {
  return s > T(0) ? s * s_log(s) : T(0);
}

// dU/ds = log s + 1; multiplied by ds/dc = 2 (c - p) it tends to 0 at s = 0,
// so 0 is returned there.
template <typename T>
VISIONOPS_HOST_DEVICE T tps_radial_ds(T s) {
  return s > T(0) ? s_log(s) + T(1) : T(0);
}

}  // namespace visionops

namespace visionops {

// ---------------------------------------------------------------- coordinate sources
// Each maps output point (n, h, w) of an OH x OW grid to the normalised input
// coordinate (x, y) it samples. The fused ops compute it on the fly instead of
// reading a materialised grid.

// A [N, OH, OW, 2] grid, contiguous.
template <typename T, typename scalar_t>
struct GridSource {
  const scalar_t* grid;
  int64_t OH, OW;
  VISIONOPS_HOST_DEVICE void operator()(int64_t n, int64_t h, int64_t w, T& x, T& y) const {
    const scalar_t* g = grid + ((n * OH + h) * OW + w) * 2;
    x = static_cast<T>(g[0]);
    y = static_cast<T>(g[1]);
  }
};

// theta [N, 2, 3] contiguous: (x, y) = theta @ (x_t, y_t, 1) (STN).
template <typename T, typename scalar_t>
struct AffineSource {
  const scalar_t* theta;
  int64_t OH, OW;
  bool align_corners;
  VISIONOPS_HOST_DEVICE void operator()(int64_t n, int64_t h, int64_t w, T& x, T& y) const {
    const scalar_t* t = theta + n * 6;
    const T xt = base_coordinate<T>(w, OW, align_corners), yt = base_coordinate<T>(h, OH, align_corners);
    x = static_cast<T>(t[0]) * xt + static_cast<T>(t[1]) * yt + static_cast<T>(t[2]);
    y = static_cast<T>(t[3]) * xt + static_cast<T>(t[4]) * yt + static_cast<T>(t[5]);
  }
};

// Thin-plate spline: kernel_weights [N, K, 2], affine_weights [N, 3, 2] and
// target_points [N, K, 2], all contiguous:
// (x, y) = a_0 + a_1 x_t + a_2 y_t + sum_k w_k U(|p_t - c_k|^2).
template <typename T, typename scalar_t>
struct TPSSource {
  const scalar_t* kernel_weights;
  const scalar_t* affine_weights;
  const scalar_t* target_points;
  int64_t K, OH, OW;
  bool align_corners;
  VISIONOPS_HOST_DEVICE void operator()(int64_t n, int64_t h, int64_t w, T& x, T& y) const {
    const T xt = base_coordinate<T>(w, OW, align_corners), yt = base_coordinate<T>(h, OH, align_corners);
    const scalar_t* a = affine_weights + n * 6;
    x = static_cast<T>(a[0]) + static_cast<T>(a[2]) * xt + static_cast<T>(a[4]) * yt;
    y = static_cast<T>(a[1]) + static_cast<T>(a[3]) * xt + static_cast<T>(a[5]) * yt;
    const scalar_t* kw = kernel_weights + n * K * 2;
    const scalar_t* c = target_points + n * K * 2;
    for (int64_t k = 0; k < K; ++k) {
      const T dx = xt - static_cast<T>(c[2 * k]), dy = yt - static_cast<T>(c[2 * k + 1]);
      const T u = tps_radial(dx * dx + dy * dy);
      x += static_cast<T>(kw[2 * k]) * u;
      y += static_cast<T>(kw[2 * k + 1]) * u;
    }
  }
};

// ---------------------------------------------------------------- one output point
// Strides of the input [N, C, H, W] (any layout) and of the output.
struct Strides4 {
  int64_t n, c, y, x;
};

// Samples every channel of image n at normalised (gx, gy) into out[c * os_c].
template <typename T, typename scalar_t>
VISIONOPS_HOST_DEVICE void sample_point(const scalar_t* in, Strides4 s, int64_t C, int64_t H, int64_t W, T gx, T gy,
                                        Interp interp, Padding padding, bool align_corners, scalar_t* out,
                                        int64_t os_c) {
  T dx, dy;
  const T x = source_coordinate(gx, W, padding, align_corners, dx);
  const T y = source_coordinate(gy, H, padding, align_corners, dy);
  if (interp == Interp::Nearest) {
    const int64_t xi = static_cast<int64_t>(s_rint(x)), yi = static_cast<int64_t>(s_rint(y));
    const bool ok = inside(xi, yi, W, H);
    const scalar_t* p = ok ? in + yi * s.y + xi * s.x : in;
    for (int64_t c = 0; c < C; ++c) out[c * os_c] = ok ? p[c * s.c] : scalar_t(0);
    return;
  }
  const Bilinear<T> b(x, y);
  const int64_t x1 = b.x0 + 1, y1 = b.y0 + 1;
  const bool m00 = inside(b.x0, b.y0, W, H), m01 = inside(x1, b.y0, W, H), m10 = inside(b.x0, y1, W, H),
             m11 = inside(x1, y1, W, H);
  const T w00 = (T(1) - b.fx) * (T(1) - b.fy), w01 = b.fx * (T(1) - b.fy), w10 = (T(1) - b.fx) * b.fy,
          w11 = b.fx * b.fy;
  const int64_t o00 = b.y0 * s.y + b.x0 * s.x;
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* p = in + o00 + c * s.c;
    T v = T(0);
    if (m00) v += w00 * static_cast<T>(p[0]);
    if (m01) v += w01 * static_cast<T>(p[s.x]);
    if (m10) v += w10 * static_cast<T>(p[s.y]);
    if (m11) v += w11 * static_cast<T>(p[s.y + s.x]);
    out[c * os_c] = static_cast<scalar_t>(v);
  }
}

// d loss / d (gx, gy) of one output point, summed over channels; `g` is the
// output gradient of channel 0 at that point, channel stride gs_c.
template <typename T, typename scalar_t>
VISIONOPS_HOST_DEVICE void point_grid_grad(const scalar_t* in, Strides4 s, int64_t C, int64_t H, int64_t W, T gx, T gy,
                                           Interp interp, Padding padding, bool align_corners, const scalar_t* g,
                                           int64_t gs_c, T& out_x, T& out_y) {
  out_x = T(0);
  out_y = T(0);
  if (interp == Interp::Nearest) return;  // piecewise constant in the grid
  T dx, dy;
  const T x = source_coordinate(gx, W, padding, align_corners, dx);
  const T y = source_coordinate(gy, H, padding, align_corners, dy);
  const Bilinear<T> b(x, y);
  const int64_t x1 = b.x0 + 1, y1 = b.y0 + 1;
  const bool m00 = inside(b.x0, b.y0, W, H), m01 = inside(x1, b.y0, W, H), m10 = inside(b.x0, y1, W, H),
             m11 = inside(x1, y1, W, H);
  const int64_t o00 = b.y0 * s.y + b.x0 * s.x;
  T ax = T(0), ay = T(0);
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* p = in + o00 + c * s.c;
    const T v00 = m00 ? static_cast<T>(p[0]) : T(0), v01 = m01 ? static_cast<T>(p[s.x]) : T(0),
            v10 = m10 ? static_cast<T>(p[s.y]) : T(0), v11 = m11 ? static_cast<T>(p[s.y + s.x]) : T(0);
    const T go = static_cast<T>(g[c * gs_c]);
    ax += go * ((v01 - v00) * (T(1) - b.fy) + (v11 - v10) * b.fy);
    ay += go * ((v10 - v00) * (T(1) - b.fx) + (v11 - v01) * b.fx);
  }
  out_x = ax * dx;
  out_y = ay * dy;
}

// The (at most four) input cells an output point reads, as offsets
// y * sy + x * sx into its plane, and their weights, for scattering the output
// gradient back. Returns the number of taps.
template <typename T>
VISIONOPS_HOST_DEVICE int point_taps(int64_t H, int64_t W, int64_t sy, int64_t sx, T gx, T gy, Interp interp,
                                     Padding padding, bool align_corners, int64_t* offset, T* weight) {
  T dx, dy;
  const T x = source_coordinate(gx, W, padding, align_corners, dx);
  const T y = source_coordinate(gy, H, padding, align_corners, dy);
  if (interp == Interp::Nearest) {
    const int64_t xi = static_cast<int64_t>(s_rint(x)), yi = static_cast<int64_t>(s_rint(y));
    if (!inside(xi, yi, W, H)) return 0;
    offset[0] = yi * sy + xi * sx;
    weight[0] = T(1);
    return 1;
  }
  const Bilinear<T> b(x, y);
  int count = 0;
  for (int a = 0; a < 2; ++a) {
    for (int bx = 0; bx < 2; ++bx) {
      const int64_t xi = b.x0 + bx, yi = b.y0 + a;
      if (!inside(xi, yi, W, H)) continue;
      offset[count] = yi * sy + xi * sx;
      weight[count] = (bx ? b.fx : T(1) - b.fx) * (a ? b.fy : T(1) - b.fy);
      ++count;
    }
  }
  return count;
}

}  // namespace visionops
