// Schedule generators (GPipe, PipeDream-Flush, PipeDream-2BW with optional synchronous warm-up),
// the weight-version rule and schedule queries.
#include "schedule/schedule.hpp"

#include <algorithm>
#include <tuple>

namespace p2bw::schedule {

Action Action::compute(ActionKind kind, int mb, int version) {
  Action a;
  a.kind = kind;
  a.mb = mb;
  a.version = version;
  return a;
}

Action Action::message(ActionKind kind, int mb) {
  Action a;
  a.kind = kind;
  a.mb = mb;
  return a;
}

Action Action::exchange(ActionKind kind, int send_mb, int recv_mb) {
  Action a;
  a.kind = kind;
  a.mb = send_mb;
  a.recv_mb = recv_mb;
  return a;
}

Action Action::marker(ActionKind kind, int batch) {
  Action a;
  a.kind = kind;
  a.batch = batch;
  return a;
}

Action Action::step(int batch, int version, int buffer, int retired) {
  Action a;
  a.kind = ActionKind::step;
  a.batch = batch;
  a.version = version;
  a.buffer = buffer;
  a.retired = retired;
  return a;
}

bool operator==(const Action& a, const Action& b) {
  return std::tie(a.kind, a.mb, a.recv_mb, a.version, a.batch, a.buffer, a.retired) ==
         std::tie(b.kind, b.mb, b.recv_mb, b.version, b.batch, b.buffer, b.retired);
}

bool operator==(const Schedule& a, const Schedule& b) {
  const auto fields = [](const Schedule& s) {
    return std::tie(s.kind, s.stages, s.microbatches, s.batches, s.sync_warmup, s.first_batch,
                    s.actions);
  };
  return fields(a) == fields(b);
}

const char* to_string(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::gpipe:
      return "gpipe";
    case ScheduleKind::flush:
      return "flush";
    case ScheduleKind::two_bw:
      return "2bw";
    case ScheduleKind::forward_only:
      return "forward-only";
  }
  return "?";
}

ScheduleKind parse_kind(const std::string& s) {
  for (ScheduleKind k : {ScheduleKind::gpipe, ScheduleKind::flush, ScheduleKind::two_bw,
                         ScheduleKind::forward_only}) {
    if (to_string(k) == s) return k;
  }
  throw ScheduleError("unknown schedule kind '" + s +
                      "' (expected gpipe, flush, 2bw or forward-only)");
}

bool is_backward(ActionKind kind) {
  return kind == ActionKind::backward || kind == ActionKind::backward_input ||
         kind == ActionKind::backward_weight;
}

bool is_compute(ActionKind kind) {
  return kind == ActionKind::forward || is_backward(kind);
}

bool is_communication(ActionKind kind) {
  switch (kind) {
    case ActionKind::send_act:
    case ActionKind::recv_act:
    case ActionKind::send_grad:
    case ActionKind::recv_grad:
    case ActionKind::send_act_recv_grad:
    case ActionKind::send_grad_recv_act:
      return true;
    default:
      return false;
  }
}

int weight_version(ScheduleKind kind, int microbatches, int sync_warmup, int mb) {
  const int batch = batch_of(microbatches, mb);
  if (kind != ScheduleKind::two_bw || batch < sync_warmup) return batch;
  return sync_warmup + std::max(batch - sync_warmup - 1, 0);
}

int weight_buffer(ScheduleKind kind, int sync_warmup, int version) {
  if (kind != ScheduleKind::two_bw || version <= sync_warmup) return 0;
  return (version - sync_warmup) % 2;
}

std::array<int, 2> initial_buffers(ScheduleKind kind, int sync_warmup, int first_batch) {
  if (kind != ScheduleKind::two_bw || first_batch <= sync_warmup) return {first_batch, -1};
  std::array<int, 2> held{};
  held[weight_buffer(kind, sync_warmup, first_batch)] = first_batch;
  held[weight_buffer(kind, sync_warmup, first_batch - 1)] = first_batch - 1;
  return held;
}

int activation_bound(ScheduleKind kind, int stages, int microbatches, int stage) {
  if (kind == ScheduleKind::gpipe) return microbatches;
  if (kind == ScheduleKind::forward_only) return 1;  // from its forward until its send
  return std::min(stages - stage, microbatches);
}

