// Resumed schedules (first_batch > 0, a run restarted after the checkpoint of batch first_batch-1):
// generator, checker, stream and simulator keep the uninterrupted run's numbering, versions and
// buffers while the pipeline refills.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <stdexcept>
#include <string>
#include <vector>

#include "schedule/check.hpp"
#include "schedule/schedule.hpp"
#include "schedule/simulate.hpp"
#include "schedule/stream.hpp"
#include "schedule/text.hpp"

namespace p2bw::schedule {
namespace {

struct Config {
  ScheduleKind kind;
  int d, m, batches, warmup;

  std::string name() const {
    return std::string(to_string(kind)) + " d=" + std::to_string(d) + " m=" + std::to_string(m) +
           " batches=" + std::to_string(batches) + " K=" + std::to_string(warmup);
  }
};

// gpipe, flush and 2bw with K = 0..3; d = 1..4; m in {d, d+1, 2d}; 1..9 batches.
std::vector<Config> grid() {
  std::vector<Config> all;
  for (int d = 1; d <= 4; ++d) {
    for (int m : {d, d + 1, 2 * d}) {
      for (int batches = 1; batches <= 9; ++batches) {
        all.push_back({ScheduleKind::gpipe, d, m, batches, 0});
        all.push_back({ScheduleKind::flush, d, m, batches, 0});
        for (int k = 0; k <= std::min(3, batches); ++k) {
          all.push_back({ScheduleKind::two_bw, d, m, batches, k});
        }
      }
    }
  }
  return all;
}

// Splits a stage's actions into run batches first .. batches-1: each part ends with its
// batch_end marker (the last part also takes anything after it).
std::vector<std::vector<Action>> by_batch(const std::vector<Action>& actions, int first,
                                          int batches) {
  std::vector<std::vector<Action>> parts(static_cast<size_t>(batches));
  int t = first;
  for (const Action& a : actions) {
    parts[static_cast<size_t>(std::min(t, batches - 1))].push_back(a);
    if (a.kind == ActionKind::batch_end) ++t;
  }
  return parts;
}

TEST(Resume, InitialBuffersAreThoseOfTheUninterruptedRun) {
  using A = std::array<int, 2>;
  EXPECT_EQ(initial_buffers(ScheduleKind::flush, 0, 0), (A{0, -1}));
  EXPECT_EQ(initial_buffers(ScheduleKind::flush, 0, 7), (A{7, -1}));
  EXPECT_EQ(initial_buffers(ScheduleKind::gpipe, 0, 3), (A{3, -1}));
  EXPECT_EQ(initial_buffers(ScheduleKind::two_bw, 0, 0), (A{0, -1}));
  EXPECT_EQ(initial_buffers(ScheduleKind::two_bw, 0, 1), (A{0, 1}));
  EXPECT_EQ(initial_buffers(ScheduleKind::two_bw, 0, 2), (A{2, 1}));
  EXPECT_EQ(initial_buffers(ScheduleKind::two_bw, 2, 1), (A{1, -1}));  // inside the warm-up
  EXPECT_EQ(initial_buffers(ScheduleKind::two_bw, 2, 2), (A{2, -1}));  // at the switch
  EXPECT_EQ(initial_buffers(ScheduleKind::two_bw, 2, 3), (A{2, 3}));
  EXPECT_EQ(initial_buffers(ScheduleKind::two_bw, 2, 4), (A{4, 3}));
  // The same as replaying the whole run's steps up to batch r-1.
  for (int k = 0; k <= 3; ++k) {
    const Schedule whole = generate(ScheduleKind::two_bw, 2, 2, 9, k);
    A held{0, -1};
    for (const Action& a : whole.actions[0]) {
      if (a.kind != ActionKind::step) continue;
      held[static_cast<size_t>(a.buffer)] = a.version;
      EXPECT_EQ(initial_buffers(ScheduleKind::two_bw, k, a.batch + 1), held) << "K=" << k;
    }
  }
}

TEST(Resume, GeneratedSchedulesPassTheCheckerAndKeepTheRunsVersions) {
  int checked = 0;
  for (const Config& c : grid()) {
    const Schedule whole = generate(c.kind, c.d, c.m, c.batches, c.warmup);
    for (int first = 0; first < c.batches; ++first) {
      const std::string where = c.name() + " first_batch=" + std::to_string(first);
      const Schedule s = generate(c.kind, c.d, c.m, c.batches, c.warmup, first);
      ASSERT_EQ(s.first_batch, first);
      const CheckResult result = check(s);
      ASSERT_TRUE(result.ok()) << where << ": " << result.summary();
      ++checked;
      const bool refills = c.kind == ScheduleKind::two_bw && first > c.warmup;
      for (int stage = 0; stage < c.d; ++stage) {
        const auto mine = by_batch(s.actions[stage], first, c.batches);
        const auto run = by_batch(whole.actions[stage], 0, c.batches);
        for (int t = first; t < c.batches; ++t) {
          // Without a refill every batch is the whole run's; with one, all but the first.
          if (refills && t == first) continue;
          ASSERT_EQ(mine[t], run[t]) << where << " stage " << stage << " batch " << t;
        }
        if (!refills) continue;
        // The refilled batch: every compute on the global rule, batch `first` on W(first-1),
        // and the same step (version, buffer, retired) as the whole run.
        const Action& f = mine[first][1];  // after batch_begin (stage 0) or recv_act
        const Action& first_forward = f.kind == ActionKind::forward ? f : mine[first][2];
        ASSERT_EQ(first_forward, Action::forward(first * c.m + 1, first - 1)) << where;
        for (const Action& a : mine[first]) {
          if (is_compute(a.kind)) {
            ASSERT_EQ(a.version, weight_version(c.kind, c.m, c.warmup, a.mb)) << where;
            if (batch_of(c.m, a.mb) == first) {
              ASSERT_EQ(a.version, first - 1) << where;
            }
          }
        }
        const auto step_of = [](const std::vector<Action>& part) {
          for (const Action& a : part) {
            if (a.kind == ActionKind::step) return a;
          }
          return Action();
        };
        ASSERT_EQ(step_of(mine[first]), step_of(run[first])) << where << " stage " << stage;
      }
    }
  }
  EXPECT_GT(checked, 3000);
}

TEST(Resume, StreamEqualsGenerateBatchByBatch) {
  int compared = 0;
  for (const Config& c : grid()) {
    for (int first = 0; first < c.batches; ++first) {
      const std::string where = c.name() + " first_batch=" + std::to_string(first);
      const Schedule s = generate(c.kind, c.d, c.m, c.batches, c.warmup, first);
      const ScheduleStream stream(c.kind, c.d, c.m, c.batches, c.warmup, first);
      ASSERT_EQ(stream.first_batch(), first);
      ASSERT_TRUE(stream.proof().ok()) << where << ": " << stream.proof().summary();
      for (int stage = 0; stage < c.d; ++stage) {
        const auto parts = by_batch(s.actions[stage], first, c.batches);
        for (int t = first; t < c.batches; ++t) {
          ASSERT_EQ(stream.batch(stage, t), parts[t])
              << where << " stage " << stage << " batch " << t;
        }
      }
      ++compared;
    }
  }
  EXPECT_GT(compared, 3000);
}

TEST(Resume, StreamHandlesRunsTooLongToGenerate) {
  const ScheduleStream stream(ScheduleKind::two_bw, 8, 64, 1000000, 1000, 500000);
  ASSERT_TRUE(stream.proof().ok()) << stream.proof().summary();
  const auto refill = stream.batch(0, 500000);
  EXPECT_EQ(refill.front(), Action::marker(ActionKind::batch_begin, 500000));
  EXPECT_EQ(refill[1], Action::forward(500000 * 64 + 1, 499999));
  const auto next = stream.batch(3, 500001);
  int forwards = 0;
  for (const Action& a : next) forwards += a.kind == ActionKind::forward;
  EXPECT_EQ(forwards, 64);
  EXPECT_EQ(next.back(), Action::marker(ActionKind::batch_end, 500001));
  EXPECT_THROW(stream.batch(0, 499999), std::out_of_range);
  EXPECT_THROW(stream.batch(0, 1000000), std::out_of_range);
}

TEST(Resume, RejectsFirstBatchOutOfRange) {
  EXPECT_THROW(generate(ScheduleKind::flush, 2, 2, 3, 0, -1), ScheduleError);
  EXPECT_THROW(generate(ScheduleKind::flush, 2, 2, 3, 0, 3), ScheduleError);
  EXPECT_THROW(generate(ScheduleKind::two_bw, 2, 2, 3, 1, 4), ScheduleError);
  EXPECT_NO_THROW(generate(ScheduleKind::two_bw, 2, 2, 3, 3, 2));
  EXPECT_THROW(ScheduleStream(ScheduleKind::two_bw, 2, 2, 3, 1, 3), ScheduleError);
  EXPECT_THROW(ScheduleStream(ScheduleKind::gpipe, 2, 2, 3, 0, -1), ScheduleError);
  Schedule s = generate(ScheduleKind::flush, 2, 2, 3, 0, 1);
  s.first_batch = 3;
  EXPECT_EQ(check(s).summary(), "1 finding: schedule: first_batch outside [0, batches)");
}

// Asserts a finding at (stage, action) whose message contains `fragment`.
void expect_finding(const CheckResult& result, int stage, int action, const std::string& fragment) {
  for (const Finding& f : result.findings) {
    if (f.stage == stage && f.action == action && f.message.find(fragment) != std::string::npos) {
      return;
    }
  }
  ADD_FAILURE() << "no finding at stage " << stage << " action " << action << " containing '"
                << fragment << "'; " << result.summary();
}

TEST(Resume, FreshRunVersionInTheRefillIsCaught) {
  // 2bw d=2 m=2 K=1 resumed at batch 3: a fresh run would forward mb 7 on W3 (the newest);
  // the uninterrupted run used W2.
  Schedule s = generate(ScheduleKind::two_bw, 2, 2, 5, 1, 3);
  ASSERT_EQ(s.actions[0][1], Action::forward(7, 2));
  s.actions[0][1].version = 3;
  const CheckResult result = check(s);
  expect_finding(result, 0, 1, "forward on W3, the 2bw rule gives W2");
  ASSERT_EQ(s.actions[0][5], Action::backward(7, 2));
  expect_finding(result, 0, 5, "backward on W2 but the forward of mb 7 used W3");
  EXPECT_EQ(result.findings.size(), 2u) << result.summary();
}

TEST(Resume, WholeRunTailIsNotAResumedSchedule) {
  // Past the warm-up, the uninterrupted run's tail needs activations forwarded before the
  // checkpoint: the checker finds backwards without forwards.
  const Schedule whole = generate(ScheduleKind::two_bw, 3, 3, 5, 0);
  Schedule s = generate(ScheduleKind::two_bw, 3, 3, 5, 0, 2);
  for (int stage = 0; stage < 3; ++stage) {
    s.actions[stage] = by_batch(whole.actions[stage], 0, 5)[2];
    for (int t = 3; t < 5; ++t) {
      const auto part = by_batch(whole.actions[stage], 0, 5)[t];
      s.actions[stage].insert(s.actions[stage].end(), part.begin(), part.end());
    }
  }
  const CheckResult result = check(s);
  EXPECT_FALSE(result.ok());
  bool found = false;
  for (const Finding& f : result.findings) {
    found |= f.message.find("backward of mb 7 before its forward") != std::string::npos;
  }
  EXPECT_TRUE(found) << result.summary();
  expect_finding(result, 0, -1, "never forwarded: mb 7, 8");
}

TEST(Resume, WrongBuffersOrRangeAreCaught) {
  Schedule s = generate(ScheduleKind::two_bw, 2, 2, 5, 1, 3);
  // A fresh run's first 2bw step would retire nothing; here buffer 1 still holds W2.
  int step = 0;
  while (s.actions[1][step].kind != ActionKind::step) ++step;
  ASSERT_EQ(s.actions[1][step], Action::step(3, 4, 1, 2));
  s.actions[1][step].retired = -1;
  expect_finding(check(s), 1, step, "says it retires nothing but buffer 1 holds W2");
  // Claiming to start one batch earlier leaves batch 2's microbatches and markers missing.
  s = generate(ScheduleKind::two_bw, 2, 2, 5, 1, 3);
  s.first_batch = 2;
  const CheckResult earlier = check(s);
  expect_finding(earlier, 0, -1, "never forwarded: mb 5, 6");
  expect_finding(earlier, 0, 0, "expected batch_begin 2");
  // Claiming to start later puts microbatches out of range.
  s.first_batch = 4;
  expect_finding(check(s), 0, 1, "microbatch 7 outside 9..10");
}

TEST(Resume, SimulatesLikeAFreshRunOfTheRemainingBatches) {
  const Costs costs = Costs::uniform(1.0, 2.0, 0.25, 0.5, 0.1);
  struct Case {
    ScheduleKind kind;
    int warmup, first;
  };
  // Resumed past the warm-up, the remaining batches have the shape of a fresh run of theirs.
  for (const Case& c : {Case{ScheduleKind::flush, 0, 4}, Case{ScheduleKind::gpipe, 0, 2},
                        Case{ScheduleKind::two_bw, 0, 3}, Case{ScheduleKind::two_bw, 2, 5}}) {
    const Report resumed = simulate(generate(c.kind, 4, 8, 10, c.warmup, c.first), costs);
    const Report fresh = simulate(generate(c.kind, 4, 8, 10 - c.first), costs);
    EXPECT_EQ(resumed.makespan, fresh.makespan) << to_string(c.kind);
    EXPECT_EQ(resumed.steady_batch_time, fresh.steady_batch_time) << to_string(c.kind);
    for (int s = 0; s < 4; ++s) {
      EXPECT_EQ(resumed.stages[s].steady_bubble, fresh.stages[s].steady_bubble);
      EXPECT_EQ(resumed.stages[s].peak_in_flight, fresh.stages[s].peak_in_flight);
    }
    EXPECT_EQ(render_gantt(resumed.timeline, 60, 2), render_gantt(fresh.timeline, 60, 2));
  }
}

}  // namespace
}  // namespace p2bw::schedule
