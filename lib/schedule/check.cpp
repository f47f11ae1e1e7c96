// The schedule checker: per-stage rules (order, versions, buffers, in-flight bound, batch
// structure), message matching per channel, NCCL's order rule per pair of ranks, and a
// deadlock-finding replay.
#include "schedule/check.hpp"

#include <algorithm>
#include <array>
#include <map>
#include <set>
#include <string>

#include "schedule/replay.hpp"
#include "schedule/text.hpp"

namespace p2bw::schedule {

namespace {

std::string weights(int version) {
  return "W" + std::to_string(version);
}
std::string num(int value) {
  return std::to_string(value);
}

struct MicrobatchState {
  int forward = -1;   // action index of the forward
  int backward = -1;  // of B or Bi: the input gradient exists
  int weight = -1;    // of B or Bw: the weight gradient exists, the activation is released
  int version = -1;   // version of the forward
  bool act_received = false;
  bool act_sent = false;
  bool grad_received = false;
  bool grad_sent = false;
};

// Walks one stage's list once, applying the per-stage rules of check.hpp.
class StageChecker {
 public:
  StageChecker(const Schedule& s, int stage, std::vector<Finding>& out)
      : sched_(s),
        stage_(stage),
        out_(out),
        has_prev_(stage > 0),
        has_next_(stage + 1 < s.stages),
        forward_only_(s.kind == ScheduleKind::forward_only),
        bound_(activation_bound(s.kind, s.stages, s.microbatches, stage)),
        mbs_(s.total_microbatches() + 1),
        allreduce_at_(s.batches, -1),
        step_at_(s.batches, -1),
        held_(initial_buffers(s.kind, s.sync_warmup, s.first_batch)),
        newest_(s.first_batch),
        next_marker_(2 * s.first_batch) {
    const std::vector<Action>& list = s.actions[stage];
    for (size_t i = 0; i < list.size(); ++i) {
      if (is_compute(list[i].kind)) last_use_[list[i].version] = static_cast<int>(i);
    }
  }

  void run() {
    const std::vector<Action>& list = sched_.actions[stage_];
    for (size_t i = 0; i < list.size(); ++i) {
      index_ = static_cast<int>(i);
      action_ = &list[i];
      visit(list[i]);
    }
    index_ = -1;
    finish();
  }

 private:
  void report(const std::string& what) {
    out_.push_back({stage_, index_, "[" + to_string(*action_) + "] " + what});
  }

  void visit(const Action& a) {
    if (forward_only_ && a.kind != ActionKind::forward && a.kind != ActionKind::send_act &&
        a.kind != ActionKind::recv_act)
      return report("a forward-only schedule has only forwards, activation sends and receives");
    switch (a.kind) {
      case ActionKind::forward:
        forward(a);
        break;
      case ActionKind::backward:
      case ActionKind::backward_input:
      case ActionKind::backward_weight:
        backward(a);
        break;
      case ActionKind::send_act:
        send_act(a.mb);
        break;
      case ActionKind::recv_act:
        recv_act(a.mb);
        break;
      case ActionKind::send_grad:
        send_grad(a.mb);
        break;
      case ActionKind::recv_grad:
        recv_grad(a.mb);
        break;
      case ActionKind::send_act_recv_grad:
        send_act(a.mb);
        recv_grad(a.recv_mb);
        break;
      case ActionKind::send_grad_recv_act:
        send_grad(a.mb);
        recv_act(a.recv_mb);
        break;
      case ActionKind::allreduce:
        allreduce(a.batch);
        break;
      case ActionKind::step:
        step(a);
        break;
      case ActionKind::batch_begin:
      case ActionKind::batch_end:
        marker(a);
        break;
    }
  }

  bool mb_ok(int mb) {
    if (mb >= sched_.first_microbatch() && mb <= sched_.total_microbatches()) return true;
    report("microbatch " + num(mb) + " outside " + num(sched_.first_microbatch()) + ".." +
           num(sched_.total_microbatches()));
    return false;
  }

