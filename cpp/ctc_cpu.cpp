// CTC loss on the CPU: forward (alpha recursion) and backward (beta recursion
// plus the gradient), and the prefix beam-search decoder.
//
// Both loss kernels parallelise over the batch; a sample's recursion is
// sequential in time, and the loop over extended-label positions is the inner
// loop. The backward never stores beta: it walks t downwards keeping two beta
// rows, and per time step folds alpha_t + beta_t into one log-occupancy per
// distinct label, so the only saved state is log_alpha [N, T, 2S + 1] and the
// extra memory is O(S) per thread (torch also materialises log_beta).
// Each sample writes only its own gradient rows: no races, deterministic.
// Both recursions visit only the cells on some complete path (ctc.h window);
// for float32 a step's positions go 8 at a time through AVX2 (row kernels
// below). The dense part of the gradient, g * exp(log_probs), is one pass over
// the rows (for large double inputs ATen's exp then a scaling pass).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <unordered_map>
#include <vector>

#include "visionops/check.h"
#include "visionops/cpu_isa.h"
#include "visionops/ctc.h"
#include "visionops/ctc_ops.h"

#if defined(__x86_64__) && defined(__GNUC__)
// SLEEF's 8-lane float exp/log (1-ulp), exported by libtorch_cpu with its own
// runtime dispatch; called only from functions compiled for AVX2 + FMA, and
// only when the CPU has them.
#include <immintrin.h>
extern "C" __m256 Sleef_expf8_u10(__m256);
extern "C" __m256 Sleef_logf8_u10(__m256);
// the 16-lane AVX-512 exp, weak: a libtorch built without it leaves it null
extern "C" __m512 Sleef_expf16_u10(__m512) __attribute__((weak));
#define VISIONOPS_CTC_AVX2 1
#endif

namespace visionops {

// ---------------------------------------------------------------- argument checks

void check_ctc_args(const char* op, const at::Tensor& log_probs, const at::Tensor& targets,
                    const at::Tensor& input_lengths, const at::Tensor& target_lengths, int64_t max_target_length,
                    int64_t blank) {
  VISIONOPS_CHECK(log_probs.dim() == 3, op, ": log_probs must be a 3-D tensor [T, N, C], got a ", log_probs.dim(),
              "-D tensor");
  VISIONOPS_CHECK(at::isFloatingType(log_probs.scalar_type()), op, ": log_probs must be a floating-point tensor, got ",
              log_probs.scalar_type());
  const int64_t N = log_probs.size(1), C = log_probs.size(2);
  VISIONOPS_CHECK(targets.dim() == 1 || targets.dim() == 2, op,
              ": targets must be padded [N, S] or concatenated 1-D, got a ", targets.dim(), "-D tensor");
  VISIONOPS_CHECK(at::isIntegralType(targets.scalar_type(), /*includeBool=*/false), op,
              ": targets must be an integer tensor, got ", targets.scalar_type());
  VISIONOPS_CHECK(targets.device() == log_probs.device(), op, ": targets must be on the device of log_probs (",
              log_probs.device(), "), got ", targets.device());
  if (targets.dim() == 2) {
    VISIONOPS_CHECK(targets.size(0) == N, op, ": padded targets must have N = ", N, " rows, got shape ", targets.sizes());
    VISIONOPS_CHECK(max_target_length <= targets.size(1), op, ": max_target_length (", max_target_length,
                ") exceeds the padded target width ", targets.size(1));
  }
  VISIONOPS_CHECK(max_target_length >= 0, op, ": max_target_length must be >= 0, got ", max_target_length);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"input_lengths", input_lengths},
                                std::pair<const char*, const at::Tensor&>{"target_lengths", target_lengths}}) {
    VISIONOPS_CHECK(t.dim() == 1 && t.size(0) == N, op, ": ", name, " must be a 1-D tensor of N = ", N,
                " lengths, got shape ", t.sizes());
    VISIONOPS_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), op, ": ", name,
                " must be an integer tensor, got ", t.scalar_type());
    VISIONOPS_CHECK(t.device() == log_probs.device(), op, ": ", name, " must be on the device of log_probs (",
                log_probs.device(), "), got ", t.device());
  }
  VISIONOPS_CHECK(blank >= 0 && blank < C, op, ": blank must lie in [0, C) = [0, ", C, "), got ", blank);
}

