// Batch-at-a-time schedules by shifting periodic segments; see stream.hpp.
#include "schedule/stream.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

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
                               int sync_warmup, int first_batch)
    : kind_(kind),
      stages_(stages),
      microbatches_(microbatches),
      batches_(batches),
      sync_warmup_(sync_warmup),
      first_batch_(first_batch) {
  if (batches < 1)
    throw ScheduleError("schedule needs batches >= 1 (got " + std::to_string(batches) + ")");
  if (sync_warmup < 0 || sync_warmup > batches)
    throw ScheduleError("sync_warmup must lie in [0, batches] (got " + std::to_string(sync_warmup) +
                        ")");
  if (sync_warmup > 0 && kind != ScheduleKind::two_bw)
    throw ScheduleError("sync_warmup applies to 2bw only");
  if (first_batch < 0 || first_batch >= batches)
    throw ScheduleError("first_batch must lie in [0, batches) (got " + std::to_string(first_batch) +
                        ", batches=" + std::to_string(batches) + ")");
  // Flush batches (the whole run of flush and gpipe), then the 2bw phase.
  const int flush_end = kind == ScheduleKind::two_bw ? sync_warmup : batches;
  if (first_batch < flush_end)
    phases_.push_back(make_phase(kind == ScheduleKind::two_bw ? ScheduleKind::flush : kind,
                                 first_batch, flush_end - first_batch, false));
  const int two_bw_start = std::max(sync_warmup, first_batch);
  if (kind == ScheduleKind::two_bw && two_bw_start < batches)
    phases_.push_back(
        make_phase(kind, two_bw_start, batches - two_bw_start, two_bw_start > sync_warmup));
  for (const Phase& phase : phases_) {
    CheckResult result = check(phase.base);
    proof_.findings.insert(proof_.findings.end(), result.findings.begin(), result.findings.end());
  }
}

// A phase of `batches` run batches from `first_batch`. Its base starts at batch 0 of a fresh run
// or, for a 2bw phase resumed past the warm-up (`refill`: first_batch > K), at batch 1 of a run
// resumed there: base batch 1 refills on W0 as run batch first_batch does on W(first_batch-1).
ScheduleStream::Phase ScheduleStream::make_phase(ScheduleKind kind, int first_batch, int batches,
                                                 bool refill) const {
  Phase phase;
  phase.first_batch = first_batch;
  phase.batches = batches;
  const int base_batches = std::min(batches, kBaseBatches);
  const int base_first = refill ? 1 : 0;
  phase.base = generate(kind, stages_, microbatches_, base_first + base_batches, 0, base_first);
  for (int s = 0; s < stages_; ++s)
    phase.segments.push_back(split(phase.base.actions[static_cast<size_t>(s)], base_batches));
  return phase;
}

std::vector<Action> ScheduleStream::batch(int stage, int t) const {
  if (t < first_batch_ || t >= batches_) {
    throw std::out_of_range("ScheduleStream::batch: batch " + std::to_string(t) + " outside [" +
                            std::to_string(first_batch_) + ", " + std::to_string(batches_) + ")");
  }
  const Phase& phase = t < phases_.back().first_batch ? phases_.front() : phases_.back();
  const int local = t - phase.first_batch;  // batch within the phase
  const int base_batches = phase.base.batches - phase.base.first_batch;
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
  const int shift = t - (phase.base.first_batch + source);  // batches to add
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
