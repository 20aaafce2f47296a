// Rotated-rectangle geometry, written once for the CPU and CUDA kernels.
//
// Box convention (detectron2 / torchvision, DESIGN "Conventions"): five values
// (cx, cy, w, h, angle), angle in degrees, counter-clockwise. A point (u, v) in
// the box's own frame (u along w, v along h, origin at the centre) sits at
//     x = cx + cos(a) * u + sin(a) * v
//     y = cy - sin(a) * u + cos(a) * v
// (y points down in an image, so a positive angle turns the box
// counter-clockwise on screen). roi_align_rotated samples with the same map.
//
// Public API (used by box_iou_rotated here and by nms_rotated in the boxes family):
// the same function on CPU and CUDA, so both devices give bit-identical results
// up to the compiler's floating-point contraction (FMA) choices.
//
//   template <typename T> VISIONOPS_HOST_DEVICE double rotated_overlap(const T* a, const T* b, int mode);
//   template <typename T> VISIONOPS_HOST_DEVICE T rotated_iou(const T* a, const T* b, int mode);
//
//   a, b:  pointers to 5 contiguous values (cx, cy, w, h, angle_degrees_ccw), any
//          floating type (float, double, c10::Half, c10::BFloat16).
//   mode:  kRotatedIoU (0): |a & b| / |a | b|;  kRotatedIoF (1): |a & b| / |a|
//          (intersection over the first box's area, mmcv's "iof").
//   result: always in [0, 1], never NaN. 0 when a box has w <= 0 or h <= 0,
//          when any value is NaN or infinite, or when the union is empty.
//          Exactly 1 for two identical boxes of positive area (mode iou) and
//          for a box against itself (mode iof).
//
// How it stays exact enough (the peers' failures listed in issue 4 all come
// from collecting edge intersections in float and sorting them by angle):
//  * everything is computed in double, whatever T is;
//  * one box is expressed in the frame of the other (the thinner one, call it
//    b): b becomes the axis-aligned rectangle [-w/2, w/2] x [-h/2, h/2] and a
//    is rotated by the angle difference only (angles reduced modulo 360
//    exactly first), so identical angles give an exact identity rotation and
//    multiples of 90 degrees give exact 0/1 cosines;
//  * a's corners are clipped against b's four sides one at a time
//    (Sutherland-Hodgman). Each side is a coordinate line, so the inside test
//    is one comparison, new vertices lie exactly on the line, and the
//    interpolation parameter is always within [0, 1]. The clipped area is a
//    continuous function of the input: nearly identical boxes give nearly
//    identical areas, no vertex sorting, no special cases;
//  * the intersection is clamped to min(|a|, |b|), so IoU <= 1 always.
// Accuracy: the absolute error of the intersection area is about 1e-16 x
// (longest side or centre distance) x (longest side of the clipped polygon),
// so the IoU is exact to ~1e-12 while sides and centre distances stay within
// ~1e8 of each other (1e-3 px boxes next to 1e6 px ones, 1e-30 slivers inside
// normal boxes). Beyond that (a 1e30-long side beside a 1e-3 box) the value
// is still finite and in [0, 1], but no longer accurate.
#pragma once

#include <cmath>

#include "visionops/common.h"

