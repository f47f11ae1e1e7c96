// The planner's search and its outputs (see search.hpp).
#include "planner/search.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "config/deck_io.hpp"
#include "core/error.hpp"

namespace p2bw::planner {

std::vector<int> widths_for(int depth, int devices) {
  std::vector<int> widths;
  const int most = devices / depth;
  for (int w = 1; w <= most; w *= 2) widths.push_back(w);
  if (most >= 1 && widths.back() != most) widths.push_back(most);
  return widths;
}

std::vector<int> microbatch_counts(config::ScheduleKind schedule, int depth, std::int64_t bound,
                                   int limit) {
  std::vector<int> counts;
  const std::int64_t lo =
      schedule == config::ScheduleKind::twobw ? depth : std::min<std::int64_t>(depth, bound);
  if (lo < 1 || lo > bound) return counts;
  for (std::int64_t m = lo; m <= bound; m *= 2) counts.push_back(static_cast<int>(m));
  if (counts.back() != bound) counts.push_back(static_cast<int>(bound));
  if (static_cast<int>(counts.size()) > limit && limit >= 2)
    counts.erase(counts.begin() + 1, counts.end() - (limit - 1));
  return counts;
}

SearchResult search(const config::Deck& deck, const Cluster& cluster, const Profile& profile,
                    const SearchOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  SearchResult result;
  result.global_batch_max =
      options.global_batch_max > 0 ? options.global_batch_max : config::global_batch(deck);
  const std::int64_t bound = result.global_batch_max;
  const int devices = cluster.devices();
  const int layers = deck.model.layers;
  EvaluateOptions evaluate_options;
  evaluate_options.memory_headroom = options.memory_headroom;
  SimulationCache cache;
  const std::vector<int> sizes = profile.microbatch_sizes();
  const std::int64_t per_wd = static_cast<std::int64_t>(options.schedules.size()) * 2 *
                              static_cast<std::int64_t>(sizes.size());
  for (int d = 1; d <= devices; ++d) {
    const std::vector<int> widths = widths_for(d, devices);
    if (d > layers) {
      // Counted, not evaluated: every (w, schedule, recompute, b) of this depth.
      result.rejections[Rejection::depth_gt_layers] +=
          per_wd * static_cast<std::int64_t>(widths.size());
      result.candidates += per_wd * static_cast<std::int64_t>(widths.size());
      continue;
    }
    for (int w : widths) {
      for (config::ScheduleKind kind : options.schedules) {
        for (bool recompute : {false, true}) {
          for (int b : sizes) {
            const std::int64_t m_bound = bound / (std::int64_t{b} * w);
            const std::vector<int> counts =
                microbatch_counts(kind, d, m_bound, options.max_microbatch_counts);
            if (counts.empty()) {
              ++result.candidates;
              ++result.rejections[m_bound < 1 ? Rejection::global_batch
                                              : Rejection::microbatches_lt_depth];
              continue;
            }
            for (int m : counts) {
              ++result.candidates;
              Candidate c{w, d, b, m, kind, recompute};
              Prediction p = evaluate(apply(deck, c), cluster, profile, evaluate_options, &cache);
              if (p.fits()) {
                result.fitting.push_back(std::move(p));
              } else {
                ++result.rejections[p.rejection];
              }
            }
          }
        }
      }
    }
  }
  auto peak = [](const Prediction& p) {
    return *std::max_element(p.peak_memory_bytes.begin(), p.peak_memory_bytes.end());
  };
  std::stable_sort(result.fitting.begin(), result.fitting.end(),
                   [&](const Prediction& a, const Prediction& b) {
                     // Throughputs equal up to rounding tie: the smaller memory wins.
                     const double scale = std::max(a.samples_per_s, b.samples_per_s);
                     if (std::abs(a.samples_per_s - b.samples_per_s) > 1e-9 * scale)
                       return a.samples_per_s > b.samples_per_s;
                     return peak(a) < peak(b);
                   });
  result.simulations = cache.simulations();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

std::string plan_deck_yaml(const config::Deck& deck, const Candidate& candidate) {
  return config::to_yaml(apply(deck, candidate));
}

std::string jobscript(const Cluster& cluster, const Candidate& candidate,
                      const std::string& deck_path, const std::string& output_dir,
                      const std::string& job_name) {
  const int ranks = candidate.width * candidate.depth;
  const int per_node = std::min(ranks, cluster.devices_per_node);
  const int nodes = (ranks + per_node - 1) / per_node;
  const bool gpus = cluster.gpus;
  std::string text;
  text += "#!/bin/bash\n";
  text += fmt::format("# p2bw plan for cluster '{}': w = {}, d = {}, b = {}, m = {}, {}{}\n",
                      cluster.name, candidate.width, candidate.depth, candidate.microbatch_size,
                      candidate.microbatches, config::to_string(candidate.schedule),
                      candidate.recompute ? ", recompute" : "");
  text += fmt::format("#SBATCH --job-name={}\n", job_name);
  text += fmt::format("#SBATCH --nodes={}\n", nodes);
  text += fmt::format("#SBATCH --ntasks-per-node={}\n", per_node);
  if (gpus) text += fmt::format("#SBATCH --gpus-per-node={}\n", per_node);
  text += "#SBATCH --signal=USR1@120\n";
  text += "#SBATCH --output=%x-%j.out\n\n";
  text += "set -euo pipefail\n";
  text += fmt::format("deck='{}'\n", deck_path);
  text += fmt::format("checkpoints='{}/checkpoints'\n", output_dir);
  text += "# Resume only when an earlier run left a checkpoint; a first run starts fresh.\n";
  text += "if [ -e \"$checkpoints/latest\" ]; then\n";
  text += "  srun --mpi=pmi2 p2bw train \"$deck\" --resume latest\n";
  text += "else\n";
  text += "  srun --mpi=pmi2 p2bw train \"$deck\"\n";
  text += "fi\n";
  return text;
}

}  // namespace p2bw::planner
