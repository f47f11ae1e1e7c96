// Inference and sampling: StageModel::forward_logits against the loss of forward, the same logits
// through two stages as through the whole model, causality (what generation's padding relies
// on), sample_token's greedy, top-k and cumulative choice, and generate_tokens' determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/generation.hpp"
#include "model/stage_model.hpp"

namespace p2bw::model {
namespace {

const config::ModelConfig kModel{config::ModelKind::gpt, 2, 16, 2, 8, 100};  // vocab padded to 128

std::vector<float> host(ConstFloatView view) {
  auto mirror = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  return std::vector<float>(mirror.data(), mirror.data() + mirror.extent(0));
}

void set_tokens(IntView view, const std::vector<int>& tokens) {
  auto mirror = Kokkos::create_mirror_view(view);
  for (size_t i = 0; i < tokens.size(); ++i) mirror(i) = tokens[i];
  Kokkos::deep_copy(view, mirror);
}

std::vector<int> some_tokens(int count, int salt) {
  std::vector<int> tokens;
  for (int i = 0; i < count; ++i) tokens.push_back((i * 37 + salt * 11 + 5) % kModel.vocab);
  return tokens;
}

struct Whole {
  StageModel model{kModel, 2, 0, kModel.layers + 2};
  FloatView params{"params", static_cast<size_t>(model.num_params())};
  Whole() { model.init(params, 3); }
  // (B, T, Vp) logits of `tokens` (B·T).
  std::vector<float> logits(const std::vector<int>& tokens) {
    Cache cache = model.make_cache();
    set_tokens(cache.tokens, tokens);
    FloatView out("logits", static_cast<size_t>(2 * kModel.seq_len * model.shape().padded_vocab));
    model.forward_logits(Exec(), params, cache, out);
    return host(out);
  }
};

TEST(ForwardLogits, TheirCrossEntropyIsTheLossOfForward) {
  Whole whole;
  const int B = 2, T = kModel.seq_len, V = kModel.vocab;
  const auto Vp = static_cast<int>(whole.model.shape().padded_vocab);
  const std::vector<int> tokens = some_tokens(B * T, 1), targets = some_tokens(B * T, 2);
  Cache cache = whole.model.make_cache();
  set_tokens(cache.tokens, tokens);
  set_tokens(cache.targets, targets);
  const double loss = whole.model.forward(Exec(), whole.params, cache, FloatView());
  const std::vector<float> logits = whole.logits(tokens);
  double sum = 0.0;
  for (int i = 0; i < B * T; ++i) {
    const float* row = logits.data() + static_cast<size_t>(i) * Vp;
    double largest = row[0], total = 0.0;
    for (int v = 0; v < V; ++v) largest = std::max(largest, double(row[v]));
    for (int v = 0; v < V; ++v) total += std::exp(row[v] - largest);
    sum += largest + std::log(total) - row[targets[i]];
    for (int v = V; v < Vp; ++v) EXPECT_EQ(row[v], 0.0f) << "padded logit " << v;
  }
  EXPECT_NEAR(sum / (B * T), loss, 1e-5 * loss);
}

TEST(ForwardLogits, TwoStagesGiveTheWholeModelsLogitsBitForBit) {
  Whole whole;
  const std::vector<int> tokens = some_tokens(2 * kModel.seq_len, 4);
  StageModel first(kModel, 2, 0, 2),
      second(kModel, 2, 2, kModel.layers + 2);  // split after block 0
  ASSERT_EQ(first.num_params() + second.num_params(), whole.model.num_params());
  const auto split = static_cast<std::int64_t>(first.num_params());
  auto first_params = Kokkos::subview(whole.params, std::make_pair(std::int64_t{0}, split));
  auto second_params =
      Kokkos::subview(whole.params, std::make_pair(split, whole.model.num_params()));
  Cache a = first.make_cache(), b = second.make_cache();
  set_tokens(a.tokens, tokens);
  first.forward(Exec(), FloatView(first_params), a, second.input_slot(b));
  FloatView out("logits", static_cast<size_t>(2 * kModel.seq_len * second.shape().padded_vocab));
  second.forward_logits(Exec(), FloatView(second_params), b, out);
  EXPECT_EQ(host(out), whole.logits(tokens));
}

TEST(ForwardLogits, APositionSeesNoLaterToken) {
  Whole whole;
  std::vector<int> tokens = some_tokens(2 * kModel.seq_len, 5);
  const std::vector<float> before = whole.logits(tokens);
  const int keep = 3;  // positions 0..2 of each sequence
  for (int b = 0; b < 2; ++b)
    for (int t = keep; t < kModel.seq_len; ++t) tokens[b * kModel.seq_len + t] = 0;
  const std::vector<float> after = whole.logits(tokens);
  const auto Vp = static_cast<size_t>(whole.model.shape().padded_vocab);
  for (int b = 0; b < 2; ++b)
    for (size_t i = 0; i < keep * Vp; ++i) {
      const size_t at = b * kModel.seq_len * Vp + i;
      ASSERT_EQ(before[at], after[at]) << "sequence " << b << ", float " << i;
    }
}

TEST(SampleToken, GreedyTopKAndTheCumulativeChoice) {
  // Weights exp(logit) 1 : 2 : 3 : 3 for tokens 0..3; the order is 2, 3 (tie: lower id), 1, 0.
  const float logits[4] = {0.0f, std::log(2.0f), std::log(3.0f), std::log(3.0f)};
  SamplingOptions o;
  o.temperature = 0;
  EXPECT_EQ(sample_token(logits, 4, o, 0.99), 2);  // the first largest, whatever u
  o.temperature = 1;
  o.top_k = 1;
  EXPECT_EQ(sample_token(logits, 4, o, 0.99), 2);
  o.top_k = 0;  // cumulative 3, 6, 8, 9 of 9
  EXPECT_EQ(sample_token(logits, 4, o, 0.0), 2);
  EXPECT_EQ(sample_token(logits, 4, o, 2.9 / 9), 2);
  EXPECT_EQ(sample_token(logits, 4, o, 3.1 / 9), 3);
  EXPECT_EQ(sample_token(logits, 4, o, 7.9 / 9), 1);
  EXPECT_EQ(sample_token(logits, 4, o, 8.1 / 9), 0);
  o.top_k = 3;  // token 0 is out: cumulative 3, 6, 8 of 8
  EXPECT_EQ(sample_token(logits, 4, o, 0.999), 1);
  o.top_k = 0;
  o.temperature = 1e-3;  // nearly greedy: the two tied tokens share all the weight
  EXPECT_EQ(sample_token(logits, 4, o, 0.49), 2);
  EXPECT_EQ(sample_token(logits, 4, o, 0.51), 3);
}

TEST(GenerateTokens, DeterministicForASeedGreedyIsTheArgmaxAndTheContextSlides) {
  StageModel model(kModel, 1, 0, kModel.layers + 2);
  FloatView params("params", static_cast<size_t>(model.num_params()));
  model.init(params, 3);
  const std::vector<std::int32_t> prompt = {1, 2, 3};
  SamplingOptions o;
  o.seed = 9;
  const auto a = generate_tokens(model, params, prompt, 20, o);  // 23 tokens > seq_len 8
  EXPECT_EQ(a.size(), 20u);
  EXPECT_EQ(generate_tokens(model, params, prompt, 20, o), a);
  o.seed = 10;
  EXPECT_NE(generate_tokens(model, params, prompt, 20, o), a);
  o.temperature = 0;
  const auto greedy = generate_tokens(model, params, prompt, 1, o);
  Cache cache = model.make_cache();
  set_tokens(cache.tokens, {1, 2, 3, 0, 0, 0, 0, 0});
  const auto Vp = model.shape().padded_vocab;
  FloatView out("logits", static_cast<size_t>(kModel.seq_len * Vp));
  model.forward_logits(Exec(), params, cache, out);
  const std::vector<float> logits = host(out);
  const float* row = logits.data() + 2 * Vp;  // position 2, the prompt's last
  EXPECT_EQ(greedy.at(0), std::max_element(row, row + kModel.vocab) - row);
}

}  // namespace
}  // namespace p2bw::model