int max_in_flight(const Schedule& schedule, int stage) {
  int now = 0;
  int peak = 0;
  for (const Action& a : schedule.actions.at(stage)) {
    if (a.kind == ActionKind::forward) peak = std::max(peak, ++now);
    if (a.kind == ActionKind::backward || a.kind == ActionKind::backward_weight) --now;
  }
  return peak;
}

int weight_buffers_needed(const Schedule& schedule, int stage) {
  int buffers = 1;
  for (const Action& a : schedule.actions.at(stage)) {
    if (a.kind == ActionKind::step) buffers = std::max(buffers, a.buffer + 1);
  }
  return buffers;
}

namespace {

// Appends one stage's actions; tracks which version each weight buffer holds so that every
// step records the buffer it writes and the version it retires.
class StageBuilder {
 public:
  StageBuilder(const Schedule& schedule, int stage, std::vector<Action>& out)
      : sched_(schedule),
        stage_(stage),
        out_(out),
        held_(initial_buffers(schedule.kind, schedule.sync_warmup, schedule.first_batch)) {
    out_.push_back(Action::marker(ActionKind::batch_begin, schedule.first_batch));
  }

  // GPipe batch: all forwards, then all backwards in microbatch order (not GPipe's reverse
  // order: gradients then accumulate in the same order as flush and the single-rank reference,
  // so gpipe and flush give bitwise-identical weights), then the update.
  void gpipe_batch(int batch) {
    const int first = batch * sched_.microbatches + 1;
    const int last = first + sched_.microbatches - 1;
    for (int mb = first; mb <= last; ++mb) {
      if (has_prev()) message(ActionKind::recv_act, mb);
      forward(mb);
      if (has_next()) message(ActionKind::send_act, mb);
    }
    for (int mb = first; mb <= last; ++mb) {
      if (has_next()) message(ActionKind::recv_grad, mb);
      backward(mb);
      if (has_prev()) message(ActionKind::send_grad, mb);
    }
    end_batch(batch);
  }

  // 1F1B over microbatches first .. first+count-1: warm-up forwards, steady (F, B) pairs with
  // grouped exchanges, cool-down backwards. A batch ends after its m-th backward.
  void one_f_one_b(int first, int count) {
    const int warm = std::min(sched_.stages - stage_ - 1, count);
    const int steady = count - warm;
    int next_f = first;
    int next_b = first;
    for (int i = 0; i < warm; ++i, ++next_f) {
      if (has_prev()) message(ActionKind::recv_act, next_f);
      forward(next_f);
      if (has_next()) message(ActionKind::send_act, next_f);
    }
    if (steady > 0 && has_prev()) message(ActionKind::recv_act, next_f);
    for (int i = 0; i < steady; ++i, ++next_f, ++next_b) {
      forward(next_f);
      if (has_next()) {
        out_.push_back(Action::exchange(ActionKind::send_act_recv_grad, next_f, next_b));
      }
      backward(next_b);
      if (has_prev()) {
        out_.push_back(i + 1 < steady
                           ? Action::exchange(ActionKind::send_grad_recv_act, next_b, next_f + 1)
                           : Action::message(ActionKind::send_grad, next_b));
      }
      end_batch_after(next_b);
    }
    for (int i = 0; i < warm; ++i, ++next_b) {
      if (has_next()) message(ActionKind::recv_grad, next_b);
      backward(next_b);
      if (has_prev()) message(ActionKind::send_grad, next_b);
      end_batch_after(next_b);
    }
  }

 private:
  bool has_prev() const { return stage_ > 0; }
  bool has_next() const { return stage_ + 1 < sched_.stages; }
  int version(int mb) const {
    return weight_version(sched_.kind, sched_.microbatches, sched_.sync_warmup, mb);
  }
  void message(ActionKind kind, int mb) { out_.push_back(Action::message(kind, mb)); }
  void forward(int mb) { out_.push_back(Action::forward(mb, version(mb))); }
  void backward(int mb) { out_.push_back(Action::backward(mb, version(mb))); }

  void end_batch_after(int mb) {
    if (mb % sched_.microbatches == 0) end_batch(batch_of(sched_.microbatches, mb));
  }

