// LayerNorm over the channel dimension (llm.c semantics, eps = 1e-5): forward keeps the per-row
// mean and reciprocal standard deviation for backward. Rows are the B*T positions (N = B*T).
// Input, output, their gradients and the weight and bias are Store (kernels/storage.hpp); mean,
// rstd and the parameter gradients are Real. Every value is widened on reading, all arithmetic
// is Real, and only the stored outputs are rounded.
#pragma once

#include <cmath>

#include "kernels/reduce.hpp"
#include "kernels/storage.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

constexpr double kLayerNormEps = 1e-5;

namespace detail {

// Host path for Real = float (Store float or bf16, one loop for both, so that the two storage
// types sum in the same order): rows in multi-versioned loops (P2BW_HOST_CLONES) whose row sums
// run in kLayerNormLanes lanes (lane l sums the columns c = l mod kLayerNormLanes in column order,
// then the lanes are added in lane order), so they vectorise; the portable kernels below sum in
// column order on the host and, on a device, in an order fixed by C and their fixed team size
// (layernorm_team_size). Both orders depend on C alone.
constexpr int kLayerNormLanes = 8;
constexpr index_t kLayerNormHostRows = 64;  // rows per host iteration

template <class Store>
P2BW_HOST_CLONES inline void layernorm_forward_host(Store* out, float* mean, float* rstd,
                                                    const Store* inp, const Store* weight,
                                                    const Store* bias, index_t first_row,
                                                    index_t end_row, int C, float eps) {
  constexpr int L = kLayerNormLanes;
  for (index_t row = first_row; row < end_row; ++row) {
    const Store* x = inp + row * C;  // (C)
    Store* y = out + row * C;        // (C)
    float acc[L] = {};
    int c = 0;
    for (; c + L <= C; c += L)
      for (int l = 0; l < L; ++l) acc[l] += widen(x[c + l]);
    for (int l = 0; c + l < C; ++l) acc[l] += widen(x[c + l]);
    float sum = 0.0f;
    for (int l = 0; l < L; ++l) sum += acc[l];
    const float m = sum / C;
    float sq_acc[L] = {};
    for (c = 0; c + L <= C; c += L)
      for (int l = 0; l < L; ++l) {
        const float d = widen(x[c + l]) - m;
        sq_acc[l] += d * d;
      }
    for (int l = 0; c + l < C; ++l) {
      const float d = widen(x[c + l]) - m;
      sq_acc[l] += d * d;
    }
    float sq = 0.0f;
    for (int l = 0; l < L; ++l) sq += sq_acc[l];
    const float s = 1.0f / std::sqrt(sq / C + eps);
    for (c = 0; c < C; ++c)
      y[c] = narrow<Store>((widen(x[c]) - m) * s * widen(weight[c]) + widen(bias[c]));
    mean[row] = m;
    rstd[row] = s;
  }
}

// res = a + b (rounded to Store), then the rows of res layer-normalised as layernorm_forward_host
// does: the same bits as the two kernels one after the other, in one pass over the rows.
template <class Store>
inline void residual_layernorm_forward_host(Store* res, Store* out, float* mean, float* rstd,
                                            const Store* a, const Store* b, const Store* weight,
                                            const Store* bias, index_t first_row, index_t end_row,
                                            int C, float eps) {
  for (index_t row = first_row; row < end_row; ++row) {
    const index_t base = row * C;
    for (int c = 0; c < C; ++c) {
      const float x = widen(a[base + c]), y = widen(b[base + c]);
      res[base + c] = narrow<Store>(x + y);
    }
    layernorm_forward_host(out, mean, rstd, res, weight, bias, row, row + 1, C, eps);
  }
}

template <class Store>
P2BW_HOST_CLONES inline void layernorm_backward_host(Store* dinp, const Store* dout,
                                                     const Store* inp, const float* mean,
                                                     const float* rstd, const Store* weight,
                                                     index_t first_row, index_t end_row, int C) {
  constexpr int L = kLayerNormLanes;
  for (index_t row = first_row; row < end_row; ++row) {
    const Store* x = inp + row * C;    // (C)
    const Store* dy = dout + row * C;  // (C)
    Store* dx = dinp + row * C;        // (C)
    const float m = mean[row], s = rstd[row];
    float a[L] = {}, b[L] = {};  // lanes of sum(dnorm) and sum(dnorm * norm)
    int c = 0;
    for (; c + L <= C; c += L)
      for (int l = 0; l < L; ++l) {
        const float dnorm = widen(weight[c + l]) * widen(dy[c + l]);
        a[l] += dnorm;
        b[l] += dnorm * (widen(x[c + l]) - m) * s;
      }
    for (int l = 0; c + l < C; ++l) {
      const float dnorm = widen(weight[c + l]) * widen(dy[c + l]);
      a[l] += dnorm;
      b[l] += dnorm * (widen(x[c + l]) - m) * s;
    }
    float dnorm_sum = 0.0f, dnorm_norm_sum = 0.0f;
    for (int l = 0; l < L; ++l) {
      dnorm_sum += a[l];
      dnorm_norm_sum += b[l];
    }
    const float dnorm_mean = dnorm_sum / C;
    const float dnorm_norm_mean = dnorm_norm_sum / C;
    for (c = 0; c < C; ++c) {
      const float norm = (widen(x[c]) - m) * s;
      const float dnorm = widen(weight[c]) * widen(dy[c]);
      dx[c] = narrow<Store>((dnorm - dnorm_mean - norm * dnorm_norm_mean) * s);
    }
  }
}

template <class Real, class Store, class Exec>
constexpr bool layernorm_on_host() {
  return std::is_same<Real, float>::value &&
         (std::is_same<Store, float>::value || is_bf16_storage<Store>()) && is_host_space<Exec>();
}

// Threads per row (team) of the portable kernels. A team's parallel_reduce adds its threads'
// partial sums in an order set by the team size, so the size is fixed: Kokkos::AUTO picks it per
// kernel instantiation (from its register use on a GPU), and Store = float and Store = bf16
// could then sum in different orders and break the bf16 storage rule (kernels/storage.hpp). One
// thread on the host: the sums in column order.
constexpr int kLayerNormDeviceTeam = 128;

template <class Exec>
constexpr int layernorm_team_size() {
  return is_host_space<Exec>() ? 1 : kLayerNormDeviceTeam;
}

// One team's row of the portable forward: two-pass mean and variance over inp's row, then
// out = (inp - mean) * rstd * weight + bias, mean and rstd saved.
template <class Real, class Store, class Exec>
KOKKOS_INLINE_FUNCTION void layernorm_row(const Team<Exec>& team, const Flat<Store, Exec>& out,
                                          const Flat<Real, Exec>& mean,
                                          const Flat<Real, Exec>& rstd,
                                          const ConstFlat<Store, Exec>& inp,
                                          const ConstFlat<Store, Exec>& weight,
                                          const ConstFlat<Store, Exec>& bias, int C) {
  const Real eps = static_cast<Real>(kLayerNormEps);
  const index_t base = static_cast<index_t>(team.league_rank()) * C;
  Real sum = Real(0);
  Kokkos::parallel_reduce(
      Kokkos::TeamThreadRange(team, C),
      [&](const int c, Real& s) { s += static_cast<Real>(widen(inp(base + c))); }, sum);
  const Real m = sum / C;
  Real sq = Real(0);
  Kokkos::parallel_reduce(
      Kokkos::TeamThreadRange(team, C),
      [&](const int c, Real& s) {
        const Real d = static_cast<Real>(widen(inp(base + c))) - m;
        s += d * d;
      },
      sq);
  const Real s = Real(1) / math::sqrt(sq / C + eps);
  Kokkos::parallel_for(Kokkos::TeamThreadRange(team, C), [&](const int c) {
    const Real x = widen(inp(base + c)), w = widen(weight(c)), b = widen(bias(c));
    out(base + c) = narrow<Store>((x - m) * s * w + b);
  });
  Kokkos::single(Kokkos::PerTeam(team), [&]() {
    mean(team.league_rank()) = m;
    rstd(team.league_rank()) = s;
  });
}

// The portable kernels (one team per row, sums in an order fixed by C and the team size), in
// functions of their own so that no device lambda sits inside a constexpr-if.
template <class Real, class Store, class Exec>
void layernorm_forward_portable(const Exec& exec, const Flat<Store, Exec>& out,  // (N, C)
                                const Flat<Real, Exec>& mean,                    // (N)
                                const Flat<Real, Exec>& rstd,                    // (N)
                                const ConstFlat<Store, Exec>& inp,               // (N, C)
                                const ConstFlat<Store, Exec>& weight,            // (C)
                                const ConstFlat<Store, Exec>& bias,              // (C)
                                int N, int C) {
  Kokkos::parallel_for(
      "p2bw::layernorm_forward", Kokkos::TeamPolicy<Exec>(exec, N, layernorm_team_size<Exec>()),
      KOKKOS_LAMBDA(const Team<Exec>& team) {
        layernorm_row<Real, Store, Exec>(team, out, mean, rstd, inp, weight, bias, C);
      });
}

// res = a + b (rounded), then layernorm_forward_portable's row over res, in one kernel: the team
// writes its row of res, waits, and normalises it.
template <class Real, class Store, class Exec>
void residual_layernorm_forward_portable(const Exec& exec, const Flat<Store, Exec>& res,  // (N, C)
                                         const Flat<Store, Exec>& out,                    // (N, C)
                                         const Flat<Real, Exec>& mean,                    // (N)
                                         const Flat<Real, Exec>& rstd,                    // (N)
                                         const ConstFlat<Store, Exec>& a,                 // (N, C)
                                         const ConstFlat<Store, Exec>& b,                 // (N, C)
                                         const ConstFlat<Store, Exec>& weight,            // (C)
                                         const ConstFlat<Store, Exec>& bias,              // (C)
                                         int N, int C) {
  Kokkos::parallel_for(
      "p2bw::residual_layernorm_forward",
      Kokkos::TeamPolicy<Exec>(exec, N, layernorm_team_size<Exec>()),
      KOKKOS_LAMBDA(const Team<Exec>& team) {
        const index_t base = static_cast<index_t>(team.league_rank()) * C;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, C), [&](const int c) {
          const Real x = widen(a(base + c)), y = widen(b(base + c));
          res(base + c) = narrow<Store>(x + y);
        });
        team.team_barrier();
        layernorm_row<Real, Store, Exec>(team, out, mean, rstd, ConstFlat<Store, Exec>(res), weight,
                                         bias, C);
      });
}

