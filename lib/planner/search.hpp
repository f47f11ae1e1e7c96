// The planner's search (paper §4): every (w, d) with w·d <= devices and d <= layers, every
// schedule, with and without recomputation, every profiled microbatch size b, and a few
// microbatch counts m up to the global-batch bound; each candidate predicted by evaluate() and
// ranked by throughput. Also the outputs: ready deck and SLURM jobscript of a choice.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "config/deck.hpp"
#include "planner/cluster.hpp"
#include "planner/cost_model.hpp"
#include "planner/profile.hpp"

namespace p2bw::planner {

struct SearchOptions {
  std::int64_t global_batch_max = 0;  // B bound on b·m·w; 0 = the deck's own b·m·w
  double memory_headroom = 0.9;       // usable fraction of memory_per_device
  int max_microbatch_counts = 6;      // m candidates per (w, d, b): lo, 2lo, 4lo, ..., the bound
  std::vector<config::ScheduleKind> schedules = {
      config::ScheduleKind::two_bw, config::ScheduleKind::flush, config::ScheduleKind::gpipe};
};

struct SearchResult {
  std::vector<Prediction> fitting;               // best first (samples/s, then less memory)
  std::map<Rejection, std::int64_t> rejections;  // count by reason
  std::int64_t candidates = 0;                   // configurations considered
  std::int64_t simulations = 0;                  // schedule simulations actually run
  double seconds = 0;                            // wall time of the search
  std::int64_t global_batch_max = 0;             // the bound used
};

// Widths tried for depth d on n devices: powers of two up to n/d and n/d itself.
std::vector<int> widths_for(int depth, int devices);
// Microbatch counts tried: lo = d (2bw) or min(d, bound) (flush, gpipe), doubled while <= bound,
// plus the bound itself; at most `limit` values (the smallest dropped first, lo kept).
std::vector<int> microbatch_counts(config::ScheduleKind schedule, int depth, std::int64_t bound,
                                   int limit);

SearchResult search(const config::Deck& deck, const Cluster& cluster, const Profile& profile,
                    const SearchOptions& options = {});

// The deck of a choice as YAML (config::to_yaml of apply(deck, candidate)); re-parses.
std::string plan_deck_yaml(const config::Deck& deck, const Candidate& candidate);
// A plain sbatch script that trains `deck_path` with candidate.width·depth ranks, resuming from
// <output_dir>/checkpoints/latest when that exists.
std::string jobscript(const Cluster& cluster, const Candidate& candidate,
                      const std::string& deck_path, const std::string& output_dir,
                      const std::string& job_name);

}  // namespace p2bw::planner
