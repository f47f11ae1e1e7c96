// Forward and backward of GPT/BERT parts over flat buffers, as sequences of kernel calls
// (llm.c's structure); see stage_model.hpp.
#include "model/stage_model.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.hpp"
#include "kernels/attention.hpp"
#include "kernels/bf16_round.hpp"
#include "kernels/crossentropy.hpp"
#include "kernels/encoder.hpp"
#include "kernels/gelu.hpp"
#include "kernels/gemm.hpp"
#include "kernels/layernorm.hpp"
#include "kernels/matmul.hpp"
#include "kernels/reduce.hpp"
#include "kernels/residual.hpp"

namespace p2bw::model {

namespace {

using kernels::ConstFlat;
using kernels::Flat;

// Unmanaged flat views on raw pointers of the model's memory space.
Flat<float, Exec> flat(float* p, std::int64_t n) {
  return Flat<float, Exec>(p, static_cast<size_t>(n));
}
ConstFlat<float, Exec> cflat(const float* p, std::int64_t n) {
  return ConstFlat<float, Exec>(p, static_cast<size_t>(n));
}

// Views of a part's tensors (slots in layout order) over the part's range at `base`.
template <template <class> class Slots, class V, class P>
Slots<V> tensor_views(P* base, const PartLayout& layout) {
  Slots<V> views;
  size_t k = 0;
  Slots<V>::zip(
      [&](V& view) {
        const TensorInfo& tensor = layout.tensors[k++];
        view = V(base + tensor.offset, static_cast<size_t>(tensor.count));
      },
      views);
  P2BW_ASSERT(k == layout.tensors.size(), "tensor slots and part layout differ");
  return views;
}

// Views of consecutive slots of the given sizes from `base` on (llm.c's one loop over sizes).
template <template <class> class Slots>
Slots<Flat<float, Exec>> slot_views(float* base, const Slots<std::int64_t>& sizes) {
  Slots<Flat<float, Exec>> views;
  Slots<std::int64_t> counts = sizes;
  Slots<std::int64_t>::zip(
      [&](Flat<float, Exec>& view, const std::int64_t& count) {
        view = flat(base, count);
        base += count;
      },
      views, counts);
  return views;
}

// The transient buffers of forward and backward, shared by all microbatches.
template <class S>
struct WorkspaceSlots {
  S losses;     // (B, T) per-position losses
  S ping;       // (B, T, C) input gradient of every other part
  S pong;       // (B, T, C) input gradient of the parts in between
  S tmp;        // (B, T, C) LayerNorm input gradient
  S dres2;      // (B, T, C) gradient of the residual stream after attention
  S datty;      // (B, T, C) gradient of the attention output
  S dln;        // (B, T, C) gradient of a LayerNorm output
  S dqkv;       // (B, T, 3C)
  S dfch;       // (B, T, 4C) gradient of the fc output (GELU in and out, in place)
  S attention;  // attention kernels' scratch
  S colsum;     // (kRowChunks, 4C) partial column sums of the bias and LayerNorm gradients
  S logits;     // (B, T, Vp) the head's logits, then their gradient (stages with the head)

