// Tests of kernels/crossentropy.hpp (the fused classifier): losses and log-sum-exp against a naive
// softmax + CE over a padded vocabulary with ignored positions (double and float), rows wider
// than the 32 lanes, the logits' gradient against the former kernels (crossentropy_reference.hpp)
// and against finite differences in double, exact zeros on padded columns and ignored rows,
// in-place use; with bf16 logits, forward and backward bit for bit against the float-storage
// emulation.
#include "kernels/crossentropy.hpp"

#include "bf16_storage.hpp"
#include "crossentropy_reference.hpp"
#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

// N = B*T with B = 2, T = 5; V beyond the 32 lanes of a row, so lanes hold several columns.
constexpr int N = 10, V = 75, Vp = 80;
// Targets include the last real column and two ignored positions.
const std::vector<int> kTargets = {3, kIgnoreIndex, 74, 0, 7, 40, kIgnoreIndex, 1, 33, 5};

Buf<int> make_targets() {
  Buf<int> targets(N, "targets");
  for (int n = 0; n < N; ++n) targets[n] = kTargets[n];
  targets.to_device();
  return targets;
}

// Padded logits get the largest values of each row: they must not leak into the softmax.
template <class Real>
void fill_logits(const Buf<Real>& logits, unsigned seed) {
  fill_random(logits, seed, -3.0, 3.0);
  for (int n = 0; n < N; ++n) {
    for (int j = V; j < Vp; ++j) logits[n * Vp + j] = static_cast<Real>(4.0 + 0.1 * j);
  }
  logits.to_device();
}

template <class Real>
void check_forward(unsigned seed) {
  const Buf<int> targets = make_targets();
  Buf<Real> logits(N * Vp, "logits"), lse(N, "lse"), losses(N, "losses");
  fill_logits(logits, seed);
  classifier_forward<Real>(Exec(), losses.d, lse.d, logits.d, targets.d, N, V, Vp);
  std::vector<double> ref_lse(N, 0.0), ref_losses(N, 0.0);
  for (int n = 0; n < N; ++n) {
    double maxv = -1e300, sum = 0.0;
    for (int j = 0; j < V; ++j) maxv = std::max(maxv, static_cast<double>(logits[n * Vp + j]));
    for (int j = 0; j < V; ++j) sum += std::exp(logits[n * Vp + j] - maxv);
    ref_lse[n] = maxv + std::log(sum);
    if (kTargets[n] >= 0) ref_losses[n] = ref_lse[n] - logits[n * Vp + kTargets[n]];
  }
  const std::vector<Real> l = losses.values();
  expect_close("classifier lse", lse.values(), ref_lse, 2 * V);
  expect_close("classifier losses", l, ref_losses, 2 * V);
  for (int n = 0; n < N; ++n) {
    if (kTargets[n] < 0) {
      EXPECT_EQ(l[n], Real(0)) << "ignored position";
    }
  }
}

// positions(0) = 1: the backward's scale is then the loss_scale itself.
Buf<double> one_position() {
  Buf<double> positions(1, "positions");
  positions.fill(1.0);
  return positions;
}

