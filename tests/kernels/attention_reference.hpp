// The reference attention of the tests (p2bw's kernel before the flash-style one in
// kernels/attention.hpp): it materialises the probabilities (B, NH, T, T).
// Multi-head scaled dot-product attention, causal (GPT) or bidirectional (BERT), from the fused
// qkv projection (B, T, 3C) (llm.c layout: q, k, v blocks of C channels, head h at channels
// [h*hs, (h+1)*hs), hs = C / NH) to the attention output (B, T, C), before the output projection.
// Heads are split into (B*NH, T, hs) batches, scores and values go through strided-batched GEMMs,
// and the mask, scaling and softmax are one fused row kernel. Forward keeps only the probabilities
// att (B, NH, T, T); backward recomputes the head split from qkv (the block keeps qkv anyway).
// Scratch comes from a caller-provided workspace (sizes below), so no allocation per call.
#pragma once

#include "kernels/gemm.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels::reference {

// Workspace elements for attention_forward: q, k, v and the per-head output, 4 * B*T*C.
inline index_t attention_forward_workspace(int B, int T, int C, int /*NH*/) {
  return 4 * static_cast<index_t>(B) * T * C;
}

// Workspace elements for attention_backward: q, k, v, dy (reused for dq), dk, dv (6 * B*T*C) and
// the probability gradient (B, NH, T, T).
inline index_t attention_backward_workspace(int B, int T, int C, int NH) {
  return 6 * static_cast<index_t>(B) * T * C + static_cast<index_t>(B) * NH * T * T;
}

namespace impl {
using namespace p2bw::kernels::detail;

inline void check_attention_dims(int B, int T, int C, int NH, const char* who) {
  require(
      B >= 0 && T >= 0 && C >= 0 && NH > 0 && C % NH == 0, who,
      "needs NH > 0 dividing C (C = " + std::to_string(C) + ", NH = " + std::to_string(NH) + ")");
}

// q, k, v (B, NH, T, hs) <- qkv (B, T, 3C).
template <class Real, class Exec>
void split_qkv(const Exec& exec, Flat<Real, Exec> q, Flat<Real, Exec> k, Flat<Real, Exec> v,
               ConstFlat<Real, Exec> qkv, int B, int T, int C, int NH) {
  const int hs = C / NH;
  Kokkos::parallel_for(
      "p2bw::attention_split_qkv",
      Kokkos::RangePolicy<Exec>(exec, 0, static_cast<index_t>(B) * T * C),
      KOKKOS_LAMBDA(const index_t i) {  // i indexes (b, h, t, d)
        const int d = static_cast<int>(i % hs);
        const int t = static_cast<int>((i / hs) % T);
        const int h = static_cast<int>((i / (static_cast<index_t>(hs) * T)) % NH);
        const index_t b = i / (static_cast<index_t>(C) * T);
        const index_t src = (b * T + t) * 3 * C + h * hs + d;
        q(i) = qkv(src);
        k(i) = qkv(src + C);
        v(i) = qkv(src + 2 * C);
      });
}

// Index in (B, NH, T, hs) of element i of a (B, T, C) tensor.
KOKKOS_INLINE_FUNCTION index_t head_index(index_t i, int T, int C, int NH) {
  const int hs = C / NH;
  const int c = static_cast<int>(i % C);
  const index_t bt = i / C;
  const index_t b = bt / T;
  const int t = static_cast<int>(bt % T);
  return ((b * NH + c / hs) * T + t) * hs + c % hs;
}

// y (B, NH, T, hs) <- x (B, T, C).
template <class Real, class Exec>
void to_heads(const Exec& exec, Flat<Real, Exec> y, ConstFlat<Real, Exec> x, int B, int T, int C,
              int NH) {
  Kokkos::parallel_for(
      "p2bw::attention_to_heads",
      Kokkos::RangePolicy<Exec>(exec, 0, static_cast<index_t>(B) * T * C),
      KOKKOS_LAMBDA(const index_t i) { y(head_index(i, T, C, NH)) = x(i); });
}

// x (B, T, C) <- y (B, NH, T, hs).
template <class Real, class Exec>
void from_heads(const Exec& exec, Flat<Real, Exec> x, ConstFlat<Real, Exec> y, int B, int T, int C,
                int NH) {
  Kokkos::parallel_for(
      "p2bw::attention_from_heads",
      Kokkos::RangePolicy<Exec>(exec, 0, static_cast<index_t>(B) * T * C),
      KOKKOS_LAMBDA(const index_t i) { x(i) = y(head_index(i, T, C, NH)); });
}

// dqkv (B, T, 3C) <- dq, dk, dv (B, NH, T, hs).
template <class Real, class Exec>
void merge_dqkv(const Exec& exec, Flat<Real, Exec> dqkv, ConstFlat<Real, Exec> dq,
                ConstFlat<Real, Exec> dk, ConstFlat<Real, Exec> dv, int B, int T, int C, int NH) {
  const int hs = C / NH;
  Kokkos::parallel_for(
      "p2bw::attention_merge_dqkv",
      Kokkos::RangePolicy<Exec>(exec, 0, 3 * static_cast<index_t>(B) * T * C),
      KOKKOS_LAMBDA(const index_t i) {  // i indexes (b, t, 3C)
        const int j = static_cast<int>(i % (3 * C));
        const index_t bt = i / (3 * C);
        const index_t b = bt / T;
        const int t = static_cast<int>(bt % T);
        const int which = j / C, c = j % C;
        const int h = c / hs, d = c % hs;
        const index_t src = ((b * NH + h) * T + t) * hs + d;
        dqkv(i) = which == 0 ? dq(src) : (which == 1 ? dk(src) : dv(src));
      });
}

// In place on rows of att (rows, T): row r is query position t = r % T; with causal masking only
// keys j <= t take part. att = softmax over the allowed keys, exactly 0 on the masked ones.
template <class Real, class Exec>
void masked_softmax_rows(const Exec& exec, Flat<Real, Exec> att, int rows, int T, bool causal) {
  Kokkos::parallel_for(
      "p2bw::attention_softmax", Kokkos::TeamPolicy<Exec>(exec, rows, Kokkos::AUTO),
      KOKKOS_LAMBDA(const Team<Exec>& team) {
        const index_t base = static_cast<index_t>(team.league_rank()) * T;
        const int allowed = causal ? team.league_rank() % T + 1 : T;
        Real maxv = math::lowest<Real>();
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, allowed),
            [&](const int j, Real& m) { m = math::max(m, att(base + j)); },
            Kokkos::Max<Real>(maxv));
        Real sum = Real(0);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, allowed),
            [&](const int j, Real& s) { s += math::exp(att(base + j) - maxv); }, sum);
        const Real inv_sum = Real(1) / sum;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, T), [&](const int j) {
          att(base + j) = j < allowed ? math::exp(att(base + j) - maxv) * inv_sum : Real(0);
        });
      });
}

