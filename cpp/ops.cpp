// Every visionops operator schema, in one place. Kernels are registered per
// device in <family>_cpu.cpp / <family>_cuda.cu, autograd in <family>_autograd.cpp;
// fake (meta) kernels and autocast rules in python/visionops/ops/<family>.py.
#include <torch/library.h>

TORCH_LIBRARY(visionops, m) {
  // ---- roi: RoIAlign (Mask R-CNN) and RoIPool (Fast R-CNN)
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
      "bool aligned) -> Tensor");
  // returns (output, argmax); argmax holds h * W + w of the max cell, -1 for empty bins
  m.def(
      "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
      "-> (Tensor, Tensor)");
  m.def(
      "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor");

  // ---- ctc: connectionist temporal classification loss (Graves et al. 2006)
  // log_probs [T, N, C]; targets padded [N, S] or concatenated 1-D; returns
  // (per-sample negative log-likelihood [N], log_alpha [N, T, 2 * max_target_length + 1]
  // in float32, float64 for float64 log_probs); zero_infinity zeroes infinite losses.
  m.def(
      "ctc_loss(Tensor log_probs, Tensor targets, Tensor input_lengths, Tensor target_lengths, "
      "SymInt max_target_length, int blank, bool zero_infinity) -> (Tensor, Tensor)");
  // gradient w.r.t. log_probs in torch's form exp(lp) - occupancy / p (see ctc.h)
  m.def(
      "_ctc_loss_backward(Tensor grad, Tensor log_probs, Tensor targets, Tensor input_lengths, "
      "Tensor target_lengths, Tensor log_alpha, int blank, bool zero_infinity) -> Tensor");
  // CTC prefix beam search (CPU kernel): (labels [N, T] padded with -1, lengths [N],
  // log-probability of each best labelling [N], float32 or float64)
  m.def("ctc_beam_search_decode(Tensor log_probs, Tensor input_lengths, int beam_width, int blank) "
        "-> (Tensor, Tensor, Tensor)");
  // ---- sampling: grid_sample, fused affine (STN) and thin-plate-spline (RARE) warps.
  // interpolation_mode: 0 bilinear, 1 nearest; padding_mode: 0 zeros, 1 border, 2 reflection.
  m.def(
      "grid_sample(Tensor input, Tensor grid, int interpolation_mode, int padding_mode, bool align_corners) "
      "-> Tensor");
  // output_mask: (input, grid) gradients wanted; an unwanted one is returned as an empty tensor [0]
  m.def(
      "_grid_sample_backward(Tensor grad, Tensor input, Tensor grid, int interpolation_mode, int padding_mode, "
      "bool align_corners, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def(
      "affine_grid_sample(Tensor input, Tensor theta, SymInt height, SymInt width, int interpolation_mode, "
      "int padding_mode, bool align_corners) -> Tensor");
  // the fused warp's backward: (grad_input, grad_theta), the output size read from grad
  m.def(
      "_affine_grid_sample_backward(Tensor grad, Tensor input, Tensor theta, int interpolation_mode, "
      "int padding_mode, bool align_corners, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def(
      "tps_grid(Tensor kernel_weights, Tensor affine_weights, Tensor target_points, SymInt height, SymInt width, "
      "bool align_corners) -> Tensor");
  // returns (grad_kernel_weights, grad_target_points); the affine part is one GEMM (sampling_tps_affine_grad)
  m.def(
      "_tps_grid_backward(Tensor grad_grid, Tensor kernel_weights, Tensor target_points, bool align_corners) "
      "-> (Tensor, Tensor)");
  m.def(
      "tps_grid_sample(Tensor input, Tensor kernel_weights, Tensor affine_weights, Tensor target_points, "
      "SymInt height, SymInt width, int interpolation_mode, int padding_mode, bool align_corners) -> Tensor");
  // the fused TPS warp's backward: (grad_input, grad_kernel_weights, grad_affine_weights, grad_target_points);
  // output_mask: (input, the three TPS parameters)
  m.def(
      "_tps_grid_sample_backward(Tensor grad, Tensor input, Tensor kernel_weights, Tensor affine_weights, "
      "Tensor target_points, int interpolation_mode, int padding_mode, bool align_corners, bool[2] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // ---- boxes: axis-aligned IoU and NMS (x1, y1, x2, y2); keep indices are int64,
  // in order of decreasing score (ties: lower index first)
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  // (grad_boxes1, grad_boxes2)
  m.def("_box_iou_backward(Tensor grad, Tensor boxes1, Tensor boxes2) -> (Tensor, Tensor)");
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // fixed-size result: (keep [max_output_size] padded with -1, number kept as a 0-d int64 tensor)
  m.def(
      "nms_fixed(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold, int max_output_size) "
      "-> (Tensor, Tensor)");

  // ---- rotated: rotated boxes (cx, cy, w, h, angle in degrees ccw), RRPN
  // mode: 0 = iou, 1 = iof (intersection over the area of boxes1); aligned: pairwise [N] instead of [N, M]
  m.def("box_iou_rotated(Tensor boxes1, Tensor boxes2, int mode, bool aligned) -> Tensor");
  // rois [K, 6] (batch_index, cx, cy, w, h, angle_degrees_ccw)
  m.def(
      "roi_align_rotated(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_rotated_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
      "bool aligned) -> Tensor");
  // returns (output, argmax); argmax holds h * W + w of the max cell, -1 for empty bins
  m.def(
      "roi_pool_rotated(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
      "-> (Tensor, Tensor)");
  m.def(
      "_roi_pool_rotated_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
      "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
      "SymInt width) -> Tensor");

  // rotated NMS (generic NMS of nms.h with the rotated IoU); same conventions as nms / batched_nms
  m.def("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms_rotated(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");

  // ---- conv: F.conv2d and depthwise convolution (MobileNet). padding is
  // (top, bottom, left, right); activation: 0 none, 1 relu, 2 relu6 (fused epilogue).
  // depthwise weight [C * multiplier, 1, kH, kW].
  m.def(
      "depthwise_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, "
      "int activation) -> Tensor");
  // output: the forward result, needed when activation != 0. Returns (grad_input, grad_weight,
  // grad_bias); an unwanted one (output_mask) is an empty tensor [0].
  m.def(
      "_depthwise_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor? output, int[2] stride, "
      "int[4] padding, int[2] dilation, int activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, "
      "int groups) -> Tensor");
  m.def(
      "_conv2d_backward(Tensor grad, Tensor input, Tensor weight, int[2] stride, int[4] padding, int[2] dilation, "
      "int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