void check_ctc_values(const char* op, const at::Tensor& targets, const at::Tensor& input_lengths,
                      const at::Tensor& target_lengths, int64_t max_time, int64_t max_target_length,
                      int64_t num_classes, int64_t blank) {
  const auto il = input_lengths.to(at::kLong).contiguous();
  const auto tl = target_lengths.to(at::kLong).contiguous();
  const auto tg = targets.to(at::kLong).contiguous();
  const int64_t N = il.size(0);
  const int64_t* ilp = il.data_ptr<int64_t>();
  const int64_t* tlp = tl.data_ptr<int64_t>();
  const int64_t* tgp = tg.data_ptr<int64_t>();
  int64_t offset = 0;
  for (int64_t b = 0; b < N; ++b) {
    VISIONOPS_CHECK(ilp[b] >= 0 && ilp[b] <= max_time, op, ": input_lengths[", b, "] = ", ilp[b],
                " must lie in [0, T] = [0, ", max_time, "]");
    VISIONOPS_CHECK(tlp[b] >= 0 && tlp[b] <= max_target_length, op, ": target_lengths[", b, "] = ", tlp[b],
                " must lie in [0, S] = [0, ", max_target_length, "]");
    const int64_t start = tg.dim() == 2 ? b * tg.size(1) : offset;
    VISIONOPS_CHECK(tg.dim() == 2 || start + tlp[b] <= tg.numel(), op, ": concatenated targets hold ", tg.numel(),
                " labels, fewer than sum(target_lengths)");
    for (int64_t k = 0; k < tlp[b]; ++k) {
      const int64_t label = tgp[start + k];
      VISIONOPS_CHECK(label >= 0 && label < num_classes && label != blank, op, ": targets of sample ", b,
                  " must be class indices in [0, C) = [0, ", num_classes, ") other than blank = ", blank,
                  ", got ", label, " at position ", k);
    }
    offset += tlp[b];
  }
}

at::Tensor ctc_target_offsets(const at::Tensor& targets, const at::Tensor& target_lengths) {
  if (targets.dim() == 2) {
    return at::arange(target_lengths.size(0), target_lengths.options()) * targets.size(1);
  }
  return at::cumsum(target_lengths, 0) - target_lengths;
}

namespace {

using ctc::neg_inf;

at::ScalarType acc_type_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

template <typename scalar_t, typename acc_t>
inline void gather_emissions(const scalar_t* row, const scalar_t* next_row, const int64_t* z, int64_t begin,
                             int64_t end, acc_t* emit) {
  for (int64_t s = begin; s < end; ++s) emit[s] = acc_t(row[z[s]]);
  if (next_row != nullptr) {
    for (int64_t s = begin; s < end; s += 2) __builtin_prefetch(next_row + z[s + 1 < end ? s + 1 : s]);
  }
}


// ---------------------------------------------------------------- row kernels
//
// One step of a recursion over the window [begin, end) of positions. The
// generic versions apply the cells of ctc.h; the float versions run 8 positions
// at a time with AVX2 where the CPU has it (a cell reads only the previous
// step's row, so the positions of one step are independent). `skip[s]` is 0
// where the alpha recursion may jump from s - 2 to s and -inf elsewhere; the
// beta rows and `skip` carry two -inf entries past 2L + 1.

template <typename acc_t>
void alpha_row(const acc_t* prev, const int64_t* target, const acc_t* /*skip*/, const acc_t* emit, acc_t* cur,
               int64_t begin, int64_t end) {
  for (int64_t s = begin; s < end; ++s) cur[s] = ctc::alpha_cell(prev, target, s, emit[s]);
}

template <typename acc_t>
void beta_row(const acc_t* next, const int64_t* target, const acc_t* /*skip*/, const acc_t* emit, acc_t* cur,
              int64_t s_len, int64_t begin, int64_t end) {
  for (int64_t s = begin; s < end; ++s) cur[s] = ctc::beta_cell(next, target, s, s_len, emit[s]);
}

// out[s] = exp(v[s] - m[s]), 0 where m[s] = -inf (then v[s] = -inf too)
template <typename acc_t>
void exp_diff_row(const acc_t* v, const acc_t* m, acc_t* out, int64_t begin, int64_t end) {
  for (int64_t s = begin; s < end; ++s) out[s] = m[s] == neg_inf<acc_t>() ? acc_t(0) : ctc::exp_(v[s] - m[s]);
}

#ifdef VISIONOPS_CTC_AVX2
// VISIONOPS_CPU_ISA=generic forces the scalar path (cpu_isa.h)
bool have_avx2() { return cpu_has_avx2(); }

// log(exp(a) + exp(b) + exp(c)) + e per lane; -inf where a, b, c are all -inf
__attribute__((target("avx2,fma"))) inline __m256 lse3_plus(__m256 a, __m256 b, __m256 c, __m256 e) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256 m = _mm256_max_ps(a, _mm256_max_ps(b, c));
  const __m256 dead = _mm256_cmp_ps(m, ninf, _CMP_EQ_OQ);
  const __m256 shift = _mm256_blendv_ps(m, _mm256_setzero_ps(), dead);  // no -inf - -inf
  const __m256 sum = _mm256_add_ps(
      _mm256_add_ps(Sleef_expf8_u10(_mm256_sub_ps(a, shift)), Sleef_expf8_u10(_mm256_sub_ps(b, shift))),
      Sleef_expf8_u10(_mm256_sub_ps(c, shift)));
  const __m256 r = _mm256_add_ps(_mm256_add_ps(shift, Sleef_logf8_u10(sum)), e);
  return _mm256_blendv_ps(r, ninf, dead);
}

