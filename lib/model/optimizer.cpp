// Optimizer over flat buffers; see optimizer.hpp.
#include "model/optimizer.hpp"

#include <utility>

#include "kernels/adamw.hpp"
#include "kernels/sgd.hpp"

namespace p2bw::model {

namespace {

std::vector<std::pair<kernels::index_t, kernels::index_t>> decay_ranges(
    const std::vector<TensorInfo>& tensors) {
  std::vector<std::pair<kernels::index_t, kernels::index_t>> ranges;
  for (const TensorInfo& tensor : tensors) {
    if (!tensor.decay) continue;
    if (!ranges.empty() && ranges.back().second == tensor.offset)
      ranges.back().second += tensor.count;
    else
      ranges.emplace_back(tensor.offset, tensor.offset + tensor.count);
  }
  return ranges;
}

}  // namespace

Optimizer::Optimizer(const config::TrainConfig& train, const std::vector<TensorInfo>& tensors,
                     std::int64_t params)
    : config_(train.optimizer), decay_(Exec(), decay_ranges(tensors)) {
  const auto n = static_cast<size_t>(params);
  if (config_.kind == config::OptimizerKind::adamw) {
    first_ = FloatView("p2bw::adam_m", n);
    second_ = FloatView("p2bw::adam_v", n);
  } else if (config_.momentum > 0) {
    first_ = FloatView("p2bw::momentum", n);
  }
}

void Optimizer::step(const Exec& exec, FloatView w_out, ConstFloatView w_in, ConstFloatView grad,
                     double lr, double grad_scale, const StoreView& predicted, double gamma) {
  ++steps_;
  if (predicted.is_bf16())
    update<kernels::bf16>(exec, w_out, w_in, grad, lr, grad_scale,
                          {predicted.as<kernels::bf16>(), gamma});
  else
    update<float>(exec, w_out, w_in, grad, lr, grad_scale, {predicted.as<float>(), gamma});
}

template <class Store>
void Optimizer::update(const Exec& exec, FloatView w_out, ConstFloatView w_in, ConstFloatView grad,
                       double lr, double grad_scale,
                       const kernels::Prediction<float, Exec, Store>& prediction) {
  if (config_.kind == config::OptimizerKind::adamw)
    kernels::adamw_update<float, Store>(exec, w_out, w_in, grad, first_, second_, decay_, lr,
                                        config_.beta1, config_.beta2, config_.eps,
                                        config_.weight_decay, steps_, grad_scale, prediction);
  else
    kernels::sgd_update<float, Store>(exec, w_out, w_in, grad, first_, decay_, lr, config_.momentum,
                                      config_.weight_decay, grad_scale, prediction);
}

double clip_scale(double norm, double clip) {
  if (clip <= 0) return 1.0;
  const double factor = clip / (norm + 1e-6);
  return factor < 1.0 ? factor : 1.0;
}

}  // namespace p2bw::model
