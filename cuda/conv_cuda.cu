// Convolution on CUDA: depthwise_conv2d (direct kernels) and conv2d (our
// im2col / col2im + at::mm, i.e. cuBLAS).
//
// Depthwise, deterministic (no atomics anywhere), in two versions: tiled fast
// paths with 32-bit arithmetic within a plane ("depthwise fast paths" below)
// for every tensor whose planes / images fit, and the per-element kernels first
// in this file for any size:
// * forward: one thread per output element, in the output's memory order (for
//   channels_last consecutive threads take consecutive channels: coalesced);
// * grad_input: one thread per input element, gathering the taps that read it
//   (conv_source_output in conv.h), summed over the channel's m outputs;
// * grad_weight: one block per (output channel, tap), a fixed-shape tree
//   reduction over batch and pixels: bit-identical from run to run.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "visionops/check.h"
#include "visionops/conv.h"
#include "visionops/conv_ops.h"

namespace visionops {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) {
  // grid-stride loops cover anything beyond this
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20));
}

#define VISIONOPS_GRID_STRIDE_LOOP(i, n)                                                    \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// (n, c, y, x) of linear index i of an [N, C, Y, X] tensor stored NCHW or channels_last
template <bool kCL>
__device__ __forceinline__ void unravel(int64_t i, int64_t C, int64_t Y, int64_t X, int64_t& n, int64_t& c,
                                        int64_t& y, int64_t& x) {
  if (kCL) {
    c = i % C;
    i /= C;
    x = i % X;
    i /= X;
    y = i % Y;
    n = i / Y;
  } else {
    x = i % X;
    i /= X;
    y = i % Y;
    i /= Y;
    c = i % C;
    n = i / C;
  }
}

template <bool kCL>
__device__ __forceinline__ int64_t ravel(int64_t n, int64_t c, int64_t y, int64_t x, int64_t C, int64_t Y,
                                         int64_t X) {
  return kCL ? ((n * Y + y) * X + x) * C + c : ((n * C + c) * Y + y) * X + x;
}

// ---------------------------------------------------------------- depthwise

template <typename scalar_t, bool kCL>
__global__ void dw_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                                  const scalar_t* __restrict__ bias, scalar_t* __restrict__ output, ConvGeometry g,
                                  int64_t act, int64_t total) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(idx, total) {
    int64_t n, oc, oh, ow;
    unravel<kCL>(idx, g.OC, g.OH, g.OW, n, oc, oh, ow);
    const int64_t c = oc / g.m;
    T acc = bias ? static_cast<T>(bias[oc]) : T(0);
    const scalar_t* w = weight + oc * g.KH * g.KW;
    for (int64_t i = 0; i < g.KH; ++i) {
      const int64_t ih = oh * g.sh - g.pt + i * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t iw = ow * g.sw - g.pl + j * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        acc += static_cast<T>(w[i * g.KW + j]) * static_cast<T>(input[ravel<kCL>(n, c, ih, iw, g.C, g.H, g.W)]);
      }
    }
    output[idx] = static_cast<scalar_t>(apply_activation(acc, act));
  }
}

template <typename scalar_t, bool kCL>
__global__ void dw_grad_input_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ weight,
                                     scalar_t* __restrict__ grad_input, ConvGeometry g, int64_t total) {
  using T = at::opmath_type<scalar_t>;
  VISIONOPS_GRID_STRIDE_LOOP(idx, total) {
    int64_t n, c, ih, iw;
    unravel<kCL>(idx, g.C, g.H, g.W, n, c, ih, iw);
    T acc = T(0);
    for (int64_t i = 0; i < g.KH; ++i) {
      const int64_t oh = conv_source_output(ih, i, g.pt, g.sh, g.dh, g.OH);
      if (oh < 0) continue;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t ow = conv_source_output(iw, j, g.pl, g.sw, g.dw, g.OW);
        if (ow < 0) continue;
        for (int64_t k = 0; k < g.m; ++k) {
          const int64_t oc = c * g.m + k;
          acc += static_cast<T>(weight[(oc * g.KH + i) * g.KW + j]) *
                 static_cast<T>(grad[ravel<kCL>(n, oc, oh, ow, g.OC, g.OH, g.OW)]);
        }
      }
    }
    grad_input[idx] = static_cast<scalar_t>(acc);
  }
}

