// Host-side NMS drivers, generic over the overlap functor of nms.h: argument
// checks (one set of messages for every device and box type), the CPU driver
// and, when compiled by nvcc, the CUDA driver. Axis-aligned ops instantiate them
// with BoxIoU (boxes_cpu.cpp / boxes_cuda.cu); rotated ops with their own IoU.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "visionops/check.h"
#include "visionops/nms.h"

#if defined(__CUDACC__)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace visionops {

// boxes [N, box_dim] floating, scores [N] same dtype and device, idxs (when
// defined) [N] integral, threshold in [0, 1], max_output_size (when given) >= 0.
inline void check_nms_args(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                           double iou_threshold, int64_t box_dim, const char* box_format,
                           const int64_t* max_output_size = nullptr) {
  VISIONOPS_CHECK(boxes.dim() == 2 && boxes.size(1) == box_dim, op, ": boxes must be a tensor [N, ", box_dim, "] ",
              box_format, ", got shape ", boxes.sizes());
  VISIONOPS_CHECK(at::isFloatingType(boxes.scalar_type()), op, ": boxes must be a floating-point tensor, got ",
              boxes.scalar_type());
  VISIONOPS_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), op,
              ": scores must be a 1-D tensor with one score per box (", boxes.size(0), "), got shape ",
              scores.sizes());
  VISIONOPS_CHECK(scores.scalar_type() == boxes.scalar_type(), op, ": scores must have the same dtype as boxes (",
              boxes.scalar_type(), "), got ", scores.scalar_type());
  VISIONOPS_CHECK(scores.device() == boxes.device(), op, ": scores must be on the same device as boxes (",
              boxes.device(), "), got ", scores.device());
  if (idxs != nullptr) {
    VISIONOPS_CHECK(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), op,
                ": idxs must be a 1-D tensor with one class index per box (", boxes.size(0), "), got shape ",
                idxs->sizes());
    VISIONOPS_CHECK(at::isIntegralType(idxs->scalar_type(), /*includeBool=*/true), op,
                ": idxs must be an integer tensor, got ", idxs->scalar_type());
    VISIONOPS_CHECK(idxs->device() == boxes.device(), op, ": idxs must be on the same device as boxes (",
                boxes.device(), "), got ", idxs->device());
  }
  VISIONOPS_CHECK(iou_threshold >= 0.0 && iou_threshold <= 1.0, op, ": iou_threshold must lie in [0, 1], got ",
              iou_threshold);
  if (max_output_size != nullptr)
    VISIONOPS_CHECK(*max_output_size >= 0, op, ": max_output_size must be non-negative, got ", *max_output_size);
}

// ---------------------------------------------------------------- CPU

