// A batch's chain of reductions; see step_reduction.hpp.
#include "pipeline/step_reduction.hpp"

#include <fmt/format.h>

#include <cmath>

#include "core/error.hpp"

namespace p2bw::pipeline {

namespace {

// Slots of the world sum: part square sums, loss, stop votes, then the timing of every stage.
struct Layout {
  int parts;
  int loss() const { return parts; }
  int stop() const { return parts + 1; }
  int timing(int stage) const { return parts + 2 + kTimingValues * stage; }
  int size(int depth) const { return timing(depth); }
};

// totals(slot) = the batch's mean loss on this replica, loss_sum(0) / m, divided by the w
// replicas the world sum adds, on the device. (A free function: nvcc allows no extended lambda
// in a private member.)
void put_step_loss(const Exec& exec, DoubleView totals, DoubleView loss_sum, int slot, int m,
                   int w) {
  Kokkos::parallel_for(
      "p2bw::step_loss", Kokkos::RangePolicy<Exec>(exec, 0, 1), KOKKOS_LAMBDA(const int) {
        const double loss = loss_sum(0) / m;
        totals(slot) = w > 1 ? loss / w : loss;
      });
}

}  // namespace

void put_timing(double* slots, const StepTiming& timing) {
  slots[0] = timing.compute_s;
  slots[1] = timing.wait_s;
  slots[2] = timing.idle_s;
  slots[3] = static_cast<double>(timing.peak_memory_bytes);
}

io::StageRow timing_row(const double* slots, std::int64_t step) {
  return {step, slots[0], slots[1], slots[2], static_cast<std::int64_t>(slots[3])};
}

StepReduction::StepReduction(const config::Deck& deck, const comm::ProcessGrid& grid,
                             comm::Collectives& collectives, const model::StageModel& model,
                             int first_part)
    : deck_(deck), grid_(grid), collectives_(collectives), model_(model), first_part_(first_part) {
  const Layout layout{deck.model.layers + 2};
  totals_ = DoubleView("p2bw::step_totals", static_cast<size_t>(layout.size(grid.depth())));
  host_ = Kokkos::create_mirror_view(totals_);
  loss_sum_ = DoubleView("p2bw::reduction_loss_sum", 1);
}

void StepReduction::post(const Exec& exec, int batch, FloatView grads, DoubleView loss_sum,
                         bool stop, std::int64_t timing_step, const StepTiming& timing) {
  P2BW_ASSERT(!active(), "a batch's reductions are posted while the last batch's are pending");
  P2BW_ASSERT(loss_sum.data() || !model_.has_head(), "the last stage posts the batch's loss");
  batch_ = batch;
  grads_ = grads;
  if (loss_sum.data()) Kokkos::deep_copy(exec, loss_sum_, loss_sum);
  stop_ = stop;
  timing_step_ = timing_step;
  timing_ = timing;
  // No fence before a post: collectives are ordered after the work queued on exec.
  if (grid_.width() > 1) {
    handle_ = collectives_.post_sum(grads_, comm::Group::replicas,
                                    fmt::format("gradient all-reduce of batch {}", batch));
    phase_ = Phase::data_parallel;
  } else {
    start_tied(exec);
  }
}

void StepReduction::start_tied(const Exec& exec) {
  phase_ = Phase::tied;
  if (model_.sum_tied_gradients(exec, grads_)) return start_totals(exec);  // d = 1: both copies
  const model::TensorInfo* wte = model_.find("embedding/wte");
  const model::TensorInfo* copy = model_.find("head/wte");
  const model::TensorInfo* mine = wte ? wte : copy;
  if (!mine) return start_totals(exec);
  FloatView part =
      Kokkos::subview(grads_, std::make_pair(mine->offset, mine->offset + mine->count));
  handle_ = collectives_.post_sum(part, comm::Group::tied,
                                  fmt::format("tied-embedding all-reduce of batch {}", batch_));
}

void StepReduction::start_totals(const Exec& exec) {
  phase_ = Phase::totals;
  const Layout layout{deck_.model.layers + 2};
  for (size_t i = 0; i < host_.extent(0); ++i) host_(i) = 0.0;
  if (grid_.replica() == 0 && timing_step_ >= 0)
    put_timing(&host_(layout.timing(grid_.stage())), timing_);
  host_(layout.stop()) = stop_ ? 1.0 : 0.0;
  Kokkos::deep_copy(exec, totals_, host_);
  // The square sums and the loss go into totals_ on the device: no copy to the host here.
  if (grid_.replica() == 0)
    model_.grad_square_sums(
        exec, grads_,
        Kokkos::subview(totals_, std::make_pair(first_part_, first_part_ + model_.parts())));
  if (model_.has_head())
    put_step_loss(exec, totals_, loss_sum_, layout.loss(), deck_.pipeline.microbatches,
                  grid_.width());
  handle_ =
      collectives_.post_sum(totals_, comm::Group::world,
                            fmt::format("loss and gradient-norm all-reduce of batch {}", batch_));
}

void StepReduction::advance(const Exec& exec) {
  if (phase_ == Phase::data_parallel)
    start_tied(exec);
  else if (phase_ == Phase::tied)
    start_totals(exec);
  else
    phase_ = Phase::done;
}

void StepReduction::progress(const Exec& exec) {
  while (phase_ != Phase::idle && phase_ != Phase::done && collectives_.test(handle_))
    advance(exec);
}

StepReduction::Totals StepReduction::complete(const Exec& exec) {
  P2BW_ASSERT(active(), "completing reductions that were not posted");
  while (phase_ != Phase::done) {
    collectives_.wait(handle_);
    advance(exec);
  }
  phase_ = Phase::idle;
  Kokkos::deep_copy(host_, totals_);
  const Layout layout{deck_.model.layers + 2};
  Totals totals;
  totals.batch = batch_;
  double square = 0.0;
  for (int p = 0; p < layout.parts; ++p) square += host_(p);
  totals.grad_norm = std::sqrt(square);
  totals.loss = host_(layout.loss());
  totals.stop_votes = static_cast<int>(std::lround(host_(layout.stop())));
  totals.timing_step = timing_step_;
  if (timing_step_ >= 0)
    for (int s = 0; s < grid_.depth(); ++s)
      totals.stages.push_back(timing_row(&host_(layout.timing(s)), timing_step_));
  return totals;
}

}  // namespace p2bw::pipeline
