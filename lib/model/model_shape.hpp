// Sizes of the model's parts (embedding, block, head) in parameters and in activation floats per
// microbatch: the one accounting that partitioning, memory prediction and the kernels share.
// The activations a block and the head keep for backward are named slots (llm.c's
// ActivationTensors): BlockActivations / HeadActivations list them once, in cache order, and
// both the sizes here and the cache offsets in StageModel walk that one list.
#pragma once

#include <cstdint>
#include <string>

#include "config/deck.hpp"

namespace p2bw::model {

// What one part holds, in values. For model.precision: bf16 activations and stage-boundary tensors
// are bf16, per-row statistics (LayerNorm mean and rstd, log-sum-exps) and token ids 32-bit.
struct PartSize {
  std::int64_t params = 0;             // parameters (the tied LM head counts its own copy)
  std::int64_t activations = 0;        // values kept for backward per microbatch, input included
  std::int64_t activations_32bit = 0;  // of them, 32-bit in every precision (statistics, tokens)
  std::int64_t input = 0;        // values of the part's input per microbatch (a stage boundary)
  std::int64_t input_32bit = 0;  // of them, 32-bit in every precision (token ids)
  double flops_forward = 0;      // per microbatch (2 per multiply-add)

  // Bytes per microbatch in `precision`: the 32-bit values at 4 bytes, the others at
  // config::compute_bytes(precision).
  std::int64_t activation_bytes(config::Precision precision) const {
    return 4 * activations_32bit +
           config::compute_bytes(precision) * (activations - activations_32bit);
  }
  std::int64_t input_bytes(config::Precision precision) const {
    return 4 * input_32bit + config::compute_bytes(precision) * (input - input_32bit);
  }
};

// What one block keeps from forward for backward, one slot per tensor, in cache order. S is the
// slot type: a size, an offset or a View. zip(f, a, b, ...) calls f(a.x, b.x, ...) for every
// slot in order, the one place that lists them.
template <class S>
struct BlockActivations {
  S x;         // (B, T, C) block input, the residual stream
  S ln1;       // (B, T, C) ln1 output
  S ln1_mean;  // (B, T)
  S ln1_rstd;  // (B, T)
  S qkv;       // (B, T, 3C) fused q, k, v projection
  S att_lse;   // (B, NH, T) log-sum-exp of each query row's attention scores
  S atty;      // (B, T, C) attention output before its projection
  S res2;      // (B, T, C) residual stream after attention
  S ln2;       // (B, T, C) ln2 output
  S ln2_mean;  // (B, T)
  S ln2_rstd;  // (B, T)
  S fch;       // (B, T, 4C) fc output before GELU
  S fch_gelu;  // (B, T, 4C) GELU output

  template <class F, class... Each>
  static void zip(F&& f, Each&... s) {
    f(s.x...), f(s.ln1...), f(s.ln1_mean...), f(s.ln1_rstd...), f(s.qkv...), f(s.att_lse...),
        f(s.atty...), f(s.res2...), f(s.ln2...), f(s.ln2_mean...), f(s.ln2_rstd...), f(s.fch...),
        f(s.fch_gelu...);
  }
};

// What the head (final LayerNorm, tied LM head, loss) keeps for backward, in cache order.
template <class S>
struct HeadActivations {
  S x;         // (B, T, C) head input
  S lnf;       // (B, T, C) final LayerNorm output
  S lnf_mean;  // (B, T)
  S lnf_rstd;  // (B, T)
  S lse;       // (B, T) log-sum-exp of each position's logits

  template <class F, class... Each>
  static void zip(F&& f, Each&... s) {
    f(s.x...), f(s.lnf...), f(s.lnf_mean...), f(s.lnf_rstd...), f(s.lse...);
  }
};

// Slot offsets from slot sizes (an exclusive scan in slot order); `total` gets the sum.
template <template <class> class Slots>
Slots<std::int64_t> slot_offsets(const Slots<std::int64_t>& sizes, std::int64_t& total) {
  Slots<std::int64_t> offsets{};
  Slots<std::int64_t> counts = sizes;
  total = 0;
  Slots<std::int64_t>::zip(
      [&](std::int64_t& offset, const std::int64_t& count) {
        offset = total;
        total += count;
      },
      offsets, counts);
  return offsets;
}

// Which slots hold per-row statistics, 32-bit in every precision (LayerNorm means and rstds,
// log-sum-exps); the other slots are stored values (float, or bf16 under model.precision: bf16).
BlockActivations<bool> block_statistics();
HeadActivations<bool> head_statistics();

// Values of the slots where `statistics` is true.
template <template <class> class Slots>
std::int64_t statistics_count(const Slots<std::int64_t>& sizes, const Slots<bool>& statistics) {
  std::int64_t total = 0;
  Slots<std::int64_t> counts = sizes;
  Slots<bool> flags = statistics;
  Slots<std::int64_t>::zip([&](std::int64_t& count, bool& flag) { total += flag ? count : 0; },
                           counts, flags);
  return total;
}

struct ModelShape {
  config::ModelKind kind;
  std::int64_t layers, hidden, heads, seq_len, vocab, padded_vocab, microbatch;

  ModelShape(const config::ModelConfig& model, int microbatch_size);

  // Token and position embeddings (stage 0).
  PartSize embedding() const;
  // One transformer block.
  PartSize block() const;
  // Final LayerNorm, LM head tied to the token embedding, loss (last stage).
  PartSize head() const;

  // Floats of each slot one block / the head keeps per microbatch.
  BlockActivations<std::int64_t> block_activations() const;
  HeadActivations<std::int64_t> head_activations() const;

  std::int64_t total_params() const;  // the tied embedding counted once
};

}  // namespace p2bw::model
