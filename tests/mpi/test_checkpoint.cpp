// Checkpoints: K steps + resume equals the uninterrupted run bit for bit for every schedule;
// resume under another layout (written with (d, w) = (2, 1), resumed with (1, 1), (4, 1), (2, 2));
// corrupted, truncated and mismatched checkpoints are rejected with a clear message. bf16 runs
// resume bit for bit too, and checkpoints (fp32 in every precision) load across precisions.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <mpi.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <functional>
#include <map>
#include <memory>
#include <tuple>

#include "comm/deck_broadcast.hpp"
#include "comm/process_grid.hpp"
#include "core/error.hpp"
#include "core/hash.hpp"
#include "data/token_file.hpp"
#include "io/checkpoint.hpp"
#include "io/hdf5_file.hpp"
#include "kernels/bf16.hpp"
#include "mpi_world.hpp"
#include "pipeline/pipeline_trainer.hpp"
#include "pipeline/single_rank_trainer.hpp"
#include "pipeline/stage_checkpoint.hpp"

namespace p2bw::pipeline {
namespace {

using p2bw::testing::world_rank;
using p2bw::testing::world_size;

namespace fs = std::filesystem;

const char* kText =
    "Call me Ishmael. Some years ago - never mind how long precisely - having little or no money "
    "in my purse, "
    "and nothing particular to interest me on shore, I thought I would sail about a little and see "
    "the watery "
    "part of the world. It is a way I have of driving off the spleen and regulating the "
    "circulation.";

std::shared_ptr<const data::Tokens> text() {
  return std::make_shared<data::Tokens>(data::tokenize_bytes(kText));
}

// A folder every rank shares, named by rank 0.
std::string shared_folder(const std::string& name) {
  std::string path =
      (fs::temp_directory_path() / (name + "_" + std::to_string(::getpid()))).string();
  comm::broadcast_string(path, 0, MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(path);
  MPI_Barrier(MPI_COMM_WORLD);
  return path;
}

config::Deck deck(config::ScheduleKind schedule, int warmup, int d, int w, int m) {
  config::Deck deck;
  deck.model = {config::ModelKind::gpt, 4, 16, 2, 8, 256};
  deck.pipeline.depth = d;
  deck.pipeline.width = w;
  deck.pipeline.schedule = schedule;
  deck.pipeline.microbatches = m;
  deck.pipeline.sync_warmup_steps = warmup;
  deck.train.microbatch_size = 2;
  deck.train.steps = 7;
  deck.train.seed = 9;
  deck.train.lr = 3e-3;
  deck.train.lr_warmup_steps = 2;
  deck.train.grad_clip = 0.5;
  return deck;
}

// Runs `body` on the first d·w ranks with a grid of that layout.
void with_layout(int d, int w, const std::function<void(const comm::ProcessGrid&)>& body) {
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank() < d * w ? 0 : MPI_UNDEFINED, world_rank(), &sub);
  if (sub != MPI_COMM_NULL) {
    {
      const comm::ProcessGrid grid(sub, d, w);
      body(grid);
    }
    MPI_Comm_free(&sub);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

std::vector<float> host(model::ConstFloatView view) {
  auto mirror = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  return std::vector<float>(mirror.data(), mirror.data() + mirror.extent(0));
}

// Per-step losses and this rank's final weights (by tensor name).
struct Outcome {
  std::vector<double> losses;
  std::map<std::string, std::vector<float>> weights;
};

Outcome finish(PipelineTrainer& trainer, std::int64_t steps) {
  Outcome out;
  auto take = [&](const std::vector<StepResult>& results) {
    for (const StepResult& r : results) out.losses.push_back(r.loss);
  };
  while (trainer.steps_done() < steps) take(trainer.step());
  take(trainer.synchronize());
  const auto w = host(trainer.newest_weights());
  for (const model::TensorInfo& t : trainer.model().tensors())
    out.weights[t.name] = std::vector<float>(w.begin() + t.offset, w.begin() + t.offset + t.count);
  return out;
}

bool same_bits(double a, double b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

// Trains dk uninterrupted, then to step 3, checkpoints, resumes and finishes: the resumed steps'
// losses and the final weights must equal the uninterrupted run's bit for bit.
void expect_resume_bit_for_bit(const config::Deck& dk, const std::string& label) {
  const int d = world_size();
  const std::string folder = shared_folder("p2bw_ckpt_resume");
  Outcome whole, resumed;
  with_layout(d, 1, [&](const comm::ProcessGrid& grid) {
    PipelineTrainer trainer(dk, grid, text());
    whole = finish(trainer, dk.train.steps);
  });
  with_layout(d, 1, [&](const comm::ProcessGrid& grid) {
    PipelineTrainer trainer(dk, grid, text());
    finish(trainer, 3);
    trainer.save_checkpoint(folder, 2);
  });
  with_layout(d, 1, [&](const comm::ProcessGrid& grid) {
    io::CheckpointReader checkpoint(io::resolve_checkpoint(folder, "latest"), dk);
    EXPECT_EQ(checkpoint.state().step, 3) << label;
    PipelineTrainer trainer(dk, grid, text(), &checkpoint);
    resumed = finish(trainer, dk.train.steps);
  });
  ASSERT_EQ(resumed.losses.size(), 4u) << label;
  for (size_t i = 0; i < 4; ++i)
    EXPECT_TRUE(same_bits(resumed.losses[i], whole.losses[3 + i])) << label << " step " << 4 + i;
  EXPECT_EQ(resumed.weights, whole.weights) << label;
  if (world_rank() == 0) fs::remove_all(folder);
}

TEST(Checkpoint, ResumeEqualsTheUninterruptedRunBitForBit) {
  const int d = world_size();
  // (schedule, warm-up, weight prediction): with prediction the checkpoint after step 3 holds the
  // true W(3), the predicted C(3) and the version batch 3 runs on (predicted without a warm-up).
  for (auto [schedule, warmup, prediction] :
       std::vector<std::tuple<config::ScheduleKind, int, double>>{
           {config::ScheduleKind::flush, 0, 0.0},
           {config::ScheduleKind::gpipe, 0, 0.0},
           {config::ScheduleKind::two_bw, 0, 0.0},
           {config::ScheduleKind::two_bw, 2, 0.0},
           {config::ScheduleKind::two_bw, 4, 0.0},
           {config::ScheduleKind::two_bw, 0, 1.0},
           {config::ScheduleKind::two_bw, 2, 1.0}}) {
    config::Deck dk = deck(schedule, warmup, d, 1, 2 * d);
    dk.pipeline.weight_prediction = prediction;
    expect_resume_bit_for_bit(
        dk, fmt::format("{} warm-up {} prediction {}", to_string(schedule), warmup, prediction));
  }
}

TEST(Checkpoint, Bf16ResumeEqualsTheUninterruptedRunBitForBit) {
  // The checkpoint holds the fp32 master ("params") and the compute copies as their fp32 values;
  // the resumed run rounds its copies again (a no-op on bf16 values) and goes on bit for bit.
  const int d = world_size();
  for (auto [schedule, warmup, prediction] :
       std::vector<std::tuple<config::ScheduleKind, int, double>>{
           {config::ScheduleKind::flush, 0, 0.0},
           {config::ScheduleKind::two_bw, 0, 0.0},
           {config::ScheduleKind::two_bw, 0, 1.0},
           {config::ScheduleKind::two_bw, 2, 1.0}}) {
    config::Deck dk = deck(schedule, warmup, d, 1, 2 * d);
    dk.pipeline.weight_prediction = prediction;
    dk.model.precision = config::Precision::bf16;
    expect_resume_bit_for_bit(dk, fmt::format("bf16 {} warm-up {} prediction {}",
                                              to_string(schedule), warmup, prediction));
  }
}

TEST(Checkpoint, CheckpointsLoadAcrossPrecisions) {
  // An fp32 checkpoint resumed in bf16: the master is the checkpoint's fp32 weights bit for bit,
  // every compute copy (W_old, the predicted copy) is bf16 of the checkpoint's value, exactly
  // (saved again at once, before any step, and read back). That bf16 checkpoint resumed in fp32
  // trains on. Both continuations stay within bf16's tolerance of the uninterrupted fp32 run
  // (5%: tests/model/test_bf16_training.cpp) and differ from it (the rounding happened).
  const int d = world_size();
  for (double prediction : {0.0, 1.0}) {
    config::Deck fp32 = deck(config::ScheduleKind::two_bw, 0, d, 1, 2 * d);
    fp32.pipeline.weight_prediction = prediction;
    config::Deck bf16 = fp32;
    bf16.model.precision = config::Precision::bf16;
    const std::string label = fmt::format("2bw prediction {}", prediction);
    const std::string from_fp32 = shared_folder("p2bw_ckpt_fp32"),
                      from_bf16 = shared_folder("p2bw_ckpt_tobf16");
    Outcome whole, in_bf16, back_in_fp32;
    with_layout(d, 1, [&](const comm::ProcessGrid& grid) {
      PipelineTrainer trainer(fp32, grid, text());
      whole = finish(trainer, fp32.train.steps);
    });
    with_layout(d, 1, [&](const comm::ProcessGrid& grid) {
      PipelineTrainer trainer(fp32, grid, text());
      finish(trainer, 3);
      trainer.save_checkpoint(from_fp32, 1);
    });
    with_layout(d, 1, [&](const comm::ProcessGrid& grid) {
      io::CheckpointReader checkpoint(io::resolve_checkpoint(from_fp32, "latest"), bf16);
      PipelineTrainer trainer(bf16, grid, text(), &checkpoint);
      trainer.save_checkpoint(from_bf16, 1);  // what the bf16 run holds after the restore
      io::CheckpointReader saved(io::resolve_checkpoint(from_bf16, "latest"), bf16);
      const model::StageModel& model = trainer.model();
      const auto read = [&](const io::CheckpointReader& c, const std::string& group) {
        model::FloatView values("values", static_cast<size_t>(model.num_params()));
        load_stage_tensors(c, group, model, values);
        return host(values);
      };
      EXPECT_EQ(read(saved, "params"), read(checkpoint, "params")) << label << ": the master";
      std::vector<std::string> copies{"params_old"};
      if (prediction > 0) copies.push_back("params_predicted");
      for (const std::string& group : copies) {
        const auto original = read(checkpoint, group), copy = read(saved, group);
        std::int64_t rounded = 0, changed = 0;
        for (size_t i = 0; i < original.size(); ++i) {
          rounded += copy[i] == kernels::round_to_bf16(original[i]);
          changed += copy[i] != original[i];
        }
        EXPECT_EQ(rounded, static_cast<std::int64_t>(original.size())) << label << ": " << group;
        EXPECT_GT(changed, 0) << label << ": " << group << " was an fp32 copy";
      }
      in_bf16 = finish(trainer, bf16.train.steps);
    });
    with_layout(d, 1, [&](const comm::ProcessGrid& grid) {
      io::CheckpointReader checkpoint(io::resolve_checkpoint(from_bf16, "latest"), fp32);
      PipelineTrainer trainer(fp32, grid, text(), &checkpoint);
      back_in_fp32 = finish(trainer, fp32.train.steps);
    });
    for (const Outcome* run : {&in_bf16, &back_in_fp32}) {
      ASSERT_EQ(run->losses.size(), 4u) << label;
      bool differs = false;
      for (size_t i = 0; i < 4; ++i) {
        EXPECT_NEAR(run->losses[i], whole.losses[3 + i], 0.05 * whole.losses[3 + i])
            << label << " step " << 4 + i;
        differs = differs || !same_bits(run->losses[i], whole.losses[3 + i]);
      }
      EXPECT_TRUE(differs) << label << ": the resumed run is the fp32 run bit for bit";
    }
    if (world_rank() == 0) fs::remove_all(from_fp32), fs::remove_all(from_bf16);
  }
}

TEST(Checkpoint, ResumeUnderAnotherSchedule) {
  // "One key" switches the schedule at a resume: a flush or gpipe checkpoint resumed under 2bw
  // starts 2bw from its one version (the first resumed batch runs on W(3), as the vanilla run's
  // does); a 2bw checkpoint resumed under flush keeps the newest version.
  const int d = world_size();
  for (auto [from, to] : std::vector<std::pair<config::ScheduleKind, config::ScheduleKind>>{
           {config::ScheduleKind::flush, config::ScheduleKind::two_bw},
           {config::ScheduleKind::gpipe, config::ScheduleKind::two_bw},
           {config::ScheduleKind::two_bw, config::ScheduleKind::flush}}) {
    const std::string label = fmt::format("{} -> {}", to_string(from), to_string(to));
    const config::Deck before = deck(from, 0, d, 1, 2 * d), after = deck(to, 0, d, 1, 2 * d);
    const std::string folder = shared_folder("p2bw_ckpt_switch");
    Outcome whole, resumed;
    with_layout(d, 1, [&](const comm::ProcessGrid& grid) {
      PipelineTrainer trainer(before, grid, text());
      whole = finish(trainer, before.train.steps);
    });
    with_layout(d, 1, [&](const comm::ProcessGrid& grid) {
      PipelineTrainer trainer(before, grid, text());
      finish(trainer, 3);
      trainer.save_checkpoint(folder, 1);
    });
    with_layout(d, 1, [&](const comm::ProcessGrid& grid) {
      io::CheckpointReader checkpoint(io::resolve_checkpoint(folder, "latest"), after);
      PipelineTrainer trainer(after, grid, text(), &checkpoint);
      resumed = finish(trainer, after.train.steps);
    });
    ASSERT_EQ(resumed.losses.size(), 4u) << label;
    for (double loss : resumed.losses) EXPECT_TRUE(std::isfinite(loss)) << label;
    // Step 4 runs batch 3 on W(3) under flush and gpipe, and on W(3) (its copy as W(2)) under
    // the 2bw that starts from the vanilla checkpoint: the same loss, bit for bit.
    if (to == config::ScheduleKind::two_bw) {
      EXPECT_TRUE(same_bits(resumed.losses[0], whole.losses[3]))
          << label << ": " << resumed.losses[0] << " vs " << whole.losses[3];
    }
    if (world_rank() == 0) fs::remove_all(folder);
  }
}

TEST(Checkpoint, ResumeUnderAnotherLayout) {
  if (world_size() < 4)
    GTEST_SKIP() << "needs 4 ranks for the layouts (2,1) -> (1,1), (4,1), (2,2); runs in "
                    "test_checkpoint_np4";
  for (auto schedule : {config::ScheduleKind::flush, config::ScheduleKind::two_bw}) {
    // The single-rank reference of the same global batch (b · 4 sequences per step).
    const config::Deck reference_deck = deck(schedule, 0, 1, 1, 4);
    SingleRankTrainer reference(reference_deck, text());
    std::vector<double> want;
    for (int s = 0; s < reference_deck.train.steps; ++s) want.push_back(reference.step().loss);
    const auto reference_weights = host(reference.weights());

    const std::string folder = shared_folder("p2bw_ckpt_layout");
    with_layout(2, 1, [&](const comm::ProcessGrid& grid) {
      PipelineTrainer trainer(deck(schedule, 0, 2, 1, 4), grid, text());
      finish(trainer, 3);
      trainer.save_checkpoint(folder, 1);
    });
    for (const auto& layout : std::vector<std::pair<int, int>>{{1, 1}, {4, 1}, {2, 2}}) {
      const int d = layout.first, w = layout.second;  // lambdas capture no structured bindings
      const config::Deck dk = deck(schedule, 0, d, w, 4 / w);
      with_layout(d, w, [&](const comm::ProcessGrid& grid) {
        io::CheckpointReader checkpoint(io::resolve_checkpoint(folder, "latest"), dk);
        PipelineTrainer trainer(dk, grid, text(), &checkpoint);
        const Outcome got = finish(trainer, dk.train.steps);
        const std::string label =
            fmt::format("{} resumed with d={} w={}", to_string(schedule), d, w);
        for (size_t i = 0; i < got.losses.size(); ++i) {
          if (w == 1)
            EXPECT_TRUE(same_bits(got.losses[i], want[3 + i])) << label << " step " << 4 + i;
          else
            EXPECT_NEAR(got.losses[i], want[3 + i], 1e-5 * want[3 + i])
                << label << " step " << 4 + i;
        }
        for (const model::TensorInfo& t : trainer.model().tensors()) {
          const model::TensorInfo* ref = reference.model().find(t.name);
          for (std::int64_t i = 0; i < t.count; ++i) {
            const float a = got.weights.at(t.name)[static_cast<size_t>(i)],
                        b = reference_weights[static_cast<size_t>(ref->offset + i)];
            if (w == 1)
              ASSERT_EQ(a, b) << label << " " << t.name << "[" << i << "]";
            else
              ASSERT_NEAR(a, b, 1e-5f * std::max(1.0f, std::abs(b)))
                  << label << " " << t.name << "[" << i << "]";
          }
        }
      });
    }
    if (world_rank() == 0) fs::remove_all(folder);
  }
}

std::string error_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const UserError& error) {
    return error.what();
  }
  return "(no error)";
}

// Writes the manifest's checksum of stage_0.h5 anew, as if the damage had been there at writing.
void rechecksum(const std::string& checkpoint) {
  std::ifstream in(checkpoint + "/stage_0.h5", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  io::H5File manifest(checkpoint + "/manifest.h5", io::H5File::Mode::read_write);
  manifest.set_attribute("/", "stage_0_checksum",
                         fmt::format("{:016x}", fnv1a64(bytes.data(), bytes.size())));
}

TEST(Checkpoint, DamagedCheckpointsAreRejectedClearly) {
  if (world_size() != 1) GTEST_SKIP() << "file damage is checked on one rank (test_checkpoint_np1)";
  const config::Deck dk = deck(config::ScheduleKind::two_bw, 0, 1, 1, 2);
  const std::string folder = shared_folder("p2bw_ckpt_damage");
  std::string saved;
  with_layout(1, 1, [&](const comm::ProcessGrid& grid) {
    PipelineTrainer trainer(dk, grid, text());
    finish(trainer, 3);
    saved = trainer.save_checkpoint(folder, 1);
  });
  const std::string stage_file = saved + "/stage_0.h5";
  // Reads every tensor of the model as a resume would.
  auto load_all = [&](const config::Deck& d) {
    io::CheckpointReader checkpoint(saved, d);
    model::StageModel model(d.model, d.train.microbatch_size, 0, d.model.layers + 2);
    std::vector<float> values(static_cast<size_t>(model.num_params()));
    for (const model::TensorInfo& t : model.tensors())
      checkpoint.read("params", t, values.data() + t.offset);
  };
  ASSERT_NO_THROW(load_all(dk));

  // A model of another size.
  config::Deck bigger = dk;
  bigger.model.hidden = 32;
  EXPECT_NE(error_of([&] {
              load_all(bigger);
            }).find("model_hidden is 16 in the checkpoint but 32 in the deck"),
            std::string::npos);

  // Flipped bytes inside a tensor's data.
  haddr_t offset = 0;
  {
    io::H5File file(stage_file, io::H5File::Mode::read);
    io::Handle set(H5Dopen2(file.id(), "/params/blocks/1/mlp/fc/weight", H5P_DEFAULT));
    offset = H5Dget_offset(set.get());
  }
  ASSERT_NE(offset, HADDR_UNDEF);
  const fs::path pristine = fs::path(folder) / "pristine.h5";
  fs::copy_file(stage_file, pristine);
  {
    std::fstream file(stage_file, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(static_cast<std::streamoff>(offset + 40));
    const char garbage[4] = {'\x5a', '\x5a', '\x5a', '\x5a'};
    file.write(garbage, 4);
  }
  const std::string flipped = error_of([&] { load_all(dk); });
  EXPECT_NE(flipped.find(stage_file), std::string::npos) << flipped;
  EXPECT_NE(flipped.find("does not match the checksum the manifest records for it"),
            std::string::npos)
      << flipped;
  // Behind the file's checksum in the manifest, each tensor's own checksum still holds.
  rechecksum(saved);
  const std::string flipped_tensor = error_of([&] { load_all(dk); });
  EXPECT_NE(
      flipped_tensor.find("tensor /params/blocks/1/mlp/fc/weight does not match its checksum"),
      std::string::npos)
      << flipped_tensor;

  // A truncated file.
  fs::copy_file(pristine, stage_file, fs::copy_options::overwrite_existing);
  fs::resize_file(stage_file, fs::file_size(stage_file) / 2);
  const std::string truncated = error_of([&] { load_all(dk); });
  EXPECT_NE(truncated.find(stage_file), std::string::npos) << truncated;

  // A tensor of the wrong dtype.
  fs::copy_file(pristine, stage_file, fs::copy_options::overwrite_existing);
  {
    io::H5File file(stage_file, io::H5File::Mode::read_write);
    H5Ldelete(file.id(), "/params/head/lnf/bias", H5P_DEFAULT);
    file.write<double>("/params/head/lnf/bias", std::vector<double>(16, 0.0), {16});
    file.set_attribute("/params/head/lnf/bias", "checksum", std::string("0"));
  }
  rechecksum(saved);
  EXPECT_NE(error_of([&] { load_all(dk); }).find("tensor /params/head/lnf/bias is not float32"),
            std::string::npos);

  // A missing manifest (an interrupted write leaves only step_<N>.tmp).
  EXPECT_NE(error_of([&] { io::CheckpointReader(folder + "/nowhere", dk); }).find("no such file"),
            std::string::npos);
  EXPECT_NE(
      error_of([&] { io::resolve_checkpoint(folder + "/none", "latest"); }).find("does not exist"),
      std::string::npos);
  fs::remove_all(folder);
}

// Checkpoints prove they belong together (format 2): a stage file of another step or run, a
// manifest whose numbers no writer produces, and a format version 1 checkpoint are refused in one
// line naming the file.
TEST(Checkpoint, ForeignStageFilesAndLyingManifestsAreRefused) {
  if (world_size() != 1) GTEST_SKIP() << "checked on one rank (test_checkpoint_np1)";
  const config::Deck dk = deck(config::ScheduleKind::flush, 0, 1, 1, 2);
  const std::string folder = shared_folder("p2bw_ckpt_foreign");
  std::string at2, at3;
  with_layout(1, 1, [&](const comm::ProcessGrid& grid) {
    PipelineTrainer trainer(dk, grid, text());
    finish(trainer, 2);
    at2 = trainer.save_checkpoint(folder, 5);
    finish(trainer, 3);
    at3 = trainer.save_checkpoint(folder, 5);
  });
  ASSERT_NO_THROW(io::CheckpointReader(at3, dk));
  const fs::path pristine = fs::path(folder) / "pristine";
  fs::copy(at3, pristine);
  const auto restore = [&] {
    fs::remove_all(at3);
    fs::copy(pristine, at3);
  };

  // The stage file of step 2 copied into step 3, even with the manifest's checksum updated.
  fs::copy_file(at2 + "/stage_0.h5", at3 + "/stage_0.h5", fs::copy_options::overwrite_existing);
  rechecksum(at3);
  const std::string copied = error_of([&] { io::CheckpointReader(at3, dk); });
  EXPECT_NE(copied.find("stage_0.h5: a stage file of step 2, stage 0"), std::string::npos)
      << copied;
  EXPECT_NE(copied.find("in the checkpoint of step 3"), std::string::npos) << copied;
  restore();

  // A stage file of another run.
  {
    io::H5File stage(at3 + "/stage_0.h5", io::H5File::Mode::read_write);
    stage.set_attribute("/", "run_id", std::string("0123456789abcdef0123456789abcdef"));
  }
  rechecksum(at3);
  EXPECT_NE(error_of([&] {
              io::CheckpointReader(at3, dk);
            }).find("run '0123456789abcdef0123456789abcdef' in the checkpoint of step 3"),
            std::string::npos);
  restore();

  // Manifest numbers out of range: each one line naming the attribute.
  for (const auto& [key, value, needle] :
       std::vector<std::tuple<std::string, std::int64_t, std::string>>{
           {"step", -1, "step = -1 is out of range"},
           {"step", 4, "step = 4 but the folder is step_00000003"},
           {"optimizer_steps", -5, "optimizer_steps = -5 is out of range"},
           {"optimizer_steps", 4, "optimizer_steps = 4 is out of range"},
           {"newest_version", -2, "newest_version = -2 is out of range"},
           {"old_version", 7, "old_version = 7 is out of range"},
           {"stage_files", 0, "stage_files = 0 is out of range"},
           {"stage_files", 1000000, "stage_files = 1000000 is out of range"},
           {"format_version", 1, "checkpoint format version 1 (allowed: 2"}}) {
    {
      io::H5File manifest(at3 + "/manifest.h5", io::H5File::Mode::read_write);
      manifest.set_attribute("/", key, value);
    }
    const std::string message = error_of([&] { io::CheckpointReader(at3, dk); });
    EXPECT_NE(message.find(needle), std::string::npos) << key << " = " << value << ": " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    restore();
  }

  // `latest` may only name a step folder of this checkpoints folder.
  for (const std::string& lie : {std::string(300, 'x'), std::string("../elsewhere/step_00000003"),
                                 std::string("step_3"), std::string("step_00000009")}) {
    std::ofstream(fs::path(folder) / "latest") << lie << "\n";
    const std::string message = error_of([&] { io::resolve_checkpoint(folder, "latest"); });
    EXPECT_NE(message.find("--resume latest: "), std::string::npos) << lie << ": " << message;
    EXPECT_LT(message.size(), 400u) << message;
  }
  fs::remove_all(folder);
}

}  // namespace
}  // namespace p2bw::pipeline
