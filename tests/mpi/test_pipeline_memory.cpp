// Memory of the pipeline executor: what a rank allocates matches the prediction of `p2bw check`
// within 5%, and the stashed activations never exceed the schedule's bound (min(d - s, m) for
// flush and 2bw, m for gpipe; recomputation stashes inputs only); nothing is allocated after the
// first step. bf16 runs are held to the same prediction in their own layout (2-byte activations,
// buffers and compute copies), which is checked to be smaller than fp32's where it should be.
// The steady state allocates nothing in bf16 either. What it accounts is what the allocator saw.
// Its host synchronisation does not grow with the microbatches (Kokkos >= 4).
#include <gtest/gtest.h>
#include <mpi.h>

#include <fmt/format.h>

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "../allocation_counter.hpp"
#include "comm/process_grid.hpp"
#include "core/stream_mark.hpp"
#include "data/token_file.hpp"
#include "kernels/gemm.hpp"
#include "mpi_world.hpp"
#include "pipeline/memory.hpp"
#include "pipeline/pipeline_trainer.hpp"

namespace p2bw::pipeline {
namespace {

using p2bw::testing::world_rank;
using p2bw::testing::world_size;

// A corpus of one sentence repeated 50 times, byte-tokenized.
std::shared_ptr<data::Tokens> repeated_text(const std::string& sentence) {
  std::string text;
  for (int i = 0; i < 50; ++i) text += sentence;
  return std::make_shared<data::Tokens>(data::tokenize_bytes(text));
}

// The tests' pipeline: GPT 4 x 64 (4 heads, T = 32, bytes) on d stages, 2d microbatches of 2,
// `steps` steps, no flush steps before 2bw unless `sync_warmup_steps` says so.
config::Deck pipeline_deck(int d, config::ScheduleKind schedule, bool recompute,
                           config::Precision precision, int steps, int sync_warmup_steps = 0) {
  config::Deck deck;
  deck.model = {config::ModelKind::gpt, 4, 64, 4, 32, 256};
  deck.model.precision = precision;
  deck.pipeline.depth = d;
  deck.pipeline.schedule = schedule;
  deck.pipeline.microbatches = 2 * d;
  deck.pipeline.recompute = recompute;
  deck.pipeline.sync_warmup_steps = sync_warmup_steps;
  deck.train.microbatch_size = 2;
  deck.train.steps = steps;
  return deck;
}

TEST(PipelineMemory, MeasuredMatchesPredicted) {
  const auto tokens = repeated_text(
      "All happy families are alike; each unhappy family is unhappy in its own way. ");
  const int d = world_size();
  // (schedule, weight prediction): with prediction 2bw keeps a third weight copy.
  for (auto [schedule, prediction] :
       {std::pair{config::ScheduleKind::flush, 0.0}, std::pair{config::ScheduleKind::gpipe, 0.0},
        std::pair{config::ScheduleKind::two_bw, 0.0},
        std::pair{config::ScheduleKind::two_bw, 1.0}}) {
    for (auto [recompute, validation] : {std::pair{false, false}, std::pair{true, false},
                                         std::pair{false, true}, std::pair{true, true}}) {
      config::Deck deck = pipeline_deck(d, schedule, recompute, config::Precision::fp32, 3);
      deck.pipeline.weight_prediction = prediction;
      deck.data.val_fraction = validation ? 0.2 : 0.0;  // with an evaluation after the steps
      deck.train.eval_batches = 1;
      const comm::ProcessGrid grid(MPI_COMM_WORLD, d, 1);
      PipelineTrainer trainer(deck, grid, tokens);
      for (int s = 0; s < deck.train.steps; ++s) trainer.step();
      trainer.synchronize();
      if (validation) trainer.evaluate();
      const StageMemory predicted =
          predict_memory(deck, trainer.stage_map())[static_cast<size_t>(grid.stage())];
      const MemoryBytes& measured = trainer.memory();
      const std::string label = fmt::format(
          "{}{} {}{} stage {} of {}", to_string(schedule), prediction > 0 ? " prediction" : "",
          recompute ? "recompute" : "stash", validation ? " with validation" : "", grid.stage(), d);
      EXPECT_LE(trainer.peak_in_flight(),
                schedule::activation_bound(schedule, d, deck.pipeline.microbatches, grid.stage()))
          << label;
      EXPECT_EQ(measured.weights, predicted.weights) << label;
      EXPECT_EQ(measured.gradients, predicted.gradients) << label;
      EXPECT_EQ(measured.optimizer, predicted.optimizer) << label;
      EXPECT_NEAR(double(measured.activations), double(predicted.activations),
                  0.05 * predicted.activations)
          << label;
      EXPECT_NEAR(double(measured.total()), double(predicted.total()), 0.05 * predicted.total())
          << label << ": buffers " << measured.buffers << " vs " << predicted.buffers
          << ", workspace " << measured.workspace << " vs " << predicted.workspace;
    }
  }
}

TEST(PipelineMemory, Bf16AllocatesItsPrediction) {
  const auto tokens = repeated_text(
      "All happy families are alike; each unhappy family is unhappy in its own way. ");
  const int d = world_size();
  for (auto [schedule, prediction] :
       {std::pair{config::ScheduleKind::flush, 0.0}, std::pair{config::ScheduleKind::two_bw, 0.0},
        std::pair{config::ScheduleKind::two_bw, 1.0}}) {
    for (bool recompute : {false, true}) {
      config::Deck deck = pipeline_deck(d, schedule, recompute, config::Precision::bf16, 3);
      deck.pipeline.weight_prediction = prediction;
      const comm::ProcessGrid grid(MPI_COMM_WORLD, d, 1);
      PipelineTrainer trainer(deck, grid, tokens);
      for (int s = 0; s < deck.train.steps; ++s) trainer.step();
      trainer.synchronize();
      const auto s = static_cast<size_t>(grid.stage());
      const StageMemory predicted = predict_memory(deck, trainer.stage_map())[s];
      config::Deck fp32_deck = deck;
      fp32_deck.model.precision = config::Precision::fp32;
      const StageMemory fp32 = predict_memory(fp32_deck, trainer.stage_map())[s];
      const MemoryBytes& measured = trainer.memory();
      const std::string label =
          fmt::format("bf16 {}{} {} stage {} of {}", to_string(schedule),
                      prediction > 0 ? " prediction" : "", recompute ? "recompute" : "stash", s, d);
      // Two bf16 compute copies (2 bytes) plus one fp32 master; fp32 gradients (two buffers
      // under 2bw's deferred reduction) and optimizer state.
      const bool two_bw = schedule == config::ScheduleKind::two_bw;
      EXPECT_EQ(predicted.weights, predicted.params * (2 * 2 + 4)) << label;
      EXPECT_EQ(predicted.gradients, predicted.params * 4 * (two_bw ? 2 : 1)) << label;
      EXPECT_EQ(measured.weights, predicted.weights) << label;
      EXPECT_EQ(measured.gradients, predicted.gradients) << label;
      EXPECT_EQ(measured.optimizer, predicted.optimizer) << label;
      EXPECT_EQ(measured.buffers, predicted.buffers) << label;
      // The model's and the GEMM libraries' workspaces exactly; cuDNN's (bf16 attention on CUDA)
      // is measured, not predicted.
      EXPECT_EQ(measured.workspace - kernels::unpredicted_library_workspace_bytes(),
                predicted.workspace)
          << label;
      EXPECT_NEAR(double(measured.activations), double(predicted.activations),
                  0.05 * predicted.activations)
          << label;
      EXPECT_NEAR(double(measured.total()), double(predicted.total()), 0.05 * predicted.total())
          << label;
      // bf16 halves what it stores: activations and boundary buffers.
      EXPECT_LT(measured.activations, fp32.activations * 3 / 4) << label;
      EXPECT_EQ(2 * measured.buffers, fp32.buffers) << label;
    }
  }
}

// The schedules and precisions the allocation tests train with.
constexpr std::pair<config::ScheduleKind, config::Precision> kScheduleAndPrecision[] = {
    {config::ScheduleKind::flush, config::Precision::fp32},
    {config::ScheduleKind::gpipe, config::Precision::fp32},
    {config::ScheduleKind::two_bw, config::Precision::fp32},
    {config::ScheduleKind::flush, config::Precision::bf16},
    {config::ScheduleKind::two_bw, config::Precision::bf16}};

TEST(PipelineMemory, NothingIsAllocatedAfterTheFirstStep) {
  const auto tokens = repeated_text("It was the best of times, it was the worst of times. ");
  const int d = world_size();
  for (auto [schedule, precision] : kScheduleAndPrecision) {
    for (bool recompute : {false, true}) {
      const config::Deck deck = pipeline_deck(d, schedule, recompute, precision, 5, 1);
      const comm::ProcessGrid grid(MPI_COMM_WORLD, d, 1);
      PipelineTrainer trainer(deck, grid, tokens);
      trainer.step();
      const testing::AllocationCounter counter;
      for (int s = 1; s < deck.train.steps; ++s) trainer.step();
      trainer.synchronize();
      EXPECT_TRUE(counter.allocations().empty())
          << to_string(schedule) << " " << to_string(precision)
          << (recompute ? " recompute" : " stash") << " stage " << grid.stage() << " of " << d
          << ": allocated after step 1: " << counter.summary();
    }
  }
}

// The accounting against the allocator: the most bytes the rank's Kokkos allocations held at
// once, from the trainer's construction through its steps and an evaluation, with what the GEMM
// libraries held before, is what trainer.memory() reports, within 2% (what it leaves out: the
// loader's staging, the loss and timing totals, Kokkos' scratch). A transient allocation, such as
// a whole activation set made to keep a part of it, breaks it.
TEST(PipelineMemory, TheAllocatorSeesWhatIsAccounted) {
  const auto tokens = repeated_text("It was the best of times, it was the worst of times. ");
  const int d = world_size();
  for (auto [schedule, precision] : kScheduleAndPrecision) {
    for (bool recompute : {false, true}) {
      config::Deck deck = pipeline_deck(d, schedule, recompute, precision, 3);
      deck.data.val_fraction = 0.2;
      deck.train.eval_batches = 1;
      const comm::ProcessGrid grid(MPI_COMM_WORLD, d, 1);
      const std::int64_t libraries_before = kernels::library_workspace_bytes();
      const std::int64_t raw_before = kernels::unpredicted_library_workspace_bytes();
      const testing::AllocationCounter counter;
      PipelineTrainer trainer(deck, grid, tokens);
      for (int s = 0; s < deck.train.steps; ++s) trainer.step();
      trainer.synchronize();
      trainer.evaluate();
      // cuDNN's workspace is cudaMalloc'ed, so the counter never sees it grow.
      const std::int64_t raw_grown = kernels::unpredicted_library_workspace_bytes() - raw_before;
      const std::int64_t allocated = counter.peak_bytes() + libraries_before + raw_grown;
      // The tolerance is on the model's own memory: cuBLASLt's 32 MiB would hide a stray
      // activation set of this small model.
      const std::int64_t libraries = kernels::library_workspace_bytes();
      const MemoryBytes& m = trainer.memory();
      EXPECT_NEAR(double(allocated - libraries), double(m.total() - libraries),
                  0.02 * double(m.total() - libraries))
          << to_string(schedule) << " " << to_string(precision)
          << (recompute ? " recompute" : " stash") << " stage " << grid.stage() << " of " << d
          << ": the allocator's peak " << allocated << " bytes, accounted " << m.total()
          << " (activations " << m.activations << ", workspace " << m.workspace
          << ", libraries' workspaces " << libraries << "); allocated: " << counter.summary();
    }
  }
}

// Counts Kokkos fences (every backend's, global and per instance, by name) while it lives, all
// but StreamMark's waits.
// Kokkos 3.4's backends do not report their fences to the tools; Kokkos 4's do.
class FenceCounter {
 public:
  FenceCounter() {
    names().clear();
    Kokkos::Tools::Experimental::set_begin_fence_callback(&begin);
  }
  ~FenceCounter() { Kokkos::Tools::Experimental::set_begin_fence_callback(nullptr); }
  FenceCounter(const FenceCounter&) = delete;
  FenceCounter& operator=(const FenceCounter&) = delete;
  const std::map<std::string, int>& fences() const { return names(); }

