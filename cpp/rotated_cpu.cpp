// Rotated boxes on the CPU: box_iou_rotated, roi_align_rotated and
// roi_pool_rotated (forward and backward).
//
// The pooling kernels first turn every RoI into per-bin lists of (cell, weight)
// "taps" (RoIAlign: the bilinear weights of all samples, already divided by the
// sample count; RoIPool: the visited cells in visit order), once per RoI for
// all channels. The backward kernels never race: each task owns whole
// (image, channel) planes of grad_input and visits that image's RoIs in index
// order, so the result is bit-identical whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "visionops/check.h"
#include "visionops/roi.h"
#include "visionops/roi_ops.h"
#include "visionops/rotated.h"
#include "visionops/rotated_ops.h"

namespace visionops {

// ---------------------------------------------------------------- argument checks

void check_box_iou_rotated_args(const at::Tensor& boxes1, const at::Tensor& boxes2, int64_t mode, bool aligned) {
  const char* op = "box_iou_rotated";
  VISIONOPS_CHECK(boxes1.dim() == 2 && boxes1.size(1) == 5, op,
              ": boxes1 must be a tensor [N, 5] (cx, cy, w, h, angle), got shape ", boxes1.sizes());
  VISIONOPS_CHECK(boxes2.dim() == 2 && boxes2.size(1) == 5, op,
              ": boxes2 must be a tensor [M, 5] (cx, cy, w, h, angle), got shape ", boxes2.sizes());
  VISIONOPS_CHECK(at::isFloatingType(boxes1.scalar_type()), op, ": boxes1 must be a floating-point tensor, got ",
              boxes1.scalar_type());
  VISIONOPS_CHECK(boxes2.scalar_type() == boxes1.scalar_type(), op, ": boxes2 must have the same dtype as boxes1 (",
              boxes1.scalar_type(), "), got ", boxes2.scalar_type());
  VISIONOPS_CHECK(boxes2.device() == boxes1.device(), op, ": boxes2 must be on the same device as boxes1 (",
              boxes1.device(), "), got ", boxes2.device());
  VISIONOPS_CHECK(mode == kRotatedIoU || mode == kRotatedIoF, op, ": mode must be 0 (iou) or 1 (iof), got ", mode);
  VISIONOPS_CHECK(!aligned || boxes1.size(0) == boxes2.size(0), op,
              ": aligned=True needs as many boxes1 as boxes2, got ", boxes1.size(0), " and ", boxes2.size(0));
}

void check_rotated_roi_forward_args(const char* op, const at::Tensor& input, const at::Tensor& rois,
                                    double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
  VISIONOPS_CHECK(input.dim() == 4, op, ": input must be a 4-D tensor [N, C, H, W], got a ", input.dim(), "-D tensor");
  VISIONOPS_CHECK(at::isFloatingType(input.scalar_type()), op, ": input must be a floating-point tensor, got ",
              input.scalar_type());
  VISIONOPS_CHECK(rois.dim() == 2 && rois.size(1) == 6, op,
              ": rois must be a tensor [K, 6] (batch_index, cx, cy, w, h, angle), got shape ", rois.sizes());
  VISIONOPS_CHECK(rois.device() == input.device(), op, ": rois must be on the same device as input (", input.device(),
              "), got ", rois.device());
  VISIONOPS_CHECK(rois.scalar_type() == input.scalar_type(), op, ": rois must have the same dtype as input (",
              input.scalar_type(), "), got ", rois.scalar_type());
  VISIONOPS_CHECK(pooled_height > 0 && pooled_width > 0, op, ": output_size must be positive, got (", pooled_height, ", ",
              pooled_width, ")");
  VISIONOPS_CHECK(std::isfinite(spatial_scale) && spatial_scale > 0, op,
              ": spatial_scale must be a positive finite number, got ", spatial_scale);
}

void check_rotated_roi_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                                     int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                     int64_t channels, int64_t height, int64_t width) {
  VISIONOPS_CHECK(rois.dim() == 2 && rois.size(1) == 6, op, ": rois must be a tensor [K, 6], got shape ", rois.sizes());
  VISIONOPS_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": grad must have shape [", rois.size(0), ", ", channels, ", ", pooled_height, ", ", pooled_width,
              "], got ", grad.sizes());
  VISIONOPS_CHECK(grad.device() == rois.device(), op, ": grad and rois must be on the same device");
  VISIONOPS_CHECK(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op,
              ": input sizes must be non-negative");
}

