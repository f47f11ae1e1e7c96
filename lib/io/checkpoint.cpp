// Checkpoint writing, committing and validated reading; see checkpoint.hpp.
#include "io/checkpoint.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <system_error>
#include <thread>

#include "config/deck_io.hpp"
#include "core/error.hpp"
#include "core/hash.hpp"
#include "io/hdf5_file.hpp"
#include "io/run_dir.hpp"

namespace p2bw::io {

namespace {

namespace fs = std::filesystem;

std::string step_name(std::int64_t step) {
  return fmt::format("step_{:08}", step);
}

std::uint64_t checksum(const float* data, std::int64_t count) {
  return fnv1a64(data, static_cast<std::size_t>(count) * sizeof(float));
}

void fsync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) P2BW_INTERNAL_ERROR("cannot open " + path.string() + " to sync it");
  ::fsync(fd);
  ::close(fd);
}

void write_group(H5File& file, const std::string& group,
                 const std::vector<model::TensorInfo>& tensors, const std::vector<float>& values) {
  if (values.empty()) return;
  for (const model::TensorInfo& t : tensors) {
    const std::vector<float> slice(values.begin() + t.offset, values.begin() + t.offset + t.count);
    std::vector<hsize_t> shape(t.shape.begin(), t.shape.end());
    const std::string name = "/" + group + "/" + t.name;
    file.write(name, slice, shape);
    file.set_attribute(name, "checksum", fmt::format("{:016x}", checksum(slice.data(), t.count)));
  }
}

void set_model_attributes(H5File& file, const config::Deck& deck) {
  file.set_attribute("/", "model_kind", std::string(to_string(deck.model.kind)));
  file.set_attribute("/", "model_layers", std::int64_t{deck.model.layers});
  file.set_attribute("/", "model_hidden", std::int64_t{deck.model.hidden});
  file.set_attribute("/", "model_heads", std::int64_t{deck.model.heads});
  file.set_attribute("/", "model_seq_len", std::int64_t{deck.model.seq_len});
  file.set_attribute("/", "model_vocab", std::int64_t{deck.model.vocab});
}

// Tensors are float32: anything else (a float64 tensor, integers) is the wrong file.
void require_float32(const H5File& file, const std::string& name) {
  Handle set(P2BW_HDF5_CHECK(H5Dopen2(file.id(), name.c_str(), H5P_DEFAULT)));
  Handle type(P2BW_HDF5_CHECK(H5Dget_type(set.get())));
  if (H5Tget_class(type.get()) != H5T_FLOAT || H5Tget_size(type.get()) != 4)
    throw UserError(
        fmt::format("{}: tensor {} is not float32 (allowed: float32 tensors as p2bw writes them)",
                    file.path(), name));
}

// The run id of the run directory that holds `run_checkpoints` ("" for a bare folder).
std::string run_id_of(const std::string& run_checkpoints) {
  return read_run_id(fs::absolute(run_checkpoints).parent_path().string());
}

// FNV-1a 64 of a whole file, as hex.
std::string file_checksum(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw UserError(path.string() + ": cannot read the checkpoint file");
  std::vector<char> buffer(1 << 20);
  std::uint64_t hash = fnv1a64(nullptr, 0);
  while (file) {
    file.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    hash = fnv1a64(buffer.data(), static_cast<std::size_t>(file.gcount()), hash);
  }
  return fmt::format("{:016x}", hash);
}

// A step_<N> folder name as step_name writes it; `step` receives N.
bool parse_step_name(const std::string& name, std::int64_t& step) {
  if (name.size() < 13 || name.size() > 24 || name.compare(0, 5, "step_") != 0) return false;
  step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
    step = step * 10 + (name[i] - '0');
  }
  return name == step_name(step);
}

// The manifest of checkpoint `folder`, its format and version checked.
std::unique_ptr<H5File> open_manifest(const std::string& folder) {
  const std::string manifest = (fs::path(folder) / "manifest.h5").string();
  auto file = std::make_unique<H5File>(manifest, H5File::Mode::read);
  if (!file->has_attribute("/", "format") ||
      file->string_attribute("/", "format") != "p2bw-checkpoint")
    throw UserError(manifest +
                    ": not a p2bw checkpoint manifest (allowed: checkpoints/step_<N>/manifest.h5)");
  const std::int64_t version = file->int_attribute("/", "format_version");
  if (version != kCheckpointFormatVersion)
    throw UserError(fmt::format(
        "{}: checkpoint format version {} (allowed: {}; version 1 checkpoints record no step and "
        "run in their stage files and are not loaded; train again or keep the older p2bw)",
        manifest, version, kCheckpointFormatVersion));
  return file;
}

}  // namespace

