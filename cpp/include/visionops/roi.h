// RoIAlign / RoIPool geometry, written once for the CPU and CUDA kernels.
//
// The formulas follow torchvision's roi_align / roi_pool (no "+1" in RoIAlign,
// "+1" and rounding in RoIPool, as torchvision does), so results match it to
// rounding. Where torchvision has undefined behaviour (NaN or huge coordinates
// cast to int, sample grids that overflow int) the helpers here give a defined
// answer instead: such RoIs are "invalid" and pool to zeros.
#pragma once

#include <cmath>

#include "visionops/common.h"

namespace visionops {

// One coordinate of a bilinear sample: the two neighbouring cells and their
// weights. Returns false when the sample lies outside [-1, size] (it then
// contributes nothing), which also rejects NaN.
template <typename T>
VISIONOPS_HOST_DEVICE bool bilinear_axis(T pos, int64_t size, int64_t& low, int64_t& high, T& w_low,
                                         T& w_high) {
  if (!(pos >= T(-1) && pos <= static_cast<T>(size))) return false;
  if (pos <= T(0)) pos = T(0);
  low = static_cast<int64_t>(pos);
  if (low >= size - 1) {
    low = high = size - 1;
    pos = static_cast<T>(low);
  } else {
    high = low + 1;
  }
  w_high = pos - static_cast<T>(low);
  w_low = T(1) - w_high;
  return true;
}

// The sampling layout of one RoI along one axis: bin p's samples sit at
// start + p * bin + (i + 0.5) * bin / grid for i in [0, grid).
constexpr int64_t kSmallGrid = 64;

template <typename T>
struct RoiAlignAxis {
  T start;
  T bin;
  int64_t grid;

  VISIONOPS_HOST_DEVICE T sample(int64_t p, int64_t i) const {
    return start + static_cast<T>(p) * bin + static_cast<T>(static_cast<float>(i) + .5f) * bin / static_cast<T>(grid);
  }

  // The sample indices of bin p that can fall inside [-1, size]; every other
  // sample is zero. Computed so that a RoI sampled a million times per bin
  // still costs only O(size) per bin (no hang on absurd boxes). The range is
  // widened by one on each side; bilinear_axis() makes the exact decision.
  VISIONOPS_HOST_DEVICE void valid_range(int64_t p, int64_t size, int64_t& first, int64_t& last) const {
    first = 0;
    last = grid;
    // small grids (every real RoI) are visited whole; bilinear_axis() rejects
    // outside samples, and double-precision work is kept off the hot path
    if (grid <= kSmallGrid || bin == T(0)) return;
    const double base = static_cast<double>(start) + static_cast<double>(p) * static_cast<double>(bin);
    const double step = static_cast<double>(bin) / static_cast<double>(grid);
    double lo = (-1.0 - base) / step - 0.5;
    double hi = (static_cast<double>(size) - base) / step - 0.5;
    if (step < 0) {
      const double t = lo;
      lo = hi;
      hi = t;
    }
    lo = lo - 1.0;
    hi = hi + 2.0;
    if (lo > static_cast<double>(first)) first = lo >= static_cast<double>(grid) ? grid : static_cast<int64_t>(lo);
    if (hi < static_cast<double>(last)) last = hi <= 0.0 ? 0 : static_cast<int64_t>(hi);
    if (last < first) last = first;
  }

