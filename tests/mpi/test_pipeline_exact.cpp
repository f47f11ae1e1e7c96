// The acceptance test of the pipeline executor: every schedule and layout against the single-rank
// reference of the same global batch. With w = 1 the per-step losses, gradient norms and final
// weights are equal bit for bit: the stages run the same kernels on the same inputs, gradients
// accumulate in microbatch order, the tied embedding's sum a + b is commutative, and the loss
// and the norm are summed in fixed part order from exact all-reduces (every slot has one
// non-zero contributor). With w > 1 the data-parallel sum changes the order of additions:
// agreement within 1e-5 relative. Run at 1, 2 and 4 ranks: layouts (d, w) with d·w = ranks.
// model.precision: bf16 (bf16 storage, model::StageModel) has its own grid: its rounding is
// deterministic and the stages round the same values, so the same bitwise equality holds (w > 1:
// see PipelineExactBf16). Its messages are bf16 buffers sent as their bytes, so the grid also
// proves that the 16-bit messages change no bit.
#include <gtest/gtest.h>
#include <mpi.h>

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <tuple>

#include "comm/process_grid.hpp"
#include "data/token_file.hpp"
#include "mpi_world.hpp"
#include "pipeline/memory.hpp"
#include "pipeline/pipeline_trainer.hpp"
#include "pipeline/single_rank_trainer.hpp"

