// Fused classifier: softmax cross-entropy over a padded vocabulary without a probability buffer.
// Logits are (N, Vp) with N = B*T rows of which only the first V columns are real: padded columns
// never enter the softmax and get gradient exactly 0. A target of kIgnoreIndex (any negative
// value) marks a position without loss (BERT's unmasked positions): loss 0 and zero gradient.
// Forward reads each row once (online max and sum) and keeps only its log-sum-exp; backward
// writes the logits' gradient from the logits and that log-sum-exp in one pass, in place.
// The former kernels (probabilities, then their gradient) are the tests' reference,
// tests/kernels/crossentropy_reference.hpp.
#pragma once

#include "kernels/types.hpp"

namespace p2bw::kernels {

constexpr int kIgnoreIndex = -1;

namespace detail {
constexpr int kClassifierLanes = 32;  // virtual lanes per row: column j goes to lane j % 32
}

// lse[n] = log sum_{j < V} exp(logits[n, j]); losses[n] = lse[n] - logits[n, targets[n]] (0 where
// ignored). One team per row; each of kClassifierLanes virtual lanes keeps a running max and sum
// over its columns in column order, and the lanes are merged in lane order, so the result does
// not depend on the team size. Precondition: targets[n] < V.
template <class Real, class Exec>
void classifier_forward(const Exec& exec, Flat<Real, Exec> losses,  // (N)
                        Flat<Real, Exec> lse,                       // (N), saved for backward
                        ConstFlat<Real, Exec> logits,               // (N, Vp)
                        ConstFlat<int, Exec> targets,               // (N)
                        int N, int V, int Vp) {
  using detail::kClassifierLanes;
  detail::require(0 < V && V <= Vp, "classifier_forward", "needs 0 < V <= Vp");
  detail::require_size(losses, N, "classifier_forward", "losses");
  detail::require_size(lse, N, "classifier_forward", "lse");
  detail::require_size(logits, static_cast<index_t>(N) * Vp, "classifier_forward", "logits");
  detail::require_size(targets, N, "classifier_forward", "targets");
  const auto policy =
      Kokkos::TeamPolicy<Exec>(exec, N, Kokkos::AUTO)
          .set_scratch_size(0, Kokkos::PerTeam(static_cast<size_t>(
                                   TeamScratch<Real, Exec>::shmem_size(2 * kClassifierLanes))));
  Kokkos::parallel_for(
      "p2bw::classifier_forward", policy, KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const int row = team.league_rank();
        const index_t base = static_cast<index_t>(row) * Vp;
        TeamScratch<Real, Exec> lanes(team.team_scratch(0), 2 * kClassifierLanes);  // (2, lanes)
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kClassifierLanes), [&](const int lane) {
          Real m = math::lowest<Real>(), s = Real(0);
          for (int j = lane; j < V; j += kClassifierLanes) {
            const Real x = logits(base + j);
            if (x > m) {
              s = s * math::exp(m - x) + Real(1);
              m = x;
            } else {
              s += math::exp(x - m);
            }
          }
          lanes(lane) = m;
          lanes(kClassifierLanes + lane) = s;
        });
        team.team_barrier();
        Kokkos::single(Kokkos::PerTeam(team), [&]() {
          Real m = math::lowest<Real>();
          for (int lane = 0; lane < kClassifierLanes; ++lane) m = math::max(m, lanes(lane));
          Real s = Real(0);
          for (int lane = 0; lane < kClassifierLanes; ++lane)
            s += lanes(kClassifierLanes + lane) * math::exp(lanes(lane) - m);
          const Real l = m + math::log(s);
          const int target = targets(row);
          lse(row) = l;
          losses(row) = target < 0 ? Real(0) : l - logits(base + target);
        });
      });
}

// dlogits[n, j] = (exp(logits[n, j] - lse[n]) - [j == targets[n]]) * scale for j < V; 0 on padded
// columns and ignored rows (assigned; dlogits may alias logits). scale is d(loss)/d(loss_n), e.g.
// 1 / (number of positions with a loss).
template <class Real, class Exec>
void classifier_backward(const Exec& exec, Flat<Real, Exec> dlogits,  // (N, Vp), assigned
                         ConstFlat<Real, Exec> logits,                // (N, Vp)
                         ConstFlat<Real, Exec> lse,                   // (N)
                         ConstFlat<int, Exec> targets,                // (N)
                         Real scale, int N, int V, int Vp) {
  const index_t NV = static_cast<index_t>(N) * Vp;
  detail::require(0 < V && V <= Vp, "classifier_backward", "needs 0 < V <= Vp");
  detail::require_size(dlogits, NV, "classifier_backward", "dlogits");
  detail::require_size(logits, NV, "classifier_backward", "logits");
  detail::require_size(lse, N, "classifier_backward", "lse");
  detail::require_size(targets, N, "classifier_backward", "targets");
  Kokkos::parallel_for(
      "p2bw::classifier_backward", Kokkos::RangePolicy<Exec>(exec, 0, NV),
      KOKKOS_LAMBDA(const index_t i) {
        const index_t row = i / Vp;
        const int j = static_cast<int>(i % Vp);
        const int target = targets(row);
        Real d = Real(0);
        if (target >= 0 && j < V)
          d = (math::exp(logits(i) - lse(row)) - (j == target ? Real(1) : Real(0))) * scale;
        dlogits(i) = d;
      });
}

}  // namespace p2bw::kernels
