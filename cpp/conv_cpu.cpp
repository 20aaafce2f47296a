// Convolution on the CPU: depthwise_conv2d (hand-written direct kernels,
// conv_cpu_kernels.inc) and conv2d (our im2col / col2im + at::mm, see gemm_out).
//
// Determinism: every task owns whole output (or grad_input) planes or rows, and
// weight gradients are reduced from per-image (per-chunk) partial sums in a
// fixed order, so results are bit-identical whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "visionops/check.h"
#include "visionops/conv.h"
#include "visionops/conv_ops.h"
#include "visionops/cpu_isa.h"

// 32-byte GCC vectors in the generic (SSE2) variant: internal functions only, no ABI to keep
#pragma GCC diagnostic ignored "-Wpsabi"

namespace visionops {

// ---------------------------------------------------------------- argument checks

namespace {

ConvGeometry check_common(const char* op, const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation) {
  VISIONOPS_CHECK(input.dim() == 4, op, ": input must be a 4-D tensor [N, C, H, W], got a ", input.dim(),
                  "-D tensor");
  VISIONOPS_CHECK(at::isFloatingType(input.scalar_type()), op, ": input must be a floating-point tensor, got ",
                  input.scalar_type());
  VISIONOPS_CHECK(weight.dim() == 4, op,
                  ": weight must be a 4-D tensor [out_channels, in_channels / groups, kH, kW], got a ", weight.dim(),
                  "-D tensor");
  VISIONOPS_CHECK(weight.scalar_type() == input.scalar_type(), op, ": weight must have the same dtype as input (",
                  input.scalar_type(), "), got ", weight.scalar_type());
  VISIONOPS_CHECK(weight.device() == input.device(), op, ": weight must be on the same device as input (",
                  input.device(), "), got ", weight.device());
  VISIONOPS_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op,
                  ": stride must be a pair of positive ints, got ", stride);
  VISIONOPS_CHECK(dilation.size() == 2 && dilation[0] > 0 && dilation[1] > 0, op,
                  ": dilation must be a pair of positive ints, got ", dilation);
  VISIONOPS_CHECK(padding.size() == 4 && padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 && padding[3] >= 0,
                  op, ": padding must be 4 non-negative ints (top, bottom, left, right), got ", padding);
  VISIONOPS_CHECK(weight.size(2) > 0 && weight.size(3) > 0, op, ": weight's kernel size must be positive, got ",
                  weight.sizes());
  const int64_t OC = weight.size(0);
  if (bias.has_value()) {
    const auto& b = *bias;
    VISIONOPS_CHECK(b.dim() == 1 && b.size(0) == OC, op, ": bias must be a 1-D tensor of out_channels (", OC,
                    ") values, got shape ", b.sizes());
    VISIONOPS_CHECK(b.scalar_type() == input.scalar_type(), op, ": bias must have the same dtype as input (",
                    input.scalar_type(), "), got ", b.scalar_type());
    VISIONOPS_CHECK(b.device() == input.device(), op, ": bias must be on the same device as input (", input.device(),
                    "), got ", b.device());
  }
  ConvGeometry g{};
  g.N = input.size(0);
  g.C = input.size(1);
  g.H = input.size(2);
  g.W = input.size(3);
  g.OC = OC;
  g.KH = weight.size(2);
  g.KW = weight.size(3);
  g.sh = stride[0];
  g.sw = stride[1];
  g.pt = padding[0];
  g.pb = padding[1];
  g.pl = padding[2];
  g.pr = padding[3];
  g.dh = dilation[0];
  g.dw = dilation[1];
  g.OH = conv_output_size(g.H, g.pt, g.pb, g.KH, g.sh, g.dh);
  g.OW = conv_output_size(g.W, g.pl, g.pr, g.KW, g.sw, g.dw);
  VISIONOPS_CHECK(g.OH > 0 && g.OW > 0, op, ": kernel size (dilated: ", g.dh * (g.KH - 1) + 1, " x ",
                  g.dw * (g.KW - 1) + 1, ") is larger than the padded input (", g.H + g.pt + g.pb, " x ",
                  g.W + g.pl + g.pr, ")");
  return g;
}

}  // namespace

ConvGeometry check_depthwise_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t activation) {
  auto g = check_common(op, input, weight, bias, stride, padding, dilation);
  VISIONOPS_CHECK(weight.size(1) == 1 && (g.C == 0 ? g.OC == 0 : g.OC % g.C == 0 && g.OC > 0), op,
                  ": weight must have shape [C * multiplier, 1, kH, kW] for an input of C = ", g.C,
                  " channels, got ", weight.sizes());
  VISIONOPS_CHECK(activation >= 0 && activation <= 2, op,
                  ": activation must be 0 (none), 1 (relu) or 2 (relu6), got ", activation);
  g.groups = g.C;
  g.m = g.C == 0 ? 1 : g.OC / g.C;
  return g;
}

ConvGeometry check_conv2d_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups) {
  auto g = check_common(op, input, weight, bias, stride, padding, dilation);
  VISIONOPS_CHECK(groups > 0, op, ": groups must be positive, got ", groups);
  VISIONOPS_CHECK(g.C % groups == 0, op, ": in_channels (", g.C, ") must be divisible by groups (", groups, ")");
  VISIONOPS_CHECK(g.OC % groups == 0, op, ": out_channels (", g.OC, ") must be divisible by groups (", groups, ")");
  VISIONOPS_CHECK(weight.size(1) * groups == g.C, op, ": weight.size(1) must be in_channels / groups = ",
                  g.C / groups, " (input of ", g.C, " channels, groups = ", groups, "), got weight of shape ",
                  weight.sizes());
  g.groups = groups;
  g.m = 1;
  return g;
}

void check_conv_grad(const char* op, const at::Tensor& grad, const at::Tensor& input, const ConvGeometry& g) {
  VISIONOPS_CHECK(grad.dim() == 4 && grad.size(0) == g.N && grad.size(1) == g.OC && grad.size(2) == g.OH &&
                      grad.size(3) == g.OW,
                  op, ": grad must have the output's shape [", g.N, ", ", g.OC, ", ", g.OH, ", ", g.OW, "], got ",
                  grad.sizes());
  VISIONOPS_CHECK(grad.scalar_type() == input.scalar_type() && grad.device() == input.device(), op,
                  ": grad must have input's dtype and device");
}

// ---------------------------------------------------------------- kernel variants

// Tap offsets of the NCHW forward's pitch-space buffer (conv_cpu_kernels.inc,
// dw_forward_planes): tap (i, j) reads sub-plane ((i*dh) % sh, (j*dw) % sw) at
// row (i*dh) / sh, column (j*dw) / sw. A function of the geometry only, computed
// once per call rather than per plane (the divisions cost more than a 7x7 plane's FMAs).
// Pitch of those sub-planes for vectors of `lanes` elements: the padded width
// over the column stride, rounded up to 1, 2, 4 or 8 whole vectors where that
// adds at most a quarter. Every output row then starts a vector, and the kernel
// stores rows straight into the output instead of copying them out of a buffer
// (measured: the copy's store-to-load stalls took a quarter of a 14x14 plane).
int64_t flat_pitch(const ConvGeometry& g, int64_t lanes) {
  const int64_t P2 = (g.pl + g.W + g.pr + g.sw - 1) / g.sw;
  for (int64_t vectors = 1; vectors <= 8; vectors *= 2)
    if (vectors * lanes >= P2) return 4 * vectors * lanes <= 5 * P2 ? vectors * lanes : P2;
  return P2;
}

