// Tests of the schedule generators, the 2BW version rule and the schedule queries.
#include <gtest/gtest.h>

#include "schedule/schedule.hpp"
#include "schedule/text.hpp"

namespace p2bw::schedule {
namespace {

TEST(VersionRule, TwoBwTableForFourMicrobatches) {
  // v(k) = max(floor((k-1)/m) - 1, 0): the first two batches share W0.
  for (int k = 1; k <= 16; ++k) {
    const int expected = k <= 8 ? 0 : k <= 12 ? 1 : 2;
    EXPECT_EQ(weight_version(ScheduleKind::two_bw, 4, 0, k), expected) << "k=" << k;
  }
}

TEST(VersionRule, SyncWarmupRestartsTheRuleAtTheSwitch) {
  // K = 2 flush batches on W0, W1, then 2BW from W2: two batches on W2, then W3, ...
  const int expected[] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3};
  for (int k = 1; k <= 20; ++k) {
    EXPECT_EQ(weight_version(ScheduleKind::two_bw, 4, 2, k), expected[k - 1]) << "k=" << k;
  }
}

TEST(VersionRule, FlushAndGpipeUseTheBatchIndex) {
  for (int k = 1; k <= 12; ++k) {
    EXPECT_EQ(weight_version(ScheduleKind::flush, 4, 0, k), (k - 1) / 4);
    EXPECT_EQ(weight_version(ScheduleKind::gpipe, 4, 0, k), (k - 1) / 4);
  }
}

TEST(VersionRule, BuffersAlternateFromTheSwitch) {
  EXPECT_EQ(weight_buffer(ScheduleKind::flush, 0, 5), 0);
  for (int v = 0; v < 6; ++v) EXPECT_EQ(weight_buffer(ScheduleKind::two_bw, 0, v), v % 2);
  const int with_warmup[] = {0, 0, 0, 1, 0, 1};  // K = 2: W0..W2 in buffer 0, then alternate
  for (int v = 0; v < 6; ++v) EXPECT_EQ(weight_buffer(ScheduleKind::two_bw, 2, v), with_warmup[v]);
}

TEST(Generate, EveryComputeUsesTheRuleVersion) {
  for (int warmup : {0, 1, 2}) {
    const Schedule s = generate(ScheduleKind::two_bw, 3, 4, 5, warmup);
    for (int stage = 0; stage < 3; ++stage) {
      for (const Action& a : s.actions[stage]) {
        if (is_compute(a.kind)) {
          EXPECT_EQ(a.version, weight_version(s.kind, 4, warmup, a.mb)) << to_string(a);
        }
      }
    }
  }
}

TEST(Generate, TwoBwStepsRotateTheBuffers) {
  const Schedule s = generate(ScheduleKind::two_bw, 2, 2, 4);
  std::vector<Action> steps;
  for (const Action& a : s.actions[0]) {
    if (a.kind == ActionKind::step) steps.push_back(a);
  }
  const std::vector<Action> expected = {Action::step(0, 1, 1, -1), Action::step(1, 2, 0, 0),
                                        Action::step(2, 3, 1, 1), Action::step(3, 4, 0, 2)};
  EXPECT_EQ(steps, expected);
}

TEST(Generate, SingleStageHasNoMessages) {
  for (ScheduleKind kind : {ScheduleKind::gpipe, ScheduleKind::flush, ScheduleKind::two_bw}) {
    const Schedule s = generate(kind, 1, 3, 2);
    ASSERT_EQ(s.actions.size(), 1u);
    int forwards = 0;
    for (const Action& a : s.actions[0]) {
      EXPECT_FALSE(is_communication(a.kind)) << to_string(a);
      forwards += a.kind == ActionKind::forward;
    }
    EXPECT_EQ(forwards, 6);
  }
}

TEST(Generate, QueriesMatchTheBounds) {
  for (ScheduleKind kind : {ScheduleKind::gpipe, ScheduleKind::flush, ScheduleKind::two_bw}) {
    const Schedule s = generate(kind, 4, 6, 3);
    for (int stage = 0; stage < 4; ++stage) {
      EXPECT_EQ(max_in_flight(s, stage), activation_bound(kind, 4, 6, stage));
      EXPECT_EQ(weight_buffers_needed(s, stage), kind == ScheduleKind::two_bw ? 2 : 1);
    }
  }
  EXPECT_EQ(max_in_flight(generate(ScheduleKind::flush, 4, 2, 1), 0), 2);  // m < d: min(d - s, m)
}

TEST(Generate, RejectsBadArguments) {
  EXPECT_THROW(generate(ScheduleKind::two_bw, 4, 3, 1), ScheduleError);  // 2bw needs m >= d
  EXPECT_NO_THROW(generate(ScheduleKind::flush, 4, 3, 1));
  EXPECT_THROW(generate(ScheduleKind::flush, 0, 3, 1), ScheduleError);
  EXPECT_THROW(generate(ScheduleKind::flush, 2, 0, 1), ScheduleError);
  EXPECT_THROW(generate(ScheduleKind::flush, 2, 2, 0), ScheduleError);
  EXPECT_THROW(generate(ScheduleKind::flush, 2, 2, 2, 1), ScheduleError);   // warm-up is 2bw only
  EXPECT_THROW(generate(ScheduleKind::two_bw, 2, 2, 2, 3), ScheduleError);  // K > batches
  EXPECT_THROW(parse_kind("1f1b"), ScheduleError);
}

}  // namespace
}  // namespace p2bw::schedule
