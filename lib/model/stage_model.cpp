// Forward and backward of GPT/BERT parts over flat buffers, as sequences of kernel calls
// (llm.c's structure); see stage_model.hpp.
#include "model/stage_model.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "kernels/attention.hpp"
#include "kernels/crossentropy.hpp"
#include "kernels/encoder.hpp"
#include "kernels/gelu.hpp"
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

// Saved activations of a block, as offsets into its cache range (n = BTC, r = BT, a = B·NH·T·T).
struct BlockCache {
  std::int64_t x, ln1, ln1_mean, ln1_rstd, qkv, att, atty, res2, ln2, ln2_mean, ln2_rstd, fch,
      fch_gelu, end;
  BlockCache(std::int64_t n, std::int64_t r, std::int64_t a)
      : x(0),
        ln1(n),
        ln1_mean(2 * n),
        ln1_rstd(2 * n + r),
        qkv(2 * n + 2 * r),
        att(5 * n + 2 * r),
        atty(5 * n + 2 * r + a),
        res2(6 * n + 2 * r + a),
        ln2(7 * n + 2 * r + a),
        ln2_mean(8 * n + 2 * r + a),
        ln2_rstd(8 * n + 3 * r + a),
        fch(8 * n + 4 * r + a),
        fch_gelu(12 * n + 4 * r + a),
        end(16 * n + 4 * r + a) {}
};

// Saved activations of the head (p = B·T·Vp).
struct HeadCache {
  std::int64_t x, lnf, mean, rstd, probs, end;
  HeadCache(std::int64_t n, std::int64_t r, std::int64_t p)
      : x(0), lnf(n), mean(2 * n), rstd(2 * n + r), probs(2 * n + 2 * r), end(2 * n + 2 * r + p) {}
};

// Transient buffers, offsets into the workspace.
struct Workspace {
  std::int64_t losses, dlosses, ping, pong, tmp, dres2, datty, dln, dqkv, d4a, d4b, attention, end;
  Workspace(std::int64_t n, std::int64_t r, std::int64_t attention_floats)
      : losses(0),
        dlosses(r),
        ping(2 * r),
        pong(2 * r + n),
        tmp(2 * r + 2 * n),
        dres2(2 * r + 3 * n),
        datty(2 * r + 4 * n),
        dln(2 * r + 5 * n),
        dqkv(2 * r + 6 * n),
        d4a(2 * r + 9 * n),
        d4b(2 * r + 13 * n),
        attention(2 * r + 17 * n),
        end(2 * r + 17 * n + attention_floats) {}
};

}  // namespace

std::int64_t stage_workspace_floats(const ModelShape& shape) {
  const int B = static_cast<int>(shape.microbatch), T = static_cast<int>(shape.seq_len);
  const int C = static_cast<int>(shape.hidden), NH = static_cast<int>(shape.heads);
  const std::int64_t attention = std::max(kernels::attention_forward_workspace(B, T, C, NH),
                                          kernels::attention_backward_workspace(B, T, C, NH));
  return Workspace(shape.microbatch * shape.seq_len * shape.hidden,
                   shape.microbatch * shape.seq_len, attention)
      .end;
}

StageModel::StageModel(const config::ModelConfig& model, int microbatch_size, int first_part,
                       int end_part)
    : shape_(model, microbatch_size), first_part_(first_part), end_part_(end_part) {
  const std::vector<PartLayout> all = model_parts(shape_);
  P2BW_ASSERT(0 <= first_part && first_part < end_part && end_part <= static_cast<int>(all.size()),
              "bad part range");
  const std::int64_t n = boundary_floats(), r = shape_.microbatch * shape_.seq_len;
  const std::int64_t a = shape_.microbatch * shape_.heads * shape_.seq_len * shape_.seq_len;
  for (int p = first_part; p < end_part; ++p) {
    const PartLayout& layout = all[static_cast<size_t>(p)];
    parts_.push_back({layout, params_, cache_floats_});
    for (TensorInfo tensor : layout.tensors) {
      tensor.offset += params_;
      tensors_.push_back(tensor);
    }
    params_ += layout.params;
    if (layout.kind == PartKind::block) cache_floats_ += BlockCache(n, r, a).end;
    if (layout.kind == PartKind::head)
      cache_floats_ += HeadCache(n, r, r * shape_.padded_vocab).end;
  }
  workspace_floats_ = stage_workspace_floats(shape_);
  workspace_ = FloatView(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::workspace"),
                         static_cast<size_t>(workspace_floats_));
}

