// CTC loss on CUDA, forward and backward; the recursions are those of
// ctc.h, shared with the CPU kernels.
//
// Forward: one block per sample; threads cover the extended-label positions
// and step through time together (one __syncthreads per step), writing
// log_alpha [N, T, 2S + 1] in place (the previous row is read back from it).
// Backward: (1) per-sample nll from the last alpha row, (2) an elementwise
// kernel writing the dense part g * exp(log_probs) of every gradient row,
// (3) one block per sample running the beta recursion with two rows of
// scratch, folding alpha_t + beta_t into the occupancy of each distinct label
// (blank by a block reduction, repeated labels along a precomputed chain) and
// overwriting those few entries of row t. No atomics: deterministic.
//
// Values cannot be checked without a host sync: a sample whose lengths or
// labels are out of range gets a NaN loss and NaN gradient rows.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "visionops/check.h"
#include "visionops/ctc.h"
#include "visionops/ctc_ops.h"

namespace visionops {
namespace {

// ---------------------------------------------------------------- ctc kernels
// (this section is also compiled for the CPU by tests/emulated_cuda/ctc.cpp)

using ctc::neg_inf;

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20); }

// The fast recursions keep one extended-label position per thread (up to 1024:
// targets of up to 511 labels) and their rows in shared memory.
constexpr int kMaxFastPositions = 1024;

#ifdef VISIONOPS_CUDA_EMULATION
unsigned char* dynamic_shared_memory();  // the emulator's
#else
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
  extern __shared__ __align__(16) unsigned char dynamic_shared[];
  return dynamic_shared;
}
#endif

// threads per sample block: a multiple of the warp size covering 2S + 1 positions
int threads_for_positions(int64_t positions) {
  const int64_t rounded = (positions + 31) / 32 * 32;
  return static_cast<int>(std::max<int64_t>(32, std::min<int64_t>(rounded, 512)));
}

struct TargetLayout {
  const int64_t* targets;
  const int64_t* offsets;
  const int64_t* input_lengths;
  const int64_t* target_lengths;
  int64_t numel;  // of targets
  int64_t max_time, max_target_length, num_classes, blank;
};

// Lengths in range, labels in [0, C) and != blank (the checks the CPU raises).
__device__ bool sample_valid(const TargetLayout& lay, int64_t b, int64_t& Tb, int64_t& L, const int64_t*& target) {
  Tb = lay.input_lengths[b];
  L = lay.target_lengths[b];
  const int64_t start = lay.offsets[b];
  if (Tb < 0 || Tb > lay.max_time || L < 0 || L > lay.max_target_length || start < 0 || start + L > lay.numel) {
    return false;
  }
  target = lay.targets + start;
  for (int64_t k = 0; k < L; ++k) {
    const int64_t label = target[k];
    if (label < 0 || label >= lay.num_classes || label == lay.blank) return false;
  }
  return true;
}

// The forward's start for sample b: false (after writing its loss) when there is
// nothing to run: an invalid sample (NaN) or no input steps (0, or +inf for a
// non-empty target unless zero_infinity). Every thread gets the same answer,
// so the kernels' early returns are uniform.
template <typename acc_t, typename scalar_t>
__device__ bool alpha_needed(const TargetLayout& lay, int64_t b, bool zero_infinity, int64_t& Tb, int64_t& L,
                             const int64_t*& target, scalar_t* nll) {
  if (!sample_valid(lay, b, Tb, L, target)) {
    if (threadIdx.x == 0) nll[b] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
    return false;
  }
  if (Tb == 0) {
    if (threadIdx.x == 0) {
      nll[b] = static_cast<scalar_t>(L == 0 || zero_infinity ? acc_t(0) : std::numeric_limits<acc_t>::infinity());
    }
    return false;
  }
  return true;
}

