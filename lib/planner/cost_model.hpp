// The planner's cost model (the paper's planner, section 4): per-stage compute from a profile,
// inter-stage messages and data-parallel all-reduces over the right link for p2bw's rank
// placement (inter-node flows sharing their node's network bandwidth), bubbles from the schedule
// simulator, and memory from pipeline::predict_memory. `evaluate` predicts one configuration;
// search.hpp enumerates many.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "config/deck.hpp"
#include "kernels/types.hpp"
#include "pipeline/partition.hpp"
#include "planner/cluster.hpp"
#include "planner/profile.hpp"

namespace p2bw::planner {

// The knobs the planner chooses.
struct Candidate {
  int width = 1;            // w: data-parallel replicas of every stage
  int depth = 1;            // d: pipeline stages
  int microbatch_size = 1;  // b: sequences per microbatch per rank
  int microbatches = 1;     // m: per batch per pipeline
  config::ScheduleKind schedule = config::ScheduleKind::two_bw;
  bool recompute = false;
  std::int64_t global_batch() const { return std::int64_t{microbatch_size} * microbatches * width; }
};

// The deck's own configuration, and the deck with a candidate's values put in (pipeline.depth,
// width, schedule, microbatches, recompute, train.microbatch_size; an explicit partition is
// dropped for the balanced one unless it already has `depth` entries).
Candidate candidate_of(const config::Deck& deck);
config::Deck apply(const config::Deck& deck, const Candidate& candidate);

// Time of one message: latency + bytes / bandwidth. Bandwidth in GB/s, latency in us, result s.
double message_time(double bytes, double bandwidth_gbps, double latency_us);
// Ring all-reduce of `bytes` over `replicas` ranks: 2(w-1)/w · bytes / bandwidth plus 2(w-1)
// latencies (the ring's reduce-scatter and all-gather steps); 0 for one replica.
double ring_allreduce_time(double bytes, int replicas, double bandwidth_gbps, double latency_us);
// Placement (stage s on world ranks [s·w, (s+1)·w), devices_per_node consecutive ranks a node):
// whether the hop s -> s+1 of any pipeline j (rank s·w+j to (s+1)·w+j) crosses nodes, and
// whether the w replicas of stage s share one node.
bool hop_crosses_nodes(const Cluster& cluster, int width, int stage);
bool replicas_share_node(const Cluster& cluster, int width, int stage);

// Inter-node flows leaving each node at once, by node, in each phase of a step: the forward
// sends of every pipeline's hops, the backward sends, one ring step of the data-parallel
// all-reduces of every stage, and the tied-embedding exchanges between the first and last stage.
// A node's network interfaces carry the flows of a phase together
// (Cluster::node_network_bandwidth_gbps), so each gets the node's share.
struct NodeFlows {
  std::vector<int> forward, backward, ring, tied;
};
NodeFlows node_flows(const Cluster& cluster, int width, int depth);
// The most flows any of hop s's crossing pipelines shares a node with (its sending node's
// forward flows or its receiving node's backward flows); 0 if the hop stays in nodes.
int hop_flows(const Cluster& cluster, const NodeFlows& flows, int width, int stage);
// The same for the ring of stage s's all-reduce.
int ring_flows(const Cluster& cluster, const NodeFlows& flows, int width, int stage);

// Costs of one configuration, in seconds, per microbatch unless said otherwise.
struct StageCosts {
  std::vector<double> forward;    // d: forward of one microbatch on stage s
  std::vector<double> backward;   // d: backward (with the re-forward under recomputation)
  std::vector<double> message;    // d-1: one activation (or gradient) message over link s<->s+1
  std::vector<double> allreduce;  // d: data-parallel all-reduce of stage s's gradients, per batch
  std::vector<double> step;       // d: gradient norm, optimizer step and zeroing, per batch
  double tied_allreduce = 0;      // per batch: tied embedding gradient, first <-> last stage
};

StageCosts stage_costs(const Candidate& candidate, const pipeline::StageMap& map,
                       const MicrobatchProfile& profile, const Cluster& cluster);
// Per stage all-reduce time per batch: the data-parallel part, plus the tied embedding's on the
// first and the last stage (d > 1), where its two copies live.
std::vector<double> stage_allreduce(const StageCosts& costs);

// Memory a configuration may use per device: headroom x memory_per_device, in bytes.
std::int64_t memory_limit(const Cluster& cluster, double headroom);
// What the cluster's devices run GEMMs on, for the libraries' workspaces in memory predictions:
// cuBLASLt on GPUs, CBLAS (OpenBLAS) on hosts.
kernels::GemmLibrary gemm_library(const Cluster& cluster);
// Predicted peak bytes of every stage of `run` (pipeline::predict_memory over `map`) on the
// cluster's devices.
std::vector<std::int64_t> stage_peaks(const config::Deck& run, const pipeline::StageMap& map,
                                      const Cluster& cluster);

// Simulated time of one batch as p2bw's executor runs it: every stage's forwards, backwards and
// messages, then after its last backward of the batch the all-reduce (data-parallel, plus the
// tied embedding on the first and last stage) and the optimizer step. Under flush and gpipe the
// all-reduce is a collective over all stages (the loss and gradient-norm all-reduce completes
// before the next batch); under 2bw it is not (the executor defers the update and the reductions
// complete while it computes). 2bw: steady-state time per batch (4 batches simulated; the first
// fills the pipeline); flush and gpipe: makespan of one batch.
// To stay fast for large m, each schedule is simulated directly up to m = 3d and extrapolated
// linearly beyond from m = 2d and 3d (fill + periodic middle + drain, or 2bw's periodic steady
// state). Simulations are cached per (schedule, d, m, costs) since many
// candidates share them.
class SimulationCache {
 public:
  double batch_time(config::ScheduleKind schedule, int depth, int microbatches,
                    const StageCosts& costs);
  // One simulation as it is (no extrapolation), cached.
  double simulate(config::ScheduleKind schedule, int depth, int microbatches,
                  const StageCosts& costs);
  std::int64_t simulations() const { return simulations_; }

