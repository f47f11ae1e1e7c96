// The pipeline executor; see pipeline_trainer.hpp.
#include "pipeline/pipeline_trainer.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <thread>

#include "core/error.hpp"
#include "model/lr_schedule.hpp"
#include "schedule/text.hpp"

namespace p2bw::pipeline {

namespace {

schedule::ScheduleKind schedule_kind(config::ScheduleKind kind) {
  switch (kind) {
    case config::ScheduleKind::gpipe:
      return schedule::ScheduleKind::gpipe;
    case config::ScheduleKind::flush:
      return schedule::ScheduleKind::flush;
    case config::ScheduleKind::twobw:
      return schedule::ScheduleKind::two_bw;
  }
  return schedule::ScheduleKind::flush;
}

int sync_warmup_batches(const config::Deck& deck) {
  if (deck.pipeline.schedule != config::ScheduleKind::twobw) return 0;
  return static_cast<int>(
      std::min<std::int64_t>(deck.pipeline.sync_warmup_steps, deck.train.steps));
}

// All-reduce (sum) of a device buffer, staged through the host when MPI cannot read device memory.
template <class T>
void allreduce_sum(Kokkos::View<T*, model::Memory> data, MPI_Datatype type, MPI_Comm comm,
                   double timeout_s, int stage, const std::string& what) {
  auto host = Kokkos::create_mirror_view(data);
  Kokkos::deep_copy(host, data);
  MPI_Request request;
  P2BW_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, host.data(), static_cast<int>(host.extent(0)), type,
                                MPI_SUM, comm, &request));
  comm::wait_with_deadline(request, timeout_s, stage, what);
  Kokkos::deep_copy(data, host);
}

// Adds the time `body` takes to `waited`.
template <class Body>
void timed(double& waited, Body&& body) {
  const auto start = std::chrono::steady_clock::now();
  body();
  waited += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::int64_t bytes(const model::FloatView& v) {
  return static_cast<std::int64_t>(v.extent(0)) * 4;
}
std::int64_t bytes(const model::Cache& c) {
  return (static_cast<std::int64_t>(c.floats.extent(0)) +
          static_cast<std::int64_t>(c.tokens.extent(0)) +
          static_cast<std::int64_t>(c.targets.extent(0))) *
         4;
}

}  // namespace