// one block per (output channel, tap); fixed reduction tree -> deterministic
template <typename scalar_t, bool kCL>
__global__ void dw_grad_weight_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ input,
                                      scalar_t* __restrict__ grad_weight, ConvGeometry g) {
  using T = at::opmath_type<scalar_t>;
  __shared__ T partial[kThreads];
  const int64_t KK = g.KH * g.KW;
  const int64_t oc = blockIdx.x / KK, t = blockIdx.x % KK;
  const int64_t i = t / g.KW, j = t % g.KW, c = oc / g.m;
  const int64_t positions = g.N * g.OH * g.OW;
  T acc = T(0);
  for (int64_t p = threadIdx.x; p < positions; p += blockDim.x) {
    const int64_t ow = p % g.OW, oh = (p / g.OW) % g.OH, n = p / (g.OW * g.OH);
    const int64_t ih = oh * g.sh - g.pt + i * g.dh, iw = ow * g.sw - g.pl + j * g.dw;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
    acc += static_cast<T>(grad[ravel<kCL>(n, oc, oh, ow, g.OC, g.OH, g.OW)]) *
           static_cast<T>(input[ravel<kCL>(n, c, ih, iw, g.C, g.H, g.W)]);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_weight[blockIdx.x] = static_cast<scalar_t>(partial[0]);
}

// ---------------------------------------------------------------- depthwise fast paths
//
// The per-element kernels above spend most of their time on 64-bit index
// division (six per element, emulated on the GPU) and the weight gradient runs
// only OC * KH * KW blocks, each over the whole batch. Measured on an H100
// (bench/results/NVIDIA-H100-80GB-HBM3-2026-11-27-conv.md) they reached 0.28-0.90x of
// cuDNN forward and 0.08-0.95x forward + backward. These kernels:
// * tile one plane (NCHW: 32 columns x 8 rows per block) or 32 channels x 8
//   pixels (channels_last: a warp reads 32 consecutive channels), so that a
//   thread finds its position without dividing;
// * index within a plane or image in 32 bits (64-bit bases), hence only when
//   DwGeom32::fits says that plane / image and the padded extents fit;
// * compute the weight gradient in two deterministic stages: one block per
//   (image, band of output rows, plane or channel group) sums every tap over its
//   band (taps in batches of kTapBatch register accumulators, a fixed reduction
//   tree), then one thread per weight sums the bands in order. The bands depend
//   on the output width alone, so a channel's gradient does not depend on how
//   many other channels there are (test_large checks this bit for bit).

constexpr int kTileX = 32, kTileY = 8;  // 256 threads
constexpr int kTapBatch = 9;            // a 3x3 kernel in one pass
constexpr int kMaxGridY = 65535;
constexpr int64_t kMaxGridX = (int64_t(1) << 31) - 1;
constexpr int kPlaneBandPositions = 4096;  // NCHW: 16 output positions per thread
constexpr int kClBandPositions = 128;      // channels_last: 16 per thread and channel
constexpr int kSmallPlane = 128;           // NCHW planes up to this size share a block
static_assert(kPlaneBandPositions >= kSmallPlane, "a small plane must be one weight-gradient band");

int ceil_div(int a, int b) { return (a + b - 1) / b; }

// blocks over `outer` (grid x, looped beyond 2^31 - 1) and `tiles` (grid y, looped beyond 65535)
dim3 fast_grid(int64_t outer, int tiles) {
  return dim3(unsigned(std::min<int64_t>(outer, kMaxGridX)), unsigned(std::min(tiles, kMaxGridY)));
}

struct DwGeom32 {
  int C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, m;

  static bool fits(const ConvGeometry& g, bool channels_last) {
    constexpr int64_t kLimit = int64_t(1) << 30;
    const int64_t in_size = g.H * g.W * (channels_last ? g.C : 1);
    const int64_t out_size = g.OH * g.OW * (channels_last ? g.OC : 1);
    return in_size < kLimit && out_size < kLimit && g.C < kLimit && g.OC < kLimit && g.H + g.pt + g.pb < kLimit &&
           g.W + g.pl + g.pr < kLimit && g.sh < kLimit && g.sw < kLimit && g.dh < kLimit && g.dw < kLimit &&
           g.KH * g.KW * g.OC < kLimit;  // the weight, indexed in 32 bits in the channels_last kernels
  }
  explicit DwGeom32(const ConvGeometry& g)
      : C(int(g.C)), H(int(g.H)), W(int(g.W)), OC(int(g.OC)), OH(int(g.OH)), OW(int(g.OW)), KH(int(g.KH)),
        KW(int(g.KW)), sh(int(g.sh)), sw(int(g.sw)), pt(int(g.pt)), pl(int(g.pl)), dh(int(g.dh)), dw(int(g.dw)),
        m(int(g.m)) {}
};

// Sum of one output position over the taps; KH_ = KW_ = 0: sizes at run time.
// `pixel_stride` is 1 for NCHW planes and C for channels_last images; `w` is the
// channel's first tap, `tap_stride` apart (1 in [OC, KH*KW] weights; OC in the
// [KH*KW, OC] copy the channels_last kernels read, where a warp's 32 channels
// then load one cache line per tap instead of KH*KW lines).
template <int KH_, int KW_, typename T, typename scalar_t>
__device__ __forceinline__ T dw_taps(const scalar_t* __restrict__ in, const scalar_t* __restrict__ w,
                                     const DwGeom32& g, int ih0, int iw0, int pixel_stride, int tap_stride, T acc) {
  const int KH = KH_ > 0 ? KH_ : g.KH, KW = KW_ > 0 ? KW_ : g.KW;
#pragma unroll
  for (int i = 0; i < KH; ++i) {
    const int ih = ih0 + i * g.dh;
    if (ih < 0 || ih >= g.H) continue;
#pragma unroll
    for (int j = 0; j < KW; ++j) {
      const int iw = iw0 + j * g.dw;
      if (iw < 0 || iw >= g.W) continue;
      acc += static_cast<T>(w[(i * KW + j) * tap_stride]) * static_cast<T>(in[(ih * g.W + iw) * pixel_stride]);
    }
  }
  return acc;
}

// One output of plane `plane` (= n * OC + oc) of an NCHW depthwise forward.
template <int KH_, int KW_, typename scalar_t>
__device__ __forceinline__ void dw_forward_nchw_at(const scalar_t* __restrict__ input,
                                                   const scalar_t* __restrict__ weight,
                                                   const scalar_t* __restrict__ bias, scalar_t* __restrict__ output,
                                                   const DwGeom32& g, int act, int64_t plane, int oh, int ow) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = plane / g.OC;
  const int oc = int(plane - n * g.OC);
  const scalar_t* in = input + (n * g.C + oc / g.m) * int64_t(g.H) * g.W;
  const T b = bias ? static_cast<T>(bias[oc]) : T(0);
  const T acc = dw_taps<KH_, KW_, T>(in, weight + int64_t(oc) * g.KH * g.KW, g, oh * g.sh - g.pt, ow * g.sw - g.pl, 1,
                                     1, b);
  output[plane * int64_t(g.OH) * g.OW + oh * g.OW + ow] = static_cast<scalar_t>(apply_activation(acc, act));
}

// planes_per_block 1: 32 x 8 tiles of one plane per block (tiles_x tiles across,
// `tiles` in all); > 1 (planes of at most kSmallPlane positions): the block's
// threads cover planes_per_block whole planes, so that a 7x7 plane does not
// leave 207 of 256 threads idle.
template <typename scalar_t, int KH_, int KW_>
__global__ void __launch_bounds__(kTileX* kTileY)
    dw_forward_nchw_fast(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                         const scalar_t* __restrict__ bias, scalar_t* __restrict__ output, DwGeom32 g, int act,
                         int64_t planes, int tiles_x, int tiles, int planes_per_block) {
  if (planes_per_block > 1) {
    const int plane_size = g.OH * g.OW, t = int(threadIdx.y) * kTileX + int(threadIdx.x);
    const int local = t / plane_size, pos = t - local * plane_size, oh = pos / g.OW, ow = pos - oh * g.OW;
    if (local >= planes_per_block) return;  // no barrier in this kernel
    for (int64_t plane = int64_t(blockIdx.x) * planes_per_block + local; plane < planes;
         plane += int64_t(gridDim.x) * planes_per_block) {
      dw_forward_nchw_at<KH_, KW_>(input, weight, bias, output, g, act, plane, oh, ow);
    }
    return;
  }
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    for (int tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
      const int oh = (tile / tiles_x) * kTileY + int(threadIdx.y);
      const int ow = (tile % tiles_x) * kTileX + int(threadIdx.x);
      if (oh < g.OH && ow < g.OW) dw_forward_nchw_at<KH_, KW_>(input, weight, bias, output, g, act, plane, oh, ow);
    }
  }
}

template <typename scalar_t, int KH_, int KW_>
__global__ void __launch_bounds__(kTileX* kTileY)
    dw_forward_cl_fast(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight_taps,
                       const scalar_t* __restrict__ bias, scalar_t* __restrict__ output, DwGeom32 g, int act,
                       int64_t rows, int groups, int tiles) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // row = n * OH + oh
    const int64_t n = row / g.OH;
    const int oh = int(row - n * g.OH);
    const scalar_t* in = input + n * int64_t(g.H) * g.W * g.C;
    scalar_t* out = output + row * int64_t(g.OW) * g.OC;
    for (int tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
      const int ow = (tile / groups) * kTileY + int(threadIdx.y);
      const int oc = (tile % groups) * kTileX + int(threadIdx.x);
      if (ow >= g.OW || oc >= g.OC) continue;
      const T b = bias ? static_cast<T>(bias[oc]) : T(0);
      const T acc = dw_taps<KH_, KW_, T>(in + oc / g.m, weight_taps + oc, g, oh * g.sh - g.pt, ow * g.sw - g.pl, g.C,
                                         g.OC, b);
      out[ow * g.OC + oc] = static_cast<scalar_t>(apply_activation(acc, act));
    }
  }
}

