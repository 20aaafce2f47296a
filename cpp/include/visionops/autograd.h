// Helpers for the C++ autograd kernels (cpp/<family>_autograd.cpp).
//
// Why C++ and not torch.library.register_autograd: the Python autograd layer
// costs 5 us per call even when nothing requires grad and ~18 us when
// something does (grid_sample on a 1x1x4x4 input: 7.4 / 20.9 us against
// 2.5 us for the kernel alone), which dominates small inputs and every CUDA
// launch. Through a torch::autograd::Function the same call takes 5.2 us with
// grad, and calls that record no graph skip it (3.0 us).
//
// Pattern of every differentiable op: the Autograd kernel runs a Function whose
// forward calls the op again below autograd (reaching the CPU/CUDA/fake
// kernel) and whose backward calls the op's `_<op>_backward` op. Backward ops
// get `no_double_backward`: a second derivative raises instead of torch's
// warn-and-return-zero fallback.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/FuncTorchTLS.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "visionops/check.h"

#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace visionops {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Typed handle of visionops::<name>, looked up once per call site.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow((std::string("visionops::") + name).c_str(), "").typed<Signature>();
}

// Calls the op's kernel for the tensors' device (or fake/meta), skipping autograd.
template <typename Signature, typename... Args>
decltype(auto) call_below_autograd(const c10::TypedOperatorHandle<Signature>& op, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(std::forward<Args>(args)...);
}

// Function<T>::apply, also inside torch.func transforms (grad, vjp, jacrev,
// vmap over grad). torch refuses C++ Functions there: Function::apply runs the
// forward with grad mode off, which hides it from an outer transform that
// differentiates it too. Our forwards only call the op below autograd, which
// reaches the outer transform's layer through the dispatcher like any built-in
// op, so inside a transform the same CppNode<T> is built here without turning
// grad mode off (as torch's generated autograd kernels do). Outside torch.func
// this is plain T::apply. The node's pointer type differs: std::shared_ptr up
// to torch 2.13, c10::intrusive_ptr since.
namespace detail {
using NodePtr = std::decay_t<decltype(std::declval<torch::autograd::Edge>().function)>;

template <typename T>
auto make_cpp_node() {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    // deleteNode (torch <= 2.13 only) found by argument-dependent lookup, so
    // that newer torch never looks for it
    return std::shared_ptr<torch::autograd::CppNode<T>>(new torch::autograd::CppNode<T>(),
                                                         [](torch::autograd::CppNode<T>* node) { deleteNode(node); });
  } else {
    return c10::make_intrusive<torch::autograd::CppNode<T>>();
  }
}

inline variable_list as_list(at::Tensor t) { return {std::move(t)}; }
inline variable_list as_list(variable_list v) { return v; }

template <typename T, typename... Args>
auto apply_inside_functorch(Args&&... args) {
  auto node = make_cpp_node<T>();
  variable_list inputs;
  torch::autograd::extract_vars(node->is_variable_input_, inputs, args...);
  node->set_ctx_grad_fn(node);
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  node->clear_input_metadata();
  for (const auto& input : inputs) node->input_info_.emplace_back(input);
  auto outputs = T::forward(&node->ctx_, std::forward<Args>(args)...);
  const auto& non_differentiable = node->ctx_.get_non_differentiable();
  for (const auto& output : as_list(outputs)) {
    if (output.defined() && !non_differentiable.count(output.unsafeGetTensorImpl())) {
      torch::autograd::set_history(output, node);
    } else {
      node->add_input_metadata(torch::autograd::Node::undefined_input());
    }
    node->output_info_.emplace_back(output);
  }
  node->save_variables_to_ctx();
  return outputs;
}

// Whether a torch.func transform is active, asked the way Function::apply asks
// (its check throws then; ATen/functorch/DynamicLayer.h, which says it
// directly, needs headers torch does not ship).
inline bool inside_functorch_transform() {
  const auto& tls = at::functorch::functorchTLSAccessor();
  if (!tls) return false;
  try {
    tls->checkSupportsCppAutogradFunction();
    return false;
  } catch (const c10::Error&) {
    return true;
  }
}
}  // namespace detail