PipelineTrainer::PipelineTrainer(const config::Deck& deck, const comm::ProcessGrid& grid,
                                 std::shared_ptr<const data::Tokens> tokens,
                                 const io::CheckpointReader* resume)
    : deck_(deck),
      grid_(grid),
      map_(make_stage_map(deck)),
      stream_(schedule_kind(deck.pipeline.schedule), deck.pipeline.depth,
              deck.pipeline.microbatches, static_cast<int>(deck.train.steps),
              sync_warmup_batches(deck), resume ? static_cast<int>(resume->state().step) : 0) {
  if (!stream_.proof().ok())
    throw InternalError("the schedule fails the checker: " + stream_.proof().summary());
  const StageRange& range = map_.stages[static_cast<size_t>(grid.stage())];
  const int first_part = range.has_embedding ? 0 : 1 + range.first_block;
  const int end_part = 1 + range.first_block + range.blocks + (range.has_head ? 1 : 0);
  model_ = std::make_unique<model::StageModel>(deck.model, deck.train.microbatch_size, first_part,
                                               end_part);
  optimizer_ =
      std::make_unique<model::Optimizer>(deck.train, model_->tensors(), model_->num_params());
  transport_ = comm::make_mpi_transport(grid.world(), deck.pipeline.timeout_s, grid.stage());
  if (range.has_embedding || range.has_head) {
    P2BW_ASSERT(tokens != nullptr, "the first and the last stage need the data");
    loader_ = std::make_unique<data::Loader>(std::move(tokens), deck);
  }
  const auto n = static_cast<size_t>(model_->num_params());
  weights_[0] = model::FloatView("p2bw::weights_a", n);
  model_->init(weights_[0], deck.train.seed);
  const bool two_versions = deck.pipeline.schedule == config::ScheduleKind::twobw &&
                            sync_warmup_batches(deck) < deck.train.steps;
  if (two_versions)
    weights_[1] =
        model::FloatView(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::weights_b"), n);
  grads_ = model::FloatView("p2bw::grads", n);
  if (resume) restore(*resume);
  if (deck.pipeline.recompute) {
    scratch_ = model_->make_cache();
    if (!model_->has_head())
      scratch_out_ =
          model::FloatView("p2bw::recompute_out", static_cast<size_t>(model_->boundary_floats()));
  }
  account();
}

PipelineTrainer::~PipelineTrainer() = default;

void PipelineTrainer::restore(const io::CheckpointReader& checkpoint) {
  const io::RunState& state = checkpoint.state();
  P2BW_ASSERT(state.step < deck_.train.steps, "the checkpoint is at or past the last step");
  const auto kind = schedule_kind(deck_.pipeline.schedule);
  const int warmup = sync_warmup_batches(deck_);
  auto load = [&](const std::string& group, model::FloatView into) {
    auto host = Kokkos::create_mirror_view(into);
    for (const model::TensorInfo& tensor : model_->tensors())
      checkpoint.read(group, tensor, host.data() + tensor.offset);
    Kokkos::deep_copy(into, host);
  };
  held_[0] = held_[1] = -1;
  const int newest = schedule::weight_buffer(kind, warmup, state.newest_version);
  load("params", weights_[newest]);
  held_[newest] = state.newest_version;
  if (state.old_version >= 0 && weights_[1 - newest].data() && state.newest_version > warmup) {
    load("params_old", weights_[1 - newest]);
    held_[1 - newest] = state.old_version;
  }
  if (optimizer_->first().data()) load("optimizer/first", optimizer_->first());
  if (optimizer_->second().data()) load("optimizer/second", optimizer_->second());
  optimizer_->set_steps_taken(state.optimizer_steps);
  steps_done_ = state.step;
}

std::string PipelineTrainer::save_checkpoint(const std::string& checkpoints, int keep) {
  exec_.fence();
  if (grid_.replica() == 0) {
    auto host = [](const model::FloatView& view) {
      std::vector<float> values(view.extent(0));
      Kokkos::deep_copy(Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(
                            values.data(), values.size()),
                        view);
      return values;
    };
    const int newest = held_[1] > held_[0] ? 1 : 0;
    io::StageTensors data;
    data.tensors = &model_->tensors();
    data.newest = host(weights_[newest]);
    if (held_[1 - newest] >= 0) data.old = host(weights_[1 - newest]);
    if (optimizer_->first().data()) data.first = host(optimizer_->first());
    if (optimizer_->second().data()) data.second = host(optimizer_->second());
    io::write_stage_file(checkpoints, steps_done_, grid_.stage(), data);
  }
  P2BW_MPI_CHECK(MPI_Barrier(grid_.world()));
  std::string folder;
  if (grid_.rank() == 0) {
    io::RunState state;
    state.step = steps_done_;
    state.optimizer_steps = optimizer_->steps_taken();
    state.newest_version = std::max(held_[0], held_[1]);
    state.old_version = std::min(held_[0], held_[1]);
    folder = io::commit_checkpoint(checkpoints, steps_done_, deck_, state, grid_.depth(), keep);
  }
  P2BW_MPI_CHECK(MPI_Barrier(grid_.world()));
  return folder;
}

model::FloatView PipelineTrainer::newest_weights() const {
  return held_[1] > held_[0] ? weights_[1] : weights_[0];
}

model::FloatView PipelineTrainer::buffer_of(int version) const {
  for (int b = 0; b < 2; ++b)
    if (held_[b] == version) return weights_[b];
  throw InternalError(
      fmt::format("stage {}: no weight buffer holds version {} (buffers hold {} and {})",
                  grid_.stage(), version, held_[0], held_[1]));
}

std::string PipelineTrainer::where(const schedule::Action& action) const {
  return fmt::format("action '{}' of batch {}", schedule::to_string(action), steps_done_);
}

StepResult PipelineTrainer::step() {
  P2BW_ASSERT(steps_done_ < deck_.train.steps, "all steps are done");
  if (!started_) {
    // One time origin for every rank's trace (up to the barrier's exit skew).
    MPI_Request request;
    P2BW_MPI_CHECK(MPI_Ibarrier(grid_.world(), &request));
    comm::wait_with_deadline(request, deck_.pipeline.timeout_s, grid_.stage(),
                             "the start of the run");
    born_ = std::chrono::steady_clock::now();
    started_ = true;
  }
  // A rank stalled on purpose, for the test that a stalled pipeline fails instead of hanging.
  if (const char* stall = std::getenv("P2BW_TEST_STALL_RANK");
      stall && std::atoi(stall) == grid_.rank() && steps_done_ == 0)
    std::this_thread::sleep_for(std::chrono::duration<double>(3 * deck_.pipeline.timeout_s + 5));

  using Clock = std::chrono::steady_clock;
  const auto seconds = [this](Clock::time_point t) {
    return std::chrono::duration<double>(t - born_).count();
  };
  const auto step_start = Clock::now();
  double compute = 0, waited_before = waited_;
  for (const schedule::Action& action :
       stream_.batch(grid_.stage(), static_cast<int>(steps_done_))) {
    const double waiting = waited_;
    const auto start = Clock::now();
    run(action);
    using K = schedule::ActionKind;
    const bool computes =
        action.kind == K::forward || action.kind == K::backward || action.kind == K::step;
    if (computes) exec_.fence();  // kernels are asynchronous on GPUs: time them to completion
    const auto end = Clock::now();
    if (computes)
      compute += std::chrono::duration<double>(end - start).count() - (waited_ - waiting);
    // A compute event starts when its inputs have arrived: the wait inside it is not compute.
    const double wait_inside = computes ? waited_ - waiting : 0.0;
    if (tracing_ && action.kind != K::batch_begin && action.kind != K::batch_end)
      trace_.push_back({static_cast<int>(action.kind), action.mb > 0 ? action.mb : -1,
                        action.version, seconds(start) + wait_inside, seconds(end)});
  }
  ++steps_done_;
  if (steps_done_ == deck_.train.steps) {
    transport_->wait_all("the end of the run");
    sending_.clear();
  }
  account();
  result_.compute_s = compute;
  result_.wait_s = waited_ - waited_before;
  result_.idle_s = std::max(0.0, std::chrono::duration<double>(Clock::now() - step_start).count() -
                                     compute - result_.wait_s);
  result_.peak_memory_bytes = peak_.total();
  return result_;
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
      send_activation(a.mb);
      break;
    case K::recv_act:
      post_receive_activation(a.mb);
      break;
    case K::send_grad:
      send_gradient(a.mb);
      break;
    case K::recv_grad:
      post_receive_gradient(a.mb);
      break;
    case K::send_act_recv_grad:
      send_activation(a.mb);
      post_receive_gradient(a.recv_mb);
      break;
    case K::send_grad_recv_act:
      send_gradient(a.mb);
      post_receive_activation(a.recv_mb);
      break;
    case K::allreduce:
      reduce_gradients(a.batch);
      break;
    case K::step:
      update(a);
      break;
    case K::batch_begin:
    case K::batch_end:
      break;
    case K::backward_input:
    case K::backward_weight:
      throw InternalError("split backward actions are not executed by this version: " + where(a));
  }
}