template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity) {
  __shared__ T partial[32];
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / 32) ? partial[lane] : identity;
    for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
    if (lane == 0) partial[0] = v;
  }
  __syncthreads();
  const T result = partial[0];
  __syncthreads();  // partial is reused by the next call
  return result;
}

// ---------------------------------------------------------------- forward

template <typename scalar_t, typename acc_t>
__global__ void ctc_alpha_kernel(const scalar_t* __restrict__ log_probs, TargetLayout lay, acc_t* log_alpha,
                                 scalar_t* nll, int64_t N, int64_t Sp, bool zero_infinity) {
  const int64_t b = blockIdx.x;
  const int64_t T = lay.max_time, C = lay.num_classes, blank = lay.blank;
  int64_t Tb, L;
  const int64_t* target = nullptr;
  if (!alpha_needed<acc_t>(lay, b, zero_infinity, Tb, L, target, nll)) return;
  constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
  const int64_t s_len = 2 * L + 1;
  acc_t* la = log_alpha + b * T * Sp;
  if (threadIdx.x == 0) {
    la[0] = acc_t(log_probs[b * C + blank]);
    if (L > 0) la[1] = acc_t(log_probs[b * C + target[0]]);
  }
  __syncthreads();
  for (int64_t t = 1; t < Tb; ++t) {
    const scalar_t* lpt = log_probs + (t * N + b) * C;
    acc_t* cur = la + t * Sp;
    const acc_t* prev = cur - Sp;
    // positions outside the window are on no complete path and stay -inf (ctc.h)
    const int64_t s_begin = ctc::window_begin(s_len, Tb, t), s_end = ctc::window_end(s_len, t);
    for (int64_t s = s_begin + threadIdx.x; s < s_end; s += blockDim.x) {
      cur[s] = ctc::alpha_cell(prev, target, s, acc_t(lpt[ctc::extended_label(target, s, blank)]));
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    acc_t result = ctc::nll_from_last_row(la + (Tb - 1) * Sp, L);
    if (zero_infinity && result == inf) result = acc_t(0);
    nll[b] = static_cast<scalar_t>(result);
  }
}

// The forward with one thread per position s (blockDim.x >= 2S + 1) and the two
// live rows of alpha in shared memory: a step reads its neighbours from shared
// memory instead of the global row written one step before, and the log-prob of
// the next step is loaded while this step computes, so that neither global
// latency sits on the chain of T dependent steps (the per-element kernel above
// ran at 0.50x of torch at T = 1000, N = 8 on an H100). The rows still go to
// log_alpha for the backward. Shared: 2 rows of blockDim.x acc_t, then the
// sample's labels (int64).
// (__launch_bounds__: at 1024 threads a block may use at most 64 registers per thread)
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxFastPositions)
    ctc_alpha_fast_kernel(const scalar_t* __restrict__ log_probs, TargetLayout lay, acc_t* log_alpha, scalar_t* nll,
                          int64_t N, int64_t Sp, bool zero_infinity) {
  const int64_t b = blockIdx.x;
  const int64_t T = lay.max_time, C = lay.num_classes, blank = lay.blank;
  int64_t Tb, L;
  const int64_t* target = nullptr;
  if (!alpha_needed<acc_t>(lay, b, zero_infinity, Tb, L, target, nll)) return;
  constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
  const int P = int(blockDim.x);
  acc_t* rows = reinterpret_cast<acc_t*>(dynamic_shared_memory());
  int64_t* labels = reinterpret_cast<int64_t*>(rows + 2 * P);
  for (int64_t k = threadIdx.x; k < L; k += P) labels[k] = target[k];
  __syncthreads();
  const int64_t s = threadIdx.x, s_len = 2 * L + 1;
  const bool on = s < s_len;
  const int64_t z = on ? ctc::extended_label(labels, s, blank) : blank;
  acc_t* la = log_alpha + b * T * Sp;
  acc_t a = neg_inf<acc_t>();
  if (s == 0) a = acc_t(log_probs[b * C + blank]);
  if (s == 1 && L > 0) a = acc_t(log_probs[b * C + z]);
  rows[s] = a;
  if (s <= 1 && on) la[s] = a;
  acc_t lp_next = on && Tb > 1 ? acc_t(log_probs[(N + b) * C + z]) : acc_t(0);
  __syncthreads();
  for (int64_t t = 1; t < Tb; ++t) {
    const acc_t lp = lp_next;
    if (on && t + 1 < Tb) lp_next = acc_t(log_probs[((t + 1) * N + b) * C + z]);
    const acc_t* prev = rows + ((t - 1) & 1) * P;
    acc_t v = neg_inf<acc_t>();  // outside the window: -inf (the row is reused two steps on)
    if (on && s >= ctc::window_begin(s_len, Tb, t) && s < ctc::window_end(s_len, t)) {
      v = ctc::alpha_cell(prev, labels, s, lp);
      la[t * Sp + s] = v;
    }
    rows[(t & 1) * P + s] = v;
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    acc_t result = ctc::nll_from_last_row(rows + ((Tb - 1) & 1) * P, L);
    if (zero_infinity && result == inf) result = acc_t(0);
    nll[b] = static_cast<scalar_t>(result);
  }
}

