// Rotated NMS on the CPU: the generic NMS of nms.h / nms_ops.h with the rotated
// family's IoU. Kept in its own file so that the rotated family's sources stay
// untouched by the NMS machinery.
#include <torch/library.h>

#include "visionops/nms_ops.h"
#include "visionops/nms_rotated.h"

namespace visionops {
namespace {

constexpr const char* kRotatedFormat = "(cx, cy, w, h, angle_degrees_ccw)";

at::Tensor nms_rotated_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_args("nms_rotated", boxes, scores, nullptr, iou_threshold, 5, kRotatedFormat);
  return nms_cpu_impl<RotatedBoxIoU>(boxes, scores, at::Tensor(), iou_threshold);
}

at::Tensor batched_nms_rotated_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                   double iou_threshold) {
  check_nms_args("batched_nms_rotated", boxes, scores, &idxs, iou_threshold, 5, kRotatedFormat);
  return nms_cpu_impl<RotatedBoxIoU>(boxes, scores, idxs, iou_threshold);
}

}  // namespace
}  // namespace visionops

TORCH_LIBRARY_IMPL(visionops, CPU, m) {
  m.impl("nms_rotated", &visionops::nms_rotated_cpu);
  m.impl("batched_nms_rotated", &visionops::batched_nms_rotated_cpu);
}