template <class Real, class Store, class Exec>
void layernorm_backward_portable(const Exec& exec, const Flat<Store, Exec>& dinp,  // (N, C)
                                 const ConstFlat<Store, Exec>& dout,               // (N, C)
                                 const ConstFlat<Store, Exec>& inp,                // (N, C)
                                 const ConstFlat<Real, Exec>& mean,                // (N)
                                 const ConstFlat<Real, Exec>& rstd,                // (N)
                                 const ConstFlat<Store, Exec>& weight,             // (C)
                                 int N, int C) {
  Kokkos::parallel_for(
      "p2bw::layernorm_backward", Kokkos::TeamPolicy<Exec>(exec, N, layernorm_team_size<Exec>()),
      KOKKOS_LAMBDA(const Team<Exec>& team) {
        const int row = team.league_rank();
        const index_t base = static_cast<index_t>(row) * C;
        const Real m = mean(row), s = rstd(row);
        Real dnorm_sum = Real(0);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, C),
            [&](const int c, Real& acc) {
              const Real w = widen(weight(c)), dy = widen(dout(base + c));
              acc += w * dy;
            },
            dnorm_sum);
        Real dnorm_norm_sum = Real(0);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, C),
            [&](const int c, Real& acc) {
              const Real w = widen(weight(c)), dy = widen(dout(base + c)), x = widen(inp(base + c));
              acc += w * dy * (x - m) * s;
            },
            dnorm_norm_sum);
        const Real dnorm_mean = dnorm_sum / C;
        const Real dnorm_norm_mean = dnorm_norm_sum / C;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, C), [&](const int c) {
          const Real w = widen(weight(c)), dy = widen(dout(base + c)), x = widen(inp(base + c));
          const Real norm = (x - m) * s;
          const Real dnorm = w * dy;
          dinp(base + c) = narrow<Store>((dnorm - dnorm_mean - norm * dnorm_norm_mean) * s);
        });
      });
}
}  // namespace detail

