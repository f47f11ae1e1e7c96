// Predicted memory per pipeline stage (the paper's per-stage memory model): weights times
// versions, gradients, optimizer state, stashed activations of the microbatches in flight and the
// boundary buffers. The executor measures the same categories (MemoryBytes).
#pragma once

#include <cstdint>
#include <vector>

#include "config/deck.hpp"
#include "core/memory_bytes.hpp"
#include "pipeline/partition.hpp"

namespace p2bw::pipeline {

// The bytes by category (weights = params · 4 · versions, gradients = params · 4, optimizer = 2
// or 1 floats per parameter, ...) and what they follow from.
struct StageMemory : MemoryBytes {
  std::int64_t params = 0;  // parameters of the stage
  int versions = 1;         // weight versions alive (2 under 2bw, 3 with weight prediction)
  int in_flight = 0;        // most microbatches whose activations are stashed at once
};

std::vector<StageMemory> predict_memory(const config::Deck& deck, const StageMap& map);

}  // namespace p2bw::pipeline