std::vector<int64_t> flat_tap_offsets(const ConvGeometry& g, int64_t lanes) {
  const int64_t R2 = (g.pt + g.H + g.pb + g.sh - 1) / g.sh, P2 = flat_pitch(g, lanes);
  std::vector<int64_t> off(g.KH * g.KW);
  for (int64_t i = 0; i < g.KH; ++i)
    for (int64_t j = 0; j < g.KW; ++j)
      off[i * g.KW + j] =
          ((i * g.dh % g.sh) * g.sw + j * g.dw % g.sw) * R2 * P2 + (i * g.dh / g.sh) * P2 + j * g.dw / g.sw;
  return off;
}

// VISIONOPS_REUSE_BLOCKS: the NCHW row-reuse blocks (flat_conv_reuse), which
// need 16 vector registers or more; not in the generic build (SSE2 pairs).
#define VISIONOPS_VEC_BYTES 32
#define VISIONOPS_REUSE_BLOCKS 0
namespace conv_generic {
#include "conv_cpu_kernels.inc"
}  // namespace conv_generic

#if VISIONOPS_X86_VARIANTS
#undef VISIONOPS_REUSE_BLOCKS
#define VISIONOPS_REUSE_BLOCKS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace conv_avx2 {
#include "conv_cpu_kernels.inc"
}  // namespace conv_avx2
#pragma GCC pop_options
// AVX-512 (16 floats a vector) for the channels_last kernels, whose vectors run
// along channels; NCHW rows of 7..56 pixels are better served by 8-float vectors.
#undef VISIONOPS_VEC_BYTES
#define VISIONOPS_VEC_BYTES 64
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace conv_avx512 {
#include "conv_cpu_kernels.inc"
}  // namespace conv_avx512
#pragma GCC pop_options
#endif
#undef VISIONOPS_VEC_BYTES
#undef VISIONOPS_REUSE_BLOCKS

namespace {

#define VISIONOPS_CONV_KERNEL(fn, ...) VISIONOPS_ISA_KERNEL(conv, fn, __VA_ARGS__)
#define VISIONOPS_CONV_KERNEL_WIDE(fn, ...) VISIONOPS_ISA_KERNEL_WIDE(conv, fn, __VA_ARGS__)

// ---------------------------------------------------------------- depthwise, NCHW

template <typename T>
T* align_to_line(T* p) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

// The scratch elements a kernel needs in any variant, fn<T>(g) the variant's
// count (their vector widths, and so their pitches, differ).
#if VISIONOPS_X86_VARIANTS
#define VISIONOPS_CONV_SCRATCH(fn, T, g) \
  std::max({conv_avx512::fn<T>(g), conv_avx2::fn<T>(g), conv_generic::fn<T>(g)})
#else
#define VISIONOPS_CONV_SCRATCH(fn, T, g) conv_generic::fn<T>(g)
#endif

template <typename scalar_t>
void dw_forward_nchw(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias, int64_t act, at::Tensor& output) {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  const scalar_t* b = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const auto kernel = VISIONOPS_CONV_KERNEL_WIDE(dw_forward_planes, T, scalar_t);
  const int64_t scratch = VISIONOPS_CONV_SCRATCH(flat_forward_scratch, T, g);
  const auto tap_off = flat_tap_offsets(g, VISIONOPS_CONV_KERNEL_WIDE(vector_lanes, T)());
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    // zeros: the planes' padding, which the kernel never writes; rows start on
    // a cache line where the pitch allows
    std::vector<T> buf(scratch + 64 / sizeof(T));
    kernel(g, in, w, b, act, out, align_to_line(buf.data()), begin, end, tap_off.data());
  });
}

// Stride 1: the input gradient is the forward convolution of grad with the
// flipped kernel, padded by dilation * (k - 1) - padding on each side: the
// geometry of that forward (multiplier 1), or nullopt where it does not apply.
// The forward kernels are the faster gather.
std::optional<ConvGeometry> input_grad_as_forward(const ConvGeometry& g) {
  const int64_t span_h = g.dh * (g.KH - 1), span_w = g.dw * (g.KW - 1);
  if (g.m != 1 || g.sh != 1 || g.sw != 1 || g.pt > span_h || g.pb > span_h || g.pl > span_w || g.pr > span_w)
    return std::nullopt;
  ConvGeometry f = g;
  f.H = g.OH, f.W = g.OW, f.OH = g.H, f.OW = g.W;
  f.pt = span_h - g.pt, f.pb = span_h - g.pb, f.pl = span_w - g.pl, f.pr = span_w - g.pr;
  return f;
}

template <typename scalar_t>
void dw_backward_nchw(const ConvGeometry& g, const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                      at::Tensor* grad_input, at::Tensor* grad_weight) {
  using T = at::opmath_type<scalar_t>;
  if (const auto f = grad_input ? input_grad_as_forward(g) : std::nullopt) {
    dw_forward_nchw<scalar_t>(*f, grad, weight.flip({2, 3}).contiguous(), std::nullopt, kActNone, *grad_input);
    grad_input = nullptr;
    if (!grad_weight) return;
  }
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  const scalar_t* go = grad.const_data_ptr<scalar_t>();
  const int64_t KK = g.KH * g.KW, OHW = g.OH * g.OW;
  std::vector<T> partial(grad_weight ? g.N * g.OC * KK : 0);
  if (grad_weight) {
    const auto kernel = VISIONOPS_CONV_KERNEL_WIDE(dw_weight_grad_planes, T, scalar_t);
    const auto tap_off = flat_tap_offsets(g, VISIONOPS_CONV_KERNEL_WIDE(vector_lanes, T)());
    const int64_t scratch = VISIONOPS_CONV_SCRATCH(weight_grad_planes_scratch, T, g);
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> buf(scratch);  // zeros: the padding and the grad rows' tails, never written
      kernel(g, in, go, partial.data(), buf.data(), begin, end, tap_off.data());
    });
  }
  if (grad_input && (g.sh > 1 || g.sw > 1)) {
    scalar_t* gin = grad_input->mutable_data_ptr<scalar_t>();
    const auto kernel = VISIONOPS_CONV_KERNEL_WIDE(dw_input_grad_strided_planes, T, scalar_t);
    const int64_t scratch = VISIONOPS_CONV_SCRATCH(input_grad_strided_scratch, T, g);
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> buf(scratch);  // zeros: the grad planes' padding, never written
      kernel(g, go, w, gin, buf.data(), begin, end);
    });
  } else if (grad_input) {
    scalar_t* gin = grad_input->mutable_data_ptr<scalar_t>();
    const auto kernel = VISIONOPS_CONV_KERNEL(dw_input_grad_plane, T, scalar_t);
    const int64_t scratch = conv_generic::input_grad_scratch<T>(g);
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> buf(scratch);
      for (int64_t nc = begin; nc < end; ++nc)
        kernel(g, go + nc * g.m * OHW, w + nc % g.C * g.m * KK, gin + nc * g.H * g.W, buf.data());
    });
  }
  if (!grad_weight) return;
  scalar_t* gw = grad_weight->mutable_data_ptr<scalar_t>();
  at::parallel_for(0, g.OC * KK, 256, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      T sum = T(0);
      for (int64_t n = 0; n < g.N; ++n) sum += partial[n * g.OC * KK + k];
      gw[k] = static_cast<scalar_t>(sum);
    }
  });
}

