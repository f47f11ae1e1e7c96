// The pipeline executor: each rank runs its stage's actions from the checked schedule (batch by
// batch from a ScheduleStream) on its contiguous range of model parts. Activations and gradients
// move through a Transport identified by (microbatch, direction); reductions go through the
// Collectives; each microbatch on the stage is one record from its receive to its backward.
//
// Updates. The schedule's allreduce action of batch t posts the batch's reductions without
// blocking (StepReduction: data-parallel sum, tied embedding, global norm, loss, stop votes,
// timing). Under flush and gpipe the next batch runs on W(t+1), so the step action completes them
// and applies the update at once: the per-batch flush. Under 2bw batch t+1 runs on W(t), so the
// update that writes W(t+1) waits until W(t+1) is first needed: by the first forward of batch t+2,
// by the allreduce of batch t+1, by a checkpoint or at the end of the run. In the meantime the
// stage computes and the reductions complete: no step boundary stops the pipeline. W(t+1) is
// written over batch t's gradients, with no weight copy (weight_versions.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "comm/collectives.hpp"
#include "comm/process_grid.hpp"
#include "comm/transport.hpp"
#include "comm/transport_choice.hpp"
#include "config/deck.hpp"
#include "core/memory_bytes.hpp"
#include "data/loader.hpp"
#include "io/checkpoint.hpp"
#include "io/metrics_file.hpp"
#include "model/optimizer.hpp"
#include "model/stage_model.hpp"
#include "pipeline/compute_clock.hpp"
#include "pipeline/partition.hpp"
#include "pipeline/single_rank_trainer.hpp"
#include "pipeline/step_reduction.hpp"
#include "pipeline/weight_versions.hpp"
#include "schedule/stream.hpp"

namespace p2bw::pipeline {

class PipelineTrainer {
 public:
  // `tokens` is needed on the first and the last stage (others may pass nullptr).
  // With `resume`, the run continues after the checkpoint's step with its weights (both versions
  // under 2bw) and optimizer state, whatever layout and schedule wrote it; the pipeline refills.
  // `backend` is the run's comm::choose_transport() (nccl only in builds with the NCCL transport).
  PipelineTrainer(const config::Deck& deck, const comm::ProcessGrid& grid,
                  std::shared_ptr<const data::Tokens> tokens,
                  const io::CheckpointReader* resume = nullptr,
                  comm::TransportBackend backend = comm::TransportBackend::mpi);
  ~PipelineTrainer();

  // Runs this stage's actions of the next batch. `stop_requested` is this rank's vote to stop (a
  // signal arrived), reduced with the batch. Returns the steps whose results became known on
  // every rank, in order: under flush and gpipe the step just run; under 2bw the one before it
  // (its deferred update was applied during this batch). The same steps on every rank.
  std::vector<StepResult> step(bool stop_requested = false);

  // Collective: applies a deferred update and returns its result, and completes the per-stage
  // timing of every step run (take_stage_rows). Afterwards the newest weights are W(steps_done()).
  // Checkpoints need it first; the run calls it at its end.
  std::vector<StepResult> synchronize();

  // Steps whose batch has run (their update may still be deferred until synchronize()).
  std::int64_t steps_done() const { return steps_done_; }

  // Whether the run holds out a validation split (data.val_fraction > 0).
  bool has_validation() const { return !eval_schedule_.actions.empty(); }
  // Collective, after synchronize(), with a validation split: the mean loss per target position
  // of the newest weights W(steps_done()) on the validation split's first eval_sequences()
  // sequences, forward only through the pipeline (the checked forward-only schedule). The same
  // number on every rank and on every layout (d, w): each microbatch's loss goes to its own slot
  // of one world sum, and the slots are added in order.
  double evaluate();

  // Collective, after synchronize(): writes a checkpoint of the steps done under `checkpoints`
  // and returns its folder on rank 0.
  std::string save_checkpoint(const std::string& checkpoints, int keep);

  const StageMap& stage_map() const { return map_; }
  model::StageModel& model() { return *model_; }
  // W(newest): after synchronize(), the weights the next update starts from.
  model::FloatView newest_weights() const { return versions_.true_weights(); }
  // High-water mark of this rank's allocations.
  const MemoryBytes& memory() const { return peak_; }
  // Every stage's timing (replica 0) of the steps that became known, one vector per step in
  // order (the same on every rank); a step's timing travels with the next step's reductions.
  std::vector<std::vector<io::StageRow>> take_stage_rows() {
    return std::exchange(stage_rows_, {});
  }
  // Record every executed action (kept until taken).
  void enable_trace() { tracing_ = true; }
  std::vector<io::TraceEvent> take_trace() { return std::exchange(trace_, {}); }
  // Most microbatches whose activations were stashed at once.
  int peak_in_flight() const { return peak_in_flight_; }

