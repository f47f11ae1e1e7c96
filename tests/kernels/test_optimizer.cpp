// Tests of kernels/adamw.hpp, kernels/sgd.hpp and kernels/decay_ranges.hpp: several steps against
// hand-written scalar loops (bias correction, decay ranges, grad_scale), out of place (the input
// version stays untouched) and in place, for float and double weights; the weight prediction
// written beside the update (kernels/prediction.hpp), over the gradient buffer, and its bf16
// rounding (the compute copy of model.precision: bf16).
#include "kernels/adamw.hpp"
#include "kernels/sgd.hpp"

#include "bf16_storage.hpp"
#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

using Ranges = std::vector<std::pair<index_t, index_t>>;

constexpr int kN = 1000;
const Ranges kDecay = {{0, 300}, {500, 800}, {999, 1000}};

bool in_ranges(const Ranges& ranges, index_t i) {
  for (const auto& r : ranges) {
    if (r.first <= i && i < r.second) return true;
  }
  return false;
}

// flags[i] = ranges.contains(i), evaluated on the device.
std::vector<int> device_contains(const DecayRanges<Exec>& ranges, int n) {
  Buf<int> flags(n, "flags");
  const Flat<int, Exec> f = flags.d;
  Kokkos::parallel_for(
      "test::decay_contains", Kokkos::RangePolicy<Exec>(0, n),
      KOKKOS_LAMBDA(const int i) { f(i) = ranges.contains(i) ? 1 : 0; });
  return flags.values();
}

TEST(DecayRanges, MembershipAndValidation) {
  const DecayRanges<Exec> ranges(Exec(), kDecay);
  EXPECT_EQ(ranges.count(), 3);
  const std::vector<int> flags = device_contains(ranges, kN);
  for (int i = 0; i < kN; ++i) EXPECT_EQ(flags[i] != 0, in_ranges(kDecay, i)) << i;
  const std::vector<int> none = device_contains(DecayRanges<Exec>(), 10);
  for (int flag : none) EXPECT_EQ(flag, 0);
  EXPECT_THROW(DecayRanges<Exec>(Exec(), Ranges{{5, 10}, {8, 12}}), std::invalid_argument);
  EXPECT_THROW(DecayRanges<Exec>(Exec(), Ranges{{5, 5}}), std::invalid_argument);
  EXPECT_THROW(DecayRanges<Exec>(Exec(), Ranges{{10, 20}, {0, 5}}), std::invalid_argument);
}

// flags[i] = the flag for_each_decay passes for element i (-1 where it passes none).
std::vector<int> walked_flags(const DecayRanges<Exec>& ranges, int n) {
  Buf<int> flags(n, "flags");
  const Flat<int, Exec> f = flags.d;
  Kokkos::deep_copy(f, -1);
  for_each_decay(
      Exec(), "test::for_each_decay", n, ranges,
      KOKKOS_LAMBDA(const index_t i, const bool decays) { f(i) = decays ? 1 : 0; });
  return flags.values();
}

// Runs that cross the per-team chunks (kDecayChunk elements), adjacent ranges, a chunk without a
// range and the last element.
TEST(DecayRanges, ForEachWalksEveryElementWithItsFlag) {
  constexpr int n = 3 * static_cast<int>(detail::kDecayChunk) + 17;
  const Ranges decay = {{0, 10}, {4000, 4100}, {5000, 8192}, {8192, 8193}, {9000, n - 1}};
  const std::vector<int> flags = walked_flags(DecayRanges<Exec>(Exec(), decay), n);
  for (int i = 0; i < n; ++i) EXPECT_EQ(flags[i], in_ranges(decay, i) ? 1 : 0) << i;
  for (int flag : walked_flags(DecayRanges<Exec>(), 5000)) EXPECT_EQ(flag, 0);
  EXPECT_TRUE(walked_flags(DecayRanges<Exec>(Exec(), decay), 0).empty());
}

