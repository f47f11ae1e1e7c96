// Per-stage memory prediction; see memory.hpp.
#include "pipeline/memory.hpp"

#include <algorithm>

#include "model/model_shape.hpp"
#include "model/stage_model.hpp"
#include "pipeline/weight_versions.hpp"
#include "schedule/schedule.hpp"

namespace p2bw::pipeline {

std::vector<StageMemory> predict_memory(const config::Deck& deck, const StageMap& map) {
  constexpr std::int64_t kFloat = 4;
  const model::ModelShape shape(deck.model, deck.train.microbatch_size);
  const int depth = static_cast<int>(map.stages.size());
  std::vector<StageMemory> result;
  for (int s = 0; s < depth; ++s) {
    const StageRange& range = map.stages[s];
    StageMemory mem;
    std::int64_t stashed = range.blocks * shape.block().activations;  // one microbatch, full
    std::int64_t input = shape.block().input;                         // stage input per microbatch
    mem.params = range.blocks * shape.block().params;
    if (range.has_embedding) {
      mem.params += shape.embedding().params;
      stashed += shape.embedding().activations;
      input = shape.embedding().input;
    }
    if (range.has_head) {
      mem.params += shape.head().params;
      stashed += shape.head().activations;
    }
    // 2bw: two versions; under weight prediction two predicted ones beside the true weights.
    mem.versions = predicts_weights(deck)                                   ? 3
                   : deck.pipeline.schedule == config::ScheduleKind::two_bw ? 2
                                                                            : 1;
    mem.in_flight =
        schedule::activation_bound(deck.pipeline.schedule, depth, deck.pipeline.microbatches, s);
    mem.weights = mem.params * kFloat * mem.versions;
    mem.gradients = mem.params * kFloat;
    mem.optimizer =
        mem.params * kFloat * (deck.train.optimizer.kind == config::OptimizerKind::adamw ? 2 : 1);
    // With recomputation only each microbatch's stage input is stashed; one microbatch's full
    // activations (and, before the last stage, its unused output) exist while its backward
    // re-runs the forward.
    const std::int64_t rerun_output = range.has_head ? 0 : shape.block().input;
    mem.activations =
        kFloat * (deck.pipeline.recompute ? mem.in_flight * input + stashed + rerun_output
                                          : mem.in_flight * stashed);
    const int boundaries = (s > 0) + (s + 1 < depth);
    mem.buffers = kFloat * 2 * boundaries * shape.block().input;  // activation and gradient
    if (deck.data.val_fraction > 0) {
      // Evaluation: one microbatch's activations (recomputation's scratch set serves) and, before
      // the last stage, two output buffers.
      if (!deck.pipeline.recompute) mem.activations += kFloat * stashed;
      if (s + 1 < depth) mem.buffers += kFloat * 2 * shape.block().input;
    }
    mem.workspace = kFloat * model::stage_workspace_floats(shape, range.has_head);
    result.push_back(mem);
  }
  return result;
}

}  // namespace p2bw::pipeline
