// The reductions of one batch on one rank, as a chain of non-blocking collectives that the
// executor posts after the stage's last backward of the batch and advances between its actions:
//   1. the data-parallel gradient sum over the w replicas of the stage (w > 1);
//   2. the tied embedding: both copies get a + b, between the first and the last stage (d > 1) or
//      locally (d = 1);
//   3. one world sum of the totals: each part's gradient square sum (from replica 0 of its stage:
//      one non-zero contribution per slot, so the sum is exact and in part order, as the
//      single-rank reference sums it), the batch loss, the ranks' stop votes, and every stage's
//      timing of an earlier step (replica 0 of the stage) for the metrics.
// Nothing in it blocks until complete(), which the executor calls only when the update needs the
// result.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/collectives.hpp"
#include "comm/process_grid.hpp"
#include "config/deck.hpp"
#include "io/metrics_file.hpp"
#include "model/stage_model.hpp"

namespace p2bw::pipeline {

// One rank's time in one step: computing (forward, backward, optimizer), waiting (for messages
// and collectives) and the rest, and its allocation high-water mark.
struct StepTiming {
  double compute_s = 0, wait_s = 0, idle_s = 0;
  std::int64_t peak_memory_bytes = 0;
};

// A step timing as the 4 doubles it travels as in a world sum (compute, wait, idle, peak), and
// back as a stage's metrics row.
constexpr int kTimingValues = 4;
void put_timing(double* slots, const StepTiming& timing);
io::StageRow timing_row(const double* slots, std::int64_t step);

class StepReduction {
 public:
  struct Totals {
    int batch = -1;
    double grad_norm = 0;              // global, before clipping
    double loss = 0;                   // mean over the batch's microbatches and replicas
    int stop_votes = 0;                // ranks that asked to stop
    std::int64_t timing_step = -1;     // the step `stages` belongs to; -1 without
    std::vector<io::StageRow> stages;  // that step's timing of every stage (replica 0)
  };

  StepReduction(const config::Deck& deck, const comm::ProcessGrid& grid,
                comm::Collectives& collectives, const model::StageModel& model, int first_part);

  // Starts the reductions of `batch` over the gradients `grads` (each already scaled by 1/(m·w)).
  // loss_sum: (1) on the device, the sum of the batch's microbatch losses (last stage; empty
  // elsewhere), copied on the device at once (its buffer is free afterwards). timing: this
  // rank's timing of step `timing_step` (1-based, the same on every rank; -1 for none).
  void post(const Exec& exec, int batch, FloatView grads, DoubleView loss_sum, bool stop,
            std::int64_t timing_step, const StepTiming& timing);
  bool active() const { return phase_ != Phase::idle; }
  int batch() const { return batch_; }
  FloatView gradients() const { return grads_; }  // the batch's, summed once complete
  // Advances the chain without blocking.
  void progress(const Exec& exec);
  // Waits for the rest of the chain (with the run's deadline) and returns the totals.
  Totals complete(const Exec& exec);

 private:
  // Each phase but idle and done has one collective in flight (handle_).
  enum class Phase { idle, data_parallel, tied, totals, done };
  void advance(const Exec& exec);  // the collective of the phase has completed: start the next
  void start_tied(const Exec& exec);
  void start_totals(const Exec& exec);

  const config::Deck& deck_;
  const comm::ProcessGrid& grid_;
  comm::Collectives& collectives_;
  const model::StageModel& model_;
  int first_part_;
  FloatView tied_;  // this stage's copy of the tied embedding's gradient (d > 1), else empty
  DoubleView totals_;
  HostMirror<DoubleView> host_;
  DoubleView loss_sum_;  // (1) the posted batch's loss sum (last stage)

  Phase phase_ = Phase::idle;
  int handle_ = -1;
  int batch_ = -1;
  FloatView grads_;
  bool stop_ = false;
  std::int64_t timing_step_ = -1;
  StepTiming timing_;
};

}  // namespace p2bw::pipeline
