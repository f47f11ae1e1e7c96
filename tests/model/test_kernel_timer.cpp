// Per-kernel timing (model::KernelTimer, `p2bw bench --kernels`): a block's forward and backward
// mark every kernel they launch, once per timed run, in launch order, in fp32 and in bf16; the
// warm-up and the recomputation are not counted; a mark outside a phase counts nothing.
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "model/kernel_timer.hpp"
#include "planner/profile.hpp"

namespace p2bw::model {
namespace {

config::Deck tiny(config::Precision precision) {
  config::Deck d;
  d.model = {config::ModelKind::gpt, 2, 16, 2, 8, 256};
  d.model.precision = precision;
  d.train.microbatch_size = 2;
  return d;
}

using Row = std::tuple<std::string, std::string, long>;  // phase, kernel, calls

std::vector<Row> rows(const std::vector<KernelTimer::Total>& totals) {
  std::vector<Row> out;
  for (const KernelTimer::Total& t : totals) {
    EXPECT_GE(t.seconds, 0.0) << t.phase << " " << t.kernel;
    out.emplace_back(t.phase, t.kernel, t.calls);
  }
  return out;
}

TEST(KernelTimer, ABlockMarksEachKernelOncePerTimedRun) {
  const int runs = 3;
  const std::vector<Row> expected = {
      {"forward", "layernorm", runs},
      {"forward", "matmul qkv", runs},
      {"forward", "attention", runs},
      {"forward", "matmul attention proj", runs},
      {"forward", "residual + layernorm", runs},
      {"forward", "matmul fc + gelu", runs},
      {"forward", "matmul mlp proj", runs},
      {"forward", "residual", runs},
      {"backward", "matmul mlp proj + gelu", runs},
      {"backward", "matmul fc", runs},
      {"backward", "layernorm", 2 * runs},  // ln2, then ln1
      {"backward", "residual", 2 * runs},
      {"backward", "matmul attention proj", runs},
      {"backward", "attention", runs},
      {"backward", "matmul qkv", runs},
  };
  for (const config::Precision precision : {config::Precision::fp32, config::Precision::bf16}) {
    SCOPED_TRACE(config::to_string(precision));
    KernelTimer timer{Exec()};
    planner::PartProfile profile;
    planner::time_parts(tiny(precision), 2, 1, 2, runs, profile, &timer);
    EXPECT_EQ(rows(timer.totals()), expected);
  }
}

TEST(KernelTimer, TheHeadAndTheEmbeddingMarkTheirKernels) {
  KernelTimer head{Exec()}, embedding{Exec()};
  planner::PartProfile profile;
  const config::Deck deck = tiny(config::Precision::fp32);
  planner::time_parts(deck, 2, 3, 4, 1, profile, &head);
  EXPECT_EQ(rows(head.totals()), (std::vector<Row>{{"forward", "layernorm", 1},
                                                   {"forward", "matmul logits", 1},
                                                   {"forward", "cross-entropy", 1},
                                                   {"forward", "mean loss", 1},
                                                   {"backward", "matmul logits", 2},
                                                   {"backward", "cross-entropy", 1},
                                                   {"backward", "layernorm", 1}}));
  planner::time_parts(deck, 2, 0, 1, 1, profile, &embedding);
  EXPECT_EQ(rows(embedding.totals()),
            (std::vector<Row>{{"forward", "embedding", 1}, {"backward", "embedding", 1}}));
}

TEST(KernelTimer, MarksOutsideAPhaseCountNothing) {
  KernelTimer timer{Exec()};
  timer.mark("before");
  timer.start("forward");
  timer.mark("inside");
  timer.stop();
  timer.mark("after");
  EXPECT_EQ(rows(timer.totals()), (std::vector<Row>{{"forward", "inside", 1}}));
  EXPECT_FALSE(timer.running());
}

}  // namespace
}  // namespace p2bw::model