  // Smallest and largest sample position of bin p (for quick rejection).
  VISIONOPS_HOST_DEVICE void extent(int64_t p, T& lo, T& hi) const {
    const T a = sample(p, 0), b = sample(p, grid - 1);
    lo = a < b ? a : b;
    hi = a < b ? b : a;
  }
};

template <typename T>
struct RoiAlignBox {
  int64_t batch;  // -1 when the RoI is invalid (batch index out of range or non-finite box)
  RoiAlignAxis<T> y, x;
  T count;  // number of samples per bin, the divisor of the average
};

// Decodes RoI (batch_index, x1, y1, x2, y2) exactly as torchvision does.
template <typename T, typename R>
VISIONOPS_HOST_DEVICE RoiAlignBox<T> make_roi_align_box(const R* roi, T spatial_scale, int64_t pooled_height,
                                                        int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                                        int64_t batch_size) {
  RoiAlignBox<T> box;
  const T b = static_cast<T>(roi[0]);
  const T x1 = static_cast<T>(roi[1]), y1 = static_cast<T>(roi[2]);
  const T x2 = static_cast<T>(roi[3]), y2 = static_cast<T>(roi[4]);
  const bool ok = b >= T(0) && b < static_cast<T>(batch_size) && is_finite_value(x1) && is_finite_value(y1) &&
                  is_finite_value(x2) && is_finite_value(y2);
  box.batch = ok ? static_cast<int64_t>(b) : -1;
  const T offset = aligned ? T(0.5) : T(0);
  box.x.start = clamp_coordinate(x1 * spatial_scale - offset);
  box.y.start = clamp_coordinate(y1 * spatial_scale - offset);
  T width = clamp_coordinate(x2 * spatial_scale - offset) - box.x.start;
  T height = clamp_coordinate(y2 * spatial_scale - offset) - box.y.start;
  if (!aligned) {
    // torchvision: force malformed RoIs to be 1x1
    width = width > T(1) ? width : T(1);
    height = height > T(1) ? height : T(1);
  }
  box.y.bin = height / static_cast<T>(pooled_height);
  box.x.bin = width / static_cast<T>(pooled_width);
  if (sampling_ratio > 0) {
    box.y.grid = box.x.grid = sampling_ratio;
  } else {
    // ceil(height / pooled_height) as torchvision; negative (inverted aligned RoIs) means no samples
    const T gh = ceil(height / static_cast<T>(pooled_height));
    const T gw = ceil(width / static_cast<T>(pooled_width));
    box.y.grid = gh > T(0) ? static_cast<int64_t>(gh) : 0;
    box.x.grid = gw > T(0) ? static_cast<int64_t>(gw) : 0;
  }
  const T count = static_cast<T>(box.y.grid) * static_cast<T>(box.x.grid);
  box.count = count > T(1) ? count : T(1);
  return box;
}

// Total bilinear weight that bin p of an axis puts on cell `cell` (used by the
// deterministic "gather" backward, which visits every input cell once).
template <typename T>
VISIONOPS_HOST_DEVICE T roi_align_cell_weight(const RoiAlignAxis<T>& axis, int64_t p, int64_t size, int64_t cell) {
  if (axis.grid <= 0) return T(0);
  T lo, hi;
  axis.extent(p, lo, hi);
  // a sample reaches a cell only from within one cell's distance
  if (!(hi >= static_cast<T>(cell - 1) && lo <= static_cast<T>(cell + 1))) return T(0);
  int64_t first, last;
  axis.valid_range(p, size, first, last);
  T w = T(0);
  for (int64_t i = first; i < last; ++i) {
    int64_t l, h;
    T wl, wh;
    if (!bilinear_axis(axis.sample(p, i), size, l, h, wl, wh)) continue;
    if (l == cell) w += wl;
    if (h == cell) w += wh;
  }
  return w;
}

// The samples of bin p along one axis folded into per-cell weights over the
// contiguous cells [first, first + length). Returns false when the bin spans more
// than S cells (huge bins): the caller then visits samples one by one. Loops
// are unrolled over S so the weights stay in registers on the GPU.
template <typename T, int S>
struct AxisSpan {
  int64_t first;
  int length;
  T w[S];
};

template <typename T, int S>
VISIONOPS_HOST_DEVICE bool fold_axis_samples(const RoiAlignAxis<T>& axis, int64_t p, int64_t size, AxisSpan<T, S>& span) {
  int64_t i0, i1;
  axis.valid_range(p, size, i0, i1);
  int64_t lo = size, hi = -1;
  for (int64_t i = i0; i < i1; ++i) {
    int64_t l, h;
    T wl, wh;
    if (!bilinear_axis(axis.sample(p, i), size, l, h, wl, wh)) continue;
    lo = l < lo ? l : lo;
    hi = h > hi ? h : hi;
  }
  span.first = lo;
  span.length = hi < lo ? 0 : static_cast<int>(hi - lo + 1);
  if (span.length > S) return false;
#pragma unroll
  for (int t = 0; t < S; ++t) span.w[t] = T(0);
  for (int64_t i = i0; i < i1; ++i) {
    int64_t l, h;
    T wl, wh;
    if (!bilinear_axis(axis.sample(p, i), size, l, h, wl, wh)) continue;
#pragma unroll
    for (int t = 0; t < S; ++t) span.w[t] += (lo + t == l ? wl : T(0)) + (lo + t == h ? wh : T(0));
  }
  return true;
}

// RoIPool (Fast R-CNN) as torchvision: coordinates rounded to cells, "+1" width,
// bin p covers cells [floor(p * bin) + start, ceil((p + 1) * bin) + start), clipped.
template <typename T>
struct RoiPoolBox {
  int64_t batch;  // -1 when invalid
  int64_t start_h, start_w;
  T bin_h, bin_w;

