// Autograd of box_iou: gradients to both box sets (nms and its variants return
// indices and are not differentiable).
#include "visionops/autograd.h"

namespace visionops {
namespace {

struct BoxIouFunction : torch::autograd::Function<BoxIouFunction> {
  static const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&)>& forward_op() {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("box_iou");
    return op;
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& boxes1, const at::Tensor& boxes2) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({boxes1, boxes2});
    return call_below_autograd(forward_op(), boxes1, boxes2);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op =
        find_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
            "_box_iou_backward");
    if (!grads[0].defined()) return no_grads(2);
    const auto saved = ctx->get_saved_variables();
    auto [grad_boxes1, grad_boxes2] = call_backward_op(backward_op, grads[0], saved[0], saved[1]);
    return {grad_boxes1, grad_boxes2};
  }
};

at::Tensor box_iou_autograd(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  if (!records_graph(boxes1, boxes2)) return call_below_autograd(BoxIouFunction::forward_op(), boxes1, boxes2);
  return apply_function<BoxIouFunction>(boxes1, boxes2);
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, Autograd, m) {
  m.impl("box_iou", TORCH_FN(box_iou_autograd));
  m.impl("_box_iou_backward", no_double_backward("box_iou"));
}

}  // namespace visionops