void StageModel::init(FloatView params, std::uint64_t seed) const {
  auto host = Kokkos::create_mirror_view(params);
  for (const TensorInfo& tensor : tensors_)
    init_tensor(tensor, shape_, seed, host.data() + tensor.offset);
  Kokkos::deep_copy(params, host);
}

std::vector<double> StageModel::grad_square_sums(const Exec& exec, ConstFloatView grads) const {
  std::vector<double> sums;
  for (const PartRef& part : parts_) {
    std::int64_t count = part.layout.params;
    for (const TensorInfo& tensor : part.layout.tensors)
      if (tensor.tied_copy) count -= tensor.count;  // the tied copy is the part's last tensor
    sums.push_back(
        kernels::global_norm_squared<float>(exec, cflat(grads.data() + part.param_offset, count)));
  }
  return sums;
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
  if (has_head()) cache.targets = IntView("p2bw::targets", r);
  return cache;
}

FloatView StageModel::input_slot(const Cache& cache) const {
  P2BW_ASSERT(!has_embedding(), "the embedding stage takes tokens, not activations");
  return Kokkos::subview(cache.floats, std::make_pair(std::int64_t{0}, boundary_floats()));
}

FloatView StageModel::probabilities(const Cache& cache) const {
  P2BW_ASSERT(has_head(), "only the stage with the head has probabilities");
  const std::int64_t n = boundary_floats(), r = shape_.microbatch * shape_.seq_len;
  const HeadCache at(n, r, r * shape_.padded_vocab);
  const std::int64_t begin = parts_.back().cache_offset + at.probs;
  return Kokkos::subview(cache.floats, std::make_pair(begin, begin + r * shape_.padded_vocab));
}

double StageModel::forward(const Exec& exec, ConstFloatView params, Cache& cache, FloatView out) {
  forward_to_head(exec, params, cache, out);
  return has_head() ? head_forward(exec, parts_.back(), params, cache) : 0.0;
}

void StageModel::forward_logits(const Exec& exec, ConstFloatView params, Cache& cache,
                                FloatView logits) {
  P2BW_ASSERT(has_head(), "only the stage with the head has logits");
  P2BW_ASSERT(static_cast<std::int64_t>(logits.extent(0)) ==
                  shape_.microbatch * shape_.seq_len * shape_.padded_vocab,
              "logits must be (B, T, Vp)");
  forward_to_head(exec, params, cache, FloatView());
  head_logits(exec, parts_.back(), params, cache, logits.data());
}

void StageModel::forward_to_head(const Exec& exec, ConstFloatView params, Cache& cache,
                                 FloatView out) {
  const int B = static_cast<int>(shape_.microbatch), T = static_cast<int>(shape_.seq_len);
  const int C = static_cast<int>(shape_.hidden);
  const size_t body = has_head() ? parts_.size() - 1 : parts_.size();
  for (size_t i = 0; i < body; ++i) {
    const PartRef& part = parts_[i];
    // A part writes its output into the next part's input slot (the start of its cache range).
    float* next =
        i + 1 < parts_.size() ? cache.floats.data() + parts_[i + 1].cache_offset : out.data();
    switch (part.layout.kind) {
      case PartKind::embedding: {
        const float* wte = params.data() + part.param_offset;
        kernels::encoder_forward<float>(
            exec, flat(next, boundary_floats()), cache.tokens, cflat(wte, shape_.padded_vocab * C),
            cflat(wte + shape_.padded_vocab * C, shape_.seq_len * C), B, T, C);
        break;
      }
      case PartKind::block:
        block_forward(exec, part, params, cache, next);
        break;
      case PartKind::head:
        P2BW_ASSERT(false, "the head is the stage's last part");
        break;
    }
  }
}

