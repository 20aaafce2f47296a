// Host-side pieces shared by ctc_cpu.cpp and ctc_cuda.cu: argument checks (one
// set of messages for both devices) and the layout of the targets.
#pragma once

#include <ATen/ATen.h>

namespace visionops {

// Shapes, dtypes, devices and blank; values only where they are on the host.
void check_ctc_args(const char* op, const at::Tensor& log_probs, const at::Tensor& targets,
                    const at::Tensor& input_lengths, const at::Tensor& target_lengths, int64_t max_target_length,
                    int64_t blank);

// CPU only (CUDA would need a host sync; there an invalid sample gets a NaN
// loss and NaN gradients): lengths within [0, T] / [0, S], concatenated targets
// long enough, labels within the lengths in [0, C) and != blank.
void check_ctc_values(const char* op, const at::Tensor& targets, const at::Tensor& input_lengths,
                      const at::Tensor& target_lengths, int64_t max_time, int64_t max_target_length,
                      int64_t num_classes, int64_t blank);

// Offset of each sample's first label in the contiguous int64 `targets`:
// b * S for padded [N, S] targets, the exclusive cumsum of target_lengths for
// concatenated 1-D targets. Computed on the targets' device, without a sync.
at::Tensor ctc_target_offsets(const at::Tensor& targets, const at::Tensor& target_lengths);

}  // namespace visionops
