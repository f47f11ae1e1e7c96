// Text generation with a whole GPT on one rank: the next token from the head's logits
// (temperature, top-k, one seeded counter-based random number per token) and the loop that feeds
// the last seq_len tokens back through StageModel::forward_logits.
#pragma once

#include <cstdint>
#include <vector>

#include "model/stage_model.hpp"

namespace p2bw::model {

struct SamplingOptions {
  double temperature = 1.0;  // 0: greedy (the largest logit)
  int top_k = 0;             // draw among the k largest logits; 0: among all
  std::uint64_t seed = 0;
};

// The next token from `logits` (vocab). Temperature 0: the first largest logit. Otherwise the
// top_k largest logits (ties: the lower id first) in that order, weighted by
// exp((logit - largest) / temperature) in double; `u` in [0, 1) picks the first whose cumulative
// weight exceeds u times the total.
std::int32_t sample_token(const float* logits, int vocab, const SamplingOptions& options, double u);

// Continues `prompt` (at least one token, each below the vocabulary) by `count` tokens with
// `model`, a whole GPT (embedding to head) of microbatch 1 over `params`. The model sees the last
// seq_len tokens (positions beyond them are padding that causal attention never lets earlier
// positions see); token i (0-based) draws its number from data::random_bits(seed, stream 1, i).
// Returns the new tokens. Logits that are not finite (a diverged checkpoint) are a UserError.
std::vector<std::int32_t> generate_tokens(StageModel& model, const StoreView& params,
                                          const std::vector<std::int32_t>& prompt, int count,
                                          const SamplingOptions& options);

}  // namespace p2bw::model
