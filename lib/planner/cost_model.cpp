// The planner's cost model (see cost_model.hpp for the formulas).
#include "planner/cost_model.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "model/model_shape.hpp"
#include "pipeline/memory.hpp"
#include "schedule/schedule.hpp"
#include "schedule/simulate.hpp"

namespace p2bw::planner {

Candidate candidate_of(const config::Deck& deck) {
  Candidate c;
  c.width = deck.pipeline.width;
  c.depth = deck.pipeline.depth;
  c.microbatch_size = deck.train.microbatch_size;
  c.microbatches =
      deck.pipeline.microbatches > 0 ? deck.pipeline.microbatches : 2 * deck.pipeline.depth;
  c.schedule = deck.pipeline.schedule;
  c.recompute = deck.pipeline.recompute;
  return c;
}

config::Deck apply(const config::Deck& deck, const Candidate& candidate) {
  config::Deck out = deck;
  out.pipeline.width = candidate.width;
  out.pipeline.depth = candidate.depth;
  out.pipeline.schedule = candidate.schedule;
  out.pipeline.microbatches = candidate.microbatches;
  out.pipeline.recompute = candidate.recompute;
  out.train.microbatch_size = candidate.microbatch_size;
  if (static_cast<int>(out.pipeline.partition.size()) != candidate.depth)
    out.pipeline.partition.clear();
  return out;
}

double message_time(double bytes, double bandwidth_gbps, double latency_us) {
  return latency_us * 1e-6 + bytes / (bandwidth_gbps * 1e9);
}

double ring_allreduce_time(double bytes, int replicas, double bandwidth_gbps, double latency_us) {
  if (replicas <= 1) return 0;
  const double w = replicas;
  return 2 * (w - 1) / w * bytes / (bandwidth_gbps * 1e9) + 2 * (w - 1) * latency_us * 1e-6;
}

bool hop_crosses_nodes(const Cluster& cluster, int width, int stage) {
  for (int j = 0; j < width; ++j)
    if (cluster.node_of(stage * width + j) != cluster.node_of((stage + 1) * width + j)) return true;
  return false;
}

bool replicas_share_node(const Cluster& cluster, int width, int stage) {
  return cluster.node_of(stage * width) == cluster.node_of(stage * width + width - 1);
}

NodeFlows node_flows(const Cluster& cluster, int width, int depth) {
  const auto nodes = static_cast<size_t>(cluster.node_of(width * depth - 1) + 1);
  NodeFlows flows{std::vector<int>(nodes, 0), std::vector<int>(nodes, 0),
                  std::vector<int>(nodes, 0), std::vector<int>(nodes, 0)};
  for (int s = 0; s + 1 < depth; ++s) {
    for (int j = 0; j < width; ++j) {
      const int from = cluster.node_of(s * width + j), to = cluster.node_of((s + 1) * width + j);
      if (from == to) continue;
      ++flows.forward[static_cast<size_t>(from)];
      ++flows.backward[static_cast<size_t>(to)];
    }
  }
  for (int s = 0; s < depth && width > 1; ++s) {
    for (int j = 0; j < width; ++j) {
      const int from = cluster.node_of(s * width + j);
      if (from != cluster.node_of(s * width + (j + 1) % width))
        ++flows.ring[static_cast<size_t>(from)];
    }
  }
  for (int j = 0; j < width && depth > 1; ++j) {
    const int first = cluster.node_of(j), last = cluster.node_of((depth - 1) * width + j);
    if (first == last) continue;
    ++flows.tied[static_cast<size_t>(first)];
    ++flows.tied[static_cast<size_t>(last)];
  }
  return flows;
}

int hop_flows(const Cluster& cluster, const NodeFlows& flows, int width, int stage) {
  int most = 0;
  for (int j = 0; j < width; ++j) {
    const int from = cluster.node_of(stage * width + j);
    const int to = cluster.node_of((stage + 1) * width + j);
    if (from != to)
      most = std::max({most, flows.forward[static_cast<size_t>(from)],
                       flows.backward[static_cast<size_t>(to)]});
  }
  return most;
}

int ring_flows(const Cluster& cluster, const NodeFlows& flows, int width, int stage) {
  int most = 0;
  for (int j = 0; j < width; ++j) {
    const int from = cluster.node_of(stage * width + j);
    if (from != cluster.node_of(stage * width + (j + 1) % width))
      most = std::max(most, flows.ring[static_cast<size_t>(from)]);
  }
  return most;
}

StageCosts stage_costs(const Candidate& candidate, const pipeline::StageMap& map,
                       const MicrobatchProfile& profile, const Cluster& cluster) {
  const int d = static_cast<int>(map.stages.size());
  StageCosts costs;
  const double intra_bw = cluster.intra_node_bandwidth_gbps;
  const NodeFlows flows = node_flows(cluster, candidate.width, d);
  for (int s = 0; s < d; ++s) {
    const pipeline::StageRange& range = map.stages[s];
    double forward = range.blocks * profile.block.forward_s;
    double backward = range.blocks * (candidate.recompute ? profile.block.backward_recompute_s
                                                          : profile.block.backward_s);
    double weight_bytes = static_cast<double>(range.blocks) * profile.block.weight_bytes;
    double step = range.blocks * profile.block.step_s;
    const PartProfile* ends[2] = {range.has_embedding ? &profile.embedding : nullptr,
                                  range.has_head ? &profile.head : nullptr};
    for (const PartProfile* part : ends) {
      if (!part) continue;
      forward += part->forward_s;
      backward += candidate.recompute ? part->backward_recompute_s : part->backward_s;
      weight_bytes += static_cast<double>(part->weight_bytes);
      step += part->step_s;
    }
    costs.forward.push_back(forward);
    costs.backward.push_back(backward);
    costs.step.push_back(step);
    const bool local = replicas_share_node(cluster, candidate.width, s);
    const double ring_bw =
        local ? intra_bw
              : cluster.inter_node_bandwidth_for(ring_flows(cluster, flows, candidate.width, s));
    costs.allreduce.push_back(
        ring_allreduce_time(weight_bytes, candidate.width, ring_bw,
                            local ? cluster.intra_node_latency_us : cluster.inter_node_latency_us));
    if (s + 1 < d) {
      const bool cross = hop_crosses_nodes(cluster, candidate.width, s);
      const double hop_bw =
          cross ? cluster.inter_node_bandwidth_for(hop_flows(cluster, flows, candidate.width, s))
                : intra_bw;
      // The boundary activation (B, T, C) forward, and its gradient of the same size backward.
      costs.message.push_back(
          message_time(static_cast<double>(profile.block.boundary_bytes), hop_bw,
                       cross ? cluster.inter_node_latency_us : cluster.intra_node_latency_us));
    }
  }
  return costs;
}

std::vector<double> stage_allreduce(const StageCosts& costs) {
  const size_t d = costs.forward.size();
  std::vector<double> times =
      costs.allreduce.empty() ? std::vector<double>(d, 0.0) : costs.allreduce;
  if (d > 1) {
    times.front() += costs.tied_allreduce;
    times.back() += costs.tied_allreduce;
  }
  return times;
}

std::int64_t memory_limit(const Cluster& cluster, double headroom) {
  return static_cast<std::int64_t>(headroom * cluster.memory_bytes());
}

kernels::GemmLibrary gemm_library(const Cluster& cluster) {
  return cluster.gpus ? kernels::GemmLibrary::cublaslt : kernels::GemmLibrary::cblas;
}

std::vector<std::int64_t> stage_peaks(const config::Deck& run, const pipeline::StageMap& map,
                                      const Cluster& cluster) {
  std::vector<std::int64_t> peaks;
  for (const pipeline::StageMemory& stage :
       pipeline::predict_memory(run, map, gemm_library(cluster)))
    peaks.push_back(stage.total());
  return peaks;
}

double SimulationCache::simulate(config::ScheduleKind schedule, int depth, int microbatches,
                                 const StageCosts& costs) {
  Key key{static_cast<int>(schedule),
          depth,
          microbatches,
          costs.forward,
          costs.backward,
          costs.message,
          costs.allreduce,
          costs.step,
          costs.tied_allreduce};
  const auto found = times_.find(key);
  if (found != times_.end()) return found->second;
  const bool two_bw = schedule == config::ScheduleKind::two_bw;
  const int batches = two_bw ? 4 : 1;
  const schedule::Schedule sched = schedule::generate(schedule, depth, microbatches, batches);
  schedule::Costs sim_costs;
  sim_costs.forward = costs.forward;
  sim_costs.backward = costs.backward;
  sim_costs.message = costs.message.empty() ? std::vector<double>{0.0} : costs.message;
  sim_costs.allreduce = stage_allreduce(costs);
  sim_costs.step = costs.step.empty() ? std::vector<double>{0.0} : costs.step;
  // Flush and gpipe wait for every stage's reductions at each step (the flush); 2bw's executor
  // defers its update and lets the reductions complete while it computes.
  sim_costs.global_sync = !two_bw;
  const schedule::Report report = schedule::simulate(sched, sim_costs);
  ++simulations_;
  const double time = two_bw ? report.steady_batch_time : report.makespan / batches;
  times_.emplace(std::move(key), time);
  return time;
}

double SimulationCache::batch_time(config::ScheduleKind schedule, int depth, int microbatches,
                                   const StageCosts& costs) {
  const int d = depth, m = microbatches;
  // Flush and GPipe: fill, a periodic middle, drain, and the per-batch synchronisation; 2bw: a
  // periodic steady state. Past 3d microbatches a batch grows by one period per
  // microbatch; extrapolate from m = 2d and 3d.
  if (m <= 3 * d) return simulate(schedule, d, m, costs);
  const double t2 = simulate(schedule, d, 2 * d, costs);
  const double t3 = simulate(schedule, d, 3 * d, costs);
  return t3 + (t3 - t2) / d * (m - 3 * d);
}

const char* describe(Rejection reason) {
  switch (reason) {
    case Rejection::none:
      return "fits";
    case Rejection::memory:
      return "does not fit device memory";
    case Rejection::global_batch:
      return "global batch b*m*w above the bound";
    case Rejection::microbatches_lt_depth:
      return "m < d (2bw needs m >= d)";
    case Rejection::depth_gt_layers:
      return "depth > layers";
    case Rejection::too_many_devices:
      return "w*d > devices";
    case Rejection::microbatch_not_profiled:
      return "microbatch size not in the profile";
  }
  return "?";
}

Prediction evaluate(const config::Deck& deck, const Cluster& cluster, const Profile& profile,
                    const EvaluateOptions& options, SimulationCache* cache) {
  Prediction p;
  p.candidate = candidate_of(deck);
  const Candidate& c = p.candidate;
  p.memory_limit_bytes = memory_limit(cluster, options.memory_headroom);
  if (std::int64_t{c.width} * c.depth > cluster.devices()) {
    p.rejection = Rejection::too_many_devices;
    return p;
  }
  if (c.depth > deck.model.layers) {
    p.rejection = Rejection::depth_gt_layers;
    return p;
  }
  if (c.schedule == config::ScheduleKind::two_bw && c.microbatches < c.depth) {
    p.rejection = Rejection::microbatches_lt_depth;
    return p;
  }
  const MicrobatchProfile* entry = profile.find(c.microbatch_size);
  if (!entry) {
    p.rejection = Rejection::microbatch_not_profiled;
    return p;
  }
  config::Deck run = deck;
  run.pipeline.microbatches = c.microbatches;
  const pipeline::StageMap map = pipeline::make_stage_map(run);
  p.peak_memory_bytes = stage_peaks(run, map, cluster);
  const std::int64_t peak =
      *std::max_element(p.peak_memory_bytes.begin(), p.peak_memory_bytes.end());
  if (peak > p.memory_limit_bytes) {
    p.rejection = Rejection::memory;
    if (!options.time_rejected) return p;
  }

  StageCosts costs = stage_costs(c, map, *entry, cluster);
  if (c.depth > 1) {
    // Tied token embedding (padded vocab x hidden floats): summed between the first and last
    // stage of every pipeline each batch, rank j <-> rank (d-1)·w + j.
    const double tied_bytes = 4.0 * config::padded_vocab(deck.model.vocab) * deck.model.hidden;
    const NodeFlows flows = node_flows(cluster, c.width, c.depth);
    int tied_flows = 0;  // the most crossing pairs at one node (0: no pair crosses)
    for (int node_count : flows.tied) tied_flows = std::max(tied_flows, node_count);
    const bool cross = tied_flows > 0;
    costs.tied_allreduce = ring_allreduce_time(
        tied_bytes, 2,
        cross ? cluster.inter_node_bandwidth_for(tied_flows) : cluster.intra_node_bandwidth_gbps,
        cross ? cluster.inter_node_latency_us : cluster.intra_node_latency_us);
  }
  SimulationCache local;
  SimulationCache& sims = cache ? *cache : local;
  p.batch_time_s = sims.batch_time(c.schedule, c.depth, c.microbatches, costs);
  const std::vector<double> allreduce = stage_allreduce(costs);
  p.allreduce_time_s = *std::max_element(allreduce.begin(), allreduce.end());
  p.step_time_s = *std::max_element(costs.step.begin(), costs.step.end());
  p.samples_per_s = static_cast<double>(c.global_batch()) / p.batch_time_s;
  p.tokens_per_s = p.samples_per_s * deck.model.seq_len;
  return p;
}

}  // namespace p2bw::planner
