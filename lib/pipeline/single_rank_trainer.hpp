// Training on one rank: the whole model as one stage, m microbatches per step, gradient
// accumulation, the tied-embedding gradient sum, global-norm clipping with a non-finite check,
// and the optimizer. It is the semantic reference for every pipelined layout: flush and gpipe are
// plain minibatch training; 2bw applies W(t+1) = W(t) - lr·∇f(W(t-1)) with two weight buffers
// swapped by handle, after pipeline.sync_warmup_steps steps of flush semantics; with
// pipeline.weight_prediction the two buffers hold predicted compute versions beside a master of
// the true weights (pipeline/weight_versions.hpp).
#pragma once

#include <cstdint>
#include <memory>

#include "config/deck.hpp"
#include "data/loader.hpp"
#include "model/optimizer.hpp"
#include "model/stage_model.hpp"

namespace p2bw::pipeline {

struct StepResult {
  std::int64_t step = 0;  // 1-based number of the step just taken
  double loss = 0;        // mean over the step's microbatches of their mean losses
  double lr = 0;
  double grad_norm = 0;  // before clipping
  bool skipped = false;  // non-finite gradients: no update
  std::int64_t tokens = 0;
  bool stop = false;  // pipeline executor: some rank asked to stop (a signal) during the step
};

class SingleRankTrainer {
 public:
  // Microbatches per step are pipeline.microbatches · pipeline.width: a single-rank run sees the
  // same global batch as a run with w replicas (data::Loader::first_sample).
  SingleRankTrainer(const config::Deck& deck, std::shared_ptr<const data::Tokens> tokens);

  StepResult step();
  // The validation loss of the newest weights, as PipelineTrainer::evaluate() defines it.
  double evaluate();

  std::int64_t steps_done() const { return steps_done_; }
  model::StageModel& model() { return model_; }
  // The newest weights W(t) (what the next update starts from).
  model::FloatView weights() const { return master_.data() ? master_ : w_new_.as<float>(); }
  // The weights the next step's gradient is taken at (W(t-1) under 2bw, else W(t)), in the
  // storage type.
  StoreView gradient_weights() const { return w_old_; }
  model::FloatView gradients() const { return grads_; }

 private:
  bool delayed(std::int64_t step) const;  // does 0-based `step` use the 2bw rule?

  config::Deck deck_;
  data::DataSplits splits_;
  data::Loader loader_;
  model::StageModel model_;
  model::Optimizer optimizer_;
  model::Exec exec_;
  StoreView w_old_, w_new_, spare_;  // spare_ is the second buffer once 2bw starts (and for bf16)
  model::FloatView master_;  // the true W(t) under weight prediction and bf16 (keeps_master)
  model::FloatView grads_;
  model::Cache cache_;
  HostMirror<IntView> host_tokens_, host_targets_;  // (B, T) a microbatch from the loader
  // (parts + 1): the parts' gradient square sums and the sum of the microbatches' mean losses,
  // on the device during a step and copied to the host once at its end
  DoubleView totals_;
  HostMirror<DoubleView> host_totals_;
  std::int64_t steps_done_ = 0;
};

}  // namespace p2bw::pipeline