 private:
  static std::map<std::string, int>& names() {
    static std::map<std::string, int> seen;
    return seen;
  }
  static void begin(const char* name, const std::uint32_t /*device*/, std::uint64_t* handle) {
    *handle = 0;
    const std::string fence = name ? name : "";
    if (fence != StreamMark::kWaitFence) ++names()[fence];
  }
};

// No host synchronisation that grows with the microbatches: a steady-state step fences as often
// with 4d microbatches as with 2d (the loss is copied once per step, the compute clock reads CUDA
// events; syncs outside Kokkos, such as those on CUDA events, are not seen). Not counted:
// StreamMark's wait, with which a load waits for the copies of the load two before it out of the
// same host staging slot (a CUDA event on GPUs, a fence named StreamMark::kWaitFence on hosts), a
// bound on how far the host runs ahead, not a drain. Where the GEMMs run on CBLAS they fence by
// design (BLAS runs outside Kokkos), and Kokkos 3.4 reports no fences: both skip.
TEST(PipelineMemory, FencesPerStepDoNotGrowWithMicrobatches) {
#if KOKKOS_VERSION < 40000
  GTEST_SKIP() << "Kokkos " << KOKKOS_VERSION << " does not report its backends' fences to the "
               << "tools (Kokkos >= 4 does: the CUDA bundle, scripts/kokkos4-host-check)";
#endif
  if (std::string(kernels::gemm_backend_name<float, model::Exec>()) == "cblas")
    GTEST_SKIP() << "the GEMMs run on CBLAS, which fences before every call by design";
  const auto tokens = repeated_text("It was the best of times, it was the worst of times. ");
  const int d = world_size();
  for (auto [schedule, precision] : kScheduleAndPrecision) {
    std::map<std::string, int> per_m[2];
    for (int k = 0; k < 2; ++k) {
      config::Deck deck = pipeline_deck(d, schedule, false, precision, 4, 1);
      deck.pipeline.microbatches = 2 * (k + 1) * d;
      const comm::ProcessGrid grid(MPI_COMM_WORLD, d, 1);
      PipelineTrainer trainer(deck, grid, tokens);
      trainer.step();
      trainer.step();  // 2bw's first step after the warm-up one
      const FenceCounter counter;
      trainer.step();
      trainer.step();
      per_m[k] = counter.fences();
      trainer.synchronize();
    }
    const auto text = [](const std::map<std::string, int>& fences) {
      std::string t;
      for (const auto& [name, n] : fences)
        t += fmt::format("{}{} x '{}'", t.empty() ? "" : "; ", n, name);
      return t.empty() ? std::string("none") : t;
    };
    // A step copies its losses to the host at least once: no fence at all means none was seen.
    EXPECT_FALSE(per_m[1].empty()) << "no fence counted";
    EXPECT_EQ(per_m[0], per_m[1]) << to_string(schedule) << " " << to_string(precision) << " stage "
                                  << world_rank() << " of " << d
                                  << ", fences in two steps with m = 2d: " << text(per_m[0])
                                  << "; with m = 4d: " << text(per_m[1]);
    if (world_rank() == 0)
      fmt::print("{} {}: fences in two steady-state steps: {}\n", to_string(schedule),
                 to_string(precision), text(per_m[1]));
  }
}

}  // namespace
}  // namespace p2bw::pipeline