namespace visionops {

constexpr int kRotatedIoU = 0;
constexpr int kRotatedIoF = 1;

namespace rotated_detail {

// Enough for any clip sequence: 4 corners, each of the 4 clips adds at most one
// vertex for a convex polygon; the margin guards against rounding making a
// nearly degenerate polygon cross a line more than twice (extra vertices are
// then dropped, never written out of bounds).
constexpr int kMaxVertices = 16;

// cos and sin of an angle in degrees; exact for multiples of 90 degrees.
VISIONOPS_HOST_DEVICE void cos_sin_degrees(double degrees, double& c, double& s) {
  double r = fmod(degrees, 360.0);  // exact
  // reduce to (-180, 180] (exact by Sterbenz' lemma) so small angles keep full precision
  if (r > 180.0) r -= 360.0;
  if (r <= -180.0) r += 360.0;
  if (r == 0.0) {
    c = 1.0;
    s = 0.0;
  } else if (r == 90.0) {
    c = 0.0;
    s = 1.0;
  } else if (r == 180.0) {
    c = -1.0;
    s = 0.0;
  } else if (r == -90.0) {
    c = 0.0;
    s = -1.0;
  } else {
    const double t = r * 0.017453292519943295769;  // pi / 180
    c = cos(t);
    s = sin(t);
  }
}

// Keeps the part of polygon (xs, ys)[0, n) where sign * coordinate <= bound,
// coordinate being x (axis 0) or y (axis 1). Returns the new vertex count.
VISIONOPS_HOST_DEVICE int clip_polygon(const double* xs, const double* ys, int n, int axis, double sign, double bound,
                                       double* out_x, double* out_y) {
  int m = 0;
  if (n == 0) return 0;
  int prev = n - 1;
  double prev_d = sign * (axis == 0 ? xs[prev] : ys[prev]) - bound;  // <= 0: inside
  for (int k = 0; k < n; ++k) {
    const double d = sign * (axis == 0 ? xs[k] : ys[k]) - bound;
    const bool in = d <= 0.0, prev_in = prev_d <= 0.0;
    if (in != prev_in && m < kMaxVertices) {
      // the edge prev -> k crosses the line: t in [0, 1] since d and prev_d differ in sign
      const double t = prev_d / (prev_d - d);
      if (axis == 0) {
        out_x[m] = sign * bound;
        out_y[m] = ys[prev] + t * (ys[k] - ys[prev]);
      } else {
        out_x[m] = xs[prev] + t * (xs[k] - xs[prev]);
        out_y[m] = sign * bound;
      }
      ++m;
    }
    if (in && m < kMaxVertices) {
      out_x[m] = xs[k];
      out_y[m] = ys[k];
      ++m;
    }
    prev = k;
    prev_d = d;
  }
  return m;
}

// Shoelace area, relative to the first vertex to limit cancellation.
VISIONOPS_HOST_DEVICE double polygon_area(const double* xs, const double* ys, int n) {
  if (n < 3) return 0.0;
  double twice = 0.0;
  for (int k = 1; k + 1 < n; ++k) {
    const double ux = xs[k] - xs[0], uy = ys[k] - ys[0];
    const double vx = xs[k + 1] - xs[0], vy = ys[k + 1] - ys[0];
    twice += ux * vy - uy * vx;
  }
  return 0.5 * twice;
}

}  // namespace rotated_detail

// Area of the intersection of two rotated boxes given in double; the boxes
// must be finite with positive sides (rotated_overlap checks that).
VISIONOPS_HOST_DEVICE double rotated_intersection_area(double ax, double ay, double aw, double ah, double aa,
                                                       double bx, double by, double bw, double bh, double ba) {
  using namespace rotated_detail;
  // Work in the frame of the thinner box: its sides become the exact clip lines,
  // so a sliver (w = 1e-30 next to h = 1e-3) keeps its width instead of losing
  // it when rotated into the other box's coordinates.
  if ((aw < ah ? aw : ah) < (bw < bh ? bw : bh)) {
    double t;
    t = ax, ax = bx, bx = t;
    t = ay, ay = by, by = t;
    t = aw, aw = bw, bw = t;
    t = ah, ah = bh, bh = t;
    t = aa, aa = ba, ba = t;
  }
  const double dx = ax - bx, dy = ay - by;
  // quick rejection: centres further apart than the sum of the half diagonals
  const double reach = 0.5 * (sqrt(aw * aw + ah * ah) + sqrt(bw * bw + bh * bh)) * (1.0 + 1e-9);
  if (dx * dx + dy * dy > reach * reach) return 0.0;

  double cb, sb, cd, sd;
  cos_sin_degrees(ba, cb, sb);
  // reduce both angles first (exact) so that 1e30 - 1 degrees keeps its "- 1"
  cos_sin_degrees(fmod(aa, 360.0) - fmod(ba, 360.0), cd, sd);
  // a's centre in b's frame (inverse of the box map in the header comment)
  const double px = cb * dx - sb * dy;
  const double py = sb * dx + cb * dy;
  const double hw = 0.5 * aw, hh = 0.5 * ah;
  const double us[4] = {-hw, hw, hw, -hw};
  const double vs[4] = {-hh, -hh, hh, hh};
  double x0[kMaxVertices], y0[kMaxVertices], x1[kMaxVertices], y1[kMaxVertices];
  for (int k = 0; k < 4; ++k) {
    x0[k] = px + cd * us[k] + sd * vs[k];
    y0[k] = py - sd * us[k] + cd * vs[k];
  }
  const double bhw = 0.5 * bw, bhh = 0.5 * bh;
  int n = 4;
  n = clip_polygon(x0, y0, n, 0, 1.0, bhw, x1, y1);   // x <= w/2
  n = clip_polygon(x1, y1, n, 0, -1.0, bhw, x0, y0);  // x >= -w/2
  n = clip_polygon(x0, y0, n, 1, 1.0, bhh, x1, y1);   // y <= h/2
  n = clip_polygon(x1, y1, n, 1, -1.0, bhh, x0, y0);  // y >= -h/2
  const double area = polygon_area(x0, y0, n);
  return area > 0.0 ? area : 0.0;
}

template <typename T>
VISIONOPS_HOST_DEVICE double rotated_overlap(const T* a, const T* b, int mode) {
  double va[5], vb[5];
  bool identical = true;
  for (int k = 0; k < 5; ++k) {
    va[k] = static_cast<double>(a[k]);
    vb[k] = static_cast<double>(b[k]);
    if (!is_finite_value(va[k]) || !is_finite_value(vb[k])) return 0.0;
    identical = identical && va[k] == vb[k];
  }
  if (!(va[2] > 0.0 && va[3] > 0.0)) return 0.0;
  const double area_a = va[2] * va[3];
  if (mode == kRotatedIoF && identical) return 1.0;
  if (!(vb[2] > 0.0 && vb[3] > 0.0)) return 0.0;
  const double area_b = vb[2] * vb[3];
  if (identical) return 1.0;
  double inter = rotated_intersection_area(va[0], va[1], va[2], va[3], va[4], vb[0], vb[1], vb[2], vb[3], vb[4]);
  const double smaller = area_a < area_b ? area_a : area_b;
  inter = inter < smaller ? inter : smaller;
  double r;
  if (mode == kRotatedIoF) {
    r = inter / area_a;
  } else {
    const double uni = area_a + area_b - inter;
    r = uni > 0.0 ? inter / uni : 0.0;
  }
  // r is in [0, 1] by construction; the checks also map overflow (inf / inf) to 0
  return r >= 0.0 && r <= 1.0 ? r : (r > 1.0 ? 1.0 : 0.0);
}

template <typename T>
VISIONOPS_HOST_DEVICE T rotated_iou(const T* a, const T* b, int mode) {
  return static_cast<T>(rotated_overlap(a, b, mode));
}

// ---------------------------------------------------------------- rotated RoI pooling geometry
//
// A rotated RoI (batch_index, cx, cy, w, h, angle) in input-image coordinates is
// scaled by spatial_scale onto the feature map; its frame then maps local (u, v)
// to feature coordinates with the box map of the header comment. Both pooling
// ops visit, per output bin, a regular lattice of local points
//     u_i = u_first + i * u_step (i < u_count),   v_j = v_first + j * v_step (j < v_count)
// and only the lattice points whose feature position can reach the map matter.
// RotatedLattice finds those index ranges in double, widened by a margin that
// covers every rounding of the (float) sample positions, so that the kernels
// stay exact (each candidate is still tested exactly) while absurd RoIs (w = 1e9,
// a million samples per bin) cost no more than the part of them over the map.

// Products and sums that the compiler may not fuse into an FMA. nvcc contracts
// a * b + c by default while the host build (x86-64 without -mfma) cannot, so
// sample positions written with these round identically on both devices: the
// nearest-cell decisions of roi_pool_rotated and the sample positions of
// roi_align_rotated are then the same on CPU and CUDA, bit for bit.
VISIONOPS_HOST_DEVICE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
VISIONOPS_HOST_DEVICE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
VISIONOPS_HOST_DEVICE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
VISIONOPS_HOST_DEVICE double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// Sample indices i whose position first + i * step lies in [lo, hi], widened by
// one index on each side and clamped to [0, count).
VISIONOPS_HOST_DEVICE void lattice_index_range(double lo, double hi, double first, double step, int64_t count,
                                               int64_t& i0, int64_t& i1) {
  i0 = 0;
  i1 = count;
  if (!(lo <= hi)) {
    i1 = 0;
    return;
  }
  if (!(step > 0.0)) return;  // a zero step puts every sample at `first`: the caller tests them
  const double a = (lo - first) / step - 1.0, b = (hi - first) / step + 2.0;
  if (a > 0.0) i0 = a >= static_cast<double>(count) ? count : static_cast<int64_t>(a);
  if (b < static_cast<double>(count)) i1 = b <= 0.0 ? 0 : static_cast<int64_t>(b);
  if (i1 < i0) i1 = i0;
}

// u such that lo <= a * u + c0 <= hi, as [ulo, uhi] (may be infinite or empty).
VISIONOPS_HOST_DEVICE void solve_linear_band(double a, double c0, double lo, double hi, double& ulo, double& uhi) {
  const double inf = 1e300;  // beyond any lattice position (those are clamped to 2^30)
  if (a > 0.0) {
    ulo = (lo - c0) / a;
    uhi = (hi - c0) / a;
  } else if (a < 0.0) {
    ulo = (hi - c0) / a;
    uhi = (lo - c0) / a;
  } else if (lo <= c0 && c0 <= hi) {
    ulo = -inf;
    uhi = inf;
  } else {
    ulo = inf;
    uhi = -inf;
  }
}

// Lattices of at most this many points (every real RoI bin) are visited whole:
// the exact per-sample test rejects what lies off the map, and the search's
// double-precision divisions stay off the hot path.
constexpr int64_t kWholeLattice = 64;

struct RotatedLattice {
  double cx, cy, c, s;  // frame
  double u_first, u_step, v_first, v_step;
  int64_t u_count, v_count;
  double margin;  // in feature cells
  // false: always search (the deterministic CUDA backward asks about one cell's
  // neighbourhood, where the search rejects most bins of a RoI at once)
  bool allow_whole = true;

