// Stage-map construction (see partition.hpp): explicit or balanced by a small dynamic program.
#include "pipeline/partition.hpp"

#include <limits>
#include <utility>

#include "model/model_shape.hpp"

namespace p2bw::pipeline {

namespace {

StageMap from_counts(const std::vector<int>& counts, bool balanced) {
  StageMap map;
  map.balanced = balanced;
  int first = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    map.stages.push_back({first, counts[s], s == 0, s + 1 == counts.size()});
    first += counts[s];
  }
  return map;
}

// Minimises (largest stage cost, sum of squared block counts) over contiguous splits.
std::vector<int> balance(int layers, int depth, double block_cost, double first_extra,
                         double last_extra) {
  using Score = std::pair<double, long long>;
  const Score worst{std::numeric_limits<double>::infinity(), 0};
  // best[s][i]: stages 0..s-1 cover blocks 0..i-1; choice[s][i]: blocks of stage s-1.
  std::vector<std::vector<Score>> best(depth + 1, std::vector<Score>(layers + 1, worst));
  std::vector<std::vector<int>> choice(depth + 1, std::vector<int>(layers + 1, 0));
  best[0][0] = {0.0, 0};
  for (int s = 1; s <= depth; ++s) {
    for (int i = s; i <= layers - (depth - s); ++i) {
      for (int n = 1; n <= i - (s - 1); ++n) {
        const Score& before = best[s - 1][i - n];
        if (before.first == worst.first) continue;
        double cost = n * block_cost;
        if (s == 1) cost += first_extra;
        if (s == depth) cost += last_extra;
        const Score candidate{std::max(before.first, cost), before.second + 1LL * n * n};
        if (candidate < best[s][i]) {
          best[s][i] = candidate;
          choice[s][i] = n;
        }
      }
    }
  }
  std::vector<int> counts(depth);
  for (int s = depth, i = layers; s >= 1; --s) {
    counts[s - 1] = choice[s][i];
    i -= choice[s][i];
  }
  return counts;
}

}  // namespace

StageMap make_stage_map(const config::Deck& deck) {
  if (!deck.pipeline.partition.empty()) return from_counts(deck.pipeline.partition, false);
  const model::ModelShape shape(deck.model, deck.train.microbatch_size);
  return from_counts(balance(deck.model.layers, deck.pipeline.depth, shape.block().flops_forward,
                             shape.embedding().flops_forward, shape.head().flops_forward),
                     true);
}

}  // namespace p2bw::pipeline
