// NCCL behind the Transport and Collectives interfaces (CUDA builds configured with
// -DP2BW_NCCL=ON only). Messages and reductions run on communication streams of their own,
// ordered after the compute stream's kernels by CUDA events; an exchange is one
// ncclGroupStart/End; every wait polls its completion event and ncclCommGetAsyncError against
// pipeline.timeout_s and aborts the communicator when late, with the MPI transport's message.
// The communicators are non-blocking, so their setup (the id's broadcast, ncclCommInitRankConfig)
// and every enqueue are held to the same deadline: a rank that never joins ends the run with one
// line instead of a hang.
// NCCL matches by order, not by tag: the schedule checker proves that every pair of ranks issues
// its messages in the same order (schedule/check.hpp). Compiled against NCCL's and CUDA's
// headers, never run on a GPU.
#pragma once

#include <memory>

#include "comm/collectives.hpp"
#include "comm/process_grid.hpp"
#include "comm/transport.hpp"
#include "core/device.hpp"

namespace p2bw::comm {

// Point-to-point over one NCCL communicator of the whole world (peers are world ranks), each
// message in its buffer's type (bf16 buffers as ncclBfloat16); `compute` is the execution space
// instance whose kernels write and read the buffers.
std::unique_ptr<Transport> make_nccl_transport(const ProcessGrid& grid, double timeout_s,
                                               const Exec& compute);

// Sums over NCCL communicators of the grid's groups (world, replicas, tied); the barrier stays
// on MPI.
std::unique_ptr<Collectives> make_nccl_collectives(const ProcessGrid& grid, double timeout_s,
                                                   const Exec& compute);

}  // namespace p2bw::comm