struct AdamWConfig {
  double lr = 1e-2, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// The update exactly as documented in adamw.hpp, one element at a time.
template <class Real>
void reference_adamw(std::vector<Real>& w, const std::vector<Real>& grad, std::vector<float>& m,
                     std::vector<float>& v, const AdamWConfig& cfg, std::int64_t step,
                     double grad_scale) {
  using Acc = std::common_type_t<Real, float>;
  const Acc correction1 = static_cast<Acc>(1.0 - std::pow(cfg.beta1, static_cast<double>(step)));
  const Acc correction2 = static_cast<Acc>(1.0 - std::pow(cfg.beta2, static_cast<double>(step)));
  for (std::size_t i = 0; i < w.size(); ++i) {
    const Acc g = static_cast<Acc>(grad[i]) * static_cast<Acc>(grad_scale);
    const Acc mi = static_cast<Acc>(cfg.beta1) * static_cast<Acc>(m[i]) +
                   static_cast<Acc>(1.0 - cfg.beta1) * g;
    const Acc vi = static_cast<Acc>(cfg.beta2) * static_cast<Acc>(v[i]) +
                   static_cast<Acc>(1.0 - cfg.beta2) * g * g;
    m[i] = static_cast<float>(mi);
    v[i] = static_cast<float>(vi);
    const Acc m_hat = mi / correction1, v_hat = vi / correction2;
    const Acc wi = static_cast<Acc>(w[i]);
    const Acc wd =
        in_ranges(kDecay, static_cast<index_t>(i)) ? static_cast<Acc>(cfg.weight_decay) : Acc(0);
    w[i] = static_cast<Real>(
        wi - static_cast<Acc>(cfg.lr) *
                 (m_hat / (std::sqrt(v_hat) + static_cast<Acc>(cfg.eps)) + wd * wi));
  }
}

// Tolerance: a few rounding errors of the arithmetic type on the weight and on the update.
template <class Real>
void expect_weights_close(const std::vector<Real>& got, const std::vector<Real>& ref, double lr,
                          const char* what) {
  using Acc = std::common_type_t<Real, float>;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double tol = 4.0 * eps<Acc>() * (std::abs(static_cast<double>(ref[i])) + lr);
    EXPECT_NEAR(static_cast<double>(got[i]), static_cast<double>(ref[i]), tol) << what << i;
  }
}

template <class Real>
void check_adamw(bool in_place, unsigned seed) {
  SCOPED_TRACE(in_place ? "in place" : "out of place");
  const AdamWConfig cfg;
  const double grad_scale = 0.5;
  const DecayRanges<Exec> ranges(Exec(), kDecay);
  Buf<Real> w_a(kN, "w_a"), w_b(kN, "w_b"), grad(kN, "grad");
  Buf<float> m(kN, "m"), v(kN, "v");
  fill_random(w_a, seed);
  m.fill(0.0f);
  v.fill(0.0f);
  std::vector<Real> w_ref = w_a.values();
  std::vector<float> m_ref(kN, 0.0f), v_ref(kN, 0.0f);
  // The size of m's terms, b1 |m| + (1 - b1) |g| accumulated like m: on a GPU nvcc fuses m's
  // update into an FMA (one product unrounded), which is within a few eps of this, not of m,
  // where the two terms nearly cancel.
  std::vector<double> m_terms(kN, 0.0);
  // Two weight versions: read one, write the other, swap (PipeDream-2BW); or one buffer in place.
  const Buf<Real>* in = &w_a;
  const Buf<Real>* out = in_place ? &w_a : &w_b;
  for (std::int64_t step = 1; step <= 4; ++step) {
    fill_random(grad, seed + 10 * static_cast<unsigned>(step), -2.0, 2.0);
    const std::vector<Real> before = in->values();
    adamw_update<Real>(Exec(), out->d, in->d, grad.d, m.d, v.d, ranges, cfg.lr, cfg.beta1,
                       cfg.beta2, cfg.eps, cfg.weight_decay, step, grad_scale);
    const std::vector<Real> g = grad.values();
    reference_adamw(w_ref, g, m_ref, v_ref, cfg, step, grad_scale);
    for (int i = 0; i < kN; ++i)
      m_terms[i] = cfg.beta1 * m_terms[i] +
                   (1.0 - cfg.beta1) * std::abs(static_cast<double>(g[i]) * grad_scale);
    if (!in_place) {
      EXPECT_EQ(in->values(), before) << "the input version must stay untouched";
    }
    expect_weights_close(out->values(), w_ref, cfg.lr, "w ");
    const std::vector<float> mg = m.values(), vg = v.values();
    for (int i = 0; i < kN; ++i) {
      const double m_size = kHostKernels ? std::abs(m_ref[i]) : m_terms[i];
      EXPECT_NEAR(mg[i], m_ref[i], 4.0 * eps<float>() * m_size) << "m " << i;
      EXPECT_NEAR(vg[i], v_ref[i], 4.0 * eps<float>() * std::abs(v_ref[i])) << "v " << i;
    }
    if (!in_place) std::swap(in, out);
  }
}

