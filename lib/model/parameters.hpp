// Parameter layout of the model's parts: every tensor of a part is a named slice of the part's
// contiguous range in one flat buffer (llm.c's single allocation). Global names such as
// "blocks/7/attn/qkv/weight" do not depend on how the model is split into stages.
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