void StageModel::block_forward(const Exec& exec, const PartRef& part, ConstFloatView params,
                               Cache& cache, float* out) {
  const int B = static_cast<int>(shape_.microbatch), T = static_cast<int>(shape_.seq_len);
  const int C = static_cast<int>(shape_.hidden), NH = static_cast<int>(shape_.heads), N = B * T;
  const std::int64_t n = boundary_floats(), r = N;
  const BlockCache at(n, r, std::int64_t{B} * NH * T * T);
  const Workspace ws(n, r, 0);
  float* c = cache.floats.data() + part.cache_offset;
  const float* w = params.data() + part.param_offset;
  const auto& t = part.layout.tensors;  // ln1 w/b, qkv w/b, proj w/b, ln2 w/b, fc w/b, mlp proj w/b
  auto param = [&](int k) { return cflat(w + t[k].offset, t[k].count); };
  const bool causal = shape_.kind == config::ModelKind::gpt;
  kernels::layernorm_forward<float>(exec, flat(c + at.ln1, n), flat(c + at.ln1_mean, r),
                                    flat(c + at.ln1_rstd, r), cflat(c + at.x, n), param(0),
                                    param(1), N, C);
  kernels::matmul_forward<float>(exec, flat(c + at.qkv, 3 * n), cflat(c + at.ln1, n), param(2),
                                 param(3), N, C, 3 * C);
  kernels::attention_forward<float>(
      exec, flat(c + at.atty, n), flat(c + at.att, at.atty - at.att), cflat(c + at.qkv, 3 * n),
      flat(workspace_.data() + ws.attention, workspace_floats_ - ws.attention), B, T, C, NH,
      causal);
  kernels::matmul_forward<float>(exec, flat(c + at.res2, n), cflat(c + at.atty, n), param(4),
                                 param(5), N, C, C);
  kernels::residual_forward<float>(exec, flat(c + at.res2, n), cflat(c + at.x, n),
                                   cflat(c + at.res2, n), n);
  kernels::layernorm_forward<float>(exec, flat(c + at.ln2, n), flat(c + at.ln2_mean, r),
                                    flat(c + at.ln2_rstd, r), cflat(c + at.res2, n), param(6),
                                    param(7), N, C);
  kernels::matmul_forward<float>(exec, flat(c + at.fch, 4 * n), cflat(c + at.ln2, n), param(8),
                                 ConstFlat<float, Exec>(), N, C, 4 * C);
  kernels::bias_gelu_forward<float>(exec, flat(c + at.fch_gelu, 4 * n), flat(c + at.fch, 4 * n),
                                    param(9), N, 4 * C);
  kernels::matmul_forward<float>(exec, flat(out, n), cflat(c + at.fch_gelu, 4 * n), param(10),
                                 param(11), N, 4 * C, C);
  kernels::residual_forward<float>(exec, flat(out, n), cflat(c + at.res2, n), cflat(out, n), n);
}

void StageModel::head_logits(const Exec& exec, const PartRef& part, ConstFloatView params,
                             Cache& cache, float* logits) {
  const int N = static_cast<int>(shape_.microbatch * shape_.seq_len),
            C = static_cast<int>(shape_.hidden);
  const int Vp = static_cast<int>(shape_.padded_vocab);
  const std::int64_t n = boundary_floats();
  const HeadCache at(n, N, std::int64_t{N} * Vp);
  float* c = cache.floats.data() + part.cache_offset;
  const float* w = params.data() + part.param_offset;
  const auto& t = part.layout.tensors;  // lnf w/b, tied wte
  kernels::layernorm_forward<float>(exec, flat(c + at.lnf, n), flat(c + at.mean, N),
                                    flat(c + at.rstd, N), cflat(c + at.x, n),
                                    cflat(w + t[0].offset, C), cflat(w + t[1].offset, C), N, C);
  kernels::matmul_forward<float>(exec, flat(logits, std::int64_t{N} * Vp), cflat(c + at.lnf, n),
                                 cflat(w + t[2].offset, t[2].count), ConstFlat<float, Exec>(), N, C,
                                 Vp);
}

