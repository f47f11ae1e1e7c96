// Single-rank training semantics: determinism, the 2bw update rule W(t+1) = W(t) - lr·∇f(W(t-1))
// with its synchronous warm-up, a loss that falls on real text, loads queued back to back, and no
// allocation after the first step.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>

#include "../allocation_counter.hpp"
#include "data/loader.hpp"
#include "pipeline/single_rank_trainer.hpp"

namespace p2bw::pipeline {
namespace {

const char* kText =
    "Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly November "
    "in my "
    "soul; whenever I find myself involuntarily pausing before coffin warehouses, and bringing up "
    "the rear "
    "of every funeral I meet; and especially whenever my hypos get such an upper hand of me, that "
    "it "
    "requires a strong moral principle to prevent me from deliberately stepping into the street, "
    "and "
    "methodically knocking people's hats off - then, I account it high time to get to sea as soon "
    "as I can.";

std::shared_ptr<const data::Tokens> text() {
  return std::make_shared<data::Tokens>(data::tokenize_bytes(kText));
}

config::Deck deck(config::ScheduleKind schedule,
                  config::OptimizerKind optimizer = config::OptimizerKind::adamw) {
  config::Deck d;
  d.model = {config::ModelKind::gpt, 2, 16, 2, 8, 256};
  d.pipeline.schedule = schedule;
  d.pipeline.microbatches = 2;
  d.pipeline.sync_warmup_steps = 0;
  d.train.microbatch_size = 2;
  d.train.steps = 4;
  d.train.seed = 5;
  d.train.lr = 1e-2;
  d.train.lr_decay = config::LrDecay::constant;
  d.train.optimizer.kind = optimizer;
  return d;
}

std::vector<float> host(model::ConstFloatView view) {
  auto mirror = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  return std::vector<float>(mirror.data(), mirror.data() + mirror.extent(0));
}

std::vector<double> losses(const config::Deck& d, int steps) {
  SingleRankTrainer trainer(d, text());
  std::vector<double> result;
  for (int s = 0; s < steps; ++s) result.push_back(trainer.step().loss);
  return result;
}

TEST(Training, SameSeedIsBitwiseIdenticalOtherSeedIsNot) {
  const auto d = deck(config::ScheduleKind::flush);
  SingleRankTrainer a(d, text()), b(d, text());
  for (int s = 0; s < 3; ++s) {
    const double la = a.step().loss, lb = b.step().loss;
    EXPECT_EQ(0, std::memcmp(&la, &lb, sizeof(double))) << "step " << s + 1;
  }
  EXPECT_EQ(host(a.weights()), host(b.weights()));
  auto other = d;
  other.train.seed = 6;
  EXPECT_NE(losses(d, 3), losses(other, 3));
}

TEST(Training, GpipeAndFlushAreTheSameMinibatchTraining) {
  EXPECT_EQ(losses(deck(config::ScheduleKind::gpipe), 4),
            losses(deck(config::ScheduleKind::flush), 4));
}

TEST(Training, TwoBwDelaysTheGradientByOneStep) {
  const auto flush = losses(deck(config::ScheduleKind::flush), 4);
  const auto twobw = losses(deck(config::ScheduleKind::two_bw), 4);
  EXPECT_EQ(flush[0], twobw[0]);  // batch 0 at W(0) in both
  EXPECT_NE(flush[1], twobw[1]);  // batch 1: flush at W(1), 2bw still at W(0)
  auto warm = deck(config::ScheduleKind::two_bw);
  warm.pipeline.sync_warmup_steps = 1;
  const auto warmed = losses(warm, 4);
  EXPECT_EQ(flush[0], warmed[0]);
  EXPECT_EQ(flush[1], warmed[1]);  // the first 2bw batch uses W(1), as flush does
  EXPECT_NE(flush[2], warmed[2]);  // the second 2bw batch still uses W(1)
}

TEST(Training, TwoBwUpdateIsTheDelayedRule) {
  // SGD without momentum, decay or clipping: W(2) = W(1) - lr·g1(W(0)), where g1 is batch 1's
  // gradient taken at W(0). The paper's rule: no weight prediction (tested in
  // test_pipeline_exact).
  auto d = deck(config::ScheduleKind::two_bw, config::OptimizerKind::sgd);
  d.pipeline.weight_prediction = 0;
  d.train.optimizer.momentum = 0;
  d.train.optimizer.weight_decay = 0;
  d.train.grad_clip = 0;
  SingleRankTrainer trainer(d, text());
  const auto w0 = host(trainer.weights());
  trainer.step();
  const auto w1 = host(trainer.weights());
  EXPECT_EQ(host(trainer.gradient_weights().as<float>()), w0) << "batch 1 is taken at W(0)";
  trainer.step();
  const auto w2 = host(trainer.weights());
  EXPECT_EQ(host(trainer.gradient_weights().as<float>()), w1) << "batch 2 is taken at W(1)";

  // Batch 1's gradient at W(0), computed directly.
  model::StageModel model(d.model, d.train.microbatch_size, 0, d.model.layers + 2);
  model::FloatView params("w0", w0.size()), grads("g", w0.size());
  Kokkos::deep_copy(params, Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(
                                w0.data(), w0.size()));
  model::Cache cache = model.make_cache();
  data::Loader loader(text(), d);
  auto tokens = Kokkos::create_mirror_view(cache.tokens);
  auto targets = Kokkos::create_mirror_view(cache.targets);
  for (int j = 0; j < d.pipeline.microbatches; ++j) {
    loader.microbatch(1, j, 0, tokens.data(), targets.data());
    model.load(model::Exec(), cache, tokens.data(), targets.data());
    model.forward(model::Exec(), params, cache, StoreView());
    model.backward(model::Exec(), params, grads, cache, StoreView(), StoreView(),
                   1.0 / d.pipeline.microbatches);
  }
  auto g = host(grads);
  const model::TensorInfo* wte = model.find("embedding/wte");
  const model::TensorInfo* copy = model.find("head/wte");
  for (std::int64_t i = 0; i < wte->count; ++i) {
    const float sum = g[wte->offset + i] + g[copy->offset + i];
    g[wte->offset + i] = g[copy->offset + i] = sum;
  }
  double worst = 0;
  for (size_t i = 0; i < w2.size(); ++i)
    worst = std::max(worst, std::abs(double(w2[i]) - (double(w1[i]) - d.train.lr * double(g[i]))));
  EXPECT_LT(worst, 1e-7) << "W(2) = W(1) - lr·g1(W(0))";
}

TEST(Training, LossFallsOnRealText) {
  auto d = deck(config::ScheduleKind::flush);
  d.train.lr = 3e-3;
  const auto curve = losses(d, 30);
  EXPECT_NEAR(curve.front(), std::log(256.0), 0.1) << "a fresh model is near uniform";
  EXPECT_LT(curve.back(), curve.front() - 1.0);
}

TEST(Training, LoadsQueuedBackToBackKeepEachMicrobatch) {
  // More microbatches than load's staging slots, loaded in a row from one host array refilled at
  // once, with no fence between: each cache ends with its own tokens, targets and buckets. On a
  // GPU the slots are pinned and their copies asynchronous, so this checks their reuse.
  const auto d = deck(config::ScheduleKind::flush);
  model::StageModel model(d.model, d.train.microbatch_size, 0, d.model.layers + 2);
  data::Loader loader(text(), d);
  const int loads = 2 * model::StageModel::kLoadSlots + 1;
  const size_t BT = static_cast<size_t>(d.train.microbatch_size) * d.model.seq_len;
  std::vector<model::Cache> caches;
  std::vector<std::vector<int>> tokens, targets;
  std::vector<int> host_tokens(BT), host_targets(BT);
  for (int k = 0; k < loads; ++k) {
    caches.push_back(model.make_cache());
    loader.microbatch(k / 2, k % 2, 0, host_tokens.data(), host_targets.data());
    model.load(model::Exec(), caches.back(), host_tokens.data(), host_targets.data());
    tokens.push_back(host_tokens);
    targets.push_back(host_targets);
  }
  ASSERT_NE(tokens[0], tokens[1]) << "the microbatches differ";
  auto ints = [](const model::IntView& view, size_t n) {
    auto mirror = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
    return std::vector<int>(mirror.data(), mirror.data() + n);
  };
  for (int k = 0; k < loads; ++k) {
    const model::Cache& cache = caches[static_cast<size_t>(k)];
    EXPECT_EQ(ints(cache.tokens, BT), tokens[static_cast<size_t>(k)]) << "load " << k;
    EXPECT_EQ(ints(cache.targets, BT), targets[static_cast<size_t>(k)]) << "load " << k;
    kernels::EncoderBuckets<model::Exec> expected(static_cast<kernels::index_t>(BT));
    kernels::EncoderBucketer<model::Exec>(static_cast<kernels::index_t>(BT))
        .build(model::Exec(), tokens[static_cast<size_t>(k)].data(),
               static_cast<kernels::index_t>(BT), expected);
    ASSERT_EQ(cache.buckets.count, expected.count) << "load " << k;
    const auto n = static_cast<size_t>(expected.count);
    EXPECT_EQ(ints(cache.buckets.token, n), ints(expected.token, n)) << "load " << k;
    EXPECT_EQ(ints(cache.buckets.begin, n + 1), ints(expected.begin, n + 1)) << "load " << k;
    EXPECT_EQ(ints(cache.buckets.positions, BT), ints(expected.positions, BT)) << "load " << k;
  }
}

TEST(Training, NothingIsAllocatedAfterTheFirstStep) {
  // Every schedule and optimizer; 2bw after one warm-up step (its switch to two versions
  // included), with clipping (the norm) and a validation split (an evaluation afterwards).
  for (auto schedule : {config::ScheduleKind::flush, config::ScheduleKind::two_bw}) {
    for (auto optimizer : {config::OptimizerKind::adamw, config::OptimizerKind::sgd}) {
      auto d = deck(schedule, optimizer);
      d.pipeline.sync_warmup_steps = 1;
      d.train.grad_clip = 1.0;
      SingleRankTrainer trainer(d, text());
      trainer.step();
      const testing::AllocationCounter counter;
      for (int s = 1; s < d.train.steps; ++s) trainer.step();
      EXPECT_TRUE(counter.allocations().empty())
          << to_string(schedule) << ": allocated after step 1: " << counter.summary();
    }
  }
  // The hook sees what it should: a View made while counting.
  const testing::AllocationCounter counter;
  model::FloatView probe("p2bw::probe", 4);
  ASSERT_EQ(counter.allocations().size(), 1u);
  EXPECT_EQ(counter.allocations()[0], "p2bw::probe");
}

}  // namespace
}  // namespace p2bw::pipeline
