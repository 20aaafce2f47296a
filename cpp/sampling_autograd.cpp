// Autograd of the sampling ops. Each has its backward op: grid_sample's
// _grid_sample_backward takes the grid; the fused affine and TPS warps'
// _affine_grid_sample_backward / _tps_grid_sample_backward take the warp
// parameters (on the CPU they never materialise the grid; on CUDA they rebuild
// it and run grid_sample's kernels); tps_grid's gradient goes through
// _tps_grid_backward plus one GEMM for the affine part.
#include "visionops/autograd.h"
#include "visionops/sampling_ops.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

namespace visionops {
namespace {

using GridSampleSignature = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, bool);
using GridSampleBackwardSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, bool, std::array<bool, 2>);
using AffineSignature = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt, c10::SymInt, int64_t, int64_t,
                                   bool);
using AffineBackwardSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&, int64_t, int64_t, bool,
                                                                    std::array<bool, 2>);
using TpsGridSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::SymInt, c10::SymInt,
                                    bool);
using TpsGridBackwardSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                     const at::Tensor&, bool);
using TpsSampleBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
    bool, std::array<bool, 2>);
using TpsSampleSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      c10::SymInt, c10::SymInt, int64_t, int64_t, bool);

const c10::TypedOperatorHandle<GridSampleBackwardSignature>& grid_sample_backward_op() {
  static const auto op = find_op<GridSampleBackwardSignature>("_grid_sample_backward");
  return op;
}

void save_sampling_params(AutogradContext* ctx, int64_t interpolation_mode, int64_t padding_mode, bool align_corners) {
  ctx->saved_data["interpolation_mode"] = interpolation_mode;
  ctx->saved_data["padding_mode"] = padding_mode;
  ctx->saved_data["align_corners"] = align_corners;
}

std::tuple<at::Tensor, at::Tensor> sample_backward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& input,
                                                   const at::Tensor& grid, std::array<bool, 2> mask) {
  return call_backward_op(grid_sample_backward_op(), grad, input, grid, ctx->saved_data["interpolation_mode"].toInt(),
                          ctx->saved_data["padding_mode"].toInt(), ctx->saved_data["align_corners"].toBool(), mask);
}

struct GridSampleFunction : torch::autograd::Function<GridSampleFunction> {
  static const c10::TypedOperatorHandle<GridSampleSignature>& forward_op() {
    static const auto op = find_op<GridSampleSignature>("grid_sample");
    return op;
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& grid,
                            int64_t interpolation_mode, int64_t padding_mode, bool align_corners) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({input, grid});
    save_sampling_params(ctx, interpolation_mode, padding_mode, align_corners);
    return call_below_autograd(forward_op(), input, grid, interpolation_mode, padding_mode, align_corners);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto result = no_grads(5);
    if (!grads[0].defined()) return result;
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 2> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    auto [grad_input, grad_grid] = sample_backward(ctx, grads[0], saved[0], saved[1], mask);
    if (mask[0]) result[0] = grad_input;
    if (mask[1]) result[1] = grad_grid;
    return result;
  }
};

struct AffineGridSampleFunction : torch::autograd::Function<AffineGridSampleFunction> {
  static const c10::TypedOperatorHandle<AffineSignature>& forward_op() {
    static const auto op = find_op<AffineSignature>("affine_grid_sample");
    return op;
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& theta, c10::SymInt height,
                            c10::SymInt width, int64_t interpolation_mode, int64_t padding_mode, bool align_corners) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({input, theta});
    save_sampling_params(ctx, interpolation_mode, padding_mode, align_corners);
    return call_below_autograd(forward_op(), input, theta, std::move(height), std::move(width), interpolation_mode,
                               padding_mode, align_corners);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto result = no_grads(7);
    if (!grads[0].defined()) return result;
    static const auto op = find_op<AffineBackwardSignature>("_affine_grid_sample_backward");
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 2> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    auto [grad_input, grad_theta] =
        call_backward_op(op, grads[0], saved[0], saved[1], ctx->saved_data["interpolation_mode"].toInt(),
                         ctx->saved_data["padding_mode"].toInt(), ctx->saved_data["align_corners"].toBool(), mask);
    if (mask[0]) result[0] = grad_input;
    if (mask[1]) result[1] = grad_theta;
    return result;
  }
};

// Gradients of the TPS parameters (kernel weights, affine weights, control
// points) from the gradient of the TPS grid [B, H, W, 2].
std::tuple<at::Tensor, at::Tensor, at::Tensor> tps_params_grad(const at::Tensor& grad_grid,
                                                               const at::Tensor& kernel_weights,
                                                               const at::Tensor& affine_weights,
                                                               const at::Tensor& target_points, bool align_corners) {
  static const auto backward_op = find_op<TpsGridBackwardSignature>("_tps_grid_backward");
  auto [grad_kernel, grad_points] =
      call_backward_op(backward_op, grad_grid, kernel_weights, target_points, align_corners);
  auto grad_affine = sampling_tps_affine_grad(grad_grid, align_corners, affine_weights.scalar_type());
  return {grad_kernel, grad_affine, grad_points};
}

struct TpsGridFunction : torch::autograd::Function<TpsGridFunction> {
  static const c10::TypedOperatorHandle<TpsGridSignature>& forward_op() {
    static const auto op = find_op<TpsGridSignature>("tps_grid");
    return op;
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& kernel_weights, const at::Tensor& affine_weights,
                            const at::Tensor& target_points, c10::SymInt height, c10::SymInt width,
                            bool align_corners) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({kernel_weights, affine_weights, target_points});
    ctx->saved_data["align_corners"] = align_corners;
    return call_below_autograd(forward_op(), kernel_weights, affine_weights, target_points, std::move(height),
                               std::move(width), align_corners);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto result = no_grads(6);
    if (!grads[0].defined()) return result;
    const auto saved = ctx->get_saved_variables();
    auto [grad_kernel, grad_affine, grad_points] =
        tps_params_grad(grads[0].contiguous(), saved[0], saved[1], saved[2], ctx->saved_data["align_corners"].toBool());
    result[0] = grad_kernel;
    result[1] = grad_affine;
    result[2] = grad_points;
    return result;
  }
};

