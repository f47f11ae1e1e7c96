// Internal: replays a schedule under the blocking rendezvous rules stated in check.hpp, with
// action durations; shared by check() (all durations zero) and simulate().
#pragma once

#include <functional>
#include <vector>

#include "schedule/check.hpp"
#include "schedule/schedule.hpp"
#include "schedule/simulate.hpp"

namespace p2bw::schedule::detail {

// One half of a communication action: a send or a receive on one channel.
struct Op {
  int channel = 0;  // 2*l: activations over link l (stage l -> l+1); 2*l+1: gradients (l+1 -> l)
  bool send = false;
  int mb = 0;
  int peer = 0;  // stage at the other end; out of range when the stage has no such neighbour
};

struct Ops {
  Op op[2];
  int count = 0;
};

// The sends and receives of `action` on `stage` (none for local actions).
Ops ops_of(const Action& action, int stage);

const char* channel_name(int channel);  // "activation" or "gradient"

struct ReplayResult {
  std::vector<std::vector<Event>> events;  // per stage, every executed action except markers
  std::vector<Finding> blocked;            // one per stage that cannot finish (deadlock)
};

// Local actions take duration(stage, action). A message on link l is matched when both sides
// have posted (in post order per channel; check() has proved that this pairs the same message); the
// send half completes then, the receive half link_time(l) later. With `global_sync`, the allreduce
// of a batch is also a collective over all stages: each stage does its own part, then waits
// (Event::wait) until the last stage has done its part; a stage that never gets there leaves the
// others blocked. Requires every op's peer to exist.
ReplayResult replay(const Schedule& schedule,
                    const std::function<double(int, const Action&)>& duration,
                    const std::function<double(int)>& link_time, bool global_sync = false);

}  // namespace p2bw::schedule::detail