TEST(Classifier, MeanLossOnTheDevice) {
  // The mean over the rows with a target, accumulated into loss_sum; the count assigned.
  const Buf<int> targets = make_targets();
  Buf<float> logits(N * Vp, "logits"), lse(N, "lse"), losses(N, "losses");
  fill_logits(logits, 30);
  Buf<double> loss_sum(1, "loss_sum"), positions(1, "positions");
  Buf<double> ws(classifier_mean_loss_workspace(N), "ws");
  loss_sum.fill(0.25);
  positions.fill(nan());
  ws.fill(nan());
  const Exec exec;
  classifier_forward<float>(exec, losses.d, lse.d, logits.d, targets.d, N, V, Vp);
  classifier_mean_loss<float>(exec, loss_sum.d, positions.d, losses.d, targets.d, ws.d, N);
  double sum = 0.0;
  int count = 0;
  const std::vector<float> values = losses.values();
  for (int n = 0; n < N; ++n) {
    if (kTargets[n] < 0) continue;
    sum += values[n];
    ++count;
  }
  ASSERT_GT(count, 0);
  EXPECT_EQ(positions.values()[0], count);
  EXPECT_NEAR(loss_sum.values()[0], 0.25 + sum / count, 1e-12);
  // No row with a target: the count is 0 and nothing is added.
  Buf<int> ignored(N, "ignored");
  ignored.fill(kIgnoreIndex);
  classifier_mean_loss<float>(exec, loss_sum.d, positions.d, losses.d, ignored.d, ws.d, N);
  EXPECT_EQ(positions.values()[0], 0.0);
  EXPECT_NEAR(loss_sum.values()[0], 0.25 + sum / count, 1e-12);
}

TEST(Classifier, ForwardMatchesReferenceDouble) {
  check_forward<double>(1);
}
TEST(Classifier, ForwardMatchesReferenceFloat) {
  check_forward<float>(2);
}

TEST(Classifier, BackwardMatchesReferenceKernels) {
  const Buf<int> targets = make_targets();
  Buf<double> logits(N * Vp, "logits"), lse(N, "lse"), losses(N, "losses"), dlogits(N * Vp);
  Buf<double> probs(N * Vp, "probs"), ref_dlogits(N * Vp), dlosses(N);
  fill_logits(logits, 5);
  const double scale = 0.125;
  dlosses.fill(scale);
  const Exec exec;
  classifier_forward<double>(exec, losses.d, lse.d, logits.d, targets.d, N, V, Vp);
  classifier_backward<double>(exec, dlogits.d, logits.d, lse.d, targets.d, one_position().d, scale,
                              N, V, Vp);
  Buf<double> ref_losses(N);
  reference::crossentropy_forward<double>(exec, ref_losses.d, probs.d, logits.d, targets.d, N, V,
                                          Vp);
  reference::crossentropy_backward<double>(exec, ref_dlogits.d, dlosses.d, probs.d, targets.d, N, V,
                                           Vp);
  expect_close("classifier losses vs reference kernel", losses.values(), ref_losses.values(),
               2 * V);
  expect_close("classifier dlogits vs reference kernel", dlogits.values(), ref_dlogits.values(),
               2 * V);
}

TEST(Classifier, GradientCheck) {
  const Buf<int> targets = make_targets();
  Buf<double> logits(N * Vp, "logits"), lse(N, "lse"), losses(N, "losses");
  Buf<double> dlogits(N * Vp, "dlogits");
  fill_logits(logits, 10);
  dlogits.fill(nan());
  const double scale = 0.3;
  const std::vector<double> R(N, scale);  // the loss is scale * the sum of the losses
  const Exec exec;
  classifier_forward<double>(exec, losses.d, lse.d, logits.d, targets.d, N, V, Vp);
  classifier_backward<double>(exec, dlogits.d, logits.d, lse.d, targets.d, one_position().d, scale,
                              N, V, Vp);
  const std::vector<double> grad = dlogits.values();
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < Vp; ++j) {
      if (j >= V || kTargets[n] < 0) {
        EXPECT_EQ(grad[n * Vp + j], 0.0) << "row " << n << ", column " << j << " must be exactly 0";
      }
    }
  }
  auto loss = [&]() {
    classifier_forward<double>(exec, losses.d, lse.d, logits.d, targets.d, N, V, Vp);
    return project(losses, R);
  };
  check_gradient("classifier dlogits", logits, grad, 2 * V, loss);
}

