// Forward and backward of GPT/BERT parts over flat buffers, as sequences of kernel calls
// (llm.c's structure); see stage_model.hpp.
#include "model/stage_model.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.hpp"
#include "kernels/attention.hpp"
#include "kernels/crossentropy.hpp"
#include "kernels/encoder.hpp"
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
template <class T>
Flat<T, Exec> flat(T* p, std::int64_t n) {
  return Flat<T, Exec>(p, static_cast<size_t>(n));
}
template <class T>
ConstFlat<T, Exec> cflat(const T* p, std::int64_t n) {
  return ConstFlat<T, Exec>(p, static_cast<size_t>(n));
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

// Views of consecutive slots of the given sizes (llm.c's one loop over sizes), in two regions:
// the stored values from `values` on, the statistics (`statistics` true) from `stats` on. A slot
// has its view in one of the two (the other stays empty).
template <template <class> class Slots, class Store>
struct SlotViews {
  Slots<Flat<Store, Exec>> v;  // stored values
  Slots<Flat<float, Exec>> f;  // 32-bit statistics and scratch
};
template <template <class> class Slots, class Store>
SlotViews<Slots, Store> slot_views(Store* values, float* stats, const Slots<std::int64_t>& sizes,
                                   const Slots<bool>& statistics) {
  SlotViews<Slots, Store> views;
  Slots<std::int64_t> counts = sizes;
  Slots<bool> flags = statistics;
  Slots<std::int64_t>::zip(
      [&](Flat<Store, Exec>& v, Flat<float, Exec>& f, const std::int64_t& count, const bool& flag) {
        if (flag) {
          f = flat(stats, count);
          stats += count;
        } else {
          v = flat(values, count);
          values += count;
        }
      },
      views.v, views.f, counts, flags);
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

// The 32-bit workspace slots in every precision.
WorkspaceSlots<bool> workspace_statistics() {
  WorkspaceSlots<bool> s{};
  s.losses = s.attention = s.colsum = true;
  return s;
}

WorkspaceSlots<std::int64_t> workspace_sizes(const ModelShape& shape, bool has_head, bool bf16) {
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
  // Attention's host path widens bf16 storage into float copies in its workspace.
  w.attention =
      bf16
          ? std::max(kernels::attention_forward_workspace<float, kernels::bf16, Exec>(B, T, C, NH),
                     kernels::attention_backward_workspace<float, kernels::bf16, Exec>(B, T, C, NH))
          : std::max(kernels::attention_forward_workspace<float>(B, T, C, NH),
                     kernels::attention_backward_workspace<float>(B, T, C, NH));
  w.colsum = kernels::column_sum_workspace(4 * C);  // the widest column sum: the fc bias
  w.logits = has_head ? r * shape.padded_vocab : 0;
  return w;
}

// Values of the stored workspace slots and of the 32-bit ones.
struct WorkspaceCounts {
  std::int64_t stored = 0, statistics = 0;
};
WorkspaceCounts workspace_counts(const ModelShape& shape, bool has_head, bool bf16) {
  const WorkspaceSlots<std::int64_t> sizes = workspace_sizes(shape, has_head, bf16);
  std::int64_t total = 0;
  slot_offsets(sizes, total);
  const std::int64_t statistics = statistics_count(sizes, workspace_statistics());
  return {total - statistics, statistics};
}

// Views of the workspace slots over a model's two workspace buffers.
template <class Store>
SlotViews<WorkspaceSlots, Store> workspace_views(const StoreView& stored, const FloatView& stats,
                                                 const ModelShape& shape, bool has_head) {
  return slot_views(stored.as<Store>().data(), stats.data(),
                    workspace_sizes(shape, has_head, kernels::is_bf16_storage<Store>()),
                    workspace_statistics());
}

}  // namespace

void set_kernel_precision(const config::Deck& deck) {
  kernels::set_tf32(deck.model.precision == config::Precision::tf32);
}

std::int64_t stage_workspace_bytes(const ModelShape& shape, bool has_head,
                                   config::Precision precision) {
  const WorkspaceCounts counts =
      workspace_counts(shape, has_head, precision == config::Precision::bf16);
  return 4 * counts.statistics + config::compute_bytes(precision) * counts.stored;
}

std::int64_t stage_library_workspace_bytes(const ModelShape& shape, int blocks, bool has_head,
                                           config::Precision precision,
                                           kernels::GemmLibrary library) {
  const std::int64_t C = shape.hidden;
  std::vector<kernels::LinearShape> linears;
  if (blocks > 0) linears = {{C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C}};  // qkv, proj, fc, proj
  if (has_head) linears.push_back({C, shape.padded_vocab});                // logits (tied wte)
  return kernels::predicted_library_workspace_bytes(library, precision == config::Precision::bf16,
                                                    shape.microbatch * shape.seq_len, linears);
}

std::int64_t Cache::bytes() const {
  return values.bytes() +
         4 * static_cast<std::int64_t>(statistics.extent(0) + tokens.extent(0) + targets.extent(0) +
                                       buckets.positions.extent(0) + buckets.begin.extent(0) +
                                       buckets.token.extent(0));
}

StageModel::StageModel(const config::ModelConfig& model, int microbatch_size, int first_part,
                       int end_part)
    : shape_(model, microbatch_size),
      bf16_(model.precision == config::Precision::bf16),
      first_part_(first_part),
      end_part_(end_part) {
  const std::vector<PartLayout> all = model_parts(shape_);
  P2BW_ASSERT(0 <= first_part && first_part < end_part && end_part <= static_cast<int>(all.size()),
              "bad part range");
  for (int p = first_part; p < end_part; ++p) {
    const PartLayout& layout = all[static_cast<size_t>(p)];
    parts_.push_back({layout, params_, cache_values_, cache_statistics_});
    for (TensorInfo tensor : layout.tensors) {
      tensor.offset += params_;
      tensors_.push_back(tensor);
    }
    params_ += layout.params;
    PartSize size;
    if (layout.kind == PartKind::block) size = shape_.block();
    if (layout.kind == PartKind::head) size = shape_.head();
    cache_values_ += size.activations - size.activations_32bit;
    cache_statistics_ += size.activations_32bit;
  }
  const WorkspaceCounts counts = workspace_counts(shape_, has_head(), bf16_);
  workspace_ = make_stored("p2bw::workspace", counts.stored);
  workspace_stats_ =
      FloatView(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::workspace_32bit"),
                static_cast<size_t>(counts.statistics));
  std::int64_t largest_part = 0;
  for (const PartRef& part : parts_) largest_part = std::max(largest_part, part.layout.params);
  const int N = static_cast<int>(shape_.microbatch * shape_.seq_len);
  reduction_scratch_ =
      DoubleView(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::reduction_scratch"),
                 static_cast<size_t>(std::max(kernels::global_norm_partials(largest_part),
                                              kernels::classifier_mean_loss_workspace(N))));
  loss_scratch_ = DoubleView("p2bw::loss_scratch", 1);
  host_loss_ = HostMirror<DoubleView>("p2bw::host_loss", 2);
  const auto ends = [N](bool has) { return static_cast<size_t>(has ? N : 0); };
  for (int s = 0; s < kLoadSlots; ++s)
    load_slots_.push_back(
        {Kokkos::View<int*, StagingSpace>("p2bw::load_tokens", ends(has_embedding())),
         Kokkos::View<int*, StagingSpace>("p2bw::load_targets", ends(has_head())),
         kernels::EncoderBucketer<Exec, StagingSpace>(ends(has_embedding())), StreamMark()});
}

void StageModel::write_compute_weights(const Exec& exec, const StoreView& compute,
                                       ConstFloatView master) const {
  narrow_into(exec, compute, master);
}

void StageModel::init_weights(const Exec& exec, const StoreView& compute, FloatView master,
                              std::uint64_t seed) const {
  if (!master.data()) return init(compute.as<float>(), seed);
  init(master, seed);
  write_compute_weights(exec, compute, master);
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

void StageModel::add_inputs(Cache& cache) const {
  const auto r = static_cast<size_t>(shape_.microbatch * shape_.seq_len);
  if (has_embedding()) {
    cache.tokens = IntView("p2bw::tokens", r);
    cache.buckets = kernels::EncoderBuckets<Exec>(static_cast<std::int64_t>(r));
  }
  if (has_head()) cache.targets = IntView("p2bw::targets", r);
}

Cache StageModel::make_cache() const {
  Cache cache;
  cache.values = make_stored("p2bw::cache", cache_values_);
  cache.statistics = FloatView(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::cache_32bit"),
                               static_cast<size_t>(cache_statistics_));
  add_inputs(cache);
  if (has_head()) cache.positions = DoubleView("p2bw::positions", 1);
  return cache;
}

Cache StageModel::make_input_stash() const {
  Cache stash;
  if (!has_embedding()) stash.values = make_boundary("p2bw::stash");
  add_inputs(stash);
  return stash;
}

void StageModel::load(const Exec& exec, Cache& cache, const int* tokens, const int* targets) {
  P2BW_ASSERT(has_embedding() == (tokens != nullptr), "the stage with the embedding takes tokens");
  P2BW_ASSERT(has_head() || targets == nullptr, "only the stage with the head takes targets");
  LoadSlot& slot = load_slots_[next_load_slot_];
  next_load_slot_ = (next_load_slot_ + 1) % load_slots_.size();
  slot.copied.wait();  // the copies queued from this slot kLoadSlots loads ago
  const auto stage = [&exec](const int* from, const Kokkos::View<int*, StagingSpace>& via,
                             const IntView& to) {
    std::copy(from, from + via.extent(0), via.data());
    Kokkos::deep_copy(exec, to, via);
  };
  if (tokens) {
    stage(tokens, slot.tokens, cache.tokens);
    slot.bucketer.build(exec, slot.tokens.data(), cache.tokens.extent(0), cache.buckets);
  }
  if (targets) stage(targets, slot.targets, cache.targets);
  slot.copied.record(exec);
}

StoreView StageModel::input_slot(const Cache& cache) const {
  P2BW_ASSERT(!has_embedding(), "the embedding stage takes tokens, not activations");
  return cache.values.range(0, boundary_values());
}

StoreView StageModel::logits() const {
  P2BW_ASSERT(has_head(), "only the stage with the head has logits");
  const WorkspaceSlots<std::int64_t> sizes = workspace_sizes(shape_, true, bf16_);
  // The logits are the last stored slot.
  return workspace_.range(workspace_.size() - sizes.logits, workspace_.size());
}

void StageModel::forward_logits(const Exec& exec, const StoreView& params, Cache& cache,
                                FloatView logits) {
  P2BW_ASSERT(has_head(), "only the stage with the head has logits");
  P2BW_ASSERT(static_cast<std::int64_t>(logits.extent(0)) ==
                  shape_.microbatch * shape_.seq_len * shape_.padded_vocab,
              "logits must be (B, T, Vp)");
  Kokkos::deep_copy(exec, cache.targets, -1);  // data::kIgnore: no loss anywhere
  forward(exec, params, cache, StoreView(), DoubleView());
  widen_into(exec, logits, this->logits());
}

double StageModel::forward(const Exec& exec, const StoreView& params, Cache& cache,
                           const StoreView& out) {
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

void StageModel::forward(const Exec& exec, const StoreView& params, Cache& cache,
                         const StoreView& out, DoubleView loss_sum) {
  P2BW_ASSERT(params.is_bf16() == bf16_ && cache.values.is_bf16() == bf16_,
              "the weights and the cache must be in the model's storage type");
  if (bf16_)
    forward_parts<kernels::bf16>(exec, params, cache, out, loss_sum);
  else
    forward_parts<float>(exec, params, cache, out, loss_sum);
}

void StageModel::backward(const Exec& exec, const StoreView& params, FloatView grads, Cache& cache,
                          const StoreView& dout, const StoreView& din, double loss_scale) {
  P2BW_ASSERT(params.is_bf16() == bf16_ && cache.values.is_bf16() == bf16_,
              "the weights and the cache must be in the model's storage type");
  if (bf16_)
    backward_parts<kernels::bf16>(exec, params, grads, cache, dout, din, loss_scale);
  else
    backward_parts<float>(exec, params, grads, cache, dout, din, loss_scale);
}

template <class Store>
void StageModel::forward_parts(const Exec& exec, const StoreView& params, Cache& cache,
                               const StoreView& out, DoubleView loss_sum) {
  const int B = static_cast<int>(shape_.microbatch), T = static_cast<int>(shape_.seq_len);
  const int C = static_cast<int>(shape_.hidden);
  const Store* w = params.as<Store>().data();
  Store* values = cache.values.as<Store>().data();
  for (size_t i = 0; i < parts_.size(); ++i) {
    const PartRef& part = parts_[i];
    // A part writes its output into the next part's input slot (the start of its cache range).
    Store* next =
        i + 1 < parts_.size() ? values + parts_[i + 1].cache_offset : out.as<Store>().data();
    switch (part.layout.kind) {
      case PartKind::embedding: {
        const auto e = tensor_views<EmbeddingParameters, ConstFlat<Store, Exec>>(
            w + part.param_offset, part.layout);
        kernels::encoder_forward<float, Store>(exec, flat(next, boundary_values()), cache.tokens,
                                               e.wte, e.wpe, B, T, C);
        mark("embedding");
        break;
      }
      case PartKind::block:
        block_forward<Store>(exec, part, w, cache, next);
        break;
      case PartKind::head:
        head_forward<Store>(exec, part, w, cache, loss_sum);
        break;
    }
  }
}

template <class Store>
void StageModel::block_forward(const Exec& exec, const PartRef& part, const Store* params,
                               Cache& cache, Store* out) {
  const int B = static_cast<int>(shape_.microbatch), T = static_cast<int>(shape_.seq_len);
  const int C = static_cast<int>(shape_.hidden), NH = static_cast<int>(shape_.heads), N = B * T;
  const std::int64_t n = boundary_values();
  const auto cv = slot_views(cache.values.as<Store>().data() + part.cache_offset,
                             cache.statistics.data() + part.statistics_offset,
                             shape_.block_activations(), block_statistics());
  const auto& a = cv.v;   // stored activations
  const auto& st = cv.f;  // their statistics
  const auto w = tensor_views<BlockParameters, ConstFlat<Store, Exec>>(params + part.param_offset,
                                                                       part.layout);
  const auto ws = workspace_views<Store>(workspace_, workspace_stats_, shape_, has_head());
  const bool causal = shape_.kind == config::ModelKind::gpt;
  kernels::layernorm_forward<float, Store>(exec, a.ln1, st.ln1_mean, st.ln1_rstd, a.x, w.ln1_weight,
                                           w.ln1_bias, N, C);
  mark("layernorm");
  kernels::matmul_forward<float, Store>(exec, a.qkv, a.ln1, w.qkv_weight, w.qkv_bias, N, C, 3 * C);
  mark("matmul qkv");
  kernels::attention_forward<float, Store>(exec, a.atty, st.att_lse, a.qkv, B, T, C, NH, causal,
                                           ws.f.attention);
  mark("attention");
  kernels::matmul_forward<float, Store>(exec, a.res2, a.atty, w.attn_proj_weight, w.attn_proj_bias,
                                        N, C, C);
  mark("matmul attention proj");
  kernels::residual_layernorm_forward<float, Store>(exec, a.res2, a.ln2, st.ln2_mean, st.ln2_rstd,
                                                    a.x, a.res2, w.ln2_weight, w.ln2_bias, N, C);
  mark("residual + layernorm");
  // The fc pre-activation with its bias is stored for GELU's backward (see matmul_gelu_forward
  // for which value GELU reads).
  kernels::matmul_gelu_forward<float, Store>(exec, a.fch_gelu, a.fch, a.ln2, w.fc_weight, w.fc_bias,
                                             N, C, 4 * C);
  mark("matmul fc + gelu");
  const Flat<Store, Exec> y = flat(out, n);  // (B, T, C)
  kernels::matmul_forward<float, Store>(exec, y, a.fch_gelu, w.mlp_proj_weight, w.mlp_proj_bias, N,
                                        4 * C, C);
  mark("matmul mlp proj");
  kernels::residual_forward<float, Store>(exec, y, a.res2, y, n);
  mark("residual");
}

template <class Store>
void StageModel::head_forward(const Exec& exec, const PartRef& part, const Store* params,
                              Cache& cache, DoubleView loss_sum) {
  const int N = static_cast<int>(shape_.microbatch * shape_.seq_len),
            C = static_cast<int>(shape_.hidden);
  const int V = static_cast<int>(shape_.vocab), Vp = static_cast<int>(shape_.padded_vocab);
  const auto cv = slot_views(cache.values.as<Store>().data() + part.cache_offset,
                             cache.statistics.data() + part.statistics_offset,
                             shape_.head_activations(), head_statistics());
  const auto w =
      tensor_views<HeadParameters, ConstFlat<Store, Exec>>(params + part.param_offset, part.layout);
  const auto ws = workspace_views<Store>(workspace_, workspace_stats_, shape_, has_head());
  kernels::layernorm_forward<float, Store>(exec, cv.v.lnf, cv.f.lnf_mean, cv.f.lnf_rstd, cv.v.x,
                                           w.lnf_weight, w.lnf_bias, N, C);
  mark("layernorm");
  kernels::matmul_forward<float, Store>(exec, ws.v.logits, cv.v.lnf, w.wte,
                                        ConstFlat<Store, Exec>(), N, C, Vp);
  mark("matmul logits");
  kernels::classifier_forward<float, Store>(exec, ws.f.losses, cv.f.lse, ws.v.logits, cache.targets,
                                            N, V, Vp);
  mark("cross-entropy");
  // The mean over positions with a target, summed in a fixed order on the device; a dropped loss
  // still counts the positions (backward's scale).
  kernels::classifier_mean_loss<float>(exec, loss_sum.data() ? loss_sum : loss_scratch_,
                                       cache.positions, ws.f.losses, cache.targets,
                                       reduction_scratch_, N);
  mark("mean loss");
}

template <class Store>
void StageModel::backward_parts(const Exec& exec, const StoreView& params, FloatView grads,
                                Cache& cache, const StoreView& dout, const StoreView& din,
                                double loss_scale) {
  const int B = static_cast<int>(shape_.microbatch), T = static_cast<int>(shape_.seq_len);
  const int C = static_cast<int>(shape_.hidden);
  const std::int64_t n = boundary_values();
  const Store* w = params.as<Store>().data();
  const auto ws = workspace_views<Store>(workspace_, workspace_stats_, shape_, has_head());
  // Part i's input gradient goes to a ping-pong buffer, the first part's into `din`.
  const Store* upstream = dout.as<Store>().data();
  for (size_t k = parts_.size(); k-- > 0;) {
    const PartRef& part = parts_[k];
    Store* into =
        k == 0 ? din.as<Store>().data() : ((parts_.size() - k) % 2 ? ws.v.ping : ws.v.pong).data();
    switch (part.layout.kind) {
      case PartKind::embedding: {
        const auto g = tensor_views<EmbeddingParameters, Flat<float, Exec>>(
            grads.data() + part.param_offset, part.layout);
        kernels::encoder_backward<float, Store>(exec, g.wte, g.wpe, cflat(upstream, n),
                                                cache.buckets, B, T, C);
        mark("embedding");
        break;
      }
      case PartKind::block:
        block_backward<Store>(exec, part, w, grads, cache, upstream, into);
        break;
      case PartKind::head:
        head_backward<Store>(exec, part, w, grads, cache, into, loss_scale);
        break;
    }
    upstream = into;
  }
}

template <class Store>
void StageModel::block_backward(const Exec& exec, const PartRef& part, const Store* params,
                                FloatView grads, Cache& cache, const Store* dout, Store* din) {
  const int B = static_cast<int>(shape_.microbatch), T = static_cast<int>(shape_.seq_len);
  const int C = static_cast<int>(shape_.hidden), NH = static_cast<int>(shape_.heads), N = B * T;
  const std::int64_t n = boundary_values();
  const bool causal = shape_.kind == config::ModelKind::gpt;
  const auto cv = slot_views(cache.values.as<Store>().data() + part.cache_offset,
                             cache.statistics.data() + part.statistics_offset,
                             shape_.block_activations(), block_statistics());
  const auto& a = cv.v;
  const auto& st = cv.f;
  const auto w = tensor_views<BlockParameters, ConstFlat<Store, Exec>>(params + part.param_offset,
                                                                       part.layout);
  const auto g = tensor_views<BlockParameters, Flat<float, Exec>>(grads.data() + part.param_offset,
                                                                  part.layout);
  const auto wsv = workspace_views<Store>(workspace_, workspace_stats_, shape_, has_head());
  const auto& ws = wsv.v;
  const auto& wf = wsv.f;
  const ConstFlat<Store, Exec> dy = cflat(dout, n);  // (B, T, C)
  // MLP: out = res2 + proj(gelu(fc(ln2(res2))))
  kernels::matmul_backward_gelu<float, Store>(exec, ws.dfch, g.mlp_proj_weight, g.mlp_proj_bias, dy,
                                              a.fch_gelu, w.mlp_proj_weight, a.fch, N, 4 * C, C,
                                              wf.colsum);
  mark("matmul mlp proj + gelu");
  kernels::matmul_backward<float, Store>(exec, ws.dln, g.fc_weight, g.fc_bias, ws.dfch, a.ln2,
                                         w.fc_weight, N, C, 4 * C, wf.colsum);
  mark("matmul fc");
  kernels::layernorm_backward<float, Store>(exec, ws.tmp, g.ln2_weight, g.ln2_bias, ws.dln, a.res2,
                                            st.ln2_mean, st.ln2_rstd, w.ln2_weight, N, C,
                                            wf.colsum);
  mark("layernorm");
  kernels::residual_forward<float, Store>(exec, ws.dres2, dy, ws.tmp, n);
  mark("residual");
  // Attention: res2 = x + proj(attention(qkv(ln1(x))))
  kernels::matmul_backward<float, Store>(exec, ws.datty, g.attn_proj_weight, g.attn_proj_bias,
                                         ws.dres2, a.atty, w.attn_proj_weight, N, C, C, wf.colsum);
  mark("matmul attention proj");
  kernels::attention_backward<float, Store>(exec, ws.dqkv, ws.datty, a.qkv, a.atty, st.att_lse,
                                            wf.attention, B, T, C, NH, causal);
  mark("attention");
  kernels::matmul_backward<float, Store>(exec, ws.dln, g.qkv_weight, g.qkv_bias, ws.dqkv, a.ln1,
                                         w.qkv_weight, N, C, 3 * C, wf.colsum);
  mark("matmul qkv");
  kernels::layernorm_backward<float, Store>(exec, ws.tmp, g.ln1_weight, g.ln1_bias, ws.dln, a.x,
                                            st.ln1_mean, st.ln1_rstd, w.ln1_weight, N, C,
                                            wf.colsum);
  mark("layernorm");
  kernels::residual_forward<float, Store>(exec, flat(din, n), ws.dres2, ws.tmp, n);
  mark("residual");
}

template <class Store>
void StageModel::head_backward(const Exec& exec, const PartRef& part, const Store* params,
                               FloatView grads, Cache& cache, Store* din, double loss_scale) {
  const int N = static_cast<int>(shape_.microbatch * shape_.seq_len),
            C = static_cast<int>(shape_.hidden);
  const int V = static_cast<int>(shape_.vocab), Vp = static_cast<int>(shape_.padded_vocab);
  const auto cv = slot_views(cache.values.as<Store>().data() + part.cache_offset,
                             cache.statistics.data() + part.statistics_offset,
                             shape_.head_activations(), head_statistics());
  const auto w =
      tensor_views<HeadParameters, ConstFlat<Store, Exec>>(params + part.param_offset, part.layout);
  const auto g = tensor_views<HeadParameters, Flat<float, Exec>>(grads.data() + part.param_offset,
                                                                 part.layout);
  const auto ws = workspace_views<Store>(workspace_, workspace_stats_, shape_, has_head());
  // d(mean loss)/d(loss_i) = loss_scale / positions (counted by forward on the device); ignored
  // positions get no gradient in the kernel.
  // The logits are recomputed (one GEMM) rather than kept per microbatch: the cache holds only
  // their log-sum-exp. Their gradient overwrites them in the workspace.
  kernels::matmul_forward<float, Store>(exec, ws.v.logits, cv.v.lnf, w.wte,
                                        ConstFlat<Store, Exec>(), N, C, Vp);
  mark("matmul logits");
  kernels::classifier_backward<float, Store>(exec, ws.v.logits, ws.v.logits, cv.f.lse,
                                             cache.targets, cache.positions, loss_scale, N, V, Vp);
  mark("cross-entropy");
  kernels::matmul_backward<float, Store>(exec, ws.v.dln, g.wte, Flat<float, Exec>(), ws.v.logits,
                                         cv.v.lnf, w.wte, N, C, Vp);
  mark("matmul logits");
  kernels::layernorm_backward<float, Store>(exec, flat(din, boundary_values()), g.lnf_weight,
                                            g.lnf_bias, ws.v.dln, cv.v.x, cv.f.lnf_mean,
                                            cv.f.lnf_rstd, w.lnf_weight, N, C, ws.f.colsum);
  mark("layernorm");
}

}  // namespace p2bw::model