template <typename T, typename... Args>
auto apply_function(Args&&... args) {
  if (!detail::inside_functorch_transform()) return T::apply(std::forward<Args>(args)...);
  return detail::apply_inside_functorch<T>(std::forward<Args>(args)...);
}

// A graph node that refuses to be differentiated: wraps `compute` (a call of a
// backward op) when a graph is recorded (create_graph=True), so that the
// gradient of its outputs raises `message` instead of being silently zero.
struct NoDerivative : torch::autograd::Function<NoDerivative> {
  static variable_list forward(AutogradContext* ctx, const std::string& message, at::TensorList inputs,
                               const std::function<variable_list()>& compute) {
    ctx->saved_data["message"] = message;
    return compute();  // runs with grad mode off (Function::apply)
  }
  static variable_list backward(AutogradContext* ctx, variable_list) {
    VISIONOPS_CHECK(false, ctx->saved_data["message"].toStringRef());
    return {};
  }
};

// Boxed Autograd kernel of every `_*_backward` op (register with
// `m.impl(name, no_double_backward("forward op names"))`).
struct NoDoubleBackward final : c10::OperatorKernel {
  explicit NoDoubleBackward(std::string forward_ops) : forward_ops_(std::move(forward_ops)) {}

  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
    const auto num_arguments = static_cast<std::ptrdiff_t>(op.schema().arguments().size());
    std::vector<at::Tensor> inputs;
    bool record = false;
    if (c10::GradMode::is_enabled()) {
      for (auto it = stack->end() - num_arguments; it != stack->end(); ++it) {
        if (!it->isTensor()) continue;
        inputs.push_back(it->toTensor());
        record = record || inputs.back().requires_grad();
      }
    }
    const auto run = [&] {
      at::AutoDispatchBelowADInplaceOrView guard;
      op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
    };
    if (!record) {
      run();
      return;
    }
    const auto num_returns = static_cast<std::ptrdiff_t>(op.schema().returns().size());
    const std::string message = "visionops: double backward (a gradient of the gradient) of " + forward_ops_ +
                                " is not supported: " + op.schema().name() + " has no derivative";
    const auto compute = std::function<variable_list()>([&] {
      run();
      variable_list results;
      for (auto it = stack->end() - num_returns; it != stack->end(); ++it) results.push_back(it->toTensor());
      torch::jit::drop(*stack, num_returns);
      return results;
    });
    variable_list outputs = apply_function<NoDerivative>(message, at::TensorList(inputs), compute);
    for (auto& output : outputs) stack->emplace_back(std::move(output));
  }

 private:
  std::string forward_ops_;
};

inline torch::CppFunction no_double_backward(std::string forward_ops) {
  return torch::CppFunction::makeFromBoxedFunctor(std::make_unique<NoDoubleBackward>(std::move(forward_ops)));
}

// Calls a backward op from a Function's backward: straight to its kernel, or
// through its NoDoubleBackward kernel when create_graph=True records a graph.
template <typename Signature, typename... Args>
decltype(auto) call_backward_op(const c10::TypedOperatorHandle<Signature>& op, Args&&... args) {
  if (c10::GradMode::is_enabled()) return op.call(std::forward<Args>(args)...);
  return call_below_autograd(op, std::forward<Args>(args)...);
}

// Whether a call has to record a graph node: grad mode on and some tensor
// argument requiring grad. The autograd kernels skip the Function otherwise:
// creating its node and context costs ~1.5 us per call.
inline bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool requires_grad(const std::optional<at::Tensor>& t) { return t.has_value() && requires_grad(*t); }
template <typename... Tensors>
bool records_graph(const Tensors&... tensors) {
  return c10::GradMode::is_enabled() && (requires_grad(tensors) || ...);
}

inline std::vector<int64_t> saved_ints(AutogradContext* ctx, const char* key) {
  return ctx->saved_data[key].toIntVector();
}

// One gradient slot per forward argument, all undefined (no gradient).
inline variable_list no_grads(size_t num_arguments) { return variable_list(num_arguments); }

}  // namespace visionops
