// The cluster file of `p2bw plan`: how many nodes and devices, device memory, link bandwidths and
// latencies, and the sustained FLOP/s per precision used by the analytic cost model. Read from
// YAML and validated like the deck: every mistake is a one-line UserError "FILE:LINE: key:
// problem (allowed: ...)".
// Format 3 (format_version: 3): format 2 plus the optional node_network_bandwidth_gbps, a node's
// bandwidth to other nodes in each direction, which the flows leaving a node at once share.
// Format 2: flops_per_device is a map precision -> FLOP/s (fp32, tf32, bf16, each optional).
// Format 1 (no format_version key): its flops_per_device is one number, the fp32 rate (as every
// format-1 file shipped with p2bw stated). Formats 1 and 2 are still read (no NIC sharing).
#pragma once

#include <string>
#include <vector>

#include "config/deck.hpp"

namespace p2bw::planner {

constexpr int kClusterFormatVersion = 3;

struct Cluster {
  std::string name;                      // free text, for reports
  int nodes = 1;                         // machines
  int devices_per_node = 1;              // ranks per node (one rank per device)
  double memory_per_device_gb = 0;       // GB (1e9 bytes) usable by one rank
  double intra_node_bandwidth_gbps = 0;  // GB/s (1e9 bytes per second) between ranks of a node
  double inter_node_bandwidth_gbps = 0;  // GB/s between ranks of different nodes
  double intra_node_latency_us = 0;      // microseconds per message inside a node
  double inter_node_latency_us = 0;      // microseconds per message across nodes
  // GB/s a node's network interfaces carry to other nodes in each direction, shared by the
  // inter-node flows that leave the node at once; 0: not given (every inter-node flow gets
  // inter_node_bandwidth_gbps, as if each device had its own NIC).
  double node_network_bandwidth_gbps = 0;
  int format_version = kClusterFormatVersion;  // of the file it was read from
  // Sustained FLOP/s of one device on the model's kernels in each model.precision (analytic
  // mode); 0: not given.
  double flops_fp32 = 0, flops_tf32 = 0, flops_bf16 = 0;
  bool gpus = true;    // devices are GPUs (jobscripts ask for them)
  std::string source;  // the file it was read from

  int devices() const { return nodes * devices_per_node; }
  double flops_for(config::Precision precision) const;
  void set_flops(config::Precision precision, double flops);
  double memory_bytes() const { return memory_per_device_gb * 1e9; }
  // Node of a world rank: devices_per_node consecutive ranks per node, as mpiexec/srun place them.
  int node_of(int rank) const { return rank / devices_per_node; }
  // Bandwidth of one of `flows` inter-node flows leaving a node at once (flows >= 1): the
  // per-device link's, or the node's share if that is less.
  double inter_node_bandwidth_for(int flows) const;
};

// Parses cluster YAML text; `source` names it in messages. Throws UserError.
Cluster parse_cluster(const std::string& yaml_text, const std::string& source);
// Reads and parses a cluster file. Throws UserError (also for a missing file).
Cluster load_cluster(const std::string& path);

// UserError "WHERE: N nodes x D devices_per_node is too many devices ..." beyond kMaxDevices
// (also after --nodes overrides the file's count).
constexpr long long kMaxDevices = 1 << 20;
void check_devices(const Cluster& cluster, const std::string& where);

// The keys of a cluster file with their meaning, for docs and messages.
struct ClusterKey {
  std::string key;
  std::string allowed;
  bool required;
  std::string help;
};
const std::vector<ClusterKey>& cluster_keys();

}  // namespace p2bw::planner
