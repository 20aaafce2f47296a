// RoIAlign and RoIPool on the CPU, forward and backward.
//
// RoIAlign is separable: every sample's bilinear weight is a product of a row
// weight and a column weight. Per RoI and bin we fold all samples of an axis into
// one dense run of per-cell weights ("taps"); a bin then costs
// rows x columns reads instead of samples x 4, and the taps are computed once per
// RoI for all channels.
//
// The backward kernels never race: each task owns whole (image, channel) planes
// of grad_input and visits that image's RoIs in index order, so the result is
// bit-identical whatever the thread count, deterministic mode or not.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "visionops/check.h"
#include "visionops/cpu_isa.h"
#include "visionops/roi.h"
#include "visionops/roi_ops.h"

namespace visionops {

namespace roi_kernels_generic {
#include "roi_cpu_kernels.inc"
}  // namespace roi_kernels_generic
#if VISIONOPS_X86_VARIANTS
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace roi_kernels_avx2 {
#include "roi_cpu_kernels.inc"
}  // namespace roi_kernels_avx2
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace roi_kernels_avx512 {
#include "roi_cpu_kernels.inc"
}  // namespace roi_kernels_avx512
#pragma GCC pop_options
#endif

// ---------------------------------------------------------------- argument checks

void check_roi_forward_args(const char* op, const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                            int64_t pooled_height, int64_t pooled_width) {
  VISIONOPS_CHECK(input.dim() == 4, op, ": input must be a 4-D tensor [N, C, H, W], got a ", input.dim(), "-D tensor");
  VISIONOPS_CHECK(at::isFloatingType(input.scalar_type()), op, ": input must be a floating-point tensor, got ",
              input.scalar_type());
  VISIONOPS_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": rois must be a tensor [K, 5] (batch_index, x1, y1, x2, y2), got shape ", rois.sizes());
  VISIONOPS_CHECK(rois.device() == input.device(), op, ": rois must be on the same device as input (", input.device(),
              "), got ", rois.device());
  VISIONOPS_CHECK(rois.scalar_type() == input.scalar_type(), op, ": rois must have the same dtype as input (",
              input.scalar_type(), "), got ", rois.scalar_type());
  VISIONOPS_CHECK(pooled_height > 0 && pooled_width > 0, op, ": output_size must be positive, got (", pooled_height, ", ",
              pooled_width, ")");
  VISIONOPS_CHECK(std::isfinite(spatial_scale) && spatial_scale > 0, op,
              ": spatial_scale must be a positive finite number, got ", spatial_scale);
}

void check_roi_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& rois, int64_t pooled_height,
                             int64_t pooled_width, int64_t batch_size, int64_t channels, int64_t height,
                             int64_t width) {
  VISIONOPS_CHECK(rois.dim() == 2 && rois.size(1) == 5, op, ": rois must be a tensor [K, 5], got shape ", rois.sizes());
  VISIONOPS_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": grad must have shape [", rois.size(0), ", ", channels, ", ", pooled_height, ", ", pooled_width,
              "], got ", grad.sizes());
  VISIONOPS_CHECK(grad.device() == rois.device(), op, ": grad and rois must be on the same device");
  VISIONOPS_CHECK(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op,
              ": input sizes must be non-negative");
}

void check_argmax_like_grad(const char* op, const at::Tensor& argmax, const at::Tensor& grad) {
  VISIONOPS_CHECK(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kLong, op,
                  ": argmax must be an int64 tensor shaped like grad ", grad.sizes(), ", got ", argmax.scalar_type(),
                  " ", argmax.sizes());
}

void check_roi_batch_indices(const char* op, const at::Tensor& rois, int64_t batch_size) {
  if (rois.size(0) == 0) return;
  const auto index = rois.select(1, 0);
  const bool ok = at::logical_and(index.ge(0), index.lt(batch_size)).all().item<bool>();
  VISIONOPS_CHECK(ok, op, ": rois[:, 0] (batch index) must lie in [0, ", batch_size, ") for an input batch of ",
              batch_size, " images");
}

