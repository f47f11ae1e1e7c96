// Multi-head scaled dot-product attention, causal (GPT) or bidirectional (BERT), flash style: from
// the fused qkv projection (B, T, 3C) (llm.c layout: q, k, v blocks of C channels, head h at
// channels [h*hs, (h+1)*hs), hs = C / NH) to the attention output (B, T, C), before the output
// projection. Query tiles walk the key tiles with an online softmax (running max and sum per
// row), so no (T, T) matrix exists anywhere; under causal masking the key tiles above the
// diagonal are never visited. Forward saves only the log-sum-exp of each query row (B, NH, T);
// backward recomputes the probabilities tile by tile from q, k and that log-sum-exp. Memory per
// layer: the lse (B*NH*T) and D = rowsum(dy * y) (B*NH*T) in the workspace, plus O(tile^2)
// scratch per team.
// Two implementations behind the GEMM dispatch (kernels/gemm.hpp), chosen at compile time, and
// on CUDA builds with -DP2BW_CUDNN=ON cuDNN's fused flash attention for bf16 storage
// (kernels/cudnn_attention.hpp; its own log-sum-exp, the same definition), where it serves the
// shape on the machine:
//  - native (any execution space, what a GPU runs): one team per (batch, head, tile of query
//    rows) with scalar tile loops in team scratch; backward in two passes without atomics, one
//    team per key tile for dk and dv, one per query tile for dq. Tiles of 32 rows or fewer.
//  - blas (host spaces with CBLAS): the same tiles, 64 rows, with every tile product (scores,
//    P v, and backward's dp, dv, dk, dq) one sgemm straight on the strided (B, T, 3C) buffers;
//    backward in one pass per (batch, head).
// Storage (kernels/storage.hpp): qkv, out, dout and dqkv are Store (float, or bf16 under mixed
// precision), the lse, D and every tile in scratch are Real. The native kernels read bf16 directly;
// the blas path computes in float BLAS, so with Store = bf16 it widens qkv (and dout, out) into
// float copies in the workspace, runs on those and narrows its results once: in both, the bits are
// the float kernel's on the same inputs with its outputs rounded to bf16.
// The summation order depends only on the shape, the tile size and the backend, so results are
// bitwise reproducible. The former kernel (probabilities (B, NH, T, T) through batched GEMMs) is
// the tests' reference, tests/kernels/attention_reference.hpp.
#pragma once

#include <string>
#include <type_traits>

#include "kernels/bf16_pack.hpp"
#ifdef P2BW_CUDNN
#include "kernels/cudnn_attention.hpp"
#endif
#include "kernels/gemm.hpp"
#include "kernels/storage.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

// Elements of the saved log-sum-exp (B, NH, T).
inline index_t attention_lse_size(int B, int T, int NH) {
  return static_cast<index_t>(B) * NH * T;
}

namespace detail {

inline void check_attention_dims(int B, int T, int C, int NH, const char* who) {
  require(
      B >= 0 && T >= 0 && C >= 0 && NH > 0 && C % NH == 0, who,
      "needs NH > 0 dividing C (C = " + std::to_string(C) + ", NH = " + std::to_string(NH) + ")");
}

// Per-team scratch elements of the largest attention kernel (the key-tile backward) for tiles
// of `tile` rows: k, v, dk, dv (tile, hs), q, dy and their transposes (hs, tile), p and dp
// (tile, tile), lse and D (tile).
inline index_t attention_scratch_elements(int tile, int hs) {
  return 8 * static_cast<index_t>(tile) * hs + 2 * static_cast<index_t>(tile) * tile + 2 * tile;
}

// Rows per query and key tile: 32, or smaller so that a team's scratch fits 48 KiB (a GPU's
// default shared memory). Depends only on hs and the scalar size, so the summation order does.
template <class Real>
int attention_tile(int hs) {
  int tile = 32;
  while (tile > 4 &&
         attention_scratch_elements(tile, hs) * static_cast<index_t>(sizeof(Real)) > 48 * 1024)
    tile /= 2;
  return tile;
}

// Where element d of head h at position t of batch b lives in (B, T, 3C) (which = 0 q, 1 k, 2 v)
// and in (B, T, C).
KOKKOS_INLINE_FUNCTION index_t qkv_index(int b, int t, int h, int d, int which, int T, int C,
                                         int hs) {
  return (static_cast<index_t>(b) * T + t) * 3 * C + which * C + h * hs + d;
}
KOKKOS_INLINE_FUNCTION index_t btc_index(int b, int t, int h, int d, int T, int C, int hs) {
  return (static_cast<index_t>(b) * T + t) * C + h * hs + d;
}

// The (batch, head, tile of rows) of a team over a league of B * NH * tiles (the tile fastest):
// rows [t0, t0 + rows) of head h of batch b, bh = b * NH + h.
struct AttentionTile {
  int b, h, bh, index, t0, rows;
};
KOKKOS_INLINE_FUNCTION AttentionTile attention_tile_of(int league_rank, int tiles, int tile, int NH,
                                                       int T) {
  AttentionTile at;
  at.index = league_rank % tiles;
  at.bh = league_rank / tiles;
  at.b = at.bh / NH;
  at.h = at.bh % NH;
  at.t0 = at.index * tile;
  at.rows = T - at.t0 < tile ? T - at.t0 : tile;
  return at;
}

// How many of the `cols` keys of the key tile starting at k0 query position t sees: all, or
// under causal masking those with k0 + j <= t.
KOKKOS_INLINE_FUNCTION int allowed_keys(int t, int k0, int cols, bool causal) {
  const int last = t - k0 + 1;
  return causal && last < cols ? last : cols;
}

// One online-softmax step of a query row over its `allowed` (scaled) scores s of a key tile: the
// running max m and sum l take the tile in, s becomes exp(s - m). Returns exp(m_before - m), the
// factor for the row's output accumulated so far.
template <class Real>
KOKKOS_INLINE_FUNCTION Real online_softmax_step(Real* s, int allowed, Real& m, Real& l) {
  Real mx = m;
  for (int j = 0; j < allowed; ++j) mx = math::max(mx, s[j]);
  const Real alpha = math::fast_exp(m - mx);
  for (int j = 0; j < allowed; ++j) s[j] = math::fast_exp(s[j] - mx);  // vectorises on the host
  Real sum = Real(0);
  for (int j = 0; j < allowed; ++j) sum += s[j];
  m = mx;
  l = l * alpha + sum;
  return alpha;
}

}  // namespace detail