// input gradient at (ih, iw) of input channel c: the outputs that read it through
// each tap, over the channel's m output channels (gather form, no atomics)
// (weight strides as dw_taps: [OC, KH*KW] for NCHW, the [KH*KW, OC] copy for channels_last)
template <int KH_, int KW_, typename T, typename scalar_t>
__device__ __forceinline__ T dw_grad_input_taps(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ weight,
                                                const DwGeom32& g, int c, int ih, int iw, int64_t channel_stride,
                                                int pixel_stride, int weight_oc_stride, int weight_tap_stride) {
  const int KH = KH_ > 0 ? KH_ : g.KH, KW = KW_ > 0 ? KW_ : g.KW;
  T acc = T(0);
#pragma unroll
  for (int i = 0; i < KH; ++i) {
    const int oh = conv_source_output<int>(ih, i, g.pt, g.sh, g.dh, g.OH);
    if (oh < 0) continue;
#pragma unroll
    for (int j = 0; j < KW; ++j) {
      const int ow = conv_source_output<int>(iw, j, g.pl, g.sw, g.dw, g.OW);
      if (ow < 0) continue;
      for (int k = 0; k < g.m; ++k) {
        const int oc = c * g.m + k;
        acc += static_cast<T>(weight[int64_t(oc) * weight_oc_stride + (i * KW + j) * weight_tap_stride]) *
               static_cast<T>(grad[oc * channel_stride + (oh * g.OW + ow) * pixel_stride]);
      }
    }
  }
  return acc;
}

template <int KH_, int KW_, typename scalar_t>
__device__ __forceinline__ void dw_grad_input_nchw_at(const scalar_t* __restrict__ grad,
                                                      const scalar_t* __restrict__ weight,
                                                      scalar_t* __restrict__ grad_input, const DwGeom32& g,
                                                      int64_t plane, int ih, int iw) {
  using T = at::opmath_type<scalar_t>;
  const int64_t out_plane = int64_t(g.OH) * g.OW;
  const int64_t n = plane / g.C;  // plane = n * C + c
  const int c = int(plane - n * g.C);
  const T acc = dw_grad_input_taps<KH_, KW_, T>(grad + n * g.OC * out_plane, weight, g, c, ih, iw, out_plane, 1,
                                                g.KH * g.KW, 1);
  grad_input[plane * int64_t(g.H) * g.W + ih * g.W + iw] = static_cast<scalar_t>(acc);
}

// tiles and planes_per_block as dw_forward_nchw_fast, over input planes
template <typename scalar_t, int KH_, int KW_>
__global__ void __launch_bounds__(kTileX* kTileY)
    dw_grad_input_nchw_fast(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ weight,
                            scalar_t* __restrict__ grad_input, DwGeom32 g, int64_t planes, int tiles_x, int tiles,
                            int planes_per_block) {
  if (planes_per_block > 1) {
    const int plane_size = g.H * g.W, t = int(threadIdx.y) * kTileX + int(threadIdx.x);
    const int local = t / plane_size, pos = t - local * plane_size, ih = pos / g.W, iw = pos - ih * g.W;
    if (local >= planes_per_block) return;  // no barrier in this kernel
    for (int64_t plane = int64_t(blockIdx.x) * planes_per_block + local; plane < planes;
         plane += int64_t(gridDim.x) * planes_per_block) {
      dw_grad_input_nchw_at<KH_, KW_>(grad, weight, grad_input, g, plane, ih, iw);
    }
    return;
  }
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    for (int tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
      const int ih = (tile / tiles_x) * kTileY + int(threadIdx.y);
      const int iw = (tile % tiles_x) * kTileX + int(threadIdx.x);
      if (ih < g.H && iw < g.W) dw_grad_input_nchw_at<KH_, KW_>(grad, weight, grad_input, g, plane, ih, iw);
    }
  }
}

template <typename scalar_t, int KH_, int KW_>
__global__ void __launch_bounds__(kTileX* kTileY)
    dw_grad_input_cl_fast(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ weight_taps,
                          scalar_t* __restrict__ grad_input, DwGeom32 g, int64_t rows, int groups, int tiles) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // row = n * H + ih
    const int64_t n = row / g.H;
    const int ih = int(row - n * g.H);
    const scalar_t* go = grad + n * int64_t(g.OH) * g.OW * g.OC;
    scalar_t* gi = grad_input + row * int64_t(g.W) * g.C;
    for (int tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
      const int iw = (tile / groups) * kTileY + int(threadIdx.y);
      const int c = (tile % groups) * kTileX + int(threadIdx.x);
      if (iw >= g.W || c >= g.C) continue;
      gi[iw * g.C + c] =
          static_cast<scalar_t>(dw_grad_input_taps<KH_, KW_, T>(go, weight_taps, g, c, ih, iw, 1, g.OC, 1, g.OC));
    }
  }
}

// The weight gradient's bands: about kPlaneBandPositions (NCHW) or
// kClBandPositions (channels_last) output positions per block, from the output
// width alone, and the partial sums they leave (stage 1's output).
struct DwWeightPlan {
  int band_rows, bands;
  int64_t partial_rows, weights;  // partial sums: [partial_rows, weights]

  DwWeightPlan(const DwGeom32& g, int64_t N, bool channels_last) {
    const int positions = channels_last ? kClBandPositions : kPlaneBandPositions;
    band_rows = std::max(1, std::min(g.OH, positions / std::max(1, g.OW)));
    bands = ceil_div(g.OH, band_rows);
    partial_rows = N * bands;
    weights = int64_t(g.OC) * g.KH * g.KW;
  }
  // the partial sums must stay moderate next to the gradient itself (a 13x13
  // kernel on 7x7 planes needs 3.5 times its size)
  bool worth_it(int64_t grad_numel) const {
    return partial_rows * weights <= std::max<int64_t>(4 * grad_numel, int64_t(1) << 24);
  }
};

// Taps first .. first + count - 1 (at most kTapBatch) of the weight gradient:
// their input offsets from an output's first input pixel, and one register
// accumulator each.
template <typename T>
struct DwTapBatch {
  int first, count;
  int dh[kTapBatch], dw[kTapBatch];
  T acc[kTapBatch];