// the vector part of a row: positions [begin, begin + 8k); returns the first left over
__attribute__((target("avx2,fma"))) int64_t alpha_row_avx2(const float* prev, const float* skip, const float* emit,
                                                          float* cur, int64_t begin, int64_t end) {
  int64_t s = begin;
  for (; s + 8 <= end; s += 8) {
    const __m256 c = _mm256_add_ps(_mm256_loadu_ps(prev + s - 2), _mm256_loadu_ps(skip + s));
    _mm256_storeu_ps(cur + s, lse3_plus(_mm256_loadu_ps(prev + s), _mm256_loadu_ps(prev + s - 1), c,
                                        _mm256_loadu_ps(emit + s)));
  }
  return s;
}

__attribute__((target("avx2,fma"))) int64_t beta_row_avx2(const float* next, const float* skip, const float* emit,
                                                         float* cur, int64_t begin, int64_t end) {
  int64_t s = begin;
  for (; s + 8 <= end; s += 8) {
    const __m256 c = _mm256_add_ps(_mm256_loadu_ps(next + s + 2), _mm256_loadu_ps(skip + s + 2));
    _mm256_storeu_ps(cur + s, lse3_plus(_mm256_loadu_ps(next + s), _mm256_loadu_ps(next + s + 1), c,
                                        _mm256_loadu_ps(emit + s)));
  }
  return s;
}

__attribute__((target("avx2,fma"))) int64_t exp_diff_row_avx2(const float* v, const float* m, float* out,
                                                             int64_t begin, int64_t end) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t s = begin;
  for (; s + 8 <= end; s += 8) {
    const __m256 mv = _mm256_loadu_ps(m + s);
    const __m256 dead = _mm256_cmp_ps(mv, ninf, _CMP_EQ_OQ);
    const __m256 d = _mm256_blendv_ps(_mm256_sub_ps(_mm256_loadu_ps(v + s), mv), ninf, dead);
    _mm256_storeu_ps(out + s, Sleef_expf8_u10(d));
  }
  return s;
}

void alpha_row(const float* prev, const int64_t* target, const float* skip, const float* emit, float* cur,
               int64_t begin, int64_t end) {
  if (!have_avx2()) return alpha_row<float>(prev, target, skip, emit, cur, begin, end);
  const int64_t head = std::min<int64_t>(std::max<int64_t>(begin, 2), end);  // s - 2 must exist
  alpha_row<float>(prev, target, skip, emit, cur, begin, head);
  const int64_t rest = alpha_row_avx2(prev, skip, emit, cur, head, end);
  alpha_row<float>(prev, target, skip, emit, cur, rest, end);
}

void beta_row(const float* next, const int64_t* target, const float* skip, const float* emit, float* cur,
              int64_t s_len, int64_t begin, int64_t end) {
  if (!have_avx2()) return beta_row<float>(next, target, skip, emit, cur, s_len, begin, end);
  const int64_t rest = beta_row_avx2(next, skip, emit, cur, begin, end);
  beta_row<float>(next, target, skip, emit, cur, s_len, rest, end);
}

void exp_diff_row(const float* v, const float* m, float* out, int64_t begin, int64_t end) {
  if (!have_avx2()) return exp_diff_row<float>(v, m, out, begin, end);
  const int64_t rest = exp_diff_row_avx2(v, m, out, begin, end);
  exp_diff_row<float>(v, m, out, rest, end);
}
#endif

// Work below which a loop runs on one thread: a parallel region costs ~10 us,
// more on a loaded machine. A recursion cell is a log-sum-exp (~10 ns), so
// 4096 cells are ~40 us; a dense element is an exp or a multiply (~1 ns).
// (One limit of 2^17 for both kept the CRNN-sized batch, 32 x 64 x 13 cells,
// on one thread: 0.70x torch's 2-thread time.)
constexpr int64_t kSerialCells = 1 << 12;
constexpr int64_t kSerialElements = 1 << 15;

