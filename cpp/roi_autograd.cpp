// Autograd of the RoI pooling ops, axis-aligned (roi_align, roi_pool) and
// rotated (roi_align_rotated, roi_pool_rotated): both pairs have the same
// schemas apart from the width of a RoI row, so one template serves both (as
// python/visionops/ops/_pooling.py does for their fake kernels). Gradients flow
// to the feature map only, as in torchvision; the RoI coordinates get none.
#include "visionops/autograd.h"

namespace visionops {
namespace {

using AlignSignature = at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::SymInt, c10::SymInt, int64_t, bool);
using AlignBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::SymInt, c10::SymInt,
                                          c10::SymInt, c10::SymInt, c10::SymInt, c10::SymInt, int64_t, bool);
using PoolSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double, c10::SymInt,
                                                         c10::SymInt);
using PoolBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, c10::SymInt,
                                         c10::SymInt, c10::SymInt, c10::SymInt, c10::SymInt, c10::SymInt);

struct AxisAligned {
  static constexpr const char* align = "roi_align";
  static constexpr const char* align_backward = "_roi_align_backward";
  static constexpr const char* pool = "roi_pool";
  static constexpr const char* pool_backward = "_roi_pool_backward";
};
struct Rotated {
  static constexpr const char* align = "roi_align_rotated";
  static constexpr const char* align_backward = "_roi_align_rotated_backward";
  static constexpr const char* pool = "roi_pool_rotated";
  static constexpr const char* pool_backward = "_roi_pool_rotated_backward";
};

void save_input_shape(AutogradContext* ctx, const at::Tensor& input) {
  const auto sizes = input.sym_sizes();
  ctx->saved_data["batch_size"] = sizes[0];
  ctx->saved_data["channels"] = sizes[1];
  ctx->saved_data["height"] = sizes[2];
  ctx->saved_data["width"] = sizes[3];
}

template <typename Names>
struct AlignFunction : torch::autograd::Function<AlignFunction<Names>> {
  static const c10::TypedOperatorHandle<AlignSignature>& forward_op() {
    static const auto op = find_op<AlignSignature>(Names::align);
    return op;
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                            c10::SymInt pooled_height, c10::SymInt pooled_width, int64_t sampling_ratio, bool aligned) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({rois});
    save_input_shape(ctx, input);
    ctx->saved_data["spatial_scale"] = spatial_scale;
    ctx->saved_data["pooled_height"] = pooled_height;
    ctx->saved_data["pooled_width"] = pooled_width;
    ctx->saved_data["sampling_ratio"] = sampling_ratio;
    ctx->saved_data["aligned"] = aligned;
    return call_below_autograd(forward_op(), input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = find_op<AlignBackwardSignature>(Names::align_backward);
    if (!grads[0].defined()) return no_grads(7);
    auto grad_input = call_backward_op(
        backward_op, grads[0], ctx->get_saved_variables()[0], ctx->saved_data["spatial_scale"].toDouble(),
        ctx->saved_data["pooled_height"].toSymInt(), ctx->saved_data["pooled_width"].toSymInt(),
        ctx->saved_data["batch_size"].toSymInt(), ctx->saved_data["channels"].toSymInt(),
        ctx->saved_data["height"].toSymInt(), ctx->saved_data["width"].toSymInt(),
        ctx->saved_data["sampling_ratio"].toInt(), ctx->saved_data["aligned"].toBool());
    auto result = no_grads(7);
    result[0] = std::move(grad_input);
    return result;
  }
};

template <typename Names>
struct PoolFunction : torch::autograd::Function<PoolFunction<Names>> {
  static const c10::TypedOperatorHandle<PoolSignature>& forward_op() {
    static const auto op = find_op<PoolSignature>(Names::pool);
    return op;
  }

  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& rois,
                               double spatial_scale, c10::SymInt pooled_height, c10::SymInt pooled_width) {
    ctx->set_materialize_grads(false);
    auto [output, argmax] = call_below_autograd(forward_op(), input, rois, spatial_scale, pooled_height, pooled_width);
    ctx->mark_non_differentiable({argmax});
    ctx->save_for_backward({rois, argmax});
    save_input_shape(ctx, input);
    ctx->saved_data["spatial_scale"] = spatial_scale;
    ctx->saved_data["pooled_height"] = pooled_height;
    ctx->saved_data["pooled_width"] = pooled_width;
    return {output, argmax};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = find_op<PoolBackwardSignature>(Names::pool_backward);
    if (!grads[0].defined()) return no_grads(5);
    const auto saved = ctx->get_saved_variables();
    auto grad_input = call_backward_op(
        backward_op, grads[0], saved[0], saved[1], ctx->saved_data["spatial_scale"].toDouble(),
        ctx->saved_data["pooled_height"].toSymInt(), ctx->saved_data["pooled_width"].toSymInt(),
        ctx->saved_data["batch_size"].toSymInt(), ctx->saved_data["channels"].toSymInt(),
        ctx->saved_data["height"].toSymInt(), ctx->saved_data["width"].toSymInt());
    auto result = no_grads(5);
    result[0] = std::move(grad_input);
    return result;
  }
};

template <typename Names>
at::Tensor align_autograd(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                          c10::SymInt pooled_height, c10::SymInt pooled_width, int64_t sampling_ratio, bool aligned) {
  if (!records_graph(input, rois)) {
    return call_below_autograd(AlignFunction<Names>::forward_op(), input, rois, spatial_scale, std::move(pooled_height),
                               std::move(pooled_width), sampling_ratio, aligned);
  }
  return apply_function<AlignFunction<Names>>(input, rois, spatial_scale, std::move(pooled_height),
                                              std::move(pooled_width), sampling_ratio, aligned);
}

template <typename Names>
std::tuple<at::Tensor, at::Tensor> pool_autograd(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                                 c10::SymInt pooled_height, c10::SymInt pooled_width) {
  if (!records_graph(input, rois)) {
    return call_below_autograd(PoolFunction<Names>::forward_op(), input, rois, spatial_scale, std::move(pooled_height),
                               std::move(pooled_width));
  }
  auto outputs = apply_function<PoolFunction<Names>>(input, rois, spatial_scale, std::move(pooled_height),
                                                     std::move(pooled_width));
  return {std::move(outputs[0]), std::move(outputs[1])};
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, Autograd, m) {
  m.impl("roi_align", TORCH_FN(align_autograd<AxisAligned>));
  m.impl("roi_pool", TORCH_FN(pool_autograd<AxisAligned>));
  m.impl("roi_align_rotated", TORCH_FN(align_autograd<Rotated>));
  m.impl("roi_pool_rotated", TORCH_FN(pool_autograd<Rotated>));
  m.impl("_roi_align_backward", no_double_backward("roi_align"));
  m.impl("_roi_pool_backward", no_double_backward("roi_pool"));
  m.impl("_roi_align_rotated_backward", no_double_backward("roi_align_rotated"));
  m.impl("_roi_pool_rotated_backward", no_double_backward("roi_pool_rotated"));
}

}  // namespace visionops