  bool batch_ok(int batch) {
    if (batch >= sched_.first_batch && batch < sched_.batches) return true;
    report("batch " + num(batch) + " outside " + num(sched_.first_batch) + ".." +
           num(sched_.batches - 1));
    return false;
  }

  void require_held(int version) {
    if (version >= 0 && (version == held_[0] || version == held_[1])) return;
    report("uses " + weights(version) + ", which no weight buffer holds (" + held_text() + ")");
  }

  std::string held_text() const {
    std::string text;
    for (int b = 0; b < 2; ++b) {
      text += (b ? ", buffer 1: " : "buffer 0: ") + (held_[b] < 0 ? "empty" : weights(held_[b]));
    }
    return text;
  }

  // Alive after the current action: the newest version, versions of in-flight microbatches
  // and versions a later compute action of this stage uses. Grows only at steps.
  void check_alive() {
    std::set<int> alive{newest_};
    for (const auto& [version, count] : in_flight_versions_) alive.insert(version);
    for (const auto& [version, last] : last_use_) {
      if (version <= newest_ && last > index_) alive.insert(version);
    }
    const size_t limit = sched_.kind == ScheduleKind::two_bw ? 2 : 1;
    if (alive.size() <= limit) return;
    std::string list;
    for (int version : alive) list += (list.empty() ? "" : ", ") + weights(version);
    report(num(static_cast<int>(alive.size())) + " versions alive (" + list + "), at most " +
           num(static_cast<int>(limit)) + " allowed");
  }

  void forward(const Action& a) {
    if (!mb_ok(a.mb)) return;
    MicrobatchState& mb = mbs_[a.mb];
    if (mb.forward >= 0) {
      return report("second forward of mb " + num(a.mb) + " (first at action " + num(mb.forward) +
                    ")");
    }
    if (has_prev_ && !mb.act_received) {
      report("forward before the activation of mb " + num(a.mb) + " is received");
    }
    const int expected = weight_version(sched_.kind, sched_.microbatches, sched_.sync_warmup, a.mb);
    if (a.version != expected) {
      report("forward on " + weights(a.version) + ", the " + to_string(sched_.kind) +
             " rule gives " + weights(expected));
    }
    require_held(a.version);
    mb.forward = index_;
    mb.version = a.version;
    ++in_flight_versions_[a.version];
    if (++in_flight_ > bound_) {
      report(num(in_flight_) + " activations in flight, the bound for this stage is " +
             num(bound_));
    }
    if (forward_only_ && !has_next_) release(mb);  // the loss is all the last stage keeps
  }

  // A microbatch's activations are no longer needed (its backward, or forward-only: its send).
  void release(const MicrobatchState& mb) {
    --in_flight_;
    if (--in_flight_versions_[mb.version] == 0) in_flight_versions_.erase(mb.version);
  }

  void backward(const Action& a) {
    if (!mb_ok(a.mb)) return;
    MicrobatchState& mb = mbs_[a.mb];
    if (mb.forward < 0) return report("backward of mb " + num(a.mb) + " before its forward");
    if (a.kind == ActionKind::backward_weight) {
      if (mb.backward < 0 || mb.weight >= 0) {
        return report(mb.weight >= 0 ? "second weight-gradient backward of mb " + num(a.mb)
                                     : "weight-gradient half before the input-gradient half");
      }
    } else {
      if (mb.backward >= 0) {
        return report("second backward of mb " + num(a.mb) + " (first at action " +
                      num(mb.backward) + ")");
      }
      if (has_next_ && !mb.grad_received) {
        report("backward before the gradient of mb " + num(a.mb) + " is received");
      }
      mb.backward = index_;
    }
    if (a.version != mb.version) {
      report("backward on " + weights(a.version) + " but the forward of mb " + num(a.mb) +
             " used " + weights(mb.version));
    }
    require_held(a.version);
    if (a.kind == ActionKind::backward_input) return;
    mb.weight = index_;
    release(mb);
  }

  void send_act(int mb) {
    if (!has_next_) return report("the last stage has no next stage to send an activation to");
    if (!mb_ok(mb)) return;
    MicrobatchState& st = mbs_[mb];
    if (st.forward < 0) report("activation of mb " + num(mb) + " sent before its forward");
    if (st.act_sent) report("activation of mb " + num(mb) + " sent twice");
    if (forward_only_ && st.forward >= 0 && !st.act_sent) release(st);
    st.act_sent = true;
  }

