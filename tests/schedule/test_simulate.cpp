// Tests of the schedule simulator: exact bubble fractions, 2BW steady state, peak activations,
// timeline consistency, and the text renderers.
#include <gtest/gtest.h>

#include <map>
#include <utility>

#include "schedule/schedule.hpp"
#include "schedule/simulate.hpp"
#include "schedule/text.hpp"

namespace p2bw::schedule {
namespace {

// Forward 1, backward 2: every time in these runs is an integer, so doubles are exact.
const Costs kUnit = Costs::uniform(1.0, 2.0);

TEST(Simulate, FlushAndGpipeBubbleIsExact) {
  for (ScheduleKind kind : {ScheduleKind::flush, ScheduleKind::gpipe}) {
    for (int d : {2, 4, 8}) {
      for (int m : {d, 2 * d, 4 * d}) {
        const Report r = simulate(generate(kind, d, m, 1), kUnit);
        EXPECT_EQ(r.makespan, 3.0 * (m + d - 1));
        for (int s = 0; s < d; ++s) {
          EXPECT_EQ(r.stages[s].bubble, double(d - 1) / double(m + d - 1))
              << to_string(kind) << " d=" << d << " m=" << m << " stage " << s;
          EXPECT_EQ(r.stages[s].compute, 3.0 * m);
        }
      }
    }
  }
}

TEST(Simulate, FlushFourStagesEightMicrobatches) {
  const Report r = simulate(generate(ScheduleKind::flush, 4, 8, 1), kUnit);
  for (const StageReport& s : r.stages) EXPECT_EQ(s.bubble, 3.0 / 11.0);
}

TEST(Simulate, TwoBwSteadyStateHasNoBubble) {
  for (int d : {2, 4}) {
    for (int m : {d, 2 * d}) {
      const Report r = simulate(generate(ScheduleKind::two_bw, d, m, 6), kUnit);
      EXPECT_EQ(r.steady_batch_time, 3.0 * m) << "d=" << d << " m=" << m;
      for (int s = 0; s < d; ++s) EXPECT_EQ(r.stages[s].steady_bubble, 0.0) << "stage " << s;
      // Over the whole run only the one fill and one drain remain.
      EXPECT_EQ(r.makespan, 3.0 * (6 * m + d - 1));
    }
  }
}

TEST(Simulate, FlushPaysTheBubbleEveryBatch) {
  const Report r = simulate(generate(ScheduleKind::flush, 4, 8, 5), kUnit);
  EXPECT_EQ(r.steady_batch_time, 3.0 * 11);
  for (const StageReport& s : r.stages) EXPECT_EQ(s.steady_bubble, 3.0 / 11.0);
}

TEST(Simulate, PeakInFlightEqualsTheBound) {
  for (ScheduleKind kind : {ScheduleKind::gpipe, ScheduleKind::flush, ScheduleKind::two_bw}) {
    const Schedule schedule = generate(kind, 4, 8, 3);
    const Report r = simulate(schedule, kUnit);
    for (int s = 0; s < 4; ++s) {
      EXPECT_EQ(r.stages[s].peak_in_flight, kind == ScheduleKind::gpipe ? 8 : 4 - s);
      EXPECT_EQ(r.stages[s].peak_in_flight, max_in_flight(schedule, s));
    }
  }
}

// No overlap on a stage; activations and gradients arrive before they are used; accounting adds up.
void expect_consistent(const Schedule& schedule, const Costs& costs) {
  const Report r = simulate(schedule, costs);
  const double message = costs.message.at(0);
  std::map<std::pair<int, int>, const Event*> forward;  // (stage, mb) -> event
  std::map<std::pair<int, int>, const Event*> backward;
  for (int s = 0; s < schedule.stages; ++s) {
    double previous_end = 0;
    for (const Event& e : r.timeline.stages[s]) {
      EXPECT_GE(e.start, previous_end);
      EXPECT_GE(e.end, e.start);
      previous_end = e.end;
      if (e.action.kind == ActionKind::forward) forward[{s, e.action.mb}] = &e;
      if (e.action.kind == ActionKind::backward) backward[{s, e.action.mb}] = &e;
    }
    const StageReport& sr = r.stages[s];
    EXPECT_NEAR(sr.compute + sr.update + sr.wait + sr.idle, r.makespan, 1e-9 * r.makespan);
  }
  for (int s = 0; s < schedule.stages; ++s) {
    for (int mb = 1; mb <= schedule.total_microbatches(); ++mb) {
      const Event* f = forward.at({s, mb});
      const Event* b = backward.at({s, mb});
      EXPECT_GE(b->start, f->end);
      if (s > 0) {
        EXPECT_GE(f->start, forward.at({s - 1, mb})->end + message);
      }
      if (s + 1 < schedule.stages) {
        EXPECT_GE(b->start, backward.at({s + 1, mb})->end + message);
      }
    }
  }
}

TEST(Simulate, TimelinesAreConsistent) {
  const Costs uneven{{1.0, 1.5, 0.5, 2.0}, {2.0, 2.5, 1.0, 4.0}, {0.25}, {0.5}, {0.125}};
  for (ScheduleKind kind : {ScheduleKind::gpipe, ScheduleKind::flush, ScheduleKind::two_bw}) {
    expect_consistent(generate(kind, 4, 4, 3), kUnit);
    expect_consistent(generate(kind, 4, 6, 3), uneven);
  }
  expect_consistent(generate(ScheduleKind::two_bw, 4, 5, 4, 2), uneven);
}

TEST(Simulate, GlobalSyncMakesStagesWaitForTheLastBackward) {
  // 2bw, d = 2, m = 4, forward 1, backward 2: with the all-reduce as a collective over all
  // stages (p2bw's executor), stage 1 reaches it one backward before stage 0 and waits; stage
  // 0 then waits for stage 1's next backward. A batch takes m (F + B) + B = 14 instead of 12.
  Costs sync = kUnit;
  sync.global_sync = true;
  const Schedule schedule = generate(ScheduleKind::two_bw, 2, 4, 6);
  EXPECT_EQ(simulate(schedule, kUnit).steady_batch_time, 12.0);
  const Report r = simulate(schedule, sync);
  EXPECT_EQ(r.steady_batch_time, 14.0);
  for (int s = 0; s < 2; ++s) EXPECT_GT(r.stages[s].steady_bubble, 0.0) << "stage " << s;
  expect_consistent(schedule, sync);
  // Unequal all-reduces overlap the other stage's work: flush, d = 2, m = 1, all-reduce 0 on
  // stage 0 and 3 on stage 1. Stage 1 reduces 4..7 while stage 0 runs its backward 4..6; both
  // leave the collective at 7 (not 6 + 3).
  Costs unequal{{1.0}, {2.0}, {0.0}, {0.0, 3.0}, {0.0}, true};
  EXPECT_EQ(simulate(generate(ScheduleKind::flush, 2, 1, 1), unequal).makespan, 7.0);
  // Flush already waits at the batch boundary: the sync costs it nothing.
  const Schedule flush = generate(ScheduleKind::flush, 4, 8, 3);
  Costs flush_sync = Costs::uniform(1.0, 2.0, 0.25, 0.5, 0.125);
  const double free = simulate(flush, flush_sync).makespan;
  flush_sync.global_sync = true;
  EXPECT_EQ(simulate(flush, flush_sync).makespan, free);
  // The Gantt chart shows each stage's all-reduce work, then its wait for the others.
  Costs shown = Costs::uniform(1.0, 2.0, 0.0, 1.0);
  shown.global_sync = true;
  const std::string gantt =
      render_gantt(simulate(generate(ScheduleKind::flush, 2, 1, 1), shown).timeline, 14, 1);
  EXPECT_NE(gantt.find("stage  0 |FF------BBBBAA|\nstage  1 |--FFBBBBAA----|"), std::string::npos)
      << gantt;
}

TEST(Simulate, MessageTimeIsPaidOncePerHopInGpipeFill) {
  // One batch, one microbatch: a pure chain F0 -> F1 -> F2, then B2 -> B1 -> B0.
  const Report r = simulate(generate(ScheduleKind::gpipe, 3, 1, 1), Costs::uniform(1, 2, 0.5));
  EXPECT_EQ(r.makespan, 3 * 1.0 + 3 * 2.0 + 4 * 0.5);
}

TEST(Simulate, RendersGanttAndReport) {
  const Report r = simulate(generate(ScheduleKind::flush, 2, 2, 2), kUnit);
  // The first batch takes 9 time units: two columns per unit. Stage 1 ends the batch first and
  // then waits for the next batch's activation.
  const std::string gantt = render_gantt(r.timeline, 18, 1);
  const std::string expected =
      "time 0 .. 9, one column = 0.5 (F forward, B backward, A allreduce, S step, - waiting, . "
      "idle)\n"
      "stage  0 |FFFF----BBBB--BBBB|\n"
      "stage  1 |--FFBBBBFFBBBB----|\n";
  EXPECT_EQ(gantt, expected);
  const std::string table = format_report(r);
  EXPECT_NE(table.find("makespan 18.000, steady-state time per batch 9.000"), std::string::npos)
      << table;
  EXPECT_NE(table.find("0.3333"), std::string::npos) << table;
}

TEST(Simulate, RejectsInvalidInput) {
  Schedule broken = generate(ScheduleKind::flush, 2, 2, 1);
  broken.actions[1].pop_back();
  EXPECT_THROW(simulate(broken, kUnit), ScheduleError);
  Costs wrong = kUnit;
  wrong.forward = {1.0, 1.0, 1.0};
  EXPECT_THROW(simulate(generate(ScheduleKind::flush, 2, 2, 1), wrong), ScheduleError);
  wrong = kUnit;
  wrong.backward = {-1.0};
  EXPECT_THROW(simulate(generate(ScheduleKind::flush, 2, 2, 1), wrong), ScheduleError);
}

}  // namespace
}  // namespace p2bw::schedule