// ---------------------------------------------------------------- backward

// nll per sample from the last alpha row: NaN for an invalid sample, +inf for
// an impossible alignment (whatever zero_infinity: the gradient needs to know).
template <typename acc_t>
__global__ void ctc_nll_kernel(TargetLayout lay, const acc_t* log_alpha, acc_t* nll, int64_t N, int64_t Sp) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < N;
       b += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t Tb, L;
    const int64_t* target;
    if (!sample_valid(lay, b, Tb, L, target)) {
      nll[b] = std::numeric_limits<acc_t>::quiet_NaN();
    } else if (Tb == 0) {
      nll[b] = L == 0 ? acc_t(0) : std::numeric_limits<acc_t>::infinity();
    } else {
      nll[b] = ctc::nll_from_last_row(log_alpha + (b * lay.max_time + Tb - 1) * Sp, L);
    }
  }
}

// g * exp(lp) for t < Tb; 0 past the input and for zeroed infinities; NaN for an
// infinite loss (torch: -inf + inf) and for invalid samples.
template <typename scalar_t, typename acc_t>
__global__ void ctc_dense_grad_kernel(const scalar_t* __restrict__ log_probs, const scalar_t* __restrict__ grad,
                                      const acc_t* __restrict__ nll, const int64_t* __restrict__ input_lengths,
                                      scalar_t* out, int64_t total, int64_t N, int64_t C, bool zero_infinity) {
  constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t row = i / C;
    const int64_t t = row / N, b = row % N;
    const acc_t n = nll[b];
    acc_t v;
    if (n != n) {
      v = n;
    } else if (t >= input_lengths[b] || (n == inf && zero_infinity)) {
      v = acc_t(0);
    } else if (n == inf) {
      v = std::numeric_limits<acc_t>::quiet_NaN();
    } else {
      v = ctc::exp_(acc_t(log_probs[i])) * acc_t(grad[b]);
    }
    out[i] = static_cast<scalar_t>(v);
  }
}

struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

// Position s's link in the chain of its label's repeats: the next odd position
// with the same label (-1 at the end), and whether s is the label's first.
__device__ __forceinline__ void label_chain_link(const int64_t* labels, int64_t L, int64_t s, int& next,
                                                 int& first) {
  next = -1;
  first = 1;
  if (!(s & 1)) return;
  const int64_t k0 = s >> 1, label = labels[k0];
  for (int64_t k = k0 + 1; k < L; ++k) {
    if (labels[k] == label) {
      next = static_cast<int>(2 * k + 1);
      break;
    }
  }
  for (int64_t k = 0; k < k0 && first; ++k) first = labels[k] != label;
}

