// A stage's checkpoint I/O; see stage_checkpoint.hpp.
#include "pipeline/stage_checkpoint.hpp"

#include <fmt/format.h>

#include <vector>

#include "core/error.hpp"

namespace p2bw::pipeline {

namespace {

std::vector<float> to_host(const FloatView& view) {
  std::vector<float> values(view.extent(0));
  Kokkos::deep_copy(Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(values.data(),
                                                                                     values.size()),
                    view);
  return values;
}

// A buffer in the storage type as floats (bf16 widened exactly).
std::vector<float> to_host(const StoreView& view) {
  if (!view.is_bf16()) return to_host(view.as<float>());
  const FloatView wide("p2bw::checkpoint_values", static_cast<size_t>(view.size()));
  widen_into(Exec(), wide, view);
  return to_host(wide);
}

// A group's fp32 tensors into a buffer in the storage type (bf16 rounds to nearest even).
void load_stored(const io::CheckpointReader& checkpoint, const std::string& group,
                 const model::StageModel& model, const StoreView& into) {
  if (!into.is_bf16()) return load_stage_tensors(checkpoint, group, model, into.as<float>());
  const FloatView wide("p2bw::checkpoint_values", static_cast<size_t>(into.size()));
  load_stage_tensors(checkpoint, group, model, wide);
  narrow_into(Exec(), into, wide);
  Exec().fence();
}

}  // namespace

std::string save_stage_checkpoint(const std::string& checkpoints, int keep, std::int64_t step,
                                  const config::Deck& deck, const comm::ProcessGrid& grid,
                                  comm::Collectives& collectives, const model::StageModel& model,
                                  const WeightVersions& versions,
                                  const model::Optimizer& optimizer) {
  P2BW_ASSERT(versions.newest() == step, "a checkpoint while an update is pending");
  const int old = versions.oldest() < step ? versions.oldest() : -1;
  Exec().fence();
  if (grid.replica() == 0) {
    io::StageTensors data;
    data.tensors = &model.tensors();
    data.newest = to_host(versions.true_weights());
    if (old >= 0) data.old = to_host(versions.at(old));
    if (prediction_gamma(deck, static_cast<int>(step)) > 0)
      data.predicted = to_host(versions.at(static_cast<int>(step)));
    if (optimizer.first().data()) data.first = to_host(optimizer.first());
    if (optimizer.second().data()) data.second = to_host(optimizer.second());
    io::write_stage_file(checkpoints, step, grid.stage(), data);
  }
  const std::string what = fmt::format("the checkpoint after step {}", step);
  collectives.barrier(comm::Group::world, what + " (stage files written)");
  std::string folder;
  if (grid.rank() == 0) {
    io::RunState state;
    state.step = step;
    state.optimizer_steps = optimizer.steps_taken();
    state.newest_version = static_cast<int>(step);
    state.old_version = old;
    state.predicted_version =
        prediction_gamma(deck, static_cast<int>(step)) > 0 ? static_cast<int>(step) : -1;
    folder = io::commit_checkpoint(checkpoints, step, deck, state, grid.depth(), keep);
  }
  collectives.barrier(comm::Group::world, what + " (committed)");
  return folder;
}

void load_stage_tensors(const io::CheckpointReader& checkpoint, const std::string& group,
                        const model::StageModel& model, FloatView into) {
  auto host = Kokkos::create_mirror_view(into);
  for (const model::TensorInfo& tensor : model.tensors())
    checkpoint.read(group, tensor, host.data() + tensor.offset);
  Kokkos::deep_copy(into, host);
}

void restore_stage(const io::CheckpointReader& checkpoint, int oldest_needed,
                   const model::StageModel& model, WeightVersions& versions,
                   model::Optimizer& optimizer) {
  const io::RunState& state = checkpoint.state();
  const auto step = static_cast<int>(state.step);
  if (state.newest_version != step)
    throw UserError(fmt::format(
        "checkpoint after step {}: its newest weights are version {} (allowed: version {})", step,
        state.newest_version, step));
  // Checkpoints hold fp32 in every precision: a bf16 run rounds its compute copies (the master
  // keeps "params"), so a checkpoint of any precision resumes in any other. A bf16 run's own
  // copies are stored as their exact fp32 values, so rounding them again changes nothing.
  const StoreView newest = versions.add(step);
  if (versions.master().data()) {
    load_stage_tensors(checkpoint, "params", model, versions.master());
    if (state.predicted_version == step)
      load_stored(checkpoint, "params_predicted", model, newest);
    else
      model.write_compute_weights(Exec(), newest, versions.master());
  } else {
    load_stage_tensors(checkpoint, "params", model, newest.as<float>());
  }
  if (oldest_needed < step) {
    P2BW_ASSERT(oldest_needed == step - 1,
                "a resumed schedule needs W(step) and W(step-1) at most");
    const StoreView old = versions.add(oldest_needed);
    if (state.old_version == oldest_needed)
      load_stored(checkpoint, "params_old", model, old);
    else
      copy(Exec(), old, newest);  // flush or gpipe -> 2bw: one version to start
  }
  Exec().fence();
  if (optimizer.first().data())
    load_stage_tensors(checkpoint, "optimizer/first", model, optimizer.first());
  if (optimizer.second().data())
    load_stage_tensors(checkpoint, "optimizer/second", model, optimizer.second());
  optimizer.set_steps_taken(state.optimizer_steps);
}

}  // namespace p2bw::pipeline