model::Cache& PipelineTrainer::stash_for(int mb) {
  auto it = in_flight_.find(mb);
  if (it != in_flight_.end()) return it->second;
  model::Cache stash;
  if (!free_stashes_.empty()) {
    stash = free_stashes_.back();
    free_stashes_.pop_back();
  } else if (!deck_.pipeline.recompute) {
    stash = model_->make_cache();
    ++stashes_;
  } else {
    // Recomputation keeps only what the re-forward needs: the stage input (or tokens), targets.
    const model::Cache full = model_->make_cache();
    stash.tokens = full.tokens;
    stash.targets = full.targets;
    if (!model_->has_embedding())
      stash.floats =
          model::FloatView("p2bw::stash", static_cast<size_t>(model_->boundary_floats()));
    ++stashes_;
  }
  peak_in_flight_ = std::max(peak_in_flight_, static_cast<int>(in_flight_.size()) + 1);
  return in_flight_.emplace(mb, stash).first->second;
}

model::FloatView PipelineTrainer::take_boundary() {
  reap_sends();
  if (free_boundaries_.empty()) {
    ++boundaries_;
    return model::FloatView(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::boundary"),
                            static_cast<size_t>(model_->boundary_floats()));
  }
  model::FloatView buffer = free_boundaries_.back();
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

void PipelineTrainer::load_data(int mb, model::Cache& cache) {
  const int m = deck_.pipeline.microbatches;
  const std::int64_t t = (mb - 1) / m;
  const int j = (mb - 1) % m;
  const auto r =
      static_cast<size_t>(deck_.train.microbatch_size) * static_cast<size_t>(deck_.model.seq_len);
  std::vector<std::int32_t> tokens(r), targets(r);
  loader_->microbatch(t, j, grid_.replica(), tokens.data(), targets.data());
  using HostInts = Kokkos::View<const int*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>;
  if (model_->has_embedding()) Kokkos::deep_copy(exec_, cache.tokens, HostInts(tokens.data(), r));
  if (model_->has_head()) Kokkos::deep_copy(exec_, cache.targets, HostInts(targets.data(), r));
  exec_.fence();  // the host vectors go out of scope
}

void PipelineTrainer::copy_stash(const model::Cache& from, model::Cache& to) const {
  if (model_->has_embedding())
    Kokkos::deep_copy(exec_, to.tokens, from.tokens);
  else
    Kokkos::deep_copy(exec_, model_->input_slot(to), from.floats);
  if (model_->has_head()) Kokkos::deep_copy(exec_, to.targets, from.targets);
}

void PipelineTrainer::post_receive_activation(int mb) {
  model::Cache& stash = stash_for(mb);
  model::FloatView into = deck_.pipeline.recompute ? stash.floats : model_->input_slot(stash);
  act_in_handle_[mb] = transport_->post_receive(into, grid_.rank_of_stage(grid_.stage() - 1), mb,
                                                comm::Direction::activation);
}

void PipelineTrainer::post_receive_gradient(int mb) {
  grad_in_[mb] = take_boundary();
  grad_in_handle_[mb] = transport_->post_receive(
      grad_in_[mb], grid_.rank_of_stage(grid_.stage() + 1), mb, comm::Direction::gradient);
}

void PipelineTrainer::send_activation(int mb) {
  const model::FloatView buffer = act_out_.at(mb);
  act_out_.erase(mb);
  sending_.emplace_back(transport_->post_send(buffer, grid_.rank_of_stage(grid_.stage() + 1), mb,
                                              comm::Direction::activation),
                        buffer);
}

void PipelineTrainer::send_gradient(int mb) {
  const model::FloatView buffer = grad_out_.at(mb);
  grad_out_.erase(mb);
  sending_.emplace_back(transport_->post_send(buffer, grid_.rank_of_stage(grid_.stage() - 1), mb,
                                              comm::Direction::gradient),
                        buffer);
}

void PipelineTrainer::forward(int mb, int version) {
  model::Cache& stash = stash_for(mb);
  if (auto it = act_in_handle_.find(mb); it != act_in_handle_.end()) {
    timed(waited_,
          [&] { transport_->wait(it->second, fmt::format("forward of microbatch {}", mb)); });
    act_in_handle_.erase(it);
  }
  if (loader_) load_data(mb, stash);
  model::FloatView out;
  if (!model_->has_head()) out = act_out_[mb] = take_boundary();
  double loss;
  if (deck_.pipeline.recompute) {
    copy_stash(stash, scratch_);
    loss = model_->forward(exec_, buffer_of(version), scratch_, out);
  } else {
    loss = model_->forward(exec_, buffer_of(version), stash, out);
  }
  if (model_->has_head()) losses_[(mb - 1) / deck_.pipeline.microbatches].push_back(loss);
}

void PipelineTrainer::backward(int mb, int version) {
  model::FloatView dout;
  if (!model_->has_head()) {
    timed(waited_, [&] {
      transport_->wait(grad_in_handle_.at(mb), fmt::format("backward of microbatch {}", mb));
    });
    grad_in_handle_.erase(mb);
    dout = grad_in_.at(mb);
  }
  model::FloatView din;
  if (!model_->has_embedding()) din = grad_out_[mb] = take_boundary();
  model::Cache& stash = in_flight_.at(mb);
  const model::FloatView weights = buffer_of(version);
  const double scale =
      1.0 / (static_cast<double>(deck_.pipeline.microbatches) * deck_.pipeline.width);
  if (deck_.pipeline.recompute) {
    copy_stash(stash, scratch_);
    model_->forward(exec_, weights, scratch_,
                    scratch_out_);  // the same version: the same activations
    model_->backward(exec_, weights, grads_, scratch_, dout, din, scale);
  } else {
    model_->backward(exec_, weights, grads_, stash, dout, din, scale);
  }
  if (dout.data()) {
    free_boundaries_.push_back(dout);
    grad_in_.erase(mb);
  }
  free_stashes_.push_back(stash);
  in_flight_.erase(mb);
}

void PipelineTrainer::reduce_gradients(int batch) {
  const std::string what = fmt::format("gradient all-reduce of batch {}", batch);
  for (const auto& send : sending_) {  // (handle, buffer); no structured binding: C++17 lambdas
    timed(waited_, [&] { transport_->wait(send.first, what); });
    free_boundaries_.push_back(send.second);
  }
  sending_.clear();
  exec_.fence();
  const double timeout = deck_.pipeline.timeout_s;
  if (batch + 1 == nonfinite_test_step() && grid_.rank() == 0)
    Kokkos::deep_copy(Kokkos::subview(grads_, 0), NAN);
  // Data parallelism: the replicas' gradients (each already scaled by 1/(m·w)) are summed.
  if (grid_.width() > 1)
    timed(waited_, [&] {
      allreduce_sum<float>(grads_, MPI_FLOAT, grid_.replicas(), timeout, grid_.stage(), what);
    });
  // Tied embedding: both copies get the sum of their gradients, locally (d = 1) or between the
  // first and the last stage.
  const model::TensorInfo* wte = model_->find("embedding/wte");
  const model::TensorInfo* copy = model_->find("head/wte");
  if (!model_->sum_tied_gradients(exec_, grads_) && (wte || copy)) {
    const model::TensorInfo* mine = wte ? wte : copy;
    model::FloatView part =
        Kokkos::subview(grads_, std::make_pair(mine->offset, mine->offset + mine->count));
    timed(waited_, [&] {
      allreduce_sum<float>(part, MPI_FLOAT, grid_.tied(), timeout, grid_.stage(),
                           "tied-embedding " + what);
    });
  }
  // Global gradient norm (each part's square sum from replica 0 of its stage, summed in part
  // order, as the single-rank reference does) and the batch loss from the last stage.
  const int parts = deck_.model.layers + 2;
  Kokkos::View<double*, model::Memory> totals("p2bw::totals", static_cast<size_t>(parts + 1));
  auto host = Kokkos::create_mirror_view(totals);
  if (grid_.replica() == 0) {
    const std::vector<double> sums = model_->grad_square_sums(exec_, grads_);
    const StageRange& range = map_.stages[static_cast<size_t>(grid_.stage())];
    const int first_part = range.has_embedding ? 0 : 1 + range.first_block;
    for (size_t i = 0; i < sums.size(); ++i) host(first_part + static_cast<int>(i)) = sums[i];
  }
  if (model_->has_head()) {
    double loss = 0.0;
    for (double value : losses_.at(batch)) loss += value;
    losses_.erase(batch);
    loss /= deck_.pipeline.microbatches;
    host(parts) = grid_.width() > 1 ? loss / grid_.width() : loss;
  }
  Kokkos::deep_copy(totals, host);
  timed(waited_, [&] {
    allreduce_sum<double>(totals, MPI_DOUBLE, grid_.world(), timeout, grid_.stage(),
                          "loss and gradient-norm " + what);
  });
  Kokkos::deep_copy(host, totals);
  double square = 0.0;
  for (int p = 0; p < parts; ++p) square += host(p);
  result_ = StepResult{};
  result_.step = batch + 1;
  result_.loss = host(parts);
  result_.grad_norm = std::sqrt(square);
  result_.skipped = !std::isfinite(result_.grad_norm);
  result_.lr = model::learning_rate(deck_.train, batch);
  result_.tokens = std::int64_t{deck_.pipeline.microbatches} * deck_.pipeline.width *
                   deck_.train.microbatch_size * deck_.model.seq_len;
}

void PipelineTrainer::update(const schedule::Action& action) {
  const model::FloatView newest = newest_weights();
  const model::FloatView out = weights_[action.buffer];
  P2BW_ASSERT(out.data() != nullptr, "the schedule writes a weight buffer that was not allocated");
  if (result_.skipped) {
    if (out.data() != newest.data())
      Kokkos::deep_copy(exec_, out, newest);  // versions still rotate
  } else {
    optimizer_->step(exec_, out, newest, grads_, result_.lr,
                     model::clip_scale(result_.grad_norm, deck_.train.grad_clip));
  }
  held_[action.buffer] = action.version;
  Kokkos::deep_copy(exec_, grads_, 0.0f);
}

void PipelineTrainer::account() {
  MemoryUse use;
  use.weights = bytes(weights_[0]) + bytes(weights_[1]);
  use.gradients = bytes(grads_);
  use.optimizer = bytes(optimizer_->first()) + bytes(optimizer_->second());
  const model::Cache probe = in_flight_.empty()
                                 ? (free_stashes_.empty() ? model::Cache{} : free_stashes_.front())
                                 : in_flight_.begin()->second;
  use.activations = stashes_ * bytes(probe) + bytes(scratch_) + bytes(scratch_out_);
  use.buffers = boundaries_ * model_->boundary_floats() * 4;
  use.workspace = model_->workspace_floats() * 4;
  if (use.total() > peak_.total()) peak_ = use;
}

}  // namespace p2bw::pipeline
