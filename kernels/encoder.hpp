// Token + position embedding (GPT-2 / llm.c "encoder"): out[b, t, :] = wte[tok[b, t], :] +
// wpe[t, :]. Forward keeps nothing but the token ids; backward accumulates into dwte and dwpe
// without floating-point atomics, in a fixed order (bitwise reproducible, see encoder_backward).
#pragma once

#include "kernels/types.hpp"

namespace p2bw::kernels {

// Precondition (not checked on the device): 0 <= tokens[i] < the number of rows of wte.
template <class Real, class Exec>
void encoder_forward(const Exec& exec, Flat<Real, Exec> out,  // (B, T, C)
                     ConstFlat<int, Exec> tokens,             // (B, T)
                     ConstFlat<Real, Exec> wte,               // (Vp, C)
                     ConstFlat<Real, Exec> wpe,               // (maxT, C), maxT >= T
                     int B, int T, int C) {
  const index_t BT = static_cast<index_t>(B) * T;
  detail::require_size(out, BT * C, "encoder_forward", "out");
  detail::require_size(tokens, BT, "encoder_forward", "tokens");
  detail::require_size(wpe, static_cast<index_t>(T) * C, "encoder_forward", "wpe");
  Kokkos::parallel_for(
      "p2bw::encoder_forward", Kokkos::RangePolicy<Exec>(exec, 0, BT * C),
      KOKKOS_LAMBDA(const index_t i) {
        const index_t bt = i / C;
        const index_t c = i % C;
        const index_t t = bt % T;
        out(i) = wte(static_cast<index_t>(tokens(bt)) * C + c) + wpe(t * C + c);
      });
}

// dwte[v, :] += dout[p, :] for every position p with tokens[p] == v, and dwpe[t, :] += sum over b
// of dout[b, t, :].
// Determinism: dwpe sums over b in order, one thread per (t, c). For dwte, one team per position
// p checks whether p is the FIRST occurrence of its token; only that team then walks the positions
// q >= p in ascending order and adds dout[q, :] for every q with the same token straight into the
// row dwte[tok, :]. Each row is owned by one team and the additions happen in position order, so
// the result equals the sequential loop over positions bit for bit, with no atomics. The cost is
// O((B*T)^2) integer comparisons, spread over B*T teams (small next to the GEMMs for B*T ~ 10^4).
template <class Real, class Exec>
void encoder_backward(const Exec& exec, Flat<Real, Exec> dwte,  // (Vp, C), accumulated
                      Flat<Real, Exec> dwpe,                    // (maxT, C), accumulated
                      ConstFlat<Real, Exec> dout,               // (B, T, C)
                      ConstFlat<int, Exec> tokens,              // (B, T)
                      int B, int T, int C) {
  const index_t BT = static_cast<index_t>(B) * T;
  detail::require_size(dout, BT * C, "encoder_backward", "dout");
  detail::require_size(tokens, BT, "encoder_backward", "tokens");
  detail::require_size(dwpe, static_cast<index_t>(T) * C, "encoder_backward", "dwpe");
  Kokkos::parallel_for(
      "p2bw::encoder_backward_wpe", Kokkos::RangePolicy<Exec>(exec, 0, static_cast<index_t>(T) * C),
      KOKKOS_LAMBDA(const index_t i) {
        Real sum = dwpe(i);
        for (int b = 0; b < B; ++b) sum += dout(b * static_cast<index_t>(T) * C + i);
        dwpe(i) = sum;
      });
  Kokkos::parallel_for(
      "p2bw::encoder_backward_wte",
      Kokkos::TeamPolicy<Exec>(exec, static_cast<int>(BT), Kokkos::AUTO),
      KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const int p = team.league_rank();
        const int token = tokens(p);
        int earlier = 0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, p),
            [&](const int q, int& count) { count += tokens(q) == token ? 1 : 0; }, earlier);
        if (earlier != 0) return;  // uniform over the team: p is not the first occurrence
        for (int q = p; q < BT; ++q) {
          if (tokens(q) != token) continue;
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, C), [&](const int c) {
            dwte(static_cast<index_t>(token) * C + c) += dout(static_cast<index_t>(q) * C + c);
          });
        }
      });
}

}  // namespace p2bw::kernels