  __device__ __forceinline__ DwTapBatch(const DwGeom32& g, int t0) : first(t0), count(min(kTapBatch, g.KH * g.KW - t0)) {
#pragma unroll
    for (int u = 0; u < kTapBatch; ++u) {
      const int t = min(t0 + u, g.KH * g.KW - 1);
      dh[u] = (t / g.KW) * g.dh;
      dw[u] = (t % g.KW) * g.dw;
      acc[u] = T(0);
    }
  }
  // adds gv times the input under each tap of the output reading from (ih0, iw0)
  template <typename scalar_t>
  __device__ __forceinline__ void add(T gv, const scalar_t* __restrict__ in, const DwGeom32& g, int ih0, int iw0,
                                      int pixel_stride) {
#pragma unroll
    for (int u = 0; u < kTapBatch; ++u) {
      const int ih = ih0 + dh[u], iw = iw0 + dw[u];
      if (u < count && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
        acc[u] += gv * static_cast<T>(in[(ih * g.W + iw) * pixel_stride]);
    }
  }
};

// Stage 1 for NCHW planes of at most kSmallPlane positions (one band each): one
// warp per plane, eight planes per block, lanes over the positions and a warp
// shuffle per tap (a whole 256-thread block per 7x7 plane left 207 threads idle
// and paid block-wide reductions for 49 products). partial[plane][tap].
template <typename scalar_t>
__global__ void __launch_bounds__(kTileX* kTileY)
    dw_grad_weight_small_planes(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ input,
                                at::opmath_type<scalar_t>* __restrict__ partial, DwGeom32 g, int64_t planes) {
  using T = at::opmath_type<scalar_t>;
  const int lane = int(threadIdx.x), KK = g.KH * g.KW, plane_size = g.OH * g.OW;
  // a warp's trip count is the same for its 32 lanes, so every shuffle has them all
  for (int64_t plane = int64_t(blockIdx.x) * kTileY + threadIdx.y; plane < planes;
       plane += int64_t(gridDim.x) * kTileY) {  // plane = n * OC + oc
    const int64_t n = plane / g.OC;
    const int oc = int(plane - n * g.OC);
    const scalar_t* go = grad + plane * int64_t(plane_size);
    const scalar_t* in = input + (n * g.C + oc / g.m) * int64_t(g.H) * g.W;
    for (int t0 = 0; t0 < KK; t0 += kTapBatch) {
      DwTapBatch<T> taps(g, t0);
      for (int p = lane; p < plane_size; p += kTileX) {
        const int oh = p / g.OW, ow = p - oh * g.OW;
        taps.add(static_cast<T>(go[p]), in, g, oh * g.sh - g.pt, ow * g.sw - g.pl, 1);
      }
#pragma unroll
      for (int u = 0; u < kTapBatch; ++u) {
        T v = taps.acc[u];
        for (int offset = kTileX / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
        if (lane == 0 && u < taps.count) partial[plane * KK + t0 + u] = v;
      }
    }
  }
}

// Stage 1 of the weight gradient: partial[band_index][oc][tap], band_index =
// n * bands + band. NCHW: one block per (n, oc, band), 32 x 8 threads over the
// band's positions; channels_last: one block per (n, band, 32 channels), the 8
// thread rows over the band's positions.
template <typename scalar_t, bool kCL>
__global__ void __launch_bounds__(kTileX* kTileY, 1)  // (.., 1): ptxas spilled the accumulators under (256)
    dw_grad_weight_bands(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ input,
                         at::opmath_type<scalar_t>* __restrict__ partial, DwGeom32 g, int64_t blocks, int bands,
                         int band_rows, int groups) {
  using T = at::opmath_type<scalar_t>;
  // NCHW: one sum per warp, then over the 8 warps; channels_last: over the 8 rows
  __shared__ T shared[kTileY][kTapBatch][kTileX];
  const int tx = int(threadIdx.x), ty = int(threadIdx.y);
  const int KK = g.KH * g.KW;
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    int64_t n;
    int band, oc;
    if (kCL) {  // blk = (n * bands + band) * groups + group
      const int64_t nb = blk / groups;
      oc = int(blk - nb * groups) * kTileX + tx;
      n = nb / bands;
      band = int(nb - n * bands);
    } else {  // blk = (n * OC + oc) * bands + band
      const int64_t plane = blk / bands;
      band = int(blk - plane * bands);
      n = plane / g.OC;
      oc = int(plane - n * g.OC);
    }
    const bool active = oc < g.OC;  // channels_last: the last group's spare lanes
    const int c = active ? oc / g.m : 0;
    // the plane's first element; a pixel is go_pixel / in_pixel elements on
    const scalar_t* go = kCL ? grad + n * int64_t(g.OH) * g.OW * g.OC + oc
                             : grad + (n * g.OC + oc) * int64_t(g.OH) * g.OW;
    const scalar_t* in = kCL ? input + n * int64_t(g.H) * g.W * g.C + c : input + (n * g.C + c) * int64_t(g.H) * g.W;
    const int row_begin = band * band_rows, row_end = min(g.OH, row_begin + band_rows);
    // threads walk the band: NCHW 8 rows x 32 columns at a time, channels_last one
    // row x 8 columns at a time
    const int row_step = kCL ? 1 : kTileY, col_step = kCL ? kTileY : kTileX;
    const int row_first = row_begin + (kCL ? 0 : ty), col_first = kCL ? ty : tx;
    const int go_pixel = kCL ? g.OC : 1, in_pixel = kCL ? g.C : 1;
    for (int t0 = 0; t0 < KK; t0 += kTapBatch) {
      DwTapBatch<T> taps(g, t0);
      if (active) {
        for (int oh = row_first; oh < row_end; oh += row_step) {
          for (int ow = col_first; ow < g.OW; ow += col_step) {
            taps.add(static_cast<T>(go[(oh * g.OW + ow) * go_pixel]), in, g, oh * g.sh - g.pt, ow * g.sw - g.pl,
                     in_pixel);
          }
        }
      }
      if (kCL) {
#pragma unroll
        for (int u = 0; u < kTapBatch; ++u) shared[ty][u][tx] = taps.acc[u];
      } else {
#pragma unroll
        for (int u = 0; u < kTapBatch; ++u) {
          T v = taps.acc[u];
          for (int offset = kTileX / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
          if (tx == 0) shared[ty][u][0] = v;
        }
      }
      __syncthreads();
      if (ty == 0 && (kCL ? active : tx == 0)) {
        const int lane = kCL ? tx : 0;
        const int64_t base = ((n * bands + band) * g.OC + oc) * int64_t(KK);
        for (int u = 0; u < kTapBatch && t0 + u < KK; ++u) {
          T sum = T(0);
          for (int r = 0; r < kTileY; ++r) sum += shared[r][u][lane];
          partial[base + t0 + u] = sum;
        }
      }
      __syncthreads();
    }
  }
}

// Stage 2: 32 weights per block; thread row y sums band rows y, y + 8, ... in
// order, then the 8 row sums are added in order (a fixed tree, whatever the grid).
template <typename scalar_t>
__global__ void __launch_bounds__(kTileX* kTileY)
    dw_grad_weight_sum(const at::opmath_type<scalar_t>* __restrict__ partial, scalar_t* __restrict__ grad_weight,
                       int64_t weights, int64_t rows) {
  using T = at::opmath_type<scalar_t>;
  __shared__ T row_sums[kTileY][kTileX];
  const int tx = int(threadIdx.x), ty = int(threadIdx.y);
  for (int64_t first = int64_t(blockIdx.x) * kTileX; first < weights; first += int64_t(gridDim.x) * kTileX) {
    const int64_t idx = first + tx;
    T sum = T(0);
    if (idx < weights) {
#pragma unroll 4
      for (int64_t r = ty; r < rows; r += kTileY) sum += partial[r * weights + idx];
    }
    row_sums[ty][tx] = sum;
    __syncthreads();
    if (ty == 0 && idx < weights) {
      T total = T(0);
      for (int y = 0; y < kTileY; ++y) total += row_sums[y][tx];
      grad_weight[idx] = static_cast<scalar_t>(total);
    }
    __syncthreads();
  }
}

// ---- strip kernels: the forward (and the stride-1 input gradient) of square
// 3x3, 5x5 and 7x7 kernels at stride 1 or 2 without dilation, i.e. every
// depthwise layer of MobileNet, ShuffleNet and the large-kernel nets. The tiled
// kernels above computed one output per thread from KH*KW loads and paid a
// 64-bit division per output; on an H100 their forward reached 0.28-0.94x of
// cuDNN (bench/results/NVIDIA-H100-80GB-HBM3-2026-11-27-run3-conv.md). Here a
// thread computes kStrip outputs, down a column (NCHW) or along a row
// (channels_last), with the channel's K*K weights in registers, and loads each
// input value its strip needs once: (kStrip - 1) * S + K rows (columns) of K
// values for kStrip outputs, 4.5 loads per 3x3 output at stride 1 instead of 9.
// Threads run over a flat item index (no idle threads on 7x7 or 14x14 planes)
// split by FastDivmod. Each output's sum runs over the taps in the order of
// dw_taps (bias first, then row by row), so both kernels give the same float sums.
constexpr int kStrip = 4;

// n / d for 0 <= n < 2^31 and a divisor fixed for the launch: a multiply-high
// and a shift (division by invariant integers, Granlund and Montgomery 1994)
// instead of the GPU's ~20-instruction division routine, three per item here.
struct FastDivmod {
  unsigned d, magic, shift;
  explicit FastDivmod(int divisor) : d(unsigned(divisor)), magic(0), shift(0) {
    while ((1u << shift) < d) ++shift;  // ceil(log2(d)); d < 2^31
    magic = unsigned((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d) / d + 1);
  }
  __device__ __forceinline__ unsigned div(unsigned n) const { return (__umulhi(n, magic) + n) >> shift; }
};

// Channel oc's taps in registers and the strip's accumulators at its bias;
// kFlip: the taps rotated by 180 degrees (the input gradient at stride 1 is the
// forward of the output gradient with the kernel rotated and the padding
// mirrored, K - 1 - pad).
template <int K, bool kFlip, typename T, typename scalar_t>
__device__ __forceinline__ void dw_strip_start(const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias,
                                               unsigned oc, T (&taps)[K * K], T (&acc)[kStrip]) {
  const scalar_t* w = weight + oc * (K * K);
#pragma unroll
  for (int t = 0; t < K * K; ++t) taps[t] = static_cast<T>(w[kFlip ? K * K - 1 - t : t]);
  const T b = bias ? static_cast<T>(bias[oc]) : T(0);
#pragma unroll
  for (int s = 0; s < kStrip; ++s) acc[s] = b;
}

// NCHW: item = (plane * strips + strip) * OW + ow; outputs (strip * kStrip + s, ow)
template <typename scalar_t, int K, int S, bool kFlip>
__global__ void __launch_bounds__(kTileX* kTileY)
    dw_forward_nchw_strips(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                           const scalar_t* __restrict__ bias, scalar_t* __restrict__ output, DwGeom32 g, int act,
                           int items, FastDivmod by_ow, FastDivmod by_strips, FastDivmod by_oc) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const unsigned u = unsigned(item), rest = by_ow.div(u), ow = u - rest * by_ow.d;
    const unsigned plane = by_strips.div(rest), strip = rest - plane * by_strips.d;
    const unsigned n = by_oc.div(plane), oc = plane - n * by_oc.d;
    const int c = g.m == 1 ? int(oc) : int(oc) / g.m;
    const scalar_t* in = input + (int64_t(n) * g.C + c) * (int64_t(g.H) * g.W);
    T taps[K * K], acc[kStrip];
    dw_strip_start<K, kFlip>(weight, bias, oc, taps, acc);
    const int oh0 = int(strip) * kStrip, ih0 = oh0 * S - g.pt, iw0 = int(ow) * S - g.pl;
#pragma unroll
    for (int r = 0; r < (kStrip - 1) * S + K; ++r) {
      const int ih = ih0 + r;
      if (ih < 0 || ih >= g.H) continue;
      T v[K];
      bool inside[K];  // padding is skipped, as in dw_taps (an infinite tap times 0 would be NaN)
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int iw = iw0 + j;
        inside[j] = iw >= 0 && iw < g.W;
        v[j] = inside[j] ? static_cast<T>(in[ih * g.W + iw]) : T(0);
      }
#pragma unroll
      for (int s = 0; s < kStrip; ++s) {
        const int i = r - s * S;  // this row's tap row for output s (known at compile time)
        if (i < 0 || i >= K) continue;
#pragma unroll
        for (int j = 0; j < K; ++j) {
          if (inside[j]) acc[s] += taps[i * K + j] * v[j];
        }
      }
    }
    scalar_t* out = output + int64_t(plane) * (int64_t(g.OH) * g.OW) + ow;
#pragma unroll
    for (int s = 0; s < kStrip; ++s) {
      if (oh0 + s < g.OH) out[(oh0 + s) * g.OW] = static_cast<scalar_t>(apply_activation(acc[s], act));
    }
  }
}