namespace detail {

template <class Real, class Store, class Exec>
void check_forward_args(const Flat<Store, Exec>& out, const Flat<Real, Exec>& lse,
                        const ConstFlat<Store, Exec>& qkv, int B, int T, int C, int NH) {
  check_attention_dims(B, T, C, NH, "attention_forward");
  const index_t BTC = static_cast<index_t>(B) * T * C;
  require_size(out, BTC, "attention_forward", "out");
  require_size(lse, attention_lse_size(B, T, NH), "attention_forward", "lse");
  require_size(qkv, 3 * BTC, "attention_forward", "qkv");
}

template <class Real, class Store, class Exec>
void check_backward_args(const Flat<Store, Exec>& dqkv, const ConstFlat<Store, Exec>& dout,
                         const ConstFlat<Store, Exec>& qkv, const ConstFlat<Store, Exec>& out,
                         const ConstFlat<Real, Exec>& lse, const Flat<Real, Exec>& workspace,
                         index_t workspace_needed, int B, int T, int C, int NH) {
  check_attention_dims(B, T, C, NH, "attention_backward");
  const index_t BTC = static_cast<index_t>(B) * T * C;
  require_size(dqkv, 3 * BTC, "attention_backward", "dqkv");
  require_size(dout, BTC, "attention_backward", "dout");
  require_size(qkv, 3 * BTC, "attention_backward", "qkv");
  require_size(out, BTC, "attention_backward", "out");
  require_size(lse, attention_lse_size(B, T, NH), "attention_backward", "lse");
  require_size(workspace, workspace_needed, "attention_backward", "workspace");
}

// D[b, h, t] = sum_d dout[b, t, h, d] * out[b, t, h, d], the softmax backward's row term.
template <class Real, class Store, class Exec>
void attention_row_dots(const Exec& exec, const Flat<Real, Exec>& D,  // (B, NH, T)
                        const ConstFlat<Store, Exec>& dout,           // (B, T, C)
                        const ConstFlat<Store, Exec>& out,            // (B, T, C)
                        int B, int T, int C, int NH) {
  const int hs = C / NH;
  Kokkos::parallel_for(
      "p2bw::attention_backward_D",
      Kokkos::RangePolicy<Exec>(exec, 0, attention_lse_size(B, T, NH)),
      KOKKOS_LAMBDA(const index_t r) {
        const int t = static_cast<int>(r % T);
        const int bh = static_cast<int>(r / T);
        const int b = bh / NH, h = bh % NH;
        Real sum = Real(0);
        for (int d = 0; d < hs; ++d) {
          const index_t i = btc_index(b, t, h, d, T, C, hs);
          sum += widen(dout(i)) * widen(out(i));
        }
        D(r) = sum;
      });
}

}  // namespace detail