namespace {

// ---------------------------------------------------------------- RoIAlign taps

struct Taps {
  int64_t first;   // first cell
  int64_t length;  // number of cells
  int64_t offset;  // into RoiTaps::weights
};

template <typename T>
struct RoiTaps {
  int64_t batch = -1;
  T inv_count = T(0);
  std::vector<Taps> rows, cols;  // one per output bin row / column
  std::vector<T> weights;
};

// Folds all samples of bin p along one axis into per-cell weights.
template <typename T>
void append_axis_taps(const RoiAlignAxis<T>& axis, int64_t bins, int64_t size, std::vector<Taps>& taps,
                      std::vector<T>& weights) {
  taps.resize(bins);
  for (int64_t p = 0; p < bins; ++p) {
    int64_t first_i, last_i;
    axis.valid_range(p, size, first_i, last_i);
    int64_t lo = INT64_MAX, hi = -1;
    for (int64_t i = first_i; i < last_i; ++i) {
      int64_t l, h;
      T wl, wh;
      if (!bilinear_axis(axis.sample(p, i), size, l, h, wl, wh)) continue;
      lo = std::min(lo, l);
      hi = std::max(hi, h);
    }
    Taps& t = taps[p];
    t.offset = static_cast<int64_t>(weights.size());
    if (hi < 0) {
      t.first = 0;
      t.length = 0;
      continue;
    }
    t.first = lo;
    t.length = hi - lo + 1;
    weights.resize(weights.size() + t.length, T(0));
    T* w = weights.data() + t.offset - lo;
    for (int64_t i = first_i; i < last_i; ++i) {
      int64_t l, h;
      T wl, wh;
      if (!bilinear_axis(axis.sample(p, i), size, l, h, wl, wh)) continue;
      w[l] += wl;
      w[h] += wh;
    }
  }
}

template <typename T, typename scalar_t>
std::vector<RoiTaps<T>> roi_align_taps(const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                                       int64_t pooled_width, int64_t sampling_ratio, bool aligned, int64_t batch_size,
                                       int64_t height, int64_t width) {
  const int64_t K = rois.size(0);
  std::vector<RoiTaps<T>> all(K);
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  at::parallel_for(0, K, 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const auto box = make_roi_align_box<T>(r + k * 5, static_cast<T>(spatial_scale), pooled_height, pooled_width,
                                             sampling_ratio, aligned, batch_size);
      RoiTaps<T>& t = all[k];
      t.batch = box.batch;
      if (box.batch < 0 || height == 0 || width == 0) {
        t.batch = -1;
        continue;
      }
      t.inv_count = T(1) / box.count;
      append_axis_taps(box.y, pooled_height, height, t.rows, t.weights);
      append_axis_taps(box.x, pooled_width, width, t.cols, t.weights);
    }
  });
  return all;
}

// RoI indices grouped by image, each group in increasing RoI order.
template <typename T>
std::vector<std::vector<int64_t>> rois_by_image(const std::vector<RoiTaps<T>>& taps, int64_t batch_size) {
  std::vector<std::vector<int64_t>> groups(batch_size);
  for (int64_t k = 0; k < static_cast<int64_t>(taps.size()); ++k)
    if (taps[k].batch >= 0) groups[taps[k].batch].push_back(k);
  return groups;
}

