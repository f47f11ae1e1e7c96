// Part layouts and GPT-2 initialisation; see parameters.hpp.
#include "model/parameters.hpp"

#include <algorithm>
#include <cmath>

#include "core/hash.hpp"
#include "data/loader.hpp"

namespace p2bw::model {

namespace {

class LayoutBuilder {
 public:
  explicit LayoutBuilder(PartLayout& part) : part_(part) {}
  void add(const std::string& name, std::vector<std::int64_t> shape, bool decay,
           bool tied = false) {
    std::int64_t count = 1;
    for (std::int64_t n : shape) count *= n;
    part_.tensors.push_back({name, part_.params, count, std::move(shape), decay, tied});
    part_.params += count;
  }

 private:
  PartLayout& part_;
};

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

EmbeddingParameters<TensorSpec> embedding_parameters(const ModelShape& shape) {
  const std::int64_t C = shape.hidden;
  return {{"wte", {shape.padded_vocab, C}, true}, {"wpe", {shape.seq_len, C}, true}};
}

BlockParameters<TensorSpec> block_parameters(const ModelShape& shape) {
  const std::int64_t C = shape.hidden;
  return {{"ln1/weight", {C}, false},
          {"ln1/bias", {C}, false},
          {"attn/qkv/weight", {3 * C, C}, true},
          {"attn/qkv/bias", {3 * C}, false},
          {"attn/proj/weight", {C, C}, true},
          {"attn/proj/bias", {C}, false},
          {"ln2/weight", {C}, false},
          {"ln2/bias", {C}, false},
          {"mlp/fc/weight", {4 * C, C}, true},
          {"mlp/fc/bias", {4 * C}, false},
          {"mlp/proj/weight", {C, 4 * C}, true},
          {"mlp/proj/bias", {C}, false}};
}

HeadParameters<TensorSpec> head_parameters(const ModelShape& shape) {
  const std::int64_t C = shape.hidden;
  return {{"lnf/weight", {C}, false},
          {"lnf/bias", {C}, false},
          {"wte", {shape.padded_vocab, C}, true, true}};
}

std::vector<PartLayout> model_parts(const ModelShape& shape) {
  std::vector<PartLayout> parts;
  // Lays the tensors of `specs` out one after another under the name prefix.
  auto part = [&](PartKind kind, int index, const std::string& prefix, auto specs) {
    PartLayout layout{kind, index, {}, 0};
    decltype(specs)::zip(
        [&](TensorSpec& spec) {
          LayoutBuilder(layout).add(prefix + spec.name, spec.shape, spec.decay, spec.tied_copy);
        },
        specs);
    parts.push_back(layout);
  };
  part(PartKind::embedding, 0, "embedding/", embedding_parameters(shape));
  for (int l = 0; l < shape.layers; ++l)
    part(PartKind::block, l, "blocks/" + std::to_string(l) + "/", block_parameters(shape));
  part(PartKind::head, 0, "head/", head_parameters(shape));
  return parts;
}

void init_tensor(const TensorInfo& tensor, const ModelShape& shape, std::uint64_t seed,
                 float* values) {
  const std::string& name = tensor.name;
  if (ends_with(name, "/bias")) {
    std::fill(values, values + tensor.count, 0.0f);
    return;
  }
  if (ends_with(name, "ln1/weight") || ends_with(name, "ln2/weight") ||
      ends_with(name, "lnf/weight")) {
    std::fill(values, values + tensor.count, 1.0f);
    return;
  }
  double stddev = 0.02;
  if (ends_with(name, "attn/proj/weight") || ends_with(name, "mlp/proj/weight"))
    stddev = 0.02 / std::sqrt(2.0 * static_cast<double>(shape.layers));
  // The tied copy draws exactly the embedding's values.
  const std::string stream_name = tensor.tied_copy ? "embedding/wte" : name;
  const std::uint64_t stream = fnv1a64(stream_name.data(), stream_name.size());
  std::int64_t real_rows = tensor.shape[0];
  if (tensor.tied_copy || name == "embedding/wte") real_rows = shape.vocab;  // padded rows stay 0
  const std::int64_t columns = tensor.count / tensor.shape[0];
  for (std::int64_t i = 0; i < tensor.count; ++i) {
    if (i / columns >= real_rows) {
      values[i] = 0.0f;
      continue;
    }
    // Box-Muller from two counter-based uniforms.
    const auto u1 =
        static_cast<double>(
            (data::random_bits(seed, stream, 2 * static_cast<std::uint64_t>(i)) >> 11) + 1) *
        0x1.0p-53;
    const auto u2 =
        static_cast<double>(
            data::random_bits(seed, stream, 2 * static_cast<std::uint64_t>(i) + 1) >> 11) *
        0x1.0p-53;
    values[i] =
        static_cast<float>(stddev * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
  }
}

}  // namespace p2bw::model
