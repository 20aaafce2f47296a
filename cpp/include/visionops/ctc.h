// CTC (Graves et al. 2006) pieces shared by the CPU (ctc_cpu.cpp) and CUDA
// (ctc_cuda.cu) kernels, so that both devices run the same arithmetic.
//
// Extended labels: z_s = blank for even s, targets[(s - 1) / 2] for odd s,
// s in [0, 2L + 1). Everything is in log space; alpha and beta follow
// SEED_NOTES "CTC", beta includes the emission at its own time step (as torch's
// kernels do), so alpha_t(s) + beta_t(s) counts log y_t(z_s) twice and the
// gradient subtracts it once.
#pragma once

#include <cstdint>
#include <limits>

#if !defined(__CUDACC__)
#include <cmath>
#endif

#include "visionops/common.h"

namespace visionops {
namespace ctc {

template <typename T>
VISIONOPS_HOST_DEVICE T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// float and double overloads: on the device ::expf / ::logf, never a silent
// promotion of float to double
VISIONOPS_HOST_DEVICE float exp_(float v) {
#if defined(__CUDA_ARCH__)
  return ::expf(v);
#else
  return std::exp(v);
#endif
}

VISIONOPS_HOST_DEVICE double exp_(double v) {
#if defined(__CUDA_ARCH__)
  return ::exp(v);
#else
  return std::exp(v);
#endif
}

VISIONOPS_HOST_DEVICE float log_(float v) {
#if defined(__CUDA_ARCH__)
  return ::logf(v);
#else
  return std::log(v);
#endif
}

VISIONOPS_HOST_DEVICE double log_(double v) {
#if defined(__CUDA_ARCH__)
  return ::log(v);
#else
  return std::log(v);
#endif
}

// log(exp(a) + exp(b)), exact for -inf operands
template <typename T>
VISIONOPS_HOST_DEVICE T log_add_exp(T a, T b) {
  const T m = a > b ? a : b;
  if (m == neg_inf<T>()) return m;
  return m + log_(exp_(a - m) + exp_(b - m));
}

// log(exp(a) + exp(b) + exp(c)) with the max shifted out (its own term is
// exactly 1: two exps and a log per cell); all -inf stays -inf, never NaN.
template <typename T>
VISIONOPS_HOST_DEVICE T log_sum_exp3(T a, T b, T c) {
  if (a < b) {
    const T tmp = a;
    a = b;
    b = tmp;
  }
  if (a < c) {
    const T tmp = a;
    a = c;
    c = tmp;
  }
  if (a == neg_inf<T>()) return a;
  return a + log_(T(1) + exp_(b - a) + exp_(c - a));
}

// Label z_s of the extended sequence; `target` points at this sample's labels.
VISIONOPS_HOST_DEVICE int64_t extended_label(const int64_t* target, int64_t s, int64_t blank) {
  return (s & 1) ? target[s >> 1] : blank;
}

// The alpha recursion may jump from s - 2 to s (skipping a blank) when z_s is a
// label different from z_{s-2}; the beta recursion uses the same rule read
// backwards (from s + 2 to s is allowed iff from s to s + 2 is).
VISIONOPS_HOST_DEVICE bool can_skip_to(const int64_t* target, int64_t s) {
  return (s & 1) && s >= 3 && target[s >> 1] != target[(s >> 1) - 1];
}

// Positions of step t (of Tb steps) that lie on some complete path: reachable
// from the start (s < 2(t + 1)) and still able to reach the end
// (s >= s_len - 2(Tb - t)). Outside, alpha or beta is -inf, so alpha + beta is
// too, and the recursions restricted to the window read only window cells of
// the neighbouring step (the bounds move by 2 per step).
VISIONOPS_HOST_DEVICE int64_t window_begin(int64_t s_len, int64_t Tb, int64_t t) {
  const int64_t v = s_len - 2 * (Tb - t);
  return v > 0 ? v : 0;
}

VISIONOPS_HOST_DEVICE int64_t window_end(int64_t s_len, int64_t t) {
  const int64_t v = 2 * (t + 1);
  return v < s_len ? v : s_len;
}

// alpha_t(s) from the row alpha_{t-1} (positions < s_len are valid).
template <typename T>
VISIONOPS_HOST_DEVICE T alpha_cell(const T* prev, const int64_t* target, int64_t s, T log_prob) {
  const T a = prev[s];
  const T b = s >= 1 ? prev[s - 1] : neg_inf<T>();
  const T c = can_skip_to(target, s) ? prev[s - 2] : neg_inf<T>();
  const T m = log_sum_exp3(a, b, c);
  return m == neg_inf<T>() ? m : m + log_prob;
}

// beta_t(s) from the row beta_{t+1}, for s < s_len = 2L + 1.
template <typename T>
VISIONOPS_HOST_DEVICE T beta_cell(const T* next, const int64_t* target, int64_t s, int64_t s_len, T log_prob) {
  const T a = next[s];
  const T b = s + 1 < s_len ? next[s + 1] : neg_inf<T>();
  const T c = s + 2 < s_len && can_skip_to(target, s + 2) ? next[s + 2] : neg_inf<T>();
  const T m = log_sum_exp3(a, b, c);
  return m == neg_inf<T>() ? m : m + log_prob;
}

// -log p(target | input) from the last alpha row (t = input_length - 1).
template <typename T>
VISIONOPS_HOST_DEVICE T nll_from_last_row(const T* last, int64_t target_length) {
  const int64_t s_len = 2 * target_length + 1;
  const T end = target_length > 0 ? log_add_exp(last[s_len - 1], last[s_len - 2]) : last[s_len - 1];
  return -end;
}

// d loss / d log_probs[t, c] in torch's form: exp(lp) - exp(log_occupancy + nll - lp),
// where log_occupancy = log sum over s with z_s = c of alpha_t(s) + beta_t(s).
template <typename T>
VISIONOPS_HOST_DEVICE T grad_cell(T log_prob, T log_occupancy, T nll, T grad_out) {
  return (exp_(log_prob) - exp_(log_occupancy + nll - log_prob)) * grad_out;
}

}  // namespace ctc
}  // namespace visionops