template <typename scalar_t>
void roi_align_forward_impl(const at::Tensor& input, const at::Tensor& rois, at::Tensor& output, double spatial_scale,
                            int64_t PH, int64_t PW, int64_t sampling_ratio, bool aligned, bool channels_last) {
  using T = at::opmath_type<scalar_t>;
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3), K = rois.size(0);
  const auto taps = roi_align_taps<T, scalar_t>(rois, spatial_scale, PH, PW, sampling_ratio, aligned, N, H, W);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();

  if (!channels_last) {
    at::parallel_for(0, K * C, 4, [&](int64_t begin, int64_t end) {
      for (int64_t kc = begin; kc < end; ++kc) {
        const int64_t k = kc / C, c = kc % C;
        const RoiTaps<T>& t = taps[k];
        scalar_t* o = out + kc * PH * PW;
        if (t.batch < 0) {
          std::fill(o, o + PH * PW, scalar_t(0));
          continue;
        }
        const scalar_t* plane = in + (t.batch * C + c) * H * W;
        for (int64_t ph = 0; ph < PH; ++ph) {
          const Taps& ty = t.rows[ph];
          const T* wy = t.weights.data() + ty.offset;
          for (int64_t pw = 0; pw < PW; ++pw) {
            const Taps& tx = t.cols[pw];
            const T* wx = t.weights.data() + tx.offset;
            T acc = T(0);
            for (int64_t a = 0; a < ty.length; ++a) {
              const scalar_t* row = plane + (ty.first + a) * W + tx.first;
              T row_acc = T(0);
              for (int64_t b = 0; b < tx.length; ++b) row_acc += wx[b] * static_cast<T>(row[b]);
              acc += wy[a] * row_acc;
            }
            o[ph * PW + pw] = static_cast<scalar_t>(acc * t.inv_count);
          }
        }
      }
    });
    return;
  }

  // channels_last: every read is a contiguous run of C values
  at::parallel_for(0, K * PH * PW, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(C);
    for (int64_t kb = begin; kb < end; ++kb) {
      const int64_t k = kb / (PH * PW), ph = (kb / PW) % PH, pw = kb % PW;
      const RoiTaps<T>& t = taps[k];
      scalar_t* o = out + kb * C;
      if (t.batch < 0) {
        std::fill(o, o + C, scalar_t(0));
        continue;
      }
      std::fill(acc.begin(), acc.end(), T(0));
      const Taps& ty = t.rows[ph];
      const Taps& tx = t.cols[pw];
      const T* wy = t.weights.data() + ty.offset;
      const T* wx = t.weights.data() + tx.offset;
      for (int64_t a = 0; a < ty.length; ++a) {
        for (int64_t b = 0; b < tx.length; ++b) {
          const T w = wy[a] * wx[b];
          const scalar_t* px = in + ((t.batch * H + ty.first + a) * W + tx.first + b) * C;
          for (int64_t c = 0; c < C; ++c) acc[c] += w * static_cast<T>(px[c]);
        }
      }
      for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(acc[c] * t.inv_count);
    }
  });
}