// out = concat over heads of softmax(mask(q k^T / sqrt(hs))) v; lse[b, h, t] = log sum_j
// exp(score[t, j]) over the allowed keys j. The portable team kernel (see the top of the file).
template <class Real, class Store = Real, class Exec>
void attention_forward_native(const Exec& exec, Flat<Store, Exec> out,  // (B, T, C)
                              Flat<Real, Exec> lse,        // (B, NH, T), saved for backward
                              ConstFlat<Store, Exec> qkv,  // (B, T, 3C)
                              int B, int T, int C, int NH, bool causal) {
  detail::check_forward_args<Real, Store, Exec>(out, lse, qkv, B, T, C, NH);
  const index_t BTC = static_cast<index_t>(B) * T * C;
  if (BTC == 0) return;
  const int hs = C / NH;
  const int tile = detail::attention_tile<Real>(hs);
  const int tiles = (T + tile - 1) / tile;
  const Real scale = Real(1) / math::sqrt(static_cast<Real>(hs));
  // q (tile, hs), k^T (hs, tile), v (tile, hs), o (tile, hs), p (tile, tile), m and l (tile)
  const index_t scratch = 4 * static_cast<index_t>(tile) * hs + tile * tile + 2 * tile;
  const auto policy = Kokkos::TeamPolicy<Exec>(exec, B * NH * tiles, Kokkos::AUTO)
                          .set_scratch_size(0, Kokkos::PerTeam(static_cast<size_t>(
                                                   TeamScratch<Real, Exec>::shmem_size(scratch))));
  Kokkos::parallel_for(
      "p2bw::attention_forward", policy, KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const detail::AttentionTile at =
            detail::attention_tile_of(team.league_rank(), tiles, tile, NH, T);
        const int qt = at.index, bh = at.bh, b = at.b, h = at.h, q0 = at.t0, rows = at.rows;
        TeamScratch<Real, Exec> mem(team.team_scratch(0), scratch);
        Real* q = mem.data();       // (tile, hs)
        Real* kt = q + tile * hs;   // (hs, tile)
        Real* v = kt + tile * hs;   // (tile, hs)
        Real* o = v + tile * hs;    // (tile, hs)
        Real* p = o + tile * hs;    // (tile, tile)
        Real* m = p + tile * tile;  // (tile) running max
        Real* l = m + tile;         // (tile) running sum
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](const int i) {
          for (int d = 0; d < hs; ++d) {
            q[i * hs + d] = widen(qkv(detail::qkv_index(b, q0 + i, h, d, 0, T, C, hs)));
            o[i * hs + d] = Real(0);
          }
          m[i] = math::lowest<Real>();
          l[i] = Real(0);
        });
        const int key_tiles = causal ? qt + 1 : tiles;
        for (int ktile = 0; ktile < key_tiles; ++ktile) {
          const int k0 = ktile * tile;
          const int cols = T - k0 < tile ? T - k0 : tile;
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, cols), [&](const int j) {
            for (int d = 0; d < hs; ++d) {
              kt[d * tile + j] = widen(qkv(detail::qkv_index(b, k0 + j, h, d, 1, T, C, hs)));
              v[j * hs + d] = widen(qkv(detail::qkv_index(b, k0 + j, h, d, 2, T, C, hs)));
            }
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](const int i) {
            Real* s = p + i * tile;  // (tile) scores, then probabilities, of row i
            for (int j = 0; j < cols; ++j) s[j] = Real(0);
            for (int d = 0; d < hs; ++d) {
              const Real qd = q[i * hs + d];
              for (int j = 0; j < cols; ++j) s[j] += qd * kt[d * tile + j];
            }
            const int allowed = detail::allowed_keys(q0 + i, k0, cols, causal);
            for (int j = 0; j < allowed; ++j) s[j] *= scale;
            const Real alpha = detail::online_softmax_step(s, allowed, m[i], l[i]);
            Real* oi = o + i * hs;
            for (int d = 0; d < hs; ++d) oi[d] *= alpha;
            for (int j = 0; j < allowed; ++j) {
              const Real pj = s[j];
              for (int d = 0; d < hs; ++d) oi[d] += pj * v[j * hs + d];
            }
          });
        }
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](const int i) {
          const Real inv = Real(1) / l[i];
          for (int d = 0; d < hs; ++d)
            out(detail::btc_index(b, q0 + i, h, d, T, C, hs)) = narrow<Store>(o[i * hs + d] * inv);
          lse(static_cast<index_t>(bh) * T + q0 + i) = m[i] + math::log(l[i]);
        });
      });
}