TEST(AdamW, MatchesScalarLoopFloat) {
  check_adamw<float>(false, 1);
  check_adamw<float>(true, 2);
}

TEST(AdamW, MatchesScalarLoopDouble) {
  check_adamw<double>(false, 3);
  check_adamw<double>(true, 4);
}

TEST(AdamW, FirstStepMovesByLearningRate) {
  // With bias correction, step 1 gives m_hat / sqrt(v_hat) = sign(g): |dw| = lr (no decay, eps
  // negligible). A check of the bias correction independent of the reference loop.
  Buf<float> w(kN), grad(kN), m(kN), v(kN), w_new(kN);
  fill_random(w, 50);
  fill_random(grad, 51, 0.5, 1.0);
  m.fill(0.0f);
  v.fill(0.0f);
  adamw_update<float>(Exec(), w_new.d, w.d, grad.d, m.d, v.d, DecayRanges<Exec>(), 1e-3, 0.9, 0.999,
                      1e-12, 0.0, 1, 1.0);
  const std::vector<float> before = w.values(), after = w_new.values();
  for (int i = 0; i < kN; ++i) EXPECT_NEAR(before[i] - after[i], 1e-3, 1e-3 * 1e-4) << i;
}

struct SgdConfig {
  double lr = 5e-2, momentum = 0.9, weight_decay = 0.01;
};

template <class Real>
void reference_sgd(std::vector<Real>& w, const std::vector<Real>& grad, std::vector<float>& buf,
                   const SgdConfig& cfg, double grad_scale) {
  using Acc = std::common_type_t<Real, float>;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const Acc wi = static_cast<Acc>(w[i]);
    Acc g = static_cast<Acc>(grad[i]) * static_cast<Acc>(grad_scale);
    if (in_ranges(kDecay, static_cast<index_t>(i))) g += static_cast<Acc>(cfg.weight_decay) * wi;
    if (cfg.momentum != 0.0) {
      g = static_cast<Acc>(cfg.momentum) * static_cast<Acc>(buf[i]) + g;
      buf[i] = static_cast<float>(g);
    }
    w[i] = static_cast<Real>(wi - static_cast<Acc>(cfg.lr) * g);
  }
}

template <class Real>
void check_sgd(const SgdConfig& cfg, bool in_place, unsigned seed) {
  SCOPED_TRACE(std::string(in_place ? "in place" : "out of place") + ", momentum " +
               std::to_string(cfg.momentum));
  const double grad_scale = 0.25;
  const DecayRanges<Exec> ranges(Exec(), kDecay);
  Buf<Real> w_a(kN), w_b(kN), grad(kN);
  Buf<float> buf(cfg.momentum != 0.0 ? kN : 0);
  fill_random(w_a, seed);
  buf.fill(0.0f);
  std::vector<Real> w_ref = w_a.values();
  std::vector<float> buf_ref(kN, 0.0f);
  const Buf<Real>* in = &w_a;
  const Buf<Real>* out = in_place ? &w_a : &w_b;
  for (int step = 1; step <= 3; ++step) {
    fill_random(grad, seed + 10 * static_cast<unsigned>(step));
    const std::vector<Real> before = in->values();
    sgd_update<Real>(Exec(), out->d, in->d, grad.d, buf.d, ranges, cfg.lr, cfg.momentum,
                     cfg.weight_decay, grad_scale);
    reference_sgd(w_ref, grad.values(), buf_ref, cfg, grad_scale);
    if (!in_place) {
      EXPECT_EQ(in->values(), before);
    }
    expect_weights_close(out->values(), w_ref, cfg.lr, "w ");
    if (!in_place) std::swap(in, out);
  }
}

TEST(Sgd, MatchesScalarLoop) {
  SgdConfig plain;
  plain.momentum = 0.0;  // no momentum buffer at all
  for (bool in_place : {false, true}) {
    check_sgd<float>(SgdConfig(), in_place, 60);
    check_sgd<double>(SgdConfig(), in_place, 61);
    check_sgd<float>(plain, in_place, 62);
  }
}