// grad_acc has the opmath dtype (float for half/bfloat16) so that many small
// contributions are not rounded to 16 bits one by one.
template <typename scalar_t>
void roi_align_backward_impl(const at::Tensor& grad, const at::Tensor& rois, at::Tensor& grad_acc,
                             double spatial_scale, int64_t PH, int64_t PW, int64_t sampling_ratio, bool aligned,
                             bool channels_last) {
  using T = at::opmath_type<scalar_t>;
  const int64_t N = grad_acc.size(0), C = grad_acc.size(1), H = grad_acc.size(2), W = grad_acc.size(3);
  const auto taps = roi_align_taps<T, scalar_t>(rois, spatial_scale, PH, PW, sampling_ratio, aligned, N, H, W);
  const auto groups = rois_by_image(taps, N);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  T* gin = grad_acc.mutable_data_ptr<T>();

  if (!channels_last) {
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / C, c = nc % C;
        T* plane = gin + nc * H * W;
        for (const int64_t k : groups[n]) {
          const RoiTaps<T>& t = taps[k];
          const scalar_t* gk = g + (k * C + c) * PH * PW;
          for (int64_t ph = 0; ph < PH; ++ph) {
            const Taps& ty = t.rows[ph];
            const T* wy = t.weights.data() + ty.offset;
            for (int64_t pw = 0; pw < PW; ++pw) {
              const Taps& tx = t.cols[pw];
              const T* wx = t.weights.data() + tx.offset;
              const T gv = static_cast<T>(gk[ph * PW + pw]) * t.inv_count;
              for (int64_t a = 0; a < ty.length; ++a) {
                T* row = plane + (ty.first + a) * W + tx.first;
                const T ga = gv * wy[a];
                for (int64_t b = 0; b < tx.length; ++b) row[b] += ga * wx[b];
              }
            }
          }
        }
      }
    });
    return;
  }

  constexpr int64_t kChannelBlock = 64;
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nb = begin; nb < end; ++nb) {
      const int64_t n = nb / blocks, c0 = (nb % blocks) * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock);
      for (const int64_t k : groups[n]) {
        const RoiTaps<T>& t = taps[k];
        for (int64_t ph = 0; ph < PH; ++ph) {
          const Taps& ty = t.rows[ph];
          const T* wy = t.weights.data() + ty.offset;
          for (int64_t pw = 0; pw < PW; ++pw) {
            const Taps& tx = t.cols[pw];
            const T* wx = t.weights.data() + tx.offset;
            const scalar_t* gp = g + ((k * PH + ph) * PW + pw) * C;
            for (int64_t a = 0; a < ty.length; ++a) {
              for (int64_t b = 0; b < tx.length; ++b) {
                const T w = wy[a] * wx[b] * t.inv_count;
                T* px = gin + ((n * H + ty.first + a) * W + tx.first + b) * C;
                for (int64_t c = c0; c < c1; ++c) px[c] += w * static_cast<T>(gp[c]);
              }
            }
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------- RoIPool

// RoIPool forward, one RoI at a time: its cells are copied once into a patch
// with the channels innermost, then every bin folds its cells into per-channel
// maxima with vector instructions (fold_cell_max), instead of scanning each
// bin of each channel on its own, a chain of dependent scalar compares. The
// result equals window_max (roi.h) channel by channel: same scan order, same
// first-maximum and NaN rules. RoIs whose patch (or bins x channels) would be
// huge, and maps past 2^31 cells, take the scalar scan.
constexpr int64_t kMaxPoolPatch = int64_t(1) << 22;  // elements of one thread's buffers (16 MiB each in float)

template <typename scalar_t>
void roi_pool_forward_impl(const at::Tensor& input, const at::Tensor& rois, at::Tensor& output, at::Tensor& argmax,
                           double spatial_scale, int64_t PH, int64_t PW, bool channels_last) {
  using T = at::opmath_type<scalar_t>;
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3), K = rois.size(0);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  int64_t* arg = argmax.mutable_data_ptr<int64_t>();
  // strides of one (image, channel) in the input, of a channel and a bin in the output
  const int64_t s_img = C * H * W, s_c = channels_last ? 1 : H * W, s_px = channels_last ? C : 1;
  const int64_t o_c = channels_last ? 1 : PH * PW, o_bin = channels_last ? C : 1;
  const int64_t bins = PH * PW;
  const auto fold = VISIONOPS_ISA_KERNEL_WIDE(roi_kernels, fold_cell_max, T);
  const bool small_map = H * W <= std::numeric_limits<int32_t>::max();

  // bins are computed once per RoI, then reused for every channel
  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> rows(2 * PH), cols(2 * PW);
    std::vector<T> patch, best;
    std::vector<int32_t> index;
    for (int64_t k = begin; k < end; ++k) {
      const auto box = make_roi_pool_box<T>(r + k * 5, static_cast<T>(spatial_scale), PH, PW, N);
      for (int64_t ph = 0; ph < PH; ++ph) box.rows(ph, H, rows[2 * ph], rows[2 * ph + 1]);
      for (int64_t pw = 0; pw < PW; ++pw) box.cols(pw, W, cols[2 * pw], cols[2 * pw + 1]);
      if (box.batch < 0) std::fill(rows.begin(), rows.end(), int64_t(0));  // invalid RoI: every bin empty
      const scalar_t* image = in + (box.batch < 0 ? 0 : box.batch) * s_img;
      scalar_t* o = out + k * C * bins;
      int64_t* a = arg + k * C * bins;
      // the cells any bin reads: [h_lo, h_hi) x [w_lo, w_hi) (bins are ordered along each axis)
      const int64_t h_lo = rows[0], h_hi = std::max(rows[2 * PH - 1], h_lo);
      const int64_t w_lo = cols[0], w_hi = std::max(cols[2 * PW - 1], w_lo);
      const int64_t patch_w = w_hi - w_lo, cells = (h_hi - h_lo) * patch_w;
      if (!small_map || cells * C > kMaxPoolPatch || bins * C > kMaxPoolPatch) {
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t bin = 0; bin < bins; ++bin) {
            const int64_t ph = bin / PW, pw = bin % PW;
            T value;
            a[c * o_c + bin * o_bin] = window_max<T, scalar_t, int64_t>(
                image + c * s_c, s_px, W, rows[2 * ph], rows[2 * ph + 1], cols[2 * pw], cols[2 * pw + 1], value);
            o[c * o_c + bin * o_bin] = static_cast<scalar_t>(value);
          }
        }
        continue;
      }
      patch.resize(cells * C);
      best.resize(bins * C);
      index.resize(bins * C);
      if (channels_last) {
        for (int64_t h = h_lo; h < h_hi; ++h) {
          for (int64_t w = w_lo; w < w_hi; ++w) {
            const scalar_t* src = image + (h * W + w) * C;
            T* dst = patch.data() + ((h - h_lo) * patch_w + (w - w_lo)) * C;
            for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<T>(src[c]);
          }
        }
      } else {
        // row by row, so that the patch row being written and the input lines
        // being read both stay in L1
        for (int64_t h = h_lo; h < h_hi; ++h) {
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* src = image + c * s_c + h * W;
            T* dst = patch.data() + (h - h_lo) * patch_w * C + c;
            for (int64_t w = w_lo; w < w_hi; ++w) dst[(w - w_lo) * C] = static_cast<T>(src[w]);
          }
        }
      }
      for (int64_t bin = 0; bin < bins; ++bin) {
        const int64_t h0 = rows[2 * (bin / PW)], h1 = rows[2 * (bin / PW) + 1];
        const int64_t w0 = cols[2 * (bin % PW)], w1 = cols[2 * (bin % PW) + 1];
        T* bin_best = best.data() + bin * C;
        int32_t* bin_index = index.data() + bin * C;
        if (h1 <= h0 || w1 <= w0) {
          std::fill(bin_best, bin_best + C, T(0));
          std::fill(bin_index, bin_index + C, -1);
          continue;
        }
        std::copy_n(patch.data() + ((h0 - h_lo) * patch_w + (w0 - w_lo)) * C, C, bin_best);
        std::fill(bin_index, bin_index + C, static_cast<int32_t>(h0 * W + w0));
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t w = (h == h0 ? w0 + 1 : w0); w < w1; ++w) {
            fold(patch.data() + ((h - h_lo) * patch_w + (w - w_lo)) * C, C, static_cast<int32_t>(h * W + w), bin_best,
                 bin_index);
          }
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t bin = 0; bin < bins; ++bin) {
          o[c * o_c + bin * o_bin] = static_cast<scalar_t>(best[bin * C + c]);
          a[c * o_c + bin * o_bin] = index[bin * C + c];
        }
      }
    }
  });
}