double StageModel::head_forward(const Exec& exec, const PartRef& part, ConstFloatView params,
                                Cache& cache) {
  const int N = static_cast<int>(shape_.microbatch * shape_.seq_len);
  const int V = static_cast<int>(shape_.vocab), Vp = static_cast<int>(shape_.padded_vocab);
  const std::int64_t n = boundary_floats();
  const HeadCache at(n, N, std::int64_t{N} * Vp);
  const Workspace ws(n, N, 0);
  float* c = cache.floats.data() + part.cache_offset;
  const std::int64_t probs = std::int64_t{N} * Vp;
  head_logits(exec, part, params, cache, c + at.probs);
  float* losses = workspace_.data() + ws.losses;
  kernels::crossentropy_forward<float>(exec, flat(losses, N), flat(c + at.probs, probs),
                                       cflat(c + at.probs, probs), cache.targets, N, V, Vp);
  // The mean over positions with a target, summed in position order on the host (deterministic).
  auto host_losses = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), flat(losses, N));
  auto host_targets = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), cache.targets);
  double sum = 0.0;
  cache.loss_positions = 0;
  for (int i = 0; i < N; ++i) {
    if (host_targets(i) < 0) continue;
    sum += host_losses(i);
    ++cache.loss_positions;
  }
  return cache.loss_positions > 0 ? sum / cache.loss_positions : 0.0;
}

