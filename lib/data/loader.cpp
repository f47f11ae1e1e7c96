// Deterministic sampling and BERT masking; see loader.hpp.
#include "data/loader.hpp"

#include <fmt/format.h>

#include <cmath>
#include <numeric>

#include "core/error.hpp"

namespace p2bw::data {

namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Random streams of the loader.
enum Stream : std::uint64_t { kPermutation = 1, kMaskChoice = 2, kMaskKind = 3, kMaskToken = 4 };

}  // namespace

std::uint64_t random_bits(std::uint64_t seed, std::uint64_t stream, std::uint64_t counter) {
  return splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ counter);
}

double uniform01(std::uint64_t bits) {
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

DataSplits split_data(std::shared_ptr<const Tokens> all, const config::Deck& deck) {
  if (deck.data.val_fraction <= 0) return {std::move(all), nullptr};
  const auto n = static_cast<std::int64_t>(all->ids.size());
  const auto held_out =
      static_cast<std::int64_t>(std::floor(static_cast<double>(n) * deck.data.val_fraction));
  auto train = std::make_shared<Tokens>();
  auto validation = std::make_shared<Tokens>();
  train->vocab = validation->vocab = all->vocab;
  train->ids.assign(all->ids.begin(), all->ids.end() - held_out);
  validation->ids.assign(all->ids.end() - held_out, all->ids.end());
  const std::int64_t T = deck.model.seq_len;
  const bool bert = deck.model.kind == config::ModelKind::bert;
  const std::int64_t sequences = bert ? held_out / T : std::max<std::int64_t>(held_out - 1, 0) / T;
  if (sequences < eval_sequences(deck))
    throw UserError(fmt::format(
        "{}: data.val_fraction = {} holds out {} tokens, {} sequences of model.seq_len = {}; one "
        "evaluation reads train.eval_batches · b · m · w = {} (allowed: a larger "
        "data.val_fraction or a smaller train.eval_batches)",
        deck.data.path, deck.data.val_fraction, held_out, sequences, T, eval_sequences(deck)));
  return {std::move(train), std::move(validation)};
}

std::int64_t eval_sequences(const config::Deck& deck) {
  return std::int64_t{deck.train.eval_batches} * config::global_batch(deck);
}

Loader::Loader(std::shared_ptr<const Tokens> tokens, const config::Deck& deck, Order order)
    : tokens_(std::move(tokens)), deck_(deck), order_(order) {
  const bool bert = deck.model.kind == config::ModelKind::bert;
  const std::int64_t usable_vocab = bert ? deck.model.vocab - 1 : deck.model.vocab;
  if (tokens_->vocab > usable_vocab)
    throw UserError(fmt::format(
        "{}: the data's vocabulary has {} tokens, model.vocab = {}{} (allowed: model.vocab >= {})",
        deck.data.path, tokens_->vocab, deck.model.vocab,
        bert ? " with one reserved for BERT's mask token" : "", tokens_->vocab + (bert ? 1 : 0)));
  const std::int64_t T = deck.model.seq_len;
  const std::int64_t n = static_cast<std::int64_t>(tokens_->ids.size());
  samples_per_epoch_ = bert ? n / T : (n - 1) / T;
  if (samples_per_epoch_ < 1)
    throw UserError(
        fmt::format("{}: {} tokens are too few for one sample of model.seq_len = {} (allowed: at "
                    "least {} tokens)",
                    deck.data.path, n, T, bert ? T : T + 1));
}

std::int64_t Loader::window_start(std::int64_t index) {
  if (order_ == Order::sequential) return index % samples_per_epoch_ * deck_.model.seq_len;
  const std::int64_t epoch = index / samples_per_epoch_;
  if (epoch != cached_epoch_) {
    // Fisher-Yates with counter-based randomness: the permutation depends on (seed, epoch) only.
    permutation_.resize(static_cast<size_t>(samples_per_epoch_));
    std::iota(permutation_.begin(), permutation_.end(), 0);
    for (std::int64_t i = samples_per_epoch_ - 1; i > 0; --i) {
      const std::uint64_t bits =
          random_bits(deck_.train.seed, kPermutation,
                      (static_cast<std::uint64_t>(epoch) << 40) ^ static_cast<std::uint64_t>(i));
      std::swap(permutation_[i],
                permutation_[static_cast<std::int64_t>(bits % static_cast<std::uint64_t>(i + 1))]);
    }
    cached_epoch_ = epoch;
  }
  return permutation_[index % samples_per_epoch_] * deck_.model.seq_len;
}

void Loader::sample(std::int64_t index, std::int32_t* inputs, std::int32_t* targets) {
  const int T = deck_.model.seq_len;
  const std::int32_t* window = tokens_->ids.data() + window_start(index);
  if (deck_.model.kind == config::ModelKind::gpt) {
    for (int t = 0; t < T; ++t) {
      inputs[t] = window[t];
      targets[t] = window[t + 1];
    }
    return;
  }
  const std::uint64_t seed = deck_.train.seed;
  const std::int32_t mask = deck_.model.vocab - 1;
  for (int t = 0; t < T; ++t) {
    const std::uint64_t position =
        (static_cast<std::uint64_t>(index) << 24) ^ static_cast<std::uint64_t>(t);
    inputs[t] = window[t];
    targets[t] = kIgnore;
    if (uniform01(random_bits(seed, kMaskChoice, position)) >= 0.15) continue;
    targets[t] = window[t];
    const double kind = uniform01(random_bits(seed, kMaskKind, position));
    if (kind < 0.8)
      inputs[t] = mask;
    else if (kind < 0.9)
      inputs[t] = static_cast<std::int32_t>(random_bits(seed, kMaskToken, position) %
                                            static_cast<std::uint64_t>(mask));
  }
}

std::int64_t Loader::first_sample(const config::Deck& deck, std::int64_t step, int microbatch,
                                  int replica) {
  const std::int64_t b = deck.train.microbatch_size;
  return step * config::global_batch(deck) +
         (std::int64_t{microbatch} * deck.pipeline.width + replica) * b;
}

void Loader::microbatch(std::int64_t step, int microbatch, int replica, std::int32_t* inputs,
                        std::int32_t* targets) {
  const std::int64_t first = first_sample(deck_, step, microbatch, replica);
  const int T = deck_.model.seq_len;
  for (int i = 0; i < deck_.train.microbatch_size; ++i)
    sample(first + i, inputs + i * T, targets + i * T);
}

}  // namespace p2bw::data