template <typename scalar_t, typename acc_t>
__global__ void ctc_occupancy_grad_kernel(const scalar_t* __restrict__ log_probs, const scalar_t* __restrict__ grad,
                                          TargetLayout lay, const acc_t* __restrict__ log_alpha,
                                          const acc_t* __restrict__ nll_all, acc_t* scratch, int* links,
                                          scalar_t* out, int64_t N, int64_t Sp) {
  const int64_t b = blockIdx.x;
  const acc_t nll = nll_all[b];
  // NaN and +inf rows were written in full by the dense kernel
  if (!(nll < std::numeric_limits<acc_t>::infinity())) return;
  int64_t Tb, L;
  const int64_t* target = nullptr;
  sample_valid(lay, b, Tb, L, target);  // true: nll is finite
  if (Tb == 0) return;
  const int64_t T = lay.max_time, C = lay.num_classes, blank = lay.blank;
  const int64_t s_len = 2 * L + 1;
  const acc_t g = acc_t(grad[b]);
  acc_t* beta = scratch + b * 3 * Sp;  // two rows of beta, one of alpha + beta
  acc_t* occ = beta + 2 * Sp;
  int* next_same = links + b * 2 * Sp;  // next odd position with the same label, -1 at the end
  int* is_first = next_same + Sp;       // 1 where no earlier position has the label
  for (int64_t s = threadIdx.x; s < s_len; s += blockDim.x) label_chain_link(target, L, s, next_same[s], is_first[s]);
  __syncthreads();
  for (int64_t t = Tb - 1; t >= 0; --t) {
    const scalar_t* lpt = log_probs + (t * N + b) * C;
    acc_t* cur = beta + (t & 1) * Sp;
    const acc_t* next = beta + ((t + 1) & 1) * Sp;
    const acc_t* alpha = log_alpha + (b * T + t) * Sp;
    acc_t blank_max = neg_inf<acc_t>();
    for (int64_t s = threadIdx.x; s < s_len; s += blockDim.x) {
      const acc_t lps = acc_t(lpt[ctc::extended_label(target, s, blank)]);
      const acc_t bt = t == Tb - 1 ? (s >= s_len - 2 ? lps : neg_inf<acc_t>())
                                   : ctc::beta_cell(next, target, s, s_len, lps);
      cur[s] = bt;
      occ[s] = alpha[s] + bt;
      if (!(s & 1) && occ[s] > blank_max) blank_max = occ[s];
    }
    // blank: log-sum-exp over the even positions
    blank_max = block_reduce(blank_max, MaxOp(), neg_inf<acc_t>());  // also publishes cur / occ
    if (blank_max != neg_inf<acc_t>()) {
      acc_t sum = 0;
      for (int64_t s = threadIdx.x; s < s_len; s += blockDim.x) {
        if (!(s & 1)) sum += ctc::exp_(occ[s] - blank_max);
      }
      sum = block_reduce(sum, SumOp(), acc_t(0));
      if (threadIdx.x == 0) {
        out[(t * N + b) * C + blank] = static_cast<scalar_t>(
            ctc::grad_cell(acc_t(lpt[blank]), blank_max + ctc::log_(sum), nll, g));
      }
    }
    // labels: the first position of each label walks the chain of its repeats
    for (int64_t s = threadIdx.x; s < s_len; s += blockDim.x) {
      if (!(s & 1) || !is_first[s]) continue;
      acc_t o = occ[s];
      for (int k = next_same[s]; k >= 0; k = next_same[k]) o = ctc::log_add_exp(o, occ[k]);
      if (o != neg_inf<acc_t>()) {
        const int64_t z = target[s >> 1];
        out[(t * N + b) * C + z] = static_cast<scalar_t>(ctc::grad_cell(acc_t(lpt[z]), o, nll, g));
      }
    }
    __syncthreads();  // before the next step overwrites occ and the other beta row
  }
}