// ---------------------------------------------------------------- depthwise, channels_last (multiplier 1)

// weight [C, 1, KH, KW] -> [KH*KW][C] in the opmath type
template <typename T>
at::Tensor transposed_weight(const at::Tensor& weight) {
  const auto acc = at::toOpMathType(weight.scalar_type());
  return weight.reshape({weight.size(0), -1}).t().to(acc).contiguous();
}

template <typename scalar_t>
void dw_forward_cl(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, int64_t act, at::Tensor& output) {
  using T = at::opmath_type<scalar_t>;
  const at::Tensor wt = transposed_weight<T>(weight);
  const at::Tensor bt = bias.has_value() ? bias->to(at::toOpMathType(bias->scalar_type())).contiguous() : at::Tensor();
  const T* wp = wt.const_data_ptr<T>();
  const T* bp = bias.has_value() ? bt.const_data_ptr<T>() : nullptr;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const auto kernel = VISIONOPS_CONV_KERNEL_WIDE(dw_forward_cl_row, T, scalar_t);
  at::parallel_for(0, g.N * g.OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.OH, oh = r % g.OH;
      kernel(g, in + n * g.H * g.W * g.C, wp, bp, act, oh, out + r * g.OW * g.OC);
    }
  });
}

template <typename scalar_t>
void dw_backward_cl(const ConvGeometry& g, const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                    at::Tensor* grad_input, at::Tensor* grad_weight) {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* go = grad.const_data_ptr<scalar_t>();
  const int64_t C = g.OC, KK = g.KH * g.KW;
  const auto as_forward = grad_input ? input_grad_as_forward(g) : std::nullopt;
  if (as_forward) {
    const ConvGeometry& f = *as_forward;
    const at::Tensor wt = transposed_weight<T>(weight.flip({2, 3}));
    const T* wp = wt.const_data_ptr<T>();
    scalar_t* gin = grad_input->mutable_data_ptr<scalar_t>();
    const auto kernel = VISIONOPS_CONV_KERNEL_WIDE(dw_forward_cl_row, T, scalar_t);
    at::parallel_for(0, f.N * f.OH, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / f.OH, ih = r % f.OH;
        kernel(f, go + n * f.H * f.W * C, wp, nullptr, kActNone, ih, gin + r * f.OW * C);
      }
    });
  } else if (grad_input) {
    const at::Tensor wt = transposed_weight<T>(weight);
    const T* wp = wt.const_data_ptr<T>();
    scalar_t* gin = grad_input->mutable_data_ptr<scalar_t>();
    const auto kernel = g.sw > 1 ? VISIONOPS_CONV_KERNEL_WIDE(dw_grad_input_cl_row_strided, T, scalar_t)
                                 : VISIONOPS_CONV_KERNEL_WIDE(dw_grad_input_cl_row, T, scalar_t);
    at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / g.H, ih = r % g.H;
        kernel(g, go + n * g.OH * g.OW * C, wp, ih, gin + r * g.W * C);
      }
    });
  }
  if (!grad_weight) return;
  // fixed chunking (a function of the shape only): deterministic partial sums
  const int64_t chunks = std::min<int64_t>(g.OH, std::max<int64_t>(1, (16 + g.N - 1) / g.N));
  const int64_t rows = (g.OH + chunks - 1) / chunks;
  const int64_t parts = g.N * chunks;
  std::vector<T> partial(parts * KK * C, T(0));
  const auto kernel = VISIONOPS_CONV_KERNEL_WIDE(dw_grad_weight_cl_rows, T, scalar_t);
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / chunks, oh0 = (p % chunks) * rows, oh1 = std::min(g.OH, oh0 + rows);
      if (oh0 >= oh1) continue;
      kernel(g, in + n * g.H * g.W * C, go + n * g.OH * g.OW * C, oh0, oh1, partial.data() + p * KK * C);
    }
  });
  scalar_t* gw = grad_weight->mutable_data_ptr<scalar_t>();  // [C][KK]
  at::parallel_for(0, C * KK, 256, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t c = k / KK, t = k % KK;
      T sum = T(0);
      for (int64_t p = 0; p < parts; ++p) sum += partial[(p * KK + t) * C + c];
      gw[k] = static_cast<scalar_t>(sum);
    }
  });
}

// channels_last with multiplier m > 1: input channel c feeds outputs c*m .. c*m+m-1;
// repeating each input channel m times turns it into multiplier 1 over C*m channels.
at::Tensor repeat_channels(const at::Tensor& input, int64_t m) {
  return input.repeat_interleave(m, 1).contiguous(at::MemoryFormat::ChannelsLast);
}

ConvGeometry expanded(ConvGeometry g) {
  g.C = g.OC;
  g.groups = g.OC;
  g.m = 1;
  return g;
}

// ---------------------------------------------------------------- non-finite weights
//
// The fast kernels read the zero padding (and, for the input gradient at
// stride > 1, the outputs no pixel feeds) as zeros times the weight, which is
// NaN when the weight is inf or NaN; torch skips those taps. A weight with a
// non-finite value (a diverged training) therefore takes these direct loops,
// which visit only the taps inside the image, in any layout (strided access).

bool all_finite(const at::Tensor& weight) {
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "all_finite", [&] {
    const scalar_t* w = weight.const_data_ptr<scalar_t>();  // contiguous
    using T = at::opmath_type<scalar_t>;
    for (int64_t i = 0; i < weight.numel() && finite; ++i) finite = std::isfinite(static_cast<T>(w[i]));
  });
  return finite;
}

template <typename scalar_t>
void dw_forward_taps_inside(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t act, at::Tensor& output) {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();  // contiguous [OC, 1, KH, KW]
  scalar_t* y = output.mutable_data_ptr<scalar_t>();
  const scalar_t* b = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
  const auto xs = input.strides(), ys = output.strides();
  at::parallel_for(0, g.N * g.OC, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.OC, oc = task % g.OC, c = oc / g.m;
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          T acc = b ? static_cast<T>(b[oc]) : T(0);
          for (int64_t i = 0; i < g.KH; ++i) {
            const int64_t ih = oh * g.sh - g.pt + i * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t j = 0; j < g.KW; ++j) {
              const int64_t iw = ow * g.sw - g.pl + j * g.dw;
              if (iw >= 0 && iw < g.W)
                acc += static_cast<T>(w[(oc * g.KH + i) * g.KW + j]) *
                       static_cast<T>(x[n * xs[0] + c * xs[1] + ih * xs[2] + iw * xs[3]]);
            }
          }
          y[n * ys[0] + oc * ys[1] + oh * ys[2] + ow * ys[3]] = static_cast<scalar_t>(apply_activation(acc, act));
        }
    }
  });
}