// The prediction over the gradient (as 2bw's executor writes it): the weights are the same bits
// as without a prediction, and out = w' + gamma (w' - w) from the rounded w' (on the host the
// same bits as this formula; on a GPU within one ulp, where nvcc fuses it into one FMA).
TEST(Prediction, WrittenOverTheGradientBesideAnInPlaceUpdate) {
  for (bool adamw : {true, false}) {
    Buf<float> w(kN), grad(kN), w_plain(kN), grad_copy(kN), m(kN), v(kN), m2(kN), v2(kN);
    fill_random(w, 70);
    fill_random(w_plain, 70);
    fill_random(grad, 71);
    fill_random(grad_copy, 71);
    for (Buf<float>* b : {&m, &v, &m2, &v2}) b->fill(0.0f);
    const std::vector<float> before = w.values();
    const DecayRanges<Exec> ranges(Exec(), kDecay);
    const double gamma = 0.75;
    const Prediction<float, Exec> prediction{grad.d, gamma};
    if (adamw) {
      adamw_update<float>(Exec(), w.d, w.d, grad.d, m.d, v.d, ranges, 1e-2, 0.9, 0.95, 1e-8, 0.1, 1,
                          0.5, prediction);
      adamw_update<float>(Exec(), w_plain.d, w_plain.d, grad_copy.d, m2.d, v2.d, ranges, 1e-2, 0.9,
                          0.95, 1e-8, 0.1, 1, 0.5);
    } else {
      sgd_update<float>(Exec(), w.d, w.d, grad.d, m.d, ranges, 5e-2, 0.9, 0.01, 0.5, prediction);
      sgd_update<float>(Exec(), w_plain.d, w_plain.d, grad_copy.d, m2.d, ranges, 5e-2, 0.9, 0.01,
                        0.5);
    }
    const std::vector<float> after = w.values(), predicted = grad.values();
    EXPECT_EQ(after, w_plain.values()) << (adamw ? "adamw" : "sgd");
    for (int i = 0; i < kN; ++i) {
      const float want = after[i] + static_cast<float>(gamma) * (after[i] - before[i]);
      if (kHostKernels) {
        EXPECT_EQ(predicted[i], want) << (adamw ? "adamw " : "sgd ") << i;
      } else {  // nvcc contracts w' + gamma d into one FMA (one rounding, not two): within 1 ulp
        EXPECT_LE(std::abs(predicted[i] - want), eps<float>() * std::abs(want))
            << (adamw ? "adamw " : "sgd ") << i;
      }
      EXPECT_NE(predicted[i], after[i]) << i;
    }
  }
}

// With Store = bf16 the compute copy is a bf16 buffer holding bf16 of what the float prediction
// writes (gamma 0: of the updated weight itself), bit for bit, for AdamW and SGD; the fp32
// weights are the same bits either way.
TEST(Prediction, ABf16ComputeCopyIsTheRoundedPrediction) {
  for (bool adamw : {true, false}) {
    for (double gamma : {0.0, 0.75}) {
      SCOPED_TRACE(std::string(adamw ? "adamw" : "sgd") + " gamma " + std::to_string(gamma));
      Buf<float> w(kN), w2(kN), grad(kN), plain(kN), m(kN), v(kN), m2(kN), v2(kN);
      Buf<bf16> copy(kN, "copy");
      fill_random(w, 82);
      fill_random(w2, 82);
      fill_random(grad, 83);
      for (Buf<float>* b : {&m, &v, &m2, &v2}) b->fill(0.0f);
      const DecayRanges<Exec> ranges(Exec(), kDecay);
      const Prediction<float, Exec> in_float{plain.d, gamma};
      const Prediction<float, Exec, bf16> storage{copy.d, gamma};
      if (adamw) {
        adamw_update<float>(Exec(), w.d, w.d, grad.d, m.d, v.d, ranges, 1e-2, 0.9, 0.95, 1e-8, 0.1,
                            1, 0.5, in_float);
        adamw_update<float, bf16>(Exec(), w2.d, w2.d, grad.d, m2.d, v2.d, ranges, 1e-2, 0.9, 0.95,
                                  1e-8, 0.1, 1, 0.5, storage);
      } else {
        sgd_update<float>(Exec(), w.d, w.d, grad.d, m.d, ranges, 5e-2, 0.9, 0.01, 0.5, in_float);
        sgd_update<float, bf16>(Exec(), w2.d, w2.d, grad.d, m2.d, ranges, 5e-2, 0.9, 0.01, 0.5,
                                storage);
      }
      expect_same_float_bits("weights", w2, w);
      expect_bf16_bits("compute copy", copy, plain);
      expect_needs_rounding("compute copy", plain);
    }
  }
}

}  // namespace
}  // namespace p2bw::kernels::test
