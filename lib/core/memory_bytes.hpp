// Bytes of one rank's memory by category: what the executor allocates, what p2bw check and the
// planner predict, and what metrics.h5 records. One struct for all of them.
#pragma once

#include <cstdint>

namespace p2bw {

struct MemoryBytes {
  std::int64_t weights = 0;      // every weight version
  std::int64_t gradients = 0;    // fp32 accumulation
  std::int64_t optimizer = 0;    // AdamW moments or SGD momentum
  std::int64_t activations = 0;  // stashed for backward (and recomputation's scratch)
  std::int64_t buffers = 0;      // send and receive buffers of the stage boundaries
  std::int64_t workspace = 0;    // transient buffers of forward and backward, once, and the
                                 // GEMM and attention libraries' workspaces
  std::int64_t total() const {
    return weights + gradients + optimizer + activations + buffers + workspace;
  }
};

}  // namespace p2bw