  VISIONOPS_HOST_DEVICE void bin_range(int64_t p, T bin, int64_t start, int64_t size, int64_t& first,
                                       int64_t& last) const {
    first = static_cast<int64_t>(floor(static_cast<T>(p) * bin)) + start;
    last = static_cast<int64_t>(ceil(static_cast<T>(p + 1) * bin)) + start;
    first = first < 0 ? 0 : (first > size ? size : first);
    last = last < 0 ? 0 : (last > size ? size : last);
  }
  VISIONOPS_HOST_DEVICE void rows(int64_t ph, int64_t height, int64_t& first, int64_t& last) const {
    bin_range(ph, bin_h, start_h, height, first, last);
  }
  VISIONOPS_HOST_DEVICE void cols(int64_t pw, int64_t width, int64_t& first, int64_t& last) const {
    bin_range(pw, bin_w, start_w, width, first, last);
  }
};

template <typename T, typename R>
VISIONOPS_HOST_DEVICE RoiPoolBox<T> make_roi_pool_box(const R* roi, T spatial_scale, int64_t pooled_height,
                                                      int64_t pooled_width, int64_t batch_size) {
  RoiPoolBox<T> box;
  const T b = static_cast<T>(roi[0]);
  const T x1 = static_cast<T>(roi[1]), y1 = static_cast<T>(roi[2]);
  const T x2 = static_cast<T>(roi[3]), y2 = static_cast<T>(roi[4]);
  const bool ok = b >= T(0) && b < static_cast<T>(batch_size) && is_finite_value(x1) && is_finite_value(y1) &&
                  is_finite_value(x2) && is_finite_value(y2);
  box.batch = ok ? static_cast<int64_t>(b) : -1;
  box.start_w = static_cast<int64_t>(round(clamp_coordinate(x1 * spatial_scale)));
  box.start_h = static_cast<int64_t>(round(clamp_coordinate(y1 * spatial_scale)));
  const int64_t end_w = static_cast<int64_t>(round(clamp_coordinate(x2 * spatial_scale)));
  const int64_t end_h = static_cast<int64_t>(round(clamp_coordinate(y2 * spatial_scale)));
  const int64_t width = end_w - box.start_w + 1 > 1 ? end_w - box.start_w + 1 : 1;
  const int64_t height = end_h - box.start_h + 1 > 1 ? end_h - box.start_h + 1 : 1;
  box.bin_h = static_cast<T>(height) / static_cast<T>(pooled_height);
  box.bin_w = static_cast<T>(width) / static_cast<T>(pooled_width);
  return box;
}

// Max over the cells [h0, h1) x [w0, w1) of a plane whose cell (h, w) sits at
// plane[(h * width + w) * cell_stride]. The first maximum wins (as torchvision);
// NaN propagates (as torch.max) instead of being skipped. Returns the cell index
// h * width + w of the result, -1 for an empty window (value then 0).
// The main pass selects without branches (on random data "v > best" is a coin
// flip, and the mispredictions cost more than the loads) and only notes NaN;
// a window with a NaN is scanned again for the first one.
template <typename T, typename V, typename I>
VISIONOPS_HOST_DEVICE I window_max(const V* plane, I cell_stride, I width, I h0, I h1, I w0, I w1, T& best) {
  if (h1 <= h0 || w1 <= w0) {
    best = T(0);
    return -1;
  }
  I best_index = h0 * width + w0;
  best = static_cast<T>(plane[best_index * cell_stride]);
  bool nan = false;
  for (I h = h0; h < h1; ++h) {
    for (I w = w0; w < w1; ++w) {
      const I i = h * width + w;
      const T v = static_cast<T>(plane[i * cell_stride]);
      // integer mask select: compilers turn the float ternary into a branch
      const I take = -static_cast<I>(v > best);
      best_index = (i & take) | (best_index & ~take);
      best = best < v ? v : best;  // maxss; a NaN is handled below
      nan |= !(v == v);
    }
  }
  if (!nan) return best_index;
  for (I h = h0; h < h1; ++h) {
    for (I w = w0; w < w1; ++w) {
      const T v = static_cast<T>(plane[(h * width + w) * cell_stride]);
      if (!(v == v)) {
        best = v;
        return h * width + w;
      }
    }
  }
  return best_index;  // not reached: a NaN was seen
}

}  // namespace visionops