template <typename scalar_t>
void roi_pool_backward_impl(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                            at::Tensor& grad_acc, bool channels_last) {
  using T = at::opmath_type<scalar_t>;
  const int64_t N = grad_acc.size(0), C = grad_acc.size(1), H = grad_acc.size(2), W = grad_acc.size(3);
  const int64_t K = rois.size(0), PH = grad.size(2), PW = grad.size(3);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  const int64_t* arg = argmax.const_data_ptr<int64_t>();
  T* gin = grad_acc.mutable_data_ptr<T>();
  std::vector<std::vector<int64_t>> groups(N);
  for (int64_t k = 0; k < K; ++k) {
    const T b = static_cast<T>(r[k * 5]);
    if (b >= T(0) && b < static_cast<T>(N)) groups[static_cast<int64_t>(b)].push_back(k);
  }
  const int64_t s_c = channels_last ? 1 : H * W, s_px = channels_last ? C : 1;
  const int64_t o_c = channels_last ? 1 : PH * PW, o_bin = channels_last ? C : 1;
  const int64_t HW = H * W;
  at::parallel_for(0, N * C, 4, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      T* plane = gin + n * C * HW + c * s_c;
      for (const int64_t k : groups[n]) {
        const int64_t base = k * C * PH * PW + c * o_c;
        for (int64_t bin = 0; bin < PH * PW; ++bin) {
          const int64_t idx = arg[base + bin * o_bin];
          if (idx >= 0 && idx < HW) plane[idx * s_px] += static_cast<T>(g[base + bin * o_bin]);
        }
      }
    }
  });
}