// (m, e) of each lane -> over the warp, in lane 0: the largest m and the sum of
// e * exp(m_lane - m), i.e. a log-sum-exp as max + log(sum), in a fixed tree.
// Every lane of the warp must call it.
template <typename T>
__device__ __forceinline__ void warp_max_sum_exp(T& m, T& e) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const T m2 = __shfl_down_sync(0xffffffffu, m, offset), e2 = __shfl_down_sync(0xffffffffu, e, offset);
    const T top = m > m2 ? m : m2;
    if (top != neg_inf<T>()) e = e * ctc::exp_(m - top) + e2 * ctc::exp_(m2 - top);
    m = top;
  }
}

// The beta recursion and occupancy with one thread per position, as
// ctc_alpha_fast_kernel: beta's two live rows, two occupancy rows, per-warp
// partial sums, the label chains and the labels in shared memory, one barrier
// per step (the per-element kernel has seven); the log-prob and alpha of the
// next (earlier) step are loaded while this one computes. Shared: 4 rows of
// blockDim.x acc_t, 2 x 2 x 32 acc_t, 2 rows of int, then the labels (int64).
// (launch bounds (1024, 1): under (1024) ptxas squeezed float to 32 registers and spilled)
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxFastPositions, 1)
    ctc_occupancy_grad_fast_kernel(const scalar_t* __restrict__ log_probs, const scalar_t* __restrict__ grad,
                                   TargetLayout lay, const acc_t* __restrict__ log_alpha,
                                   const acc_t* __restrict__ nll_all, scalar_t* out, int64_t N, int64_t Sp) {
  const int64_t b = blockIdx.x;
  const acc_t nll = nll_all[b];
  if (!(nll < std::numeric_limits<acc_t>::infinity())) return;  // uniform: as ctc_occupancy_grad_kernel
  int64_t Tb, L;
  const int64_t* target = nullptr;
  sample_valid(lay, b, Tb, L, target);
  if (Tb == 0) return;
  const int64_t T = lay.max_time, C = lay.num_classes, blank = lay.blank;
  const int P = int(blockDim.x);
  acc_t* beta = reinterpret_cast<acc_t*>(dynamic_shared_memory());  // [2][P]
  acc_t* occ = beta + 2 * P;                                         // [2][P]
  acc_t* warp_max = occ + 2 * P;                                     // [2][32]
  acc_t* warp_sum = warp_max + 2 * 32;                               // [2][32]
  int* next_same = reinterpret_cast<int*>(warp_sum + 2 * 32);
  int* is_first = next_same + P;
  int64_t* labels = reinterpret_cast<int64_t*>(is_first + P + (P & 1));  // 8-byte aligned
  for (int64_t k = threadIdx.x; k < L; k += P) labels[k] = target[k];
  __syncthreads();
  const int64_t s = threadIdx.x, s_len = 2 * L + 1;
  const bool on = s < s_len;
  const int64_t z = on ? ctc::extended_label(labels, s, blank) : blank;
  if (on) {
    label_chain_link(labels, L, s, next_same[s], is_first[s]);
  } else {
    next_same[s] = -1;
    is_first[s] = 0;
  }
  const acc_t g = acc_t(grad[b]);
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
  const acc_t* alpha_b = log_alpha + b * T * Sp;
  acc_t lp_next = on ? acc_t(log_probs[((Tb - 1) * N + b) * C + z]) : acc_t(0);
  acc_t alpha_next = on ? alpha_b[(Tb - 1) * Sp + s] : neg_inf<acc_t>();
  __syncthreads();
  for (int64_t t = Tb - 1; t >= 0; --t) {
    const acc_t lps = lp_next, alpha = alpha_next;
    if (on && t > 0) {
      lp_next = acc_t(log_probs[((t - 1) * N + b) * C + z]);
      alpha_next = alpha_b[(t - 1) * Sp + s];
    }
    const acc_t* next = beta + ((t + 1) & 1) * P;
    acc_t bt = neg_inf<acc_t>();
    if (on) {
      bt = t == Tb - 1 ? (s >= s_len - 2 ? lps : neg_inf<acc_t>()) : ctc::beta_cell(next, labels, s, s_len, lps);
    }
    // Rows, occupancies and warp sums alternate between two buffers by the parity
    // of t, so one barrier per step suffices: what step t writes was last read
    // before the barrier of step t + 1.
    const int buf = int(t & 1);
    beta[buf * P + s] = bt;
    const acc_t o = on ? alpha + bt : neg_inf<acc_t>();
    occ[buf * P + s] = o;
    // blank: log-sum-exp over the even positions, as (max, sum of exp) per warp
    acc_t m = on && !(s & 1) ? o : neg_inf<acc_t>();
    acc_t e = m == neg_inf<acc_t>() ? acc_t(0) : acc_t(1);
    warp_max_sum_exp(m, e);
    if (lane == 0) {
      warp_max[buf * 32 + warp] = m;
      warp_sum[buf * 32 + warp] = e;
    }
    __syncthreads();  // the step's one barrier: publishes beta, occ and the warp sums
    if (warp == 0) {
      acc_t bm = lane < P / 32 ? warp_max[buf * 32 + lane] : neg_inf<acc_t>();
      acc_t be = lane < P / 32 ? warp_sum[buf * 32 + lane] : acc_t(0);
      warp_max_sum_exp(bm, be);
      // thread 0 is position 0, whose label is blank: lps is log_probs[t, b, blank]
      if (lane == 0 && bm != neg_inf<acc_t>()) {
        out[(t * N + b) * C + blank] = static_cast<scalar_t>(ctc::grad_cell(lps, bm + ctc::log_(be), nll, g));
      }
    }
    // labels: the first position of each label walks the chain of its repeats
    if (on && (s & 1) && is_first[s]) {
      acc_t total = o;
      for (int k = next_same[s]; k >= 0; k = next_same[k]) total = ctc::log_add_exp(total, occ[buf * P + k]);
      if (total != neg_inf<acc_t>()) {
        out[(t * N + b) * C + z] = static_cast<scalar_t>(ctc::grad_cell(lps, total, nll, g));
      }
    }
  }
}