// grad_input[n, c, ih, iw]: the outputs that read (ih, iw) through tap (i, j)
template <typename scalar_t>
void dw_grad_input_taps_inside(const ConvGeometry& g, const at::Tensor& grad, const at::Tensor& weight,
                               at::Tensor& grad_input) {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* go = grad.const_data_ptr<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();  // contiguous [OC, 1, KH, KW]
  scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
  const auto gs = grad.strides(), is = grad_input.strides();
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.C, c = task % g.C;
      for (int64_t ih = 0; ih < g.H; ++ih)
        for (int64_t iw = 0; iw < g.W; ++iw) {
          T acc = T(0);
          for (int64_t oc = c * g.m; oc < (c + 1) * g.m; ++oc)
            for (int64_t i = 0; i < g.KH; ++i) {
              const int64_t oh = conv_source_output(ih, i, g.pt, g.sh, g.dh, g.OH);
              if (oh < 0) continue;
              for (int64_t j = 0; j < g.KW; ++j) {
                const int64_t ow = conv_source_output(iw, j, g.pl, g.sw, g.dw, g.OW);
                if (ow >= 0)
                  acc += static_cast<T>(w[(oc * g.KH + i) * g.KW + j]) *
                         static_cast<T>(go[n * gs[0] + oc * gs[1] + oh * gs[2] + ow * gs[3]]);
              }
            }
          gi[n * is[0] + c * is[1] + ih * is[2] + iw * is[3]] = static_cast<scalar_t>(acc);
        }
    }
  });
}

// ---------------------------------------------------------------- depthwise entry points

// NCHW planes of fewer than 10 columns (MobileNet's 7x7 stage) pay more for the
// per-plane setup than for their few outputs: such layers run the channels_last
// kernels on a transposed copy instead (measured faster at 7x7, slower at 14x14;
// with scalar transposes instead of torch's copies, widening this to outputs
// narrower than 60 made those layers 1.8-4.6x slower, 2026-11-27).
// The backward goes by the input's width: since the strided input gradient
// gathers in pitch space (2026-11-28), the 576x14 stride-2 layer (7 output
// columns) is faster in NCHW (fwd+bwd 1.62 against 1.93 ms), the 960x7 ones
// are not (1.62 / 1.94 ms against 0.88-1.18 / 0.54-0.62 ms).
bool small_planes(const ConvGeometry& g) { return g.m == 1 && g.OW < 10 && g.C >= 8; }
bool small_planes_backward(const ConvGeometry& g) { return g.m == 1 && g.W < 10 && g.C >= 8; }

// dst[n][p][c] = src[n][c][p] (to_channels_last) or back, for N images of C planes
// of P pixels (conv_cpu_kernels.inc: transpose_rows); torch's copy to channels_last
// took 200 us of the 960x7 stride-2 layer's 280 us, one thread.
template <typename S>
void transpose_planes(const S* src, S* dst, int64_t N, int64_t C, int64_t P, bool to_channels_last) {
  const int64_t R = to_channels_last ? C : P, Cc = to_channels_last ? P : C;  // an image's matrix
  constexpr int64_t kRows = 64;
  const int64_t blocks = (R + kRows - 1) / kRows;
  const auto kernel = VISIONOPS_CONV_KERNEL(transpose_rows, S);
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, i0 = (task % blocks) * kRows;
      kernel(src + n * C * P, dst + n * C * P, R, Cc, i0, std::min(R, i0 + kRows));
    }
  });
}

// A channels_last copy of t (any layout), and the copy of a channels_last
// tensor into the contiguous NCHW tensor out of the same shape.
template <typename S>
at::Tensor channels_last_copy(const at::Tensor& t) {
  const auto src = t.contiguous();
  auto dst = at::empty_like(src, at::MemoryFormat::ChannelsLast);
  transpose_planes(src.const_data_ptr<S>(), dst.mutable_data_ptr<S>(), t.size(0), t.size(1), t.size(2) * t.size(3),
                   true);
  return dst;
}
template <typename S>
void copy_to_nchw(const at::Tensor& cl, at::Tensor& out) {
  transpose_planes(cl.const_data_ptr<S>(), out.mutable_data_ptr<S>(), cl.size(0), cl.size(1),
                   cl.size(2) * cl.size(3), false);
}