 private:
  // One microbatch on this stage, from its receive (or forward) to its backward.
  struct Microbatch {
    model::Cache stash;      // what its backward needs (inputs only, with recomputation)
    int activation_in = -1;  // transport handle of the activation's receive
    StoreView output;        // forward output, until sent (not the last stage)
    int gradient_in = -1;    // transport handle of the output gradient's receive
    StoreView output_grad;   // (B, T, C) received output gradient (not the last stage)
    StoreView input_grad;    // (B, T, C) input gradient, until sent (not the first stage)
  };

  void run(const schedule::Action& action);
  Microbatch& microbatch(int mb);  // its record, made (with a stash from the free list) if new
  int links() const;               // neighbouring stages (0, 1 or 2)
  StoreView new_boundary();        // allocates one (B, T, C) boundary buffer
  StoreView take_boundary();       // a free boundary buffer
  void reap_sends();
  // Microbatch mb of `loader` (training or validation) into the cache, through the host buffers.
  void load_data(data::Loader& loader, int mb, model::Cache& cache);
  void copy_stash(const model::Cache& from, model::Cache& to) const;
  void forward(int mb, int version);
  void backward(int mb, int version);
  comm::Message activation_in(int mb);
  comm::Message activation_out(int mb);
  comm::Message gradient_in(int mb);
  comm::Message gradient_out(int mb);
  void send(const comm::Message& message);
  // The schedule's allreduce and step actions of `batch`.
  void post_reductions(int batch);
  void end_step(int batch);
  // Applies the pending update: completes its reductions, writes W(t+1) over batch t's gradients.
  void apply_update();
  StoreView weights(int version);          // W(version), applying the pending update if needed
  std::vector<StepResult> take_results();  // the results completed so far, in step order
  void await_receive(int& handle, const char* action, int mb);  // a posted receive, then -1
  void account();
  void trace_event(schedule::ActionKind kind, int mb, int version, double start, double end);
  double now() const;
  std::string where(const schedule::Action& action) const;

  config::Deck deck_;
  const comm::ProcessGrid& grid_;
  StageMap map_;
  std::unique_ptr<model::StageModel> model_;
  std::unique_ptr<model::Optimizer> optimizer_;
  std::unique_ptr<comm::Transport> transport_;
  std::unique_ptr<comm::Collectives> collectives_;
  std::unique_ptr<data::Loader> loader_;
  schedule::ScheduleStream stream_;
  // Evaluation: its schedule (no action lists without a validation split), loader, one microbatch's
  // activations, two (B, T, C) output buffers (not the last stage) and the per-slot loss sums and
  // target counts (2 · slots) of one world sum.
  schedule::Schedule eval_schedule_;
  std::unique_ptr<data::Loader> eval_loader_;
  model::Cache eval_cache_;
  StoreView eval_out_[2];
  DoubleView eval_totals_;
  model::Exec exec_;

  WeightVersions versions_;
  std::unique_ptr<StepReduction> reduction_;        // the batch whose update is pending, if active
  std::map<int, Microbatch> in_flight_;             // by microbatch
  std::vector<model::Cache> free_stashes_;          // stashes of finished microbatches, for reuse
  std::vector<StoreView> free_boundaries_;          // (B, T, C) buffers, for reuse
  std::vector<std::pair<int, StoreView>> sending_;  // handle, buffer of sends in flight
  int stashes_ = 0, boundaries_ = 0;                // allocated so far
  model::Cache scratch_;   // recomputation: one microbatch's full activations
  StoreView scratch_out_;  // recomputation: the re-forward's unused output
  // Last stage: the sums of the microbatch losses of the batches being run, on the device, in
  // kLossSlots slots (a batch takes a free one at its first forward and gives it back when its
  // reductions are posted), and which batch has which slot.
  static constexpr int kLossSlots = 3;
  DoubleView loss_sums_;
  std::map<int, int> loss_slots_;   // batch -> slot
  DoubleView loss_slot(int batch);  // the batch's slot (1), taken and zeroed at first use
  // Last stage: the loader's microbatch on the host (B, T), for the copies to the device.
  std::vector<std::int32_t> host_tokens_, host_targets_;

  bool stop_vote_ = false;
  std::vector<StepResult> known_;              // results completed, not yet handed out
  std::map<std::int64_t, StepTiming> timing_;  // this rank's timing of steps not yet reduced
  std::int64_t timed_through_ = 0;             // the last step whose timing every rank has
  std::vector<std::vector<io::StageRow>> stage_rows_;
  DoubleView timing_totals_;  // (4 d) synchronize()'s sum of the last step's timing

  std::int64_t steps_done_ = 0;
  double compute_s_ = 0, wait_s_ = 0;  // this step so far
  ComputeClock compute_clock_{exec_, [this] { return now(); },
                              [this](const ComputeClock::Interval& i) {
                                trace_event(i.kind, i.mb, i.version, i.start, i.end);
                              }};  // forward, backward and the optimizer step
  MemoryBytes peak_;
  bool tracing_ = false;
  bool started_ = false;
  std::vector<io::TraceEvent> trace_;
  std::chrono::steady_clock::time_point born_ = std::chrono::steady_clock::now();
  int peak_in_flight_ = 0;
};

}  // namespace p2bw::pipeline