void write_stage_file(const std::string& run_checkpoints, std::int64_t step, int stage,
                      const StageTensors& data) {
  const fs::path folder = fs::path(run_checkpoints) / (step_name(step) + ".tmp");
  fs::create_directories(folder);
  const fs::path path = folder / fmt::format("stage_{}.h5", stage);
  {
    H5File file(path.string(), H5File::Mode::create);
    file.set_attribute("/", "format", std::string("p2bw-checkpoint-stage"));
    file.set_attribute("/", "format_version", kCheckpointFormatVersion);
    file.set_attribute("/", "step", step);
    file.set_attribute("/", "stage", std::int64_t{stage});
    file.set_attribute("/", "run_id", run_id_of(run_checkpoints));
    write_group(file, "params", *data.tensors, data.newest);
    write_group(file, "params_old", *data.tensors, data.old);
    write_group(file, "params_predicted", *data.tensors, data.predicted);
    write_group(file, "optimizer/first", *data.tensors, data.first);
    write_group(file, "optimizer/second", *data.tensors, data.second);
  }
  fsync_path(path);
}

std::string commit_checkpoint(const std::string& run_checkpoints, std::int64_t step,
                              const config::Deck& deck, const RunState& state, int stages,
                              int keep) {
  const fs::path root(run_checkpoints);
  const fs::path temporary = root / (step_name(step) + ".tmp"),
                 final_folder = root / step_name(step);
  {
    H5File file((temporary / "manifest.h5").string(), H5File::Mode::create);
    file.set_attribute("/", "format", std::string("p2bw-checkpoint"));
    file.set_attribute("/", "format_version", kCheckpointFormatVersion);
    file.set_attribute("/", "deck", config::to_yaml(deck));
    set_model_attributes(file, deck);
    file.set_attribute("/", "step", state.step);
    file.set_attribute("/", "optimizer_steps", state.optimizer_steps);
    file.set_attribute("/", "newest_version", std::int64_t{state.newest_version});
    file.set_attribute("/", "old_version", std::int64_t{state.old_version});
    file.set_attribute("/", "predicted_version", std::int64_t{state.predicted_version});
    file.set_attribute("/", "optimizer", std::string(to_string(deck.train.optimizer.kind)));
    file.set_attribute("/", "stage_files", std::int64_t{stages});
    file.set_attribute("/", "run_id", run_id_of(run_checkpoints));
    for (int s = 0; s < stages; ++s)
      file.set_attribute("/", fmt::format("stage_{}_checksum", s),
                         file_checksum(temporary / fmt::format("stage_{}.h5", s)));
  }
  fsync_path(temporary / "manifest.h5");
  // Test hook: the commit of checkpoint P2BW_TEST_SLOW_CHECKPOINT=<step> pauses a minute, so that
  // a test can kill the run in the middle of it.
  if (const char* slow = std::getenv("P2BW_TEST_SLOW_CHECKPOINT"); slow && std::atoll(slow) == step)
    std::this_thread::sleep_for(std::chrono::seconds(60));
  fs::remove_all(final_folder);
  fs::rename(temporary, final_folder);
  fsync_path(root);
  const fs::path pointer = root / "latest", pointer_tmp = root / "latest.tmp";
  std::ofstream(pointer_tmp) << step_name(step) << "\n";
  fsync_path(pointer_tmp);
  fs::rename(pointer_tmp, pointer);
  fsync_path(root);
  // Keep the newest `keep` complete checkpoints; drop leftovers of interrupted writes.
  std::vector<fs::path> complete;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step_", 0) != 0) continue;
    if (entry.path().extension() == ".tmp")
      fs::remove_all(entry.path());
    else
      complete.push_back(entry.path());
  }
  std::sort(complete.begin(), complete.end());
  for (size_t i = 0; i + static_cast<size_t>(keep) < complete.size(); ++i)
    fs::remove_all(complete[i]);
  return final_folder.string();
}

