// Learning-rate schedule: warm-up, cosine and linear decay to lr_min at the last step.
#include <gtest/gtest.h>

#include "model/lr_schedule.hpp"

namespace p2bw::model {
namespace {

config::TrainConfig train(config::LrDecay decay) {
  config::TrainConfig t;
  t.steps = 11;
  t.lr = 1.0;
  t.lr_min = 0.1;
  t.lr_warmup_steps = 0;
  t.lr_decay = decay;
  return t;
}

TEST(LrSchedule, WarmupRisesLinearlyToThePeak) {
  auto t = train(config::LrDecay::constant);
  t.lr_warmup_steps = 4;
  EXPECT_DOUBLE_EQ(learning_rate(t, 0), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate(t, 3), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(t, 10), 1.0);
}

TEST(LrSchedule, CosineEndsAtTheMinimum) {
  const auto t = train(config::LrDecay::cosine);
  EXPECT_DOUBLE_EQ(learning_rate(t, 0), 1.0);
  EXPECT_NEAR(learning_rate(t, 5), 0.55, 1e-15);  // halfway
  EXPECT_NEAR(learning_rate(t, 10), 0.1, 1e-15);
}

TEST(LrSchedule, LinearEndsAtTheMinimum) {
  auto t = train(config::LrDecay::linear);
  t.lr_warmup_steps = 1;
  EXPECT_DOUBLE_EQ(learning_rate(t, 0), 1.0);
  EXPECT_NEAR(learning_rate(t, 1), 1.0, 1e-15);
  EXPECT_NEAR(learning_rate(t, 10), 0.1, 1e-15);
  EXPECT_NEAR(learning_rate(t, 20), 0.1, 1e-15);  // clamped past the end
}

}  // namespace
}  // namespace p2bw::model