namespace {

// ---------------------------------------------------------------- box_iou_rotated

template <typename scalar_t>
void box_iou_rotated_impl(const at::Tensor& boxes1, const at::Tensor& boxes2, at::Tensor& out, int64_t mode,
                          bool aligned) {
  const scalar_t* a = boxes1.const_data_ptr<scalar_t>();
  const scalar_t* b = boxes2.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const int64_t M = boxes2.size(0), total = out.numel();
  const int m = static_cast<int>(mode);
  // grain: ~1 ms of work; smaller problems are not worth waking the thread pool
  at::parallel_for(0, total, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t i = aligned ? p : p / M, j = aligned ? p : p % M;
      o[p] = rotated_iou(a + i * 5, b + j * 5, m);
    }
  });
}

// ---------------------------------------------------------------- per-RoI taps

template <typename T>
struct RoiTapList {
  int64_t batch = -1;
  std::vector<int64_t> start;  // bin b's taps are [start[b], start[b + 1])
  std::vector<int64_t> cell;   // h * W + w
  std::vector<T> weight;       // RoIAlign only
};

// All bilinear taps of every bin, weights divided by the sample count. Taps
// of one bin that hit the same cell (neighbouring samples share cells when
// bins are small) are merged, so the per-channel loop reads each cell once.
template <typename T>
void align_taps(const RotatedAlignRoi<T>& roi, int64_t PH, int64_t PW, int64_t H, int64_t W, RoiTapList<T>& t) {
  t.start.assign(PH * PW + 1, 0);
  const T inv_count = T(1) / roi.count;
  std::vector<std::pair<int64_t, T>> bin_taps;
  for (int64_t ph = 0; ph < PH; ++ph) {
    for (int64_t pw = 0; pw < PW; ++pw) {
      t.start[ph * PW + pw] = static_cast<int64_t>(t.cell.size());
      bin_taps.clear();
      const RotatedLattice l = roi.lattice(ph, pw);
      int64_t j0, j1;
      l.rows(-1.0, static_cast<double>(W), -1.0, static_cast<double>(H), j0, j1);
      for (int64_t j = j0; j < j1; ++j) {
        const T vv = roi.v(ph, j);
        int64_t i0, i1;
        l.cols(static_cast<double>(vv), -1.0, static_cast<double>(W), -1.0, static_cast<double>(H), i0, i1);
        for (int64_t i = i0; i < i1; ++i) {
          const T uu = roi.u(pw, i);
          int64_t yl, yh, xl, xh;
          T wyl, wyh, wxl, wxh;
          if (!bilinear_axis(roi.y(uu, vv), H, yl, yh, wyl, wyh)) continue;
          if (!bilinear_axis(roi.x(uu, vv), W, xl, xh, wxl, wxh)) continue;
          bin_taps.emplace_back(yl * W + xl, wyl * wxl);
          bin_taps.emplace_back(yl * W + xh, wyl * wxh);
          bin_taps.emplace_back(yh * W + xl, wyh * wxl);
          bin_taps.emplace_back(yh * W + xh, wyh * wxh);
        }
      }
      std::stable_sort(bin_taps.begin(), bin_taps.end(),
                [](const std::pair<int64_t, T>& a, const std::pair<int64_t, T>& b) { return a.first < b.first; });
      for (size_t q = 0; q < bin_taps.size();) {
        const int64_t cell = bin_taps[q].first;
        T w = T(0);
        for (; q < bin_taps.size() && bin_taps[q].first == cell; ++q) w += bin_taps[q].second;
        t.cell.push_back(cell);
        t.weight.push_back(w * inv_count);
      }
    }
  }
  t.start[PH * PW] = static_cast<int64_t>(t.cell.size());
}

template <typename T>
void pool_taps(const RotatedPoolRoi<T>& roi, int64_t PH, int64_t PW, int64_t H, int64_t W, RoiTapList<T>& t) {
  t.start.assign(PH * PW + 1, 0);
  const double x0 = -0.5, x1 = static_cast<double>(W) - 0.5, y0 = -0.5, y1 = static_cast<double>(H) - 0.5;
  for (int64_t ph = 0; ph < PH; ++ph) {
    for (int64_t pw = 0; pw < PW; ++pw) {
      t.start[ph * PW + pw] = static_cast<int64_t>(t.cell.size());
      const RotatedLattice l = roi.lattice(ph, pw);
      int64_t j0, j1;
      l.rows(x0, x1, y0, y1, j0, j1);
      for (int64_t j = j0; j < j1; ++j) {
        const T vv = roi.v(ph, j);
        int64_t i0, i1;
        l.cols(static_cast<double>(vv), x0, x1, y0, y1, i0, i1);
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t cell = roi.cell(roi.u(pw, i), vv, H, W);
          if (cell >= 0) t.cell.push_back(cell);
        }
      }
    }
  }
  t.start[PH * PW] = static_cast<int64_t>(t.cell.size());
}

