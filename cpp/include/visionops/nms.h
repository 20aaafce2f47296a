// Non-maximum suppression, written once for every box type.
//
// The algorithm is generic over an *overlap functor*: a trivially copyable struct
//
//   struct Overlap {
//     static constexpr int kDim = ...;                 // numbers per box
//     template <typename T> VISIONOPS_HOST_DEVICE R operator()(const T* a, const T* b) const;
//   };
//
// that returns the overlap (IoU) of two boxes stored as kDim numbers of the
// accumulation type T, as a floating type R (T itself, or double). A box j is suppressed by a kept box i when
// overlap(i, j) > threshold (strict; a NaN overlap never suppresses).
// Axis-aligned boxes use BoxIoU below; rotated boxes plug their IoU in the same way.
//
// Semantics (torchvision's, made exact): boxes are visited in order of
// decreasing score, ties in score in increasing index (a stable sort); the
// result lists the kept indices in that order. With class ids (batched NMS),
// only boxes of the same class are compared.
//
// CPU: greedy_nms_segment, a greedy pass over a compacted list of the boxes not
// yet suppressed (contiguous, no indirection, branch-free compaction).
// CUDA (only when compiled by nvcc): nms_mask_kernel computes, for every box, a
// 64-bit word per block of 64 later boxes saying which of them it suppresses;
// nms_reduce_kernel walks the words on the device in one thread block to find
// the kept boxes. Nothing is copied to the host.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "visionops/common.h"