  // (each count bounded first: their product could overflow for a huge sampling_ratio)
  VISIONOPS_HOST_DEVICE bool whole() const {
    return allow_whole && u_count <= kWholeLattice && v_count <= kWholeLattice && u_count * v_count <= kWholeLattice;
  }

  // Rows j of the lattice that can come within [x0, x1] x [y0, y1] of the map.
  VISIONOPS_HOST_DEVICE void rows(double x0, double x1, double y0, double y1, int64_t& j0, int64_t& j1) const {
    if (whole()) {
      j0 = 0;
      j1 = v_count;
      return;
    }
    double vmin = 1e300, vmax = -1e300;
    const double xs[2] = {x0, x1}, ys[2] = {y0, y1};
    for (int a = 0; a < 2; ++a) {
      for (int b = 0; b < 2; ++b) {
        const double v = s * (xs[a] - cx) + c * (ys[b] - cy);
        vmin = v < vmin ? v : vmin;
        vmax = v > vmax ? v : vmax;
      }
    }
    lattice_index_range(vmin - 2.0 * margin, vmax + 2.0 * margin, v_first, v_step, v_count, j0, j1);
  }

  // Columns i of row position v that can fall within [x0, x1] x [y0, y1].
  VISIONOPS_HOST_DEVICE void cols(double v, double x0, double x1, double y0, double y1, int64_t& i0,
                                  int64_t& i1) const {
    if (whole()) {
      i0 = 0;
      i1 = u_count;
      return;
    }
    double a0, a1, b0, b1;
    // x = cx + c u + s v,  y = cy - s u + c v
    solve_linear_band(c, cx + s * v, x0 - margin, x1 + margin, a0, a1);
    solve_linear_band(-s, cy + c * v, y0 - margin, y1 + margin, b0, b1);
    const double lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
    lattice_index_range(lo, hi, u_first, u_step, u_count, i0, i1);
  }
};

// Margin (in feature cells) for the lattice search: one cell of slack plus what
// float rounding can shift a sample by. A sample's position is
// cx + (c u + s v) with |u|, |v| <= (w + h) / 2 and u itself a sum of terms of
// that size: a few float roundings of magnitude w + h (the final addition of cx
// rounds relative to the result, which is near the map for the samples that
// matter). 2e-6 is ~30 float epsilons.
VISIONOPS_HOST_DEVICE double lattice_margin(double w, double h) { return 1.0 + 2e-6 * (fabs(w) + fabs(h)); }

// Rotated RoIs are at most this many feature cells wide and high (larger ones
// are clamped). No feature map is that large, and it bounds the lattice margin
// above, hence the work per bin, for absurd boxes (w = 1e9).
constexpr double kMaxRotatedRoiSize = 16777216.0;  // 2^24

template <typename T>
VISIONOPS_HOST_DEVICE T clamp_roi_size(T v) {
  return v > T(kMaxRotatedRoiSize) ? T(kMaxRotatedRoiSize) : v;
}

// RoIAlignRotated (detectron2's ROIAlignRotated): bin (ph, pw) averages
// grid_v x grid_u bilinear samples at local
//     u = -w/2 + pw * bin_u + (i + .5) * bin_u / grid_u,  v = -h/2 + ph * bin_v + (j + .5) * bin_v / grid_v
// around the centre (cx * scale - offset, cy * scale - offset), offset = 0.5
// when aligned (detectron2 always is), sizes w * scale, h * scale (at least 1
// when not aligned, as RoIAlign), grid = sampling_ratio or ceil(size / pooled).
template <typename T>
struct RotatedAlignRoi {
  int64_t batch;  // -1: invalid (batch index out of range, non-finite or negative size): pools to 0
  T cx, cy, c, s;
  T start_u, start_v, bin_u, bin_v;
  int64_t grid_u, grid_v;
  T count;

