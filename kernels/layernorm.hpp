// LayerNorm over the channel dimension (llm.c semantics, eps = 1e-5): forward keeps the per-row
// mean and reciprocal standard deviation for backward. Rows are the B*T positions (N = B*T).
#pragma once

#include "kernels/reduce.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

constexpr double kLayerNormEps = 1e-5;

// out = (inp - mean) * rstd * weight + bias, row by row; one team per row, two-pass variance.
template <class Real, class Exec>
void layernorm_forward(const Exec& exec, Flat<Real, Exec> out,  // (N, C)
                       Flat<Real, Exec> mean,                   // (N), saved for backward
                       Flat<Real, Exec> rstd,                   // (N), saved for backward
                       ConstFlat<Real, Exec> inp,               // (N, C)
                       ConstFlat<Real, Exec> weight,            // (C)
                       ConstFlat<Real, Exec> bias,              // (C)
                       int N, int C) {
  const index_t NC = static_cast<index_t>(N) * C;
  detail::require_size(out, NC, "layernorm_forward", "out");
  detail::require_size(mean, N, "layernorm_forward", "mean");
  detail::require_size(rstd, N, "layernorm_forward", "rstd");
  detail::require_size(inp, NC, "layernorm_forward", "inp");
  detail::require_size(weight, C, "layernorm_forward", "weight");
  detail::require_size(bias, C, "layernorm_forward", "bias");
  const Real eps = static_cast<Real>(kLayerNormEps);
  Kokkos::parallel_for(
      "p2bw::layernorm_forward", Kokkos::TeamPolicy<Exec>(exec, N, Kokkos::AUTO),
      KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const index_t base = static_cast<index_t>(team.league_rank()) * C;
        Real sum = Real(0);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, C), [&](const int c, Real& s) { s += inp(base + c); },
            sum);
        const Real m = sum / C;
        Real sq = Real(0);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, C),
            [&](const int c, Real& s) {
              const Real d = inp(base + c) - m;
              s += d * d;
            },
            sq);
        const Real s = Real(1) / math::sqrt(sq / C + eps);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, C), [&](const int c) {
          out(base + c) = (inp(base + c) - m) * s * weight(c) + bias(c);
        });
        Kokkos::single(Kokkos::PerTeam(team), [&]() {
          mean(team.league_rank()) = m;
          rstd(team.league_rank()) = s;
        });
      });
}

// dinp = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) with dnorm = weight * dout and
// norm = (inp - mean) * rstd (assigned); dweight += sum over rows of dout * norm and
// dbias += sum over rows of dout (deterministic column sums, see column_sum_add; `colsum`,
// column_sum_workspace(C) kept by the caller, spreads them over a device, same result without).
template <class Real, class Exec>
void layernorm_backward(const Exec& exec, Flat<Real, Exec> dinp,  // (N, C), assigned
                        Flat<Real, Exec> dweight,                 // (C), accumulated
                        Flat<Real, Exec> dbias,                   // (C), accumulated
                        ConstFlat<Real, Exec> dout,               // (N, C)
                        ConstFlat<Real, Exec> inp,                // (N, C)
                        ConstFlat<Real, Exec> mean,               // (N)
                        ConstFlat<Real, Exec> rstd,               // (N)
                        ConstFlat<Real, Exec> weight,             // (C)
                        int N, int C,
                        Flat<Real, Exec> colsum = Flat<Real, Exec>()) {  // (kRowChunks, C) or empty
  const index_t NC = static_cast<index_t>(N) * C;
  detail::require_size(dinp, NC, "layernorm_backward", "dinp");
  detail::require_size(dout, NC, "layernorm_backward", "dout");
  detail::require_size(inp, NC, "layernorm_backward", "inp");
  detail::require_size(mean, N, "layernorm_backward", "mean");
  detail::require_size(rstd, N, "layernorm_backward", "rstd");
  detail::require_size(weight, C, "layernorm_backward", "weight");
  Kokkos::parallel_for(
      "p2bw::layernorm_backward", Kokkos::TeamPolicy<Exec>(exec, N, Kokkos::AUTO),
      KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const int row = team.league_rank();
        const index_t base = static_cast<index_t>(row) * C;
        const Real m = mean(row), s = rstd(row);
        Real dnorm_sum = Real(0);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, C),
            [&](const int c, Real& acc) { acc += weight(c) * dout(base + c); }, dnorm_sum);
        Real dnorm_norm_sum = Real(0);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, C),
            [&](const int c, Real& acc) {
              acc += weight(c) * dout(base + c) * (inp(base + c) - m) * s;
            },
            dnorm_norm_sum);
        const Real dnorm_mean = dnorm_sum / C;
        const Real dnorm_norm_mean = dnorm_norm_sum / C;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, C), [&](const int c) {
          const Real norm = (inp(base + c) - m) * s;
          const Real dnorm = weight(c) * dout(base + c);
          dinp(base + c) = (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        });
      });
  column_sum_add<Real>(
      exec, dweight, N, C,
      KOKKOS_LAMBDA(const int n, const int c) {
        const index_t i = static_cast<index_t>(n) * C + c;
        return dout(i) * (inp(i) - mean(n)) * rstd(n);
      },
      colsum);
  column_sum_add<Real>(
      exec, dbias, N, C,
      KOKKOS_LAMBDA(const int n, const int c) { return dout(static_cast<index_t>(n) * C + c); },
      colsum);
}

}  // namespace p2bw::kernels
