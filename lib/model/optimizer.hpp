// The optimizer over one flat parameter buffer: AdamW (fp32 moments, bias correction, decoupled
// weight decay on matrices only) or SGD with momentum. Its state exists once; it reads weights
// from one buffer and writes the result into another (2bw writes W_next into the retired
// version's buffer) or into the same one. Under model.precision: bf16 `predicted` is the bf16
// compute copy: the update rounds what it writes there to bf16.
#pragma once

#include <cstdint>
#include <vector>

#include "config/deck.hpp"
#include "kernels/decay_ranges.hpp"
#include "kernels/prediction.hpp"
#include "model/parameters.hpp"
#include "model/stage_model.hpp"

namespace p2bw::model {

class Optimizer {
 public:
  Optimizer(const config::TrainConfig& train, const std::vector<TensorInfo>& tensors,
            std::int64_t params);

  // w_out = update(w_in, grad_scale · grad) with learning rate lr; counts one step. With a
  // prediction (2bw's pipeline.weight_prediction), also predicted = w_out + gamma (w_out - w_in);
  // `predicted` may be `grad` itself. With a bf16 `predicted`, predicted = bf16(w_out + gamma
  // (w_out - w_in)): w_out is the fp32 master, `predicted` the compute copy (gamma = 0 without a
  // prediction).
  void step(const Exec& exec, FloatView w_out, ConstFloatView w_in, ConstFloatView grad, double lr,
            double grad_scale, const StoreView& predicted = StoreView(), double gamma = 0.0);

  std::int64_t steps_taken() const { return steps_; }
  void set_steps_taken(std::int64_t steps) { steps_ = steps; }  // when resuming
  // The state, for checkpoints: AdamW's m and v, or SGD's momentum in `first` (second empty).
  FloatView first() const { return first_; }
  FloatView second() const { return second_; }

 private:
  template <class Store>
  void update(const Exec& exec, FloatView w_out, ConstFloatView w_in, ConstFloatView grad,
              double lr, double grad_scale,
              const kernels::Prediction<float, Exec, Store>& prediction);

  config::OptimizerConfig config_;
  kernels::DecayRanges<Exec> decay_;
  FloatView first_, second_;
  std::int64_t steps_ = 0;
};

// Global gradient norm clipping factor as torch.nn.utils.clip_grad_norm_: min(1, clip / (norm +
// 1e-6)); 1 when clip is 0.
double clip_scale(double norm, double clip);

}  // namespace p2bw::model
