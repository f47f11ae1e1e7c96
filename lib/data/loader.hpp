// The data loader: cuts the token stream into samples of seq_len (+1 for GPT's shifted targets),
// visits them in a seeded per-epoch permutation (training) or in order (validation), and makes
// BERT's masked-LM inputs. It is a pure function of (seed, global sample index), so it resumes at
// any sample and every layout (d, w) sees the same global batch.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "config/deck.hpp"
#include "data/token_file.hpp"

namespace p2bw::data {

constexpr std::int32_t kIgnore = -1;  // target of a position without loss

// A counter-based random number: the same (seed, stream, counter) always gives the same value.
std::uint64_t random_bits(std::uint64_t seed, std::uint64_t stream, std::uint64_t counter);

// Uniform in [0, 1) from the top 53 of 64 random bits: the same on every platform (unlike
// std::uniform_real_distribution).
double uniform01(std::uint64_t bits);

// The token streams of a run: without data.val_fraction all of the data trains; otherwise the
// last floor(N · data.val_fraction) tokens are the validation split, never trained on.
struct DataSplits {
  std::shared_ptr<const Tokens> train;
  std::shared_ptr<const Tokens> validation;  // null without data.val_fraction
};
// Throws UserError when the validation split holds fewer sequences than one evaluation reads
// (train.eval_batches global batches).
DataSplits split_data(std::shared_ptr<const Tokens> all, const config::Deck& deck);

// Sequences one evaluation reads: train.eval_batches · b · m · w.
std::int64_t eval_sequences(const config::Deck& deck);

enum class Order {
  shuffled,   // training: a seeded permutation per epoch
  sequential  // validation: sample i is the i-th window, the same for every seed and run
};

class Loader {
 public:
  // Throws UserError when the data does not fit the model (too few tokens, ids beyond the vocab).
  Loader(std::shared_ptr<const Tokens> tokens, const config::Deck& deck,
         Order order = Order::shuffled);

  std::int64_t samples_per_epoch() const { return samples_per_epoch_; }

  // Sample `index` (global over the run, 0-based) into inputs (T) and targets (T).
  // GPT: targets are the inputs shifted by one. BERT: 15% of positions are chosen; of those 80%
  // become the mask token (vocab - 1), 10% a random token, 10% stay; targets hold the original
  // token there and kIgnore elsewhere.
  void sample(std::int64_t index, std::int32_t* inputs, std::int32_t* targets);

  // First global sample index of microbatch `microbatch` (0-based within the step) of data-parallel
  // replica `replica` at optimizer step `step` (0-based). The global batch of a step is b·m·w
  // consecutive samples; microbatch j of replica r takes slot k = j·w + r of size b, so a
  // single-rank run with m·w microbatches sees the same samples in slot order.
  static std::int64_t first_sample(const config::Deck& deck, std::int64_t step, int microbatch,
                                   int replica);

  // Fills (b, T) inputs and targets for microbatch `microbatch` of `replica` at `step`.
  void microbatch(std::int64_t step, int microbatch, int replica, std::int32_t* inputs,
                  std::int32_t* targets);

 private:
  std::int64_t window_start(std::int64_t index);

  std::shared_ptr<const Tokens> tokens_;
  config::Deck deck_;
  Order order_;
  std::int64_t samples_per_epoch_ = 0;
  std::int64_t cached_epoch_ = -1;
  std::vector<std::int64_t> permutation_;  // (samples_per_epoch) of the cached epoch
};

}  // namespace p2bw::data