struct TpsGridSampleFunction : torch::autograd::Function<TpsGridSampleFunction> {
  static const c10::TypedOperatorHandle<TpsSampleSignature>& forward_op() {
    static const auto op = find_op<TpsSampleSignature>("tps_grid_sample");
    return op;
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& kernel_weights,
                            const at::Tensor& affine_weights, const at::Tensor& target_points, c10::SymInt height,
                            c10::SymInt width, int64_t interpolation_mode, int64_t padding_mode, bool align_corners) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({input, kernel_weights, affine_weights, target_points});
    save_sampling_params(ctx, interpolation_mode, padding_mode, align_corners);
    return call_below_autograd(forward_op(), input, kernel_weights, affine_weights, target_points, std::move(height),
                               std::move(width), interpolation_mode, padding_mode, align_corners);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto result = no_grads(9);
    if (!grads[0].defined()) return result;
    static const auto op = find_op<TpsSampleBackwardSignature>("_tps_grid_sample_backward");
    const auto saved = ctx->get_saved_variables();
    const bool need_params = ctx->needs_input_grad(1) || ctx->needs_input_grad(2) || ctx->needs_input_grad(3);
    const std::array<bool, 2> mask{ctx->needs_input_grad(0), need_params};
    auto [grad_input, grad_kernel, grad_affine, grad_points] = call_backward_op(
        op, grads[0], saved[0], saved[1], saved[2], saved[3], ctx->saved_data["interpolation_mode"].toInt(),
        ctx->saved_data["padding_mode"].toInt(), ctx->saved_data["align_corners"].toBool(), mask);
    if (mask[0]) result[0] = grad_input;
    if (need_params) {
      result[1] = grad_kernel;
      result[2] = grad_affine;
      result[3] = grad_points;
    }
    return result;
  }
};

at::Tensor grid_sample_autograd(const at::Tensor& input, const at::Tensor& grid, int64_t interpolation_mode,
                                int64_t padding_mode, bool align_corners) {
  if (!records_graph(input, grid)) {
    return call_below_autograd(GridSampleFunction::forward_op(), input, grid, interpolation_mode, padding_mode,
                               align_corners);
  }
  return apply_function<GridSampleFunction>(input, grid, interpolation_mode, padding_mode, align_corners);
}

at::Tensor affine_grid_sample_autograd(const at::Tensor& input, const at::Tensor& theta, c10::SymInt height,
                                       c10::SymInt width, int64_t interpolation_mode, int64_t padding_mode,
                                       bool align_corners) {
  if (!records_graph(input, theta)) {
    return call_below_autograd(AffineGridSampleFunction::forward_op(), input, theta, std::move(height), std::move(width),
                               interpolation_mode, padding_mode, align_corners);
  }
  return apply_function<AffineGridSampleFunction>(input, theta, std::move(height), std::move(width),
                                                  interpolation_mode, padding_mode, align_corners);
}

at::Tensor tps_grid_autograd(const at::Tensor& kernel_weights, const at::Tensor& affine_weights,
                             const at::Tensor& target_points, c10::SymInt height, c10::SymInt width,
                             bool align_corners) {
  if (!records_graph(kernel_weights, affine_weights, target_points)) {
    return call_below_autograd(TpsGridFunction::forward_op(), kernel_weights, affine_weights, target_points,
                               std::move(height), std::move(width), align_corners);
  }
  return apply_function<TpsGridFunction>(kernel_weights, affine_weights, target_points, std::move(height),
                                         std::move(width), align_corners);
}

at::Tensor tps_grid_sample_autograd(const at::Tensor& input, const at::Tensor& kernel_weights,
                                    const at::Tensor& affine_weights, const at::Tensor& target_points,
                                    c10::SymInt height, c10::SymInt width, int64_t interpolation_mode,
                                    int64_t padding_mode, bool align_corners) {
  if (!records_graph(input, kernel_weights, affine_weights, target_points)) {
    return call_below_autograd(TpsGridSampleFunction::forward_op(), input, kernel_weights, affine_weights,
                               target_points, std::move(height), std::move(width), interpolation_mode, padding_mode,
                               align_corners);
  }
  return apply_function<TpsGridSampleFunction>(input, kernel_weights, affine_weights, target_points,
                                               std::move(height), std::move(width), interpolation_mode, padding_mode,
                                               align_corners);
}

}  // namespace

TORCH_LIBRARY_IMPL(visionops, Autograd, m) {
  m.impl("grid_sample", TORCH_FN(grid_sample_autograd));
  m.impl("affine_grid_sample", TORCH_FN(affine_grid_sample_autograd));
  m.impl("tps_grid", TORCH_FN(tps_grid_autograd));
  m.impl("tps_grid_sample", TORCH_FN(tps_grid_sample_autograd));
  m.impl("_affine_grid_sample_backward", no_double_backward("affine_grid_sample"));
  m.impl("_grid_sample_backward", no_double_backward("grid_sample / affine_grid_sample / tps_grid_sample"));
  m.impl("_tps_grid_sample_backward", no_double_backward("tps_grid_sample"));
  m.impl("_tps_grid_backward", no_double_backward("tps_grid / tps_grid_sample"));
}

}  // namespace visionops
