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

std::vector<PartLayout> model_parts(const ModelShape& shape) {
  const std::int64_t C = shape.hidden, Vp = shape.padded_vocab, T = shape.seq_len;
  std::vector<PartLayout> parts;
  PartLayout embedding{PartKind::embedding, 0, {}, 0};
  LayoutBuilder(embedding).add("embedding/wte", {Vp, C}, true);
  LayoutBuilder(embedding).add("embedding/wpe", {T, C}, true);
  parts.push_back(embedding);
  for (int l = 0; l < shape.layers; ++l) {
    PartLayout block{PartKind::block, l, {}, 0};
    LayoutBuilder add(block);
    const std::string p = "blocks/" + std::to_string(l) + "/";
    add.add(p + "ln1/weight", {C}, false);
    add.add(p + "ln1/bias", {C}, false);
    add.add(p + "attn/qkv/weight", {3 * C, C}, true);
    add.add(p + "attn/qkv/bias", {3 * C}, false);
    add.add(p + "attn/proj/weight", {C, C}, true);
    add.add(p + "attn/proj/bias", {C}, false);
    add.add(p + "ln2/weight", {C}, false);
    add.add(p + "ln2/bias", {C}, false);
    add.add(p + "mlp/fc/weight", {4 * C, C}, true);
    add.add(p + "mlp/fc/bias", {4 * C}, false);
    add.add(p + "mlp/proj/weight", {C, 4 * C}, true);
    add.add(p + "mlp/proj/bias", {C}, false);
    parts.push_back(block);
  }
  PartLayout head{PartKind::head, 0, {}, 0};
  LayoutBuilder(head).add("head/lnf/weight", {C}, false);
  LayoutBuilder(head).add("head/lnf/bias", {C}, false);
  LayoutBuilder(head).add("head/wte", {Vp, C}, true, true);  // last: the tied copy
  parts.push_back(head);
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