// samples per task for per-sample loops of `cells_per_sample` cells each
int64_t grain_for(int64_t cells_per_sample) {
  return std::max<int64_t>(1, kSerialCells / std::max<int64_t>(cells_per_sample, 1));
}

// out[c] = exp(lp[c]) * g
template <typename scalar_t, typename acc_t>
void exp_scale_row(const scalar_t* lp, scalar_t* out, int64_t C, acc_t g) {
  for (int64_t c = 0; c < C; ++c) out[c] = static_cast<scalar_t>(ctc::exp_(acc_t(lp[c])) * g);
}

#ifdef VISIONOPS_CTC_AVX2
__attribute__((target("avx2,fma"))) int64_t exp_scale_row_avx2(const float* lp, float* out, int64_t C, float g) {
  const __m256 gv = _mm256_set1_ps(g);
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) _mm256_storeu_ps(out + c, _mm256_mul_ps(Sleef_expf8_u10(_mm256_loadu_ps(lp + c)), gv));
  return c;
}

__attribute__((target("avx512f"))) int64_t exp_scale_row_avx512(const float* lp, float* out, int64_t C, float g) {
  const __m512 gv = _mm512_set1_ps(g);
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) _mm512_storeu_ps(out + c, _mm512_mul_ps(Sleef_expf16_u10(_mm512_loadu_ps(lp + c)), gv));
  return c;
}

bool have_avx512_exp() { return cpu_has_avx512() && Sleef_expf16_u10 != nullptr; }

void exp_scale_row(const float* lp, float* out, int64_t C, float g) {
  int64_t rest = have_avx512_exp() ? exp_scale_row_avx512(lp, out, C, g) : 0;
  if (have_avx2()) rest += exp_scale_row_avx2(lp + rest, out + rest, C - rest, g);
  exp_scale_row<float, float>(lp + rest, out + rest, C - rest, g);
}
#endif

template <typename acc_t>
void fill_skip(const int64_t* target, int64_t s_len, std::vector<acc_t>& skip) {
  skip.assign(s_len + 2, neg_inf<acc_t>());
  for (int64_t s = 0; s < s_len; ++s) skip[s] = ctc::can_skip_to(target, s) ? acc_t(0) : neg_inf<acc_t>();
}

// ---------------------------------------------------------------- loss forward

std::tuple<at::Tensor, at::Tensor> ctc_loss_forward_cpu(const at::Tensor& log_probs_, const at::Tensor& targets_,
                                                        const at::Tensor& input_lengths_,
                                                        const at::Tensor& target_lengths_, int64_t max_target_length,
                                                        int64_t blank, bool zero_infinity) {
  check_ctc_args("ctc_loss", log_probs_, targets_, input_lengths_, target_lengths_, max_target_length, blank);
  const auto log_probs = log_probs_.contiguous();
  const int64_t T = log_probs.size(0), N = log_probs.size(1), C = log_probs.size(2);
  check_ctc_values("ctc_loss", targets_, input_lengths_, target_lengths_, T, max_target_length, C, blank);
  const auto targets = targets_.to(at::kLong).contiguous();
  const auto il = input_lengths_.to(at::kLong).contiguous();
  const auto tl = target_lengths_.to(at::kLong).contiguous();
  const auto offsets = ctc_target_offsets(targets, tl);
  const int64_t Sp = 2 * max_target_length + 1;

  auto log_alpha = at::empty({N, T, Sp}, log_probs.options().dtype(acc_type_of(log_probs.scalar_type())));
  auto nll = at::empty({N}, log_probs.options());
  if (N == 0) return {nll, log_alpha};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, log_probs.scalar_type(), "ctc_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lp = log_probs.const_data_ptr<scalar_t>();
    const int64_t* tg = targets.const_data_ptr<int64_t>();
    const int64_t* ilp = il.const_data_ptr<int64_t>();
    const int64_t* tlp = tl.const_data_ptr<int64_t>();
    const int64_t* off = offsets.const_data_ptr<int64_t>();
    acc_t* la_all = log_alpha.data_ptr<acc_t>();
    scalar_t* out = nll.data_ptr<scalar_t>();
    at::parallel_for(0, N, grain_for(T * Sp), [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> z(Sp);
      std::vector<acc_t> emit(Sp), skip;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t Tb = ilp[b], L = tlp[b], s_len = 2 * L + 1;
        const int64_t* target = tg + off[b];
        acc_t* la = la_all + b * T * Sp;
        std::fill(la, la + T * Sp, neg_inf<acc_t>());
        acc_t result;
        if (Tb == 0) {
          result = L == 0 ? acc_t(0) : std::numeric_limits<acc_t>::infinity();
        } else {
          const scalar_t* row0 = lp + b * C;
          la[0] = acc_t(row0[blank]);
          if (L > 0) la[1] = acc_t(row0[target[0]]);
          for (int64_t s = 0; s < s_len; ++s) z[s] = ctc::extended_label(target, s, blank);
          fill_skip(target, s_len, skip);
          for (int64_t t = 1; t < Tb; ++t) {
            const scalar_t* lpt = lp + (t * N + b) * C;
            acc_t* cur = la + t * Sp;
            const acc_t* prev = cur - Sp;
            // positions outside the window are on no complete path and stay -inf
            const int64_t s_begin = ctc::window_begin(s_len, Tb, t), s_end = ctc::window_end(s_len, t);
            // the emissions are scattered over a row of C classes: load them in
            // one tight loop (independent cache misses overlap) and prefetch the
            // next step's, then run the recursion on the gathered values
            gather_emissions(lpt, t + 1 < Tb ? lpt + N * C : nullptr, z.data(), s_begin, s_end, emit.data());
            alpha_row(prev, target, skip.data(), emit.data(), cur, s_begin, s_end);
          }
          result = ctc::nll_from_last_row(la + (Tb - 1) * Sp, L);
        }
        if (zero_infinity && result == std::numeric_limits<acc_t>::infinity()) result = acc_t(0);
        out[b] = static_cast<scalar_t>(result);
      }
    });
  });
  return {nll, log_alpha};
}