  // start + p * bin + (i + .5) * bin / grid, as detectron2 (without FMA, see mul_rn)
  VISIONOPS_HOST_DEVICE T u(int64_t pw, int64_t i) const {
    const T offset = mul_rn(static_cast<T>(static_cast<float>(i) + .5f), bin_u) / static_cast<T>(grid_u);
    return add_rn(add_rn(start_u, mul_rn(static_cast<T>(pw), bin_u)), offset);
  }
  VISIONOPS_HOST_DEVICE T v(int64_t ph, int64_t j) const {
    const T offset = mul_rn(static_cast<T>(static_cast<float>(j) + .5f), bin_v) / static_cast<T>(grid_v);
    return add_rn(add_rn(start_v, mul_rn(static_cast<T>(ph), bin_v)), offset);
  }
  VISIONOPS_HOST_DEVICE T x(T uu, T vv) const { return add_rn(add_rn(cx, mul_rn(c, uu)), mul_rn(s, vv)); }
  VISIONOPS_HOST_DEVICE T y(T uu, T vv) const { return add_rn(add_rn(cy, -mul_rn(s, uu)), mul_rn(c, vv)); }

  VISIONOPS_HOST_DEVICE RotatedLattice lattice(int64_t ph, int64_t pw) const {
    RotatedLattice l;
    l.cx = static_cast<double>(cx);
    l.cy = static_cast<double>(cy);
    l.c = static_cast<double>(c);
    l.s = static_cast<double>(s);
    l.u_step = static_cast<double>(bin_u) / static_cast<double>(grid_u > 0 ? grid_u : 1);
    l.v_step = static_cast<double>(bin_v) / static_cast<double>(grid_v > 0 ? grid_v : 1);
    l.u_first = static_cast<double>(start_u) + static_cast<double>(pw) * static_cast<double>(bin_u) + 0.5 * l.u_step;
    l.v_first = static_cast<double>(start_v) + static_cast<double>(ph) * static_cast<double>(bin_v) + 0.5 * l.v_step;
    l.u_count = grid_u;
    l.v_count = grid_v;
    l.margin = lattice_margin(static_cast<double>(start_u) * 2.0, static_cast<double>(start_v) * 2.0);
    return l;
  }

