// Single-rank training step; see single_rank_trainer.hpp.
#include "pipeline/single_rank_trainer.hpp"

#include <cmath>
#include <cstdlib>

#include "core/error.hpp"
#include "model/lr_schedule.hpp"
#include "pipeline/test_hooks.hpp"
#include "pipeline/weight_versions.hpp"

namespace p2bw::pipeline {

SingleRankTrainer::SingleRankTrainer(const config::Deck& deck,
                                     std::shared_ptr<const data::Tokens> tokens)
    : deck_(deck),
      splits_(data::split_data(std::move(tokens), deck)),
      loader_(splits_.train, deck),
      model_(deck.model, deck.train.microbatch_size, 0, deck.model.layers + 2),
      optimizer_(deck.train, model_.tensors(), model_.num_params()) {
  const auto n = static_cast<size_t>(model_.num_params());
  w_new_ = model_.make_stored("p2bw::weights_a", model_.num_params());
  w_old_ = w_new_;  // one version until 2bw starts
  if (keeps_master(deck)) master_ = model::FloatView("p2bw::weights_master", n);
  model_.init_weights(exec_, w_new_, master_, deck.train.seed);  // bf16: bf16(master)
  grads_ = model::FloatView("p2bw::grads", n);
  // The second weight buffer of 2bw exists from the start, so that no step allocates.
  if (has_two_bw_phase(deck)) spare_ = model_.make_stored("p2bw::weights_b", model_.num_params());
  cache_ = model_.make_cache();
  host_tokens_ = Kokkos::create_mirror_view(cache_.tokens);
  host_targets_ = Kokkos::create_mirror_view(cache_.targets);
  totals_ = DoubleView("p2bw::step_totals", static_cast<size_t>(model_.parts() + 1));
  host_totals_ = Kokkos::create_mirror_view(totals_);
}

double SingleRankTrainer::evaluate() {
  P2BW_ASSERT(splits_.validation != nullptr, "an evaluation needs a validation split");
  data::Loader loader(splits_.validation, deck_, data::Order::sequential);
  // The true weights in the storage type: bf16(master) is written into the gradient buffer's
  // memory, idle between steps (each step zeroes it first).
  const StoreView eval_weights =
      model_.bf16() ? narrow_into_idle(exec_, grads_, master_) : StoreView(weights());
  const int m = deck_.pipeline.microbatches, width = deck_.pipeline.width;
  double loss = 0.0, positions = 0.0;
  // In slot order: validation batch t, microbatch j, replica r.
  for (int t = 0; t < deck_.train.eval_batches; ++t)
    for (int j = 0; j < m; ++j)
      for (int r = 0; r < width; ++r) {
        loader.microbatch(t, j, r, host_tokens_.data(), host_targets_.data());
        model_.load(exec_, cache_, host_tokens_.data(), host_targets_.data());
        const double mean = model_.forward(exec_, eval_weights, cache_, StoreView());
        loss += mean * cache_.loss_positions;
        positions += cache_.loss_positions;
      }
  return positions > 0 ? loss / positions : 0.0;
}

bool SingleRankTrainer::delayed(std::int64_t step) const {
  return deck_.pipeline.schedule == config::ScheduleKind::two_bw &&
         step >= deck_.pipeline.sync_warmup_steps;
}

StepResult SingleRankTrainer::step() {
  const std::int64_t t = steps_done_;
  const int microbatches = deck_.pipeline.microbatches * deck_.pipeline.width;
  const int B = deck_.train.microbatch_size, T = deck_.model.seq_len;
  StepResult result;
  result.step = t + 1;
  result.tokens = std::int64_t{microbatches} * B * T;
  const int parts = model_.parts();
  Kokkos::deep_copy(exec_, grads_, 0.0f);
  Kokkos::deep_copy(exec_, totals_, 0.0);
  const DoubleView loss_sum = Kokkos::subview(totals_, std::make_pair(parts, parts + 1));  // (1)
  for (int k = 0; k < microbatches; ++k) {
    // Slot k of the global batch (replica 0 of a width-1 layout).
    loader_.microbatch(t, k, 0, host_tokens_.data(), host_targets_.data());
    model_.load(exec_, cache_, host_tokens_.data(), host_targets_.data());
    model_.forward(exec_, w_old_, cache_, StoreView(), loss_sum);
    model_.backward(exec_, w_old_, grads_, cache_, StoreView(), StoreView(), 1.0 / microbatches);
  }
  if (result.step == test_hooks::nonfinite_step())
    Kokkos::deep_copy(exec_, Kokkos::subview(grads_, 0), NAN);

  model_.sum_tied_gradients(exec_, grads_);  // the tied embedding's two copies

  model_.grad_square_sums(exec_, grads_, totals_);
  Kokkos::deep_copy(exec_, host_totals_, totals_);  // the step's one copy to the host
  exec_.fence();
  result.loss = host_totals_(parts) / microbatches;
  double square = 0.0;
  for (int p = 0; p < parts; ++p) square += host_totals_(p);
  result.grad_norm = std::sqrt(square);
  result.lr = model::learning_rate(deck_.train, t);
  result.skipped = !std::isfinite(result.grad_norm);

  const double scale = model::clip_scale(result.grad_norm, deck_.train.grad_clip);
  // Under weight prediction (and bf16) every update writes the master in place and the compute
  // version C(t + 1) (bf16: rounded) into the buffer the next version lives in.
  const double gamma = prediction_gamma(deck_, static_cast<int>(t + 1));
  if (!delayed(t)) {
    // Vanilla: one buffer updated in place (C(t + 1) = W(t + 1) in the warm-up).
    if (!result.skipped && master_.data())
      optimizer_.step(exec_, master_, master_, grads_, result.lr, scale, w_new_, gamma);
    else if (!result.skipped)
      optimizer_.step(exec_, w_new_.as<float>(), w_new_.as<float>(), grads_, result.lr, scale);
  } else {
    // 2bw: the gradient was taken at W_old; W_next = Opt(W_new, g) goes into the retired buffer.
    P2BW_ASSERT(spare_.data(), "2bw's second weight buffer is made with the trainer");
    const StoreView next = w_old_.data() == w_new_.data() ? spare_ : w_old_;
    if (result.skipped)
      model_.write_compute_weights(exec_, next, weights());  // still rotate the versions
    else if (master_.data())
      optimizer_.step(exec_, master_, master_, grads_, result.lr, scale, next, gamma);
    else
      optimizer_.step(exec_, next.as<float>(), w_new_.as<float>(), grads_, result.lr, scale);
    w_old_ = w_new_;
    w_new_ = next;
  }
  if (!delayed(t + 1)) w_old_ = w_new_;  // flush semantics next: gradients at the newest weights
  exec_.fence();
  ++steps_done_;
  return result;
}

}  // namespace p2bw::pipeline
