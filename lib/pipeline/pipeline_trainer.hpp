// The pipeline executor: each rank runs its stage's actions from the checked schedule (batch by
// batch from a ScheduleStream) on its contiguous range of model parts. Activations and gradients
// move through a Transport identified by (microbatch, direction); weight versions live in one or
// two flat buffers swapped by handle (2bw writes W_next = Opt(W_new, gradient at W_old) into the
// retired buffer); gradients are summed over the w replicas and between the tied embedding's two
// copies; clipping and the non-finite check use the global gradient norm over all stages.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "comm/process_grid.hpp"
#include "comm/transport.hpp"
#include "config/deck.hpp"
#include "data/loader.hpp"
#include "io/checkpoint.hpp"
#include "model/optimizer.hpp"
#include "model/stage_model.hpp"
#include "pipeline/partition.hpp"
#include "pipeline/single_rank_trainer.hpp"
#include "schedule/stream.hpp"

namespace p2bw::pipeline {

// One executed action of the trace (output.trace): kind (schedule::ActionKind), microbatch and
// version (-1 where none), start and end in seconds since the trainer was made.
struct TraceEvent {
  int kind = 0, microbatch = -1, version = -1;
  double start = 0, end = 0;
};

// Bytes this rank has allocated, by category (the executor's own accounting of its Views).
struct MemoryUse {
  std::int64_t weights = 0, gradients = 0, optimizer = 0, activations = 0, buffers = 0,
               workspace = 0;
  std::int64_t total() const {
    return weights + gradients + optimizer + activations + buffers + workspace;
  }
};

class PipelineTrainer {
 public:
  // `tokens` is needed on the first and the last stage (others may pass nullptr).
  // With `resume`, the run continues after the checkpoint's step with its weights (both versions
  // under 2bw) and optimizer state, whatever layout wrote it; the pipeline refills.
  PipelineTrainer(const config::Deck& deck, const comm::ProcessGrid& grid,
                  std::shared_ptr<const data::Tokens> tokens,
                  const io::CheckpointReader* resume = nullptr);
  ~PipelineTrainer();

  // Runs the actions of the next batch; the result (loss, norm, lr) is the same on every rank.
  StepResult step();

  std::int64_t steps_done() const { return steps_done_; }

  // Collective: writes a checkpoint of the steps done so far under `checkpoints` (replica 0 of
  // every stage writes its tensors, rank 0 commits) and returns its folder on rank 0.
  std::string save_checkpoint(const std::string& checkpoints, int keep);
  const StageMap& stage_map() const { return map_; }
  model::StageModel& model() { return *model_; }
  model::FloatView newest_weights() const;
  // High-water mark of this rank's allocations.
  const MemoryUse& memory() const { return peak_; }
  // Record every executed action (kept until taken).
  void enable_trace() { tracing_ = true; }
  std::vector<TraceEvent> take_trace() { return std::move(trace_); }

  // Most microbatches whose activations were stashed at once.
  int peak_in_flight() const { return peak_in_flight_; }

 private:
  void run(const schedule::Action& action);
  model::Cache& stash_for(int mb);  // the microbatch's stash, taken from the free list if new
  model::FloatView take_boundary();
  void reap_sends();
  void load_data(int mb, model::Cache& cache);
  void copy_stash(const model::Cache& from, model::Cache& to) const;
  void forward(int mb, int version);
  void backward(int mb, int version);
  void post_receive_activation(int mb);
  void post_receive_gradient(int mb);
  void send_activation(int mb);
  void send_gradient(int mb);
  void reduce_gradients(int batch);
  void update(const schedule::Action& action);
  model::FloatView buffer_of(int version) const;
  void account();
  void restore(const io::CheckpointReader& checkpoint);
  std::string where(const schedule::Action& action) const;

  config::Deck deck_;
  const comm::ProcessGrid& grid_;
  StageMap map_;
  std::unique_ptr<model::StageModel> model_;
  std::unique_ptr<model::Optimizer> optimizer_;
  std::unique_ptr<comm::Transport> transport_;
  std::unique_ptr<data::Loader> loader_;
  schedule::ScheduleStream stream_;
  model::Exec exec_;

  model::FloatView weights_[2];
  int held_[2] = {0, -1};  // version held by each weight buffer
  model::FloatView grads_;
  std::vector<model::Cache> free_stashes_;         // stashes of finished microbatches, for reuse
  std::vector<model::FloatView> free_boundaries_;  // (B, T, C) buffers, for reuse
  int stashes_ = 0, boundaries_ = 0;               // allocated so far
  model::Cache scratch_;                   // recomputation: one microbatch's full activations
  model::FloatView scratch_out_;           // recomputation: the re-forward's unused output
  std::map<int, model::Cache> in_flight_;  // microbatch -> its stash
  std::map<int, model::FloatView> act_out_, grad_in_, grad_out_;
  std::map<int, int> act_in_handle_, grad_in_handle_;
  std::vector<std::pair<int, model::FloatView>>
      sending_;  // handle, buffer of sends not known complete
  std::map<std::int64_t, std::vector<double>>
      losses_;  // batch -> losses of its microbatches (last stage)
  StepResult result_;
  std::int64_t steps_done_ = 0;
  MemoryUse peak_;
  double waited_ = 0;  // seconds spent waiting on transfers and collectives
  bool tracing_ = false;
  bool started_ = false;
  std::vector<TraceEvent> trace_;
  std::chrono::steady_clock::time_point born_ = std::chrono::steady_clock::now();
  int peak_in_flight_ = 0;
};

}  // namespace p2bw::pipeline