  // Radius around (cx, cy) outside which no sample lies (for quick rejection).
  VISIONOPS_HOST_DEVICE double radius() const {
    const double a = static_cast<double>(start_u), b = static_cast<double>(start_v);
    return sqrt(a * a + b * b) + 2.0 + lattice_margin(2.0 * a, 2.0 * b);
  }
};

template <typename T, typename R>
VISIONOPS_HOST_DEVICE RotatedAlignRoi<T> make_rotated_align_roi(const R* roi, T spatial_scale, int64_t pooled_height,
                                                               int64_t pooled_width, int64_t sampling_ratio,
                                                               bool aligned, int64_t batch_size) {
  RotatedAlignRoi<T> r;
  const T b = static_cast<T>(roi[0]);
  const T x = static_cast<T>(roi[1]), y = static_cast<T>(roi[2]);
  const T w = static_cast<T>(roi[3]), h = static_cast<T>(roi[4]), a = static_cast<T>(roi[5]);
  const bool ok = b >= T(0) && b < static_cast<T>(batch_size) && is_finite_value(x) && is_finite_value(y) &&
                  is_finite_value(w) && is_finite_value(h) && is_finite_value(a) && w >= T(0) && h >= T(0);
  r.batch = ok ? static_cast<int64_t>(b) : -1;
  const T offset = aligned ? T(0.5) : T(0);
  r.cx = clamp_coordinate(add_rn(mul_rn(x, spatial_scale), -offset));
  r.cy = clamp_coordinate(add_rn(mul_rn(y, spatial_scale), -offset));
  T width = ok ? clamp_roi_size(w * spatial_scale) : T(0);
  T height = ok ? clamp_roi_size(h * spatial_scale) : T(0);
  if (!aligned) {
    width = width > T(1) ? width : T(1);
    height = height > T(1) ? height : T(1);
  }
  double cd = 1.0, sd = 0.0;
  if (ok) rotated_detail::cos_sin_degrees(static_cast<double>(a), cd, sd);
  r.c = static_cast<T>(cd);
  r.s = static_cast<T>(sd);
  r.start_u = -width / T(2);
  r.start_v = -height / T(2);
  r.bin_u = width / static_cast<T>(pooled_width);
  r.bin_v = height / static_cast<T>(pooled_height);
  if (sampling_ratio > 0) {
    r.grid_u = r.grid_v = sampling_ratio;
  } else {
    const T gu = ceil(width / static_cast<T>(pooled_width));
    const T gv = ceil(height / static_cast<T>(pooled_height));
    r.grid_u = gu > T(0) ? static_cast<int64_t>(gu) : 0;
    r.grid_v = gv > T(0) ? static_cast<int64_t>(gv) : 0;
  }
  const T count = static_cast<T>(r.grid_u) * static_cast<T>(r.grid_v);
  r.count = count > T(1) ? count : T(1);
  return r;
}

// RRoI max pooling (RRPN, Algorithm 2; SEED_NOTES): bin (ph, pw) of a RoI of
// feature size w' = w * scale, h' = h * scale is the sub-rectangle with local
// top-left corner (-w'/2 + pw * w'/PW, -h'/2 + ph * h'/PH); it is walked along
// the rotated axes in unit steps, u = corner_u + i for i < max(1, ceil(w'/PW))
// (same for v), each point read at its nearest cell (floor(x + .5),
// floor(y + .5)); points off the map are skipped. Output: the max (NaN
// propagates, first maximum wins, rows j outer, columns i inner); 0 with
// argmax -1 when no point of the bin lands on the map.
template <typename T>
struct RotatedPoolRoi {
  int64_t batch;  // -1: invalid, every bin empty
  T cx, cy, c, s;
  T start_u, start_v, bin_u, bin_v;
  int64_t steps_u, steps_v;

