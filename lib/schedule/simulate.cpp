// Simulator, Gantt renderer and report table for schedules (model described in simulate.hpp).
#include "schedule/simulate.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "schedule/check.hpp"
#include "schedule/replay.hpp"

namespace p2bw::schedule {

namespace {

// Expands a cost vector to `count` values (one value broadcasts, empty means zero).
std::vector<double> expand(const std::vector<double>& values, int count, const char* name) {
  if (values.size() > 1 && static_cast<int>(values.size()) != count) {
    throw ScheduleError(std::string("costs: '") + name + "' needs 1 or " + std::to_string(count) +
                        " values, got " + std::to_string(values.size()));
  }
  for (double v : values) {
    if (!(v >= 0) || !std::isfinite(v)) {
      throw ScheduleError(std::string("costs: '") + name + "' values must be finite and >= 0");
    }
  }
  if (values.size() == 1) return std::vector<double>(count, values[0]);
  return values.empty() ? std::vector<double>(count, 0.0) : values;
}

bool is_update(ActionKind kind) {
  return kind == ActionKind::allreduce || kind == ActionKind::step;
}

// End time of each step of `stage`, indexed by batch.
std::vector<double> step_ends(const std::vector<Event>& events, int batches) {
  std::vector<double> ends(batches, 0.0);
  for (const Event& e : events) {
    if (e.action.kind == ActionKind::step) ends[e.action.batch] = e.end;
  }
  return ends;
}

char gantt_char(ActionKind kind) {
  switch (kind) {
    case ActionKind::forward:
      return 'F';
    case ActionKind::backward:
      return 'B';
    case ActionKind::backward_input:
      return 'b';
    case ActionKind::backward_weight:
      return 'w';
    case ActionKind::allreduce:
      return 'A';
    case ActionKind::step:
      return 'S';
    default:
      return '-';
  }
}

}  // namespace

Report simulate(const Schedule& schedule, const Costs& costs) {
  if (const CheckResult checked = check(schedule); !checked.ok()) {
    throw ScheduleError("cannot simulate an invalid schedule: " + checked.summary());
  }
  const int d = schedule.stages;
  const std::vector<double> forward = expand(costs.forward, d, "forward");
  const std::vector<double> backward = expand(costs.backward, d, "backward");
  const std::vector<double> allreduce = expand(costs.allreduce, d, "allreduce");
  const std::vector<double> step = expand(costs.step, d, "step");
  const std::vector<double> message =
      d > 1 ? expand(costs.message, d - 1, "message") : std::vector<double>{};

  const auto duration = [&](int s, const Action& a) {
    switch (a.kind) {
      case ActionKind::forward:
        return forward[s];
      case ActionKind::backward:
        return backward[s];
      case ActionKind::backward_input:
      case ActionKind::backward_weight:
        return backward[s] / 2;
      case ActionKind::allreduce:
        return allreduce[s];
      case ActionKind::step:
        return step[s];
      default:
        return 0.0;
    }
  };
  detail::ReplayResult replayed = detail::replay(
      schedule, duration, [&message](int link) { return message[link]; }, costs.global_sync);
  if (!replayed.blocked.empty())
    throw ScheduleError("the schedule deadlocks when its all-reduces synchronise all stages: " +
                        replayed.blocked.front().message);

  Report report;
  report.timeline.stages = std::move(replayed.events);
  for (const auto& events : report.timeline.stages) {
    for (const Event& e : events) report.makespan = std::max(report.makespan, e.end);
  }
  report.timeline.makespan = report.makespan;

  // Batches first .. last of the run (first > 0 for a resumed schedule); n of them.
  const int first = schedule.first_batch;
  const int last = schedule.batches - 1;
  const int n = last - first + 1;
  for (int s = 0; s < d; ++s) {
    const std::vector<Event>& events = report.timeline.stages[s];
    StageReport r;
    int in_flight = 0;
    for (const Event& e : events) {
      const ActionKind kind = e.action.kind;
      const double length = e.end - e.start;
      if (is_compute(kind)) r.compute += length;
      if (is_update(kind)) {
        r.update += work_end(e) - e.start;
        r.wait += e.wait;  // at a global sync
      }
      if (is_communication(kind)) r.wait += length;
      if (kind == ActionKind::forward) r.peak_in_flight = std::max(r.peak_in_flight, ++in_flight);
      if (kind == ActionKind::backward || kind == ActionKind::backward_weight) --in_flight;
    }
    if (!events.empty()) r.idle = events.front().start + (report.makespan - events.back().end);
    r.bubble = report.makespan > 0 ? (r.wait + r.idle) / report.makespan : 0.0;
    r.steady_bubble = r.bubble;
    if (n >= 3) {
      const std::vector<double> ends = step_ends(events, schedule.batches);
      r.steady_bubble = bubble_in_window(report.timeline, s, ends[first], ends[last - 1]);
    }
    report.stages.push_back(r);
  }
  if (n >= 3) {
    const std::vector<double> ends = step_ends(report.timeline.stages[0], schedule.batches);
    report.steady_batch_time = (ends[last - 1] - ends[first]) / (n - 2);
  } else {
    report.steady_batch_time = report.makespan / n;
  }
  return report;
}

double bubble_in_window(const Timeline& timeline, int stage, double from, double to) {
  if (to <= from) return 0.0;
  double working = 0;
  for (const Event& e : timeline.stages.at(stage)) {
    if (!is_compute(e.action.kind) && !is_update(e.action.kind)) continue;
    working += std::max(0.0, std::min(work_end(e), to) - std::max(e.start, from));
  }
  return 1.0 - working / (to - from);
}

std::string render_gantt(const Timeline& timeline, int columns, int batches_shown) {
  columns = std::max(columns, 1);
  int first_batch = -1;  // of the timeline (> 0 for a resumed schedule)
  for (const auto& events : timeline.stages) {
    for (const Event& e : events) {
      if (e.action.kind == ActionKind::step && (first_batch < 0 || e.action.batch < first_batch)) {
        first_batch = e.action.batch;
      }
    }
  }
  double horizon = 0;
  for (const auto& events : timeline.stages) {
    for (const Event& e : events) {
      if (e.action.kind == ActionKind::step && e.action.batch == first_batch + batches_shown - 1) {
        horizon = std::max(horizon, e.end);
      }
    }
  }
  if (horizon <= 0) horizon = timeline.makespan;
  if (horizon <= 0) horizon = 1;
  const double cell = horizon / columns;
  const auto column = [&](double t) {
    return std::clamp(static_cast<int>(std::lround(t / cell)), 0, columns);
  };
  char head[160];
  std::snprintf(head, sizeof head,
                "time 0 .. %g, one column = %g (F forward, B backward, A allreduce, S step, "
                "- waiting, . idle)\n",
                horizon, cell);
  std::string out = head;
  for (size_t s = 0; s < timeline.stages.size(); ++s) {
    std::string row(columns, '.');
    for (const Event& e : timeline.stages[s]) {
      std::fill(row.begin() + column(e.start), row.begin() + column(work_end(e)),
                gantt_char(e.action.kind));
      std::fill(row.begin() + column(work_end(e)), row.begin() + column(e.end), '-');
    }
    char label[32];
    std::snprintf(label, sizeof label, "stage %2zu |", s);
    out += label + row + "|\n";
  }
  return out;
}

std::string format_report(const Report& report) {
  std::string out = "stage   compute    update      wait      idle  bubble  steady  peak\n";
  char line[160];
  for (size_t s = 0; s < report.stages.size(); ++s) {
    const StageReport& r = report.stages[s];
    std::snprintf(line, sizeof line, "%5zu %9.3f %9.3f %9.3f %9.3f %7.4f %7.4f %5d\n", s, r.compute,
                  r.update, r.wait, r.idle, r.bubble, r.steady_bubble, r.peak_in_flight);
    out += line;
  }
  std::snprintf(line, sizeof line, "makespan %.3f, steady-state time per batch %.3f\n",
                report.makespan, report.steady_batch_time);
  return out + line;
}

}  // namespace p2bw::schedule
