// The choice of transport from every rank's GPU; see transport_choice.hpp.
#include "comm/transport_choice.hpp"

#include <fmt/format.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <array>
#include <cstring>
#include <map>

#include "core/error.hpp"

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>
#endif

namespace p2bw::comm {

namespace {

// Why NCCL cannot run, or "" when every rank has a GPU of its own.
std::string why_not_nccl(const RankGpus& gpus, bool has_nccl) {
  if (!has_nccl) return "this build has no NCCL transport";
  if (gpus.empty()) return "there are no ranks";
  const auto without =
      std::count_if(gpus.begin(), gpus.end(), [](const auto& gpu) { return !gpu.has_value(); });
  if (without == static_cast<std::ptrdiff_t>(gpus.size()))
    return gpus.size() == 1 ? "the rank has no GPU" : "no rank has a GPU";
  std::map<std::string, size_t> owner;  // UUID -> first rank on it
  for (size_t rank = 0; rank < gpus.size(); ++rank) {
    if (!gpus[rank]) return fmt::format("rank {} has no GPU", rank);
    const auto [it, fresh] = owner.emplace(gpus[rank]->uuid, rank);
    if (!fresh)
      return fmt::format("ranks {} and {} share GPU {} on host {}", it->second, rank,
                         gpus[rank]->uuid, gpus[rank]->host);
  }
  return "";
}

}  // namespace

const char* to_string(TransportBackend backend) {
  return backend == TransportBackend::nccl ? "nccl" : "mpi";
}

std::string TransportChoice::text() const {
  return fmt::format("{} ({})", to_string(backend), reason);
}

bool build_has_nccl() {
#ifdef P2BW_HAVE_NCCL_TRANSPORT
  return true;
#else
  return false;
#endif
}

TransportChoice choose_transport(config::TransportKind requested, const RankGpus& gpus,
                                 bool has_nccl, const std::string& where) {
  if (requested == config::TransportKind::mpi)
    return {TransportBackend::mpi, "pipeline.transport = mpi"};
  const std::string why = why_not_nccl(gpus, has_nccl);
  const std::string own = gpus.size() == 1
                              ? "the rank has its own GPU"
                              : fmt::format("each of the {} ranks has its own GPU", gpus.size());
  if (requested == config::TransportKind::automatic)
    return why.empty() ? TransportChoice{TransportBackend::nccl, own}
                       : TransportChoice{TransportBackend::mpi, why};
  if (!why.empty())
    throw UserError(fmt::format(
        "{}: pipeline.transport: nccl is impossible: {} (allowed: auto or mpi; nccl needs a build "
        "with NCCL and one GPU per rank)",
        where, why));
  return {TransportBackend::nccl, "pipeline.transport = nccl; " + own};
}

int ranks_sharing_gpu(const RankGpus& gpus, int rank) {
  const auto& mine = gpus.at(static_cast<size_t>(rank));
  if (!mine) return 1;
  return static_cast<int>(std::count_if(
      gpus.begin(), gpus.end(), [&](const auto& gpu) { return gpu && gpu->uuid == mine->uuid; }));
}

RankGpus gather_rank_gpus(MPI_Comm comm) {
  // Fixed-size records: a flag, the UUID and the host name, each NUL-terminated.
  constexpr size_t kUuid = 64, kHost = MPI_MAX_PROCESSOR_NAME + 1;
  struct Record {
    char has_gpu = 0;
    std::array<char, kUuid> uuid{};
    std::array<char, kHost> host{};
  };
  Record mine;
#ifdef KOKKOS_ENABLE_CUDA
  int device = 0;
  P2BW_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp properties;
  P2BW_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  const auto* b = reinterpret_cast<const unsigned char*>(properties.uuid.bytes);
  const std::string uuid = fmt::format(
      "GPU-{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}"
      "{:02x}{:02x}",
      b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
      b[15]);
  mine.has_gpu = 1;
  std::strncpy(mine.uuid.data(), uuid.c_str(), kUuid - 1);
#endif
  int length = 0;
  P2BW_MPI_CHECK(MPI_Get_processor_name(mine.host.data(), &length));
  int size = 0;
  P2BW_MPI_CHECK(MPI_Comm_size(comm, &size));
  std::vector<Record> all(static_cast<size_t>(size));
  P2BW_MPI_CHECK(
      MPI_Allgather(&mine, sizeof(Record), MPI_BYTE, all.data(), sizeof(Record), MPI_BYTE, comm));
  RankGpus gpus;
  for (const Record& r : all) {
    if (!r.has_gpu) {
      gpus.emplace_back();
      continue;
    }
    gpus.push_back(RankGpu{std::string(r.uuid.data(), strnlen(r.uuid.data(), kUuid)),
                           std::string(r.host.data(), strnlen(r.host.data(), kHost))});
  }
  return gpus;
}

}  // namespace p2bw::comm