 private:
  using Key = std::tuple<int, int, int, std::vector<double>, std::vector<double>,
                         std::vector<double>, std::vector<double>, std::vector<double>, double>;
  std::map<Key, double> times_;
  std::int64_t simulations_ = 0;
};

// Why a configuration cannot run.
enum class Rejection {
  none,
  memory,                  // a stage's predicted memory exceeds headroom x device memory
  global_batch,            // b·m·w above the bound even at the smallest m
  microbatches_lt_depth,   // 2bw needs m >= d
  depth_gt_layers,         // more stages than transformer blocks
  too_many_devices,        // w·d > devices of the cluster
  microbatch_not_profiled  // the profile has no entry for b
};
const char* describe(Rejection reason);

struct Prediction {
  Candidate candidate;
  Rejection rejection = Rejection::none;
  bool fits() const { return rejection == Rejection::none; }
  double batch_time_s = 0;      // simulated (SimulationCache::batch_time), everything included
  double allreduce_time_s = 0;  // slowest stage's data-parallel + tied all-reduce, per batch
  double step_time_s = 0;       // slowest stage's optimizer step (norm, update, zeroing)
  double samples_per_s = 0;     // b·m·w / batch_time_s
  double tokens_per_s = 0;      // samples_per_s · seq_len
  std::vector<std::int64_t> peak_memory_bytes;  // predicted, per stage
  std::int64_t memory_limit_bytes = 0;          // headroom x device memory
};

struct EvaluateOptions {
  double memory_headroom = 0.9;  // usable fraction of memory_per_device (allocator, runtime)
  bool time_rejected = false;    // also predict times when memory rejects (for --evaluate)
};

// Predicts the deck's configuration (its depth, width, schedule, m, b, recompute) on the cluster
// with the profile's part times. Checks memory with pipeline::predict_memory.
Prediction evaluate(const config::Deck& deck, const Cluster& cluster, const Profile& profile,
                    const EvaluateOptions& options = {}, SimulationCache* cache = nullptr);

}  // namespace p2bw::planner
