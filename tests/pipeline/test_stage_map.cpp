// Stage maps (explicit and balanced partitions) and the per-stage memory prediction.
#include <gtest/gtest.h>

#include <numeric>

#include "kernels/attention.hpp"
#include "kernels/gemm.hpp"
#include "model/model_shape.hpp"
#include "pipeline/memory.hpp"
#include "pipeline/partition.hpp"
#include "pipeline/weight_versions.hpp"
#include "schedule/schedule.hpp"

namespace p2bw::pipeline {
namespace {

config::Deck tiny_deck(int layers, int depth, config::ScheduleKind schedule, int microbatches) {
  config::Deck deck;
  deck.model = {config::ModelKind::gpt, layers, 32, 4, 16, 256};
  deck.pipeline.depth = depth;
  deck.pipeline.schedule = schedule;
  deck.pipeline.microbatches = microbatches;
  deck.train.microbatch_size = 2;
  return deck;
}

void expect_contiguous(const StageMap& map, int layers) {
  int next = 0;
  for (size_t s = 0; s < map.stages.size(); ++s) {
    EXPECT_EQ(map.stages[s].first_block, next);
    EXPECT_GE(map.stages[s].blocks, 1);
    EXPECT_EQ(map.stages[s].has_embedding, s == 0);
    EXPECT_EQ(map.stages[s].has_head, s + 1 == map.stages.size());
    next += map.stages[s].blocks;
  }
  EXPECT_EQ(next, layers);
}

TEST(StageMap, ExplicitPartitionIsKept) {
  auto deck = tiny_deck(7, 3, config::ScheduleKind::flush, 3);
  deck.pipeline.partition = {1, 4, 2};
  const StageMap map = make_stage_map(deck);
  EXPECT_FALSE(map.balanced);
  expect_contiguous(map, 7);
  EXPECT_EQ(map.stages[1].first_block, 1);
  EXPECT_EQ(map.stages[1].blocks, 4);
}

TEST(StageMap, BalancedSplitsCoverEveryLayerForEveryDepth) {
  for (int layers : {1, 2, 5, 8, 13, 24}) {
    for (int depth = 1; depth <= layers && depth <= 8; ++depth) {
      const StageMap map =
          make_stage_map(tiny_deck(layers, depth, config::ScheduleKind::flush, depth));
      EXPECT_TRUE(map.balanced);
      ASSERT_EQ(static_cast<int>(map.stages.size()), depth);
      expect_contiguous(map, layers);
    }
  }
}

TEST(StageMap, EvenSplitWhenEndsAreLight) {
  // A large hidden size against a 256-token vocabulary: embedding and head are cheap.
  auto deck = tiny_deck(8, 4, config::ScheduleKind::flush, 4);
  deck.model.hidden = 1024;
  deck.model.heads = 16;
  const StageMap map = make_stage_map(deck);
  for (const StageRange& range : map.stages) EXPECT_EQ(range.blocks, 2);
}

TEST(StageMap, HeavyHeadGetsFewerBlocks) {
  // GPT-2-sized vocabulary with a small hidden size: the LM head costs several blocks.
  auto deck = tiny_deck(12, 4, config::ScheduleKind::flush, 4);
  deck.model.vocab = 50257;
  const StageMap map = make_stage_map(deck);
  EXPECT_LT(map.stages.back().blocks, map.stages[1].blocks);
}

TEST(Memory, TwoBwDoublesOnlyTheWeights) {
  auto flush = tiny_deck(4, 2, config::ScheduleKind::flush, 4);
  auto twobw = tiny_deck(4, 2, config::ScheduleKind::two_bw, 4);
  const auto a = predict_memory(flush, make_stage_map(flush));
  const auto b = predict_memory(twobw, make_stage_map(twobw));
  for (size_t s = 0; s < a.size(); ++s) {
    EXPECT_EQ(b[s].weights, 2 * a[s].weights);
    EXPECT_EQ(b[s].gradients, a[s].gradients);
    EXPECT_EQ(b[s].optimizer, a[s].optimizer);
    EXPECT_EQ(b[s].activations, a[s].activations);
    EXPECT_EQ(a[s].optimizer, 2 * a[s].gradients);  // AdamW: two moments
  }
}

TEST(Memory, InFlightBoundsFollowTheSchedule) {
  for (int depth : {1, 2, 4}) {
    for (int m : {depth, 2 * depth}) {
      for (int s = 0; s < depth; ++s) {
        EXPECT_EQ(schedule::activation_bound(config::ScheduleKind::flush, depth, m, s),
                  std::min(depth - s, m));
        EXPECT_EQ(schedule::activation_bound(config::ScheduleKind::two_bw, depth, m, s),
                  std::min(depth - s, m));
        EXPECT_EQ(schedule::activation_bound(config::ScheduleKind::gpipe, depth, m, s), m);
      }
    }
  }
}

TEST(Memory, ActivationsAreInFlightTimesPerMicrobatch) {
  auto deck = tiny_deck(4, 2, config::ScheduleKind::gpipe, 8);
  const auto map = make_stage_map(deck);
  const auto memory = predict_memory(deck, map);
  const model::ModelShape shape(deck.model, deck.train.microbatch_size);
  const std::int64_t per_mb_last =
      4 * (map.stages[1].blocks * shape.block().activations + shape.head().activations);
  EXPECT_EQ(memory[1].activations, 8 * per_mb_last);
  // Recomputation keeps m stage inputs plus one microbatch's full activations.
  deck.pipeline.recompute = true;
  const auto recompute = predict_memory(deck, map);
  EXPECT_EQ(recompute[1].activations, 4 * 8 * shape.block().input + per_mb_last);
  EXPECT_LT(recompute[1].activations, memory[1].activations);
}

TEST(Memory, Bf16ByHand) {
  // tiny_deck: C = 32, NH = 4, T = 16, b = 2, 4 layers on 2 stages of 2 blocks; AdamW.
  constexpr std::int64_t C = 32, NH = 4, BT = 2 * 16, n = BT * C,
                         block_params = 12 * C * C + 13 * C;
  for (auto schedule : {config::ScheduleKind::two_bw, config::ScheduleKind::flush}) {
    auto fp32 = tiny_deck(4, 2, schedule, 4);
    auto bf16 = fp32;
    bf16.model.precision = config::Precision::bf16;
    const auto map = make_stage_map(fp32);
    ASSERT_EQ(map.stages[1].blocks, 2);
    const auto a = predict_memory(fp32, map);
    const auto b = predict_memory(bf16, map);
    const bool two_bw = schedule == config::ScheduleKind::two_bw;
    const int versions = two_bw ? 2 : 1;
    for (size_t s = 0; s < a.size(); ++s) {
      const std::int64_t P = a[s].params;
      // Two bf16 compute copies plus one fp32 master; gradients (two buffers in a 2bw phase's
      // deferred reduction) and AdamW state stay fp32.
      EXPECT_EQ(b[s].master_weights, 4 * P);
      EXPECT_EQ(b[s].weights, 2 * 2 * P + 4 * P);
      EXPECT_EQ(a[s].weights, 4 * versions * P);
      EXPECT_EQ(a[s].master_weights, 0);
      EXPECT_EQ(b[s].gradients, 4 * P * (has_two_bw_phase(bf16) ? 2 : 1));
      EXPECT_EQ(a[s].gradients, 4 * P);
      EXPECT_EQ(b[s].optimizer, 8 * P);
      EXPECT_EQ(b[s].buffers, a[s].buffers / 2);  // (B, T, C) messages at 2 bytes
      // Workspace: the stored slots (ping, pong, tmp, dres2, datty, dln: n each; dqkv 3n; dfch
      // 4n; the head's logits (B, T, Vp) with Vp = 256) at 2 bytes instead of 4; the fp32
      // scratch grows where the host's BLAS attention widens bf16 into float copies.
      const std::int64_t stored = 13 * n + (s == 1 ? BT * 256 : 0);
      const std::int64_t widening =
          kernels::attention_backward_workspace<float, kernels::bf16>(2, 16, C, NH) -
          kernels::attention_backward_workspace<float>(2, 16, C, NH);
      // The GEMM libraries' workspaces, by the library the devices run: OpenBLAS's bf16 GEMMs
      // widen their operands into three float buffers (A, B, C), each as large as the largest
      // it takes: (B·T, 4C) in the blocks; with the head the logits (B·T, Vp) and the tied wte
      // (Vp, C), equal here since B·T = C. cuBLASLt keeps its 32 MiB workspace in fp32 too.
      using kernels::GemmLibrary;
      const auto on = [&](const config::Deck& deck, GemmLibrary library) {
        return predict_memory(deck, map, library)[s].workspace;
      };
      const std::int64_t model_bf16 = on(bf16, GemmLibrary::native);
      EXPECT_EQ(model_bf16, on(fp32, GemmLibrary::native) - 2 * stored + 4 * widening);
      EXPECT_EQ(on(bf16, GemmLibrary::cblas),
                model_bf16 + 4 * 3 * (s == 1 ? BT * 256 : BT * 4 * C));
      EXPECT_EQ(on(fp32, GemmLibrary::cblas), on(fp32, GemmLibrary::native));
      EXPECT_EQ(on(bf16, GemmLibrary::cublaslt),
                model_bf16 + std::int64_t{kernels::kCublasLtWorkspaceAllocation});
      EXPECT_EQ(b[s].workspace, on(bf16, kernels::kBuildGemmLibrary));
    }
    // Last stage, 2 blocks + head, 1 microbatch in flight: per block 16 values per (B, T, C)
    // position at 2 bytes, 4 row statistics (B, T) and the attention log-sum-exps (B, NH, T) at
    // 4; the head's x and lnf at 2, its mean, rstd and log-sum-exp at 4.
    ASSERT_EQ(b[1].in_flight, 1);
    const std::int64_t block = 2 * (16 * n) + 4 * (4 * BT + NH * BT);
    const std::int64_t head = 2 * (2 * n) + 4 * (3 * BT);
    EXPECT_EQ(b[1].activations, 2 * block + head);
    EXPECT_EQ(b[1].params, 2 * block_params + 2 * C + 256 * C);
  }
}

TEST(ModelShape, Gpt2SmallHasItsKnownParameterCount) {
  // GPT-2 124M: 12 layers, 768 hidden, 1024 positions, vocabulary 50257 padded to 50304 (llm.c).
  const model::ModelShape shape({config::ModelKind::gpt, 12, 768, 12, 1024, 50257}, 1);
  EXPECT_EQ(shape.padded_vocab, 50304);
  EXPECT_EQ(shape.total_params(), 124475904);  // llm.c's count with the padded vocabulary
}

}  // namespace
}  // namespace p2bw::pipeline