// dqkv (assigned) from dout, given the forward's qkv, its output `out` and the saved lse. The
// portable team kernels (see the top of the file).
template <class Real, class Store = Real, class Exec>
void attention_backward_native(const Exec& exec, Flat<Store, Exec> dqkv,  // (B, T, 3C), assigned
                               ConstFlat<Store, Exec> dout,               // (B, T, C)
                               ConstFlat<Store, Exec> qkv,                // (B, T, 3C)
                               ConstFlat<Store, Exec> out,  // (B, T, C) forward output
                               ConstFlat<Real, Exec> lse,   // (B, NH, T)
                               Flat<Real, Exec> workspace,  // (B, NH, T): D
                               int B, int T, int C, int NH, bool causal) {
  detail::check_backward_args<Real, Store, Exec>(dqkv, dout, qkv, out, lse, workspace,
                                                 attention_lse_size(B, T, NH), B, T, C, NH);
  const index_t BTC = static_cast<index_t>(B) * T * C;
  if (BTC == 0) return;
  const int hs = C / NH;
  const int tile = detail::attention_tile<Real>(hs);
  const int tiles = (T + tile - 1) / tile;
  const Real scale = Real(1) / math::sqrt(static_cast<Real>(hs));
  const Flat<Real, Exec> D = workspace;  // (B, NH, T) D[t] = sum_d dout[t, d] * out[t, d]
  detail::attention_row_dots<Real, Store, Exec>(exec, D, dout, out, B, T, C, NH);
  const index_t scratch = detail::attention_scratch_elements(tile, hs);
  const auto policy = Kokkos::TeamPolicy<Exec>(exec, B * NH * tiles, Kokkos::AUTO)
                          .set_scratch_size(0, Kokkos::PerTeam(static_cast<size_t>(
                                                   TeamScratch<Real, Exec>::shmem_size(scratch))));
  // dk, dv: one team per key tile, over the query tiles that see it.
  Kokkos::parallel_for(
      "p2bw::attention_backward_dkv", policy, KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const detail::AttentionTile at =
            detail::attention_tile_of(team.league_rank(), tiles, tile, NH, T);
        const int ktile = at.index, bh = at.bh, b = at.b, h = at.h, k0 = at.t0, cols = at.rows;
        TeamScratch<Real, Exec> mem(team.team_scratch(0), scratch);
        Real* k = mem.data();         // (tile, hs)
        Real* v = k + tile * hs;      // (tile, hs)
        Real* dk = v + tile * hs;     // (tile, hs)
        Real* dv = dk + tile * hs;    // (tile, hs)
        Real* q = dv + tile * hs;     // (tile, hs)
        Real* dy = q + tile * hs;     // (tile, hs)
        Real* qt = dy + tile * hs;    // (hs, tile)
        Real* dyt = qt + tile * hs;   // (hs, tile)
        Real* p = dyt + tile * hs;    // (tile keys, tile queries)
        Real* dp = p + tile * tile;   // (tile keys, tile queries)
        Real* ls = dp + tile * tile;  // (tile)
        Real* Ds = ls + tile;         // (tile)
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, cols), [&](const int j) {
          for (int d = 0; d < hs; ++d) {
            k[j * hs + d] = widen(qkv(detail::qkv_index(b, k0 + j, h, d, 1, T, C, hs)));
            v[j * hs + d] = widen(qkv(detail::qkv_index(b, k0 + j, h, d, 2, T, C, hs)));
            dk[j * hs + d] = Real(0);
            dv[j * hs + d] = Real(0);
          }
        });
        for (int qtile = causal ? ktile : 0; qtile < tiles; ++qtile) {
          const int q0 = qtile * tile;
          const int rows = T - q0 < tile ? T - q0 : tile;
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](const int i) {
            for (int d = 0; d < hs; ++d) {
              const Real qd = widen(qkv(detail::qkv_index(b, q0 + i, h, d, 0, T, C, hs)));
              const Real dyd = widen(dout(detail::btc_index(b, q0 + i, h, d, T, C, hs)));
              q[i * hs + d] = qd;
              dy[i * hs + d] = dyd;
              qt[d * tile + i] = qd;
              dyt[d * tile + i] = dyd;
            }
            ls[i] = lse(static_cast<index_t>(bh) * T + q0 + i);
            Ds[i] = D(static_cast<index_t>(bh) * T + q0 + i);
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, cols), [&](const int j) {
            Real* pj = p + j * tile;    // (tile) p[i] for query rows i
            Real* dpj = dp + j * tile;  // (tile)
            for (int i = 0; i < rows; ++i) {
              pj[i] = Real(0);
              dpj[i] = Real(0);
            }
            for (int d = 0; d < hs; ++d) {
              const Real kd = k[j * hs + d], vd = v[j * hs + d];
              for (int i = 0; i < rows; ++i) {
                pj[i] += qt[d * tile + i] * kd;
                dpj[i] += dyt[d * tile + i] * vd;
              }
            }
            // query rows i >= first see key k0 + j (causal: q0 + i >= k0 + j)
            const int first = causal && k0 + j - q0 > 0 ? k0 + j - q0 : 0;
            Real* dkj = dk + j * hs;
            Real* dvj = dv + j * hs;
            for (int i = first; i < rows; ++i) {
              const Real pij = math::fast_exp(pj[i] * scale - ls[i]);
              const Real dsij = pij * (dpj[i] - Ds[i]) * scale;
              for (int d = 0; d < hs; ++d) {
                dvj[d] += pij * dy[i * hs + d];
                dkj[d] += dsij * q[i * hs + d];
              }
            }
          });
        }
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, cols), [&](const int j) {
          for (int d = 0; d < hs; ++d) {
            dqkv(detail::qkv_index(b, k0 + j, h, d, 1, T, C, hs)) = narrow<Store>(dk[j * hs + d]);
            dqkv(detail::qkv_index(b, k0 + j, h, d, 2, T, C, hs)) = narrow<Store>(dv[j * hs + d]);
          }
        });
      });
  // dq: one team per query tile, over the key tiles it sees.
  Kokkos::parallel_for(
      "p2bw::attention_backward_dq", policy, KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const detail::AttentionTile at =
            detail::attention_tile_of(team.league_rank(), tiles, tile, NH, T);
        const int qtile = at.index, bh = at.bh, b = at.b, h = at.h, q0 = at.t0, rows = at.rows;
        TeamScratch<Real, Exec> mem(team.team_scratch(0), scratch);
        Real* q = mem.data();         // (tile, hs)
        Real* dy = q + tile * hs;     // (tile, hs)
        Real* dq = dy + tile * hs;    // (tile, hs)
        Real* k = dq + tile * hs;     // (tile, hs)
        Real* kt = k + tile * hs;     // (hs, tile)
        Real* vt = kt + tile * hs;    // (hs, tile)
        Real* s = vt + tile * hs;     // (tile queries, tile keys)
        Real* ds = s + tile * tile;   // (tile queries, tile keys)
        Real* ls = ds + tile * tile;  // (tile)
        Real* Ds = ls + tile;         // (tile)
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](const int i) {
          for (int d = 0; d < hs; ++d) {
            q[i * hs + d] = widen(qkv(detail::qkv_index(b, q0 + i, h, d, 0, T, C, hs)));
            dy[i * hs + d] = widen(dout(detail::btc_index(b, q0 + i, h, d, T, C, hs)));
            dq[i * hs + d] = Real(0);
          }
          ls[i] = lse(static_cast<index_t>(bh) * T + q0 + i);
          Ds[i] = D(static_cast<index_t>(bh) * T + q0 + i);
        });
        const int key_tiles = causal ? qtile + 1 : tiles;
        for (int ktile = 0; ktile < key_tiles; ++ktile) {
          const int k0 = ktile * tile;
          const int cols = T - k0 < tile ? T - k0 : tile;
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, cols), [&](const int j) {
            for (int d = 0; d < hs; ++d) {
              const Real kd = widen(qkv(detail::qkv_index(b, k0 + j, h, d, 1, T, C, hs)));
              k[j * hs + d] = kd;
              kt[d * tile + j] = kd;
              vt[d * tile + j] = widen(qkv(detail::qkv_index(b, k0 + j, h, d, 2, T, C, hs)));
            }
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](const int i) {
            Real* si = s + i * tile;    // (tile) scores of row i
            Real* dsi = ds + i * tile;  // (tile) dp, then dscores, of row i
            for (int j = 0; j < cols; ++j) {
              si[j] = Real(0);
              dsi[j] = Real(0);
            }
            for (int d = 0; d < hs; ++d) {
              const Real qd = q[i * hs + d], dyd = dy[i * hs + d];
              for (int j = 0; j < cols; ++j) {
                si[j] += qd * kt[d * tile + j];
                dsi[j] += dyd * vt[d * tile + j];
              }
            }
            const int allowed = detail::allowed_keys(q0 + i, k0, cols, causal);
            Real* dqi = dq + i * hs;
            for (int j = 0; j < allowed; ++j) {
              const Real pij = math::fast_exp(si[j] * scale - ls[i]);
              const Real dsij = pij * (dsi[j] - Ds[i]) * scale;
              for (int d = 0; d < hs; ++d) dqi[d] += dsij * k[j * hs + d];
            }
          });
        }
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](const int i) {
          for (int d = 0; d < hs; ++d)
            dqkv(detail::qkv_index(b, q0 + i, h, d, 0, T, C, hs)) = narrow<Store>(dq[i * hs + d]);
        });
      });
}