void StageModel::backward(const Exec& exec, ConstFloatView params, FloatView grads, Cache& cache,
                          ConstFloatView dout, FloatView din, double loss_scale) {
  const int B = static_cast<int>(shape_.microbatch), T = static_cast<int>(shape_.seq_len);
  const int C = static_cast<int>(shape_.hidden);
  const std::int64_t n = boundary_floats();
  const Workspace ws(n, B * T, 0);
  // Part i's input gradient goes to a ping-pong buffer, the first part's into `din`.
  const float* upstream = dout.data();
  for (size_t k = parts_.size(); k-- > 0;) {
    const PartRef& part = parts_[k];
    float* into =
        k == 0 ? din.data() : workspace_.data() + ((parts_.size() - k) % 2 ? ws.ping : ws.pong);
    switch (part.layout.kind) {
      case PartKind::embedding: {
        float* g = grads.data() + part.param_offset;
        kernels::encoder_backward<float>(exec, flat(g, shape_.padded_vocab * C),
                                         flat(g + shape_.padded_vocab * C, shape_.seq_len * C),
                                         cflat(upstream, n), cache.tokens, B, T, C);
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
  const std::int64_t n = boundary_floats(), r = N;
  const BlockCache at(n, r, std::int64_t{B} * NH * T * T);
  const Workspace ws(n, r, 0);
  const float* c = cache.floats.data() + part.cache_offset;
  const float* w = params.data() + part.param_offset;
  float* g = grads.data() + part.param_offset;
  float* s = workspace_.data();
  const auto& t = part.layout.tensors;
  auto param = [&](int k) { return cflat(w + t[k].offset, t[k].count); };
  auto grad = [&](int k) { return flat(g + t[k].offset, t[k].count); };
  // MLP: out = res2 + proj(gelu(fc(ln2(res2))))
  kernels::matmul_backward<float>(exec, flat(s + ws.d4a, 4 * n), grad(10), grad(11), cflat(dout, n),
                                  cflat(c + at.fch_gelu, 4 * n), param(10), N, 4 * C, C);
  kernels::gelu_backward<float>(exec, flat(s + ws.d4a, 4 * n), cflat(s + ws.d4a, 4 * n),
                                cflat(c + at.fch, 4 * n), 4 * n);
  kernels::matmul_backward<float>(exec, flat(s + ws.dln, n), grad(8), grad(9),
                                  cflat(s + ws.d4a, 4 * n), cflat(c + at.ln2, n), param(8), N, C,
                                  4 * C);
  kernels::layernorm_backward<float>(
      exec, flat(s + ws.tmp, n), grad(6), grad(7), cflat(s + ws.dln, n), cflat(c + at.res2, n),
      cflat(c + at.ln2_mean, r), cflat(c + at.ln2_rstd, r), param(6), N, C);
  kernels::residual_forward<float>(exec, flat(s + ws.dres2, n), cflat(dout, n),
                                   cflat(s + ws.tmp, n), n);
  // Attention: res2 = x + proj(attention(qkv(ln1(x))))
  kernels::matmul_backward<float>(exec, flat(s + ws.datty, n), grad(4), grad(5),
                                  cflat(s + ws.dres2, n), cflat(c + at.atty, n), param(4), N, C, C);
  kernels::attention_backward<float>(exec, flat(s + ws.dqkv, 3 * n), cflat(s + ws.datty, n),
                                     cflat(c + at.qkv, 3 * n), cflat(c + at.att, at.atty - at.att),
                                     flat(s + ws.attention, workspace_floats_ - ws.attention), B, T,
                                     C, NH);
  kernels::matmul_backward<float>(exec, flat(s + ws.dln, n), grad(2), grad(3),
                                  cflat(s + ws.dqkv, 3 * n), cflat(c + at.ln1, n), param(2), N, C,
                                  3 * C);
  kernels::layernorm_backward<float>(
      exec, flat(s + ws.tmp, n), grad(0), grad(1), cflat(s + ws.dln, n), cflat(c + at.x, n),
      cflat(c + at.ln1_mean, r), cflat(c + at.ln1_rstd, r), param(0), N, C);
  kernels::residual_forward<float>(exec, flat(din, n), cflat(s + ws.dres2, n), cflat(s + ws.tmp, n),
                                   n);
}

void StageModel::head_backward(const Exec& exec, const PartRef& part, ConstFloatView params,
                               FloatView grads, Cache& cache, float* din, double loss_scale) {
  const int N = static_cast<int>(shape_.microbatch * shape_.seq_len),
            C = static_cast<int>(shape_.hidden);
  const int V = static_cast<int>(shape_.vocab), Vp = static_cast<int>(shape_.padded_vocab);
  const std::int64_t n = boundary_floats(), probs = std::int64_t{N} * Vp;
  const HeadCache at(n, N, probs);
  const Workspace ws(n, N, 0);
  float* c = cache.floats.data() + part.cache_offset;
  const float* w = params.data() + part.param_offset;
  float* g = grads.data() + part.param_offset;
  const auto& t = part.layout.tensors;
  // d(mean loss)/d(loss_i) = 1 / positions; ignored positions get no gradient in the kernel.
  const float scale =
      cache.loss_positions > 0 ? static_cast<float>(loss_scale / cache.loss_positions) : 0.0f;
  Kokkos::deep_copy(exec, flat(workspace_.data() + ws.dlosses, N), scale);
  // dlogits overwrite the probabilities in the cache (consumed).
  kernels::crossentropy_backward<float>(exec, flat(c + at.probs, probs),
                                        cflat(workspace_.data() + ws.dlosses, N),
                                        cflat(c + at.probs, probs), cache.targets, N, V, Vp);
  kernels::matmul_backward<float>(exec, flat(workspace_.data() + ws.dln, n),
                                  flat(g + t[2].offset, t[2].count), Flat<float, Exec>(),
                                  cflat(c + at.probs, probs), cflat(c + at.lnf, n),
                                  cflat(w + t[2].offset, t[2].count), N, C, Vp);
  kernels::layernorm_backward<float>(exec, flat(din, n), flat(g + t[0].offset, C),
                                     flat(g + t[1].offset, C), cflat(workspace_.data() + ws.dln, n),
                                     cflat(c + at.x, n), cflat(c + at.mean, N),
                                     cflat(c + at.rstd, N), cflat(w + t[0].offset, C), N, C);
}

}  // namespace p2bw::model
