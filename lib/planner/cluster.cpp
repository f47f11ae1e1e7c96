// Reading and validating cluster files (see cluster.hpp).
#include "planner/cluster.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "core/error.hpp"

namespace p2bw::planner {

double Cluster::flops_for(config::Precision precision) const {
  switch (precision) {
    case config::Precision::fp32:
      return flops_fp32;
    case config::Precision::tf32:
      return flops_tf32;
    case config::Precision::bf16:
      return flops_bf16;
  }
  return 0;
}

double Cluster::inter_node_bandwidth_for(int flows) const {
  if (node_network_bandwidth_gbps <= 0) return inter_node_bandwidth_gbps;
  return std::min(inter_node_bandwidth_gbps, node_network_bandwidth_gbps / std::max(flows, 1));
}

void Cluster::set_flops(config::Precision precision, double flops) {
  (precision == config::Precision::fp32   ? flops_fp32
   : precision == config::Precision::tf32 ? flops_tf32
                                          : flops_bf16) = flops;
}

const std::vector<ClusterKey>& cluster_keys() {
  static const std::vector<ClusterKey> keys = {
      {"format_version", "3 or 2", false,
       "cluster file format; without it the file is format 1 (flops_per_device one number, the "
       "fp32 rate)"},
      {"name", "any text", false, "a label for reports"},
      {"nodes", "an integer >= 1", true, "machines in the cluster"},
      {"devices_per_node", "an integer >= 1", true, "devices (= ranks) per machine"},
      {"memory_per_device_gb", "a number > 0", true, "usable memory of one device in GB (1e9 B)"},
      {"intra_node_bandwidth_gbps", "a number > 0", true,
       "effective bandwidth between two devices of a node, GB/s"},
      {"inter_node_bandwidth_gbps", "a number > 0", true,
       "effective bandwidth between devices of different nodes, GB/s"},
      {"node_network_bandwidth_gbps", "a number > 0 (format 3)", false,
       "a node's bandwidth to other nodes in each direction, GB/s, shared by the flows that leave "
       "it at once (default: none, each inter-node flow gets inter_node_bandwidth_gbps)"},
      {"intra_node_latency_us", "a number >= 0", true, "per-message latency inside a node, us"},
      {"inter_node_latency_us", "a number >= 0", true, "per-message latency across nodes, us"},
      {"flops_per_device", "a map of fp32, tf32, bf16 to numbers > 0, each optional", false,
       "sustained FLOP/s of one device on the model's kernels per model.precision (the analytic "
       "cost model, p2bw plan without --profile, needs the deck's)"},
      {"gpus", "true or false", false,
       "devices are GPUs (default true; false: CPU ranks); memory counts the GEMM library's "
       "workspace of GPUs (cuBLASLt) or of CPUs (OpenBLAS: bf16 operands widened to float)"},
  };
  return keys;
}

namespace {

std::string allowed_keys() {
  std::string text;
  for (const ClusterKey& key : cluster_keys()) text += (text.empty() ? "" : " | ") + key.key;
  return text;
}

[[noreturn]] void fail(const std::string& source, const YAML::Node& node, const std::string& key,
                       const std::string& what, const std::string& allowed) {
  const int line = node.IsDefined() ? node.Mark().line : -1;
  const std::string where = line >= 0 ? fmt::format("{}:{}", source, line + 1) : source;
  throw UserError(fmt::format("{}: {}: {} (allowed: {})", where, key, what, allowed));
}

std::string scalar_text(const std::string& source, const YAML::Node& node, const ClusterKey& key) {
  if (!node.IsScalar()) fail(source, node, key.key, "expected a single value", key.allowed);
  return node.Scalar();
}

long long read_integer(const std::string& source, const YAML::Node& node, const ClusterKey& key,
                       long long lo) {
  const std::string text = scalar_text(source, node, key);
  size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size())
    fail(source, node, key.key, "expected an integer, got '" + text + "'", key.allowed);
  if (value < lo || value > std::numeric_limits<int>::max())
    fail(source, node, key.key, fmt::format("{} is out of range", value), key.allowed);
  return value;
}

double read_number(const std::string& source, const YAML::Node& node, const ClusterKey& key,
                   bool zero_allowed) {
  const std::string text = scalar_text(source, node, key);
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size())
    fail(source, node, key.key, "expected a number, got '" + text + "'", key.allowed);
  if (!std::isfinite(value) || value < 0 || (!zero_allowed && value == 0))
    fail(source, node, key.key, text + " is out of range", key.allowed);
  return value;
}

const std::vector<config::Precision>& precisions() {
  static const std::vector<config::Precision> all = {
      config::Precision::fp32, config::Precision::tf32, config::Precision::bf16};
  return all;
}

