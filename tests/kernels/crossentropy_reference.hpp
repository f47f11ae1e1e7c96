// The reference softmax + cross-entropy of the tests (p2bw's kernel before the fused classifier
// in kernels/crossentropy.hpp): it writes the probabilities (N, Vp).
// Softmax + cross-entropy over a padded vocabulary. Logits are (N, Vp) with N = B*T rows of
// which only the first V columns are real: padded columns never enter the softmax, get
// probability 0 and gradient exactly 0. A target of kIgnoreIndex (any negative value) marks a
// position without loss (BERT's unmasked positions): loss 0 and zero gradient.
#pragma once

#include "kernels/crossentropy.hpp"

namespace p2bw::kernels::reference {

// losses[n] = logsumexp(logits[n, :V]) - logits[n, targets[n]] (0 where ignored) and
// probs[n, :] = softmax over the first V columns, 0 on the padded ones. One team per row.
// probs may alias logits (computed in place). Precondition: targets[n] < V.
template <class Real, class Exec>
void crossentropy_forward(const Exec& exec, Flat<Real, Exec> losses,  // (N)
                          Flat<Real, Exec> probs,                     // (N, Vp), saved for backward
                          ConstFlat<Real, Exec> logits,               // (N, Vp)
                          ConstFlat<int, Exec> targets,               // (N)
                          int N, int V, int Vp) {
  const index_t NV = static_cast<index_t>(N) * Vp;
  detail::require(0 < V && V <= Vp, "crossentropy_forward", "needs 0 < V <= Vp");
  detail::require_size(losses, N, "crossentropy_forward", "losses");
  detail::require_size(probs, NV, "crossentropy_forward", "probs");
  detail::require_size(logits, NV, "crossentropy_forward", "logits");
  detail::require_size(targets, N, "crossentropy_forward", "targets");
  Kokkos::parallel_for(
      "p2bw::crossentropy_forward", Kokkos::TeamPolicy<Exec>(exec, N, Kokkos::AUTO),
      KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const int row = team.league_rank();
        const index_t base = static_cast<index_t>(row) * Vp;
        Real maxv = math::lowest<Real>();
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, V),
            [&](const int j, Real& m) { m = math::max(m, logits(base + j)); },
            Kokkos::Max<Real>(maxv));
        Real sum = Real(0);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, V),
            [&](const int j, Real& s) { s += math::exp(logits(base + j) - maxv); }, sum);
        const int target = targets(row);
        // Every thread reads the target logit before any thread overwrites it (probs == logits).
        const Real loss = target < 0 ? Real(0) : maxv + math::log(sum) - logits(base + target);
        team.team_barrier();
        const Real inv_sum = Real(1) / sum;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, Vp), [&](const int j) {
          probs(base + j) = j < V ? math::exp(logits(base + j) - maxv) * inv_sum : Real(0);
        });
        Kokkos::single(Kokkos::PerTeam(team), [&]() { losses(row) = loss; });
      });
}

// dlogits[n, j] = (probs[n, j] - [j == targets[n]]) * dlosses[n] for j < V; 0 on padded columns
// and on ignored rows (assigned; dlogits may alias probs). dlosses is the per-position scale,
// e.g. 1 / (number of positions with a loss).
template <class Real, class Exec>
void crossentropy_backward(const Exec& exec, Flat<Real, Exec> dlogits,  // (N, Vp), assigned
                           ConstFlat<Real, Exec> dlosses,               // (N)
                           ConstFlat<Real, Exec> probs,                 // (N, Vp)
                           ConstFlat<int, Exec> targets,                // (N)
                           int N, int V, int Vp) {
  const index_t NV = static_cast<index_t>(N) * Vp;
  detail::require(0 < V && V <= Vp, "crossentropy_backward", "needs 0 < V <= Vp");
  detail::require_size(dlogits, NV, "crossentropy_backward", "dlogits");
  detail::require_size(dlosses, N, "crossentropy_backward", "dlosses");
  detail::require_size(probs, NV, "crossentropy_backward", "probs");
  detail::require_size(targets, N, "crossentropy_backward", "targets");
  Kokkos::parallel_for(
      "p2bw::crossentropy_backward", Kokkos::RangePolicy<Exec>(exec, 0, NV),
      KOKKOS_LAMBDA(const index_t i) {
        const index_t row = i / Vp;
        const int j = static_cast<int>(i % Vp);
        const int target = targets(row);
        Real d = Real(0);
        if (target >= 0 && j < V) {
          d = (probs(i) - (j == target ? Real(1) : Real(0))) * dlosses(row);
        }
        dlogits(i) = d;
      });
}

}  // namespace p2bw::kernels::reference
