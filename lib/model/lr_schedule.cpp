// Learning-rate schedule; see lr_schedule.hpp.
#include "model/lr_schedule.hpp"

#include <algorithm>
#include <cmath>

namespace p2bw::model {

double learning_rate(const config::TrainConfig& train, std::int64_t step) {
  const std::int64_t warmup = train.lr_warmup_steps;
  if (step < warmup) return train.lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (train.lr_decay == config::LrDecay::constant) return train.lr;
  const std::int64_t span = std::max<std::int64_t>(1, train.steps - 1 - warmup);
  const double progress =
      std::clamp(static_cast<double>(step - warmup) / static_cast<double>(span), 0.0, 1.0);
  const double range = train.lr - train.lr_min;
  if (train.lr_decay == config::LrDecay::linear) return train.lr - range * progress;
  return train.lr_min + 0.5 * range * (1.0 + std::cos(M_PI * progress));
}

}  // namespace p2bw::model
