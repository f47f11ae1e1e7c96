// Predicted memory per pipeline stage (pipedream-2bw.md, "Memory per stage"): weights times
// versions, gradients, optimizer state, stashed activations of the microbatches in flight and the
// boundary buffers. The executor measures the same categories.
#pragma once

#include <cstdint>
#include <vector>

#include "config/deck.hpp"
#include "pipeline/partition.hpp"

namespace p2bw::pipeline {

struct StageMemory {
  std::int64_t params = 0;       // parameters of the stage
  int versions = 1;              // weight versions alive (2 under 2bw)
  int in_flight = 0;             // most microbatches whose activations are stashed at once
  std::int64_t weights = 0;      // bytes: params · 4 · versions
  std::int64_t gradients = 0;    // bytes: params · 4 (fp32 accumulation)
  std::int64_t optimizer = 0;    // bytes: AdamW 2 floats, SGD 1 float per parameter
  std::int64_t activations = 0;  // bytes stashed for backward
  std::int64_t buffers = 0;      // bytes: send and receive buffers of the stage boundaries
  std::int64_t workspace = 0;    // bytes: transient buffers of forward and backward, once
  std::int64_t total() const {
    return weights + gradients + optimizer + activations + buffers + workspace;
  }
};

// Most microbatches in flight on stage s: min(d - s, m) for flush and 2bw, m for gpipe.
int max_in_flight(config::ScheduleKind schedule, int depth, int microbatches, int stage);

std::vector<StageMemory> predict_memory(const config::Deck& deck, const StageMap& map);

}  // namespace p2bw::pipeline
