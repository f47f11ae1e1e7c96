// The learning-rate schedule: linear warm-up from 0, then cosine, linear or constant decay that
// reaches train.lr_min at the last step.
#pragma once

#include <cstdint>

#include "config/deck.hpp"

namespace p2bw::model {

// Learning rate of optimizer step `step` (0-based) of a run of `train.steps` steps.
double learning_rate(const config::TrainConfig& train, std::int64_t step);

}  // namespace p2bw::model