// ---------------------------------------------------------------------------------------------
// Host path: the tile products as CBLAS GEMMs on the strided (B, T, 3C) and (B, T, C) buffers.

namespace detail {

constexpr int kHostAttentionTile = 64;  // query and key rows per tile on the host path

#ifdef P2BW_HAVE_CBLAS

// One team (of one thread) per (batch, head, query tile): scores S = scale q k^T per key tile,
// the online softmax on S, then out_tile = alpha * out_tile + P v accumulated in `out` itself.
template <class Real, class Exec>
void attention_forward_blas(const Exec& exec, const Flat<Real, Exec>& out,  // (B, T, C)
                            const Flat<Real, Exec>& lse,                    // (B, NH, T)
                            const ConstFlat<Real, Exec>& qkv,               // (B, T, 3C)
                            int B, int T, int C, int NH, bool causal) {
  const int hs = C / NH, tile = kHostAttentionTile, ld = 3 * C;
  const int tiles = (T + tile - 1) / tile;
  const Real scale = Real(1) / math::sqrt(static_cast<Real>(hs));
  // s (tile, tile) scores then probabilities, m and l (tile) running max and sum
  const index_t scratch = static_cast<index_t>(tile) * tile + 2 * tile;
  const auto policy = Kokkos::TeamPolicy<Exec>(exec, B * NH * tiles, 1)
                          .set_scratch_size(0, Kokkos::PerTeam(static_cast<size_t>(
                                                   TeamScratch<Real, Exec>::shmem_size(scratch))));
  exec.fence();  // BLAS runs outside Kokkos: earlier kernels on this instance must be done
  Kokkos::parallel_for("p2bw::attention_forward_blas", policy, [=](const Team<Exec>& team) {
    const AttentionTile at = attention_tile_of(team.league_rank(), tiles, tile, NH, T);
    const int qt = at.index, bh = at.bh, b = at.b, h = at.h, q0 = at.t0, rows = at.rows;
    TeamScratch<Real, Exec> mem(team.team_scratch(0), scratch);
    Real* s = mem.data();                                              // (rows, tile)
    Real* m = s + tile * tile;                                         // (rows)
    Real* l = m + tile;                                                // (rows)
    const Real* q = qkv.data() + qkv_index(b, q0, h, 0, 0, T, C, hs);  // (rows, hs), ld 3C
    Real* o = out.data() + btc_index(b, q0, h, 0, T, C, hs);           // (rows, hs), ld C
    for (int i = 0; i < rows; ++i) {
      for (int d = 0; d < hs; ++d) o[static_cast<index_t>(i) * C + d] = Real(0);
      m[i] = math::lowest<Real>();
      l[i] = Real(0);
    }
    const int key_tiles = causal ? qt + 1 : tiles;
    for (int ktile = 0; ktile < key_tiles; ++ktile) {
      const int k0 = ktile * tile;
      const int cols = T - k0 < tile ? T - k0 : tile;
      const Real* k = qkv.data() + qkv_index(b, k0, h, 0, 1, T, C, hs);  // (cols, hs)
      const Real* v = qkv.data() + qkv_index(b, k0, h, 0, 2, T, C, hs);  // (cols, hs)
      cblas_gemm(CblasNoTrans, CblasTrans, rows, cols, hs, scale, q, ld, k, ld, Real(0), s, tile);
      for (int i = 0; i < rows; ++i) {
        Real* si = s + i * tile;
        const int allowed = allowed_keys(q0 + i, k0, cols, causal);
        const Real alpha = online_softmax_step(si, allowed, m[i], l[i]);
        for (int j = allowed; j < cols; ++j) si[j] = Real(0);
        Real* oi = o + static_cast<index_t>(i) * C;
        for (int d = 0; d < hs; ++d) oi[d] *= alpha;
      }
      cblas_gemm(CblasNoTrans, CblasNoTrans, rows, hs, cols, Real(1), s, tile, v, ld, Real(1), o,
                 C);
    }
    for (int i = 0; i < rows; ++i) {
      const Real inv = Real(1) / l[i];
      Real* oi = o + static_cast<index_t>(i) * C;
      for (int d = 0; d < hs; ++d) oi[d] *= inv;
      lse(static_cast<index_t>(bh) * T + q0 + i) = m[i] + math::log(l[i]);
    }
  });
}

// One team (of one thread) per (batch, head), over its (query tile, key tile) pairs in order: P
// from S and the lse, dS = P * (dy v^T - D) * scale, then dv += P^T dy, dk += dS^T q and
// dq += dS k, accumulated in dqkv itself.
template <class Real, class Exec>
void attention_backward_blas(const Exec& exec, const Flat<Real, Exec>& dqkv,  // (B, T, 3C)
                             const ConstFlat<Real, Exec>& dout,               // (B, T, C)
                             const ConstFlat<Real, Exec>& qkv,                // (B, T, 3C)
                             const ConstFlat<Real, Exec>& lse,                // (B, NH, T)
                             const ConstFlat<Real, Exec>& D,                  // (B, NH, T)
                             int B, int T, int C, int NH, bool causal) {
  const int hs = C / NH, tile = kHostAttentionTile, ld = 3 * C;
  const int tiles = (T + tile - 1) / tile;
  const Real scale = Real(1) / math::sqrt(static_cast<Real>(hs));
  const index_t scratch = 2 * static_cast<index_t>(tile) * tile;  // p and ds (tile, tile)
  const auto policy = Kokkos::TeamPolicy<Exec>(exec, B * NH, 1)
                          .set_scratch_size(0, Kokkos::PerTeam(static_cast<size_t>(
                                                   TeamScratch<Real, Exec>::shmem_size(scratch))));
  exec.fence();  // BLAS runs outside Kokkos: earlier kernels on this instance must be done
  Kokkos::parallel_for("p2bw::attention_backward_blas", policy, [=](const Team<Exec>& team) {
    const int bh = team.league_rank();
    const int b = bh / NH, h = bh % NH;
    TeamScratch<Real, Exec> mem(team.team_scratch(0), scratch);
    Real* p = mem.data();        // (rows, tile) probabilities
    Real* ds = p + tile * tile;  // (rows, tile) dp, then dscores
    for (int t = 0; t < T; ++t)
      for (int which = 0; which < 3; ++which)
        for (int d = 0; d < hs; ++d) dqkv(qkv_index(b, t, h, d, which, T, C, hs)) = Real(0);
    for (int qtile = 0; qtile < tiles; ++qtile) {
      const int q0 = qtile * tile;
      const int rows = T - q0 < tile ? T - q0 : tile;
      const Real* q = qkv.data() + qkv_index(b, q0, h, 0, 0, T, C, hs);  // (rows, hs)
      const Real* dy = dout.data() + btc_index(b, q0, h, 0, T, C, hs);   // (rows, hs), ld C
      Real* dq = dqkv.data() + qkv_index(b, q0, h, 0, 0, T, C, hs);      // (rows, hs)
      const Real* ls = lse.data() + static_cast<index_t>(bh) * T + q0;   // (rows)
      const Real* Ds = D.data() + static_cast<index_t>(bh) * T + q0;     // (rows)
      const int key_tiles = causal ? qtile + 1 : tiles;
      for (int ktile = 0; ktile < key_tiles; ++ktile) {
        const int k0 = ktile * tile;
        const int cols = T - k0 < tile ? T - k0 : tile;
        const Real* k = qkv.data() + qkv_index(b, k0, h, 0, 1, T, C, hs);  // (cols, hs)
        const Real* v = qkv.data() + qkv_index(b, k0, h, 0, 2, T, C, hs);  // (cols, hs)
        Real* dk = dqkv.data() + qkv_index(b, k0, h, 0, 1, T, C, hs);      // (cols, hs)
        Real* dv = dqkv.data() + qkv_index(b, k0, h, 0, 2, T, C, hs);      // (cols, hs)
        cblas_gemm(CblasNoTrans, CblasTrans, rows, cols, hs, scale, q, ld, k, ld, Real(0), p, tile);
        cblas_gemm(CblasNoTrans, CblasTrans, rows, cols, hs, Real(1), dy, C, v, ld, Real(0), ds,
                   tile);
        for (int i = 0; i < rows; ++i) {
          Real* pi = p + i * tile;
          Real* dsi = ds + i * tile;
          const int allowed = allowed_keys(q0 + i, k0, cols, causal);
          for (int j = 0; j < allowed; ++j) {
            pi[j] = math::fast_exp(pi[j] - ls[i]);
            dsi[j] = pi[j] * (dsi[j] - Ds[i]) * scale;
          }
          for (int j = allowed; j < cols; ++j) pi[j] = dsi[j] = Real(0);
        }
        cblas_gemm(CblasTrans, CblasNoTrans, cols, hs, rows, Real(1), p, tile, dy, C, Real(1), dv,
                   ld);
        cblas_gemm(CblasTrans, CblasNoTrans, cols, hs, rows, Real(1), ds, tile, q, ld, Real(1), dk,
                   ld);
        cblas_gemm(CblasNoTrans, CblasNoTrans, rows, hs, cols, Real(1), ds, tile, k, ld, Real(1),
                   dq, ld);
      }
    }
  });
}

#endif  // P2BW_HAVE_CBLAS

// The host path where gemm() calls CBLAS for this scalar and execution space.
template <class Real, class Exec>
constexpr bool attention_uses_blas() {
  return gemm_backend<Real, Exec>() == GemmBackend::cblas;
}

// Whether the blas path runs on float copies of bf16 buffers (see the top of the file).
template <class Real, class Store, class Exec>
constexpr bool attention_widens() {
  return attention_uses_blas<Real, Exec>() && !std::is_same<Store, Real>::value;
}

// Whether cuDNN's fused attention may serve this case (kernels/cudnn_attention.hpp): CUDA builds
// with P2BW_CUDNN, bf16 storage computed in float, on the CUDA execution space. Whether it serves
// the shape on this machine is asked at run time; where it does not, the native kernels run.
template <class Real, class Store, class Exec>
constexpr bool attention_may_use_cudnn() {
#if defined(P2BW_CUDNN) && defined(KOKKOS_ENABLE_CUDA)
  return std::is_same<Exec, Kokkos::Cuda>::value && std::is_same<Store, bf16>::value &&
         std::is_same<Real, float>::value;
#else
  return false;
#endif
}

// Whether this call runs on cuDNN (a shape of no elements runs nowhere).
template <class Real, class Store, class Exec>
bool attention_runs_on_cudnn(int B, int T, int C, int NH, bool causal) {
#ifdef P2BW_CUDNN
  if constexpr (attention_may_use_cudnn<Real, Store, Exec>())
    return cudnn_attention_unavailable(B, T, C, NH, causal).empty();
#endif
  (void)B, (void)T, (void)C, (void)NH, (void)causal;
  return false;
}

}  // namespace detail

