// Schedules of long runs, one batch at a time. A run of 100k batches has too many actions to hold
// whole, but every schedule here is periodic: after the first two batches of a phase, each batch
// on a stage is the same list of actions with microbatches, versions and batch numbers shifted,
// until the last batch drains. ScheduleStream keeps a short generated schedule per phase (flush
// warm-up, then 2bw; or the one phase of flush and gpipe), proves it with the checker, and hands
// out batch t's actions by shifting; tests show the stream equals generate() of the whole run.
//
// A stream may start at run batch first_batch (a run resumed after a checkpoint, see
// schedule.hpp): it then equals generate(..., first_batch). Its phases are what is left of the
// flush warm-up (if first_batch < K), then the 2bw phase from max(K, first_batch). When
// first_batch > K that phase starts by refilling the pipeline on W(first_batch-1), so its base is
// itself a resumed schedule: generate(2bw, d, m, 1+n, 0, 1), whose batch 1 refills on W0.
#pragma once

#include <vector>

#include "schedule/check.hpp"
#include "schedule/schedule.hpp"

namespace p2bw::schedule {

class ScheduleStream {
 public:
  // Same arguments and errors as generate().
  ScheduleStream(ScheduleKind kind, int stages, int microbatches, int batches, int sync_warmup,
                 int first_batch = 0);

  ScheduleKind kind() const { return kind_; }
  int stages() const { return stages_; }
  int microbatches() const { return microbatches_; }
  int batches() const { return batches_; }
  int sync_warmup() const { return sync_warmup_; }
  int first_batch() const { return first_batch_; }

  // The checker's verdict on the generated phases the stream is made of.
  const CheckResult& proof() const { return proof_; }

  // Actions of run batch t (first_batch <= t < batches; std::out_of_range otherwise) on `stage`:
  // everything after batch t-1's batch_end marker up to and including batch t's batch_end (the
  // last batch also takes any actions after it).
  std::vector<Action> batch(int stage, int t) const;

 private:
  struct Phase {
    int first_batch = 0;  // run batch of the phase's first batch
    int batches = 0;      // length of the phase in the run
    Schedule base;        // generated with min(batches, 5) batches from base.first_batch
    std::vector<std::vector<std::vector<Action>>> segments;  // [stage][batch of base]
  };
  Phase make_phase(ScheduleKind kind, int first_batch, int batches, bool refill) const;

  ScheduleKind kind_;
  int stages_, microbatches_, batches_, sync_warmup_, first_batch_;
  std::vector<Phase> phases_;
  CheckResult proof_;
};

}  // namespace p2bw::schedule