// out = (inp - mean) * rstd * weight + bias, row by row, two-pass variance: one team per row, or
// on the host for Real = float (Store float or bf16) the multi-versioned row loops with the sums
// in lanes (see above).
template <class Real, class Store = Real, class Exec>
void layernorm_forward(const Exec& exec, Flat<Store, Exec> out,  // (N, C)
                       Flat<Real, Exec> mean,                    // (N), saved for backward
                       Flat<Real, Exec> rstd,                    // (N), saved for backward
                       ConstFlat<Store, Exec> inp,               // (N, C)
                       ConstFlat<Store, Exec> weight,            // (C)
                       ConstFlat<Store, Exec> bias,              // (C)
                       int N, int C) {
  const index_t NC = static_cast<index_t>(N) * C;
  detail::require_size(out, NC, "layernorm_forward", "out");
  detail::require_size(mean, N, "layernorm_forward", "mean");
  detail::require_size(rstd, N, "layernorm_forward", "rstd");
  detail::require_size(inp, NC, "layernorm_forward", "inp");
  detail::require_size(weight, C, "layernorm_forward", "weight");
  detail::require_size(bias, C, "layernorm_forward", "bias");
  if constexpr (detail::layernorm_on_host<Real, Store, Exec>()) {
    Store* o = out.data();
    float *mu = mean.data(), *rs = rstd.data();
    const Store *x = inp.data(), *w = weight.data(), *b = bias.data();
    const float eps = static_cast<float>(kLayerNormEps);
    detail::host_chunks(exec, "p2bw::layernorm_forward", N, detail::kLayerNormHostRows,
                        [=](index_t first, index_t end) {
                          detail::layernorm_forward_host(o, mu, rs, x, w, b, first, end, C, eps);
                        });
  } else {
    detail::layernorm_forward_portable<Real, Store, Exec>(exec, out, mean, rstd, inp, weight, bias,
                                                          N, C);
  }
}

