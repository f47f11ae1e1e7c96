// Batch-at-a-time schedules by shifting periodic segments; see stream.hpp.
#include "schedule/stream.hpp"

#include <algorithm>

namespace p2bw::schedule {

namespace {

constexpr int kBaseBatches = 5;  // first two, two steady ones, the last

// Splits a stage's actions after each batch_end marker.
std::vector<std::vector<Action>> split(const std::vector<Action>& actions, int batches) {
  std::vector<std::vector<Action>> segments(static_cast<size_t>(batches));
  int t = 0;
  for (const Action& action : actions) {
    segments[static_cast<size_t>(std::min(t, batches - 1))].push_back(action);
    if (action.kind == ActionKind::batch_end) ++t;
  }
  return segments;
}

}  // namespace

ScheduleStream::ScheduleStream(ScheduleKind kind, int stages, int microbatches, int batches,
                               int sync_warmup)
    : kind_(kind),
      stages_(stages),
      microbatches_(microbatches),
      batches_(batches),
      sync_warmup_(sync_warmup) {
  if (batches < 1)
    throw ScheduleError("schedule needs batches >= 1 (got " + std::to_string(batches) + ")");
  if (sync_warmup < 0 || sync_warmup > batches)
    throw ScheduleError("sync_warmup must lie in [0, batches] (got " + std::to_string(sync_warmup) +
                        ")");
  if (sync_warmup > 0 && kind != ScheduleKind::two_bw)
    throw ScheduleError("sync_warmup applies to 2bw only");
  if (kind == ScheduleKind::two_bw && sync_warmup > 0)
    phases_.push_back(make_phase(ScheduleKind::flush, 0, sync_warmup));
  if (sync_warmup < batches)
    phases_.push_back(make_phase(kind, sync_warmup, batches - sync_warmup));
  for (const Phase& phase : phases_) {
    CheckResult result = check(phase.base);
    proof_.findings.insert(proof_.findings.end(), result.findings.begin(), result.findings.end());
  }
}

ScheduleStream::Phase ScheduleStream::make_phase(ScheduleKind kind, int first_batch,
                                                 int batches) const {
  Phase phase;
  phase.first_batch = first_batch;
  phase.batches = batches;
  const int base_batches = std::min(batches, kBaseBatches);
  phase.base = generate(kind, stages_, microbatches_, base_batches, 0);
  for (int s = 0; s < stages_; ++s)
    phase.segments.push_back(split(phase.base.actions[static_cast<size_t>(s)], base_batches));
  return phase;
}

std::vector<Action> ScheduleStream::batch(int stage, int t) const {
  const Phase& phase = t < sync_warmup_ || phases_.size() == 1 ? phases_.front() : phases_.back();
  const int local = t - phase.first_batch;  // batch within the phase
  const int base_batches = phase.base.batches;
  // Which base segment batch `local` repeats: the first two and the last are their own; the
  // one before the last is base batch 3; the steady batches in between are base batch 2.
  int source = local;
  if (phase.batches > base_batches) {
    if (local == phase.batches - 1)
      source = base_batches - 1;
    else if (local == phase.batches - 2)
      source = base_batches - 2;
    else if (local >= 2)
      source = 2;
  }
  const int shift = t - source;  // batches to add (phase start included)
  std::vector<Action> actions =
      phase.segments[static_cast<size_t>(stage)][static_cast<size_t>(source)];
  for (Action& a : actions) {
    if (a.mb > 0) a.mb += shift * microbatches_;
    if (a.recv_mb > 0) a.recv_mb += shift * microbatches_;
    if (a.version >= 0) a.version += shift;
    if (a.batch >= 0) a.batch += shift;
    if (a.retired >= 0) a.retired += shift;
    if (a.kind == ActionKind::step) a.buffer = weight_buffer(kind_, sync_warmup_, a.version);
  }
  return actions;
}

}  // namespace p2bw::schedule
