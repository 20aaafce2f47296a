// The CUDA CTC kernels and their launch choices (the section of
// cuda/ctc_cuda.cu between "ctc kernels" and "end of ctc kernels") compiled for
// the CPU through emulation.h (tests/test_ctc_cuda_emulation.py splices the
// section in as ctc_section.inc).
#include "emulation.h"

#include "visionops/ctc.h"

namespace visionops {
namespace {
#include "ctc_section.inc"
unsigned char* dynamic_shared_memory() {
  return reinterpret_cast<unsigned char*>(emulation::dynamic_shared_buffer.data());
}
}  // namespace
}  // namespace visionops

namespace {

template <typename T>
void run(const T* log_probs, int64_t time, int64_t N, int64_t C, const int64_t* targets, int64_t targets_numel,
         const int64_t* offsets, const int64_t* input_lengths, const int64_t* target_lengths,
         int64_t max_target_length, int64_t blank, bool zero_infinity, T* log_alpha, T* nll, const T* grad, T* out) {
  using namespace visionops;
  const TargetLayout lay{targets, offsets, input_lengths, target_lengths, targets_numel,
                         time, max_target_length, C, blank};
  const int64_t Sp = 2 * max_target_length + 1;
  ctc_forward_launch<T, T>(log_probs, lay, log_alpha, nll, N, Sp, zero_infinity, emulation::LaunchShared{});
  std::vector<T> nll_scratch(N), scratch(N * 3 * Sp);
  std::vector<int> links(N * 2 * Sp);
  ctc_backward_launch<T, T>(log_probs, grad, lay, log_alpha, input_lengths, nll_scratch.data(), scratch.data(),
                            links.data(), out, N, Sp, zero_infinity, emulation::LaunchShared{});
}

}  // namespace

// log_alpha: [N, T, 2 * max_target_length + 1], filled with -inf by the caller;
// returns 1 if the fast (shared-memory) kernels ran, 0 for the per-element ones
extern "C" int ctc_emulated(int is_double, const void* log_probs, int64_t time, int64_t N, int64_t C,
                            const int64_t* targets, int64_t targets_numel, const int64_t* offsets,
                            const int64_t* input_lengths, const int64_t* target_lengths, int64_t max_target_length,
                            int64_t blank, int zero_infinity, void* log_alpha, void* nll, const void* grad,
                            void* grad_log_probs) {
  if (is_double) {
    run<double>(static_cast<const double*>(log_probs), time, N, C, targets, targets_numel, offsets, input_lengths,
                target_lengths, max_target_length, blank, zero_infinity != 0, static_cast<double*>(log_alpha),
                static_cast<double*>(nll), static_cast<const double*>(grad), static_cast<double*>(grad_log_probs));
  } else {
    run<float>(static_cast<const float*>(log_probs), time, N, C, targets, targets_numel, offsets, input_lengths,
               target_lengths, max_target_length, blank, zero_infinity != 0, static_cast<float*>(log_alpha),
               static_cast<float*>(nll), static_cast<const float*>(grad), static_cast<float*>(grad_log_probs));
  }
  return 2 * max_target_length + 1 <= visionops::kMaxFastPositions;
}