// channels_last: item = ((n * OH + oh) * strips + strip) * OC + oc (a warp reads
// consecutive channels); outputs (oh, strip * kStrip + s). Reads the [OC, K*K] weight.
template <typename scalar_t, int K, int S, bool kFlip>
__global__ void __launch_bounds__(kTileX* kTileY)
    dw_forward_cl_strips(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                         const scalar_t* __restrict__ bias, scalar_t* __restrict__ output, DwGeom32 g, int act,
                         int items, FastDivmod by_oc, FastDivmod by_strips, FastDivmod by_oh) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const unsigned u = unsigned(item), rest = by_oc.div(u), oc = u - rest * by_oc.d;
    const unsigned row = by_strips.div(rest), strip = rest - row * by_strips.d;  // row = n * OH + oh
    const unsigned n = by_oh.div(row), oh = row - n * by_oh.d;
    const int c = g.m == 1 ? int(oc) : int(oc) / g.m;
    const scalar_t* in = input + int64_t(n) * (int64_t(g.H) * g.W * g.C) + c;
    T taps[K * K], acc[kStrip];
    dw_strip_start<K, kFlip>(weight, bias, oc, taps, acc);
    const int ow0 = int(strip) * kStrip, ih0 = int(oh) * S - g.pt, iw0 = ow0 * S - g.pl;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int ih = ih0 + i;
      if (ih < 0 || ih >= g.H) continue;
      const scalar_t* in_row = in + ih * g.W * g.C;
