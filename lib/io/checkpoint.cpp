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
#include <thread>

#include "config/deck_io.hpp"
#include "core/error.hpp"
#include "core/hash.hpp"
#include "io/hdf5_file.hpp"

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
  if (fd < 0) throw InternalError("cannot open " + path.string() + " to sync it");
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
    write_group(file, "params", *data.tensors, data.newest);
    write_group(file, "params_old", *data.tensors, data.old);
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
    file.set_attribute("/", "optimizer", std::string(to_string(deck.train.optimizer.kind)));
    file.set_attribute("/", "stage_files", std::int64_t{stages});
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

std::string resolve_checkpoint(const std::string& run_checkpoints, const std::string& which) {
  if (which != "latest") {
    if (!fs::is_directory(which))
      throw UserError(
          fmt::format("--resume {}: no such checkpoint folder (allowed: latest, or a "
                      "checkpoints/step_<N> folder)",
                      which));
    return which;
  }
  const fs::path pointer = fs::path(run_checkpoints) / "latest";
  std::ifstream file(pointer);
  std::string name;
  if (!file || !std::getline(file, name) || name.empty())
    throw UserError(fmt::format(
        "--resume latest: {} does not exist or is empty (allowed: a run folder with a checkpoint)",
        pointer.string()));
  return (fs::path(run_checkpoints) / name).string();
}

struct CheckpointReader::Files {
  std::unique_ptr<H5File> manifest;
  std::vector<std::unique_ptr<H5File>> stages;
};

CheckpointReader::CheckpointReader(const std::string& folder, const config::Deck& deck)
    : folder_(folder), files_(std::make_unique<Files>()) {
  const std::string manifest = (fs::path(folder) / "manifest.h5").string();
  files_->manifest = std::make_unique<H5File>(manifest, H5File::Mode::read);
  H5File& m = *files_->manifest;
  if (m.string_attribute("/", "format") != "p2bw-checkpoint")
    throw UserError(manifest +
                    ": not a p2bw checkpoint manifest (allowed: checkpoints/step_<N>/manifest.h5)");
  const std::int64_t version = m.int_attribute("/", "format_version");
  if (version != kCheckpointFormatVersion)
    throw UserError(fmt::format("{}: checkpoint format version {} (allowed: {})", manifest, version,
                                kCheckpointFormatVersion));
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
        manifest, m.string_attribute("/", "model_kind"), to_string(deck.model.kind)));
  expect("model_layers", deck.model.layers);
  expect("model_hidden", deck.model.hidden);
  expect("model_heads", deck.model.heads);
  expect("model_seq_len", deck.model.seq_len);
  expect("model_vocab", deck.model.vocab);
  if (m.string_attribute("/", "optimizer") != to_string(deck.train.optimizer.kind))
    throw UserError(fmt::format(
        "{}: optimizer {} in the checkpoint but {} in the deck (allowed: the same optimizer)",
        manifest, m.string_attribute("/", "optimizer"), to_string(deck.train.optimizer.kind)));
  state_.step = m.int_attribute("/", "step");
  state_.optimizer_steps = m.int_attribute("/", "optimizer_steps");
  state_.newest_version = static_cast<int>(m.int_attribute("/", "newest_version"));
  state_.old_version = static_cast<int>(m.int_attribute("/", "old_version"));
  const std::int64_t stages = m.int_attribute("/", "stage_files");
  for (std::int64_t s = 0; s < stages; ++s) {
    const std::string path = (fs::path(folder) / fmt::format("stage_{}.h5", s)).string();
    files_->stages.push_back(std::make_unique<H5File>(path, H5File::Mode::read));
    const H5File& file = *files_->stages.back();
    if (file.string_attribute("/", "format") != "p2bw-checkpoint-stage" ||
        file.int_attribute("/", "format_version") != kCheckpointFormatVersion)
      throw UserError(
          fmt::format("{}: not a p2bw checkpoint stage file of format version {} (allowed: a file "
                      "written by p2bw)",
                      path, kCheckpointFormatVersion));
  }
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
  for (const auto& file : files_->stages) {
    if (!file->exists(name)) continue;
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