// In place on rows of datt: dscores = att * (datt - sum_j att_j * datt_j). Masked entries have
// att = 0 and get 0.
template <class Real, class Exec>
void softmax_backward_rows(const Exec& exec, Flat<Real, Exec> datt, ConstFlat<Real, Exec> att,
                           int rows, int T) {
  Kokkos::parallel_for(
      "p2bw::attention_softmax_backward", Kokkos::TeamPolicy<Exec>(exec, rows, Kokkos::AUTO),
      KOKKOS_LAMBDA(const Team<Exec>& team) {
        const index_t base = static_cast<index_t>(team.league_rank()) * T;
        Real dot = Real(0);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, T),
            [&](const int j, Real& s) { s += att(base + j) * datt(base + j); }, dot);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, T), [&](const int j) {
          datt(base + j) = att(base + j) * (datt(base + j) - dot);
        });
      });
}

template <class Real, class Exec>
MatrixBatch<Real, Exec> heads(Real* p, int BNH, int rows, int cols) {
  return MatrixBatch<Real, Exec>(p, BNH, rows, cols);
}

}  // namespace impl

// out = concat over heads of softmax(mask(q k^T / sqrt(hs))) v.
template <class Real, class Exec>
void attention_forward(const Exec& exec, Flat<Real, Exec> out,  // (B, T, C)
                       Flat<Real, Exec> att,                    // (B, NH, T, T), saved for backward
                       ConstFlat<Real, Exec> qkv,               // (B, T, 3C)
                       Flat<Real, Exec> workspace,  // (attention_forward_workspace(B, T, C, NH))
                       int B, int T, int C, int NH, bool causal) {
  impl::check_attention_dims(B, T, C, NH, "attention_forward");
  const index_t BTC = static_cast<index_t>(B) * T * C;
  detail::require_size(out, BTC, "attention_forward", "out");
  detail::require_size(att, static_cast<index_t>(B) * NH * T * T, "attention_forward", "att");
  detail::require_size(qkv, 3 * BTC, "attention_forward", "qkv");
  detail::require_size(workspace, attention_forward_workspace(B, T, C, NH), "attention_forward",
                       "workspace");
  if (BTC == 0) return;
  const int hs = C / NH, BNH = B * NH;
  Real* ws = workspace.data();
  const Flat<Real, Exec> q(ws, BTC), k(ws + BTC, BTC), v(ws + 2 * BTC, BTC);  // (B, NH, T, hs)
  const Flat<Real, Exec> y(ws + 3 * BTC, BTC);                                // (B, NH, T, hs)
  impl::split_qkv<Real>(exec, q, k, v, qkv, B, T, C, NH);
  const Real scale = Real(1) / math::sqrt(static_cast<Real>(hs));
  gemm_batched<Real>(exec, Trans::N, Trans::T, scale,
                     impl::heads<const Real, Exec>(q.data(), BNH, T, hs),
                     impl::heads<const Real, Exec>(k.data(), BNH, T, hs), Real(0),
                     impl::heads<Real, Exec>(att.data(), BNH, T, T));
  impl::masked_softmax_rows<Real>(exec, att, BNH * T, T, causal);
  gemm_batched<Real>(exec, Trans::N, Trans::N, Real(1),
                     impl::heads<const Real, Exec>(att.data(), BNH, T, T),
                     impl::heads<const Real, Exec>(v.data(), BNH, T, hs), Real(0),
                     impl::heads<Real, Exec>(y.data(), BNH, T, hs));
  impl::from_heads<Real>(exec, out, y, B, T, C, NH);
}

