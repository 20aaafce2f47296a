// Axis-aligned box IoU and NMS on the CPU. The NMS algorithm itself is generic
// (nms.h / nms_ops.h); here it is instantiated with BoxIoU.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>
#include <torch/library.h>

#include "visionops/check.h"
#include "visionops/boxes_ops.h"
#include "visionops/nms_ops.h"

namespace visionops {

void check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  VISIONOPS_CHECK(boxes1.dim() == 2 && boxes1.size(1) == 4,
              "box_iou: boxes1 must be a tensor [N, 4] (x1, y1, x2, y2), got shape ", boxes1.sizes());
  VISIONOPS_CHECK(boxes2.dim() == 2 && boxes2.size(1) == 4,
              "box_iou: boxes2 must be a tensor [M, 4] (x1, y1, x2, y2), got shape ", boxes2.sizes());
  VISIONOPS_CHECK(at::isFloatingType(boxes1.scalar_type()), "box_iou: boxes1 must be a floating-point tensor, got ",
              boxes1.scalar_type());
  VISIONOPS_CHECK(boxes2.scalar_type() == boxes1.scalar_type(), "box_iou: boxes2 must have the same dtype as boxes1 (",
              boxes1.scalar_type(), "), got ", boxes2.scalar_type());
  VISIONOPS_CHECK(boxes2.device() == boxes1.device(), "box_iou: boxes2 must be on the same device as boxes1 (",
              boxes1.device(), "), got ", boxes2.device());
}

void check_box_iou_backward_args(const at::Tensor& grad, const at::Tensor& boxes1, const at::Tensor& boxes2) {
  VISIONOPS_CHECK(grad.dim() == 2 && grad.size(0) == boxes1.size(0) && grad.size(1) == boxes2.size(0),
              "_box_iou_backward: grad must have shape [", boxes1.size(0), ", ", boxes2.size(0), "], got ",
              grad.sizes());
  VISIONOPS_CHECK(grad.scalar_type() == boxes1.scalar_type() && grad.device() == boxes1.device(),
              "_box_iou_backward: grad must have the dtype and device of the boxes");
}

namespace {

at::Tensor box_iou_cpu(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_box_iou_args(boxes1_in, boxes2_in);
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  at::Tensor out = at::empty({n, m}, boxes1.options());
  if (n == 0 || m == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a = boxes1.const_data_ptr<scalar_t>();
    const scalar_t* b = boxes2.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    std::vector<acc_t> bs(m * 4);
    for (int64_t k = 0; k < m * 4; ++k) bs[k] = static_cast<acc_t>(b[k]);
    const BoxIoU iou{};
    at::parallel_for(0, n, std::max<int64_t>(1, 16384 / m), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const acc_t box[4] = {static_cast<acc_t>(a[i * 4]), static_cast<acc_t>(a[i * 4 + 1]),
                              static_cast<acc_t>(a[i * 4 + 2]), static_cast<acc_t>(a[i * 4 + 3])};
        for (int64_t j = 0; j < m; ++j) o[i * m + j] = static_cast<scalar_t>(iou(box, bs.data() + j * 4));
      }
    });
  });
  return out;
}

// Deterministic: each task owns whole rows of grad_boxes1 (then of grad_boxes2)
// and sums its pairs in a fixed order.
std::tuple<at::Tensor, at::Tensor> box_iou_backward_cpu(const at::Tensor& grad_in, const at::Tensor& boxes1_in,
                                                        const at::Tensor& boxes2_in) {
  check_box_iou_args(boxes1_in, boxes2_in);
  check_box_iou_backward_args(grad_in, boxes1_in, boxes2_in);
  const at::Tensor grad = grad_in.contiguous(), boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  at::Tensor g1 = at::zeros_like(boxes1), g2 = at::zeros_like(boxes2);
  if (n == 0 || m == 0) return {g1, g2};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a = boxes1.const_data_ptr<scalar_t>();
    const scalar_t* b = boxes2.const_data_ptr<scalar_t>();
    const scalar_t* gr = grad.const_data_ptr<scalar_t>();
    auto load = [](const scalar_t* p, acc_t* q) {
      for (int d = 0; d < 4; ++d) q[d] = static_cast<acc_t>(p[d]);
    };
    auto sweep = [&](int64_t rows, int64_t cols, bool first, scalar_t* out) {
      at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / cols), [&](int64_t r0, int64_t r1) {
        acc_t p[4], q[4], gp[4], gq[4];
        for (int64_t r = r0; r < r1; ++r) {
          acc_t sum[4] = {0, 0, 0, 0};
          for (int64_t c = 0; c < cols; ++c) {
            const int64_t i = first ? r : c, j = first ? c : r;
            load(a + i * 4, p);
            load(b + j * 4, q);
            box_iou_backward_pair(p, q, static_cast<acc_t>(gr[i * m + j]), gp, gq);
            for (int d = 0; d < 4; ++d) sum[d] += first ? gp[d] : gq[d];
          }
          for (int d = 0; d < 4; ++d) out[r * 4 + d] = static_cast<scalar_t>(sum[d]);
        }
      });
    };
    sweep(n, m, true, g1.data_ptr<scalar_t>());
    sweep(m, n, false, g2.data_ptr<scalar_t>());
  });
  return {g1, g2};
}

constexpr const char* kBoxFormat = "(x1, y1, x2, y2)";

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_args("nms", boxes, scores, nullptr, iou_threshold, 4, kBoxFormat);
  return nms_cpu_impl<BoxIoU>(boxes, scores, at::Tensor(), iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  check_nms_args("batched_nms", boxes, scores, &idxs, iou_threshold, 4, kBoxFormat);
  return nms_cpu_impl<BoxIoU>(boxes, scores, idxs, iou_threshold);
}

std::tuple<at::Tensor, at::Tensor> nms_fixed_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                 const std::optional<at::Tensor>& idxs, double iou_threshold,
                                                 int64_t max_output_size) {
  const at::Tensor classes = idxs.has_value() ? *idxs : at::Tensor();
  check_nms_args("nms_fixed", boxes, scores, classes.defined() ? &classes : nullptr, iou_threshold, 4, kBoxFormat,
                 &max_output_size);
  return nms_fixed_cpu_impl<BoxIoU>(boxes, scores, classes, iou_threshold, max_output_size);
}

}  // namespace
}  // namespace visionops

TORCH_LIBRARY_IMPL(visionops, CPU, m) {
  m.impl("box_iou", &visionops::box_iou_cpu);
  m.impl("_box_iou_backward", &visionops::box_iou_backward_cpu);
  m.impl("nms", &visionops::nms_cpu);
  m.impl("batched_nms", &visionops::batched_nms_cpu);
  m.impl("nms_fixed", &visionops::nms_fixed_cpu);
}