TEST(Classifier, InPlace) {
  // dlogits written over the logits: the LM head's use.
  const Buf<int> targets = make_targets();
  Buf<double> logits(N * Vp), lse(N), losses(N), dlogits(N * Vp), shared(N * Vp);
  fill_logits(logits, 20);
  const Exec exec;
  classifier_forward<double>(exec, losses.d, lse.d, logits.d, targets.d, N, V, Vp);
  classifier_backward<double>(exec, dlogits.d, logits.d, lse.d, targets.d, one_position().d, 0.5, N,
                              V, Vp);
  Kokkos::deep_copy(shared.d, logits.d);
  classifier_backward<double>(exec, shared.d, shared.d, lse.d, targets.d, one_position().d, 0.5, N,
                              V, Vp);
  EXPECT_EQ(shared.values(), dlogits.values());
}

TEST(Classifier, ArgumentChecks) {
  const Buf<int> targets = make_targets();
  Buf<double> logits(N * Vp), lse(N), losses(N);
  EXPECT_THROW(
      classifier_forward<double>(Exec(), losses.d, lse.d, logits.d, targets.d, N, Vp + 1, Vp),
      std::invalid_argument);
  Buf<double> short_lse(N - 1);
  EXPECT_THROW(
      classifier_forward<double>(Exec(), losses.d, short_lse.d, logits.d, targets.d, N, V, Vp),
      std::invalid_argument);
}

// bf16 storage (kernels/storage.hpp): with Store = bf16 logits the Real losses and log-sum-exps
// are bitwise those of the Store = float run on the same bf16-exact logits, and the gradient is
// the float run's rounded, in place over the logits as the LM head calls it and out of place;
// padded columns and ignored rows stay exact zeros.
TEST(Classifier, Bf16StorageMatchesEmulation) {
  const Buf<int> targets = make_targets();
  Buf<float> logits(N * Vp, "logits"), lse(N, "lse"), losses(N, "losses");
  fill_logits(logits, 40);
  logits.to_host();
  for (int i = 0; i < N * Vp; ++i) set_bf16_exact(logits, i, logits[i]);  // padded ones too
  logits.to_device();
  const Buf<bf16> logits16 = to_bf16(logits, "logits16");
  Buf<float> lse16(N, "lse16"), losses16(N, "losses16");
  const Exec exec;
  classifier_forward<float>(exec, losses.d, lse.d, logits.d, targets.d, N, V, Vp);
  classifier_forward<float, bf16>(exec, losses16.d, lse16.d, logits16.d, targets.d, N, V, Vp);
  expect_same_float_bits("classifier losses", losses16, losses);
  expect_same_float_bits("classifier lse", lse16, lse);

  Buf<double> loss_sum(1, "loss_sum"), positions(1, "positions");
  Buf<double> ws(classifier_mean_loss_workspace(N), "ws");
  loss_sum.fill(0.0);
  classifier_mean_loss<float>(exec, loss_sum.d, positions.d, losses.d, targets.d, ws.d, N);
  const double loss_scale = 0.3;
  Buf<bf16> dlogits16(N * Vp, "dlogits16");
  dlogits16.fill(bf16_nan());
  classifier_backward<float, bf16>(exec, dlogits16.d, logits16.d, lse16.d, targets.d, positions.d,
                                   loss_scale, N, V, Vp);
  classifier_backward<float>(exec, logits.d, logits.d, lse.d, targets.d, positions.d, loss_scale, N,
                             V, Vp);
  classifier_backward<float, bf16>(exec, logits16.d, logits16.d, lse16.d, targets.d, positions.d,
                                   loss_scale, N, V, Vp);
  expect_bf16_bits("classifier dlogits in place", logits16, logits);
  expect_bf16_bits("classifier dlogits", dlogits16, logits);
  expect_needs_rounding("classifier dlogits", logits);
  logits16.to_host();
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < Vp; ++j) {
      if (j >= V || kTargets[n] < 0) {
        EXPECT_EQ(logits16[n * Vp + j].bits, 0u) << "row " << n << ", column " << j;
      }
    }
  }
}

}  // namespace
}  // namespace p2bw::kernels::test
