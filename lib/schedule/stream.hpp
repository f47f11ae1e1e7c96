// Schedules of long runs, one batch at a time. A run of 100k batches has too many actions to hold
// whole, but every schedule here is periodic: after the first two batches of a phase, each batch
// on a stage is the same list of actions with microbatches, versions and batch numbers shifted,
// until the last batch drains. ScheduleStream keeps a short generated schedule per phase (flush
// warm-up, then 2bw; or the one phase of flush and gpipe), proves it with the checker, and hands
// out batch t's actions by shifting; tests show the stream equals generate() of the whole run.
#pragma once

#include <vector>

#include "schedule/check.hpp"
#include "schedule/schedule.hpp"

namespace p2bw::schedule {

class ScheduleStream {
 public:
  // Same arguments and errors as generate().
  ScheduleStream(ScheduleKind kind, int stages, int microbatches, int batches, int sync_warmup);

  ScheduleKind kind() const { return kind_; }
  int stages() const { return stages_; }
  int microbatches() const { return microbatches_; }
  int batches() const { return batches_; }
  int sync_warmup() const { return sync_warmup_; }

  // The checker's verdict on the generated phases the stream is made of.
  const CheckResult& proof() const { return proof_; }

  // Actions of batch t (0-based) on `stage`: everything after batch t-1's batch_end marker up to
  // and including batch t's batch_end (the last batch also takes any actions after it).
  std::vector<Action> batch(int stage, int t) const;

 private:
  struct Phase {
    int first_batch = 0;  // run batch of the phase's batch 0
    int batches = 0;      // length of the phase in the run
    Schedule base;        // generated with min(batches, 5) batches
    std::vector<std::vector<std::vector<Action>>> segments;  // [stage][batch of base]
  };
  Phase make_phase(ScheduleKind kind, int first_batch, int batches) const;

  ScheduleKind kind_;
  int stages_, microbatches_, batches_, sync_warmup_;
  std::vector<Phase> phases_;
  CheckResult proof_;
};

}  // namespace p2bw::schedule