// Fused residual + LayerNorm: res = a + b (rounded to Store, as residual_forward), then
// out = layernorm(res) as layernorm_forward: the same bits as the two calls, with one pass over
// the rows instead of two (on a device the residual row is not read back from memory by a second
// kernel). res may alias a or b.
template <class Real, class Store = Real, class Exec>
void residual_layernorm_forward(const Exec& exec, Flat<Store, Exec> res,  // (N, C)
                                Flat<Store, Exec> out,                    // (N, C)
                                Flat<Real, Exec> mean,                    // (N), saved for backward
                                Flat<Real, Exec> rstd,                    // (N), saved for backward
                                ConstFlat<Store, Exec> a,                 // (N, C)
                                ConstFlat<Store, Exec> b,                 // (N, C)
                                ConstFlat<Store, Exec> weight,            // (C)
                                ConstFlat<Store, Exec> bias,              // (C)
                                int N, int C) {
  const index_t NC = static_cast<index_t>(N) * C;
  const char* who = "residual_layernorm_forward";
  detail::require_size(res, NC, who, "res");
  detail::require_size(out, NC, who, "out");
  detail::require_size(mean, N, who, "mean");
  detail::require_size(rstd, N, who, "rstd");
  detail::require_size(a, NC, who, "a");
  detail::require_size(b, NC, who, "b");
  detail::require_size(weight, C, who, "weight");
  detail::require_size(bias, C, who, "bias");
  if constexpr (detail::layernorm_on_host<Real, Store, Exec>()) {
    Store *r = res.data(), *o = out.data();
    float *mu = mean.data(), *rs = rstd.data();
    const Store *x = a.data(), *y = b.data(), *w = weight.data(), *bi = bias.data();
    const float eps = static_cast<float>(kLayerNormEps);
    detail::host_chunks(exec, "p2bw::residual_layernorm_forward", N, detail::kLayerNormHostRows,
                        [=](index_t first, index_t end) {
                          detail::residual_layernorm_forward_host(r, o, mu, rs, x, y, w, bi, first,
                                                                  end, C, eps);
                        });
  } else {
    detail::residual_layernorm_forward_portable<Real, Store, Exec>(exec, res, out, mean, rstd, a, b,
                                                                   weight, bias, N, C);
  }
}