at::Tensor depthwise_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t activation) {
  const auto g = check_depthwise_args("depthwise_conv2d", input, weight, bias, stride, padding, dilation, activation);
  const bool cl = conv_channels_last(input);
  auto output = at::empty({g.N, g.OC, g.OH, g.OW}, input.options(), conv_memory_format(cl));
  if (output.numel() == 0) return output;
  const auto w = weight.contiguous();
  const auto b = bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  const bool finite = all_finite(w);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_cpu", [&] {
    if (!finite) {
      dw_forward_taps_inside<scalar_t>(g, input, w, b, activation, output);
    } else if (cl) {
      const auto in = g.m == 1 ? input.contiguous(at::MemoryFormat::ChannelsLast) : repeat_channels(input, g.m);
      dw_forward_cl<scalar_t>(g.m == 1 ? g : expanded(g), in, w, b, activation, output);
    } else if (small_planes(g)) {
      auto out_cl = at::empty_like(output, at::MemoryFormat::ChannelsLast);
      dw_forward_cl<scalar_t>(g, channels_last_copy<scalar_t>(input), w, b, activation, out_cl);
      copy_to_nchw<scalar_t>(out_cl, output);
    } else {
      dw_forward_nchw<scalar_t>(g, input.contiguous(), w, b, activation, output);
    }
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& output,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t activation,
    std::array<bool, 3> output_mask) {
  const char* op = "_depthwise_conv2d_backward";
  const auto g = check_depthwise_args(op, input, weight, std::nullopt, stride, padding, dilation, activation);
  check_conv_grad(op, grad, input, g);
  VISIONOPS_CHECK(activation == kActNone || (output.has_value() && output->sizes() == grad.sizes()), op,
                  ": output (the forward result) is needed to differentiate through the activation");
  const bool cl = conv_channels_last(input);
  const auto fmt = conv_memory_format(cl);
  const auto go = grad_through_activation(grad, output, activation).contiguous(fmt);
  // every path below writes all of grad_input: no zero fill (a full pass over it)
  at::Tensor gi = output_mask[0] ? at::empty_like(input, fmt) : unwanted_grad(input);
  at::Tensor gw = output_mask[1] ? at::zeros_like(weight, at::MemoryFormat::Contiguous) : unwanted_grad(weight);
  at::Tensor gb = output_mask[2] ? conv_bias_grad(go) : unwanted_grad(weight);
  if (go.numel() == 0 || input.numel() == 0 || !(output_mask[0] || output_mask[1])) {
    if (output_mask[0]) gi.zero_();
    return {gi, gw, gb};
  }
  const auto w = weight.contiguous();
  if (output_mask[0] && !all_finite(w)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_backward_cpu", [&] {
      dw_grad_input_taps_inside<scalar_t>(g, go, w, gi);
    });
    output_mask[0] = false;
    if (!output_mask[1]) return {gi, gw, gb};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_backward_cpu", [&] {
    if (cl && g.m > 1) {
      const auto in = repeat_channels(input, g.m);
      at::Tensor gi_expanded = output_mask[0] ? at::empty_like(in) : at::Tensor();
      dw_backward_cl<scalar_t>(expanded(g), go, in, w, output_mask[0] ? &gi_expanded : nullptr,
                               output_mask[1] ? &gw : nullptr);
      if (output_mask[0]) {
        // [N, H, W, C * m] -> sum over m -> [N, H, W, C] viewed as channels_last NCHW
        const auto nhwc = gi_expanded.permute({0, 2, 3, 1}).reshape({g.N, g.H, g.W, g.C, g.m});
        const auto acc = at::toOpMathType(input.scalar_type());
        gi.permute({0, 2, 3, 1}).copy_(nhwc.sum(4, false, acc));
      }
    } else if (cl) {
      dw_backward_cl<scalar_t>(g, go, input.contiguous(fmt), w, output_mask[0] ? &gi : nullptr,
                               output_mask[1] ? &gw : nullptr);
    } else if (small_planes_backward(g)) {
      at::Tensor gi_cl = output_mask[0] ? at::empty_like(input, at::MemoryFormat::ChannelsLast) : at::Tensor();
      dw_backward_cl<scalar_t>(g, channels_last_copy<scalar_t>(go), channels_last_copy<scalar_t>(input), w,
                               output_mask[0] ? &gi_cl : nullptr, output_mask[1] ? &gw : nullptr);
      if (output_mask[0]) copy_to_nchw<scalar_t>(gi_cl, gi);
    } else {
      dw_backward_nchw<scalar_t>(g, go, input.contiguous(), w, output_mask[0] ? &gi : nullptr,
                                 output_mask[1] ? &gw : nullptr);
    }
  });
  return {gi, gw, gb};
}

}  // namespace

// ---------------------------------------------------------------- conv2d: im2col + GEMM, shared by both devices

// cols [Cg * KH * KW, OH * OW] of channels [c0, c0 + Cg) of one image (NCHW, contiguous)
template <typename scalar_t>
void im2col_cpu_impl(const scalar_t* img, const ConvGeometry& g, int64_t Cg, scalar_t* cols) {
  const int64_t KK = g.KH * g.KW, OHW = g.OH * g.OW;
  at::parallel_for(0, Cg * KK, 4, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t c = row / KK, i = (row % KK) / g.KW, j = row % g.KW;
      const scalar_t* plane = img + c * g.H * g.W;
      scalar_t* dst = cols + row * OHW;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t ih = oh * g.sh - g.pt + i * g.dh;
        scalar_t* d = dst + oh * g.OW;
        if (ih < 0 || ih >= g.H) {
          std::fill(d, d + g.OW, scalar_t(0));
          continue;
        }
        const scalar_t* src = plane + ih * g.W;
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const int64_t iw = ow * g.sw - g.pl + j * g.dw;
          d[ow] = iw >= 0 && iw < g.W ? src[iw] : scalar_t(0);
        }
      }
    }
  });
}

// img[c] = sum of the columns' contributions; each task owns whole channel planes (no races)
template <typename scalar_t>
void col2im_cpu_impl(const scalar_t* cols, const ConvGeometry& g, int64_t Cg, scalar_t* img) {
  using T = at::opmath_type<scalar_t>;
  const int64_t KK = g.KH * g.KW, OHW = g.OH * g.OW;
  at::parallel_for(0, Cg, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(g.H * g.W);
    for (int64_t c = begin; c < end; ++c) {
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t t = 0; t < KK; ++t) {
        const int64_t i = t / g.KW, j = t % g.KW;
        const scalar_t* src = cols + (c * KK + t) * OHW;
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          const int64_t ih = oh * g.sh - g.pt + i * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          T* row = acc.data() + ih * g.W;
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t iw = ow * g.sw - g.pl + j * g.dw;
            if (iw >= 0 && iw < g.W) row[iw] += static_cast<T>(src[oh * g.OW + ow]);
          }
        }
      }
      scalar_t* plane = img + c * g.H * g.W;
      for (int64_t k = 0; k < g.H * g.W; ++k) plane[k] = static_cast<scalar_t>(acc[k]);
    }
  });
}

void im2col_cpu(const at::Tensor& img, const ConvGeometry& g, at::Tensor& cols) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, img.scalar_type(), "im2col_cpu", [&] {
    im2col_cpu_impl<scalar_t>(img.const_data_ptr<scalar_t>(), g, img.size(0), cols.mutable_data_ptr<scalar_t>());
  });
}

void col2im_cpu(const at::Tensor& cols, const ConvGeometry& g, at::Tensor& img) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cols.scalar_type(), "col2im_cpu", [&] {
    col2im_cpu_impl<scalar_t>(cols.const_data_ptr<scalar_t>(), g, img.size(0), img.mutable_data_ptr<scalar_t>());
  });
}

namespace {

// At most this many rows (or columns) of a product per GEMM, see gemm_out.
constexpr int64_t kGemmBlock = 512;

// Runs fn(k) for k in [0, blocks) inside at::parallel_for's region, which it opens
// even for one block (at least two tasks): MKL called there stays on one thread.
template <typename Fn>
void for_each_block_in_parallel_region(int64_t blocks, const Fn& fn) {
  at::parallel_for(0, std::max<int64_t>(blocks, 2), 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < std::min(end, blocks); ++k) fn(k);
  });
}

// out (+)= a @ b. On the CPU the bits must not depend on the thread count, and an
// MKL GEMM's do: MKL picks its kernels and its split of the work by thread count
// (1 vs 4 threads changed output bits even at 2x27 @ 27x49 on an AVX-512 EPYC).
// So the product is cut into fixed blocks of out's rows (or of its columns when it
// has fewer rows), each one GEMM inside the parallel region, where MKL stays on
// one thread: the partition depends on the shapes alone. On CUDA: one GEMM.
void gemm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  auto product = [accumulate](at::Tensor o, const at::Tensor& x, const at::Tensor& y) {
    if (accumulate) {
      at::addmm_out(o, o, x, y);
    } else {
      at::mm_out(o, x, y);
    }
  };
  if (!out.is_cpu()) return product(out, a, b);
  const bool by_rows = out.size(0) >= out.size(1);
  const int64_t extent = out.size(by_rows ? 0 : 1), blocks = (extent + kGemmBlock - 1) / kGemmBlock;
  for_each_block_in_parallel_region(blocks, [&](int64_t k) {
    const int64_t start = k * kGemmBlock, len = std::min(kGemmBlock, extent - start);
    if (by_rows) {
      product(out.narrow(0, start, len), a.narrow(0, start, len), b);
    } else {
      product(out.narrow(1, start, len), a, b.narrow(1, start, len));
    }
  });
}

