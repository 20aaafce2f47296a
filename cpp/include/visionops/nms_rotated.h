// The overlap functor that runs the generic NMS of nms.h on rotated boxes
// (cx, cy, w, h, angle_degrees_ccw), with the rotated family's IoU (rotated.h).
#pragma once

#include "visionops/nms.h"
#include "visionops/rotated.h"

namespace visionops {

struct RotatedBoxIoU {
  static constexpr int kDim = 5;

  // the IoU stays in double (rotated_overlap's precision) for the threshold test
  template <typename T>
  VISIONOPS_HOST_DEVICE double operator()(const T* a, const T* b) const {
    return rotated_overlap(a, b, kRotatedIoU);
  }
};

}  // namespace visionops
