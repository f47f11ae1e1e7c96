// Checkpoint I/O of one pipeline stage, kept out of the executor: saving a stage's weight
// versions and optimizer state into a checkpoint (every stage's replica 0 writes its file, rank 0
// commits), and restoring them under any layout.
#pragma once

#include <cstdint>
#include <string>

#include "comm/collectives.hpp"
#include "comm/process_grid.hpp"
#include "config/deck.hpp"
#include "io/checkpoint.hpp"
#include "model/optimizer.hpp"
#include "model/stage_model.hpp"
#include "pipeline/weight_versions.hpp"

namespace p2bw::pipeline {

// Collective: writes checkpoint `step` (no update may be pending: W(step) is the newest version;
// under 2bw the version batch `step` runs on is saved too, and under weight prediction the true
// W(step) as /params with C(step) as /params_predicted) and returns its folder on rank 0 (""
// elsewhere).
std::string save_stage_checkpoint(const std::string& checkpoints, int keep, std::int64_t step,
                                  const config::Deck& deck, const comm::ProcessGrid& grid,
                                  comm::Collectives& collectives, const model::StageModel& model,
                                  const WeightVersions& versions,
                                  const model::Optimizer& optimizer);

// Reads every tensor of `model` from the checkpoint's `group` ("params", "params_old",
// "optimizer/first", "optimizer/second") into `into` (num_params), whichever stage file of
// whichever layout holds it.
void load_stage_tensors(const io::CheckpointReader& checkpoint, const std::string& group,
                        const model::StageModel& model, FloatView into);

// Loads the checkpoint's W(step) into `versions` and, when `oldest_needed` is step - 1 (2bw past
// its warm-up), W(step-1): the checkpoint's old version, or a copy of W(step) when it has none
// (a flush or gpipe checkpoint resumed under 2bw starts from its one version); and the optimizer
// state. An old version the schedule does not need (2bw resumed under flush) is not loaded.
// Under weight prediction the master gets W(step) and version `step` the checkpoint's C(step)
// (W(step) when it has none: the prediction restarts from the true weights).
void restore_stage(const io::CheckpointReader& checkpoint, int oldest_needed,
                   const model::StageModel& model, WeightVersions& versions,
                   model::Optimizer& optimizer);

}  // namespace p2bw::pipeline
