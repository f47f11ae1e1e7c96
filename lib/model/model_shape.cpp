// Parameter and activation accounting of GPT and BERT parts; see model_shape.hpp.
#include "model/model_shape.hpp"

namespace p2bw::model {

ModelShape::ModelShape(const config::ModelConfig& model, int microbatch_size)
    : kind(model.kind),
      layers(model.layers),
      hidden(model.hidden),
      heads(model.heads),
      seq_len(model.seq_len),
      vocab(model.vocab),
      padded_vocab(config::padded_vocab(model.vocab)),
      microbatch(microbatch_size) {}

PartSize ModelShape::embedding() const {
  const std::int64_t BT = microbatch * seq_len;
  PartSize part;
  part.params = padded_vocab * hidden + seq_len * hidden;  // wte (Vp, C), wpe (T, C)
  part.activations = BT;  // backward needs only the token ids (B, T), stored as 32-bit integers
  part.input = BT;
  part.flops_forward = static_cast<double>(BT) * hidden;
  return part;
}

PartSize ModelShape::block() const {
  const std::int64_t C = hidden, BT = microbatch * seq_len;
  PartSize part;
  // ln1 (2C), qkv (C, 3C) + 3C, attn proj (C, C) + C, ln2 (2C), fc (C, 4C) + 4C, proj (4C, C) + C
  part.params = 12 * C * C + 13 * C;
  // Saved for backward: the input, ln1 out, qkv (3), attention output, attn residual, ln2 out,
  // fc pre-GELU (4), GELU out (4) = 16·BTC; ln1/ln2 mean and rstd (4·BT); attention
  // probabilities (B, NH, T, T).
  part.activations = 16 * BT * C + 4 * BT + microbatch * heads * seq_len * seq_len;
  part.input = BT * C;  // residual stream (B, T, C)
  part.flops_forward = 24.0 * BT * C * C + 4.0 * BT * seq_len * C;
  return part;
}

PartSize ModelShape::head() const {
  const std::int64_t C = hidden, BT = microbatch * seq_len;
  PartSize part;
  part.params = 2 * C + padded_vocab * hidden;  // lnf (2C), tied wte copy (Vp, C)
  // the input and lnf out (2·BTC), lnf mean/rstd (2·BT), probabilities (B, T, Vp)
  part.activations = 2 * BT * C + 2 * BT + BT * padded_vocab;
  part.input = BT * C;
  part.flops_forward = 2.0 * BT * C * padded_vocab;
  return part;
}

std::int64_t ModelShape::total_params() const {
  return embedding().params + layers * block().params + head().params - padded_vocab * hidden;
}

}  // namespace p2bw::model
