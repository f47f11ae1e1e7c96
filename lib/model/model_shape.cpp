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
  // Backward needs only the token ids (B, T) and their buckets (kernels::EncoderBuckets: BT
  // positions, BT + 1 bucket starts, BT bucket tokens), all 32-bit integers, all the input.
  part.activations = 4 * BT + 1;
  part.activations_32bit = part.activations;
  part.input = part.activations;
  part.input_32bit = part.activations;
  part.flops_forward = static_cast<double>(BT) * hidden;
  return part;
}

PartSize ModelShape::block() const {
  const std::int64_t C = hidden, BT = microbatch * seq_len;
  PartSize part;
  // ln1 (2C), qkv (C, 3C) + 3C, attn proj (C, C) + C, ln2 (2C), fc (C, 4C) + 4C, proj (4C, C) + C
  part.params = 12 * C * C + 13 * C;
  const BlockActivations<std::int64_t> a = block_activations();
  slot_offsets(a, part.activations);
  part.activations_32bit = statistics_count(a, block_statistics());
  part.input = BT * C;  // residual stream (B, T, C)
  part.flops_forward = 24.0 * BT * C * C + 4.0 * BT * seq_len * C;
  return part;
}

PartSize ModelShape::head() const {
  const std::int64_t C = hidden, BT = microbatch * seq_len;
  PartSize part;
  part.params = 2 * C + padded_vocab * hidden;  // lnf (2C), tied wte copy (Vp, C)
  const HeadActivations<std::int64_t> a = head_activations();
  slot_offsets(a, part.activations);
  part.activations_32bit = statistics_count(a, head_statistics());
  part.input = BT * C;
  part.flops_forward = 2.0 * BT * C * padded_vocab;
  return part;
}

BlockActivations<bool> block_statistics() {
  BlockActivations<bool> s{};
  s.ln1_mean = s.ln1_rstd = s.att_lse = s.ln2_mean = s.ln2_rstd = true;
  return s;
}

HeadActivations<bool> head_statistics() {
  HeadActivations<bool> s{};
  s.lnf_mean = s.lnf_rstd = s.lse = true;
  return s;
}

BlockActivations<std::int64_t> ModelShape::block_activations() const {
  const std::int64_t n = microbatch * seq_len * hidden, r = microbatch * seq_len;
  BlockActivations<std::int64_t> a;
  a.x = n;
  a.ln1 = n;
  a.ln1_mean = r;
  a.ln1_rstd = r;
  a.qkv = 3 * n;
  a.att_lse = microbatch * heads * seq_len;
  a.atty = n;
  a.res2 = n;
  a.ln2 = n;
  a.ln2_mean = r;
  a.ln2_rstd = r;
  a.fch = 4 * n;
  a.fch_gelu = 4 * n;
  return a;
}

HeadActivations<std::int64_t> ModelShape::head_activations() const {
  const std::int64_t n = microbatch * seq_len * hidden, r = microbatch * seq_len;
  HeadActivations<std::int64_t> a;
  a.x = n;
  a.lnf = n;
  a.lnf_mean = r;
  a.lnf_rstd = r;
  a.lse = r;
  return a;
}

std::int64_t ModelShape::total_params() const {
  return embedding().params + layers * block().params + head().params - padded_vocab * hidden;
}

}  // namespace p2bw::model
