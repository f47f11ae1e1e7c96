// Available memory per rank and the refusal before allocating; see memory_limit.hpp.
#include "pipeline/memory_limit.hpp"

#include <fmt/format.h>
#include <Kokkos_Macros.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>

#include "comm/transport_choice.hpp"
#include "core/bytes_text.hpp"
#include "core/error.hpp"

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>
#endif

namespace p2bw::pipeline {

namespace {

#ifndef KOKKOS_ENABLE_CUDA  // host memory (a CUDA build measures its device's)

constexpr std::int64_t kUnlimited = std::numeric_limits<std::int64_t>::max();

// The first number in `path` (a /sys or /proc file), or -1 when absent or "max".
std::int64_t read_number(const std::string& path) {
  std::ifstream file(path);
  std::string text;
  if (!(file >> text) || text == "max") return -1;
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  return end != text.c_str() && value >= 0 ? value : -1;
}

std::int64_t mem_available() {
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    if (line.rfind("MemAvailable:", 0) == 0) {
      std::istringstream in(line.substr(13));
      std::int64_t kib = 0;
      if (in >> kib) return kib * 1024;
    }
  }
  return -1;
}

// Room left under this process's cgroup limits (v2: every memory.max up the hierarchy; v1:
// memory.limit_in_bytes), or -1 when there is no limit.
std::int64_t cgroup_room(std::string& source) {
  std::int64_t room = kUnlimited;
  std::ifstream cgroups("/proc/self/cgroup");
  for (std::string line; std::getline(cgroups, line);) {
    const size_t first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1);
    std::string path = line.substr(second + 1);
    if (controllers.empty()) {  // v2
      for (;;) {
        const std::string dir = "/sys/fs/cgroup" + (path == "/" ? "" : path);
        const std::int64_t limit = read_number(dir + "/memory.max");
        if (limit >= 0) {
          const std::int64_t used = std::max<std::int64_t>(0, read_number(dir + "/memory.current"));
          if (limit - used < room)
            room = std::max<std::int64_t>(0, limit - used), source = "cgroup memory.max";
        }
        if (path.empty() || path == "/") break;
        path = path.substr(0, path.rfind('/'));
      }
    } else if (controllers.find("memory") != std::string::npos) {  // v1
      for (const std::string& dir :
           {"/sys/fs/cgroup/memory" + path, std::string("/sys/fs/cgroup/memory")}) {
        const std::int64_t limit = read_number(dir + "/memory.limit_in_bytes");
        if (limit < 0 || limit >= (std::int64_t{1} << 60)) continue;  // v1 "unlimited"
        const std::int64_t used =
            std::max<std::int64_t>(0, read_number(dir + "/memory.usage_in_bytes"));
        if (limit - used < room)
          room = std::max<std::int64_t>(0, limit - used), source = "cgroup memory.limit_in_bytes";
        break;
      }
    }
  }
  return room == kUnlimited ? -1 : room;
}

#endif  // KOKKOS_ENABLE_CUDA

MemoryAvailable measure(int ranks) {
  MemoryAvailable result;
  result.ranks_sharing = std::max(1, ranks);
  if (const char* fake = std::getenv("P2BW_TEST_MEMORY_AVAILABLE")) {
    result.node_bytes = std::atoll(fake);
    result.source = "P2BW_TEST_MEMORY_AVAILABLE";
  } else {
#ifdef KOKKOS_ENABLE_CUDA
    std::size_t free = 0, total = 0;
    P2BW_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    result.node_bytes = static_cast<std::int64_t>(free);
    result.source = "free device memory (cudaMemGetInfo)";
#else
    result.node_bytes = mem_available();
    result.source = "MemAvailable";
    std::string cgroup;
    const std::int64_t room = cgroup_room(cgroup);
    if (room >= 0 && (result.node_bytes < 0 || room < result.node_bytes))
      result.node_bytes = room, result.source = cgroup;
    if (result.node_bytes < 0) result.node_bytes = kUnlimited, result.source = "unknown";
#endif
  }
  result.bytes = result.node_bytes / result.ranks_sharing;
  return result;
}

}  // namespace

MemoryAvailable available_memory(MPI_Comm comm) {
#ifdef KOKKOS_ENABLE_CUDA
  // The ranks on this rank's GPU share its free memory (ranks sharing a GPU, as gpu-check runs
  // them, or one rank per GPU).
  int rank = 0;
  P2BW_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  return measure(comm::ranks_sharing_gpu(comm::gather_rank_gpus(comm), rank));
#else
  MPI_Comm node;
  P2BW_MPI_CHECK(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  int ranks = 1;
  P2BW_MPI_CHECK(MPI_Comm_size(node, &ranks));
  P2BW_MPI_CHECK(MPI_Comm_free(&node));
  return measure(ranks);
#endif
}

MemoryAvailable available_memory_for(int ranks) {
#ifdef KOKKOS_ENABLE_CUDA
  // Kokkos maps a node's ranks round robin over its visible GPUs.
  int devices = 1;
  P2BW_CUDA_CHECK(cudaGetDeviceCount(&devices));
  devices = std::max(1, devices);
  return measure((ranks + devices - 1) / devices);
#else
  return measure(ranks);
#endif
}

bool memory_check_ignored() {
  const char* value = std::getenv("P2BW_IGNORE_MEMORY_CHECK");
  return value && std::string(value) == "1";
}

std::string memory_refusal(std::int64_t predicted, const MemoryAvailable& available,
                           const std::string& who) {
  if (predicted <= available.bytes) return "";
  const std::string share =
      available.ranks_sharing > 1
          ? fmt::format(" ({} of {} shared by {} ranks on this node)", available.source,
                        bytes_text(static_cast<double>(available.node_bytes)),
                        available.ranks_sharing)
          : fmt::format(" ({})", available.source);
  return fmt::format(
      "{}: predicted peak memory {} ({} bytes) but {} ({} bytes) available{} (allowed: a "
      "configuration that fits: more pipeline.depth, pipeline.recompute: true, a smaller "
      "train.microbatch_size, fewer pipeline.microbatches under gpipe, or p2bw plan; "
      "P2BW_IGNORE_MEMORY_CHECK=1 runs anyway)",
      who, bytes_text(static_cast<double>(predicted)), predicted,
      bytes_text(static_cast<double>(available.bytes)), available.bytes, share);
}

}  // namespace p2bw::pipeline