  void recv_act(int mb) {
    if (!has_prev_) return report("stage 0 has no previous stage to receive an activation from");
    if (!mb_ok(mb)) return;
    if (mbs_[mb].act_received) report("activation of mb " + num(mb) + " received twice");
    mbs_[mb].act_received = true;
  }

  void send_grad(int mb) {
    if (!has_prev_) return report("stage 0 has no previous stage to send a gradient to");
    if (!mb_ok(mb)) return;
    MicrobatchState& st = mbs_[mb];
    if (st.backward < 0) report("gradient of mb " + num(mb) + " sent before its backward");
    if (st.grad_sent) report("gradient of mb " + num(mb) + " sent twice");
    st.grad_sent = true;
  }

  void recv_grad(int mb) {
    if (!has_next_) return report("the last stage has no next stage to receive a gradient from");
    if (!mb_ok(mb)) return;
    if (mbs_[mb].grad_received) report("gradient of mb " + num(mb) + " received twice");
    mbs_[mb].grad_received = true;
  }

  // First microbatch of `batch` whose weight gradient is missing, or 0.
  int missing_backward(int batch) const {
    for (int mb = batch * sched_.microbatches + 1; mb <= (batch + 1) * sched_.microbatches; ++mb) {
      if (mbs_[mb].weight < 0) return mb;
    }
    return 0;
  }

  void allreduce(int batch) {
    if (!batch_ok(batch)) return;
    if (allreduce_at_[batch] >= 0) return report("second allreduce of batch " + num(batch));
    allreduce_at_[batch] = index_;
    if (open_batch_ != batch) {
      report("allreduce outside batch_begin/batch_end of batch " + num(batch));
    }
    if (batch > sched_.first_batch && step_at_[batch - 1] < 0) {
      report("allreduce before the step of batch " + num(batch - 1));
    }
    if (const int mb = missing_backward(batch)) {
      report("allreduce of batch " + num(batch) + " before the backward of mb " + num(mb));
    }
  }

  void step(const Action& a) {
    if (!batch_ok(a.batch)) return;
    if (step_at_[a.batch] >= 0) return report("second step of batch " + num(a.batch));
    step_at_[a.batch] = index_;
    if (open_batch_ != a.batch) {
      report("step outside batch_begin/batch_end of batch " + num(a.batch));
    }
    if (allreduce_at_[a.batch] < 0) {
      report("step of batch " + num(a.batch) + " before its allreduce");
    }
    if (a.version != newest_ + 1) {
      report("step writes " + weights(a.version) + ", expected " + weights(newest_ + 1));
    }
    const bool two_buffers = sched_.kind == ScheduleKind::two_bw;
    if (a.buffer < 0 || a.buffer > (two_buffers ? 1 : 0)) {
      return report("buffer " + num(a.buffer) + " does not exist (" + to_string(sched_.kind) +
                    " has " + (two_buffers ? "buffers 0 and 1)" : "buffer 0 only)"));
    }
    const int overwritten = held_[a.buffer];
    if (a.retired != overwritten) {
      report("says it retires " + (a.retired < 0 ? std::string("nothing") : weights(a.retired)) +
             " but buffer " + num(a.buffer) + " holds " +
             (overwritten < 0 ? std::string("nothing") : weights(overwritten)));
    }
    if (overwritten >= 0 && in_flight_versions_.count(overwritten)) {
      for (size_t mb = 1; mb < mbs_.size(); ++mb) {
        const MicrobatchState& st = mbs_[mb];
        if (st.forward >= 0 && st.weight < 0 && st.version == overwritten) {
          report("overwrites " + weights(overwritten) + " in buffer " + num(a.buffer) +
                 ", still needed by in-flight mb " + num(static_cast<int>(mb)));
          break;
        }
      }
    }
    if ((!two_buffers || a.batch < sched_.sync_warmup) && in_flight_ > 0) {
      report("step of a flush batch while " + num(in_flight_) + " microbatches are in flight");
    }
    held_[a.buffer] = a.version;
    newest_ = a.version;
    check_alive();
  }

