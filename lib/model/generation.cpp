// Sampling and the generation loop; see generation.hpp.
#include "model/generation.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"
#include "data/loader.hpp"

namespace p2bw::model {

namespace {

constexpr std::uint64_t kGenerationStream = 1;

}  // namespace

std::int32_t sample_token(const float* logits, int vocab, const SamplingOptions& options,
                          double u) {
  P2BW_ASSERT(vocab > 0 && options.temperature >= 0 && options.top_k >= 0 && 0 <= u && u < 1,
              "bad sampling arguments");
  if (options.temperature == 0)
    return static_cast<std::int32_t>(std::max_element(logits, logits + vocab) - logits);
  const int k = options.top_k > 0 ? std::min(options.top_k, vocab) : vocab;
  std::vector<std::int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](std::int32_t a, std::int32_t b) {
                      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
                    });
  const double largest = logits[order[0]];
  std::vector<double> cumulative(static_cast<size_t>(k));
  double total = 0.0;
  for (int i = 0; i < k; ++i) {
    total += std::exp((static_cast<double>(logits[order[i]]) - largest) / options.temperature);
    cumulative[i] = total;
  }
  const double target = u * total;
  for (int i = 0; i < k; ++i)
    if (cumulative[i] > target) return order[i];
  return order[k - 1];
}

std::vector<std::int32_t> generate_tokens(StageModel& model, const StoreView& params,
                                          const std::vector<std::int32_t>& prompt, int count,
                                          const SamplingOptions& options) {
  const ModelShape& shape = model.shape();
  P2BW_ASSERT(model.has_embedding() && model.has_head() && shape.microbatch == 1,
              "generation needs the whole model with microbatch 1");
  P2BW_ASSERT(!prompt.empty(), "generation starts from at least one token");
  const auto T = static_cast<size_t>(shape.seq_len);
  const auto V = static_cast<int>(shape.vocab);
  const std::int64_t Vp = shape.padded_vocab;
  const Exec exec;
  Cache cache = model.make_cache();
  FloatView logits(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::logits"),
                   static_cast<size_t>(shape.seq_len * Vp));    // (1, T, Vp)
  auto host_tokens = Kokkos::create_mirror_view(cache.tokens);  // (1, T)
  Kokkos::View<float*, Kokkos::HostSpace> host_row("p2bw::logits_row",
                                                   static_cast<size_t>(Vp));  // (Vp)
  std::vector<std::int32_t> text = prompt, added;
  for (int i = 0; i < count; ++i) {
    const size_t length = std::min(text.size(), T), start = text.size() - length;
    for (size_t t = 0; t < T; ++t) host_tokens(t) = t < length ? text[start + t] : 0;
    model.load(exec, cache, host_tokens.data(), nullptr);
    model.forward_logits(exec, params, cache, logits);
    const auto last = static_cast<std::int64_t>(length - 1) * Vp;
    Kokkos::deep_copy(host_row, Kokkos::subview(logits, std::make_pair(last, last + Vp)));
    for (int v = 0; v < V; ++v)
      if (!std::isfinite(host_row(v)))
        throw UserError(fmt::format(
            "the model's logit of token {} is {} at generated token {} (allowed: a checkpoint "
            "with finite weights; this one has diverged)",
            v, host_row(v), i + 1));
    const double u = data::uniform01(
        data::random_bits(options.seed, kGenerationStream, static_cast<std::uint64_t>(i)));
    const std::int32_t next = sample_token(host_row.data(), V, options, u);
    text.push_back(next);
    added.push_back(next);
  }
  return added;
}

}  // namespace p2bw::model