// Kept indices in output order (decreasing score, ties by index), at most
// `limit` of them. idxs undefined: one segment.
template <typename Overlap>
std::vector<int64_t> nms_kept_cpu(const at::Tensor& boxes_in, const at::Tensor& scores, const at::Tensor& idxs,
                                  double threshold, int64_t limit) {
  constexpr int D = Overlap::kDim;
  const int64_t n = boxes_in.size(0);
  std::vector<int64_t> result;
  if (n == 0 || limit == 0) return result;
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const int64_t* order_p = order.const_data_ptr<int64_t>();

  // visiting order: by score, or by class then score (each class a segment)
  at::Tensor visit = order;
  std::vector<int64_t> seg_starts{0};
  if (idxs.defined()) {
    const at::Tensor cls = idxs.to(at::kLong).index_select(0, order);
    const auto [sorted_cls, perm] = cls.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
    visit = order.index_select(0, perm).contiguous();
    const auto sorted = sorted_cls.contiguous();
    const int64_t* c = sorted.const_data_ptr<int64_t>();
    for (int64_t i = 1; i < n; ++i)
      if (c[i] != c[i - 1]) seg_starts.push_back(i);
  }
  seg_starts.push_back(n);
  const int64_t* visit_p = visit.const_data_ptr<int64_t>();
  const bool single = seg_starts.size() == 2;

  std::vector<uint8_t> kept(n, 0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes_in.scalar_type(), "nms_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor boxes = boxes_in.contiguous();
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    std::vector<BoxData<acc_t, D>> data(n);
    std::vector<int64_t> ids(n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t src = visit_p[i];
      for (int d = 0; d < D; ++d) data[i].v[d] = static_cast<acc_t>(b[src * D + d]);
      ids[i] = src;
    }
    const Overlap overlap{};
    const int64_t segments = static_cast<int64_t>(seg_starts.size()) - 1;
    // Segments are independent (each writes the kept flags of its own boxes).
    // Waking a second thread costs more than a small problem takes (10 ms
    // instead of 0.1 ms for 1k boxes on a busy 2-core machine): stay on one
    // thread below ~50k boxes.
    const int64_t grain = n < 50000 ? segments : 1;
    at::parallel_for(0, segments, grain, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t lo = seg_starts[s], len = seg_starts[s + 1] - lo;
        greedy_nms_segment(data.data() + lo, ids.data() + lo, len, overlap, threshold,
                           single ? limit : std::numeric_limits<int64_t>::max(),
                           [&](int64_t id) { kept[id] = 1; });
      }
    });
  });
  for (int64_t i = 0; i < n && static_cast<int64_t>(result.size()) < limit; ++i)
    if (kept[order_p[i]]) result.push_back(order_p[i]);
  return result;
}

template <typename Overlap>
at::Tensor nms_cpu_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double threshold) {
  const auto kept = nms_kept_cpu<Overlap>(boxes, scores, idxs, threshold, std::numeric_limits<int64_t>::max());
  at::Tensor out = at::empty({static_cast<int64_t>(kept.size())}, boxes.options().dtype(at::kLong));
  std::copy(kept.begin(), kept.end(), out.data_ptr<int64_t>());
  return out;
}

template <typename Overlap>
std::tuple<at::Tensor, at::Tensor> nms_fixed_cpu_impl(const at::Tensor& boxes, const at::Tensor& scores,
                                                      const at::Tensor& idxs, double threshold,
                                                      int64_t max_output_size) {
  const auto kept = nms_kept_cpu<Overlap>(boxes, scores, idxs, threshold, max_output_size);
  at::Tensor out = at::full({max_output_size}, -1, boxes.options().dtype(at::kLong));
  std::copy(kept.begin(), kept.end(), out.data_ptr<int64_t>());
  return {out, at::scalar_tensor(static_cast<int64_t>(kept.size()), boxes.options().dtype(at::kLong))};
}

// ---------------------------------------------------------------- CUDA

#if defined(__CUDACC__)

namespace nms_detail {

constexpr int kThreads = 256;

// Kernels are templates so that every .cu including this header can share them
// (a plain __global__ function would be defined once per translation unit).

// dst[index[i]] = src[i] (index a permutation)
template <typename Index>
__global__ void scatter_flags_kernel(const uint8_t* __restrict__ src, const Index* __restrict__ index, int64_t n,
                                     uint8_t* __restrict__ dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)
    dst[index[i]] = src[i];
}

// out[rank - 1] = order[i] for every kept i (rank = inclusive prefix count of
// kept flags) while rank <= capacity; count = min(total, capacity).
template <typename Index>
__global__ void compact_kept_kernel(const uint8_t* __restrict__ flags, const Index* __restrict__ rank,
                                    const Index* __restrict__ order, int64_t n, int64_t capacity,
                                    Index* __restrict__ out, Index* __restrict__ count) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    if (flags[i] && rank[i] <= capacity) out[rank[i] - 1] = order[i];
    if (i == n - 1) *count = min(static_cast<int64_t>(rank[i]), capacity);
  }
}

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 16)));
}

}  // namespace nms_detail