// 1x1, stride 1, no padding: the image itself is the column matrix
bool is_pointwise(const ConvGeometry& g) {
  return g.KH == 1 && g.KW == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pb == 0 && g.pl == 0 && g.pr == 0;
}

// Pointwise with one group as whole-batch GEMMs. channels_last: the [N*H*W, C]
// rows of the image are the GEMM's rows, so the batch is one GEMM on views;
// NCHW: one batched GEMM over the [N, C, H*W] images. The per-image loop below
// converts channels_last twice and runs N small GEMMs: 0.19-0.53x of
// F.conv2d on MobileNet pointwise layers (2 threads), against 0.9-1.0x here.
bool whole_batch_pointwise(const ConvGeometry& g) { return is_pointwise(g) && g.groups == 1; }

// [N, C, H, W] channels_last -> its [N*H*W, C] rows (a view)
at::Tensor pixel_rows(const at::Tensor& t) {
  return t.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1}).reshape({-1, t.size(1)});
}

// [N*H*W, C] rows -> [N, C, H, W] channels_last (a view)
at::Tensor from_pixel_rows(const at::Tensor& rows, int64_t N, int64_t H, int64_t W) {
  return rows.view({N, H, W, rows.size(1)}).permute({0, 3, 1, 2});
}

// a^T b over the rows of a [M, P] and b [M, Q] (a weight gradient's sum over
// pixels), in opmath: fixed blocks of rows, each one GEMM inside the parallel
// region (where MKL runs on one thread), added in block order. One GEMM over all
// rows changed bits with the thread count: MKL splits a long inner dimension.
at::Tensor rows_transpose_product(const at::Tensor& a, const at::Tensor& b, at::ScalarType acc) {
  constexpr int64_t kBlock = 1024;
  const int64_t M = a.size(0), blocks = std::max<int64_t>(1, (M + kBlock - 1) / kBlock);
  auto partial = at::zeros({blocks, a.size(1), b.size(1)}, a.options().dtype(acc));
  for_each_block_in_parallel_region(blocks, [&](int64_t k) {
    const int64_t r0 = k * kBlock, len = std::min(kBlock, M - r0);
    if (len <= 0) return;
    auto out = partial[k];
    at::mm_out(out, a.narrow(0, r0, len).t().to(acc), b.narrow(0, r0, len).to(acc));
  });
  auto total = partial[0].clone();
  for (int64_t k = 1; k < blocks; ++k) total.add_(partial[k]);
  return total;
}

at::Tensor pointwise_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const ConvGeometry& g, bool channels_last) {
  const auto w = weight.reshape({g.OC, g.C});
  if (channels_last) {
    const auto rows = pixel_rows(input);
    // bias added after the GEMM: addmm first copies the broadcast bias into the
    // output and then runs the GEMM with beta = 1, 1.4x slower in all (2 threads)
    auto out = at::empty({rows.size(0), g.OC}, input.options());
    if (!input.is_cpu() && bias.has_value()) {
      at::addmm_out(out, *bias, rows, w.t());  // cuBLASLt adds a 1-D bias in the GEMM's epilogue
      return from_pixel_rows(out, g.N, g.OH, g.OW);
    }
    gemm_out(out, rows, w.t(), false);
    if (bias.has_value()) out.add_(*bias);
    return from_pixel_rows(out, g.N, g.OH, g.OW);
  }
  const auto x = input.contiguous().view({g.N, g.C, g.H * g.W});
  at::Tensor out;
  if (input.is_cpu()) {
    out = at::empty({g.N, g.OC, g.H * g.W}, input.options());
    for (int64_t n = 0; n < g.N; ++n) gemm_out(out[n], w, x[n], false);
  } else {
    out = at::matmul(w, x).contiguous();  // one batched cuBLAS GEMM
  }
  if (bias.has_value()) out.add_(bias->view({1, g.OC, 1}));
  return out.view({g.N, g.OC, g.OH, g.OW});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pointwise_backward(const at::Tensor& grad, const at::Tensor& input,
                                                                  const at::Tensor& weight, const ConvGeometry& g,
                                                                  std::array<bool, 3> output_mask, bool channels_last) {
  const auto w = weight.reshape({g.OC, g.C});
  const auto acc_type = at::toOpMathType(input.scalar_type());
  at::Tensor gi = unwanted_grad(input), gw = unwanted_grad(weight), gb = unwanted_grad(weight);
  if (channels_last) {
    // grad as channels_last pixel rows whatever its layout, so every gradient
    // has the same bits for any grad layout (the bias too: summed over the rows
    // rather than over an NCHW copy, which took a quarter of the backward)
    const auto go = pixel_rows(grad);
    if (output_mask[2]) gb = go.sum(0, false, acc_type).to(grad.scalar_type());
    if (output_mask[0]) {
      auto rows = at::empty({go.size(0), g.C}, grad.options());
      gemm_out(rows, go, w, false);
      gi = from_pixel_rows(rows, g.N, g.H, g.W);
    }
    // 16-bit operands widened: the batch sum is then rounded once, as in the loop below.
    // CUDA: one GEMM over all rows (cuBLAS's bits do not depend on a thread count;
    // the CPU's blocks of 1024 rows were ~200 launches there, 0.09x of cuDNN on the H100)
    if (output_mask[1]) {
      gw = grad.is_cpu() ? rows_transpose_product(go, pixel_rows(input), acc_type)
                         : at::mm(go.t().to(acc_type), pixel_rows(input).to(acc_type));
    }
  } else {
    if (output_mask[2]) gb = conv_bias_grad(grad.contiguous());
    const auto go = grad.contiguous().view({g.N, g.OC, g.H * g.W});
    const auto x = input.contiguous().view({g.N, g.C, g.H * g.W});
    if (output_mask[0]) {
      if (grad.is_cpu()) {
        gi = at::empty({g.N, g.C, g.H * g.W}, grad.options());
        for (int64_t n = 0; n < g.N; ++n) gemm_out(gi[n], w.t(), go[n], false);
      } else {
        gi = at::matmul(w.t(), go).contiguous();  // one batched cuBLAS GEMM
      }
      gi = gi.view({g.N, g.C, g.H, g.W});
    }
    if (output_mask[1]) {
      // one image at a time, in order (as the general path): a batched GEMM + sum
      // would hold N weight-sized terms, pixel rows would need two transposing
      // copies (0.37-0.66x instead of 0.53-0.97x of torch forward+backward)
      if (grad.is_cpu()) {
        gw = at::zeros({g.OC, g.C}, weight.options().dtype(acc_type));
        for (int64_t n = 0; n < g.N; ++n) gemm_out(gw, go[n].to(acc_type), x[n].t().to(acc_type), true);
      } else {
        // one batched cuBLAS GEMM and a sum over the images, instead of N launches
        gw = at::bmm(go.to(acc_type), x.transpose(1, 2).to(acc_type)).sum(0);
      }
    }
  }
  if (output_mask[1]) gw = gw.view(weight.sizes()).to(weight.scalar_type());
  return {gi, gw, gb};
}

}  // namespace