  // (without FMA, see mul_rn: the nearest-cell decision must not depend on the device)
  VISIONOPS_HOST_DEVICE T u(int64_t pw, int64_t i) const {
    return add_rn(add_rn(start_u, mul_rn(static_cast<T>(pw), bin_u)), static_cast<T>(i));
  }
  VISIONOPS_HOST_DEVICE T v(int64_t ph, int64_t j) const {
    return add_rn(add_rn(start_v, mul_rn(static_cast<T>(ph), bin_v)), static_cast<T>(j));
  }
  // nearest cell of a local point, -1 when off the map
  VISIONOPS_HOST_DEVICE int64_t cell(T uu, T vv, int64_t height, int64_t width) const {
    const T xf = floor(add_rn(add_rn(add_rn(cx, mul_rn(c, uu)), mul_rn(s, vv)), T(0.5)));
    const T yf = floor(add_rn(add_rn(add_rn(cy, -mul_rn(s, uu)), mul_rn(c, vv)), T(0.5)));
    if (!(xf >= T(0) && xf < static_cast<T>(width) && yf >= T(0) && yf < static_cast<T>(height))) return -1;
    return static_cast<int64_t>(yf) * width + static_cast<int64_t>(xf);
  }

  VISIONOPS_HOST_DEVICE RotatedLattice lattice(int64_t ph, int64_t pw) const {
    RotatedLattice l;
    l.cx = static_cast<double>(cx);
    l.cy = static_cast<double>(cy);
    l.c = static_cast<double>(c);
    l.s = static_cast<double>(s);
    l.u_step = 1.0;
    l.v_step = 1.0;
    l.u_first = static_cast<double>(start_u) + static_cast<double>(pw) * static_cast<double>(bin_u);
    l.v_first = static_cast<double>(start_v) + static_cast<double>(ph) * static_cast<double>(bin_v);
    l.u_count = steps_u;
    l.v_count = steps_v;
    l.margin = lattice_margin(static_cast<double>(start_u) * 2.0, static_cast<double>(start_v) * 2.0);
    return l;
  }