#pragma unroll
      for (int col = 0; col < (kStrip - 1) * S + K; ++col) {
        const int iw = iw0 + col;
        if (iw < 0 || iw >= g.W) continue;  // padding is skipped, as in dw_taps
        const T v = static_cast<T>(in_row[iw * g.C]);
#pragma unroll
        for (int s = 0; s < kStrip; ++s) {
          const int j = col - s * S;  // this column's tap for output s (known at compile time)
          if (j >= 0 && j < K) acc[s] += taps[i * K + j] * v;
        }
      }
    }
    scalar_t* out = output + (int64_t(row) * g.OW + ow0) * g.OC + oc;
#pragma unroll
    for (int s = 0; s < kStrip; ++s) {
      if (ow0 + s < g.OW) out[s * g.OC] = static_cast<scalar_t>(apply_activation(acc[s], act));
    }
  }
}

// VISIONOPS_DW_CUDA_KERNELS=tiled keeps the tiled kernels for every shape (read
// once): the previous kernels, for side-by-side benchmarks of the two.
bool dw_strip_kernels_enabled() {
  static const bool enabled = [] {
    const char* choice = std::getenv("VISIONOPS_DW_CUDA_KERNELS");
    return choice == nullptr || std::string(choice) != "tiled";
  }();
  return enabled;
}

// Whether the strip kernels take a forward of geometry g (their items must fit int).
bool dw_strips_apply(const DwGeom32& g, int64_t N, bool channels_last) {
  if (!dw_strip_kernels_enabled()) return false;
  const bool shape = g.KH == g.KW && (g.KH == 3 || g.KH == 5 || g.KH == 7) && g.sh == g.sw &&
                     (g.sh == 1 || g.sh == 2) && g.dh == 1 && g.dw == 1;
  const int64_t items = channels_last ? N * g.OH * ceil_div(g.OW, kStrip) * g.OC
                                      : N * g.OC * ceil_div(g.OH, kStrip) * g.OW;
  return shape && items < (int64_t(1) << 31) - int64_t(kTileX) * kTileY;
}

// The input gradient at stride 1 without channel multiplier, as a forward:
// input the output gradient, kernel rotated (kFlip), padding K - 1 - pad.
DwGeom32 dw_input_gradient_as_forward(const DwGeom32& g) {
  DwGeom32 t = g;
  t.C = g.OC, t.H = g.OH, t.W = g.OW, t.OC = g.C, t.OH = g.H, t.OW = g.W;
  t.pt = g.KH - 1 - g.pt, t.pl = g.KW - 1 - g.pl;
  return t;
}
bool dw_grad_input_strips_apply(const DwGeom32& g, int64_t N, bool channels_last) {
  return g.sh == 1 && g.sw == 1 && g.m == 1 && dw_strips_apply(dw_input_gradient_as_forward(g), N, channels_last);
}

// the strip kernel for (K, S, kFlip), launched over its items
template <typename scalar_t, bool kFlip, typename Launch>
void dw_launch_strips(const DwGeom32& g, int64_t N, bool channels_last, const scalar_t* input,
                      const scalar_t* weight, const scalar_t* bias, scalar_t* output, int activation, Launch&& launch) {
  const int strips = ceil_div(channels_last ? g.OW : g.OH, kStrip);
  const int64_t items = channels_last ? N * g.OH * strips * g.OC : N * g.OC * strips * g.OW;
  const dim3 grid = fast_grid((items + kTileX * kTileY - 1) / (kTileX * kTileY), 1), block(kTileX * kTileY);
  auto go = [&](auto k, auto s) {
    constexpr int K = decltype(k)::value, S = decltype(s)::value;
    if (channels_last) {
      launch(dw_forward_cl_strips<scalar_t, K, S, kFlip>, grid, block, input, weight, bias, output, g, activation,
             int(items), FastDivmod(g.OC), FastDivmod(strips), FastDivmod(g.OH));
    } else {
      launch(dw_forward_nchw_strips<scalar_t, K, S, kFlip>, grid, block, input, weight, bias, output, g, activation,
             int(items), FastDivmod(g.OW), FastDivmod(strips), FastDivmod(g.OC));
    }
  };
  using std::integral_constant;
  auto with_stride = [&](auto k) {
    if constexpr (kFlip) {
      go(k, integral_constant<int, 1>{});  // input gradients at stride 1 only
    } else if (g.sh == 1) {
      go(k, integral_constant<int, 1>{});
    } else {
      go(k, integral_constant<int, 2>{});
    }
  };
  if (g.KH == 3) {
    with_stride(integral_constant<int, 3>{});
  } else if (g.KH == 5) {
    with_stride(integral_constant<int, 5>{});
  } else {
    with_stride(integral_constant<int, 7>{});
  }
}

// Host side of the fast paths. `launch(kernel, grid, block, args...)` starts a
// kernel: on the current stream in this file, emulated on the CPU in
// tests/emulated_cuda (so the emulation checks these launch shapes too).
// planes of one block in the NCHW kernels
int dw_planes_per_block(int plane_size) {
  return plane_size <= kSmallPlane ? kTileX * kTileY / std::max(1, plane_size) : 1;
}

// blocks for `planes` planes, planes_per_block at a time, or tiles of each
dim3 dw_plane_grid(int64_t planes, int planes_per_block, int tiles) {
  return planes_per_block > 1 ? fast_grid((planes + planes_per_block - 1) / planes_per_block, 1)
                              : fast_grid(planes, tiles);
}

// Whether the forward (input gradient) of these fast paths reads the [KH*KW, OC]
// transpose of the weight: the tiled channels_last kernels do, the strip kernels
// and the NCHW kernels read the op's [OC, KH*KW] weight.
bool dw_forward_reads_tap_major(const DwGeom32& g, int64_t N, bool channels_last) {
  return channels_last && !dw_strips_apply(g, N, channels_last);
}
bool dw_grad_input_reads_tap_major(const DwGeom32& g, int64_t N, bool channels_last) {
  return channels_last && !dw_grad_input_strips_apply(g, N, channels_last);
}