namespace p2bw::pipeline {
namespace {

using p2bw::testing::world_rank;
using p2bw::testing::world_size;

const char* kText =
    "The sea was calm that night, and the stars hung low over the water. Somewhere below deck a "
    "man was "
    "singing an old song about a girl from the harbour town, and the cook was cursing the weevils "
    "in the "
    "biscuits. The captain stood at the rail, watching the dark line of the coast slide past, and "
    "thought "
    "about the letter in his pocket that he had not yet had the courage to open.";

std::vector<float> host(model::ConstFloatView view) {
  auto mirror = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  return std::vector<float>(mirror.data(), mirror.data() + mirror.extent(0));
}

bool same_bits(double a, double b) {
  return std::memcmp(&a, &b, sizeof(double)) == 0;
}

struct Case {
  config::ModelKind kind;
  config::ScheduleKind schedule;
  int warmup;
  bool recompute;
  int depth, width, microbatches;
  double prediction = 0.0;  // pipeline.weight_prediction
  config::Precision precision = config::Precision::fp32;
  std::string name() const {
    return fmt::format("{} {}{}{} {} d={} w={} m={}{}", to_string(kind), to_string(schedule),
                       warmup ? fmt::format(" (warm-up {})", warmup) : "",
                       prediction > 0 ? fmt::format(" (prediction {})", prediction) : "",
                       recompute ? "recompute" : "stash", depth, width, microbatches,
                       precision == config::Precision::fp32 ? "" : " bf16");
  }
};

config::Deck deck_for(const Case& c) {
  config::Deck d;
  d.model = {c.kind, 4, 16, 2, 8, c.kind == config::ModelKind::bert ? 257 : 256};
  d.model.precision = c.precision;
  d.pipeline.depth = c.depth;
  d.pipeline.width = c.width;
  d.pipeline.schedule = c.schedule;
  d.pipeline.microbatches = c.microbatches;
  d.pipeline.recompute = c.recompute;
  d.pipeline.sync_warmup_steps = c.warmup;
  d.pipeline.weight_prediction = c.prediction;
  d.pipeline.timeout_s = 60;
  d.train.microbatch_size = 2;
  d.train.steps = 6;
  d.train.seed = 3;
  d.train.lr = 3e-3;
  d.train.lr_warmup_steps = 2;
  d.train.grad_clip = 0.5;
  return d;
}

// Runs one case on all ranks; returns a description of the first disagreement, or "". With
// w > 1 losses, norms and weights agree within `tolerance` relative.
std::string run_case(const Case& c, std::shared_ptr<const data::Tokens> tokens,
                     double tolerance = 1e-5) {
  const config::Deck deck = deck_for(c);
  config::Deck reference_deck = deck;
  reference_deck.pipeline.depth = 1;
  reference_deck.pipeline.width = 1;
  reference_deck.pipeline.microbatches = c.microbatches * c.width;
  reference_deck.pipeline.recompute = false;
  SingleRankTrainer reference(reference_deck, tokens);
  const comm::ProcessGrid grid(MPI_COMM_WORLD, c.depth, c.width);
  PipelineTrainer pipelined(deck, grid, tokens);
  const bool exact = c.width == 1;
  std::vector<StepResult> wanted, results;
  for (int s = 0; s < deck.train.steps; ++s) {
    wanted.push_back(reference.step());
    for (const StepResult& r : pipelined.step()) results.push_back(r);
  }
  for (const StepResult& r : pipelined.synchronize()) results.push_back(r);
  if (results.size() != wanted.size())
    return fmt::format("{} results for {} steps", results.size(), wanted.size());
  for (int s = 0; s < deck.train.steps; ++s) {
    const StepResult &want = wanted[static_cast<size_t>(s)], &got = results[static_cast<size_t>(s)];
    if (got.step != s + 1) return fmt::format("result {} is of step {}", s + 1, got.step);
    if (exact ? !same_bits(want.loss, got.loss)
              : std::abs(want.loss - got.loss) > tolerance * std::abs(want.loss))
      return fmt::format("step {}: loss {:.17g}, reference {:.17g}", s + 1, got.loss, want.loss);
    if (exact ? !same_bits(want.grad_norm, got.grad_norm)
              : std::abs(want.grad_norm - got.grad_norm) > tolerance * std::abs(want.grad_norm))
      return fmt::format("step {}: grad norm {:.17g}, reference {:.17g}", s + 1, got.grad_norm,
                         want.grad_norm);
  }
  // The newest weights of this rank's stage against the reference's tensors of the same name.
  const auto mine = host(pipelined.newest_weights());
  const auto theirs = host(reference.weights());
  for (const model::TensorInfo& t : pipelined.model().tensors()) {
    const model::TensorInfo* ref = reference.model().find(t.name);
    for (std::int64_t i = 0; i < t.count; ++i) {
      const float a = mine[static_cast<size_t>(t.offset + i)],
                  b = theirs[static_cast<size_t>(ref->offset + i)];
      if (exact ? std::memcmp(&a, &b, sizeof(float)) != 0
                : std::abs(a - b) > tolerance * std::max(1.0f, std::abs(b)))
        return fmt::format("final weight {}[{}] = {:.9g}, reference {:.9g}", t.name, i, a, b);
    }
  }
  return "";
}

std::vector<std::pair<int, int>> layouts() {
  std::vector<std::pair<int, int>> result;
  for (int d = 1; d <= world_size(); ++d)
    if (world_size() % d == 0) result.emplace_back(d, world_size() / d);
  return result;
}

// The grids' (schedule, warm-up, weight prediction) cases.
const std::vector<std::tuple<config::ScheduleKind, int, double>> kScheduleCases = {
    {config::ScheduleKind::flush, 0, 0.0},
    {config::ScheduleKind::gpipe, 0, 0.0},
    {config::ScheduleKind::two_bw, 0, 0.0},
    {config::ScheduleKind::two_bw, 2, 0.0},
    {config::ScheduleKind::two_bw, 1, 1.0}};

// Whether some rank's `problem` is not empty (every rank must call it).
bool failed_on_any_rank(const std::string& problem) {
  int bad = problem.empty() ? 0 : 1, any = 0;
  MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return any != 0;
}

class PipelineExact : public ::testing::TestWithParam<config::ModelKind> {};

TEST_P(PipelineExact, EveryScheduleAndLayoutMatchesTheSingleRankReference) {
  auto tokens = std::make_shared<data::Tokens>(data::tokenize_bytes(kText));
  int cases = 0;
  for (auto [d, w] : layouts()) {
    for (int factor : {1, 2, 3}) {
      for (bool recompute : {false, true}) {
        for (auto [schedule, warmup, prediction] : kScheduleCases) {
          const Case c{GetParam(), schedule, warmup, recompute, d, w, factor * d, prediction};
          std::string problem = run_case(c, tokens);
          // Every rank must agree that the case passed.
          const bool any = failed_on_any_rank(problem);
          EXPECT_TRUE(problem.empty()) << c.name() << ": " << problem;
          EXPECT_FALSE(any) << c.name() << ": failed on another rank";
          ++cases;
        }
      }
    }
  }
  EXPECT_EQ(cases, static_cast<int>(layouts().size()) * 30);
}

class PipelineExactBf16 : public ::testing::TestWithParam<config::ModelKind> {};

TEST_P(PipelineExactBf16, EveryScheduleAndLayoutMatchesTheSingleRankReference) {
  // The grid above in bf16 (m = d and 2·d): with w = 1 bit for bit, the bf16-rounded compute
  // copies, activations and boundary messages included (the final weights compared are the fp32
  // masters). With w > 1 the data-parallel sum changes the gradients' last fp32 bits, and a
  // compute copy or an activation near a rounding boundary then rounds to the other bf16
  // neighbour: one bf16 ulp (2^-8 relative) at a few values. The losses and norms therefore agree
  // within 1e-3 relative (a few flips among thousands of values move them far less), and the
  // masters (which AdamW moves by about lr per step whatever the gradient's size) within 1e-3.
  auto tokens = std::make_shared<data::Tokens>(data::tokenize_bytes(kText));
  int cases = 0;
  for (auto [d, w] : layouts()) {
    for (int factor : {1, 2}) {
      for (bool recompute : {false, true}) {
        for (auto [schedule, warmup, prediction] : kScheduleCases) {
          Case c{GetParam(), schedule, warmup, recompute, d, w, factor * d, prediction};
          c.precision = config::Precision::bf16;
          std::string problem = run_case(c, tokens, 1e-3);
          const bool any = failed_on_any_rank(problem);
          EXPECT_TRUE(problem.empty()) << c.name() << ": " << problem;
          EXPECT_FALSE(any) << c.name() << ": failed on another rank";
          ++cases;
        }
      }
    }
  }
  EXPECT_EQ(cases, static_cast<int>(layouts().size()) * 20);
}

TEST(PipelineExactBf16Check, Bf16ChangesTheRunAndTheGridWouldSeeAMissingRounding) {
  // The bf16 grid is not the fp32 grid again: the same case in fp32 and bf16 differs from step 1.
  auto tokens = std::make_shared<data::Tokens>(data::tokenize_bytes(kText));
  Case c{config::ModelKind::gpt, config::ScheduleKind::two_bw, 1, false, 1, 1, 2, 1.0};
  SingleRankTrainer fp32(deck_for(c), tokens);
  c.precision = config::Precision::bf16;
  SingleRankTrainer bf16(deck_for(c), tokens);
  for (int step = 1; step <= 3; ++step) {
    const double a = fp32.step().loss, b = bf16.step().loss;
    EXPECT_FALSE(same_bits(a, b)) << "step " << step << ": bf16 rounded nothing";
    EXPECT_NEAR(a, b, 0.05 * a) << "step " << step;
  }
}

TEST(PipelineExactSkip, ANonFiniteStepIsSkippedAndStillRotatesTheVersions) {
  // Step 3 gets a NaN gradient on rank 0: every rank skips the update, 2bw still rotates its
  // versions, and the run goes on exactly as the reference that skipped the same step. In bf16
  // too (the rotated version is bf16(master)).
  setenv("P2BW_TEST_NONFINITE_STEP", "3", 1);
  auto tokens = std::make_shared<data::Tokens>(data::tokenize_bytes(kText));
  for (auto [schedule, precision] :
       {std::pair{config::ScheduleKind::two_bw, config::Precision::fp32},
        std::pair{config::ScheduleKind::flush, config::Precision::fp32},
        std::pair{config::ScheduleKind::two_bw, config::Precision::bf16}}) {
    Case c{config::ModelKind::gpt, schedule, 0, false, world_size(), 1, 2 * world_size()};
    c.precision = precision;
    EXPECT_EQ(run_case(c, tokens), "") << c.name();
    config::Deck d = deck_for(c);
    const comm::ProcessGrid grid(MPI_COMM_WORLD, c.depth, c.width);
    PipelineTrainer trainer(d, grid, tokens);
    std::vector<StepResult> results;
    for (int s = 1; s <= 4; ++s)
      for (const StepResult& r : trainer.step()) results.push_back(r);
    for (const StepResult& r : trainer.synchronize()) results.push_back(r);
    ASSERT_EQ(results.size(), 4u) << c.name();
    for (const StepResult& r : results) {
      EXPECT_EQ(r.skipped, r.step == 3) << c.name() << " step " << r.step;
      if (r.step != 3) {
        EXPECT_TRUE(std::isfinite(r.loss) && std::isfinite(r.grad_norm))
            << c.name() << " step " << r.step;
      }
    }
  }
  unsetenv("P2BW_TEST_NONFINITE_STEP");
}

TEST(PipelineExactMutation, AnUpdateAppliedOneBatchTooLateIsCaught) {
  // The mutation: 2bw's deferred update of batch t is applied at the allreduce of batch t+1
  // instead of before the first forward of batch t+2, which then runs on W(t).
  if (world_size() < 2)
    GTEST_SKIP() << "a late update shows only on a stage that runs ahead (d >= 2): runs in "
                    "test_pipeline_exact_np2 and _np4";
  auto tokens = std::make_shared<data::Tokens>(data::tokenize_bytes(kText));
  const Case c{config::ModelKind::gpt,
               config::ScheduleKind::two_bw,
               0,
               false,
               world_size(),
               1,
               world_size()};
  ASSERT_EQ(run_case(c, tokens), "") << c.name() << " without the mutation";
  setenv("P2BW_TEST_LATE_UPDATE", "1", 1);
  const std::string problem = run_case(c, tokens);
  unsetenv("P2BW_TEST_LATE_UPDATE");
  EXPECT_TRUE(failed_on_any_rank(problem)) << c.name() << ": the late update went unnoticed";
}

TEST(PipelineExactPrediction, ThePredictionChangesExactlyTheBatchesAfterTheWarmUpsFirstTwo) {
  // With warm-up K = 1, batches 1 and 2 run on W(1) as plain 2bw does; batch 3 is the first to run
  // on a predicted version, C(2) = W(2) + gamma (W(2) - W(1)). The losses (the single-rank
  // reference, which the grid above holds every layout to) agree with plain 2bw up to step 3 and
  // differ from step 4 on, so the prediction is neither a no-op nor applied too early.
  auto tokens = std::make_shared<data::Tokens>(data::tokenize_bytes(kText));
  Case c{config::ModelKind::gpt, config::ScheduleKind::two_bw, 1, false, 1, 1, 2};
  SingleRankTrainer plain(deck_for(c), tokens);
  c.prediction = 1.0;
  SingleRankTrainer predicted(deck_for(c), tokens);
  for (int step = 1; step <= 6; ++step) {
    const double a = plain.step().loss, b = predicted.step().loss;
    if (step <= 3)
      EXPECT_TRUE(same_bits(a, b)) << "step " << step << ": " << a << " vs " << b;
    else
      EXPECT_FALSE(same_bits(a, b)) << "step " << step << ": the prediction changed nothing";
  }
}

class PipelineEval : public ::testing::TestWithParam<config::ModelKind> {};

TEST_P(PipelineEval, TheValidationLossIsTheSameNumberOnEveryLayout) {
  // A validation split of half the text; evaluations after steps 3 and 6, between batches (2bw
  // keeps microbatches in flight across them), against the single-rank reference: bit for bit
  // with w = 1, within 1e-5 otherwise (the weights differ in the last bits). The evaluation
  // must not disturb training: the losses of steps 4-6 still match. bf16 too (its evaluation
  // runs on the fp32 master with bf16 activations).
  auto tokens = std::make_shared<data::Tokens>(data::tokenize_bytes(kText));
  for (auto [d, w] : layouts()) {
    for (bool recompute : {false, true}) {
      for (auto [schedule, precision] :
           {std::pair{config::ScheduleKind::flush, config::Precision::fp32},
            std::pair{config::ScheduleKind::two_bw, config::Precision::fp32},
            std::pair{config::ScheduleKind::two_bw, config::Precision::bf16}}) {
        Case c{GetParam(), schedule, 0, recompute, d, w, 2 * d};
        c.precision = precision;
        const double tol = precision == config::Precision::bf16 ? 1e-3 : 1e-5;  // w > 1
        config::Deck deck = deck_for(c);
        deck.data.val_fraction = 0.5;
        deck.train.eval_batches = 1;
        config::Deck reference_deck = deck;
        reference_deck.pipeline.depth = reference_deck.pipeline.width = 1;
        reference_deck.pipeline.microbatches = c.microbatches * c.width;
        reference_deck.pipeline.recompute = false;
        SingleRankTrainer reference(reference_deck, tokens);
        const comm::ProcessGrid grid(MPI_COMM_WORLD, c.depth, c.width);
        PipelineTrainer pipelined(deck, grid, tokens);
        ASSERT_TRUE(pipelined.has_validation());
        std::vector<StepResult> wanted, results;
        std::vector<double> want_eval, got_eval;
        for (int s = 1; s <= deck.train.steps; ++s) {
          wanted.push_back(reference.step());
          for (const StepResult& r : pipelined.step()) results.push_back(r);
          if (s % 3 == 0) {
            for (const StepResult& r : pipelined.synchronize()) results.push_back(r);
            want_eval.push_back(reference.evaluate());
            got_eval.push_back(pipelined.evaluate());
            EXPECT_TRUE(same_bits(pipelined.evaluate(), got_eval.back())) << c.name();
          }
        }
        ASSERT_EQ(results.size(), wanted.size()) << c.name();
        for (size_t i = 0; i < want_eval.size(); ++i) {
          EXPECT_TRUE(std::isfinite(got_eval[i]) && got_eval[i] > 0) << c.name();
          if (w == 1)
            EXPECT_TRUE(same_bits(want_eval[i], got_eval[i]))
                << c.name() << " evaluation " << i << ": " << fmt::format("{:.17g}", got_eval[i])
                << ", reference " << fmt::format("{:.17g}", want_eval[i]);
          else
            EXPECT_NEAR(got_eval[i], want_eval[i], tol * want_eval[i]) << c.name();
        }
        for (size_t i = 0; i < wanted.size(); ++i) {
          if (w == 1)
            EXPECT_TRUE(same_bits(wanted[i].loss, results[i].loss)) << c.name() << " step " << i;
          else
            EXPECT_NEAR(results[i].loss, wanted[i].loss, tol * wanted[i].loss) << c.name();
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, PipelineEval,
                         ::testing::Values(config::ModelKind::gpt, config::ModelKind::bert),
                         [](const auto& info) { return std::string(to_string(info.param)); });

INSTANTIATE_TEST_SUITE_P(Models, PipelineExact,
                         ::testing::Values(config::ModelKind::gpt, config::ModelKind::bert),
                         [](const auto& info) { return std::string(to_string(info.param)); });

INSTANTIATE_TEST_SUITE_P(Models, PipelineExactBf16,
                         ::testing::Values(config::ModelKind::gpt, config::ModelKind::bert),
                         [](const auto& info) { return std::string(to_string(info.param)); });

}  // namespace
}  // namespace p2bw::pipeline