namespace visionops {

// a * b rounded once, never fused into a neighbouring add (nvcc contracts
// x * y + z into an FMA by default, which would change IoUs in the last bit and
// make CUDA disagree with the CPU at the threshold).
template <typename T>
VISIONOPS_HOST_DEVICE T mul_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 8) {
    return __dmul_rn(a, b);
  } else {
    return __fmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

template <typename T>
VISIONOPS_HOST_DEVICE T max_of(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
VISIONOPS_HOST_DEVICE T min_of(T a, T b) {
  return a < b ? a : b;
}

// IoU of two (x1, y1, x2, y2) boxes, torchvision's formula step by step:
// inter / (area_a + area_b - inter), areas (x2 - x1) * (y2 - y1).
// Zero-area pairs give 0 / 0 = NaN (never suppresses); a non-finite coordinate
// makes an area NaN or infinite, so the IoU is NaN or 0 and never exceeds a
// threshold in [0, 1]: such boxes neither suppress nor get suppressed.
struct BoxIoU {
  static constexpr int kDim = 4;

  template <typename T>
  VISIONOPS_HOST_DEVICE T operator()(const T* a, const T* b) const {
    const T area_a = mul_rn(a[2] - a[0], a[3] - a[1]);
    const T area_b = mul_rn(b[2] - b[0], b[3] - b[1]);
    const T w = max_of(T(0), min_of(a[2], b[2]) - max_of(a[0], b[0]));
    const T h = max_of(T(0), min_of(a[3], b[3]) - max_of(a[1], b[1]));
    const T inter = mul_rn(w, h);
    return inter / (area_a + area_b - inter);
  }
};

template <typename T, int D>
struct BoxData {
  T v[D];
};

// The largest T not above `threshold`: for every T value v (NaN included),
// v > threshold (in double) exactly when v > threshold_below<T>(threshold), so
// the comparison can stay in T (and vectorise) without changing any result.
template <typename T>
inline T threshold_below(double threshold) {
  T t = static_cast<T>(threshold);
  if (static_cast<double>(t) > threshold) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}

// Greedy NMS of one segment of boxes already in visiting order.
// `boxes` and `ids` (n entries each) are used as scratch: they are compacted in
// place as boxes get suppressed. Calls keep(id) for each kept box, in order;
// stops after `limit` kept boxes. Returns the number kept. Each round first
// computes the suppression flags of all live boxes (a loop without
// dependencies, which the compiler vectorises), then compacts.
template <typename Overlap, typename T, int D, typename Keep>
inline int64_t greedy_nms_segment(BoxData<T, D>* boxes, int64_t* ids, int64_t n, const Overlap& overlap,
                                  double threshold, int64_t limit, Keep&& keep) {
  static_assert(Overlap::kDim == D, "box data must hold Overlap::kDim numbers per box");
  // compare in the functor's result type (T for BoxIoU, double for rotated IoU)
  using R = decltype(overlap(boxes[0].v, boxes[0].v));
  const R thr = threshold_below<R>(threshold);
  std::vector<uint8_t> flags(n);
  int64_t alive = n, kept = 0;
  for (int64_t pos = 0; pos < alive && kept < limit; ++pos, ++kept) {
    keep(ids[pos]);
    const BoxData<T, D> current = boxes[pos];
    BoxData<T, D>* rest = boxes + pos + 1;
    int64_t* rest_ids = ids + pos + 1;
    const int64_t m = alive - pos - 1;
    uint8_t* f = flags.data();
#pragma omp simd
    for (int64_t k = 0; k < m; ++k) f[k] = overlap(current.v, rest[k].v) > thr ? 1 : 0;
    int64_t out = 0;
    for (int64_t k = 0; k < m; ++k) {
      rest[out] = rest[k];
      rest_ids[out] = rest_ids[k];
      out += 1 - f[k];
    }
    alive = pos + 1 + out;
  }
  return kept;
}

#if defined(__CUDACC__)

constexpr int kNmsBlock = 64;  // boxes per mask word

// mask[row * col_blocks + cb] bit t: sorted box row suppresses sorted box
// cb * 64 + t (which comes later and is in the same segment). Grid
// (col_blocks, row_blocks), 64 threads. With seg_end (batched NMS: boxes
// sorted by class, seg_end[row] = one past the last box of row's class), words
// past a row's segment are neither computed nor written; the reduction never
// reads them.
template <typename Overlap, typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ seg_end, int64_t n,
                                int64_t col_blocks, double threshold, Overlap overlap,
                                unsigned long long* __restrict__ mask) {
  constexpr int D = Overlap::kDim;
  const int64_t rb = blockIdx.y, cb = blockIdx.x;
  if (cb < rb) return;
  const int64_t col_start = cb * kNmsBlock;
  if (seg_end != nullptr) {
    // seg_end is non-decreasing: the block's last row reaches furthest
    const int64_t last_row = min(rb * kNmsBlock + kNmsBlock - 1, n - 1);
    if (col_start >= seg_end[last_row]) return;
  }
  __shared__ T cols[kNmsBlock * D];
  const int col_n = static_cast<int>(min(static_cast<int64_t>(kNmsBlock), n - col_start));
  for (int k = threadIdx.x; k < col_n * D; k += blockDim.x) cols[k] = boxes[col_start * D + k];
  __syncthreads();

  const int64_t row = rb * kNmsBlock + threadIdx.x;
  if (row >= n) return;
  const int64_t end = seg_end != nullptr ? seg_end[row] : n;
  if (col_start >= end) return;
  T me[D];
#pragma unroll
  for (int d = 0; d < D; ++d) me[d] = boxes[row * D + d];
  const int j_begin = rb == cb ? static_cast<int>(threadIdx.x) + 1 : 0;
  const int j_end = static_cast<int>(min(static_cast<int64_t>(col_n), end - col_start));
  unsigned long long bits = 0;
  for (int j = j_begin; j < j_end; ++j) {
    if (static_cast<double>(overlap(me, cols + j * D)) > threshold) bits |= 1ULL << j;
  }
  mask[row * col_blocks + cb] = bits;
}

// One thread block walks the mask words of block b = 0, 1, ...: thread 0
// resolves the 64 boxes of block b from the removed bits and the block's own
// (diagonal) words, then all threads OR the kept boxes' words into `removed`
// for the later blocks. kept[row] (sorted position) is set to 1 for kept boxes;
// stops after `limit` kept boxes (single-segment only, where sorted order is the
// output order). removed: col_blocks zeroed words.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) nms_reduce_kernel(const unsigned long long* __restrict__ mask,
                                                              const int64_t* __restrict__ seg_end, int64_t n,
                                                              int64_t col_blocks, int64_t limit,
                                                              unsigned long long* __restrict__ removed,
                                                              uint8_t* __restrict__ kept) {
  __shared__ unsigned long long diag[kNmsBlock];
  __shared__ int64_t row_last_cb[kNmsBlock];
  __shared__ unsigned long long kept_word;
  __shared__ int64_t block_last_cb;
  __shared__ int64_t count;
  __shared__ bool done;
  if (threadIdx.x == 0) {
    count = 0;
    done = false;
  }
  for (int64_t b = 0; b < col_blocks; ++b) {
    const int64_t first = b * kNmsBlock;
    if (threadIdx.x < kNmsBlock && first + threadIdx.x < n) {
      const int64_t row = first + threadIdx.x;
      diag[threadIdx.x] = mask[row * col_blocks + b];
      row_last_cb[threadIdx.x] = seg_end != nullptr ? (seg_end[row] - 1) / kNmsBlock : col_blocks - 1;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long word = removed[b], mine = 0;
      int64_t last = b;
      const int rows = static_cast<int>(min(static_cast<int64_t>(kNmsBlock), n - first));
      for (int t = 0; t < rows; ++t) {
        if ((word >> t) & 1ULL) continue;
        if (count >= limit) {
          done = true;
          break;
        }
        mine |= 1ULL << t;
        word |= diag[t];
        kept[first + t] = 1;
        ++count;
        last = max(last, row_last_cb[t]);
      }
      kept_word = mine;
      block_last_cb = last;
    }
    __syncthreads();
    const unsigned long long mine = kept_word;
    const int64_t last = block_last_cb;
    for (int64_t cb = b + 1 + threadIdx.x; cb <= last; cb += kThreads) {
      unsigned long long acc = 0;
      for (unsigned long long m = mine; m != 0; m &= m - 1) {
        const int t = __ffsll(static_cast<long long>(m)) - 1;
        if (cb <= row_last_cb[t]) acc |= mask[(first + t) * col_blocks + cb];
      }
      if (acc != 0) removed[cb] |= acc;
    }
    const bool stop = done;
    __syncthreads();
    if (stop) break;
  }
}

#endif  // __CUDACC__

}  // namespace visionops