  VISIONOPS_HOST_DEVICE double radius() const {
    const double a = static_cast<double>(start_u), b = static_cast<double>(start_v);
    return sqrt(a * a + b * b) + 3.0 + lattice_margin(2.0 * a, 2.0 * b);
  }
};

template <typename T, typename R>
VISIONOPS_HOST_DEVICE RotatedPoolRoi<T> make_rotated_pool_roi(const R* roi, T spatial_scale, int64_t pooled_height,
                                                             int64_t pooled_width, int64_t batch_size) {
  RotatedPoolRoi<T> r;
  const T b = static_cast<T>(roi[0]);
  const T x = static_cast<T>(roi[1]), y = static_cast<T>(roi[2]);
  const T w = static_cast<T>(roi[3]), h = static_cast<T>(roi[4]), a = static_cast<T>(roi[5]);
  const bool ok = b >= T(0) && b < static_cast<T>(batch_size) && is_finite_value(x) && is_finite_value(y) &&
                  is_finite_value(w) && is_finite_value(h) && is_finite_value(a) && w >= T(0) && h >= T(0);
  r.batch = ok ? static_cast<int64_t>(b) : -1;
  r.cx = clamp_coordinate(x * spatial_scale);
  r.cy = clamp_coordinate(y * spatial_scale);
  const T width = ok ? clamp_roi_size(w * spatial_scale) : T(0);
  const T height = ok ? clamp_roi_size(h * spatial_scale) : T(0);
  double cd = 1.0, sd = 0.0;
  if (ok) rotated_detail::cos_sin_degrees(static_cast<double>(a), cd, sd);
  r.c = static_cast<T>(cd);
  r.s = static_cast<T>(sd);
  r.start_u = -width / T(2);
  r.start_v = -height / T(2);
  r.bin_u = width / static_cast<T>(pooled_width);
  r.bin_v = height / static_cast<T>(pooled_height);
  const T su = ceil(r.bin_u), sv = ceil(r.bin_v);
  r.steps_u = su > T(1) ? static_cast<int64_t>(su) : 1;
  r.steps_v = sv > T(1) ? static_cast<int64_t>(sv) : 1;
  return r;
}

}  // namespace visionops