  // Markers come as begin(r), end(r), begin(r+1), ... from r = first_batch; code 2t is
  // begin(t), 2t+1 is end(t).
  void marker(const Action& a) {
    if (!batch_ok(a.batch)) return;
    const bool begin = a.kind == ActionKind::batch_begin;
    const int code = 2 * a.batch + (begin ? 0 : 1);
    if (code != next_marker_) {
      report(std::string("expected ") + (next_marker_ % 2 ? "batch_end " : "batch_begin ") +
             num(next_marker_ / 2));
    }
    next_marker_ = code + 1;
    open_batch_ = begin ? a.batch : -1;
    if (!begin && step_at_[a.batch] < 0) {
      report("batch_end before the step of batch " + num(a.batch));
    }
  }

  // Lists the microbatches that fail `missing` in one finding.
  template <typename Pred>
  void report_missing(const std::string& what, Pred missing) {
    std::string list;
    int count = 0;
    for (int mb = sched_.first_microbatch(); mb <= sched_.total_microbatches(); ++mb) {
      if (!missing(mbs_[mb])) continue;
      if (++count <= 5) list += (count > 1 ? ", " : "") + num(mb);
    }
    if (count > 5) list += " and " + num(count - 5) + " more";
    if (count > 0) out_.push_back({stage_, -1, what + ": mb " + list});
  }

  void finish() {
    report_missing("never forwarded", [](const MicrobatchState& m) { return m.forward < 0; });
    if (has_prev_) {
      report_missing("activation never received",
                     [](const MicrobatchState& m) { return !m.act_received; });
    }
    if (has_next_) {
      report_missing("activation never sent", [](const MicrobatchState& m) { return !m.act_sent; });
    }
    if (forward_only_) return;  // no gradients, reductions, steps or markers
    report_missing("never backwarded", [](const MicrobatchState& m) { return m.weight < 0; });
    if (has_prev_)
      report_missing("gradient never sent", [](const MicrobatchState& m) { return !m.grad_sent; });
    if (has_next_) {
      report_missing("gradient never received",
                     [](const MicrobatchState& m) { return !m.grad_received; });
    }
    for (int t = sched_.first_batch; t < sched_.batches; ++t) {
      if (allreduce_at_[t] < 0) {
        out_.push_back({stage_, -1, "batch " + num(t) + " has no allreduce"});
      }
      if (step_at_[t] < 0) out_.push_back({stage_, -1, "batch " + num(t) + " has no step"});
    }
    if (next_marker_ != 2 * sched_.batches) {
      out_.push_back({stage_, -1, "batch markers end before batch_end " + num(sched_.batches - 1)});
    }
  }

