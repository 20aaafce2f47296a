// Autograd of ctc_loss: the gradient w.r.t. log_probs, in torch's form (see
// ctc.h), from the log_alpha the forward returns; log_alpha itself is not
// differentiable. The reductions are done in Python on the per-sample losses.
#include "visionops/autograd.h"

namespace visionops {
namespace {

using CtcSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, c10::SymInt, int64_t, bool);
using CtcBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, const at::Tensor&, int64_t, bool);

struct CtcLossFunction : torch::autograd::Function<CtcLossFunction> {
  static const c10::TypedOperatorHandle<CtcSignature>& forward_op() {
    static const auto op = find_op<CtcSignature>("ctc_loss");
    return op;
  }

  static variable_list forward(AutogradContext* ctx, const at::Tensor& log_probs, const at::Tensor& targets,
                               const at::Tensor& input_lengths, const at::Tensor& target_lengths,
                               c10::SymInt max_target_length, int64_t blank, bool zero_infinity) {
    ctx->set_materialize_grads(false);
    auto [nll, log_alpha] = call_below_autograd(forward_op(), log_probs, targets, input_lengths, target_lengths,
                                                std::move(max_target_length), blank, zero_infinity);
    ctx->mark_non_differentiable({log_alpha});
    ctx->save_for_backward({log_probs, targets, input_lengths, target_lengths, log_alpha});
    ctx->saved_data["blank"] = blank;
    ctx->saved_data["zero_infinity"] = zero_infinity;
    return {nll, log_alpha};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = find_op<CtcBackwardSignature>("_ctc_loss_backward");
    if (!grads[0].defined()) return no_grads(7);
    const auto saved = ctx->get_saved_variables();
    auto result = no_grads(7);
    result[0] = call_backward_op(backward_op, grads[0], saved[0], saved[1], saved[2], saved[3], saved[4],
                                 ctx->saved_data["blank"].toInt(), ctx->saved_data["zero_infinity"].toBool());
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> ctc_loss_autograd(const at::Tensor& log_probs, const at::Tensor& targets,
                                                     const at::Tensor& input_lengths, const at::Tensor& target_lengths,
                                                     c10::SymInt max_target_length, int64_t blank, bool zero_infinity) {
  if (!records_graph(log_probs)) {
    return call_below_autograd(CtcLossFunction::forward_op(), log_probs, targets, input_lengths, target_lengths,
                               std::move(max_target_length), blank, zero_infinity);
  }
  auto outputs = apply_function<CtcLossFunction>(log_probs, targets, input_lengths, target_lengths,
                                                 std::move(max_target_length), blank, zero_infinity);
  return {std::move(outputs[0]), std::move(outputs[1])};
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, Autograd, m) {
  m.impl("ctc_loss", TORCH_FN(ctc_loss_autograd));
  m.impl("_ctc_loss_backward", no_double_backward("ctc_loss"));
}

}  // namespace visionops