// dqkv (assigned) from dout, given the forward's qkv and probabilities att. The mask is implied
// by att (masked probabilities are exactly 0), so backward takes no causal flag.
template <class Real, class Exec>
void attention_backward(const Exec& exec, Flat<Real, Exec> dqkv,  // (B, T, 3C), assigned
                        ConstFlat<Real, Exec> dout,               // (B, T, C)
                        ConstFlat<Real, Exec> qkv,                // (B, T, 3C)
                        ConstFlat<Real, Exec> att,                // (B, NH, T, T)
                        Flat<Real, Exec> workspace,  // (attention_backward_workspace(B, T, C, NH))
                        int B, int T, int C, int NH) {
  impl::check_attention_dims(B, T, C, NH, "attention_backward");
  const index_t BTC = static_cast<index_t>(B) * T * C;
  detail::require_size(dqkv, 3 * BTC, "attention_backward", "dqkv");
  detail::require_size(dout, BTC, "attention_backward", "dout");
  detail::require_size(qkv, 3 * BTC, "attention_backward", "qkv");
  detail::require_size(att, static_cast<index_t>(B) * NH * T * T, "attention_backward", "att");
  detail::require_size(workspace, attention_backward_workspace(B, T, C, NH), "attention_backward",
                       "workspace");
  if (BTC == 0) return;
  const int hs = C / NH, BNH = B * NH;
  Real* ws = workspace.data();
  const Flat<Real, Exec> q(ws, BTC), k(ws + BTC, BTC), v(ws + 2 * BTC, BTC);  // (B, NH, T, hs)
  const Flat<Real, Exec> dy(ws + 3 * BTC, BTC);  // (B, NH, T, hs), later dq
  const Flat<Real, Exec> dk(ws + 4 * BTC, BTC);  // (B, NH, T, hs)
  const Flat<Real, Exec> dv(ws + 5 * BTC, BTC);  // (B, NH, T, hs)
  const Flat<Real, Exec> datt(ws + 6 * BTC, static_cast<index_t>(BNH) * T * T);  // (B, NH, T, T)
  using impl::heads;
  impl::split_qkv<Real>(exec, q, k, v, qkv, B, T, C, NH);
  impl::to_heads<Real>(exec, dy, dout, B, T, C, NH);
  // datt = dy v^T, dv = att^T dy
  gemm_batched<Real>(exec, Trans::N, Trans::T, Real(1),
                     heads<const Real, Exec>(dy.data(), BNH, T, hs),
                     heads<const Real, Exec>(v.data(), BNH, T, hs), Real(0),
                     heads<Real, Exec>(datt.data(), BNH, T, T));
  gemm_batched<Real>(exec, Trans::T, Trans::N, Real(1),
                     heads<const Real, Exec>(att.data(), BNH, T, T),
                     heads<const Real, Exec>(dy.data(), BNH, T, hs), Real(0),
                     heads<Real, Exec>(dv.data(), BNH, T, hs));
  impl::softmax_backward_rows<Real>(exec, datt, att, BNH * T, T);
  // dq = scale dscores k (into dy's slot, dy is no longer needed), dk = scale dscores^T q
  const Real scale = Real(1) / math::sqrt(static_cast<Real>(hs));
  const Flat<Real, Exec> dq = dy;
  gemm_batched<Real>(exec, Trans::N, Trans::N, scale,
                     heads<const Real, Exec>(datt.data(), BNH, T, T),
                     heads<const Real, Exec>(k.data(), BNH, T, hs), Real(0),
                     heads<Real, Exec>(dq.data(), BNH, T, hs));
  gemm_batched<Real>(exec, Trans::T, Trans::N, scale,
                     heads<const Real, Exec>(datt.data(), BNH, T, T),
                     heads<const Real, Exec>(q.data(), BNH, T, hs), Real(0),
                     heads<Real, Exec>(dk.data(), BNH, T, hs));
  impl::merge_dqkv<Real>(exec, dqkv, dq, dk, dv, B, T, C, NH);
}

}  // namespace p2bw::kernels::reference
