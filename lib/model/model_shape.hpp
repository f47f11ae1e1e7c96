// Sizes of the model's parts (embedding, block, head) in parameters and in activation floats per
// microbatch: the one accounting that partitioning, memory prediction and the kernels share.
#pragma once

#include <cstdint>
#include <string>

#include "config/deck.hpp"

namespace p2bw::model {

// What one part holds. All tensors are fp32.
struct PartSize {
  std::int64_t params = 0;  // parameters (the tied LM head counts its own copy)
  std::int64_t activations =
      0;                     // floats kept from forward for backward per microbatch, input included
  std::int64_t input = 0;    // floats of the part's input per microbatch (a stage boundary)
  double flops_forward = 0;  // per microbatch (2 per multiply-add)
};

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

  std::int64_t total_params() const;  // the tied embedding counted once
};

}  // namespace p2bw::model