// dinp = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) with dnorm = weight * dout and
// norm = (inp - mean) * rstd (assigned); dweight += sum over rows of dout * norm and
// dbias += sum over rows of dout (deterministic column sums, see column_sum_add; `colsum`,
// column_sum_workspace(C) kept by the caller, spreads them over a device, same result without).
template <class Real, class Store = Real, class Exec>
void layernorm_backward(const Exec& exec, Flat<Store, Exec> dinp,  // (N, C), assigned
                        Flat<Real, Exec> dweight,                  // (C), accumulated
                        Flat<Real, Exec> dbias,                    // (C), accumulated
                        ConstFlat<Store, Exec> dout,               // (N, C)
                        ConstFlat<Store, Exec> inp,                // (N, C)
                        ConstFlat<Real, Exec> mean,                // (N)
                        ConstFlat<Real, Exec> rstd,                // (N)
                        ConstFlat<Store, Exec> weight,             // (C)
                        int N, int C,
                        Flat<Real, Exec> colsum = Flat<Real, Exec>()) {  // (kRowChunks, C) or empty
  const index_t NC = static_cast<index_t>(N) * C;
  detail::require_size(dinp, NC, "layernorm_backward", "dinp");
  detail::require_size(dout, NC, "layernorm_backward", "dout");
  detail::require_size(inp, NC, "layernorm_backward", "inp");
  detail::require_size(mean, N, "layernorm_backward", "mean");
  detail::require_size(rstd, N, "layernorm_backward", "rstd");
  detail::require_size(weight, C, "layernorm_backward", "weight");
  if constexpr (detail::layernorm_on_host<Real, Store, Exec>()) {
    Store* dx = dinp.data();
    const Store *dy = dout.data(), *x = inp.data(), *w = weight.data();
    const float *mu = mean.data(), *rs = rstd.data();
    detail::host_chunks(exec, "p2bw::layernorm_backward", N, detail::kLayerNormHostRows,
                        [=](index_t first, index_t end) {
                          detail::layernorm_backward_host(dx, dy, x, mu, rs, w, first, end, C);
                        });
  } else {
    detail::layernorm_backward_portable<Real, Store, Exec>(exec, dinp, dout, inp, mean, rstd,
                                                           weight, N, C);
  }
  column_sum_add<Real>(
      exec, dweight, N, C,
      KOKKOS_LAMBDA(const int n, const int c) {
        const index_t i = static_cast<index_t>(n) * C + c;
        const Real dy = widen(dout(i)), x = widen(inp(i));
        return dy * (x - mean(n)) * rstd(n);
      },
      colsum);
  column_sum_add<Real>(
      exec, dbias, N, C,
      KOKKOS_LAMBDA(const int n, const int c) {
        return static_cast<Real>(widen(dout(static_cast<index_t>(n) * C + c)));
      },
      colsum);
}

}  // namespace p2bw::kernels
