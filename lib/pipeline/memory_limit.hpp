// The memory check before allocating: a rank's predicted peak (pipeline/memory.hpp, what
// `p2bw check` prints) against the memory it can really have. On hosts that is MemAvailable or
// the cgroup limit (v2 memory.max, v1 memory.limit_in_bytes) less its usage, whichever is
// smaller, divided among the ranks of this node; on CUDA devices what cudaMemGetInfo reports
// free, divided among the ranks on this rank's GPU. P2BW_IGNORE_MEMORY_CHECK=1 skips the refusal
// (for a prediction that is wrong); P2BW_TEST_MEMORY_AVAILABLE=<bytes> replaces the measured memory
// (a test hook).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>

namespace p2bw::pipeline {

struct MemoryAvailable {
  std::int64_t bytes = 0;       // for one rank
  std::int64_t node_bytes = 0;  // for the whole node (host) or device
  int ranks_sharing = 1;        // ranks sharing node_bytes: of this node (host) or GPU (device)
  std::string source;           // where node_bytes came from, e.g. "MemAvailable"
};

// Measures what one rank of `comm` can have (collective over `comm`: finds the ranks per node).
MemoryAvailable available_memory(MPI_Comm comm);

// What a rank on a node shared by `ranks` ranks can have (not collective; for `p2bw check`; on a
// device, the ranks spread round robin over the node's GPUs).
MemoryAvailable available_memory_for(int ranks);

// "" when `predicted` bytes fit `available`, or the user's one-line refusal naming both and the
// knobs. `who` names the rank, e.g. "stage 1 (rank 2)".
std::string memory_refusal(std::int64_t predicted, const MemoryAvailable& available,
                           const std::string& who);

// Whether P2BW_IGNORE_MEMORY_CHECK=1 asks to go past a refusal.
bool memory_check_ignored();

}  // namespace p2bw::pipeline