// ---------------------------------------------------------------- loss backward

void check_backward_args(const at::Tensor& grad, const at::Tensor& log_probs, const at::Tensor& log_alpha) {
  const char* op = "_ctc_loss_backward";
  VISIONOPS_CHECK(log_probs.dim() == 3, op, ": log_probs must be [T, N, C]");
  const int64_t T = log_probs.size(0), N = log_probs.size(1);
  VISIONOPS_CHECK(grad.dim() == 1 && grad.size(0) == N, op, ": grad must have shape [", N, "], got ", grad.sizes());
  VISIONOPS_CHECK(log_alpha.dim() == 3 && log_alpha.size(0) == N && log_alpha.size(1) == T && log_alpha.size(2) % 2 == 1,
              op, ": log_alpha must have shape [N, T, 2S + 1] = [", N, ", ", T, ", odd], got ", log_alpha.sizes());
  VISIONOPS_CHECK(log_alpha.scalar_type() == acc_type_of(log_probs.scalar_type()), op, ": log_alpha must be ",
              acc_type_of(log_probs.scalar_type()), " for ", log_probs.scalar_type(), " log_probs");
  VISIONOPS_CHECK(grad.device() == log_probs.device() && log_alpha.device() == log_probs.device(), op,
              ": grad, log_probs and log_alpha must be on one device");
}

