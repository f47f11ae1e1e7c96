// Replay of all stages' action lists with blocking rendezvous messages and in-order matching
// per channel; yields per-stage events and the blocked stages of a deadlock.
#include "schedule/replay.hpp"

#include <algorithm>
#include <map>
#include <sstream>
#include <string>

#include "schedule/text.hpp"

namespace p2bw::schedule::detail {

Ops ops_of(const Action& a, int stage) {
  const auto act = [stage](bool send, int mb) {
    // Activations over link l travel l -> l+1: the sender's link is its own index.
    return send ? Op{2 * stage, true, mb, stage + 1} : Op{2 * (stage - 1), false, mb, stage - 1};
  };
  const auto grad = [stage](bool send, int mb) {
    return send ? Op{2 * (stage - 1) + 1, true, mb, stage - 1}
                : Op{2 * stage + 1, false, mb, stage + 1};
  };
  Ops ops;
  switch (a.kind) {
    case ActionKind::send_act:
      ops.op[ops.count++] = act(true, a.mb);
      break;
    case ActionKind::recv_act:
      ops.op[ops.count++] = act(false, a.mb);
      break;
    case ActionKind::send_grad:
      ops.op[ops.count++] = grad(true, a.mb);
      break;
    case ActionKind::recv_grad:
      ops.op[ops.count++] = grad(false, a.mb);
      break;
    case ActionKind::send_act_recv_grad:
      ops.op[ops.count++] = act(true, a.mb);
      ops.op[ops.count++] = grad(false, a.recv_mb);
      break;
    case ActionKind::send_grad_recv_act:
      ops.op[ops.count++] = grad(true, a.mb);
      ops.op[ops.count++] = act(false, a.recv_mb);
      break;
    default:
      break;
  }
  return ops;
}

const char* channel_name(int channel) {
  return channel % 2 == 0 ? "activation" : "gradient";
}

namespace {

struct StageState {
  size_t pc = 0;        // next action
  double clock = 0;     // when the stage is free (while posted: the post time)
  bool posted = false;  // the communication action at pc has been posted
  Ops ops;              // its halves
  bool done[2] = {false, false};
  double end[2] = {0, 0};
  bool arrived = false;  // global sync: waiting at the allreduce at pc since `clock`
};

// Global sync: how many stages reached a batch's allreduce, and when the last one did.
struct Barrier {
  int arrived = 0;
  double latest = 0;
};

class Replayer {
 public:
  Replayer(const Schedule& s, const std::function<double(int, const Action&)>& duration,
           const std::function<double(int)>& link_time, bool global_sync)
      : sched_(s),
        duration_(duration),
        link_time_(link_time),
        global_sync_(global_sync),
        state_(s.stages) {
    result_.events.resize(s.stages);
  }

  ReplayResult run() {
    for (bool progress = true; progress;) {
      progress = false;
      for (int s = 0; s < sched_.stages; ++s) progress |= advance(s);
    }
    for (int s = 0; s < sched_.stages; ++s) {
      if (state_[s].pc < sched_.actions[s].size()) report_blocked(s);
    }
    return std::move(result_);
  }

