// Convolution index math, written once for the CPU and CUDA kernels.
//
// Conventions (F.conv2d): output pixel (oh, ow) reads input pixel
//   ih = oh * stride_h - pad_top + i * dilation_h,  iw = ow * stride_w - pad_left + j * dilation_w
// for kernel tap (i, j); pixels outside the input read zero. Padding may be
// asymmetric (padding="same" with an even kernel pads one more cell at the
// bottom/right, as torch does), so the geometry carries all four sides.
#pragma once

#include <cstdint>

#include "visionops/common.h"

namespace visionops {

// fused epilogue of depthwise_conv2d
enum ConvActivation : int64_t { kActNone = 0, kActRelu = 1, kActRelu6 = 2 };

struct ConvGeometry {
  int64_t N, C, H, W;     // input
  int64_t OC, KH, KW;     // weight [OC, C / groups, KH, KW]
  int64_t OH, OW;         // output
  int64_t sh, sw;         // stride
  int64_t pt, pb, pl, pr; // padding top, bottom, left, right
  int64_t dh, dw;         // dilation
  int64_t groups;
  int64_t m;              // depthwise: output channels per input channel (OC = C * m)
};

// Output extent along one axis; <= 0 when the (dilated) kernel is larger than
// the padded input.
VISIONOPS_HOST_DEVICE int64_t conv_output_size(int64_t in, int64_t pad_begin, int64_t pad_end, int64_t kernel,
                                               int64_t stride, int64_t dilation) {
  const int64_t span = dilation * (kernel - 1) + 1;
  const int64_t padded = in + pad_begin + pad_end;
  return padded < span ? 0 : (padded - span) / stride + 1;
}

// NaN stays NaN, as in torch.relu / F.relu6.
template <typename T>
VISIONOPS_HOST_DEVICE T apply_activation(T v, int64_t activation) {
  if (activation == kActRelu) return v < T(0) ? T(0) : v;
  if (activation == kActRelu6) return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
  return v;
}

// Whether the activation stops the gradient, judged on its output y: relu
// where the pre-activation was <= 0 (y <= 0, torch's threshold_backward),
// relu6 outside the open interval (0, 6) (hardtanh_backward). NaN passes.
template <typename T>
VISIONOPS_HOST_DEVICE bool activation_blocks(T y, int64_t activation) {
  if (activation == kActRelu) return y <= T(0);
  if (activation == kActRelu6) return y <= T(0) || y >= T(6);
  return false;
}

// The output index along one axis that reads input index `in` through tap `t`,
// or -1 when there is none (the gather form of the input gradient). Index is
// int64_t, or int where the caller has checked that everything fits (the CUDA
// fast paths: 32-bit division is several times cheaper there).
template <typename Index>
VISIONOPS_HOST_DEVICE Index conv_source_output(Index in, Index t, Index pad_begin, Index stride, Index dilation,
                                               Index out_size) {
  const Index num = in + pad_begin - t * dilation;
  if (num < 0) return -1;
  Index o = num;
  if (stride != 1) {
    if (num % stride != 0) return -1;
    o = num / stride;
  }
  return o < out_size ? o : -1;
}

}  // namespace visionops