// Workspace elements for attention_forward: none, or 4 B*T*C where the blas path widens bf16
// storage (the float copies of qkv and of the output).
template <class Real = float, class Store = Real, class Exec = Kokkos::DefaultExecutionSpace>
index_t attention_forward_workspace(int B, int T, int C, int /*NH*/) {
  return detail::attention_widens<Real, Store, Exec>() ? 4 * static_cast<index_t>(B) * T * C : 0;
}

// Workspace elements for attention_backward: D (B, NH, T), and where the blas path widens bf16
// storage the float copies of qkv, dout, out and dqkv (8 B*T*C) after it.
template <class Real = float, class Store = Real, class Exec = Kokkos::DefaultExecutionSpace>
index_t attention_backward_workspace(int B, int T, int C, int NH) {
  const index_t D = attention_lse_size(B, T, NH);
  return detail::attention_widens<Real, Store, Exec>() ? D + 8 * static_cast<index_t>(B) * T * C
                                                       : D;
}

// The implementation attention_forward and attention_backward use for this shape: "blas",
// "native", "cudnn (cuDNN 9.x.y)", or "native (cuDNN: why not)" where cuDNN may serve bf16.
template <class Real, class Store = Real, class Exec = Kokkos::DefaultExecutionSpace>
std::string attention_backend(int B, int T, int C, int NH, bool causal) {
  if (detail::attention_uses_blas<Real, Exec>()) return "blas";
#ifdef P2BW_CUDNN
  if constexpr (detail::attention_may_use_cudnn<Real, Store, Exec>()) {
    const std::string why = cudnn_attention_unavailable(B, T, C, NH, causal);
    return why.empty() ? "cudnn (" + cudnn_version() + ")" : "native (cuDNN: " + why + ")";
  }
#endif
  (void)B, (void)T, (void)C, (void)NH, (void)causal;
  return "native";
}