  // All-reduce, step into the buffer of the retiring version, close the batch, open the next.
  void end_batch(int batch) {
    const int next = batch + 1;
    const int buffer = weight_buffer(sched_.kind, sched_.sync_warmup, next);
    out_.push_back(Action::marker(ActionKind::allreduce, batch));
    out_.push_back(Action::step(batch, next, buffer, held_[buffer]));
    held_[buffer] = next;
    out_.push_back(Action::marker(ActionKind::batch_end, batch));
    if (next < sched_.batches) out_.push_back(Action::marker(ActionKind::batch_begin, next));
  }

  const Schedule& sched_;
  int stage_;
  std::vector<Action>& out_;
  std::array<int, 2> held_;  // version held by each buffer, -1 for none
};

}  // namespace

Schedule generate(ScheduleKind kind, int stages, int microbatches, int batches, int sync_warmup,
                  int first_batch) {
  if (stages < 1 || microbatches < 1 || batches < 1) {
    throw ScheduleError("schedule needs stages >= 1, microbatches >= 1 and batches >= 1 (got d=" +
                        std::to_string(stages) + ", m=" + std::to_string(microbatches) +
                        ", batches=" + std::to_string(batches) + ")");
  }
  if (sync_warmup < 0 || sync_warmup > batches) {
    throw ScheduleError("sync_warmup must lie in [0, batches] (got " + std::to_string(sync_warmup) +
                        ")");
  }
  if (sync_warmup > 0 && kind != ScheduleKind::two_bw) {
    throw ScheduleError("sync_warmup applies to 2bw only");
  }
  if (kind == ScheduleKind::forward_only) {
    throw ScheduleError("a forward-only schedule comes from generate_forward_only()");
  }
  if (kind == ScheduleKind::two_bw && microbatches < stages) {
    throw ScheduleError("2bw needs microbatches >= stages (got m=" + std::to_string(microbatches) +
                        ", d=" + std::to_string(stages) + ")");
  }
  if (first_batch < 0 || first_batch >= batches) {
    throw ScheduleError("first_batch must lie in [0, batches) (got " + std::to_string(first_batch) +
                        ", batches=" + std::to_string(batches) + ")");
  }
  Schedule schedule;
  schedule.kind = kind;
  schedule.stages = stages;
  schedule.microbatches = microbatches;
  schedule.batches = batches;
  schedule.sync_warmup = sync_warmup;
  schedule.first_batch = first_batch;
  schedule.actions.resize(stages);
  // First batch of the 2bw phase: its 1F1B loop starts with a warm-up (fills the pipeline).
  const int two_bw_start = std::max(sync_warmup, first_batch);
  for (int s = 0; s < stages; ++s) {
    StageBuilder builder(schedule, s, schedule.actions[s]);
    const int flush_batches = kind == ScheduleKind::two_bw ? sync_warmup : batches;
    for (int t = first_batch; t < flush_batches; ++t) {
      if (kind == ScheduleKind::gpipe) {
        builder.gpipe_batch(t);
      } else {
        builder.one_f_one_b(t * microbatches + 1, microbatches);
      }
    }
    if (kind == ScheduleKind::two_bw && two_bw_start < batches) {
      builder.one_f_one_b(two_bw_start * microbatches + 1, (batches - two_bw_start) * microbatches);
    }
  }
  return schedule;
}

Schedule generate_forward_only(int stages, int microbatches) {
  if (stages < 1 || microbatches < 1) {
    throw ScheduleError("a forward-only schedule needs stages >= 1 and microbatches >= 1 (got d=" +
                        std::to_string(stages) + ", m=" + std::to_string(microbatches) + ")");
  }
  Schedule schedule;
  schedule.kind = ScheduleKind::forward_only;
  schedule.stages = stages;
  schedule.microbatches = microbatches;
  schedule.batches = 1;
  schedule.actions.resize(stages);
  for (int s = 0; s < stages; ++s) {
    std::vector<Action>& list = schedule.actions[s];
    for (int mb = 1; mb <= microbatches; ++mb) {
      if (s > 0) list.push_back(Action::message(ActionKind::recv_act, mb));
      list.push_back(Action::forward(mb, 0));
      if (s + 1 < stages) list.push_back(Action::message(ActionKind::send_act, mb));
    }
  }
  return schedule;
}

}  // namespace p2bw::schedule
