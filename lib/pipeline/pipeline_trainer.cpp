// The pipeline executor; see pipeline_trainer.hpp.
#include "pipeline/pipeline_trainer.hpp"

#include <fmt/format.h>

#include <cmath>

#include "core/error.hpp"
#ifdef P2BW_HAVE_NCCL_TRANSPORT
#include "comm/nccl.hpp"
#endif
#include "kernels/gemm.hpp"
#include "model/lr_schedule.hpp"
#include "pipeline/stage_checkpoint.hpp"
#include "pipeline/test_hooks.hpp"
#include "schedule/check.hpp"
#include "schedule/text.hpp"

namespace p2bw::pipeline {

namespace {

// Weight and gradient buffers of a stage: 3 when the run has a 2bw phase (two versions), else 2.
int buffers_needed(const config::Deck& deck) {
  return has_two_bw_phase(deck) ? 3 : 2;
}

std::int64_t bytes(const model::FloatView& v) {
  return static_cast<std::int64_t>(v.extent(0)) * 4;
}
std::int64_t bytes(const StoreView& v) {
  return v.bytes();
}
std::int64_t bytes(const model::Cache& c) {
  return c.bytes();
}

using Clock = std::chrono::steady_clock;
double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Adds the time `body` takes to `total`.
template <class Body>
void timed(double& total, Body&& body) {
  const auto start = Clock::now();
  body();
  total += since(start);
}

}  // namespace

PipelineTrainer::PipelineTrainer(const config::Deck& deck, const comm::ProcessGrid& grid,
                                 std::shared_ptr<const data::Tokens> tokens,
                                 const io::CheckpointReader* resume, comm::TransportBackend backend)
    : deck_(deck),
      grid_(grid),
      map_(make_stage_map(deck)),
      stream_(deck.pipeline.schedule, deck.pipeline.depth, deck.pipeline.microbatches,
              static_cast<int>(deck.train.steps), sync_warmup_batches(deck),
              resume ? static_cast<int>(resume->state().step) : 0),
      versions_(0, 2) {
  if (!stream_.proof().ok())
    P2BW_INTERNAL_ERROR("the schedule fails the checker: " + stream_.proof().summary());
  model::set_kernel_precision(deck);  // for the whole run
  const StageRange& range = map_.stages[static_cast<size_t>(grid.stage())];
  const int first_part = range.has_embedding ? 0 : 1 + range.first_block;
  const int end_part = 1 + range.first_block + range.blocks + (range.has_head ? 1 : 0);
  model_ = std::make_unique<model::StageModel>(deck.model, deck.train.microbatch_size, first_part,
                                               end_part);
  optimizer_ =
      std::make_unique<model::Optimizer>(deck.train, model_->tensors(), model_->num_params());
  if (backend == comm::TransportBackend::nccl) {
#ifdef P2BW_HAVE_NCCL_TRANSPORT
    transport_ = comm::make_nccl_transport(grid, deck.pipeline.timeout_s, exec_);
    collectives_ = comm::make_nccl_collectives(grid, deck.pipeline.timeout_s, exec_);
#else
    P2BW_INTERNAL_ERROR("NCCL chosen in a build without the NCCL transport");
#endif
  } else {
    transport_ = comm::make_mpi_transport(grid.world(), deck.pipeline.timeout_s, grid.stage());
    collectives_ = comm::make_mpi_collectives(grid, deck.pipeline.timeout_s);
  }
  reduction_ = std::make_unique<StepReduction>(deck_, grid_, *collectives_, *model_, first_part);
  if (range.has_head) loss_sums_ = DoubleView("p2bw::loss_sums", kLossSlots);
  const auto positions =
      static_cast<size_t>(deck.train.microbatch_size) * static_cast<size_t>(deck.model.seq_len);
  host_tokens_.resize(positions);
  host_targets_.resize(positions);
  if (range.has_embedding || range.has_head) {
    P2BW_ASSERT(tokens != nullptr, "the first and the last stage need the data");
    data::DataSplits splits = data::split_data(std::move(tokens), deck);
    loader_ = std::make_unique<data::Loader>(std::move(splits.train), deck);
    if (splits.validation)
      eval_loader_ = std::make_unique<data::Loader>(std::move(splits.validation), deck,
                                                    data::Order::sequential);
  }
  if (deck.data.val_fraction > 0) {
    const int per_pipeline = deck.train.eval_batches * deck.pipeline.microbatches;
    eval_schedule_ = schedule::generate_forward_only(deck.pipeline.depth, per_pipeline);
    const schedule::CheckResult proof = schedule::check(eval_schedule_);
    if (!proof.ok())
      P2BW_INTERNAL_ERROR("the evaluation schedule fails the checker: " + proof.summary());
    eval_totals_ = DoubleView("p2bw::eval_totals",
                              static_cast<size_t>(2 * per_pipeline * deck.pipeline.width));
  }
  versions_ = WeightVersions(model_->num_params(), buffers_needed(deck), keeps_master(deck),
                             model_->bf16());
  if (resume) {
    steps_done_ = timed_through_ = resume->state().step;
    const int first_mb = static_cast<int>(steps_done_) * deck.pipeline.microbatches + 1;
    restore_stage(*resume,
                  schedule::weight_version(deck.pipeline.schedule, deck.pipeline.microbatches,
                                           sync_warmup_batches(deck), first_mb),
                  *model_, versions_, *optimizer_);
  } else {
    model_->init_weights(exec_, versions_.add(0), versions_.master(), deck.train.seed);
  }
  versions_.make_gradients(exec_);
  // The boundary buffers exist from the start: when a send completes decides which step would
  // otherwise make the last of them.
  for (int b = 0; b < 2 * links(); ++b) free_boundaries_.push_back(new_boundary());
  timing_totals_ =
      DoubleView("p2bw::timing_totals", static_cast<size_t>(kTimingValues * grid.depth()));
  if (deck.pipeline.recompute) {
    scratch_ = model_->make_cache();
    if (!model_->has_head()) scratch_out_ = model_->make_boundary("p2bw::recompute_out");
  }
  if (has_validation()) {
    // Recomputation's scratch activations are free between actions; otherwise one more set.
    eval_cache_ = deck.pipeline.recompute ? scratch_ : model_->make_cache();
    if (!model_->has_head())
      for (StoreView& out : eval_out_) out = model_->make_boundary("p2bw::eval_out");
  }
  account();
}

PipelineTrainer::~PipelineTrainer() = default;

double PipelineTrainer::now() const {
  return std::chrono::duration<double>(Clock::now() - born_).count();
}

std::string PipelineTrainer::where(const schedule::Action& action) const {
  return fmt::format("action '{}' of batch {}", schedule::to_string(action), steps_done_);
}

void PipelineTrainer::trace_event(schedule::ActionKind kind, int mb, int version, double start,
                                  double end) {
  if (tracing_) trace_.push_back({static_cast<std::int32_t>(kind), mb, version, start, end});
}

std::vector<StepResult> PipelineTrainer::step(bool stop_requested) {
  P2BW_ASSERT(steps_done_ < deck_.train.steps, "all steps are done");
  if (!started_) {
    // One time origin for every rank's trace (up to the barrier's exit skew).
    collectives_->barrier(comm::Group::world, "the start of the run");
    born_ = Clock::now();
    started_ = true;
    test_hooks::stall_here(grid_.rank(), "start", deck_.pipeline.timeout_s);
  }
  stop_vote_ = stop_requested;
  compute_s_ = wait_s_ = 0;
  const auto step_start = Clock::now();
  using K = schedule::ActionKind;
  for (const schedule::Action& action :
       stream_.batch(grid_.stage(), static_cast<int>(steps_done_))) {
    const double start = now();
    run(action);
    if (!schedule::is_compute(action.kind) && action.kind != K::batch_begin &&
        action.kind != K::batch_end && action.kind != K::step)
      trace_event(action.kind, action.mb > 0 ? action.mb : -1, action.version, start, now());
    // The pending reductions advance between actions, while the stage computes.
    if (reduction_->active()) timed(compute_s_, [&] { reduction_->progress(exec_); });
  }
  compute_s_ += compute_clock_.collect();
  ++steps_done_;
  if (steps_done_ == deck_.train.steps) {
    timed(wait_s_, [&] { transport_->wait_all("the end of the run"); });
    for (const auto& send : sending_) free_boundaries_.push_back(send.second);
    sending_.clear();
  }
  account();
  StepTiming& timing = timing_[steps_done_];
  timing.compute_s = compute_s_;
  timing.wait_s = wait_s_;
  timing.idle_s = std::max(0.0, since(step_start) - compute_s_ - wait_s_);
  timing.peak_memory_bytes = peak_.total();
  return take_results();
}

std::vector<StepResult> PipelineTrainer::take_results() {
  // Results complete in step order; those completed by the end of a batch are the same on every
  // rank (the schedule decides when each update is applied), so handing them out only here keeps
  // every rank's view of the run identical.
  std::vector<StepResult> results;
  results.swap(known_);
  return results;
}

std::vector<StepResult> PipelineTrainer::synchronize() {
  if (reduction_->active()) apply_update();
  compute_clock_.collect();  // the update's time: after the last step's row
  // The timing of the steps no reduction has carried yet (the last one), in one world sum.
  while (timed_through_ < steps_done_) {
    const std::int64_t step = ++timed_through_;
    const DoubleView totals = timing_totals_;
    auto host = Kokkos::create_mirror_view(totals);
    for (size_t i = 0; i < host.extent(0); ++i) host(i) = 0.0;
    if (grid_.replica() == 0) put_timing(&host(kTimingValues * grid_.stage()), timing_.at(step));
    Kokkos::deep_copy(totals, host);
    collectives_->wait(collectives_->post_sum(totals, comm::Group::world,
                                              fmt::format("the timing of step {}", step)));
    Kokkos::deep_copy(host, totals);
    std::vector<io::StageRow> rows;
    for (int s = 0; s < grid_.depth(); ++s)
      rows.push_back(timing_row(&host(kTimingValues * s), step));
    stage_rows_.push_back(std::move(rows));
    timing_.erase(step);
  }
  return take_results();
}

std::string PipelineTrainer::save_checkpoint(const std::string& checkpoints, int keep) {
  P2BW_ASSERT(!reduction_->active(), "a checkpoint needs synchronize() first");
  return save_stage_checkpoint(checkpoints, keep, steps_done_, deck_, grid_, *collectives_, *model_,
                               versions_, *optimizer_);
}

double PipelineTrainer::evaluate() {
  P2BW_ASSERT(has_validation(), "an evaluation needs a validation split");
  P2BW_ASSERT(!reduction_->active(), "an evaluation needs synchronize() first");
  const StoreView w = versions_.evaluation_weights(exec_);
  const int m = deck_.pipeline.microbatches, width = deck_.pipeline.width;
  auto totals = Kokkos::create_mirror_view(eval_totals_);
  for (size_t i = 0; i < totals.extent(0); ++i) totals(i) = 0.0;
  int receive = -1;
  int sends[2] = {-1, -1};  // the send from eval_out_[mb % 2], until done
  const auto wait_send = [&](int& handle, int mb) {
    if (handle < 0) return;
    transport_->wait(handle, fmt::format("the evaluation's send of microbatch {}", mb));
    handle = -1;
  };
  using K = schedule::ActionKind;
  for (const schedule::Action& a : eval_schedule_.actions[static_cast<size_t>(grid_.stage())]) {
    StoreView& out = eval_out_[a.mb % 2];
    switch (a.kind) {
      case K::recv_act:
        receive = transport_->post_receive({model_->input_slot(eval_cache_),
                                            grid_.rank_of_stage(grid_.stage() - 1), a.mb,
                                            comm::Direction::evaluation});
        break;
      case K::forward: {
        if (receive >= 0) {
          transport_->wait(receive, fmt::format("the evaluation's forward of microbatch {}", a.mb));
          receive = -1;
        }
        // Slot k of validation batch t, as in training: batch t of the split, microbatch j,
        // replica.
        const int t = (a.mb - 1) / m, j = (a.mb - 1) % m;
        if (eval_loader_) load_data(*eval_loader_, a.mb, eval_cache_);
        wait_send(sends[a.mb % 2], a.mb - 2);
        const double loss = model_->forward(exec_, w, eval_cache_, out);
        exec_.fence();
        if (model_->has_head()) {
          const size_t slot = static_cast<size_t>((t * m + j) * width + grid_.replica());
          totals(2 * slot) = loss * eval_cache_.loss_positions;
          totals(2 * slot + 1) = eval_cache_.loss_positions;
        }
        break;
      }
      case K::send_act:
        sends[a.mb % 2] = transport_->post_send(
            {out, grid_.rank_of_stage(grid_.stage() + 1), a.mb, comm::Direction::evaluation});
        break;
      default:
        P2BW_INTERNAL_ERROR("an evaluation runs forwards and activation messages only");
    }
  }
  for (int& send : sends) wait_send(send, -1);
  versions_.end_evaluation(exec_);
  Kokkos::deep_copy(eval_totals_, totals);
  collectives_->wait(collectives_->post_sum(
      eval_totals_, comm::Group::world, fmt::format("the evaluation after step {}", steps_done_)));
  Kokkos::deep_copy(totals, eval_totals_);
  double loss = 0.0, positions = 0.0;
  for (size_t i = 0; i < totals.extent(0); i += 2) {
    loss += totals(i);
    positions += totals(i + 1);
  }
  return positions > 0 ? loss / positions : 0.0;
}

void PipelineTrainer::run(const schedule::Action& a) {
  using K = schedule::ActionKind;
  switch (a.kind) {
    case K::forward:
      forward(a.mb, a.version);
      break;
    case K::backward:
      backward(a.mb, a.version);
      break;
    case K::send_act:
      send(activation_out(a.mb));
      break;
    case K::recv_act:
      microbatch(a.mb).activation_in = transport_->post_receive(activation_in(a.mb));
      break;
    case K::send_grad:
      send(gradient_out(a.mb));
      break;
    case K::recv_grad:
      microbatch(a.mb).gradient_in = transport_->post_receive(gradient_in(a.mb));
      break;
    case K::send_act_recv_grad: {
      const comm::Message out = activation_out(a.mb);
      const auto handles = transport_->post_exchange(out, gradient_in(a.recv_mb));
      sending_.emplace_back(handles.first, out.buffer);
      microbatch(a.recv_mb).gradient_in = handles.second;
      break;
    }
    case K::send_grad_recv_act: {
      const comm::Message out = gradient_out(a.mb);
      const auto handles = transport_->post_exchange(out, activation_in(a.recv_mb));
      sending_.emplace_back(handles.first, out.buffer);
      microbatch(a.recv_mb).activation_in = handles.second;
      break;
    }
    case K::allreduce:
      post_reductions(a.batch);
      break;
    case K::step:
      end_step(a.batch);
      break;
    case K::batch_begin:
    case K::batch_end:
      break;
    case K::backward_input:
    case K::backward_weight:
      P2BW_INTERNAL_ERROR("split backward actions are not executed by this version: " + where(a));
  }
}

PipelineTrainer::Microbatch& PipelineTrainer::microbatch(int mb) {
  auto it = in_flight_.find(mb);
  if (it != in_flight_.end()) return it->second;
  Microbatch record;
  if (!free_stashes_.empty()) {
    record.stash = free_stashes_.back();
    free_stashes_.pop_back();
  } else if (!deck_.pipeline.recompute) {
    record.stash = model_->make_cache();
    ++stashes_;
  } else {
    record.stash = model_->make_input_stash();  // what the re-forward needs
    ++stashes_;
  }
  peak_in_flight_ = std::max(peak_in_flight_, stashes_ - static_cast<int>(free_stashes_.size()));
  return in_flight_.emplace(mb, record).first->second;
}

int PipelineTrainer::links() const {
  return (grid_.stage() > 0) + (grid_.stage() + 1 < grid_.depth());
}

StoreView PipelineTrainer::new_boundary() {
  ++boundaries_;
  return model_->make_boundary("p2bw::boundary");
}

StoreView PipelineTrainer::take_boundary() {
  reap_sends();
  // Two (B, T, C) buffers per link to a neighbour, as predicted (memory.hpp), made with the
  // trainer: when they are all in flight, the oldest send is waited for instead of allocating
  // another (a buffer more only when none is in flight). The schedule is deadlock-free with
  // blocking sends, so this wait always ends.
  const int links = this->links();
  while (free_boundaries_.empty() && boundaries_ >= 2 * links && !sending_.empty()) {
    timed(wait_s_, [&] { transport_->wait(sending_.front().first, "a free boundary buffer"); });
    free_boundaries_.push_back(sending_.front().second);
    sending_.erase(sending_.begin());
  }
  if (free_boundaries_.empty()) return new_boundary();
  StoreView buffer = free_boundaries_.back();
  free_boundaries_.pop_back();
  return buffer;
}

void PipelineTrainer::reap_sends() {
  for (size_t i = 0; i < sending_.size();) {
    if (transport_->test(sending_[i].first)) {
      free_boundaries_.push_back(sending_[i].second);
      sending_.erase(sending_.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      ++i;
    }
  }
}

void PipelineTrainer::load_data(data::Loader& loader, int mb, model::Cache& cache) {
  const int m = deck_.pipeline.microbatches;
  const std::int64_t t = (mb - 1) / m;
  const int j = (mb - 1) % m;
  loader.microbatch(t, j, grid_.replica(), host_tokens_.data(), host_targets_.data());
  model_->load(exec_, cache, model_->has_embedding() ? host_tokens_.data() : nullptr,
               model_->has_head() ? host_targets_.data() : nullptr);
}

DoubleView PipelineTrainer::loss_slot(int batch) {
  auto it = loss_slots_.find(batch);
  if (it == loss_slots_.end()) {
    auto taken = [this](int slot) {
      for (const auto& entry : loss_slots_)
        if (entry.second == slot) return true;
      return false;
    };
    int slot = 0;
    while (slot < kLossSlots && taken(slot)) ++slot;
    P2BW_ASSERT(slot < kLossSlots, "more batches in flight on the last stage than loss slots");
    it = loss_slots_.emplace(batch, slot).first;
    Kokkos::deep_copy(exec_, Kokkos::subview(loss_sums_, slot), 0.0);
  }
  return Kokkos::subview(loss_sums_, std::make_pair(it->second, it->second + 1));
}

void PipelineTrainer::copy_stash(const model::Cache& from, model::Cache& to) const {
  if (model_->has_embedding()) {
    Kokkos::deep_copy(exec_, to.tokens, from.tokens);
    to.buckets.assign(exec_, from.buckets);
  } else
    copy(exec_, model_->input_slot(to), from.values);
  if (model_->has_head()) Kokkos::deep_copy(exec_, to.targets, from.targets);
}

comm::Message PipelineTrainer::activation_in(int mb) {
  Microbatch& record = microbatch(mb);
  return {deck_.pipeline.recompute ? record.stash.values : model_->input_slot(record.stash),
          grid_.rank_of_stage(grid_.stage() - 1), mb, comm::Direction::activation};
}

comm::Message PipelineTrainer::gradient_in(int mb) {
  Microbatch& record = in_flight_.at(mb);
  record.output_grad = take_boundary();
  return {record.output_grad, grid_.rank_of_stage(grid_.stage() + 1), mb,
          comm::Direction::gradient};
}

comm::Message PipelineTrainer::activation_out(int mb) {
  Microbatch& record = in_flight_.at(mb);
  const comm::Message message{record.output, grid_.rank_of_stage(grid_.stage() + 1), mb,
                              comm::Direction::activation};
  record.output = StoreView();
  return message;
}

comm::Message PipelineTrainer::gradient_out(int mb) {
  auto it = in_flight_.find(mb);
  P2BW_ASSERT(it != in_flight_.end() && it->second.input_grad.data(),
              "sending a gradient that backward did not make");
  const comm::Message message{it->second.input_grad, grid_.rank_of_stage(grid_.stage() - 1), mb,
                              comm::Direction::gradient};
  in_flight_.erase(it);  // the microbatch is done on this stage
  return message;
}

void PipelineTrainer::send(const comm::Message& message) {
  sending_.emplace_back(transport_->post_send(message), message.buffer);
}

void PipelineTrainer::await_receive(int& handle, const char* action, int mb) {
  if (handle < 0) return;  // nothing posted (no neighbour on that side)
  timed(wait_s_, [&] { transport_->wait(handle, fmt::format("{} of microbatch {}", action, mb)); });
  handle = -1;
}

void PipelineTrainer::forward(int mb, int version) {
  Microbatch& record = microbatch(mb);
  await_receive(record.activation_in, "forward", mb);
  const StoreView w = weights(version);
  compute_clock_.begin();
  if (loader_) load_data(*loader_, mb, record.stash);
  if (!model_->has_head()) record.output = take_boundary();
  // The last stage adds the microbatch's mean loss to its batch's slot on the device.
  const DoubleView loss_sum =
      model_->has_head() ? loss_slot((mb - 1) / deck_.pipeline.microbatches) : DoubleView();
  if (deck_.pipeline.recompute) {
    copy_stash(record.stash, scratch_);
    model_->forward(exec_, w, scratch_, record.output, loss_sum);
  } else {
    model_->forward(exec_, w, record.stash, record.output, loss_sum);
  }
  compute_clock_.end(schedule::ActionKind::forward, mb, version);
}

void PipelineTrainer::backward(int mb, int version) {
  Microbatch& record = in_flight_.at(mb);
  await_receive(record.gradient_in, "backward", mb);
  const StoreView w = weights(version);
  compute_clock_.begin();
  if (!model_->has_embedding()) record.input_grad = take_boundary();
  const double scale =
      1.0 / (static_cast<double>(deck_.pipeline.microbatches) * deck_.pipeline.width);
  if (deck_.pipeline.recompute) {
    copy_stash(record.stash, scratch_);
    // The same version: the same activations; the loss was counted by the first forward.
    model_->forward(exec_, w, scratch_, scratch_out_, DoubleView());
    model_->backward(exec_, w, versions_.gradients(), scratch_, record.output_grad,
                     record.input_grad, scale);
  } else {
    model_->backward(exec_, w, versions_.gradients(), record.stash, record.output_grad,
                     record.input_grad, scale);
  }
  compute_clock_.end(schedule::ActionKind::backward, mb, version);
  if (record.output_grad.data()) free_boundaries_.push_back(record.output_grad);
  record.output_grad = StoreView();
  free_stashes_.push_back(record.stash);
  record.stash = model::Cache();
  if (model_->has_embedding()) in_flight_.erase(mb);  // no gradient to send
}

StoreView PipelineTrainer::weights(int version) {
  if (!versions_.holds(version)) {
    if (test_hooks::late_update()) return versions_.at(versions_.newest());  // the mutation
    if (reduction_->active() && reduction_->batch() + 1 == version) apply_update();
  }
  return versions_.at(version);
}

void PipelineTrainer::post_reductions(int batch) {
  if (reduction_->active()) apply_update();  // batch - 1's: one update pending at most
  // The stage's sends of this batch need not be complete: their buffers return to the free list
  // as they finish, and nothing here waits for a neighbour.
  reap_sends();
  if (batch + 1 == test_hooks::nonfinite_step() && grid_.rank() == 0)
    Kokkos::deep_copy(Kokkos::subview(versions_.gradients(), 0), NAN);
  // This rank's timing of the last step it finished travels with the batch (steps_done_ is the
  // same on every rank here), so the metrics need no collective of their own.
  std::int64_t timing_step = -1;
  StepTiming timing;
  if (steps_done_ > timed_through_) {
    timing_step = timed_through_ = steps_done_;
    timing = timing_.at(timing_step);
    timing_.erase(timing_step);
  }
  DoubleView loss_sum;
  if (model_->has_head()) {
    loss_sum = loss_slot(batch);
    loss_slots_.erase(batch);  // post copies the sum on the device: the slot is free again
  }
  timed(compute_s_, [&] {
    reduction_->post(exec_, batch, versions_.detach_gradients(), loss_sum, stop_vote_, timing_step,
                     timing);
  });
  if (batch == stream_.first_batch())
    test_hooks::stall_here(grid_.rank(), "reduction", deck_.pipeline.timeout_s);
}

void PipelineTrainer::end_step(int batch) {
  const int next_mb = (batch + 1) * deck_.pipeline.microbatches + 1;
  const int next_version = schedule::weight_version(
      deck_.pipeline.schedule, deck_.pipeline.microbatches, sync_warmup_batches(deck_), next_mb);
  // Flush, gpipe and 2bw's warm-up run the next batch on W(batch + 1): the flush. Under 2bw the
  // next batch runs on W(batch) and the update waits until W(batch + 1) is needed.
  if (next_version > batch) apply_update();
  versions_.retire_older_than(next_version);
  versions_.make_gradients(exec_);
}

void PipelineTrainer::apply_update() {
  StepReduction::Totals totals;
  timed(wait_s_, [&] { totals = reduction_->complete(exec_); });
  const int batch = totals.batch;
  StepResult r;
  r.step = batch + 1;
  r.loss = totals.loss;
  r.grad_norm = totals.grad_norm;
  r.skipped = !std::isfinite(r.grad_norm);
  r.lr = model::learning_rate(deck_.train, batch);
  r.tokens = std::int64_t{deck_.pipeline.microbatches} * deck_.pipeline.width *
             deck_.train.microbatch_size * deck_.model.seq_len;
  r.stop = totals.stop_votes > 0;
  // W(batch + 1) is written over the batch's gradients (the elementwise optimizer reads each
  // gradient before it writes the weight). Under weight prediction the master is updated in place
  // and the compute version C(batch + 1) written over the gradients.
  compute_clock_.begin();
  const model::FloatView master = versions_.master();
  const model::FloatView newest = versions_.true_weights();
  const model::FloatView grads = reduction_->gradients();
  const StoreView out = versions_.next_version_buffer(grads);  // fp32: grads itself
  if (r.skipped)
    // versions still rotate; W(batch + 1) = W(batch)
    model_->write_compute_weights(exec_, out, newest);
  else if (master.data())
    optimizer_->step(exec_, master, master, grads, r.lr,
                     model::clip_scale(r.grad_norm, deck_.train.grad_clip), out,
                     prediction_gamma(deck_, batch + 1));
  else
    optimizer_->step(exec_, out.as<float>(), newest, grads, r.lr,
                     model::clip_scale(r.grad_norm, deck_.train.grad_clip));
  versions_.hold(batch + 1, out);
  compute_clock_.end(schedule::ActionKind::step, -1, batch + 1);
  known_.push_back(r);
  if (!totals.stages.empty()) stage_rows_.push_back(std::move(totals.stages));
}

void PipelineTrainer::account() {
  MemoryBytes use;
  use.weights = versions_.weight_bytes();
  use.gradients = versions_.gradient_bytes();
  use.optimizer = bytes(optimizer_->first()) + bytes(optimizer_->second());
  model::Cache probe = free_stashes_.empty() ? model::Cache{} : free_stashes_.front();
  for (const auto& entry : in_flight_)
    if (entry.second.stash.tokens.data() || !entry.second.stash.values.empty())
      probe = entry.second.stash;
  use.activations = stashes_ * bytes(probe) + bytes(scratch_) + bytes(scratch_out_) +
                    (deck_.pipeline.recompute ? 0 : bytes(eval_cache_));
  use.buffers =
      boundaries_ * config::compute_bytes(deck_.model.precision) * model_->boundary_values() +
      bytes(eval_out_[0]) + bytes(eval_out_[1]);
  use.workspace = model_->workspace_bytes() + kernels::library_workspace_bytes();
  if (use.total() > peak_.total()) peak_ = use;
}

}  // namespace p2bw::pipeline
