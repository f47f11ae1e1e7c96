// Checkpoints: layer-indexed HDF5 files that any layout (d', w') can restart from.
//
// <output.dir>/checkpoints/
//   step_<N>/manifest.h5   format "p2bw-checkpoint", format_version, deck, model dimensions, run
//                          state (step, optimizer steps, weight versions), run_id, the stage
//                          files and each one's FNV-1a 64 checksum (stage_<s>_checksum)
//   step_<N>/stage_<s>.h5  attributes step, stage and run_id (the files of one checkpoint prove
//                          they belong together); /params/<name> (the newest weights W(N)),
//                          /params_old/<name> (the version batch N runs on, 2bw only; a
//                          predicted one under weight prediction), /params_predicted/<name>
//                          (C(N), the predicted weights of pipeline.weight_prediction, when they
//                          differ from W(N)), /optimizer/first/<name>,
//                          /optimizer/second/<name> (AdamW moments or SGD momentum); every tensor
//                          under its global name (e.g. blocks/7/attn/qkv/weight) with its FNV-1a
//                          checksum as an attribute
//   latest                 text: the name of the newest complete checkpoint
// The run id is the one of the run directory holding the checkpoints folder (io/run_dir.hpp; ""
// for a bare folder). Format version 2; version 1 checkpoints (no step or run in the stage
// files) are refused, not loaded unchecked. Every manifest attribute is validated when read.
// Writing is atomic: everything goes to step_<N>.tmp/, is fsynced, renamed to step_<N>, and
// `latest` is replaced last, so a run killed at any moment leaves the previous checkpoint whole.
// The data loader needs no state beyond the step (it is a pure function of seed and sample
// index), and p2bw has no other random state.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/deck.hpp"
#include "model/parameters.hpp"

namespace p2bw::io {

constexpr std::int64_t kCheckpointFormatVersion = 2;

// What a run is, besides its tensors, after `step` completed steps.
struct RunState {
  std::int64_t step = 0;  // completed optimizer steps; the next batch is `step`
  std::int64_t optimizer_steps =
      0;                       // updates applied (skipped steps excluded): AdamW's bias correction
  int newest_version = 0;      // W(newest) is /params
  int old_version = -1;        // W(old) is /params_old, -1 without
  int predicted_version = -1;  // C(newest) is /params_predicted, -1 without (optional)
  std::string run_id;          // of the run that wrote it (read from the manifest)
};

// One stage's tensors, on the host.
struct StageTensors {
  const std::vector<model::TensorInfo>* tensors = nullptr;   // offsets into the flat vectors below
  std::vector<float> newest, old, predicted, first, second;  // all but newest may be empty
};

// Writes stage `stage`'s file into the temporary folder of checkpoint `step`.
void write_stage_file(const std::string& run_checkpoints, std::int64_t step, int stage,
                      const StageTensors& data);

// Completes checkpoint `step` (called once, after every stage file is written): writes the
// manifest, renames the folder into place, replaces `latest`, and removes the oldest checkpoints
// beyond `keep`. Returns the checkpoint's folder.
std::string commit_checkpoint(const std::string& run_checkpoints, std::int64_t step,
                              const config::Deck& deck, const RunState& state, int stages,
                              int keep);

// The folder of `which`: "latest" (read from the pointer file, which may only name a step_<N>
// folder inside `run_checkpoints`) or a path to a checkpoint folder. Messages start with
// `request` and `which` ("--resume latest: ...") and name `pick` as the way to choose a
// checkpoint folder instead.
std::string resolve_checkpoint(const std::string& run_checkpoints, const std::string& which,
                               const std::string& request = "--resume",
                               const std::string& pick = "--resume checkpoints/step_<N>");

// The resolved deck a checkpoint was written with (its manifest's `deck`), for commands that
// start from a checkpoint alone (`p2bw generate`); the data file need not exist any more.
// CheckpointReader then validates the rest of the checkpoint against it.
config::Deck read_checkpoint_deck(const std::string& folder);

// A checkpoint opened for reading: validates the manifest against the deck's model on open and
// each tensor's type, shape and checksum on read. Every problem is a UserError naming the file
// and the tensor.
class CheckpointReader {
 public:
  CheckpointReader(const std::string& folder, const config::Deck& deck);
  ~CheckpointReader();
  const RunState& state() const { return state_; }
  // Reads tensor `tensor` of `group` ("params", "params_old", "optimizer/first", ...) into `out`.
  void read(const std::string& group, const model::TensorInfo& tensor, float* out) const;
  bool has(const std::string& group, const std::string& name) const;

 private:
  void verify(std::size_t stage) const;  // the stage file's checksum, once
  struct Files;
  std::string folder_;
  RunState state_;
  std::unique_ptr<Files> files_;
};

}  // namespace p2bw::io
