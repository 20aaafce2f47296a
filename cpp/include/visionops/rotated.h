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
//  * box a is expressed in the frame of box b: b becomes the axis-aligned
//    rectangle [-w/2, w/2] x [-h/2, h/2] and a is rotated by the angle
//    difference only, so identical angles give an exact identity rotation and
//    multiples of 90 degrees give exact 0/1 cosines;
//  * a's corners are clipped against b's four sides one at a time
//    (Sutherland-Hodgman). Each side is a coordinate line, so the inside test
//    is one comparison, new vertices lie exactly on the line, and the
//    interpolation parameter is always within [0, 1]. The clipped area is a
//    continuous function of the input: nearly identical boxes give nearly
//    identical areas, no vertex sorting, no special cases;
//  * the intersection is clamped to min(|a|, |b|), so IoU <= 1 always.
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
  const double dx = ax - bx, dy = ay - by;
  // quick rejection: centres further apart than the sum of the half diagonals
  const double reach = 0.5 * (sqrt(aw * aw + ah * ah) + sqrt(bw * bw + bh * bh)) * (1.0 + 1e-9);
  if (dx * dx + dy * dy > reach * reach) return 0.0;

  double cb, sb, cd, sd;
  cos_sin_degrees(ba, cb, sb);
  cos_sin_degrees(aa - ba, cd, sd);
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

}  // namespace visionops
