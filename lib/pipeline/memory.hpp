// Predicted memory per pipeline stage (the paper's per-stage memory model): weights times
// versions, gradients, optimizer state, stashed activations of the microbatches in flight and the
// boundary buffers, in the deck's model.precision. The executor measures the same categories
// (MemoryBytes).
#pragma once

#include <cstdint>
#include <vector>

#include "config/deck.hpp"
#include "core/memory_bytes.hpp"
#include "pipeline/partition.hpp"

namespace p2bw::pipeline {

// The bytes by category and what they follow from. Per parameter:
// - weights: fp32 and tf32 keep every version in fp32 (4 · versions bytes; the newest version is
//   what the optimizer updates). bf16 keeps every version as a bf16 compute copy plus ONE fp32
//   master of the newest version (2 · versions + 4 bytes): the optimizer updates the master in
//   place and writes the next bf16 copy into the retired one; the older 2bw version is only read
//   by forwards and backwards, never stepped, so it needs no master. 2bw: 8 bytes in every
//   precision; flush and gpipe: 4 (fp32) or 6 (bf16). 2bw's weight prediction keeps the two
//   versions as predicted copies beside an fp32 master: 12 bytes in fp32, still 8 in bf16.
// - gradients: 4 (accumulated and all-reduced in fp32); optimizer: 8 (AdamW) or 4 (SGD).
// Activations and boundary buffers: config::compute_bytes per value, statistics and token ids 4.
// Workspace: 4 bytes per value (the fp32 kernels' transient buffers).
struct StageMemory : MemoryBytes {
  std::int64_t params = 0;          // parameters of the stage
  int versions = 1;                 // weight versions (compute copies) alive: 2 under 2bw
  std::int64_t master_weights = 0;  // of weights: the fp32 master (bf16, or weight prediction)
  int in_flight = 0;                // most microbatches whose activations are stashed at once
};

// The deck's precision: bf16 in its GPU layout (what `p2bw check` and the planner show).
std::vector<StageMemory> predict_memory(const config::Deck& deck, const StageMap& map);

// What this build allocates, which the executor measures: predict_memory for fp32 and tf32. bf16
// is emulated in float storage for now (model::StageModel): every compute copy, activation and
// boundary buffer is a float (4 bytes), beside the one fp32 master that bf16 keeps; so a bf16 run
// allocates the fp32 layout plus the master, not the bf16 layout predict_memory shows.
std::vector<StageMemory> predict_allocation(const config::Deck& deck, const StageMap& map);

}  // namespace p2bw::pipeline
