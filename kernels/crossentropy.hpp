// Fused classifier: softmax cross-entropy over a padded vocabulary without a probability buffer.
// Logits are (N, Vp) with N = B*T rows of which only the first V columns are real: padded columns
// never enter the softmax and get gradient exactly 0. A target of kIgnoreIndex (any negative
// value) marks a position without loss (BERT's unmasked positions): loss 0 and zero gradient.
// Forward reads each row once (online max and sum) and keeps only its log-sum-exp; backward
// writes the logits' gradient from the logits and that log-sum-exp in one pass, in place. The
// microbatch's mean loss is summed on the device (classifier_mean_loss), so nothing is copied
// to the host per microbatch.
// The logits and their gradient are Store (kernels/storage.hpp); the per-row losses and
// log-sum-exps are Real.
// The former kernels (probabilities, then their gradient) are the tests' reference,
// tests/kernels/crossentropy_reference.hpp.
#pragma once

#include "kernels/reduce.hpp"
#include "kernels/storage.hpp"
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
template <class Real, class Store = Real, class Exec>
void classifier_forward(const Exec& exec, Flat<Real, Exec> losses,  // (N)
                        Flat<Real, Exec> lse,                       // (N), saved for backward
                        ConstFlat<Store, Exec> logits,              // (N, Vp)
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
            const Real x = widen(logits(base + j));
            if (x > m) {
              s = s * math::fast_exp(m - x) + Real(1);
              m = x;
            } else {
              s += math::fast_exp(x - m);
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
            s += lanes(kClassifierLanes + lane) * math::fast_exp(lanes(lane) - m);
          const Real l = m + math::log(s);
          const int target = targets(row);
          lse(row) = l;
          losses(row) = target < 0 ? Real(0) : l - static_cast<Real>(widen(logits(base + target)));
        });
      });
}

// Doubles of scratch classifier_mean_loss needs for N rows.
inline index_t classifier_mean_loss_workspace(int N) {
  return detail::fixed_order_sum_partials(N, detail::kNormChunk) + 1;
}

// On the device, without blocking: positions(0) = the number of rows with a target (targets >= 0)
// and loss_sum(0) += the mean of losses over those rows (nothing added without any). The losses
// (0 on ignored rows) are summed in double in the fixed order of detail::fixed_order_sum.
template <class Real, class Exec>
void classifier_mean_loss(const Exec& exec, Flat<double, Exec> loss_sum,  // (1), accumulated
                          Flat<double, Exec> positions,                   // (1), assigned
                          ConstFlat<Real, Exec> losses,                   // (N)
                          ConstFlat<int, Exec> targets,                   // (N)
                          Flat<double, Exec> workspace,  // (classifier_mean_loss_workspace(N))
                          int N) {
  detail::require_size(loss_sum, 1, "classifier_mean_loss", "loss_sum");
  detail::require_size(positions, 1, "classifier_mean_loss", "positions");
  detail::require_size(losses, N, "classifier_mean_loss", "losses");
  detail::require_size(targets, N, "classifier_mean_loss", "targets");
  detail::require_size(workspace, classifier_mean_loss_workspace(N), "classifier_mean_loss",
                       "workspace");
  const index_t partials = detail::fixed_order_sum_partials(N, detail::kNormChunk);
  const Flat<double, Exec> sum(workspace.data() + partials, 1);  // (1)
  detail::fixed_order_sum<false, Real>(exec, losses, N, detail::kNormChunk,
                                       Flat<double, Exec>(workspace.data(), partials), sum);
  // A count of ones is exact in double, whatever the order.
  Kokkos::parallel_reduce(
      "p2bw::classifier_positions", Kokkos::RangePolicy<Exec>(exec, 0, N),
      KOKKOS_LAMBDA(const int i, double& count) { count += targets(i) >= 0 ? 1.0 : 0.0; },
      Kokkos::subview(positions, 0));
  Kokkos::parallel_for(
      "p2bw::classifier_mean_loss", Kokkos::RangePolicy<Exec>(exec, 0, 1),
      KOKKOS_LAMBDA(const int) {
        if (positions(0) > 0) loss_sum(0) += sum(0) / positions(0);
      });
}

// dlogits[n, j] = (exp(logits[n, j] - lse[n]) - [j == targets[n]]) * scale for j < V; 0 on padded
// columns and ignored rows (assigned; dlogits may alias logits). scale = d(loss)/d(loss_n) =
// loss_scale / positions(0), the device count of rows with a loss (classifier_mean_loss): the
// gradient of loss_scale times the mean loss; 0 when positions(0) is 0.
template <class Real, class Store = Real, class Exec>
void classifier_backward(const Exec& exec, Flat<Store, Exec> dlogits,  // (N, Vp), assigned
                         ConstFlat<Store, Exec> logits,                // (N, Vp)
                         ConstFlat<Real, Exec> lse,                    // (N)
                         ConstFlat<int, Exec> targets,                 // (N)
                         ConstFlat<double, Exec> positions,            // (1)
                         double loss_scale, int N, int V, int Vp) {
  const index_t NV = static_cast<index_t>(N) * Vp;
  detail::require(0 < V && V <= Vp, "classifier_backward", "needs 0 < V <= Vp");
  detail::require_size(dlogits, NV, "classifier_backward", "dlogits");
  detail::require_size(logits, NV, "classifier_backward", "logits");
  detail::require_size(lse, N, "classifier_backward", "lse");
  detail::require_size(targets, N, "classifier_backward", "targets");
  detail::require_size(positions, 1, "classifier_backward", "positions");
  // One team per row: the row's target and scale once, no division per element.
  Kokkos::parallel_for(
      "p2bw::classifier_backward", Kokkos::TeamPolicy<Exec>(exec, N, Kokkos::AUTO),
      KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const int row = team.league_rank();
        const index_t base = static_cast<index_t>(row) * Vp;
        const int target = targets(row);
        const double count = positions(0);
        const bool has_loss = target >= 0 && count > 0;
        const Real scale = has_loss ? static_cast<Real>(loss_scale / count) : Real(0);
        const Real l = lse(row);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, Vp), [&](const int j) {
          Real d = Real(0);
          if (has_loss && j < V) {
            const Real x = widen(logits(base + j));  // read before dlogits (may alias) is written
            d = (math::fast_exp(x - l) - (j == target ? Real(1) : Real(0))) * scale;
          }
          dlogits(base + j) = narrow<Store>(d);
        });
      });
}

}  // namespace p2bw::kernels