  template <class F, class... Each>
  static void zip(F&& f, Each&... s) {
    f(s.losses...), f(s.ping...), f(s.pong...), f(s.tmp...), f(s.dres2...), f(s.datty...),
        f(s.dln...), f(s.dqkv...), f(s.dfch...), f(s.attention...), f(s.colsum...), f(s.logits...);
  }
};

WorkspaceSlots<std::int64_t> workspace_sizes(const ModelShape& shape, bool has_head) {
  const int B = static_cast<int>(shape.microbatch), T = static_cast<int>(shape.seq_len);
  const int C = static_cast<int>(shape.hidden), NH = static_cast<int>(shape.heads);
  const std::int64_t n = shape.microbatch * shape.seq_len * shape.hidden;
  const std::int64_t r = shape.microbatch * shape.seq_len;
  WorkspaceSlots<std::int64_t> w;
  w.losses = r;
  w.ping = n;
  w.pong = n;
  w.tmp = n;
  w.dres2 = n;
  w.datty = n;
  w.dln = n;
  w.dqkv = 3 * n;
  w.dfch = 4 * n;
  w.attention = std::max(kernels::attention_forward_workspace(B, T, C, NH),
                         kernels::attention_backward_workspace(B, T, C, NH));
  w.colsum = kernels::column_sum_workspace(4 * C);  // the widest column sum: the fc bias
  w.logits = has_head ? r * shape.padded_vocab : 0;
  return w;
}

}  // namespace

void set_kernel_precision(const config::Deck& deck, const std::string& who, bool emulated_bf16) {
  if (deck.model.precision == config::Precision::bf16 && !emulated_bf16)
    throw UserError(fmt::format(
        "{}: model.precision: bf16 is not measured by {}: bf16 is trained as an emulation in "
        "float storage (bf16's rounding, not its memory or speed: the bf16 kernels come with the "
        "GPU work, issue 18), so its timings would mean nothing; p2bw train runs bf16, p2bw check "
        "and p2bw plan predict it (allowed here: fp32 | tf32)",
        config::where_set(deck, "model.precision"), who));
  kernels::set_tf32(deck.model.precision == config::Precision::tf32);
}

std::int64_t stage_workspace_floats(const ModelShape& shape, bool has_head) {
  std::int64_t total = 0;
  slot_offsets(workspace_sizes(shape, has_head), total);
  return total;
}

StageModel::StageModel(const config::ModelConfig& model, int microbatch_size, int first_part,
                       int end_part)
    : shape_(model, microbatch_size),
      bf16_(model.precision == config::Precision::bf16),
      first_part_(first_part),
      end_part_(end_part),
      buckets_(first_part == 0 ? shape_.microbatch * shape_.seq_len : 0) {
  const std::vector<PartLayout> all = model_parts(shape_);
  P2BW_ASSERT(0 <= first_part && first_part < end_part && end_part <= static_cast<int>(all.size()),
              "bad part range");
  for (int p = first_part; p < end_part; ++p) {
    const PartLayout& layout = all[static_cast<size_t>(p)];
    parts_.push_back({layout, params_, cache_floats_});
    for (TensorInfo tensor : layout.tensors) {
      tensor.offset += params_;
      tensors_.push_back(tensor);
    }
    params_ += layout.params;
    if (layout.kind == PartKind::block) cache_floats_ += shape_.block().activations;
    if (layout.kind == PartKind::head) cache_floats_ += shape_.head().activations;
  }
  workspace_floats_ = stage_workspace_floats(shape_, has_head());
  workspace_ = FloatView(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::workspace"),
                         static_cast<size_t>(workspace_floats_));
  std::int64_t largest_part = 0;
  for (const PartRef& part : parts_) largest_part = std::max(largest_part, part.layout.params);
  const int N = static_cast<int>(shape_.microbatch * shape_.seq_len);
  reduction_scratch_ =
      DoubleView(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::reduction_scratch"),
                 static_cast<size_t>(std::max(kernels::global_norm_partials(largest_part),
                                              kernels::classifier_mean_loss_workspace(N))));
  loss_scratch_ = DoubleView("p2bw::loss_scratch", 1);
  host_loss_ = HostMirror<DoubleView>("p2bw::host_loss", 2);
}

void StageModel::store(const Exec& exec, Flat<float, Exec> values) const {
  if (bf16_) kernels::round_to_bf16_in_place(exec, values);
}

void StageModel::round_compute_weights(const Exec& exec, FloatView weights) const {
  store(exec, flat(weights.data(), static_cast<std::int64_t>(weights.extent(0))));
}

void StageModel::init(FloatView params, std::uint64_t seed) const {
  auto host = Kokkos::create_mirror_view(params);
  for (const TensorInfo& tensor : tensors_)
    init_tensor(tensor, shape_, seed, host.data() + tensor.offset);
  Kokkos::deep_copy(params, host);
}

void StageModel::grad_square_sums(const Exec& exec, ConstFloatView grads, DoubleView sums) const {
  P2BW_ASSERT(static_cast<int>(sums.extent(0)) >= parts(), "one square sum per part");
  for (size_t p = 0; p < parts_.size(); ++p) {
    const PartRef& part = parts_[p];
    std::int64_t count = part.layout.params;
    for (const TensorInfo& tensor : part.layout.tensors)
      if (tensor.tied_copy) count -= tensor.count;  // the tied copy is the part's last tensor
    kernels::global_norm_squared<float>(exec, cflat(grads.data() + part.param_offset, count),
                                        reduction_scratch_, Flat<double, Exec>(sums.data() + p, 1));
  }
}

bool StageModel::sum_tied_gradients(const Exec& exec, FloatView grads) const {
  const TensorInfo* wte = find("embedding/wte");
  const TensorInfo* copy = find("head/wte");
  if (!wte || !copy) return false;
  auto a = Kokkos::subview(grads, std::make_pair(wte->offset, wte->offset + wte->count));
  auto b = Kokkos::subview(grads, std::make_pair(copy->offset, copy->offset + copy->count));
  Kokkos::parallel_for(
      "p2bw::tied_sum", Kokkos::RangePolicy<Exec>(exec, 0, wte->count),
      KOKKOS_LAMBDA(const std::int64_t i) {
        const float sum = a(i) + b(i);
        a(i) = sum;
        b(i) = sum;
      });
  return true;
}

const TensorInfo* StageModel::find(const std::string& name) const {
  for (const TensorInfo& tensor : tensors_)
    if (tensor.name == name) return &tensor;
  return nullptr;
}

Cache StageModel::make_cache() const {
  const auto r = static_cast<size_t>(shape_.microbatch * shape_.seq_len);
  Cache cache;
  cache.floats = FloatView(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::cache"),
                           static_cast<size_t>(cache_floats_));
  if (has_embedding()) cache.tokens = IntView("p2bw::tokens", r);
  if (has_head()) {
    cache.targets = IntView("p2bw::targets", r);
    cache.positions = DoubleView("p2bw::positions", 1);
  }
  return cache;
}

FloatView StageModel::input_slot(const Cache& cache) const {
  P2BW_ASSERT(!has_embedding(), "the embedding stage takes tokens, not activations");
  return Kokkos::subview(cache.floats, std::make_pair(std::int64_t{0}, boundary_floats()));
}

FloatView StageModel::logits() const {
  P2BW_ASSERT(has_head(), "only the stage with the head has logits");
  const WorkspaceSlots<std::int64_t> sizes = workspace_sizes(shape_, true);
  std::int64_t total = 0;
  const std::int64_t begin = slot_offsets(sizes, total).logits;
  return Kokkos::subview(workspace_, std::make_pair(begin, begin + sizes.logits));
}

void StageModel::forward_logits(const Exec& exec, ConstFloatView params, Cache& cache,
                                FloatView logits) {
  P2BW_ASSERT(has_head(), "only the stage with the head has logits");
  P2BW_ASSERT(static_cast<std::int64_t>(logits.extent(0)) ==
                  shape_.microbatch * shape_.seq_len * shape_.padded_vocab,
              "logits must be (B, T, Vp)");
  Kokkos::deep_copy(exec, cache.targets, -1);  // data::kIgnore: no loss anywhere
  forward(exec, params, cache, FloatView(), DoubleView());
  Kokkos::deep_copy(exec, logits, this->logits());
}

double StageModel::forward(const Exec& exec, ConstFloatView params, Cache& cache, FloatView out) {
  if (!has_head()) {
    forward(exec, params, cache, out, DoubleView());
    return 0.0;
  }
  Kokkos::deep_copy(exec, loss_scratch_, 0.0);
  forward(exec, params, cache, out, loss_scratch_);
  Kokkos::deep_copy(exec, Kokkos::subview(host_loss_, std::make_pair(0, 1)), loss_scratch_);
  Kokkos::deep_copy(exec, Kokkos::subview(host_loss_, std::make_pair(1, 2)), cache.positions);
  exec.fence();
  cache.loss_positions = static_cast<int>(host_loss_(1));
  return host_loss_(0);
}

void StageModel::forward(const Exec& exec, ConstFloatView params, Cache& cache, FloatView out,
                         DoubleView loss_sum) {
  const int B = static_cast<int>(shape_.microbatch), T = static_cast<int>(shape_.seq_len);
  const int C = static_cast<int>(shape_.hidden);
  for (size_t i = 0; i < parts_.size(); ++i) {
    const PartRef& part = parts_[i];
    // A part writes its output into the next part's input slot (the start of its cache range).
    float* next =
        i + 1 < parts_.size() ? cache.floats.data() + parts_[i + 1].cache_offset : out.data();
    switch (part.layout.kind) {
      case PartKind::embedding: {
        const auto w = tensor_views<EmbeddingParameters, ConstFlat<float, Exec>>(
            params.data() + part.param_offset, part.layout);
        kernels::encoder_forward<float>(exec, flat(next, boundary_floats()), cache.tokens, w.wte,
                                        w.wpe, B, T, C);
        store(exec, flat(next, boundary_floats()));
        break;
      }
      case PartKind::block:
        block_forward(exec, part, params, cache, next);
        break;
      case PartKind::head:
        head_forward(exec, part, params, cache, loss_sum);
        break;
    }
  }
}

void StageModel::block_forward(const Exec& exec, const PartRef& part, ConstFloatView params,
                               Cache& cache, float* out) {
  const int B = static_cast<int>(shape_.microbatch), T = static_cast<int>(shape_.seq_len);
  const int C = static_cast<int>(shape_.hidden), NH = static_cast<int>(shape_.heads), N = B * T;
  const std::int64_t n = boundary_floats();
  const auto a = slot_views(cache.floats.data() + part.cache_offset, shape_.block_activations());
  const auto w = tensor_views<BlockParameters, ConstFlat<float, Exec>>(
      params.data() + part.param_offset, part.layout);
  const auto ws = slot_views(workspace_.data(), workspace_sizes(shape_, has_head()));
  const bool causal = shape_.kind == config::ModelKind::gpt;
  // Under bf16 each store() rounds what the kernel before it wrote (the class comment).
  kernels::layernorm_forward<float>(exec, a.ln1, a.ln1_mean, a.ln1_rstd, a.x, w.ln1_weight,
                                    w.ln1_bias, N, C);
  store(exec, a.ln1);
  kernels::matmul_forward<float>(exec, a.qkv, a.ln1, w.qkv_weight, w.qkv_bias, N, C, 3 * C);
  store(exec, a.qkv);
  kernels::attention_forward<float>(exec, a.atty, a.att_lse, a.qkv, B, T, C, NH, causal);
  store(exec, a.atty);
  kernels::matmul_forward<float>(exec, a.res2, a.atty, w.attn_proj_weight, w.attn_proj_bias, N, C,
                                 C);
  store(exec, a.res2);  // the projection
  kernels::residual_forward<float>(exec, a.res2, a.x, a.res2, n);
  store(exec, a.res2);  // the residual sum
  kernels::layernorm_forward<float>(exec, a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, w.ln2_weight,
                                    w.ln2_bias, N, C);
  store(exec, a.ln2);
  // The fc pre-activation with its bias (the GEMM's epilogue) is stored, and GELU reads the
  // stored value, as PyTorch's bf16 autocast (a bf16 Linear, then GELU on its bf16 output): so
  // backward's GELU derivative is taken at the value forward's GELU saw.
  kernels::matmul_forward<float>(exec, a.fch, a.ln2, w.fc_weight, w.fc_bias, N, C, 4 * C);
  store(exec, a.fch);
  kernels::gelu_forward<float>(exec, a.fch_gelu, a.fch, 4 * n);
  store(exec, a.fch_gelu);
  const Flat<float, Exec> y = flat(out, n);  // (B, T, C)
  kernels::matmul_forward<float>(exec, y, a.fch_gelu, w.mlp_proj_weight, w.mlp_proj_bias, N, 4 * C,
                                 C);
  store(exec, y);  // the projection
  kernels::residual_forward<float>(exec, y, a.res2, y, n);
  store(exec, y);  // the residual sum: the block's output
}

void StageModel::head_forward(const Exec& exec, const PartRef& part, ConstFloatView params,
                              Cache& cache, DoubleView loss_sum) {
  const int N = static_cast<int>(shape_.microbatch * shape_.seq_len),
            C = static_cast<int>(shape_.hidden);
  const int V = static_cast<int>(shape_.vocab), Vp = static_cast<int>(shape_.padded_vocab);
  const auto a = slot_views(cache.floats.data() + part.cache_offset, shape_.head_activations());
  const auto w = tensor_views<HeadParameters, ConstFlat<float, Exec>>(
      params.data() + part.param_offset, part.layout);
  const auto ws = slot_views(workspace_.data(), workspace_sizes(shape_, has_head()));
  kernels::layernorm_forward<float>(exec, a.lnf, a.lnf_mean, a.lnf_rstd, a.x, w.lnf_weight,
                                    w.lnf_bias, N, C);
  store(exec, a.lnf);
  kernels::matmul_forward<float>(exec, ws.logits, a.lnf, w.wte, ConstFlat<float, Exec>(), N, C, Vp);
  store(exec, ws.logits);
  kernels::classifier_forward<float>(exec, ws.losses, a.lse, ws.logits, cache.targets, N, V, Vp);
  // The mean over positions with a target, summed in a fixed order on the device; a dropped loss
  // still counts the positions (backward's scale).
  kernels::classifier_mean_loss<float>(exec, loss_sum.data() ? loss_sum : loss_scratch_,
                                       cache.positions, ws.losses, cache.targets,
                                       reduction_scratch_, N);
}

void StageModel::backward(const Exec& exec, ConstFloatView params, FloatView grads, Cache& cache,
                          ConstFloatView dout, FloatView din, double loss_scale) {
  const int B = static_cast<int>(shape_.microbatch), T = static_cast<int>(shape_.seq_len);
  const int C = static_cast<int>(shape_.hidden);
  const std::int64_t n = boundary_floats();
  const auto ws = slot_views(workspace_.data(), workspace_sizes(shape_, has_head()));
  // Part i's input gradient goes to a ping-pong buffer, the first part's into `din`.
  const float* upstream = dout.data();
  for (size_t k = parts_.size(); k-- > 0;) {
    const PartRef& part = parts_[k];
    float* into = k == 0 ? din.data() : ((parts_.size() - k) % 2 ? ws.ping : ws.pong).data();
    switch (part.layout.kind) {
      case PartKind::embedding: {
        const auto g = tensor_views<EmbeddingParameters, Flat<float, Exec>>(
            grads.data() + part.param_offset, part.layout);
        buckets_.build(exec, cache.tokens, std::int64_t{B} * T);
        kernels::encoder_backward<float>(exec, g.wte, g.wpe, cflat(upstream, n), buckets_, B, T, C);
        break;
      }
      case PartKind::block:
        block_backward(exec, part, params, grads, cache, upstream, into);
        break;
      case PartKind::head:
        head_backward(exec, part, params, grads, cache, into, loss_scale);
        break;
    }
    upstream = into;
  }
}

void StageModel::block_backward(const Exec& exec, const PartRef& part, ConstFloatView params,
                                FloatView grads, Cache& cache, const float* dout, float* din) {
  const int B = static_cast<int>(shape_.microbatch), T = static_cast<int>(shape_.seq_len);
  const int C = static_cast<int>(shape_.hidden), NH = static_cast<int>(shape_.heads), N = B * T;
  const std::int64_t n = boundary_floats();
  const bool causal = shape_.kind == config::ModelKind::gpt;
  const auto a = slot_views(cache.floats.data() + part.cache_offset, shape_.block_activations());
  const auto w = tensor_views<BlockParameters, ConstFlat<float, Exec>>(
      params.data() + part.param_offset, part.layout);
  const auto g = tensor_views<BlockParameters, Flat<float, Exec>>(grads.data() + part.param_offset,
                                                                  part.layout);
  const auto ws = slot_views(workspace_.data(), workspace_sizes(shape_, has_head()));
  const ConstFlat<float, Exec> dy = cflat(dout, n);  // (B, T, C)
  // Under bf16 each store() rounds the activation gradient the kernel before it wrote.
  // MLP: out = res2 + proj(gelu(fc(ln2(res2))))
  kernels::matmul_backward<float>(exec, ws.dfch, g.mlp_proj_weight, g.mlp_proj_bias, dy, a.fch_gelu,
                                  w.mlp_proj_weight, N, 4 * C, C, ws.colsum);
  store(exec, ws.dfch);
  kernels::gelu_backward<float>(exec, ws.dfch, ws.dfch, a.fch, 4 * n);
  store(exec, ws.dfch);
  kernels::matmul_backward<float>(exec, ws.dln, g.fc_weight, g.fc_bias, ws.dfch, a.ln2, w.fc_weight,
                                  N, C, 4 * C, ws.colsum);
  store(exec, ws.dln);
  kernels::layernorm_backward<float>(exec, ws.tmp, g.ln2_weight, g.ln2_bias, ws.dln, a.res2,
                                     a.ln2_mean, a.ln2_rstd, w.ln2_weight, N, C, ws.colsum);
  store(exec, ws.tmp);
  kernels::residual_forward<float>(exec, ws.dres2, dy, ws.tmp, n);
  store(exec, ws.dres2);
  // Attention: res2 = x + proj(attention(qkv(ln1(x))))
  kernels::matmul_backward<float>(exec, ws.datty, g.attn_proj_weight, g.attn_proj_bias, ws.dres2,
                                  a.atty, w.attn_proj_weight, N, C, C, ws.colsum);
  store(exec, ws.datty);
  kernels::attention_backward<float>(exec, ws.dqkv, ws.datty, a.qkv, a.atty, a.att_lse,
                                     ws.attention, B, T, C, NH, causal);
  store(exec, ws.dqkv);
  kernels::matmul_backward<float>(exec, ws.dln, g.qkv_weight, g.qkv_bias, ws.dqkv, a.ln1,
                                  w.qkv_weight, N, C, 3 * C, ws.colsum);
  store(exec, ws.dln);
  kernels::layernorm_backward<float>(exec, ws.tmp, g.ln1_weight, g.ln1_bias, ws.dln, a.x,
                                     a.ln1_mean, a.ln1_rstd, w.ln1_weight, N, C, ws.colsum);
  store(exec, ws.tmp);
  kernels::residual_forward<float>(exec, flat(din, n), ws.dres2, ws.tmp, n);
  store(exec, flat(din, n));
}

void StageModel::head_backward(const Exec& exec, const PartRef& part, ConstFloatView params,
                               FloatView grads, Cache& cache, float* din, double loss_scale) {
  const int N = static_cast<int>(shape_.microbatch * shape_.seq_len),
            C = static_cast<int>(shape_.hidden);
  const int V = static_cast<int>(shape_.vocab), Vp = static_cast<int>(shape_.padded_vocab);
  const auto a = slot_views(cache.floats.data() + part.cache_offset, shape_.head_activations());
  const auto w = tensor_views<HeadParameters, ConstFlat<float, Exec>>(
      params.data() + part.param_offset, part.layout);
  const auto g = tensor_views<HeadParameters, Flat<float, Exec>>(grads.data() + part.param_offset,
                                                                 part.layout);
  const auto ws = slot_views(workspace_.data(), workspace_sizes(shape_, has_head()));
  // d(mean loss)/d(loss_i) = loss_scale / positions (counted by forward on the device); ignored
  // positions get no gradient in the kernel.
  // The logits are recomputed (one GEMM) rather than kept per microbatch: the cache holds only
  // their log-sum-exp. Their gradient overwrites them in the workspace.
  kernels::matmul_forward<float>(exec, ws.logits, a.lnf, w.wte, ConstFlat<float, Exec>(), N, C, Vp);
  store(exec, ws.logits);  // as forward stored them
  kernels::classifier_backward<float>(exec, ws.logits, ws.logits, a.lse, cache.targets,
                                      cache.positions, loss_scale, N, V, Vp);
  store(exec, ws.logits);  // their gradient
  kernels::matmul_backward<float>(exec, ws.dln, g.wte, Flat<float, Exec>(), ws.logits, a.lnf, w.wte,
                                  N, C, Vp);
  store(exec, ws.dln);
  kernels::layernorm_backward<float>(exec, flat(din, boundary_floats()), g.lnf_weight, g.lnf_bias,
                                     ws.dln, a.x, a.lnf_mean, a.lnf_rstd, w.lnf_weight, N, C,
                                     ws.colsum);
  store(exec, flat(din, boundary_floats()));
}

}  // namespace p2bw::model