// out = concat over heads of softmax(mask(q k^T / sqrt(hs))) v; lse[b, h, t] = log sum_j
// exp(score[t, j]) over the allowed keys j.
template <class Real, class Store = Real, class Exec>
void attention_forward(const Exec& exec, Flat<Store, Exec> out,  // (B, T, C)
                       Flat<Real, Exec> lse,                     // (B, NH, T), saved for backward
                       ConstFlat<Store, Exec> qkv,               // (B, T, 3C)
                       int B, int T, int C, int NH, bool causal,
                       Flat<Real, Exec> workspace = {}) {  // (attention_forward_workspace)
  (void)workspace;  // only the BLAS path under bf16 storage needs it
#ifdef P2BW_CUDNN
  if constexpr (detail::attention_may_use_cudnn<Real, Store, Exec>()) {
    detail::check_forward_args<Real, Store, Exec>(out, lse, qkv, B, T, C, NH);
    if (static_cast<index_t>(B) * T * C == 0) return;
    if (detail::attention_runs_on_cudnn<Real, Store, Exec>(B, T, C, NH, causal) &&
        cudnn_attention_forward(exec.cuda_stream(), out.data(), lse.data(), qkv.data(), B, T, C, NH,
                                causal))
      return;
  }
#endif
  if constexpr (detail::attention_uses_blas<Real, Exec>()) {
#ifdef P2BW_HAVE_CBLAS
    detail::check_forward_args<Real, Store, Exec>(out, lse, qkv, B, T, C, NH);
    const index_t BTC = static_cast<index_t>(B) * T * C;
    if (BTC == 0) return;
    if constexpr (detail::attention_widens<Real, Store, Exec>()) {
      static_assert(std::is_same<Real, float>::value, "bf16 storage computes in float");
      detail::require_size(workspace, attention_forward_workspace<Real, Store, Exec>(B, T, C, NH),
                           "attention_forward", "workspace");
      const Flat<Real, Exec> qkv32(workspace.data(), 3 * BTC);        // (B, T, 3C)
      const Flat<Real, Exec> out32(workspace.data() + 3 * BTC, BTC);  // (B, T, C)
      unpack_bf16(exec, qkv32, qkv, 3 * BTC);
      detail::attention_forward_blas<Real, Exec>(exec, out32, lse, qkv32, B, T, C, NH, causal);
      pack_bf16(exec, out, out32, BTC);
    } else {
      detail::attention_forward_blas<Real, Exec>(exec, out, lse, qkv, B, T, C, NH, causal);
    }
#endif
  } else {
    attention_forward_native<Real, Store>(exec, out, lse, qkv, B, T, C, NH, causal);
  }
}