template <typename T, typename scalar_t>
std::vector<RoiTapList<T>> all_taps(const at::Tensor& rois, bool pool, double spatial_scale, int64_t PH, int64_t PW,
                                    int64_t sampling_ratio, bool aligned, int64_t N, int64_t H, int64_t W) {
  const int64_t K = rois.size(0);
  std::vector<RoiTapList<T>> all(K);
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  const T scale = static_cast<T>(spatial_scale);
  at::parallel_for(0, K, 8, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      RoiTapList<T>& t = all[k];
      if (pool) {
        const auto roi = make_rotated_pool_roi<T>(r + k * 6, scale, PH, PW, N);
        t.batch = roi.batch;
        if (roi.batch >= 0 && H > 0 && W > 0) pool_taps(roi, PH, PW, H, W, t);
      } else {
        const auto roi = make_rotated_align_roi<T>(r + k * 6, scale, PH, PW, sampling_ratio, aligned, N);
        t.batch = roi.batch;
        if (roi.batch >= 0 && H > 0 && W > 0) align_taps(roi, PH, PW, H, W, t);
      }
      if (t.start.empty()) {
        t.batch = -1;
        t.start.assign(PH * PW + 1, 0);
      }
    }
  });
  return all;
}

template <typename T>
std::vector<std::vector<int64_t>> group_by_image(const std::vector<RoiTapList<T>>& taps, int64_t N) {
  std::vector<std::vector<int64_t>> groups(N);
  for (int64_t k = 0; k < static_cast<int64_t>(taps.size()); ++k)
    if (taps[k].batch >= 0) groups[taps[k].batch].push_back(k);
  return groups;
}

// Strides (in elements) of the NCHW / channels_last layouts used below.
struct Layout {
  int64_t img, c, px;  // input / grad_input: image, channel, cell
  int64_t oc, obin;    // output / grad: channel, bin (the RoI stride is C * PH * PW in both layouts)
  Layout(bool cl, int64_t C, int64_t H, int64_t W, int64_t PH, int64_t PW)
      : img(C * H * W), c(cl ? 1 : H * W), px(cl ? C : 1), oc(cl ? 1 : PH * PW), obin(cl ? C : 1) {}
};

// ---------------------------------------------------------------- roi_align_rotated

template <typename scalar_t>
void roi_align_rotated_forward_impl(const at::Tensor& input, const at::Tensor& rois, at::Tensor& output,
                                    double spatial_scale, int64_t PH, int64_t PW, int64_t sampling_ratio,
                                    bool aligned, bool cl) {
  using T = at::opmath_type<scalar_t>;
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3), K = rois.size(0);
  const auto taps = all_taps<T, scalar_t>(rois, false, spatial_scale, PH, PW, sampling_ratio, aligned, N, H, W);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const Layout L(cl, C, H, W, PH, PW);
  at::parallel_for(0, K * C, 4, [&](int64_t begin, int64_t end) {
    for (int64_t kc = begin; kc < end; ++kc) {
      const int64_t k = kc / C, c = kc % C;
      const RoiTapList<T>& t = taps[k];
      const scalar_t* plane = in + (t.batch < 0 ? 0 : t.batch) * L.img + c * L.c;
      scalar_t* o = out + k * C * PH * PW + c * L.oc;
      for (int64_t bin = 0; bin < PH * PW; ++bin) {
        T acc = T(0);
        for (int64_t q = t.start[bin]; q < t.start[bin + 1]; ++q)
          acc += t.weight[q] * static_cast<T>(plane[t.cell[q] * L.px]);
        o[bin * L.obin] = static_cast<scalar_t>(acc);
      }
    }
  });
}

template <typename scalar_t>
void roi_align_rotated_backward_impl(const at::Tensor& grad, const at::Tensor& rois, at::Tensor& grad_acc,
                                     double spatial_scale, int64_t PH, int64_t PW, int64_t sampling_ratio,
                                     bool aligned, bool cl) {
  using T = at::opmath_type<scalar_t>;
  const int64_t N = grad_acc.size(0), C = grad_acc.size(1), H = grad_acc.size(2), W = grad_acc.size(3);
  const auto taps = all_taps<T, scalar_t>(rois, false, spatial_scale, PH, PW, sampling_ratio, aligned, N, H, W);
  const auto groups = group_by_image(taps, N);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  T* gin = grad_acc.mutable_data_ptr<T>();
  const Layout L(cl, C, H, W, PH, PW);
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      T* plane = gin + n * L.img + c * L.c;
      for (const int64_t k : groups[n]) {
        const RoiTapList<T>& t = taps[k];
        const scalar_t* gk = g + k * C * PH * PW + c * L.oc;
        for (int64_t bin = 0; bin < PH * PW; ++bin) {
          const T gv = static_cast<T>(gk[bin * L.obin]);
          for (int64_t q = t.start[bin]; q < t.start[bin + 1]; ++q) plane[t.cell[q] * L.px] += gv * t.weight[q];
        }
      }
    }
  });
}