// `weight`: the op's [OC, KH*KW]; `weight_taps`: its [KH*KW, OC] transpose where
// dw_forward_reads_tap_major (else unused)
template <typename scalar_t, typename Launch>
void dw_forward_fast(const DwGeom32& g, int64_t N, bool channels_last, const scalar_t* input, const scalar_t* weight,
                     const scalar_t* weight_taps, const scalar_t* bias, scalar_t* output, int activation,
                     Launch&& launch) {
  const dim3 block(kTileX, kTileY);
  const bool k3x3 = g.KH == 3 && g.KW == 3;
  if (dw_strips_apply(g, N, channels_last)) {
    dw_launch_strips<scalar_t, false>(g, N, channels_last, input, weight, bias, output, activation, launch);
  } else if (channels_last) {
    const int groups = ceil_div(g.OC, kTileX), tiles = ceil_div(g.OW, kTileY) * groups;
    launch(k3x3 ? dw_forward_cl_fast<scalar_t, 3, 3> : dw_forward_cl_fast<scalar_t, 0, 0>, fast_grid(N * g.OH, tiles),
           block, input, weight_taps, bias, output, g, activation, N * g.OH, groups, tiles);
  } else {
    const int tiles_x = ceil_div(g.OW, kTileX), tiles = tiles_x * ceil_div(g.OH, kTileY);
    const int per_block = dw_planes_per_block(g.OH * g.OW);
    launch(k3x3 ? dw_forward_nchw_fast<scalar_t, 3, 3> : dw_forward_nchw_fast<scalar_t, 0, 0>,
           dw_plane_grid(N * g.OC, per_block, tiles), block, input, weight, bias, output, g, activation, N * g.OC,
           tiles_x, tiles, per_block);
  }
}

// `weight`, `weight_taps` as for dw_forward_fast (dw_grad_input_reads_tap_major)
template <typename scalar_t, typename Launch>
void dw_grad_input_fast(const DwGeom32& g, int64_t N, bool channels_last, const scalar_t* grad, const scalar_t* weight,
                        const scalar_t* weight_taps, scalar_t* grad_input, Launch&& launch) {
  const dim3 block(kTileX, kTileY);
  const bool k3x3 = g.KH == 3 && g.KW == 3;
  if (dw_grad_input_strips_apply(g, N, channels_last)) {
    dw_launch_strips<scalar_t, true>(dw_input_gradient_as_forward(g), N, channels_last, grad, weight,
                                     static_cast<const scalar_t*>(nullptr), grad_input, kActNone, launch);
  } else if (channels_last) {
    const int groups = ceil_div(g.C, kTileX), tiles = ceil_div(g.W, kTileY) * groups;
    launch(k3x3 ? dw_grad_input_cl_fast<scalar_t, 3, 3> : dw_grad_input_cl_fast<scalar_t, 0, 0>,
           fast_grid(N * g.H, tiles), block, grad, weight_taps, grad_input, g, N * g.H, groups, tiles);
  } else {
    const int tiles_x = ceil_div(g.W, kTileX), tiles = tiles_x * ceil_div(g.H, kTileY);
    const int per_block = dw_planes_per_block(g.H * g.W);
    launch(k3x3 ? dw_grad_input_nchw_fast<scalar_t, 3, 3> : dw_grad_input_nchw_fast<scalar_t, 0, 0>,
           dw_plane_grid(N * g.C, per_block, tiles), block, grad, weight, grad_input, g, N * g.C, tiles_x, tiles,
           per_block);
  }
}

// `partial`: plan.partial_rows * plan.weights opmath values of scratch
template <typename scalar_t, typename Launch>
void dw_grad_weight_fast(const DwGeom32& g, int64_t N, bool channels_last, const DwWeightPlan& plan,
                         const scalar_t* grad, const scalar_t* input, at::opmath_type<scalar_t>* partial,
                         scalar_t* grad_weight, Launch&& launch) {
  const int groups = ceil_div(g.OC, kTileX);
  if (!channels_last && g.OH * g.OW <= kSmallPlane) {  // one band per plane (kPlaneBandPositions >= kSmallPlane)
    const int64_t planes = N * g.OC;
    launch(dw_grad_weight_small_planes<scalar_t>, dim3(unsigned(std::min<int64_t>((planes + kTileY - 1) / kTileY,
                                                                                    kMaxGridX))),
           dim3(kTileX, kTileY), grad, input, partial, g, planes);
  } else {
    const int64_t blocks = channels_last ? N * plan.bands * groups : N * g.OC * plan.bands;
    const dim3 grid(unsigned(std::min<int64_t>(blocks, kMaxGridX)));
    launch(channels_last ? dw_grad_weight_bands<scalar_t, true> : dw_grad_weight_bands<scalar_t, false>, grid,
           dim3(kTileX, kTileY), grad, input, partial, g, blocks, plan.bands, plan.band_rows, groups);
  }
  const at::opmath_type<scalar_t>* sums = partial;
  const int64_t sum_blocks = std::min<int64_t>((plan.weights + kTileX - 1) / kTileX, kMaxGridX);
  launch(dw_grad_weight_sum<scalar_t>, dim3(unsigned(sum_blocks)), dim3(kTileX, kTileY), sums, grad_weight,
         plan.weights, plan.partial_rows);
}

// ---------------------------------------------------------------- end of depthwise fast paths