// flops_per_device: format 1 one number (the fp32 rate), format 2 a map precision -> FLOP/s.
// `name` is the key's own node (messages about the whole value point at its line).
void read_flops(const std::string& source, const YAML::Node& name, const YAML::Node& node,
                const ClusterKey& key, Cluster& cluster) {
  if (cluster.format_version == 1) {
    if (node.IsMap())
      fail(source, name, key.key,
           "a map of rates per precision needs format_version: 2 (without it the file is format "
           "1: one number, the fp32 rate)",
           "format_version: 2 with the map, or one number > 0");
    cluster.flops_fp32 = read_number(source, node, key, false);
    return;
  }
  if (!node.IsMap())
    fail(source, name, key.key,
         "expected a map of precision: FLOP/s, got " +
             (node.IsScalar() ? "'" + node.Scalar() + "'" : "a list"),
         key.allowed);
  std::set<std::string> seen;
  for (const auto& entry : node) {
    const std::string name = entry.first.IsScalar() ? entry.first.Scalar() : "?";
    const ClusterKey rate{key.key + "." + name, "a number > 0", false, ""};
    bool known = false;
    for (config::Precision precision : precisions()) {
      if (name != config::to_string(precision)) continue;
      known = true;
      if (!seen.insert(name).second)
        fail(source, entry.first, rate.key, "is given twice", "each precision once");
      cluster.set_flops(precision, read_number(source, entry.second, rate, false));
    }
    if (!known) fail(source, entry.first, rate.key, "unknown precision", "fp32 | tf32 | bf16");
  }
}

}  // namespace

Cluster parse_cluster(const std::string& yaml_text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& error) {
    throw UserError(fmt::format("{}:{}: invalid YAML: {} (allowed: a YAML mapping of cluster keys)",
                                source, error.mark.line + 1, error.msg));
  }
  if (!root.IsMap())
    throw UserError(fmt::format("{}: expected a mapping of cluster keys (allowed: {})", source,
                                allowed_keys()));
  std::set<std::string> known, seen;
  for (const ClusterKey& key : cluster_keys()) known.insert(key.key);
  YAML::Node flops_name;  // the flops_per_device key itself, for its line
  for (const auto& entry : root) {
    const std::string name = entry.first.Scalar();
    if (!known.count(name)) fail(source, entry.first, name, "unknown key", allowed_keys());
    if (!seen.insert(name).second)
      fail(source, entry.first, name, "is given twice", "each key once");
    if (name == "flops_per_device") flops_name = entry.first;
  }
  Cluster cluster;
  cluster.source = source;
  cluster.format_version = 1;  // a file without format_version predates it
  for (const ClusterKey& key : cluster_keys()) {
    const YAML::Node node = root[key.key];
    if (!node.IsDefined() || node.IsNull()) {
      if (key.required) {
        // Point at the mapping itself: the key has no line of its own.
        throw UserError(fmt::format("{}: {}: is required but missing (allowed: {})", source,
                                    key.key, key.allowed));
      }
      continue;
    }
    const std::string& k = key.key;
    if (k == "format_version") {
      const long long version = read_integer(source, node, key, 1);
      if (version != kClusterFormatVersion && version != 2)
        fail(source, node, key.key, fmt::format("{} is not supported", version),
             fmt::format("{} or 2, or no format_version for format 1", kClusterFormatVersion));
      cluster.format_version = static_cast<int>(version);
    }
    if (k == "name") cluster.name = scalar_text(source, node, key);
    if (k == "nodes") cluster.nodes = static_cast<int>(read_integer(source, node, key, 1));
    if (k == "devices_per_node")
      cluster.devices_per_node = static_cast<int>(read_integer(source, node, key, 1));
    if (k == "memory_per_device_gb")
      cluster.memory_per_device_gb = read_number(source, node, key, false);
    if (k == "intra_node_bandwidth_gbps")
      cluster.intra_node_bandwidth_gbps = read_number(source, node, key, false);
    if (k == "inter_node_bandwidth_gbps")
      cluster.inter_node_bandwidth_gbps = read_number(source, node, key, false);
    if (k == "intra_node_latency_us")
      cluster.intra_node_latency_us = read_number(source, node, key, true);
    if (k == "inter_node_latency_us")
      cluster.inter_node_latency_us = read_number(source, node, key, true);
    if (k == "node_network_bandwidth_gbps") {
      if (cluster.format_version < 3)
        fail(
            source, node, key.key,
            fmt::format("needs format_version: 3 (this file is format {})", cluster.format_version),
            "format_version: 3 with this key, or no such key");
      cluster.node_network_bandwidth_gbps = read_number(source, node, key, false);
    }
    if (k == "flops_per_device") read_flops(source, flops_name, node, key, cluster);
    if (k == "gpus") {
      const std::string text = scalar_text(source, node, key);
      if (text != "true" && text != "false")
        fail(source, node, key.key, "expected true or false, got '" + text + "'", key.allowed);
      cluster.gpus = text == "true";
    }
  }
  check_devices(cluster, fmt::format("{}:{}: nodes", source, root["nodes"].Mark().line + 1));
  if (cluster.name.empty()) cluster.name = source;
  return cluster;
}

void check_devices(const Cluster& cluster, const std::string& where) {
  if (static_cast<long long>(cluster.nodes) * cluster.devices_per_node > kMaxDevices)
    throw UserError(
        fmt::format("{}: {} nodes x {} devices_per_node is too many devices (allowed: at most {})",
                    where, cluster.nodes, cluster.devices_per_node, kMaxDevices));
}

Cluster load_cluster(const std::string& path) {
  std::ifstream file(path);
  if (!file || std::filesystem::is_directory(path))
    throw UserError(path + ": cannot read the cluster file (allowed: a readable YAML file)");
  std::stringstream text;
  text << file.rdbuf();
  return parse_cluster(text.str(), path);
}

}  // namespace p2bw::planner