std::string resolve_checkpoint(const std::string& run_checkpoints, const std::string& which,
                               const std::string& request, const std::string& pick) {
  if (which.empty())
    throw UserError(
        fmt::format("{}: empty (allowed: latest, or a checkpoints/step_<N> folder; --start-over to "
                    "train again from step 1)",
                    request));
  if (which != "latest") {
    std::error_code error;
    if (!fs::is_directory(which, error))
      throw UserError(
          fmt::format("{} {}: no such checkpoint folder (allowed: latest, or a "
                      "checkpoints/step_<N> folder)",
                      request, which));
    return which;
  }
  const fs::path pointer = fs::path(run_checkpoints) / "latest";
  std::ifstream file(pointer, std::ios::binary);
  std::string name;
  if (file) {
    char buffer[64] = {0};
    file.read(buffer, sizeof(buffer));
    name.assign(buffer, static_cast<size_t>(file.gcount()));
    if (!name.empty() && name.back() == '\n') name.pop_back();
  }
  if (!file && name.empty())
    throw UserError(fmt::format(
        "{} latest: {} does not exist or is empty (allowed: a run folder with a checkpoint)",
        request, pointer.string()));
  std::int64_t step = 0;
  if (!parse_step_name(name, step))
    throw UserError(fmt::format(
        "{} latest: {} names '{}' (allowed: a step_<N> folder of this run, as p2bw writes "
        "it; {} picks one)",
        request, pointer.string(), name.substr(0, 40), pick));
  const fs::path folder = fs::path(run_checkpoints) / name;
  std::error_code error;
  if (!fs::is_directory(folder, error))
    throw UserError(
        fmt::format("{} latest: {} names {}, which does not exist (allowed: a complete checkpoint; "
                    "{} picks another)",
                    request, pointer.string(), folder.string(), pick));
  return folder.string();
}

config::Deck read_checkpoint_deck(const std::string& folder) {
  const std::unique_ptr<H5File> manifest = open_manifest(folder);
  config::LoadOptions options;
  options.require_data = false;
  options.earlier_keys = true;  // written by the p2bw that trained, maybe an earlier version
  return config::parse_deck(manifest->string_attribute("/", "deck"),
                            manifest->path() + " (attribute deck)", folder, options);
}

struct CheckpointReader::Files {
  std::unique_ptr<H5File> manifest;
  std::vector<std::unique_ptr<H5File>> stages;
  std::vector<std::string> checksums;  // of each whole stage file, from the manifest
  std::vector<bool> verified;          // checked against it (once, on first read)
};