// ---------------------------------------------------------------- roi_pool_rotated

template <typename scalar_t>
void roi_pool_rotated_forward_impl(const at::Tensor& input, const at::Tensor& rois, at::Tensor& output,
                                   at::Tensor& argmax, double spatial_scale, int64_t PH, int64_t PW, bool cl) {
  using T = at::opmath_type<scalar_t>;
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3), K = rois.size(0);
  const auto taps = all_taps<T, scalar_t>(rois, true, spatial_scale, PH, PW, 0, false, N, H, W);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  int64_t* arg = argmax.mutable_data_ptr<int64_t>();
  const Layout L(cl, C, H, W, PH, PW);
  at::parallel_for(0, K * C, 4, [&](int64_t begin, int64_t end) {
    for (int64_t kc = begin; kc < end; ++kc) {
      const int64_t k = kc / C, c = kc % C;
      const RoiTapList<T>& t = taps[k];
      const scalar_t* plane = in + (t.batch < 0 ? 0 : t.batch) * L.img + c * L.c;
      scalar_t* o = out + k * C * PH * PW + c * L.oc;
      int64_t* a = arg + k * C * PH * PW + c * L.oc;
      for (int64_t bin = 0; bin < PH * PW; ++bin) {
        const int64_t q0 = t.start[bin], q1 = t.start[bin + 1];
        T best = T(0);
        int64_t best_cell = -1;
        if (q0 < q1) {
          best_cell = t.cell[q0];
          best = static_cast<T>(plane[best_cell * L.px]);
          // first maximum wins, selected without branches (as window_max in
          // roi.h); a NaN propagates as in torch.max: the first one is the result
          bool nan = false;
          for (int64_t q = q0 + 1; q < q1; ++q) {
            const int64_t cell = t.cell[q];
            const T v = static_cast<T>(plane[cell * L.px]);
            const int64_t take = -static_cast<int64_t>(v > best);
            best_cell = (cell & take) | (best_cell & ~take);
            best = best < v ? v : best;
            nan |= !(v == v);
          }
          if (nan || !(best == best)) {
            for (int64_t q = q0; q < q1; ++q) {
              const T v = static_cast<T>(plane[t.cell[q] * L.px]);
              if (!(v == v)) {
                best = v;
                best_cell = t.cell[q];
                break;
              }
            }
          }
        }
        o[bin * L.obin] = static_cast<scalar_t>(best);
        a[bin * L.obin] = best_cell;
      }
    }
  });
}

template <typename scalar_t>
void roi_pool_rotated_backward_impl(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                    at::Tensor& grad_acc, bool cl) {
  using T = at::opmath_type<scalar_t>;
  const int64_t N = grad_acc.size(0), C = grad_acc.size(1), H = grad_acc.size(2), W = grad_acc.size(3);
  const int64_t K = rois.size(0), PH = grad.size(2), PW = grad.size(3);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  const int64_t* arg = argmax.const_data_ptr<int64_t>();
  T* gin = grad_acc.mutable_data_ptr<T>();
  std::vector<std::vector<int64_t>> groups(N);
  for (int64_t k = 0; k < K; ++k) {
    const T b = static_cast<T>(r[k * 6]);
    if (b >= T(0) && b < static_cast<T>(N)) groups[static_cast<int64_t>(b)].push_back(k);
  }
  const Layout L(cl, C, H, W, PH, PW);
  const int64_t HW = H * W;
  at::parallel_for(0, N * C, 4, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      T* plane = gin + n * L.img + c * L.c;
      for (const int64_t k : groups[n]) {
        const int64_t base = k * C * PH * PW + c * L.oc;
        for (int64_t bin = 0; bin < PH * PW; ++bin) {
          const int64_t idx = arg[base + bin * L.obin];
          if (idx >= 0 && idx < HW) plane[idx * L.px] += static_cast<T>(g[base + bin * L.obin]);
        }
      }
    }
  });
}

// ---------------------------------------------------------------- op entry points