// ---- host side, shared with the emulation: launch(kernel, grid, block, shared bytes, args...)

// threads of the fast kernels: every position of the longest target, in whole warps
int fast_threads(int64_t positions) { return static_cast<int>(std::max<int64_t>(32, (positions + 31) / 32 * 32)); }

template <typename acc_t>
size_t alpha_fast_shared_bytes(int threads, int64_t max_target_length) {
  return 2 * threads * sizeof(acc_t) + max_target_length * sizeof(int64_t);
}
template <typename acc_t>
size_t occupancy_fast_shared_bytes(int threads, int64_t max_target_length) {
  return (4 * threads + 4 * 32) * sizeof(acc_t) + (2 * threads + (threads & 1)) * sizeof(int) +
         max_target_length * sizeof(int64_t);
}

// log_alpha: [N, T, Sp], -inf where the kernels write nothing
template <typename scalar_t, typename acc_t, typename Launch>
void ctc_forward_launch(const scalar_t* log_probs, const TargetLayout& lay, acc_t* log_alpha, scalar_t* nll, int64_t N,
                        int64_t Sp, bool zero_infinity, Launch&& launch) {
  if (Sp <= kMaxFastPositions) {
    const int threads = fast_threads(Sp);
    launch(ctc_alpha_fast_kernel<scalar_t, acc_t>, dim3(unsigned(N)), dim3(threads),
           alpha_fast_shared_bytes<acc_t>(threads, lay.max_target_length), log_probs, lay, log_alpha, nll, N, Sp,
           zero_infinity);
  } else {
    launch(ctc_alpha_kernel<scalar_t, acc_t>, dim3(unsigned(N)), dim3(threads_for_positions(Sp)), size_t(0), log_probs,
           lay, log_alpha, nll, N, Sp, zero_infinity);
  }
}