at::Tensor ctc_loss_backward_cpu(const at::Tensor& grad_, const at::Tensor& log_probs_, const at::Tensor& targets_,
                                 const at::Tensor& input_lengths_, const at::Tensor& target_lengths_,
                                 const at::Tensor& log_alpha_, int64_t blank, bool zero_infinity) {
  check_backward_args(grad_, log_probs_, log_alpha_);
  const int64_t max_target_length = (log_alpha_.size(2) - 1) / 2;
  check_ctc_args("_ctc_loss_backward", log_probs_, targets_, input_lengths_, target_lengths_, max_target_length,
                 blank);
  const auto log_probs = log_probs_.contiguous();
  const int64_t T = log_probs.size(0), N = log_probs.size(1), C = log_probs.size(2);
  check_ctc_values("_ctc_loss_backward", targets_, input_lengths_, target_lengths_, T, max_target_length, C, blank);
  const auto targets = targets_.to(at::kLong).contiguous();
  const auto il = input_lengths_.to(at::kLong).contiguous();
  const auto tl = target_lengths_.to(at::kLong).contiguous();
  const auto offsets = ctc_target_offsets(targets, tl);
  const auto log_alpha = log_alpha_.contiguous();
  const auto grad = grad_.to(log_probs.scalar_type()).contiguous();
  const int64_t Sp = log_alpha.size(2);

  // exp(log_probs) is the dense part of every row. float: one fused pass of
  // SLEEF's exp and the scaling (AVX-512 or AVX2; 2026-11-27, AMD EPYC with
  // AVX-512, T=500 N=16 C=6000: 70 ms against 81 ms for ATen's exp then a
  // scaling pass, of which ~47 ms are the first-touch page faults of the fresh
  // 192 MB gradient, which torch pays too). double: ATen's vectorised exp, then
  // the per-row loop below scales it in place.
  const bool aten_exp = log_probs.scalar_type() == at::kDouble && log_probs.numel() >= kSerialElements;
  auto grad_lp = aten_exp ? at::exp(log_probs) : at::empty_like(log_probs, at::MemoryFormat::Contiguous);
  if (grad_lp.numel() == 0) return grad_lp;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, log_probs.scalar_type(), "ctc_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lp = log_probs.const_data_ptr<scalar_t>();
    const int64_t* tg = targets.const_data_ptr<int64_t>();
    const int64_t* ilp = il.const_data_ptr<int64_t>();
    const int64_t* tlp = tl.const_data_ptr<int64_t>();
    const int64_t* off = offsets.const_data_ptr<int64_t>();
    const acc_t* la_all = log_alpha.const_data_ptr<acc_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* out = grad_lp.data_ptr<scalar_t>();
    constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
    std::vector<acc_t> nll_of(N);
    for (int64_t b = 0; b < N; ++b) {
      const int64_t Tb = ilp[b], L = tlp[b];
      nll_of[b] = Tb == 0 ? (L == 0 ? acc_t(0) : inf) : ctc::nll_from_last_row(la_all + (b * T + Tb - 1) * Sp, L);
    }
    // dense part, parallel over rows: g * exp(lp) for t < Tb; 0 past the input
    // and for zeroed infinities; NaN for an infinite loss (torch: -inf + inf)
    at::parallel_for(0, T * N, std::max<int64_t>(1, kSerialElements / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t t = r / N, b = r % N;
        scalar_t* row = out + r * C;
        const bool infeasible = nll_of[b] == inf;
        if (t >= ilp[b] || (infeasible && zero_infinity)) {
          std::fill(row, row + C, scalar_t(0));
        } else if (infeasible) {
          std::fill(row, row + C, scalar_t(std::numeric_limits<acc_t>::quiet_NaN()));
        } else if (aten_exp) {
          const acc_t g = acc_t(gp[b]);
          for (int64_t c = 0; c < C; ++c) row[c] = static_cast<scalar_t>(acc_t(row[c]) * g);
        } else {
          exp_scale_row(lp + r * C, row, C, acc_t(gp[b]));
        }
      }
    });
    // sparse part, parallel over samples: the entries of the target's classes
    at::parallel_for(0, N, grain_for(T * Sp), [&](int64_t b0, int64_t b1) {
      std::vector<acc_t> beta, emit, skip, group_max, occ_max, occ_sum;
      std::vector<int64_t> z;
      std::vector<int64_t> first;  // first position s' <= s with z_s' == z_s
      std::unordered_map<int64_t, int64_t> seen;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t Tb = ilp[b], L = tlp[b], s_len = 2 * L + 1;
        const int64_t* target = tg + off[b];
        const acc_t* la = la_all + b * T * Sp;
        const acc_t g = acc_t(gp[b]);
        const acc_t nll = nll_of[b];
        const bool infeasible = nll == inf;
        if (infeasible || Tb == 0) continue;

        first.assign(s_len, 0);
        seen.clear();
        for (int64_t s = 1; s < s_len; s += 2) {
          first[s] = seen.try_emplace(target[s >> 1], s).first->second;
        }
        z.resize(s_len);
        for (int64_t s = 0; s < s_len; ++s) z[s] = ctc::extended_label(target, s, blank);
        const int64_t stride = s_len + 2;  // beta rows carry two -inf past the end
        beta.assign(2 * stride, neg_inf<acc_t>());
        emit.resize(s_len);
        group_max.resize(s_len);
        fill_skip(target, s_len, skip);
        occ_max.assign(s_len, neg_inf<acc_t>());
        occ_sum.assign(s_len, acc_t(0));
        for (int64_t t = Tb - 1; t >= 0; --t) {
          const scalar_t* lpt = lp + (t * N + b) * C;
          acc_t* cur = beta.data() + (t & 1) * stride;
          const acc_t* next = beta.data() + ((t + 1) & 1) * stride;
          const acc_t* alpha = la + t * Sp;
          // beta on the window only (see ctc.h); the row is reset first because
          // the next step reads one position past this step's window
          const int64_t s_begin = ctc::window_begin(s_len, Tb, t), s_end = ctc::window_end(s_len, t);
          std::fill(cur, cur + s_len, neg_inf<acc_t>());  // the two past the end stay -inf
          gather_emissions(lpt, t > 0 ? lpt - N * C : nullptr, z.data(), s_begin, s_end, emit.data());
          if (t == Tb - 1) {
            for (int64_t s = s_begin; s < s_end; ++s) cur[s] = emit[s];  // s_begin = s_len - 2 or 0
          } else {
            beta_row(next, target, skip.data(), emit.data(), cur, s_len, s_begin, s_end);
          }
          // the occupancy of each distinct label is a log-sum-exp of alpha + beta
          // over its positions: max first, then the sum of exps
          for (int64_t s = s_begin; s < s_end; ++s) {
            const acc_t v = alpha[s] + cur[s];
            emit[s] = v;  // reused as scratch
            acc_t& m = occ_max[first[s]];
            if (v > m) m = v;
          }
          for (int64_t s = s_begin; s < s_end; ++s) group_max[s] = occ_max[first[s]];
          exp_diff_row(emit.data(), group_max.data(), emit.data(), s_begin, s_end);
          for (int64_t s = s_begin; s < s_end; ++s) occ_sum[first[s]] += emit[s];
          scalar_t* row = out + (t * N + b) * C;
          for (int64_t s = 0; s < s_len; ++s) {
            if (first[s] != s) continue;
            if (occ_max[s] != neg_inf<acc_t>()) {
              const int64_t c = z[s];
              const acc_t occupancy = occ_max[s] + ctc::log_(occ_sum[s]);
              row[c] = static_cast<scalar_t>(ctc::grad_cell(acc_t(lpt[c]), occupancy, nll, g));
            }
            occ_max[s] = neg_inf<acc_t>();
            occ_sum[s] = acc_t(0);
          }
        }
      }
    });
  });
  return grad_lp;
}

