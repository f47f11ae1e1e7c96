// Parameter layout of the model's parts: every tensor of a part is a named slice of the part's
// contiguous range in one flat buffer (llm.c's single allocation). Global names such as
// "blocks/7/attn/qkv/weight" do not depend on how the model is split into stages. The tensors of
// each part kind are named slots (llm.c's ParameterTensors: EmbeddingParameters,
// BlockParameters, HeadParameters), listed once in layout order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model_shape.hpp"

namespace p2bw::model {

enum class PartKind { embedding, block, head };

struct TensorInfo {
  std::string name;                 // global name, e.g. "blocks/3/mlp/fc/weight"
  std::int64_t offset = 0;          // element offset inside the flat buffer that holds it
  std::int64_t count = 0;           // elements
  std::vector<std::int64_t> shape;  // e.g. {3C, C}
  bool decay = false;               // weight decay applies (matrices; not LayerNorm or biases)
  bool tied_copy = false;           // the LM head's copy of the token embedding
};

// The tensors of each part kind, in layout order. S is the slot type (a TensorSpec, a View);
// zip(f, a, b, ...) calls f(a.t, b.t, ...) for every tensor t in order.
template <class S>
struct EmbeddingParameters {
  S wte;  // (Vp, C) token embedding, padded rows 0
  S wpe;  // (T, C) position embedding

  template <class F, class... Each>
  static void zip(F&& f, Each&... s) {
    f(s.wte...), f(s.wpe...);
  }
};

template <class S>
struct BlockParameters {
  S ln1_weight;        // (C)
  S ln1_bias;          // (C)
  S qkv_weight;        // (3C, C)
  S qkv_bias;          // (3C)
  S attn_proj_weight;  // (C, C)
  S attn_proj_bias;    // (C)
  S ln2_weight;        // (C)
  S ln2_bias;          // (C)
  S fc_weight;         // (4C, C)
  S fc_bias;           // (4C)
  S mlp_proj_weight;   // (C, 4C)
  S mlp_proj_bias;     // (C)

  template <class F, class... Each>
  static void zip(F&& f, Each&... s) {
    f(s.ln1_weight...), f(s.ln1_bias...), f(s.qkv_weight...), f(s.qkv_bias...),
        f(s.attn_proj_weight...), f(s.attn_proj_bias...), f(s.ln2_weight...), f(s.ln2_bias...),
        f(s.fc_weight...), f(s.fc_bias...), f(s.mlp_proj_weight...), f(s.mlp_proj_bias...);
  }
};

template <class S>
struct HeadParameters {
  S lnf_weight;  // (C)
  S lnf_bias;    // (C)
  S wte;         // (Vp, C) the LM head's tied copy of the token embedding (last)

  template <class F, class... Each>
  static void zip(F&& f, Each&... s) {
    f(s.lnf_weight...), f(s.lnf_bias...), f(s.wte...);
  }
};

// Name (relative to the part), shape and flags of one tensor.
struct TensorSpec {
  std::string name;                 // e.g. "attn/qkv/weight"
  std::vector<std::int64_t> shape;  // e.g. {3C, C}
  bool decay = false;
  bool tied_copy = false;
};

EmbeddingParameters<TensorSpec> embedding_parameters(const ModelShape& shape);
BlockParameters<TensorSpec> block_parameters(const ModelShape& shape);
HeadParameters<TensorSpec> head_parameters(const ModelShape& shape);

// One part of the model: the embedding, block `index`, or the head.
struct PartLayout {
  PartKind kind = PartKind::block;
  int index = 0;                    // block number (global); 0 for embedding and head
  std::vector<TensorInfo> tensors;  // offsets relative to the part's first element
  std::int64_t params = 0;
};

// The parts of a whole model in order: embedding, blocks 0..L-1, head.
std::vector<PartLayout> model_parts(const ModelShape& shape);

// Initial values of one tensor (GPT-2 initialisation): matrices N(0, 0.02), residual output
// projections N(0, 0.02/sqrt(2L)), biases 0, LayerNorm weights 1; padded vocabulary rows 0. The
// values depend only on (seed, name, element), so every stage layout starts from the same model;
// the head's tied copy equals the embedding.
void init_tensor(const TensorInfo& tensor, const ModelShape& shape, std::uint64_t seed,
                 float* values);

}  // namespace p2bw::model