// nll: N acc_t of scratch; scratch / links: [N, 3, Sp] acc_t and [N, 2, Sp] int,
// needed only when Sp > kMaxFastPositions (may be null otherwise)
template <typename scalar_t, typename acc_t, typename Launch>
void ctc_backward_launch(const scalar_t* log_probs, const scalar_t* grad, const TargetLayout& lay,
                         const acc_t* log_alpha, const int64_t* input_lengths, acc_t* nll, acc_t* scratch, int* links,
                         scalar_t* out, int64_t N, int64_t Sp, bool zero_infinity, Launch&& launch) {
  const acc_t* nll_read = nll;
  launch(ctc_nll_kernel<acc_t>, dim3(unsigned(blocks_for(N))), dim3(kThreads), size_t(0), lay, log_alpha, nll, N, Sp);
  const int64_t total = lay.max_time * N * lay.num_classes;
  launch(ctc_dense_grad_kernel<scalar_t, acc_t>, dim3(unsigned(blocks_for(total))), dim3(kThreads), size_t(0),
         log_probs, grad, nll_read, input_lengths, out, total, N, lay.num_classes, zero_infinity);
  if (Sp <= kMaxFastPositions) {
    const int threads = fast_threads(Sp);
    launch(ctc_occupancy_grad_fast_kernel<scalar_t, acc_t>, dim3(unsigned(N)), dim3(threads),
           occupancy_fast_shared_bytes<acc_t>(threads, lay.max_target_length), log_probs, grad, lay, log_alpha,
           nll_read, out, N, Sp);
  } else {
    launch(ctc_occupancy_grad_kernel<scalar_t, acc_t>, dim3(unsigned(N)), dim3(threads_for_positions(Sp)), size_t(0),
           log_probs, grad, lay, log_alpha, nll_read, scratch, links, out, N, Sp);
  }
}

// ---------------------------------------------------------------- end of ctc kernels

// the host side's `launch`: on `stream`, checked
auto launch_on(cudaStream_t stream) {
  return [stream](auto kernel, dim3 grid, dim3 block, size_t shared_bytes, auto... args) {
    kernel<<<grid, block, shared_bytes, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
}

std::tuple<at::Tensor, at::Tensor> ctc_loss_forward_cuda(const at::Tensor& log_probs_, const at::Tensor& targets_,
                                                         const at::Tensor& input_lengths_,
                                                         const at::Tensor& target_lengths_, int64_t max_target_length,
                                                         int64_t blank, bool zero_infinity) {
  check_ctc_args("ctc_loss", log_probs_, targets_, input_lengths_, target_lengths_, max_target_length, blank);
  c10::cuda::CUDAGuard guard(log_probs_.device());
  const auto log_probs = log_probs_.contiguous();
  const int64_t T = log_probs.size(0), N = log_probs.size(1), C = log_probs.size(2);
  const auto targets = targets_.to(at::kLong).contiguous();
  const auto il = input_lengths_.to(at::kLong).contiguous();
  const auto tl = target_lengths_.to(at::kLong).contiguous();
  const auto offsets = ctc_target_offsets(targets, tl).contiguous();
  const int64_t Sp = 2 * max_target_length + 1;
  const auto acc = log_probs.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto log_alpha = at::full({N, T, Sp}, -std::numeric_limits<double>::infinity(), log_probs.options().dtype(acc));
  auto nll = at::empty({N}, log_probs.options());
  if (N == 0) return {nll, log_alpha};
  TargetLayout lay{targets.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(), il.const_data_ptr<int64_t>(),
                   tl.const_data_ptr<int64_t>(), targets.numel(), T, max_target_length, C, blank};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, log_probs.scalar_type(), "ctc_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ctc_forward_launch<scalar_t, acc_t>(log_probs.const_data_ptr<scalar_t>(), lay, log_alpha.data_ptr<acc_t>(),
                                        nll.data_ptr<scalar_t>(), N, Sp, zero_infinity, launch_on(stream));
  });
  return {nll, log_alpha};
}