// ---------------------------------------------------------------- prefix beam search

// CTC prefix beam search (Graves 2012, ch. 7; Hannun et al. 2014) over a trie of
// prefixes. Each prefix carries log P(prefix, path ends in blank) and
// log P(prefix, path ends in a label). Pruning to beam_width is exact with
// respect to the unpruned step: a prefix that is not in the current beam can
// only be reached from its parent, so per beam entry only the beam_width + 1
// most likely classes of step t, its own last label, and the beam entries that
// are its children can enter the next beam (the others are each outranked by at
// least beam_width of their siblings).
struct BeamEntry {
  int64_t node;
  double blank, label;  // log probabilities
  double total() const { return ctc::log_add_exp(blank, label); }
};

void beam_search_one(const double* lp, int64_t stride_t, int64_t Tb, int64_t C, int64_t blank, int64_t beam_width,
                     std::vector<int64_t>& sequence, double& score) {
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  std::vector<int64_t> parent{-1}, label{-1};
  std::unordered_map<int64_t, int64_t> children;  // parent * C + class -> node
  auto child = [&](int64_t node, int64_t c) {
    auto [it, fresh] = children.try_emplace(node * C + c, static_cast<int64_t>(parent.size()));
    if (fresh) {
      parent.push_back(node);
      label.push_back(c);
    }
    return it->second;
  };
  std::vector<BeamEntry> beam{{0, 0.0, ninf}};
  std::unordered_map<int64_t, BeamEntry> next;
  std::unordered_map<int64_t, int64_t> in_beam;  // node -> index in beam
  std::vector<int64_t> order(C);
  std::vector<char> top(C);
  for (int64_t t = 0; t < Tb; ++t) {
    const double* row = lp + t * stride_t;
    // the beam_width + 1 most likely non-blank classes of this step (one more
    // than the beam: extending an entry by its own last label scores only its
    // blank-ending part, so that child may not dominate the others)
    order.clear();
    for (int64_t c = 0; c < C; ++c) {
      if (c != blank) order.push_back(c);
    }
    const int64_t k = std::min<int64_t>(beam_width + 1, static_cast<int64_t>(order.size()));
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int64_t a, int64_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    std::fill(top.begin(), top.end(), 0);
    for (int64_t i = 0; i < k; ++i) top[order[i]] = 1;

    next.clear();
    in_beam.clear();
    for (size_t i = 0; i < beam.size(); ++i) in_beam[beam[i].node] = static_cast<int64_t>(i);
    auto add = [&](int64_t node, double blank_part, double label_part) {
      auto [it, fresh] = next.try_emplace(node, BeamEntry{node, ninf, ninf});
      it->second.blank = ctc::log_add_exp(it->second.blank, blank_part);
      it->second.label = ctc::log_add_exp(it->second.label, label_part);
    };
    auto extend = [&](const BeamEntry& e, int64_t c) {
      // a repeated label needs a blank in between to start a new symbol
      const double from = c == label[e.node] ? e.blank : e.total();
      add(child(e.node, c), ninf, from + row[c]);
    };
    for (const BeamEntry& e : beam) {
      add(e.node, e.total() + row[blank], ninf);
      const int64_t last = label[e.node];
      if (last >= 0) add(e.node, ninf, e.label + row[last]);  // the last label continues
      for (int64_t i = 0; i < k; ++i) extend(e, order[i]);
      if (last >= 0 && !top[last]) extend(e, last);
    }
    // beam entries whose parent is in the beam and whose label was not extended above
    for (const BeamEntry& e : beam) {
      if (e.node == 0) continue;
      const int64_t p = parent[e.node], c = label[e.node];
      auto it = in_beam.find(p);
      if (it == in_beam.end() || top[c] || c == label[p]) continue;
      extend(beam[it->second], c);
    }
    beam.clear();
    for (auto& [node, e] : next) beam.push_back(e);
    auto better = [](const BeamEntry& a, const BeamEntry& b) {
      const double ta = a.total(), tb = b.total();
      return ta > tb || (ta == tb && a.node < b.node);
    };
    const size_t keep = std::min<size_t>(beam.size(), static_cast<size_t>(beam_width));
    std::partial_sort(beam.begin(), beam.begin() + keep, beam.end(), better);
    beam.resize(keep);
  }
  const BeamEntry& best = beam.front();
  score = best.total();
  sequence.clear();
  for (int64_t node = best.node; node > 0; node = parent[node]) sequence.push_back(label[node]);
  std::reverse(sequence.begin(), sequence.end());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ctc_beam_search_cpu(const at::Tensor& log_probs_,
                                                                   const at::Tensor& input_lengths_,
                                                                   int64_t beam_width, int64_t blank) {
  const char* op = "ctc_beam_search_decode";
  VISIONOPS_CHECK(log_probs_.dim() == 3, op, ": log_probs must be a 3-D tensor [T, N, C], got a ", log_probs_.dim(),
              "-D tensor");
  VISIONOPS_CHECK(at::isFloatingType(log_probs_.scalar_type()), op, ": log_probs must be a floating-point tensor, got ",
              log_probs_.scalar_type());
  const int64_t T = log_probs_.size(0), N = log_probs_.size(1), C = log_probs_.size(2);
  VISIONOPS_CHECK(input_lengths_.dim() == 1 && input_lengths_.size(0) == N, op,
              ": input_lengths must be a 1-D tensor of N = ", N, " lengths, got shape ", input_lengths_.sizes());
  VISIONOPS_CHECK(at::isIntegralType(input_lengths_.scalar_type(), false), op,
              ": input_lengths must be an integer tensor, got ", input_lengths_.scalar_type());
  VISIONOPS_CHECK(input_lengths_.device() == log_probs_.device(), op, ": input_lengths must be on the device of log_probs");
  VISIONOPS_CHECK(blank >= 0 && blank < C, op, ": blank must lie in [0, C) = [0, ", C, "), got ", blank);
  VISIONOPS_CHECK(beam_width >= 1, op, ": beam_width must be >= 1, got ", beam_width);
  const auto il = input_lengths_.to(at::kLong).contiguous();
  const int64_t* ilp = il.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < N; ++b) {
    VISIONOPS_CHECK(ilp[b] >= 0 && ilp[b] <= T, op, ": input_lengths[", b, "] = ", ilp[b], " must lie in [0, T] = [0, ",
                T, "]");
  }
  // the search runs in float64 whatever the input dtype: scores of long
  // sequences are sums of hundreds of log-probabilities
  const auto lp = log_probs_.to(at::kDouble).contiguous();
  auto labels = at::full({N, T}, -1, il.options());
  auto lengths = at::zeros({N}, il.options());
  auto scores = at::empty({N}, lp.options());
  const double* lpp = lp.const_data_ptr<double>();
  int64_t* lab = labels.data_ptr<int64_t>();
  int64_t* len = lengths.data_ptr<int64_t>();
  double* sc = scores.data_ptr<double>();
  at::parallel_for(0, N, 1, [&](int64_t b0, int64_t b1) {
    std::vector<int64_t> sequence;
    for (int64_t b = b0; b < b1; ++b) {
      beam_search_one(lpp + b * C, N * C, ilp[b], C, blank, beam_width, sequence, sc[b]);
      len[b] = static_cast<int64_t>(sequence.size());
      std::copy(sequence.begin(), sequence.end(), lab + b * T);
    }
  });
  return {labels, lengths, scores.to(acc_type_of(log_probs_.scalar_type()))};
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, CPU, m) {
  m.impl("ctc_loss", &ctc_loss_forward_cpu);
  m.impl("_ctc_loss_backward", &ctc_loss_backward_cpu);
  m.impl("ctc_beam_search_decode", &ctc_beam_search_cpu);
}

}  // namespace visionops