at::Tensor box_iou_rotated_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, int64_t mode, bool aligned) {
  check_box_iou_rotated_args(boxes1, boxes2, mode, aligned);
  auto out = aligned ? at::empty({boxes1.size(0)}, boxes1.options())
                     : at::empty({boxes1.size(0), boxes2.size(0)}, boxes1.options());
  if (out.numel() == 0) return out;
  const auto a = boxes1.contiguous();
  const auto b = boxes2.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "box_iou_rotated_cpu",
                                  [&] { box_iou_rotated_impl<scalar_t>(a, b, out, mode, aligned); });
  return out;
}

at::Tensor roi_align_rotated_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                         int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                         bool aligned) {
  check_rotated_roi_forward_args("roi_align_rotated", input, rois, spatial_scale, pooled_height, pooled_width);
  check_roi_batch_indices("roi_align_rotated", rois, input.size(0));
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  auto output = empty_pooled(input, rois.size(0), pooled_height, pooled_width, fmt);
  if (output.numel() == 0) return output;
  if (input.numel() == 0) return output.zero_();
  const auto in = input.contiguous(fmt);
  const auto r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_rotated_forward_cpu", [&] {
    roi_align_rotated_forward_impl<scalar_t>(in, r, output, spatial_scale, pooled_height, pooled_width,
                                             sampling_ratio, aligned, cl);
  });
  return output;
}

at::Tensor roi_align_rotated_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                          int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                          int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                          bool aligned) {
  check_rotated_roi_backward_args("_roi_align_rotated_backward", grad, rois, pooled_height, pooled_width, batch_size,
                                  channels, height, width);
  const bool cl = use_channels_last(grad);
  const auto fmt = memory_format_for(cl);
  auto grad_acc = zeroed_grad_accumulator(grad, batch_size, channels, height, width, fmt);
  if (grad.numel() != 0 && grad_acc.numel() != 0) {
    const auto g = grad.contiguous(fmt);
    const auto r = rois.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_rotated_backward_cpu",
                                    [&] {
                                      roi_align_rotated_backward_impl<scalar_t>(g, r, grad_acc, spatial_scale,
                                                                                pooled_height, pooled_width,
                                                                                sampling_ratio, aligned, cl);
                                    });
  }
  return as_grad_dtype(grad_acc, grad);
}

std::tuple<at::Tensor, at::Tensor> roi_pool_rotated_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                                double spatial_scale, int64_t pooled_height,
                                                                int64_t pooled_width) {
  check_rotated_roi_forward_args("roi_pool_rotated", input, rois, spatial_scale, pooled_height, pooled_width);
  check_roi_batch_indices("roi_pool_rotated", rois, input.size(0));
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  auto output = empty_pooled(input, rois.size(0), pooled_height, pooled_width, fmt);
  auto argmax = empty_pooled(input, rois.size(0), pooled_height, pooled_width, fmt, at::kLong);
  if (output.numel() == 0) return {output, argmax};
  if (input.numel() == 0) return {output.zero_(), argmax.fill_(-1)};
  const auto in = input.contiguous(fmt);
  const auto r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_rotated_forward_cpu", [&] {
    roi_pool_rotated_forward_impl<scalar_t>(in, r, output, argmax, spatial_scale, pooled_height, pooled_width, cl);
  });
  return {output, argmax};
}

at::Tensor roi_pool_rotated_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                         double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                         int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  check_rotated_roi_backward_args("_roi_pool_rotated_backward", grad, rois, pooled_height, pooled_width, batch_size,
                                  channels, height, width);
  check_argmax_like_grad("_roi_pool_rotated_backward", argmax, grad);
  const bool cl = use_channels_last(argmax);
  const auto fmt = memory_format_for(cl);
  auto grad_acc = zeroed_grad_accumulator(grad, batch_size, channels, height, width, fmt);
  if (grad.numel() != 0 && grad_acc.numel() != 0) {
    const auto g = grad.contiguous(fmt);
    const auto a = argmax.contiguous(fmt);
    const auto r = rois.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_rotated_backward_cpu",
                                    [&] { roi_pool_rotated_backward_impl<scalar_t>(g, r, a, grad_acc, cl); });
  }
  return as_grad_dtype(grad_acc, grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, CPU, m) {
  m.impl("box_iou_rotated", &box_iou_rotated_cpu);
  m.impl("roi_align_rotated", &roi_align_rotated_forward_cpu);
  m.impl("_roi_align_rotated_backward", &roi_align_rotated_backward_cpu);
  m.impl("roi_pool_rotated", &roi_pool_rotated_forward_cpu);
  m.impl("_roi_pool_rotated_backward", &roi_pool_rotated_backward_cpu);
}

}  // namespace visionops
