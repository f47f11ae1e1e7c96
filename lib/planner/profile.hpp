// Profile data for the planner: per model part (embedding, one transformer block, head) and per
// microbatch size, the forward and backward time on one device and the bytes of weights,
// boundary activations and stashed activations. Either measured on this machine's device
// (`p2bw profile`, stored as profile.h5) or analytic (FLOPs from ModelShape / flops_per_device).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/deck.hpp"
#include "model/kernel_timer.hpp"

namespace p2bw::planner {

// One part for one microbatch. Times in seconds, sizes in bytes.
struct PartProfile {
  double forward_s = 0;             // forward of one microbatch
  double backward_s = 0;            // backward of one microbatch, activations stashed
  double backward_recompute_s = 0;  // backward under recomputation: re-forward + backward
  double step_s = 0;  // per batch: gradient norm, optimizer step and gradient zeroing of the part
  std::int64_t weight_bytes = 0;    // parameters · 4: the fp32 gradient the all-reduce sums
  std::int64_t boundary_bytes = 0;  // the part's input per microbatch (a stage boundary message)
  std::int64_t stash_bytes = 0;     // activations kept from forward for backward, input included
                                    // (boundary and stash in model.precision)
};

struct MicrobatchProfile {
  int microbatch_size = 1;  // b
  PartProfile embedding, block, head;
};

struct Profile {
  bool measured = false;  // false: analytic
  config::ModelConfig model;
  std::vector<MicrobatchProfile> entries;  // ascending microbatch size
  std::string machine;                     // build and machine description (measured)
  std::string source;                      // file it came from, or "analytic"
  int ranks = 1;                           // processes that measured at the same time
  // Messages between ranks 0 and 1 as the executor sends them (measured with >= 2 ranks, else
  // 0): one-way latency and large-message bandwidth, for the cluster file's link keys.
  double link_latency_us = 0;
  double link_bandwidth_gbps = 0;
  // What else the times depend on: the step's optimizer and model.precision (in `model`).
  config::OptimizerKind optimizer = config::OptimizerKind::adamw;

  const MicrobatchProfile* find(int microbatch_size) const;  // nullptr if absent
  std::vector<int> microbatch_sizes() const;
};

// 2: step_s, ranks, chained blocks; 3: link_latency_us, link_bandwidth_gbps, optimizer, tf32;
// 4: precision (fp32 | tf32 | bf16) in place of tf32. Version 3 is still read (tf32 1 is tf32).
constexpr std::int64_t kProfileFormatVersion = 4;

// Closed-form profile: forward = flops_forward / flops_per_device, backward = 2 x forward,
// backward under recomputation = forward + backward (so recomputing costs 4/3 of F + B).
// flops_per_device is the rate of model.precision (Cluster::flops_for); the byte sizes follow
// it too (boundary activations in the compute type).
Profile analytic_profile(const config::ModelConfig& model, double flops_per_device,
                         const std::vector<int>& microbatch_sizes);

// Median times on this device of parts [first, end) of the model (0 = embedding, 1 + l = block l,
// layers + 1 = head) for microbatch size b over `repeats` runs after one warm-up: forward,
// backward with a stashed cache, re-forward + backward (recomputation), and the per-batch update
// as the executor does it (gradient square sums, optimizer step, gradient zeroing). Needs Kokkos
// initialised; `deck` gives the model, seed, optimizer and TF32 setting. Used by `p2bw profile`
// and `p2bw bench`. With a `timer`, the timed forwards and backwards (not the warm-up, not the
// recomputation) also mark each kernel on it, as phases "forward" and "backward".
void time_parts(const config::Deck& deck, int b, int first, int end, int repeats, PartProfile& part,
                model::KernelTimer* timer = nullptr);

// Median of timings (the mean of the middle two for an even count); `times` must not be empty.
double median(std::vector<double> times);

// Blocks are timed as a chain of min(layers, kChainBlocks) blocks and divided by the count: a
// stage runs blocks back to back, whose stashes and weights do not all stay in a CPU's caches
// the way one block timed alone does. Run under MPI with as many ranks per node as training
// will use, every rank measures at once (ranks that share a node's memory bus or power slow each
// other down as in the run) and the profile keeps the slowest rank's times.
constexpr int kChainBlocks = 4;
Profile measure_profile(const config::Deck& deck, const std::vector<int>& microbatch_sizes,
                        int repeats);

// profile.h5: attributes format "p2bw-profile", format_version, deck (YAML), machine, ranks
// (processes that measured at once), link_latency_us, link_bandwidth_gbps, optimizer, precision,
// model keys, microbatch_sizes; per size a group
// /microbatch_<b> with datasets over the parts [embedding, block, head]: forward_s, backward_s,
// backward_recompute_s, step_s (float64), weight_bytes, boundary_bytes, stash_bytes (int64).
void write_profile(const std::string& path, const Profile& profile, const config::Deck& deck);
// Throws UserError for a file that is not a p2bw profile or has another format version.
Profile read_profile(const std::string& path);

// UserError unless the profile was taken on the same model shape (kind, hidden, heads, seq_len,
// vocab; layers may differ, the parts are per block) and, when measured, with the deck's
// optimizer and model.precision (they change the step and GEMM times).
void check_profile_matches(const Profile& profile, const config::Deck& deck);

}  // namespace p2bw::planner