  const Schedule& sched_;
  const int stage_;
  std::vector<Finding>& out_;
  const bool has_prev_;
  const bool has_next_;
  const bool forward_only_;  // an evaluation: forwards and activation messages only
  const int bound_;
  std::vector<MicrobatchState> mbs_;  // indexed by microbatch, 1-based
  std::vector<int> allreduce_at_;     // action index per batch, -1 if none yet
  std::vector<int> step_at_;
  std::map<int, int> in_flight_versions_;  // version -> in-flight microbatches using it
  std::map<int, int> last_use_;            // version -> index of the last compute using it
  int in_flight_ = 0;
  std::array<int, 2> held_;  // version in each buffer, -1 for empty; initial_buffers() at first
  int newest_;               // newest version written (W(first_batch) at the start)
  int next_marker_;
  int open_batch_ = -1;
  int index_ = -1;
  const Action* action_ = nullptr;
};

bool check_header(const Schedule& s, std::vector<Finding>& out) {
  const auto fail = [&out](const std::string& what) {
    out.push_back({-1, -1, what});
    return false;
  };
  if (s.stages < 1 || s.microbatches < 1 || s.batches < 1) {
    return fail("stages, microbatches and batches must be >= 1");
  }
  if (s.sync_warmup < 0 || s.sync_warmup > s.batches) {
    return fail("sync_warmup outside [0, batches]");
  }
  if (s.sync_warmup > 0 && s.kind != ScheduleKind::two_bw) {
    return fail("sync_warmup applies to 2bw only");
  }
  if (s.kind == ScheduleKind::two_bw && s.microbatches < s.stages) {
    return fail("2bw needs microbatches >= stages");
  }
  if (s.kind == ScheduleKind::forward_only && (s.batches != 1 || s.first_batch != 0)) {
    return fail("a forward-only schedule is one batch from batch 0");
  }
  if (s.first_batch < 0 || s.first_batch >= s.batches) {
    return fail("first_batch outside [0, batches)");
  }
  if (static_cast<int>(s.actions.size()) != s.stages) {
    return fail("has " + num(static_cast<int>(s.actions.size())) + " action lists for " +
                num(s.stages) + " stages");
  }
  return true;
}

// Every send must have exactly one receive of the same microbatch on its channel and vice
// versa. Returns false if any does not, or a message names a missing neighbour.
bool check_channels(const Schedule& s, std::vector<Finding>& out) {
  struct Half {
    int stage;
    int action;
    int mb;
  };
  const int channels = 2 * (s.stages - 1);
  std::vector<std::vector<Half>> sends(channels);  // per channel, in list order
  std::vector<std::vector<Half>> recvs(channels);
  bool ok = true;
  for (int stage = 0; stage < s.stages; ++stage) {
    for (size_t i = 0; i < s.actions[stage].size(); ++i) {
      const detail::Ops ops = detail::ops_of(s.actions[stage][i], stage);
      for (int k = 0; k < ops.count; ++k) {
        const detail::Op& op = ops.op[k];
        if (op.peer < 0 || op.peer >= s.stages) {
          ok = false;  // reported by the stage checker
          continue;
        }
        (op.send ? sends : recvs)[op.channel].push_back({stage, static_cast<int>(i), op.mb});
      }
    }
  }
  const int total = s.total_microbatches();
  const auto unmatched = [&](const std::vector<Half>& mine, const std::vector<Half>& theirs,
                             int channel, bool send) {
    std::vector<int> pending(total + 1, 0);  // microbatch -> unmatched halves of the other side
    for (const Half& h : theirs) {
      if (h.mb >= 1 && h.mb <= total) ++pending[h.mb];
    }
    for (const Half& h : mine) {
      if (h.mb >= 1 && h.mb <= total && pending[h.mb] > 0) {
        --pending[h.mb];
        continue;
      }
      ok = false;
      out.push_back({h.stage, h.action,
                     "[" + to_string(s.actions[h.stage][h.action]) + "] " +
                         (send ? "send" : "receive") + " of the " + detail::channel_name(channel) +
                         " of mb " + num(h.mb) + " has no matching " +
                         (send ? "receive" : "send")});
    }
  };
  for (int channel = 0; channel < channels; ++channel) {
    unmatched(sends[channel], recvs[channel], channel, true);
    unmatched(recvs[channel], sends[channel], channel, false);
  }
  return ok;
}

std::string message_text(int channel, int mb) {
  return std::string("the ") + detail::channel_name(channel) + " of mb " + num(mb);
}

// NCCL's matching rule. Between two ranks NCCL pairs the n-th send one issues to the other with
// the n-th receive the other issues from it, whatever the buffers hold: there is no tag. The
// executor issues the halves of each message action in list order, an exchange's send before its
// receive (ops_of's order; PipelineTrainer::run, Transport::post_exchange), so for every ordered
// pair of stages (from, to) the n-th message `from` issues to `to` must be the n-th message `to`
// issues from `from`, naming the same kind (activation or gradient) of the same microbatch. The
// key is the pair of ranks, not the kind of message: if the previous and the next stage were one
// rank, its activations and gradients would be one sequence. The replicas of a pipeline repeat
// its pairs on their own ranks (rank_of_stage keeps the replica), so the stages stand for them.
bool check_peer_order(const Schedule& s, std::vector<Finding>& out) {
  struct Issued {
    int stage;
    int action;
    int mb;
    int channel;
  };
  // Messages go to neighbours only (ops_of), so the ordered pair (from, to) is slot
  // 2 * from + (to > from); [0] what `from` sent, [1] what `to` received, in issue order.
  std::vector<std::array<std::vector<Issued>, 2>> pairs(2 * static_cast<size_t>(s.stages));
  const size_t messages = static_cast<size_t>(s.total_microbatches() - s.first_microbatch() + 1);
  for (auto& sides : pairs)
    for (auto& side : sides) side.reserve(messages);  // one per microbatch on each pair
  for (int stage = 0; stage < s.stages; ++stage) {
    for (size_t i = 0; i < s.actions[stage].size(); ++i) {
      const detail::Ops ops = detail::ops_of(s.actions[stage][i], stage);
      for (int k = 0; k < ops.count; ++k) {
        const detail::Op& op = ops.op[k];
        const int from = op.send ? stage : op.peer, to = op.send ? op.peer : stage;
        pairs[2 * static_cast<size_t>(from) + (to > from)][op.send ? 0 : 1].push_back(
            {stage, static_cast<int>(i), op.mb, op.channel});
      }
    }
  }
  bool ok = true;
  const auto at = [&s](const Issued& h) {
    return "[" + to_string(s.actions[h.stage][h.action]) + "] ";
  };
  for (size_t slot = 0; slot < pairs.size(); ++slot) {
    const std::vector<Issued>& sent = pairs[slot][0];
    const std::vector<Issued>& received = pairs[slot][1];
    const int from = static_cast<int>(slot / 2), to = slot % 2 ? from + 1 : from - 1;
    for (size_t n = 0; n < std::max(sent.size(), received.size()); ++n) {
      const bool both = n < sent.size() && n < received.size();
      if (both && sent[n].mb == received[n].mb && sent[n].channel == received[n].channel) continue;
      const std::string nth = "message " + num(static_cast<int>(n + 1)) + " from stage " +
                              num(from) + " to stage " + num(to);
      if (both) {
        const Issued& send = sent[n];
        const Issued& recv = received[n];
        out.push_back({recv.stage, recv.action,
                       at(recv) + "NCCL order: " + nth + " is received as " +
                           message_text(recv.channel, recv.mb) + " but sent as " +
                           message_text(send.channel, send.mb) + " (stage " + num(send.stage) +
                           " action " + num(send.action) + " [" +
                           to_string(s.actions[send.stage][send.action]) +
                           "]); NCCL matches the messages between two ranks by their order, not "
                           "by tag"});
      } else {
        const Issued& h = n < sent.size() ? sent[n] : received[n];
        out.push_back(
            {h.stage, h.action,
             at(h) + "NCCL order: " + nth + " is " +
                 (n < sent.size() ? "sent but never received" : "received but never sent") + " (" +
                 num(static_cast<int>(sent.size())) + " sends, " +
                 num(static_cast<int>(received.size())) + " receives)"});
      }
      ok = false;
    }
  }
  return ok;
}

}  // namespace

std::string to_string(const Finding& f) {
  if (f.stage < 0) return "schedule: " + f.message;
  if (f.action < 0) return "stage " + num(f.stage) + " (end of list): " + f.message;
  return "stage " + num(f.stage) + " action " + num(f.action) + ": " + f.message;
}

std::string CheckResult::summary() const {
  if (ok()) return "ok";
  return num(static_cast<int>(findings.size())) +
         (findings.size() == 1 ? " finding: " : " findings; first: ") + to_string(findings.front());
}

CheckResult check(const Schedule& schedule) {
  CheckResult result;
  std::vector<Finding>& out = result.findings;
  if (!check_header(schedule, out)) return result;
  for (int s = 0; s < schedule.stages; ++s) StageChecker(schedule, s, out).run();
  if (!check_channels(schedule, out)) return result;
  if (!check_peer_order(schedule, out)) return result;
  const detail::ReplayResult replay = detail::replay(
      schedule, [](int, const Action&) { return 0.0; }, [](int) { return 0.0; });
  out.insert(out.end(), replay.blocked.begin(), replay.blocked.end());
  return result;
}

}  // namespace p2bw::schedule
