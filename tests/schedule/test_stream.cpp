// ScheduleStream: batch-by-batch actions of long runs equal the whole generated schedule.
#include <gtest/gtest.h>

#include "schedule/stream.hpp"
#include "schedule/text.hpp"

namespace p2bw::schedule {
namespace {

TEST(Stream, EqualsTheWholeGeneratedSchedule) {
  int compared = 0;
  for (ScheduleKind kind : {ScheduleKind::gpipe, ScheduleKind::flush, ScheduleKind::two_bw}) {
    for (int d = 1; d <= 4; ++d) {
      for (int m : {d, d + 1, 2 * d}) {
        for (int batches = 1; batches <= 11; ++batches) {
          for (int k = 0; k <= (kind == ScheduleKind::two_bw ? std::min(batches, 7) : 0); ++k) {
            const Schedule whole = generate(kind, d, m, batches, k);
            const ScheduleStream stream(kind, d, m, batches, k);
            ASSERT_TRUE(stream.proof().ok()) << stream.proof().summary();
            for (int s = 0; s < d; ++s) {
              std::vector<Action> joined;
              for (int t = 0; t < batches; ++t) {
                const auto part = stream.batch(s, t);
                joined.insert(joined.end(), part.begin(), part.end());
              }
              ASSERT_EQ(joined.size(), whole.actions[s].size())
                  << to_string(kind) << " d=" << d << " m=" << m << " batches=" << batches
                  << " K=" << k << " stage " << s;
              for (size_t i = 0; i < joined.size(); ++i)
                ASSERT_EQ(joined[i], whole.actions[s][i])
                    << to_string(kind) << " d=" << d << " m=" << m << " batches=" << batches
                    << " K=" << k << " stage " << s << " action " << i << ": "
                    << to_string(joined[i]) << " vs " << to_string(whole.actions[s][i]);
              ++compared;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(compared, 1000);
}

TEST(Stream, RejectsWhatGenerateRejects) {
  EXPECT_THROW(ScheduleStream(ScheduleKind::two_bw, 4, 2, 10, 0), ScheduleError);
  EXPECT_THROW(ScheduleStream(ScheduleKind::flush, 2, 2, 10, 1), ScheduleError);
  EXPECT_THROW(ScheduleStream(ScheduleKind::two_bw, 2, 2, 3, 4), ScheduleError);
}

TEST(Stream, HandlesRunsTooLongToGenerate) {
  const ScheduleStream stream(ScheduleKind::two_bw, 8, 64, 1000000, 1000);
  const auto actions = stream.batch(3, 500000);
  int forwards = 0;
  for (const Action& a : actions) forwards += a.kind == ActionKind::forward;
  EXPECT_EQ(forwards, 64);
  EXPECT_EQ(actions.back().kind, ActionKind::batch_end);
  EXPECT_EQ(actions.back().batch, 500000);
}

}  // namespace
}  // namespace p2bw::schedule