CheckpointReader::CheckpointReader(const std::string& folder, const config::Deck& deck)
    : folder_(folder), files_(std::make_unique<Files>()) {
  const std::string manifest = (fs::path(folder) / "manifest.h5").string();
  files_->manifest = open_manifest(folder);
  H5File& m = *files_->manifest;
  const auto expect = [&](const char* key, std::int64_t wanted) {
    const std::int64_t got = m.int_attribute("/", key);
    if (got != wanted)
      throw UserError(
          fmt::format("{}: {} is {} in the checkpoint but {} in the deck (allowed: the model the "
                      "checkpoint was written for)",
                      manifest, key, got, wanted));
  };
  if (m.string_attribute("/", "model_kind") != to_string(deck.model.kind))
    throw UserError(fmt::format(
        "{}: model_kind is {} in the checkpoint but {} in the deck (allowed: the same model)",
        manifest, m.string_attribute("/", "model_kind").substr(0, 40), to_string(deck.model.kind)));
  expect("model_layers", deck.model.layers);
  expect("model_hidden", deck.model.hidden);
  expect("model_heads", deck.model.heads);
  expect("model_seq_len", deck.model.seq_len);
  expect("model_vocab", deck.model.vocab);
  if (m.string_attribute("/", "optimizer") != to_string(deck.train.optimizer.kind))
    throw UserError(fmt::format(
        "{}: optimizer {} in the checkpoint but {} in the deck (allowed: the same optimizer)",
        manifest, m.string_attribute("/", "optimizer").substr(0, 40),
        to_string(deck.train.optimizer.kind)));
  // Every number is checked against what a writer could have written, so a damaged or forged
  // manifest is one line here instead of a failure deep inside the trainer.
  const auto ranged = [&](const char* key, std::int64_t lo, std::int64_t hi) {
    const std::int64_t value = m.int_attribute("/", key);
    if (value < lo || value > hi)
      throw UserError(
          fmt::format("{}: {} = {} is out of range (allowed: {} .. {}, as p2bw writes "
                      "it)",
                      manifest, key, value, lo, hi));
    return value;
  };
  constexpr std::int64_t kMaxStep = std::numeric_limits<int>::max();
  state_.step = ranged("step", 1, kMaxStep);
  state_.optimizer_steps = ranged("optimizer_steps", 0, state_.step);
  state_.newest_version = static_cast<int>(ranged("newest_version", 0, state_.step));
  state_.old_version = static_cast<int>(ranged("old_version", -1, state_.newest_version - 1));
  if (m.has_attribute("/", "predicted_version")) {
    state_.predicted_version = static_cast<int>(ranged("predicted_version", -1, state_.step));
    if (state_.predicted_version >= 0 && state_.predicted_version != state_.newest_version)
      throw UserError(fmt::format(
          "{}: predicted_version = {} but newest_version = {} (allowed: -1 or newest_version)",
          manifest, state_.predicted_version, state_.newest_version));
  }
  state_.run_id = m.string_attribute("/", "run_id");
  std::int64_t folder_step = 0;
  const std::string folder_name = fs::path(folder).lexically_normal().filename().string();
  if (parse_step_name(folder_name, folder_step) && folder_step != state_.step)
    throw UserError(fmt::format(
        "{}: step = {} but the folder is {} (allowed: the manifest of this folder's step)",
        manifest, state_.step, folder_name));
  const std::int64_t stages = ranged("stage_files", 1, deck.model.layers);
  for (std::int64_t s = 0; s < stages; ++s) {
    const std::string path = (fs::path(folder) / fmt::format("stage_{}.h5", s)).string();
    files_->stages.push_back(std::make_unique<H5File>(path, H5File::Mode::read));
    files_->checksums.push_back(m.string_attribute("/", fmt::format("stage_{}_checksum", s)));
    files_->verified.push_back(false);
    const H5File& file = *files_->stages.back();
    if (!file.has_attribute("/", "format") ||
        file.string_attribute("/", "format") != "p2bw-checkpoint-stage" ||
        !file.has_attribute("/", "format_version") ||
        file.int_attribute("/", "format_version") != kCheckpointFormatVersion)
      throw UserError(
          fmt::format("{}: not a p2bw checkpoint stage file of format version {} (allowed: a file "
                      "written by p2bw)",
                      path, kCheckpointFormatVersion));
    const std::int64_t step = file.int_attribute("/", "step"),
                       stage = file.int_attribute("/", "stage");
    const std::string run = file.string_attribute("/", "run_id");
    if (step != state_.step || stage != s || run != state_.run_id)
      throw UserError(fmt::format(
          "{}: a stage file of step {}, stage {}, run '{}' in the checkpoint of step {}, run '{}' "
          "(allowed: the stage files written with this manifest)",
          path, step, stage, run.substr(0, 40), state_.step, state_.run_id.substr(0, 40)));
  }
}

void CheckpointReader::verify(std::size_t stage) const {
  if (files_->verified[stage]) return;
  const std::string& path = files_->stages[stage]->path();
  if (file_checksum(path) != files_->checksums[stage])
    throw UserError(fmt::format(
        "{}: does not match the checksum the manifest records for it (allowed: an intact stage "
        "file of this checkpoint; it is corrupted or from another checkpoint)",
        path));
  files_->verified[stage] = true;
}

CheckpointReader::~CheckpointReader() = default;

bool CheckpointReader::has(const std::string& group, const std::string& name) const {
  for (const auto& file : files_->stages)
    if (file->exists("/" + group + "/" + name)) return true;
  return false;
}

void CheckpointReader::read(const std::string& group, const model::TensorInfo& tensor,
                            float* out) const {
  const std::string name = "/" + group + "/" + tensor.name;
  for (std::size_t s = 0; s < files_->stages.size(); ++s) {
    const auto& file = files_->stages[s];
    if (!file->exists(name)) continue;
    verify(s);
    require_float32(*file, name);
    std::vector<hsize_t> shape;
    const std::vector<float> values = file->read<float>(name, &shape);
    const std::vector<hsize_t> wanted(tensor.shape.begin(), tensor.shape.end());
    if (shape != wanted)
      throw UserError(
          fmt::format("{}: tensor {} has shape {} but the model needs {} (allowed: the model the "
                      "checkpoint was written for)",
                      file->path(), name, fmt::join(shape, "x"), fmt::join(wanted, "x")));
    const std::string expected = file->string_attribute(name, "checksum");
    if (fmt::format("{:016x}", checksum(values.data(), tensor.count)) != expected)
      throw UserError(fmt::format(
          "{}: tensor {} does not match its checksum (allowed: an intact file; it is corrupted)",
          file->path(), name));
    std::copy(values.begin(), values.end(), out);
    return;
  }
  throw UserError(fmt::format(
      "{}: no stage file holds tensor {} (allowed: a complete checkpoint of this model)", folder_,
      name));
}

}  // namespace p2bw::io
