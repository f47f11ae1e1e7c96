// Discrete-event simulator for schedules: replays the action lists with per-stage costs under
// the communication semantics of check.hpp and reports where time goes; text Gantt chart and
// report table.
//
// Timing model
// - A stage runs its actions back to back from time 0. forward, backward, allreduce and step take
//   their cost on that stage; backward_input and backward_weight take half the backward cost
//   each; markers take no time and make no event.
// - A send or receive is posted when the stage reaches it. Once both halves of a message are
//   posted (t = the later post time) the send half completes at t and the receive half at
//   t + the link's message time. An exchange completes when both its halves have. The event of
//   a communication action spans its post time to its completion, so a receiver's dependent
//   compute starts at (the later of the two posts) + message time.
//   (Conservative for a non-blocking executor, which may start a transfer before the receive
//   is reached; with zero message time both agree.)
// - Costs::global_sync makes each batch's allreduce a collective over all stages, as p2bw's
//   executor runs it: a stage takes its allreduce cost (its data-parallel and tied reductions),
//   then waits in the loss and gradient-norm all-reduce over every rank until the last stage
//   has taken its cost (Event::wait); all stages leave together.
// Accounting per stage over [0, makespan]
//   compute = forward and backward time; update = allreduce and step time;
//   wait = time inside communication actions (blocked on a neighbour or a transfer) and at a
//   global sync;
//   idle = time before the first action and after the last one;
//   compute + update + wait + idle = makespan; bubble = (wait + idle) / makespan.
//   peak_in_flight = most microbatches forwarded but not yet backwarded.
// Steady state (needs n >= 3 batches in the schedule; the first fills the pipeline, the last
// drains it). The schedule's batches are r .. r+n-1 (r = first_batch, 0 unless resumed):
//   steady_batch_time = mean interval between the ends of stage 0's steps of batches r .. r+n-2,
//   i.e. (end of step r+n-2 - end of step r) / (n - 2); with fewer batches, makespan / n.
//   steady_bubble = a stage's bubble within [end of its step r, end of its step r+n-2]; with
//   fewer batches, its overall bubble.
#pragma once

#include <string>
#include <vector>

#include "schedule/schedule.hpp"

namespace p2bw::schedule {

// Time units are the caller's. Every vector holds one value per stage (message: one per link
// s <-> s+1, d-1 values) or a single value used for all; an empty vector means 0.
struct Costs {
  std::vector<double> forward{1.0};
  std::vector<double> backward{2.0};
  std::vector<double> message{0.0};
  std::vector<double> allreduce{0.0};
  std::vector<double> step{0.0};
  bool global_sync = false;  // allreduce is one collective over all stages (see above)

  static Costs uniform(double forward, double backward, double message = 0, double allreduce = 0,
                       double step = 0) {
    return Costs{{forward}, {backward}, {message}, {allreduce}, {step}, false};
  }
};

struct Event {
  Action action;
  int index = 0;  // position in the stage's action list
  double start = 0;
  double end = 0;
  double wait = 0;  // global sync: the allreduce's final part [end - wait, end) is waiting
};

// When the event's own work ends: before the wait of a synchronised allreduce, else its end.
inline double work_end(const Event& e) {
  return e.end - e.wait;
}

struct Timeline {
  std::vector<std::vector<Event>> stages;  // per stage, in execution order
  double makespan = 0;
};

struct StageReport {
  double compute = 0;
  double update = 0;
  double wait = 0;
  double idle = 0;
  double bubble = 0;
  double steady_bubble = 0;
  int peak_in_flight = 0;
};

struct Report {
  Timeline timeline;
  std::vector<StageReport> stages;
  double makespan = 0;
  double steady_batch_time = 0;
};

// Throws ScheduleError if check(schedule) finds anything or the costs do not fit the schedule.
Report simulate(const Schedule& schedule, const Costs& costs);

// 1 - (compute + update time of `stage` within [from, to]) / (to - from).
double bubble_in_window(const Timeline& timeline, int stage, double from, double to);

// One row per stage over the time of the timeline's first `batches_shown` batches (up to the last
// step of batch r+batches_shown-1 on any stage, r = its lowest batch: first_batch if resumed).
// F forward, B backward, b/w split backward halves, A allreduce, S step, - waiting for a
// message, . idle.
std::string render_gantt(const Timeline& timeline, int columns, int batches_shown = 2);

// Table: per stage compute, update, wait, idle, bubble, steady bubble, peak in flight; then
// makespan and steady-state time per batch.
std::string format_report(const Report& report);

}  // namespace p2bw::schedule
