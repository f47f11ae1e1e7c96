// Tests of the schedule checker: every generated schedule passes; deliberately broken
// schedules fail with findings that name the right stage and action index.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "schedule/check.hpp"
#include "schedule/schedule.hpp"
#include "schedule/text.hpp"

namespace p2bw::schedule {
namespace {

TEST(Check, AcceptsEveryGeneratedSchedule) {
  int checked = 0;
  for (int d = 1; d <= 8; ++d) {
    for (int m = d; m <= 4 * d; ++m) {
      for (int batches = 1; batches <= 4; ++batches) {
        std::vector<Schedule> schedules = {generate(ScheduleKind::gpipe, d, m, batches),
                                           generate(ScheduleKind::flush, d, m, batches),
                                           generate(ScheduleKind::two_bw, d, m, batches)};
        for (int warmup = 1; warmup <= std::min(2, batches); ++warmup) {
          schedules.push_back(generate(ScheduleKind::two_bw, d, m, batches, warmup));
        }
        for (const Schedule& s : schedules) {
          const CheckResult result = check(s);
          ASSERT_TRUE(result.ok())
              << to_string(s.kind) << " d=" << d << " m=" << m << " batches=" << batches
              << " K=" << s.sync_warmup << ": " << result.summary();
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 2000);
}

TEST(Check, AcceptsFewerMicrobatchesThanStagesForFlushAndGpipe) {
  for (int m = 1; m < 6; ++m) {
    EXPECT_TRUE(check(generate(ScheduleKind::flush, 6, m, 2)).ok()) << m;
    EXPECT_TRUE(check(generate(ScheduleKind::gpipe, 6, m, 2)).ok()) << m;
  }
}

// Index of the action whose text is `text` on `stage`; fails the test if absent.
int index_of(const Schedule& s, int stage, const std::string& text) {
  for (size_t i = 0; i < s.actions[stage].size(); ++i) {
    if (to_string(s.actions[stage][i]) == text) return static_cast<int>(i);
  }
  ADD_FAILURE() << "no '" << text << "' on stage " << stage;
  return -1;
}

// Asserts a finding at (stage, action) whose message contains `fragment`.
void expect_finding(const CheckResult& result, int stage, int action, const std::string& fragment) {
  for (const Finding& f : result.findings) {
    if (f.stage == stage && f.action == action && f.message.find(fragment) != std::string::npos) {
      return;
    }
  }
  std::string all;
  for (const Finding& f : result.findings) all += "\n  " + to_string(f);
  ADD_FAILURE() << "no finding at stage " << stage << " action " << action << " containing '"
                << fragment << "'; findings:" << all;
}

void move_action(std::vector<Action>& list, int from, int to) {
  const Action a = list[from];
  list.erase(list.begin() + from);
  list.insert(list.begin() + to, a);
}

TEST(Check, SwappedSendsBreakNcclOrder) {
  Schedule s = generate(ScheduleKind::gpipe, 2, 2, 1);
  // Stage 0: F 1, send_act 1, F 2, send_act 2  ->  F 1, F 2, send_act 2, send_act 1.
  auto& list = s.actions[0];
  move_action(list, index_of(s, 0, "F 2 v0"), index_of(s, 0, "send_act 1"));
  move_action(list, index_of(s, 0, "send_act 2"), index_of(s, 0, "send_act 1"));
  const CheckResult result = check(s);
  EXPECT_FALSE(result.ok());
  expect_finding(result, 1, index_of(s, 1, "recv_act 1"),
                 "[recv_act 1] NCCL order: message 1 from stage 0 to stage 1 is received as the "
                 "activation of mb 1 but sent as the activation of mb 2 (stage 0 action 3 "
                 "[send_act 2]); NCCL matches the messages between two ranks by their order, "
                 "not by tag");
  expect_finding(result, 1, index_of(s, 1, "recv_act 2"),
                 "message 2 from stage 0 to stage 1 is received as the activation of mb 2 but "
                 "sent as the activation of mb 1");
  EXPECT_EQ(result.findings.size(), 2u) << result.summary();
}

TEST(Check, SwappedGradientSendsBreakNcclOrder) {
  // Flush d = 4, stage 2 ends with B 3, send_grad 3, recv_grad 4, B 4, send_grad 4; sending
  // gradient 3 after gradient 4 is fine for every per-stage rule and for tag matching (MPI), but
  // stage 1 receives gradient 3 first.
  Schedule s = generate(ScheduleKind::flush, 4, 4, 1);
  auto& list = s.actions[2];
  move_action(list, index_of(s, 2, "send_grad 3"), index_of(s, 2, "send_grad 4"));
  const CheckResult result = check(s);
  expect_finding(result, 1, index_of(s, 1, "recv_grad 3"),
                 "from stage 2 to stage 1 is received as the gradient of mb 3 but sent as the "
                 "gradient of mb 4");
  expect_finding(result, 1, index_of(s, 1, "recv_grad 4"),
                 "from stage 2 to stage 1 is received as the gradient of mb 4 but sent as the "
                 "gradient of mb 3");
  EXPECT_EQ(result.findings.size(), 2u) << result.summary();
}

// What a stage issues, in order: one (peer, kind, microbatch) per message half, an exchange's
// send before its receive, as the executor posts them. Written out here independently of the
// checker's own bookkeeping.
struct Issued {
  int from, to;  // ordered pair of stages (ranks of one pipeline)
  bool activation;
  int mb;
  bool operator==(const Issued& o) const {
    return from == o.from && to == o.to && activation == o.activation && mb == o.mb;
  }
};

// Per ordered pair (from, to): what `from` sends to `to` and what `to` receives from `from`.
std::map<std::pair<int, int>, std::pair<std::vector<Issued>, std::vector<Issued>>> issued(
    const Schedule& s) {
  std::map<std::pair<int, int>, std::pair<std::vector<Issued>, std::vector<Issued>>> pairs;
  for (int st = 0; st < s.stages; ++st) {
    const auto send = [&](bool act, int mb) {
      const Issued i{st, act ? st + 1 : st - 1, act, mb};
      pairs[{i.from, i.to}].first.push_back(i);
    };
    const auto recv = [&](bool act, int mb) {
      const Issued i{act ? st - 1 : st + 1, st, act, mb};
      pairs[{i.from, i.to}].second.push_back(i);
    };
    for (const Action& a : s.actions[st]) {
      switch (a.kind) {
        case ActionKind::send_act:
          send(true, a.mb);
          break;
        case ActionKind::recv_act:
          recv(true, a.mb);
          break;
        case ActionKind::send_grad:
          send(false, a.mb);
          break;
        case ActionKind::recv_grad:
          recv(false, a.mb);
          break;
        case ActionKind::send_act_recv_grad:
          send(true, a.mb), recv(false, a.recv_mb);
          break;
        case ActionKind::send_grad_recv_act:
          send(false, a.mb), recv(true, a.recv_mb);
          break;
        default:
          break;
      }
    }
  }
  return pairs;
}

TEST(Check, NcclOrderHoldsForEveryGeneratedSchedule) {
  int checked = 0;
  for (int d = 1; d <= 8; ++d) {
    for (int m = 1; m <= 3 * d; ++m) {
      for (int batches = 1; batches <= 4; ++batches) {
        std::vector<Schedule> schedules;
        for (int first = 0; first < batches; ++first) {  // whole runs and resumed ones
          schedules.push_back(generate(ScheduleKind::gpipe, d, m, batches, 0, first));
          schedules.push_back(generate(ScheduleKind::flush, d, m, batches, 0, first));
          if (m < d) continue;
          for (int warmup = 0; warmup <= std::min(2, batches); ++warmup)
            schedules.push_back(generate(ScheduleKind::two_bw, d, m, batches, warmup, first));
        }
        for (const Schedule& s : schedules) {
          const std::string name =
              std::string(to_string(s.kind)) + " d=" + std::to_string(d) +
              " m=" + std::to_string(m) + " batches=" + std::to_string(batches) +
              " K=" + std::to_string(s.sync_warmup) + " first=" + std::to_string(s.first_batch);
          const auto pairs = issued(s);
          // d - 1 links, each an activation pair s -> s+1 and a gradient pair s+1 -> s (with
          // d = 2 stage 0's next stage and stage 1's previous stage are each other).
          ASSERT_EQ(static_cast<int>(pairs.size()), 2 * (d - 1)) << name;
          for (const auto& [pair, sides] : pairs) {
            ASSERT_EQ(sides.first.size(),
                      static_cast<size_t>(s.microbatches * (s.batches - s.first_batch)))
                << name;
            ASSERT_TRUE(sides.first == sides.second)
                << name << ": stage " << pair.first << " -> " << pair.second;
          }
          const CheckResult result = check(s);
          ASSERT_TRUE(result.ok()) << name << ": " << result.summary();
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 4000);
}

TEST(Check, MissingReceive) {
  Schedule s = generate(ScheduleKind::flush, 3, 3, 1);
  auto& list = s.actions[1];
  list.erase(list.begin() + index_of(s, 1, "recv_act 2"));
  const CheckResult result = check(s);
  expect_finding(result, 0, index_of(s, 0, "send_act 2"), "has no matching receive");
  expect_finding(result, 1, index_of(s, 1, "F 2 v0"), "before the activation of mb 2 is received");
}

TEST(Check, BackwardOnTheWrongVersion) {
  Schedule s = generate(ScheduleKind::two_bw, 2, 2, 3);
  const int b5 = index_of(s, 1, "B 5 v1");
  s.actions[1][b5].version = 0;
  const CheckResult result = check(s);
  expect_finding(result, 1, b5, "backward on W0 but the forward of mb 5 used W1");
  expect_finding(result, 1, b5,
                 "uses W0, which no weight buffer holds (buffer 0: W2, buffer 1: W1)");
  // The step before it already overwrites W0, which B 5 now still needs.
  expect_finding(result, 1, index_of(s, 1, "step 1 v2 buf0 retire v0"), "3 versions alive");
  EXPECT_EQ(result.findings.size(), 3u) << result.summary();
}

TEST(Check, ForwardOffTheVersionRule) {
  Schedule s = generate(ScheduleKind::two_bw, 2, 2, 3);
  const int f4 = index_of(s, 0, "F 4 v0");
  s.actions[0][f4].version = 1;
  expect_finding(check(s), 0, f4, "forward on W1, the 2bw rule gives W0");
}

TEST(Check, ThirdVersionAlive) {
  // Stage 0 of 2bw, batch 1: ... B 3 v0, F 5 v1, send_act_recv_grad 5 4, B 4 v0, allreduce 1,
  // step 1. Moving the allreduce and step before B 4 makes the step write W2 while mb 4 (W0) and
  // mb 5 (W1) are in flight.
  Schedule s = generate(ScheduleKind::two_bw, 2, 2, 4);
  auto& list = s.actions[0];
  const int b4 = index_of(s, 0, "B 4 v0");
  move_action(list, index_of(s, 0, "allreduce 1"), b4);
  move_action(list, index_of(s, 0, "step 1 v2 buf0 retire v0"), b4 + 1);
  const CheckResult result = check(s);
  const int step = index_of(s, 0, "step 1 v2 buf0 retire v0");
  expect_finding(result, 0, step, "3 versions alive (W0, W1, W2), at most 2 allowed");
  expect_finding(result, 0, step, "overwrites W0 in buffer 0, still needed by in-flight mb 4");
  expect_finding(result, 0, index_of(s, 0, "allreduce 1"), "before the backward of mb 4");
}

TEST(Check, BackwardBeforeItsForward) {
  Schedule s = generate(ScheduleKind::flush, 2, 2, 1);
  const int f1 = index_of(s, 1, "F 1 v0");
  move_action(s.actions[1], index_of(s, 1, "B 1 v0"), f1);
  expect_finding(check(s), 1, f1, "backward of mb 1 before its forward");
}

TEST(Check, FacingBlockingSendsDeadlock) {
  // Replace the two grouped exchanges of flush d=2 by a blocking send followed by a receive on
  // both stages: each stage sends first, so both wait forever.
  std::string text = to_text(generate(ScheduleKind::flush, 2, 2, 1));
  const auto replace = [&text](const std::string& from, const std::string& to) {
    const size_t pos = text.find(from);
    ASSERT_NE(pos, std::string::npos) << from;
    text.replace(pos, from.size(), to);
  };
  replace("send_act_recv_grad 2 1\n", "send_act 2\nrecv_grad 1\n");
  replace("send_grad_recv_act 1 2\n", "send_grad 1\nrecv_act 2\n");
  const Schedule s = from_text(text);
  const CheckResult result = check(s);
  expect_finding(result, 0, index_of(s, 0, "send_act 2"),
                 "deadlock: blocked sending activation of mb 2 to stage 1, which is at action");
  expect_finding(result, 1, index_of(s, 1, "send_grad 1"),
                 "deadlock: blocked sending gradient of mb 1 to stage 0");
  EXPECT_NE(result.summary().find("deadlock"), std::string::npos);
}

TEST(Check, ActivationBound) {
  // GPipe's order labelled as flush holds m activations where flush allows min(d - s, m).
  Schedule s = generate(ScheduleKind::gpipe, 2, 4, 1);
  s.kind = ScheduleKind::flush;
  expect_finding(check(s), 0, index_of(s, 0, "F 3 v0"),
                 "3 activations in flight, the bound for this stage is 2");
}

TEST(Check, SplitBackwardIsAcceptedInOrder) {
  Schedule s = generate(ScheduleKind::flush, 3, 3, 2);
  for (auto& list : s.actions) {
    for (size_t i = 0; i < list.size(); ++i) {
      if (list[i].kind != ActionKind::backward) continue;
      list[i].kind = ActionKind::backward_input;
      list.insert(list.begin() + static_cast<long>(i) + 1,
                  Action::compute(ActionKind::backward_weight, list[i].mb, list[i].version));
    }
  }
  EXPECT_TRUE(check(s).ok()) << check(s).summary();
  const int bw = index_of(s, 2, "Bw 1 v0");
  move_action(s.actions[2], bw, bw - 1);  // before its Bi
  expect_finding(check(s), 2, bw - 1, "weight-gradient half before the input-gradient half");
}

TEST(Check, StepOfAFlushBatchWithMicrobatchesInFlight) {
  Schedule s = generate(ScheduleKind::flush, 2, 2, 2);
  const int b2 = index_of(s, 0, "recv_grad 2");
  move_action(s.actions[0], index_of(s, 0, "allreduce 0"), b2);
  move_action(s.actions[0], index_of(s, 0, "step 0 v1 buf0 retire v0"), b2 + 1);
  const CheckResult result = check(s);
  expect_finding(result, 0, b2 + 1, "step of a flush batch while 1 microbatches are in flight");
  expect_finding(result, 0, b2 + 1, "overwrites W0 in buffer 0, still needed by in-flight mb 2");
}

TEST(Check, HeaderAndCompleteness) {
  Schedule s = generate(ScheduleKind::flush, 2, 2, 1);
  s.actions.pop_back();
  EXPECT_EQ(check(s).summary(), "1 finding: schedule: has 1 action lists for 2 stages");
  s = generate(ScheduleKind::flush, 1, 3, 1);
  s.actions[0].erase(s.actions[0].begin() + index_of(s, 0, "B 2 v0"));
  expect_finding(check(s), 0, -1, "never backwarded: mb 2");
}

TEST(Check, AcceptsEveryForwardOnlySchedule) {
  for (int d = 1; d <= 8; ++d) {
    for (int m = 1; m <= 12; ++m) {
      const Schedule s = generate_forward_only(d, m);
      ASSERT_TRUE(check(s).ok()) << "d=" << d << " m=" << m << ": " << check(s).summary();
      EXPECT_EQ(max_in_flight(s, 0), m) << "no backward: forwards only accumulate";
    }
  }
  EXPECT_EQ(to_text(generate_forward_only(2, 2)).find("forward-only") != std::string::npos, true);
  EXPECT_EQ(from_text(to_text(generate_forward_only(3, 4))), generate_forward_only(3, 4));
}

TEST(Check, ForwardOnlyMutations) {
  // Two forwards before the first send hold two activations where forward-only allows one.
  Schedule s = generate_forward_only(2, 2);
  move_action(s.actions[0], index_of(s, 0, "F 2 v0"), index_of(s, 0, "send_act 1"));
  expect_finding(check(s), 0, index_of(s, 0, "F 2 v0"),
                 "2 activations in flight, the bound for this stage is 1");
  // A backward has no place in an evaluation.
  s = generate_forward_only(2, 2);
  s.actions[1].push_back(Action::backward(1, 0));
  expect_finding(check(s), 1, static_cast<int>(s.actions[1].size()) - 1,
                 "a forward-only schedule has only forwards");
  // A forward before its activation arrives, and a send that is never received.
  s = generate_forward_only(3, 2);
  move_action(s.actions[1], index_of(s, 1, "F 2 v0"), index_of(s, 1, "recv_act 2"));
  expect_finding(check(s), 1, index_of(s, 1, "F 2 v0"),
                 "before the activation of mb 2 is received");
  s = generate_forward_only(2, 3);
  s.actions[1].erase(s.actions[1].begin() + index_of(s, 1, "recv_act 3"));
  expect_finding(check(s), 0, index_of(s, 0, "send_act 3"), "has no matching receive");
  // Evaluation uses one set of weights.
  s = generate_forward_only(2, 2);
  s.actions[0][index_of(s, 0, "F 2 v0")].version = 1;
  expect_finding(check(s), 0, index_of(s, 0, "F 2 v1"), "the forward-only rule gives W0");
}

}  // namespace
}  // namespace p2bw::schedule
