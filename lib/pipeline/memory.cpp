// Per-stage memory prediction; see memory.hpp.
#include "pipeline/memory.hpp"

#include <algorithm>

#include "model/model_shape.hpp"
#include "model/stage_model.hpp"
#include "pipeline/weight_versions.hpp"
#include "schedule/schedule.hpp"

namespace p2bw::pipeline {

std::vector<StageMemory> predict_memory(const config::Deck& deck, const StageMap& map,
                                        kernels::GemmLibrary library) {
  const config::Precision precision = deck.model.precision;
  const bool bf16 = precision == config::Precision::bf16;
  constexpr std::int64_t kFloat = 4;
  const std::int64_t compute = config::compute_bytes(precision);  // a compute weight's bytes
  const model::ModelShape shape(deck.model, deck.train.microbatch_size);
  const std::int64_t boundary = shape.block().input_bytes(precision);  // (B, T, C) message
  const int depth = static_cast<int>(map.stages.size());
  std::vector<StageMemory> result;
  for (int s = 0; s < depth; ++s) {
    const StageRange& range = map.stages[s];
    StageMemory mem;
    // Bytes of one microbatch's stashed activations, and of the stage input per microbatch.
    std::int64_t stashed = range.blocks * shape.block().activation_bytes(precision);
    std::int64_t input = boundary;
    mem.params = range.blocks * shape.block().params;
    if (range.has_embedding) {
      mem.params += shape.embedding().params;
      stashed += shape.embedding().activation_bytes(precision);
      input = shape.embedding().input_bytes(precision);
    }
    if (range.has_head) {
      mem.params += shape.head().params;
      stashed += shape.head().activation_bytes(precision);
    }
    mem.versions = deck.pipeline.schedule == config::ScheduleKind::two_bw ? 2 : 1;
    mem.in_flight =
        schedule::activation_bound(deck.pipeline.schedule, depth, deck.pipeline.microbatches, s);
    // One fp32 master serves bf16 and 2bw's weight prediction alike (both update it in place).
    mem.master_weights = keeps_master(deck) ? mem.params * kFloat : 0;
    // fp32 shares one pool among versions and gradients (the update writes W(t+1) over the
    // gradients); bf16's copies cannot take fp32 gradients, so it keeps two bf16 buffers (the
    // update writes the next copy while the current one is held) and its own gradient buffers:
    // two with a 2bw phase, where batch t+1 accumulates during batch t's deferred reduction
    // (WeightVersions).
    const int compute_buffers = bf16 ? 2 : mem.versions;
    const int gradient_buffers = bf16 && has_two_bw_phase(deck) ? 2 : 1;
    mem.weights = mem.params * compute * compute_buffers + mem.master_weights;
    mem.gradients = mem.params * kFloat * gradient_buffers;
    mem.optimizer =
        mem.params * kFloat * (deck.train.optimizer.kind == config::OptimizerKind::adamw ? 2 : 1);
    // With recomputation only each microbatch's stage input is stashed; one microbatch's full
    // activations (and, before the last stage, its unused output) exist while its backward
    // re-runs the forward.
    const std::int64_t rerun_output = range.has_head ? 0 : boundary;
    mem.activations = deck.pipeline.recompute ? mem.in_flight * input + stashed + rerun_output
                                              : mem.in_flight * stashed;
    const int boundaries = (s > 0) + (s + 1 < depth);
    mem.buffers = 2 * boundaries * boundary;  // activation and gradient
    if (deck.data.val_fraction > 0) {
      // Evaluation: one microbatch's activations (recomputation's scratch set serves) and, before
      // the last stage, two output buffers.
      if (!deck.pipeline.recompute) mem.activations += stashed;
      if (s + 1 < depth) mem.buffers += 2 * boundary;
    }
    mem.workspace = model::stage_workspace_bytes(shape, range.has_head, precision) +
                    model::stage_library_workspace_bytes(shape, range.blocks, range.has_head,
                                                         precision, library);
    result.push_back(mem);
  }
  return result;
}

}  // namespace p2bw::pipeline