at::Tensor conv2d_gemm_forward(const at::Tensor& input_, const at::Tensor& weight_, const std::optional<at::Tensor>& bias,
                               const ConvGeometry& g, Im2ColFn im2col) {
  const bool cl = conv_channels_last(input_);
  auto output = at::empty({g.N, g.OC, g.OH, g.OW}, input_.options());
  if (output.numel() == 0) return output.contiguous(conv_memory_format(cl));
  if (whole_batch_pointwise(g) && g.C > 0) return pointwise_forward(input_, weight_, bias, g, cl);
  const auto input = input_.contiguous();
  const int64_t G = g.groups, Cg = g.C / G, OCg = g.OC / G, K = Cg * g.KH * g.KW, OHW = g.OH * g.OW;
  const auto w = weight_.contiguous().view({G, OCg, K});
  const bool pointwise = is_pointwise(g);
  at::Tensor cols = pointwise ? at::Tensor() : at::empty({K, OHW}, input.options());
  for (int64_t n = 0; n < g.N; ++n) {
    for (int64_t gr = 0; gr < G; ++gr) {
      const auto img = input[n].narrow(0, gr * Cg, Cg);
      if (pointwise) {
        cols = img.reshape({Cg, OHW});
      } else if (K > 0) {
        im2col(img, g, cols);
      } else {
        cols = at::zeros({0, OHW}, input.options());
      }
      auto out = output[n].narrow(0, gr * OCg, OCg).view({OCg, OHW});
      if (bias.has_value()) out.copy_(bias->narrow(0, gr * OCg, OCg).unsqueeze(1).expand({OCg, OHW}));
      gemm_out(out, w[gr], cols, bias.has_value());
    }
  }
  return cl ? output.contiguous(at::MemoryFormat::ChannelsLast) : output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_gemm_backward(const at::Tensor& grad_, const at::Tensor& input_,
                                                                    const at::Tensor& weight_, const ConvGeometry& g,
                                                                    std::array<bool, 3> output_mask, Im2ColFn im2col,
                                                                    Im2ColFn col2im) {
  const bool cl = conv_channels_last(input_);
  const auto fmt = conv_memory_format(cl);
  const int64_t G = g.groups, Cg = g.C / G, OCg = g.OC / G, K = Cg * g.KH * g.KW, OHW = g.OH * g.OW;
  if (whole_batch_pointwise(g) && grad_.numel() > 0 && input_.numel() > 0) {
    return pointwise_backward(grad_, input_, weight_, g, output_mask, cl);
  }
  const auto acc_type = at::toOpMathType(input_.scalar_type());
  at::Tensor gi = output_mask[0] ? at::zeros({g.N, g.C, g.H, g.W}, input_.options()) : unwanted_grad(input_);
  // the weight gradient sums over the batch: accumulate in opmath (float for 16-bit)
  at::Tensor gw_acc = output_mask[1] ? at::zeros({G, OCg, K}, weight_.options().dtype(acc_type)) : at::Tensor();
  // the bias gradient sums the contiguous copy: the same bits whatever grad's layout
  at::Tensor gb = output_mask[2] ? conv_bias_grad(grad_.contiguous()) : unwanted_grad(weight_);
  const bool work = grad_.numel() > 0 && input_.numel() > 0 && K > 0 && (output_mask[0] || output_mask[1]);
  if (work) {
    const auto input = input_.contiguous();
    const auto grad = grad_.contiguous();
    const auto w = weight_.contiguous().view({G, OCg, K});
    const bool pointwise = is_pointwise(g);
    at::Tensor cols = at::empty({K, OHW}, input.options());
    at::Tensor gcols = at::empty({K, OHW}, input.options());
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t gr = 0; gr < G; ++gr) {
        const auto go = grad[n].narrow(0, gr * OCg, OCg).view({OCg, OHW});
        if (output_mask[0]) {
          auto gimg = gi[n].narrow(0, gr * Cg, Cg);
          if (pointwise) {
            auto flat = gimg.view({Cg, OHW});
            gemm_out(flat, w[gr].t(), go, false);
          } else {
            gemm_out(gcols, w[gr].t(), go, false);
            col2im(gcols, g, gimg);
          }
        }
        if (output_mask[1]) {
          const auto img = input[n].narrow(0, gr * Cg, Cg);
          if (pointwise) {
            cols = img.reshape({Cg, OHW});
          } else {
            im2col(img, g, cols);
          }
          // 16-bit operands are widened first: a 16-bit GEMM would round each
          // image's term before the batch sum, and the terms can cancel
          gemm_out(gw_acc[gr], go.to(acc_type), cols.t().to(acc_type), true);
        }
      }
    }
  }
  at::Tensor gw = output_mask[1] ? gw_acc.view(weight_.sizes()).to(weight_.scalar_type()) : unwanted_grad(weight_);
  if (output_mask[0] && cl) gi = gi.contiguous(fmt);
  return {gi, gw, gb};
}

namespace {

// ---- conv2d (one group, not pointwise) on channels_last pixel rows
//
// Each output pixel's patch, KH*KW runs of C contiguous input values, is one
// row of a column matrix, so a chunk of whole images is one GEMM with the
// [OC, KH*KW*C] weight, and its product is the channels_last output itself. The
// per-image NCHW im2col + GEMM (kept for groups > 1, 16-bit types and CUDA) ran
// at 0.16-0.44x of F.conv2d on 3x3 layers (2 threads).
constexpr int64_t kPatchRowsPerChunk = 8192;  // rows of one column matrix (whole images)

bool use_patch_rows(const ConvGeometry& g, const at::Tensor& input) {
  const auto t = input.scalar_type();
  return g.groups == 1 && !is_pointwise(g) && (t == at::kFloat || t == at::kDouble) && g.C * g.KH * g.KW > 0;
}

int64_t images_per_chunk(const ConvGeometry& g) {
  return std::max<int64_t>(1, kPatchRowsPerChunk / std::max<int64_t>(1, g.OH * g.OW));
}

// rows of images [n0, n1): cols[(n - n0) * OH * OW + oh * OW + ow][(i * KW + j) * C + c]
template <typename scalar_t>
void gather_patch_rows(const scalar_t* x, const ConvGeometry& g, int64_t n0, int64_t n1, scalar_t* cols) {
  const int64_t K = g.KH * g.KW * g.C;
  at::parallel_for(n0 * g.OH, n1 * g.OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {  // row = n * OH + oh
      const int64_t n = row / g.OH, oh = row % g.OH;
      scalar_t* dst = cols + ((n - n0) * g.OH + oh) * g.OW * K;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        for (int64_t i = 0; i < g.KH; ++i) {
          const int64_t ih = oh * g.sh - g.pt + i * g.dh;
          for (int64_t j = 0; j < g.KW; ++j, dst += g.C) {
            const int64_t iw = ow * g.sw - g.pl + j * g.dw;
            if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) {
              std::fill(dst, dst + g.C, scalar_t(0));
            } else {
              std::copy_n(x + ((n * g.H + ih) * g.W + iw) * g.C, g.C, dst);
            }
          }
        }
      }
    }
  });
}