// ---------------------------------------------------------------- op entry points

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  check_roi_forward_args("roi_align", input, rois, spatial_scale, pooled_height, pooled_width);
  check_roi_batch_indices("roi_align", rois, input.size(0));
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  auto output = empty_pooled(input, rois.size(0), pooled_height, pooled_width, fmt);
  if (output.numel() == 0) return output;
  if (input.numel() == 0) return output.zero_();
  const auto in = input.contiguous(fmt);
  const auto r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cpu", [&] {
    roi_align_forward_impl<scalar_t>(in, r, output, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                                     aligned, cl);
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_backward_args("_roi_align_backward", grad, rois, pooled_height, pooled_width, batch_size, channels,
                          height, width);
  const bool cl = use_channels_last(grad);
  const auto fmt = memory_format_for(cl);
  auto grad_acc = zeroed_grad_accumulator(grad, batch_size, channels, height, width, fmt);
  if (grad.numel() != 0 && grad_acc.numel() != 0) {
    const auto g = grad.contiguous(fmt);
    const auto r = rois.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
      roi_align_backward_impl<scalar_t>(g, r, grad_acc, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                                        aligned, cl);
    });
  }
  return as_grad_dtype(grad_acc, grad);
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                        double spatial_scale, int64_t pooled_height,
                                                        int64_t pooled_width) {
  check_roi_forward_args("roi_pool", input, rois, spatial_scale, pooled_height, pooled_width);
  check_roi_batch_indices("roi_pool", rois, input.size(0));
  const bool cl = use_channels_last(input);
  const auto fmt = memory_format_for(cl);
  auto output = empty_pooled(input, rois.size(0), pooled_height, pooled_width, fmt);
  auto argmax = empty_pooled(input, rois.size(0), pooled_height, pooled_width, fmt, at::kLong);
  if (output.numel() == 0) return {output, argmax};
  if (input.numel() == 0) return {output.zero_(), argmax.fill_(-1)};
  const auto in = input.contiguous(fmt);
  const auto r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_cpu", [&] {
    roi_pool_forward_impl<scalar_t>(in, r, output, argmax, spatial_scale, pooled_height, pooled_width, cl);
  });
  return {output, argmax};
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                 int64_t channels, int64_t height, int64_t width) {
  check_roi_backward_args("_roi_pool_backward", grad, rois, pooled_height, pooled_width, batch_size, channels, height,
                          width);
  check_argmax_like_grad("_roi_pool_backward", argmax, grad);
  const bool cl = use_channels_last(argmax);
  const auto fmt = memory_format_for(cl);
  auto grad_acc = zeroed_grad_accumulator(grad, batch_size, channels, height, width, fmt);
  if (grad.numel() != 0 && grad_acc.numel() != 0) {
    const auto g = grad.contiguous(fmt);
    const auto a = argmax.contiguous(fmt);
    const auto r = rois.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_cpu", [&] {
      roi_pool_backward_impl<scalar_t>(g, r, a, grad_acc, cl);
    });
  }
  return as_grad_dtype(grad_acc, grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
  m.impl("roi_pool", &roi_pool_forward_cpu);
  m.impl("_roi_pool_backward", &roi_pool_backward_cpu);
}

}  // namespace visionops