// the fast paths' `launch`: on `stream`, checked
auto launch_on(cudaStream_t stream) {
  return [stream](auto kernel, dim3 grid, dim3 block, auto... args) {
    kernel<<<grid, block, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
}

at::Tensor depthwise_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t activation) {
  const auto g = check_depthwise_args("depthwise_conv2d", input, weight, bias, stride, padding, dilation, activation);
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = conv_channels_last(input);
  const auto fmt = conv_memory_format(cl);
  auto output = at::empty({g.N, g.OC, g.OH, g.OW}, input.options(), fmt);
  const int64_t total = output.numel();
  if (total == 0) return output;
  const auto in = input.contiguous(fmt);
  const auto w = weight.contiguous();
  const auto b = bias.has_value() ? bias->contiguous() : at::Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool fast = DwGeom32::fits(g, cl);
  const DwGeom32 g32(fast ? g : ConvGeometry{});
  const auto w_taps = fast && dw_forward_reads_tap_major(g32, g.N, cl) ? w.view({g.OC, g.KH * g.KW}).t().contiguous()
                                                                      : w;  // [KH*KW, OC]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_cuda", [&] {
    const scalar_t* bp = bias.has_value() ? b.const_data_ptr<scalar_t>() : nullptr;
    if (fast) {
      dw_forward_fast<scalar_t>(g32, g.N, cl, in.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                w_taps.const_data_ptr<scalar_t>(), bp, output.mutable_data_ptr<scalar_t>(),
                                int(activation), launch_on(stream));
    } else if (cl) {
      dw_forward_kernel<scalar_t, true><<<blocks_for(total), kThreads, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp, output.mutable_data_ptr<scalar_t>(), g,
          activation, total);
    } else {
      dw_forward_kernel<scalar_t, false><<<blocks_for(total), kThreads, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp, output.mutable_data_ptr<scalar_t>(), g,
          activation, total);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& output,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t activation,
    std::array<bool, 3> output_mask) {
  const char* op = "_depthwise_conv2d_backward";
  const auto g = check_depthwise_args(op, input, weight, std::nullopt, stride, padding, dilation, activation);
  check_conv_grad(op, grad, input, g);
  VISIONOPS_CHECK(activation == kActNone || (output.has_value() && output->sizes() == grad.sizes()), op,
                  ": output (the forward result) is needed to differentiate through the activation");
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = conv_channels_last(input);
  const auto fmt = conv_memory_format(cl);
  const auto go = grad_through_activation(grad, output, activation).contiguous(fmt);
  // every kernel below writes every element of its gradient
  at::Tensor gi = output_mask[0] ? at::empty_like(input, fmt) : unwanted_grad(input);
  at::Tensor gw = output_mask[1] ? at::empty_like(weight, at::MemoryFormat::Contiguous) : unwanted_grad(weight);
  at::Tensor gb = output_mask[2] ? conv_bias_grad(go) : unwanted_grad(weight);
  if (go.numel() == 0 || input.numel() == 0) {
    if (output_mask[1]) gw.zero_();  // no kernel writes it: e.g. N == 0, or a padding-only input
    return {gi, gw, gb};
  }
  const auto in = input.contiguous(fmt);
  const auto w = weight.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool fast = DwGeom32::fits(g, cl);
  const DwGeom32 g32(fast ? g : ConvGeometry{});
  const auto w_taps = fast && output_mask[0] && dw_grad_input_reads_tap_major(g32, g.N, cl)
                          ? w.view({g.OC, g.KH * g.KW}).t().contiguous()
                          : w;  // [KH*KW, OC]
  const DwWeightPlan plan(g32, g.N, cl);
  const bool fast_weight = fast && plan.worth_it(go.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_backward_cuda",
                                  [&] {
    if (output_mask[0] && fast) {
      dw_grad_input_fast<scalar_t>(g32, g.N, cl, go.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                   w_taps.const_data_ptr<scalar_t>(), gi.mutable_data_ptr<scalar_t>(),
                                   launch_on(stream));
    } else if (output_mask[0]) {
      const int64_t total = gi.numel();
      if (cl) {
        dw_grad_input_kernel<scalar_t, true><<<blocks_for(total), kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), gi.mutable_data_ptr<scalar_t>(), g, total);
      } else {
        dw_grad_input_kernel<scalar_t, false><<<blocks_for(total), kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), gi.mutable_data_ptr<scalar_t>(), g, total);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (output_mask[1] && fast_weight) {
      using opmath_t = at::opmath_type<scalar_t>;
      auto partial = at::empty({plan.partial_rows, plan.weights}, go.options().dtype(at::toOpMathType(go.scalar_type())));
      dw_grad_weight_fast<scalar_t>(g32, g.N, cl, plan, go.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(),
                                    partial.mutable_data_ptr<opmath_t>(), gw.mutable_data_ptr<scalar_t>(),
                                    launch_on(stream));
    } else if (output_mask[1]) {
      const int64_t blocks = g.OC * g.KH * g.KW;
      if (cl) {
        dw_grad_weight_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), gw.mutable_data_ptr<scalar_t>(), g);
      } else {
        dw_grad_weight_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), gw.mutable_data_ptr<scalar_t>(), g);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {gi, gw, gb};
}

// ---------------------------------------------------------------- conv2d: im2col / col2im

template <typename scalar_t>
__global__ void im2col_kernel(const scalar_t* __restrict__ img, scalar_t* __restrict__ cols, ConvGeometry g,
                              int64_t total) {
  const int64_t OHW = g.OH * g.OW, KK = g.KH * g.KW;
  VISIONOPS_GRID_STRIDE_LOOP(idx, total) {
    const int64_t p = idx % OHW, row = idx / OHW;
    const int64_t c = row / KK, i = (row % KK) / g.KW, j = row % g.KW;
    const int64_t ih = (p / g.OW) * g.sh - g.pt + i * g.dh, iw = (p % g.OW) * g.sw - g.pl + j * g.dw;
    cols[idx] = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W ? img[(c * g.H + ih) * g.W + iw] : scalar_t(0);
  }
}

// one thread per image element, gathering its column entries (no atomics)
template <typename scalar_t>
__global__ void col2im_kernel(const scalar_t* __restrict__ cols, scalar_t* __restrict__ img, ConvGeometry g,
                              int64_t total) {
  using T = at::opmath_type<scalar_t>;
  const int64_t OHW = g.OH * g.OW, KK = g.KH * g.KW;
  VISIONOPS_GRID_STRIDE_LOOP(idx, total) {
    const int64_t iw = idx % g.W, ih = (idx / g.W) % g.H, c = idx / (g.W * g.H);
    T acc = T(0);
    for (int64_t i = 0; i < g.KH; ++i) {
      const int64_t oh = conv_source_output(ih, i, g.pt, g.sh, g.dh, g.OH);
      if (oh < 0) continue;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t ow = conv_source_output(iw, j, g.pl, g.sw, g.dw, g.OW);
        if (ow < 0) continue;
        acc += static_cast<T>(cols[(c * KK + i * g.KW + j) * OHW + oh * g.OW + ow]);
      }
    }
    img[idx] = static_cast<scalar_t>(acc);
  }
}

void im2col_cuda(const at::Tensor& img, const ConvGeometry& g, at::Tensor& cols) {
  const int64_t total = cols.numel();
  if (total == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, img.scalar_type(), "im2col_cuda", [&] {
    im2col_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        img.const_data_ptr<scalar_t>(), cols.mutable_data_ptr<scalar_t>(), g, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void col2im_cuda(const at::Tensor& cols, const ConvGeometry& g, at::Tensor& img) {
  const int64_t total = img.numel();
  if (total == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cols.scalar_type(), "col2im_cuda", [&] {
    col2im_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        cols.const_data_ptr<scalar_t>(), img.mutable_data_ptr<scalar_t>(), g, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto g = check_conv2d_args("conv2d", input, weight, bias, stride, padding, dilation, groups);
  c10::cuda::CUDAGuard guard(input.device());
  return conv2d_gemm_forward(input, weight, bias, g, &im2col_cuda);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                                                    const at::Tensor& weight, at::IntArrayRef stride,
                                                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                                                    int64_t groups, std::array<bool, 3> output_mask) {
  const auto g = check_conv2d_args("_conv2d_backward", input, weight, std::nullopt, stride, padding, dilation, groups);
  check_conv_grad("_conv2d_backward", grad, input, g);
  c10::cuda::CUDAGuard guard(input.device());
  return conv2d_gemm_backward(grad, input, weight, g, output_mask, &im2col_cuda, &col2im_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, CUDA, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cuda);
  m.impl("_depthwise_conv2d_backward", &depthwise_conv2d_backward_cuda);
  m.impl("conv2d", &conv2d_cuda);
  m.impl("_conv2d_backward", &conv2d_backward_cuda);
}

}  // namespace visionops
