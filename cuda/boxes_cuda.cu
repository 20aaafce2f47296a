// Axis-aligned box IoU and NMS on CUDA. The NMS kernels are generic (nms.h /
// nms_ops.h); here they are instantiated with BoxIoU. nms and batched_nms read
// only the number of kept boxes back to the host; nms_fixed reads nothing.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "visionops/boxes_ops.h"
#include "visionops/nms_ops.h"

namespace visionops {
namespace {

constexpr int kThreads = 256;
constexpr const char* kBoxFormat = "(x1, y1, x2, y2)";

// one thread per output element (i, j), row-major: consecutive threads read
// consecutive boxes2 and write consecutive outputs
template <typename scalar_t>
__global__ void box_iou_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n, int64_t m,
                               scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const BoxIoU iou{};
  const int64_t total = n * m;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t i = k / m, j = k - i * m;
    acc_t p[4], q[4];
#pragma unroll
    for (int d = 0; d < 4; ++d) {
      p[d] = static_cast<acc_t>(a[i * 4 + d]);
      q[d] = static_cast<acc_t>(b[j * 4 + d]);
    }
    out[k] = static_cast<scalar_t>(iou(p, q));
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_box_iou_args(boxes1_in, boxes2_in);
  c10::cuda::CUDAGuard guard(boxes1_in.device());
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  at::Tensor out = at::empty({n, m}, boxes1.options());
  if (n == 0 || m == 0) return out;
  const int64_t blocks = std::min<int64_t>((n * m + kThreads - 1) / kThreads, int64_t(1) << 20);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_cuda", [&] {
    box_iou_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        boxes1.const_data_ptr<scalar_t>(), boxes2.const_data_ptr<scalar_t>(), n, m, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_args("nms", boxes, scores, nullptr, iou_threshold, 4, kBoxFormat);
  return nms_cuda_impl<BoxIoU>(boxes, scores, at::Tensor(), iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  check_nms_args("batched_nms", boxes, scores, &idxs, iou_threshold, 4, kBoxFormat);
  return nms_cuda_impl<BoxIoU>(boxes, scores, idxs, iou_threshold);
}

std::tuple<at::Tensor, at::Tensor> nms_fixed_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                  const std::optional<at::Tensor>& idxs, double iou_threshold,
                                                  int64_t max_output_size) {
  const at::Tensor classes = idxs.has_value() ? *idxs : at::Tensor();
  check_nms_args("nms_fixed", boxes, scores, classes.defined() ? &classes : nullptr, iou_threshold, 4, kBoxFormat,
                 &max_output_size);
  return nms_cuda_padded<BoxIoU>(boxes, scores, classes, iou_threshold, max_output_size);
}

}  // namespace
}  // namespace visionops

TORCH_LIBRARY_IMPL(visionops, CUDA, m) {
  m.impl("box_iou", &visionops::box_iou_cuda);
  m.impl("nms", &visionops::nms_cuda);
  m.impl("batched_nms", &visionops::batched_nms_cuda);
  m.impl("nms_fixed", &visionops::nms_fixed_cuda);
}
