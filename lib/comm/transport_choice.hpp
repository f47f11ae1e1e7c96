// Which transport moves a run's activations and reductions (pipeline.transport): NCCL only when
// every rank has a GPU of its own (NCCL refuses two ranks of one communicator on one GPU) and the
// build has the NCCL transport; otherwise MPI through host memory. The decision is a pure
// function of what the ranks report, so tests give it synthetic GPU lists; gather_rank_gpus()
// collects the real ones.
#pragma once

#include <mpi.h>

#include <optional>
#include <string>
#include <vector>

#include "config/deck.hpp"

namespace p2bw::comm {

// One rank's GPU: its UUID ("GPU-8f6c...", as nvidia-smi -L prints it) and the host it is on.
struct RankGpu {
  std::string uuid;
  std::string host;
};
using RankGpus = std::vector<std::optional<RankGpu>>;  // by world rank; nullopt: no GPU

enum class TransportBackend { mpi, nccl };
const char* to_string(TransportBackend backend);  // "mpi", "nccl"

struct TransportChoice {
  TransportBackend backend = TransportBackend::mpi;
  std::string reason;  // why, e.g. "no rank has a GPU"

  std::string text() const;  // "mpi (no rank has a GPU)": the stage map and metrics.h5
};

// Whether this build has the NCCL transport (CUDA builds configured with -DP2BW_NCCL=ON).
bool build_has_nccl();

// auto: nccl when has_nccl and every rank has a GPU no other rank has, else mpi with the first
// reason it cannot be nccl (no NCCL in the build, a rank without a GPU, two ranks sharing one).
// mpi: mpi. nccl: nccl when auto would choose it; otherwise throws UserError
// "WHERE: pipeline.transport: nccl is impossible: WHY (allowed: ...)", `where` naming where the
// key was set (config::where_set).
TransportChoice choose_transport(config::TransportKind requested, const RankGpus& gpus,
                                 bool has_nccl, const std::string& where);

// How many ranks (`rank` included) run on the GPU of `rank`, by UUID; 1 for a rank without a GPU.
// They share its memory (pipeline/memory_limit.hpp).
int ranks_sharing_gpu(const RankGpus& gpus, int rank);

// Collective over `comm`: every rank's GPU, by rank (on CUDA builds the device Kokkos runs on,
// and the host's name; on host builds none).
RankGpus gather_rank_gpus(MPI_Comm comm);

}  // namespace p2bw::comm