// dqkv (assigned) from dout, given the forward's qkv, its output `out` and the saved lse.
template <class Real, class Store = Real, class Exec>
void attention_backward(const Exec& exec, Flat<Store, Exec> dqkv,  // (B, T, 3C), assigned
                        ConstFlat<Store, Exec> dout,               // (B, T, C)
                        ConstFlat<Store, Exec> qkv,                // (B, T, 3C)
                        ConstFlat<Store, Exec> out,                // (B, T, C) forward output
                        ConstFlat<Real, Exec> lse,                 // (B, NH, T)
                        Flat<Real, Exec> workspace,                // (attention_backward_workspace)
                        int B, int T, int C, int NH, bool causal) {
#ifdef P2BW_CUDNN
  if constexpr (detail::attention_may_use_cudnn<Real, Store, Exec>()) {
    detail::check_backward_args<Real, Store, Exec>(
        dqkv, dout, qkv, out, lse, workspace,
        attention_backward_workspace<Real, Store, Exec>(B, T, C, NH), B, T, C, NH);
    if (static_cast<index_t>(B) * T * C == 0) return;
    if (detail::attention_runs_on_cudnn<Real, Store, Exec>(B, T, C, NH, causal) &&
        cudnn_attention_backward(exec.cuda_stream(), dqkv.data(), dout.data(), qkv.data(),
                                 out.data(), lse.data(), B, T, C, NH, causal))
      return;
  }
#endif
  if constexpr (detail::attention_uses_blas<Real, Exec>()) {
#ifdef P2BW_HAVE_CBLAS
    detail::check_backward_args<Real, Store, Exec>(
        dqkv, dout, qkv, out, lse, workspace,
        attention_backward_workspace<Real, Store, Exec>(B, T, C, NH), B, T, C, NH);
    const index_t BTC = static_cast<index_t>(B) * T * C;
    if (BTC == 0) return;
    const index_t rows = attention_lse_size(B, T, NH);
    const Flat<Real, Exec> D(workspace.data(), rows);  // (B, NH, T)
    if constexpr (detail::attention_widens<Real, Store, Exec>()) {
      static_assert(std::is_same<Real, float>::value, "bf16 storage computes in float");
      Real* const w = workspace.data() + rows;
      const Flat<Real, Exec> qkv32(w, 3 * BTC);             // (B, T, 3C)
      const Flat<Real, Exec> dout32(w + 3 * BTC, BTC);      // (B, T, C)
      const Flat<Real, Exec> out32(w + 4 * BTC, BTC);       // (B, T, C)
      const Flat<Real, Exec> dqkv32(w + 5 * BTC, 3 * BTC);  // (B, T, 3C)
      unpack_bf16(exec, qkv32, qkv, 3 * BTC);
      unpack_bf16(exec, dout32, dout, BTC);
      unpack_bf16(exec, out32, out, BTC);
      detail::attention_row_dots<Real, Real, Exec>(exec, D, dout32, out32, B, T, C, NH);
      detail::attention_backward_blas<Real, Exec>(exec, dqkv32, dout32, qkv32, lse, D, B, T, C, NH,
                                                  causal);
      pack_bf16(exec, dqkv, dqkv32, 3 * BTC);
    } else {
      detail::attention_row_dots<Real, Store, Exec>(exec, D, dout, out, B, T, C, NH);
      detail::attention_backward_blas<Real, Exec>(exec, dqkv, dout, qkv, lse, D, B, T, C, NH,
                                                  causal);
    }
#endif
  } else {
    attention_backward_native<Real, Store>(exec, dqkv, dout, qkv, out, lse, workspace, B, T, C, NH,
                                           causal);
  }
}

}  // namespace p2bw::kernels