// keep [capacity] (kept indices in output order, padded with -1) and a 0-d
// count, without any host synchronisation. idxs undefined: one segment.
template <typename Overlap>
std::tuple<at::Tensor, at::Tensor> nms_cuda_padded(const at::Tensor& boxes_in, const at::Tensor& scores,
                                                   const at::Tensor& idxs, double threshold, int64_t capacity) {
  using namespace nms_detail;
  constexpr int D = Overlap::kDim;
  c10::cuda::CUDAGuard guard(boxes_in.device());
  const auto long_opts = boxes_in.options().dtype(at::kLong);
  const int64_t n = boxes_in.size(0);
  at::Tensor out = at::full({capacity}, -1, long_opts);
  at::Tensor count = at::zeros({}, long_opts);
  if (n == 0 || capacity == 0) return {out, count};
  const int64_t col_blocks = (n + kNmsBlock - 1) / kNmsBlock;
  VISIONOPS_CHECK(col_blocks <= 65535, "nms: at most ", int64_t(65535) * kNmsBlock, " boxes per call on CUDA, got ", n);
  auto stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor visit = order, seg_end, perm;
  if (idxs.defined()) {
    const at::Tensor cls = idxs.to(at::kLong).index_select(0, order);
    at::Tensor sorted_cls;
    std::tie(sorted_cls, perm) = cls.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
    visit = order.index_select(0, perm);
    seg_end = at::searchsorted(sorted_cls, sorted_cls, /*out_int32=*/false, /*right=*/true).contiguous();
  }
  const bool single = !idxs.defined();
  const int64_t* seg_end_p = single ? nullptr : seg_end.const_data_ptr<int64_t>();

  at::Tensor mask = at::empty({n * col_blocks}, long_opts);
  at::Tensor removed = at::zeros({col_blocks}, long_opts);
  at::Tensor kept = at::zeros({n}, boxes_in.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes_in.scalar_type(), "nms_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sorted = boxes_in.index_select(0, visit).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
    nms_mask_kernel<Overlap, acc_t><<<grid, kNmsBlock, 0, stream>>>(
        sorted.const_data_ptr<acc_t>(), seg_end_p, n, col_blocks, threshold, Overlap{},
        reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  nms_reduce_kernel<kThreads><<<1, kThreads, 0, stream>>>(
      reinterpret_cast<const unsigned long long*>(mask.const_data_ptr<int64_t>()), seg_end_p, n, col_blocks,
      single ? capacity : std::numeric_limits<int64_t>::max(),
      reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()), kept.data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // kept flags in score order (batched: the visiting order is by class first)
  at::Tensor flags = kept;
  if (!single) {
    flags = at::empty_like(kept);
    // flags[j] for score-order position j: visit = order[perm], so visiting
    // position p holds score position perm[p]
    scatter_flags_kernel<int64_t><<<blocks_for(n), kThreads, 0, stream>>>(kept.const_data_ptr<uint8_t>(),
                                                                 perm.const_data_ptr<int64_t>(), n,
                                                                 flags.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor rank = flags.cumsum(0, at::kLong);
  compact_kept_kernel<int64_t><<<blocks_for(n), kThreads, 0, stream>>>(flags.const_data_ptr<uint8_t>(),
                                                              rank.const_data_ptr<int64_t>(),
                                                              order.const_data_ptr<int64_t>(), n, capacity,
                                                              out.data_ptr<int64_t>(), count.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, count};
}

// nms / batched_nms: the only host synchronisation is reading the count.
template <typename Overlap>
at::Tensor nms_cuda_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                         double threshold) {
  auto [out, count] = nms_cuda_padded<Overlap>(boxes, scores, idxs, threshold, boxes.size(0));
  return out.narrow(0, 0, count.template item<int64_t>());
}

#endif  // __CUDACC__

}  // namespace visionops
