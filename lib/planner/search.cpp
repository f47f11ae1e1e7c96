// The planner's search and its outputs (see search.hpp).
#include "planner/search.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>

#include "config/deck_io.hpp"
#include "core/error.hpp"
#include "pipeline/partition.hpp"

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
      schedule == config::ScheduleKind::two_bw ? depth : std::min<std::int64_t>(depth, bound);
  if (lo < 1 || lo > bound) return counts;
  for (std::int64_t m = lo; m <= bound; m *= 2) counts.push_back(static_cast<int>(m));
  if (counts.back() != bound) counts.push_back(static_cast<int>(bound));
  if (static_cast<int>(counts.size()) > limit && limit >= 2)
    counts.erase(counts.begin() + 1, counts.end() - (limit - 1));
  return counts;
}

namespace {

// Whether a candidate's worst stage fits the memory limit (predict_memory only, no timing).
bool fits_memory(const config::Deck& deck, const Candidate& candidate, const Cluster& cluster,
                 std::int64_t limit) {
  const config::Deck run = apply(deck, candidate);
  const std::vector<std::int64_t> peaks = stage_peaks(run, pipeline::make_stage_map(run), cluster);
  return *std::max_element(peaks.begin(), peaks.end()) <= limit;
}

// GPipe keeps all m microbatches' activations: its memory grows with m, so the grid's larger
// counts may all fail while a count between them fits. Adds the largest m in [counts.front(),
// counts.back()] that fits (bisection; memory is monotone in m) when the grid lacks it.
void add_largest_fitting(const config::Deck& deck, Candidate candidate, const Cluster& cluster,
                         std::int64_t limit, std::vector<int>& counts) {
  candidate.microbatches = counts.back();
  if (fits_memory(deck, candidate, cluster, limit)) return;
  int lo = counts.front(), hi = counts.back();  // lo fits (checked below), hi does not
  candidate.microbatches = lo;
  if (!fits_memory(deck, candidate, cluster, limit)) return;
  while (hi - lo > 1) {
    candidate.microbatches = lo + (hi - lo) / 2;
    (fits_memory(deck, candidate, cluster, limit) ? lo : hi) = candidate.microbatches;
  }
  if (std::find(counts.begin(), counts.end(), lo) == counts.end()) {
    counts.push_back(lo);
    std::sort(counts.begin(), counts.end());
  }
}

// 'text' for a POSIX shell, single quotes inside written as '\''.
std::string shell_quote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

}  // namespace

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
  const std::int64_t limit = memory_limit(cluster, options.memory_headroom);
  // Depths beyond the layer count are counted once each, not evaluated.
  if (devices > layers) {
    result.rejections[Rejection::depth_gt_layers] += devices - layers;
    result.candidates += devices - layers;
  }
  for (int d = 1; d <= std::min(devices, layers); ++d) {
    const std::vector<int> widths = widths_for(d, devices);
    for (int w : widths) {
      for (config::ScheduleKind kind : options.schedules) {
        for (bool recompute : {false, true}) {
          for (int b : sizes) {
            const std::int64_t m_bound = bound / (std::int64_t{b} * w);
            std::vector<int> counts =
                microbatch_counts(kind, d, m_bound, options.max_microbatch_counts);
            if (kind == config::ScheduleKind::gpipe && !counts.empty())
              add_largest_fitting(deck, Candidate{w, d, b, counts.back(), kind, recompute}, cluster,
                                  limit, counts);
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
  std::string name = job_name.empty() ? std::string("p2bw") : job_name;
  for (char& c : name)  // #SBATCH lines are not shell-parsed: keep the name one plain word
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
  text += fmt::format("#SBATCH --job-name={}\n", name);
  text += fmt::format("#SBATCH --nodes={}\n", nodes);
  // --ntasks as well: when w·d is not a multiple of the node size, the last node runs fewer.
  text += fmt::format("#SBATCH --ntasks={}\n", ranks);
  text += fmt::format("#SBATCH --ntasks-per-node={}\n", per_node);
  if (gpus) text += fmt::format("#SBATCH --gpus-per-node={}\n", per_node);
  text += "#SBATCH --signal=USR1@120\n";
  text += "#SBATCH --output=%x-%j.out\n\n";
  text += "set -euo pipefail\n";
  text += fmt::format("deck={}\n", shell_quote(deck_path));
  text += fmt::format("checkpoints={}\n", shell_quote(output_dir + "/checkpoints"));
  text += "# Resume only when an earlier run left a checkpoint; a first run starts fresh.\n";
  text += "if [ -e \"$checkpoints/latest\" ]; then\n";
  text += "  srun --mpi=pmi2 p2bw train \"$deck\" --resume latest\n";
  text += "else\n";
  text += "  srun --mpi=pmi2 p2bw train \"$deck\"\n";
  text += "fi\n";
  return text;
}

}  // namespace p2bw::planner