at::Tensor ctc_loss_backward_cuda(const at::Tensor& grad_, const at::Tensor& log_probs_, const at::Tensor& targets_,
                                  const at::Tensor& input_lengths_, const at::Tensor& target_lengths_,
                                  const at::Tensor& log_alpha_, int64_t blank, bool zero_infinity) {
  const char* op = "_ctc_loss_backward";
  VISIONOPS_CHECK(log_probs_.dim() == 3, op, ": log_probs must be [T, N, C]");
  VISIONOPS_CHECK(log_alpha_.dim() == 3 && log_alpha_.size(0) == log_probs_.size(1) &&
                  log_alpha_.size(1) == log_probs_.size(0) && log_alpha_.size(2) % 2 == 1,
              op, ": log_alpha must have shape [N, T, 2S + 1], got ", log_alpha_.sizes());
  VISIONOPS_CHECK(grad_.dim() == 1 && grad_.size(0) == log_probs_.size(1), op, ": grad must have shape [N]");
  const auto acc = log_probs_.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  VISIONOPS_CHECK(log_alpha_.scalar_type() == acc, op, ": log_alpha must be ", acc);
  VISIONOPS_CHECK(grad_.device() == log_probs_.device() && log_alpha_.device() == log_probs_.device(), op,
              ": grad, log_probs and log_alpha must be on one device");
  const int64_t max_target_length = (log_alpha_.size(2) - 1) / 2;
  check_ctc_args(op, log_probs_, targets_, input_lengths_, target_lengths_, max_target_length, blank);
  c10::cuda::CUDAGuard guard(log_probs_.device());
  const auto log_probs = log_probs_.contiguous();
  const int64_t T = log_probs.size(0), N = log_probs.size(1), C = log_probs.size(2);
  const auto targets = targets_.to(at::kLong).contiguous();
  const auto il = input_lengths_.to(at::kLong).contiguous();
  const auto tl = target_lengths_.to(at::kLong).contiguous();
  const auto offsets = ctc_target_offsets(targets, tl).contiguous();
  const auto log_alpha = log_alpha_.contiguous();
  const auto grad = grad_.to(log_probs.scalar_type()).contiguous();
  const int64_t Sp = log_alpha.size(2);
  auto out = at::empty_like(log_probs);
  if (out.numel() == 0) return out;
  TargetLayout lay{targets.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(), il.const_data_ptr<int64_t>(),
                   tl.const_data_ptr<int64_t>(), targets.numel(), T, max_target_length, C, blank};
  auto nll = at::empty({N}, log_probs.options().dtype(acc));
  // the per-element fallback's beta rows and label chains (the fast kernel keeps them in shared memory)
  const bool fast = Sp <= kMaxFastPositions;
  auto scratch = at::empty({fast ? 0 : N, 3, Sp}, log_probs.options().dtype(acc));
  auto links = at::empty({fast ? 0 : N, 2, Sp}, log_probs.options().dtype(at::kInt));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, log_probs.scalar_type(), "ctc_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ctc_backward_launch<scalar_t, acc_t>(log_probs.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(), lay,
                                         log_alpha.const_data_ptr<acc_t>(), il.const_data_ptr<int64_t>(),
                                         nll.data_ptr<acc_t>(), scratch.data_ptr<acc_t>(), links.data_ptr<int>(),
                                         out.data_ptr<scalar_t>(), N, Sp, zero_infinity, launch_on(stream));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, CUDA, m) {
  m.impl("ctc_loss", &ctc_loss_forward_cuda);
  m.impl("_ctc_loss_backward", &ctc_loss_backward_cuda);
}

}  // namespace visionops
