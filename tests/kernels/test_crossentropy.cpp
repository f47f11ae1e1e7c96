// Tests of kernels/crossentropy.hpp: losses and probabilities against a naive softmax + CE over a
// padded vocabulary with ignored positions (double and float), the finite-difference gradient of
// the logits in double, exact zeros on padded columns and ignored rows, and in-place use.
#include "kernels/crossentropy.hpp"

#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

constexpr int N = 10, V = 11, Vp = 16;  // N = B*T with B = 2, T = 5
// Targets include the last real column and two ignored positions.
const std::vector<int> kTargets = {3, kIgnoreIndex, 10, 0, 7, 7, kIgnoreIndex, 1, 9, 5};

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
  Buf<Real> logits(N * Vp, "logits"), probs(N * Vp, "probs"), losses(N, "losses");
  fill_logits(logits, seed);
  crossentropy_forward<Real>(Exec(), losses.d, probs.d, logits.d, targets.d, N, V, Vp);
  std::vector<double> ref_probs(N * Vp, 0.0), ref_losses(N, 0.0);
  for (int n = 0; n < N; ++n) {
    double maxv = -1e300, sum = 0.0;
    for (int j = 0; j < V; ++j) maxv = std::max(maxv, static_cast<double>(logits[n * Vp + j]));
    for (int j = 0; j < V; ++j) sum += std::exp(logits[n * Vp + j] - maxv);
    for (int j = 0; j < V; ++j) ref_probs[n * Vp + j] = std::exp(logits[n * Vp + j] - maxv) / sum;
    if (kTargets[n] >= 0) ref_losses[n] = -std::log(ref_probs[n * Vp + kTargets[n]]);
  }
  const std::vector<Real> p = probs.values(), l = losses.values();
  expect_close("crossentropy probs", p, ref_probs, 2 * V);
  expect_close("crossentropy losses", l, ref_losses, 2 * V);
  for (int n = 0; n < N; ++n) {
    for (int j = V; j < Vp; ++j) EXPECT_EQ(p[n * Vp + j], Real(0)) << "padded probability";
    if (kTargets[n] < 0) {
      EXPECT_EQ(l[n], Real(0)) << "ignored position";
    }
  }
}

TEST(CrossEntropy, ForwardMatchesReferenceDouble) {
  check_forward<double>(1);
}
TEST(CrossEntropy, ForwardMatchesReferenceFloat) {
  check_forward<float>(2);
}

TEST(CrossEntropy, GradientCheck) {
  const Buf<int> targets = make_targets();
  Buf<double> logits(N * Vp, "logits"), probs(N * Vp, "probs"), losses(N, "losses");
  Buf<double> dlogits(N * Vp, "dlogits"), dlosses(N, "dlosses");
  fill_logits(logits, 10);
  dlogits.fill(nan());
  const std::vector<double> R = random_vector(N, 11);  // per-position loss weights
  dlosses.assign(R);
  const Exec exec;
  crossentropy_forward<double>(exec, losses.d, probs.d, logits.d, targets.d, N, V, Vp);
  crossentropy_backward<double>(exec, dlogits.d, dlosses.d, probs.d, targets.d, N, V, Vp);
  const std::vector<double> grad = dlogits.values();
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < Vp; ++j) {
      if (j >= V || kTargets[n] < 0) {
        EXPECT_EQ(grad[n * Vp + j], 0.0) << "row " << n << ", column " << j << " must be exactly 0";
      }
    }
  }
  auto loss = [&]() {
    crossentropy_forward<double>(exec, losses.d, probs.d, logits.d, targets.d, N, V, Vp);
    return project(losses, R);
  };
  check_gradient("crossentropy dlogits", logits, grad, 2 * V, loss);
}

TEST(CrossEntropy, InPlace) {
  // probs written over logits, dlogits over probs: the memory-saving use in the LM head.
  const Buf<int> targets = make_targets();
  Buf<double> logits(N * Vp), probs(N * Vp), losses(N), dlogits(N * Vp), dlosses(N);
  Buf<double> shared(N * Vp), shared_losses(N);
  fill_logits(logits, 20);
  fill_random(dlosses, 21);
  const Exec exec;
  crossentropy_forward<double>(exec, losses.d, probs.d, logits.d, targets.d, N, V, Vp);
  crossentropy_backward<double>(exec, dlogits.d, dlosses.d, probs.d, targets.d, N, V, Vp);
  Kokkos::deep_copy(shared.d, logits.d);
  crossentropy_forward<double>(exec, shared_losses.d, shared.d, shared.d, targets.d, N, V, Vp);
  EXPECT_EQ(shared.values(), probs.values());
  EXPECT_EQ(shared_losses.values(), losses.values());
  crossentropy_backward<double>(exec, shared.d, dlosses.d, shared.d, targets.d, N, V, Vp);
  EXPECT_EQ(shared.values(), dlogits.values());
}

TEST(CrossEntropy, ArgumentChecks) {
  const Buf<int> targets = make_targets();
  Buf<double> logits(N * Vp), probs(N * Vp), losses(N);
  EXPECT_THROW(
      crossentropy_forward<double>(Exec(), losses.d, probs.d, logits.d, targets.d, N, Vp + 1, Vp),
      std::invalid_argument);
}

}  // namespace
}  // namespace p2bw::kernels::test