 private:
  // Runs stage s as far as it can go; true if it moved.
  bool advance(int s) {
    StageState& st = state_[s];
    const std::vector<Action>& list = sched_.actions[s];
    bool moved = false;
    while (st.pc < list.size()) {
      const Action& a = list[st.pc];
      if (a.kind == ActionKind::batch_begin || a.kind == ActionKind::batch_end) {
        ++st.pc;
        moved = true;
        continue;
      }
      if (global_sync_ && a.kind == ActionKind::allreduce) {
        // The stage's own reductions first, then the collective over all stages: everyone
        // leaves when the last stage has finished its part.
        Barrier& barrier = barriers_[a.batch];
        if (!st.arrived) {
          st.arrived = true;
          ++barrier.arrived;
          barrier.latest = std::max(barrier.latest, st.clock + duration_(s, a));
          moved = true;
        }
        if (barrier.arrived < sched_.stages) break;
        Event e{a, static_cast<int>(st.pc), st.clock, barrier.latest};
        e.wait = barrier.latest - (st.clock + duration_(s, a));
        result_.events[s].push_back(e);
        st.clock = e.end;
        st.arrived = false;
        ++st.pc;
        moved = true;
        continue;
      }
      if (!is_communication(a.kind)) {
        const double end = st.clock + duration_(s, a);
        result_.events[s].push_back(Event{a, static_cast<int>(st.pc), st.clock, end});
        st.clock = end;
        ++st.pc;
        moved = true;
        continue;
      }
      if (!st.posted) {
        post(s);
        moved = true;
      }
      if (!std::all_of(st.done, st.done + st.ops.count, [](bool d) { return d; })) break;
      const double end = std::max({st.clock, st.end[0], st.ops.count > 1 ? st.end[1] : 0.0});
      result_.events[s].push_back(Event{a, static_cast<int>(st.pc), st.clock, end});
      st.clock = end;
      st.posted = false;
      ++st.pc;
    }
    return moved;
  }

  // Posts the communication action at stage s's pc and matches its halves against whatever
  // the peer has posted.
  void post(int s) {
    StageState& st = state_[s];
    st.posted = true;
    st.ops = ops_of(sched_.actions[s][st.pc], s);
    for (int i = 0; i < st.ops.count; ++i) {
      st.done[i] = false;
      const Op& op = st.ops.op[i];
      StageState& peer = state_[op.peer];
      if (!peer.posted) continue;
      for (int j = 0; j < peer.ops.count; ++j) {
        const Op& other = peer.ops.op[j];
        if (peer.done[j] || other.channel != op.channel || other.send == op.send) continue;
        match(s, i, op.peer, j);
        break;
      }
    }
  }

  void match(int s, int i, int p, int j) {
    StageState& a = state_[s];
    StageState& b = state_[p];
    const double at = std::max(a.clock, b.clock);
    const double arrive = at + link_time_(a.ops.op[i].channel / 2);
    a.done[i] = b.done[j] = true;
    a.end[i] = a.ops.op[i].send ? at : arrive;
    b.end[j] = b.ops.op[j].send ? at : arrive;
  }

  void report_blocked(int s) {
    const StageState& st = state_[s];
    std::ostringstream what;
    what << "[" << to_string(sched_.actions[s][st.pc]) << "] deadlock: blocked";
    const char* separator = " ";
    for (int i = 0; i < st.ops.count; ++i) {
      if (st.done[i]) continue;
      const Op& op = st.ops.op[i];
      const size_t peer_pc = state_[op.peer].pc;
      const std::vector<Action>& peer_list = sched_.actions[op.peer];
      what << separator << (op.send ? "sending " : "receiving ") << channel_name(op.channel)
           << " of mb " << op.mb << (op.send ? " to" : " from") << " stage " << op.peer
           << ", which ";
      if (peer_pc < peer_list.size()) {
        what << "is at action " << peer_pc << " [" << to_string(peer_list[peer_pc]) << "]";
      } else {
        what << "has finished";
      }
      separator = "; ";
    }
    result_.blocked.push_back({s, static_cast<int>(st.pc), what.str()});
  }

  const Schedule& sched_;
  const std::function<double(int, const Action&)>& duration_;
  const std::function<double(int)>& link_time_;
  const bool global_sync_;
  std::vector<StageState> state_;
  std::map<int, Barrier> barriers_;  // by batch
  ReplayResult result_;
};

}  // namespace

ReplayResult replay(const Schedule& schedule,
                    const std::function<double(int, const Action&)>& duration,
                    const std::function<double(int)>& link_time, bool global_sync) {
  return Replayer(schedule, duration, link_time, global_sync).run();
}

}  // namespace p2bw::schedule::detail
