// Predicted memory per pipeline stage (the paper's per-stage memory model): weights times
// versions, gradients, optimizer state, stashed activations of the microbatches in flight and the
// boundary buffers, in the deck's model.precision. The executor measures the same categories
// (MemoryBytes).
#pragma once

#include <cstdint>
#include <vector>

#include "config/deck.hpp"
#include "core/memory_bytes.hpp"
#include "kernels/types.hpp"
#include "pipeline/partition.hpp"

namespace p2bw::pipeline {

// The bytes by category and what they follow from. Per parameter:
// - weights: fp32 and tf32 keep every version in fp32 (4 · versions bytes; the newest version is
//   what the optimizer updates, written over the gradients). bf16 keeps two bf16 compute copies
//   (the update writes the next one while the current one is held) plus ONE fp32 master of the
//   newest version (2 · 2 + 4 = 8 bytes): the older 2bw version is only read by forwards and
//   backwards, never stepped, so it needs no master. 2bw's weight prediction keeps the versions
//   as predicted copies beside an fp32 master: 12 bytes in fp32, still 8 in bf16.
// - gradients: accumulated and all-reduced in fp32: 4; bf16 with a 2bw phase 8 (its bf16 copies
//   cannot take the next batch's gradients while the deferred reduction holds the last batch's,
//   which fp32 writes its next version over). Optimizer: 8 (AdamW) or 4 (SGD).
// So 2bw needs 8 + 8 (bf16) or 8 + 4 (fp32; 12 + 4 with prediction) bytes of weights and
// gradients per parameter; flush and gpipe 8 + 4 (bf16) or 4 + 4 (fp32).
// Activations, boundary buffers and the workspace's stored values: config::compute_bytes per
// value; statistics, token ids and the kernels' fp32 scratch 4. The workspace also holds the
// GEMM libraries' (model::stage_library_workspace_bytes: cuBLASLt's 32 MiB on CUDA, the host
// bf16 GEMMs' widened operands).
struct StageMemory : MemoryBytes {
  std::int64_t params = 0;          // parameters of the stage
  int versions = 1;                 // weight versions (compute copies) alive: 2 under 2bw
  std::int64_t master_weights = 0;  // of weights: the fp32 master (bf16, or weight prediction)
  int in_flight = 0;                // most microbatches whose activations are stashed at once
};

// What each stage allocates in the deck's precision (what `p2bw check`, the planner and the
// executor's measurement compare).
// The GEMM libraries' workspaces follow `library`: this build's, or (the planner) what a
// cluster's devices run.
std::vector<StageMemory> predict_memory(const config::Deck& deck, const StageMap& map,
                                        kernels::GemmLibrary library = kernels::kBuildGemmLibrary);

}  // namespace p2bw::pipeline
