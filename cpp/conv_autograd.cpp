// Autograd of conv2d and depthwise_conv2d: one backward op computes the
// gradients that are needed (output_mask) of input, weight and bias.
// depthwise_conv2d with a fused activation saves its output, from which the
// backward masks the gradient (relu: output > 0; relu6: 0 < output < 6).
#include "visionops/autograd.h"

namespace visionops {
namespace {

using Grads3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using DepthwiseSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                      at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t);
using DepthwiseBackwardSignature = Grads3(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
                                          at::IntArrayRef, int64_t, std::array<bool, 3>);
using ConvSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                 at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t);
using ConvBackwardSignature = Grads3(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                     at::IntArrayRef, at::IntArrayRef, int64_t, std::array<bool, 3>);

// Which of (input, weight, bias) need a gradient; bias is an autograd input only when given.
std::array<bool, 3> conv_output_mask(AutogradContext* ctx) {
  const bool has_bias = ctx->saved_data["has_bias"].toBool();
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1), has_bias && ctx->needs_input_grad(2)};
}

variable_list conv_grads(const Grads3& grads, const std::array<bool, 3>& mask) {
  auto result = no_grads(7);
  if (mask[0]) result[0] = std::get<0>(grads);
  if (mask[1]) result[1] = std::get<1>(grads);
  if (mask[2]) result[2] = std::get<2>(grads);
  return result;
}

void save_geometry(AutogradContext* ctx, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
  ctx->saved_data["stride"] = stride;
  ctx->saved_data["padding"] = padding;
  ctx->saved_data["dilation"] = dilation;
}

struct DepthwiseConv2dFunction : torch::autograd::Function<DepthwiseConv2dFunction> {
  static const c10::TypedOperatorHandle<DepthwiseSignature>& forward_op() {
    static const auto op = find_op<DepthwiseSignature>("depthwise_conv2d");
    return op;
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t activation) {
    ctx->set_materialize_grads(false);
    auto output = call_below_autograd(forward_op(), input, weight, bias, stride, padding, dilation, activation);
    ctx->save_for_backward({input, weight, activation != 0 ? output : at::Tensor()});
    save_geometry(ctx, bias, stride, padding, dilation);
    ctx->saved_data["activation"] = activation;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = find_op<DepthwiseBackwardSignature>("_depthwise_conv2d_backward");
    if (!grads[0].defined()) return no_grads(7);
    const auto saved = ctx->get_saved_variables();
    const auto mask = conv_output_mask(ctx);
    const std::optional<at::Tensor> output = saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    auto result = call_backward_op(backward_op, grads[0], saved[0], saved[1], output, saved_ints(ctx, "stride"),
                                   saved_ints(ctx, "padding"), saved_ints(ctx, "dilation"),
                                   ctx->saved_data["activation"].toInt(), mask);
    return conv_grads(result, mask);
  }
};

struct Conv2dFunction : torch::autograd::Function<Conv2dFunction> {
  static const c10::TypedOperatorHandle<ConvSignature>& forward_op() {
    static const auto op = find_op<ConvSignature>("conv2d");
    return op;
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({input, weight});
    save_geometry(ctx, bias, stride, padding, dilation);
    ctx->saved_data["groups"] = groups;
    return call_below_autograd(forward_op(), input, weight, bias, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = find_op<ConvBackwardSignature>("_conv2d_backward");
    if (!grads[0].defined()) return no_grads(7);
    const auto saved = ctx->get_saved_variables();
    const auto mask = conv_output_mask(ctx);
    auto result = call_backward_op(backward_op, grads[0], saved[0], saved[1], saved_ints(ctx, "stride"),
                                   saved_ints(ctx, "padding"), saved_ints(ctx, "dilation"),
                                   ctx->saved_data["groups"].toInt(), mask);
    return conv_grads(result, mask);
  }
};

at::Tensor depthwise_conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t activation) {
  if (!records_graph(input, weight, bias)) {
    return call_below_autograd(DepthwiseConv2dFunction::forward_op(), input, weight, bias, stride, padding, dilation,
                               activation);
  }
  return apply_function<DepthwiseConv2dFunction>(input, weight, bias, stride, padding, dilation, activation);
}

at::Tensor conv2d_autograd(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  if (!records_graph(input, weight, bias)) {
    return call_below_autograd(Conv2dFunction::forward_op(), input, weight, bias, stride, padding, dilation, groups);
  }
  return apply_function<Conv2dFunction>(input, weight, bias, stride, padding, dilation, groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, Autograd, m) {
  m.impl("depthwise_conv2d", TORCH_FN(depthwise_conv2d_autograd));
  m.impl("conv2d", TORCH_FN(conv2d_autograd));
  m.impl("_depthwise_conv2d_backward", no_double_backward("depthwise_conv2d"));
  m.impl("_conv2d_backward", no_double_backward("conv2d"));
}

}  // namespace visionops