// the input gradient of images [n0, n1) (gx: the whole batch's [N, H, W, C]) from
// their column gradients (gather form: each input pixel sums the entries that
// read it; parallel over input rows, no races, the same order whatever the
// thread count)
template <typename scalar_t>
void scatter_patch_rows(const scalar_t* gcols, const ConvGeometry& g, int64_t n0, int64_t n1, scalar_t* gx) {
  const int64_t K = g.KH * g.KW * g.C;
  at::parallel_for(n0 * g.H, n1 * g.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {  // row = n * H + ih
      const int64_t n = row / g.H, ih = row % g.H;
      scalar_t* dst = gx + row * g.W * g.C;
      std::fill(dst, dst + g.W * g.C, scalar_t(0));
      const scalar_t* image = gcols + (n - n0) * g.OH * g.OW * K;
      for (int64_t i = 0; i < g.KH; ++i) {
        const int64_t oh = conv_source_output<int64_t>(ih, i, g.pt, g.sh, g.dh, g.OH);
        if (oh < 0) continue;
        for (int64_t iw = 0; iw < g.W; ++iw) {
          scalar_t* out = dst + iw * g.C;
          for (int64_t j = 0; j < g.KW; ++j) {
            const int64_t ow = conv_source_output<int64_t>(iw, j, g.pl, g.sw, g.dw, g.OW);
            if (ow < 0) continue;
            const scalar_t* src = image + (oh * g.OW + ow) * K + (i * g.KW + j) * g.C;
            for (int64_t c = 0; c < g.C; ++c) out[c] += src[c];
          }
        }
      }
    }
  });
}

// [OC, C, KH, KW] -> [OC, KH * KW * C], the column order of gather_patch_rows
at::Tensor patch_weight(const at::Tensor& weight) {
  return weight.permute({0, 2, 3, 1}).reshape({weight.size(0), -1}).contiguous();
}

at::Tensor patch_rows_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              const ConvGeometry& g) {
  const auto x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const auto w = patch_weight(weight);
  const int64_t K = w.size(1), per_chunk = images_per_chunk(g), rows_per_image = g.OH * g.OW;
  auto out_rows = at::empty({g.N * rows_per_image, g.OC}, input.options());
  auto cols = at::empty({std::min(per_chunk, g.N) * rows_per_image, K}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv2d_patch_rows", [&] {
    for (int64_t n0 = 0; n0 < g.N; n0 += per_chunk) {
      const int64_t n1 = std::min(g.N, n0 + per_chunk), rows = (n1 - n0) * rows_per_image;
      gather_patch_rows(x.const_data_ptr<scalar_t>(), g, n0, n1, cols.mutable_data_ptr<scalar_t>());
      auto out = out_rows.narrow(0, n0 * rows_per_image, rows);
      gemm_out(out, cols.narrow(0, 0, rows), w.t(), false);
    }
  });
  if (bias.has_value()) out_rows.add_(*bias);
  return from_pixel_rows(out_rows, g.N, g.OH, g.OW);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_rows_backward(const at::Tensor& grad, const at::Tensor& input,
                                                                   const at::Tensor& weight, const ConvGeometry& g,
                                                                   std::array<bool, 3> output_mask) {
  const auto x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const auto go = pixel_rows(grad);  // [N * OH * OW, OC], whatever grad's layout
  const auto w = patch_weight(weight);
  const int64_t K = w.size(1), per_chunk = images_per_chunk(g), rows_per_image = g.OH * g.OW;
  at::Tensor gi = unwanted_grad(input), gw = unwanted_grad(weight), gb = unwanted_grad(weight);
  if (output_mask[2]) gb = go.sum(0);
  at::Tensor gx_rows;
  if (output_mask[0]) gx_rows = at::empty({g.N * g.H * g.W, g.C}, input.options());
  if (output_mask[1]) gw = at::zeros({g.OC, K}, weight.options());
  auto cols = at::empty({std::min(per_chunk, g.N) * rows_per_image, K}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv2d_patch_rows_backward", [&] {
    for (int64_t n0 = 0; n0 < g.N; n0 += per_chunk) {
      const int64_t n1 = std::min(g.N, n0 + per_chunk), rows = (n1 - n0) * rows_per_image;
      const auto go_chunk = go.narrow(0, n0 * rows_per_image, rows);
      auto chunk = cols.narrow(0, 0, rows);
      if (output_mask[1]) {
        gather_patch_rows(x.const_data_ptr<scalar_t>(), g, n0, n1, chunk.mutable_data_ptr<scalar_t>());
        gw.add_(rows_transpose_product(go_chunk, chunk, go_chunk.scalar_type()));
      }
      if (output_mask[0]) {
        gemm_out(chunk, go_chunk, w, false);  // the column gradient, in the same buffer
        scatter_patch_rows(chunk.const_data_ptr<scalar_t>(), g, n0, n1, gx_rows.mutable_data_ptr<scalar_t>());
      }
    }
  });
  if (output_mask[0]) gi = from_pixel_rows(gx_rows, g.N, g.H, g.W);
  if (output_mask[1]) gw = gw.view({g.OC, g.KH, g.KW, g.C}).permute({0, 3, 1, 2}).contiguous();
  return {gi, gw, gb};
}

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto g = check_conv2d_args("conv2d", input, weight, bias, stride, padding, dilation, groups);
  if (conv_channels_last(input) && use_patch_rows(g, input) && g.N * g.OH * g.OW > 0) {
    return patch_rows_forward(input, weight, bias, g);
  }
  return conv2d_gemm_forward(input, weight, bias, g, &im2col_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                                                   const at::Tensor& weight, at::IntArrayRef stride,
                                                                   at::IntArrayRef padding, at::IntArrayRef dilation,
                                                                   int64_t groups, std::array<bool, 3> output_mask) {
  const auto g = check_conv2d_args("_conv2d_backward", input, weight, std::nullopt, stride, padding, dilation, groups);
  check_conv_grad("_conv2d_backward", grad, input, g);
  if (conv_channels_last(input) && use_patch_rows(g, input) && grad.numel() > 0 && input.numel() > 0) {
    return patch_rows_backward(grad, input, weight, g, output_mask);
  }
  return conv2d_gemm_backward(grad, input, weight, g, output_mask, &im2col_cpu, &col2im_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cpu);
  m.impl("_depthwise_conv2d_backward", &depthwise_conv2d_backward_cpu);
  m.impl("conv2d", &conv2d_cpu);
  m.impl("_conv2d_backward", &conv2d_backward_cpu);
}

}  // namespace visionops
