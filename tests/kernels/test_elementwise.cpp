// Tests of kernels/gelu.hpp and kernels/residual.hpp, and of math::fast_exp (kernels/types.hpp)
// that GELU and the softmaxes use: GELU forward against the formula, its
// finite-difference gradient in double, the fused bias + GELU forward, and the residual
// forward/backward with the residual stream's accumulate semantics.
#include "kernels/gelu.hpp"
#include "kernels/residual.hpp"

#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

constexpr int N = 10, C = 8;

double reference_gelu(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / std::acos(-1.0)) * (x + 0.044715 * x * x * x)));
}

template <class Real>
void check_gelu_forward(unsigned seed) {
  Buf<Real> inp(N * C, "inp"), out(N * C, "out");
  fill_random(inp, seed, -6.0, 6.0);
  gelu_forward<Real>(Exec(), out.d, inp.d, N * C);
  std::vector<double> ref(N * C);
  for (int i = 0; i < N * C; ++i) ref[i] = reference_gelu(inp[i]);
  expect_close("gelu out", out.values(), ref, 8);
}

// math::fast_exp for float on the host (the polynomial of kernels/types.hpp): within 1 ulp of
// the exact exp over the normal range, within one denormal step below it, +inf (or FLT_MAX at
// the edge) above ln(FLT_MAX), exact at 0, NaN through.
TEST(FastExp, FloatWithinOneUlpAndLimits) {
  double worst = 0.0;
  for (int k = -2400000; k <= 2000000; ++k) {
    const float x = static_cast<float>(k) * 4.5e-5f;  // [-108, 90]
    const double exact = std::exp(static_cast<double>(x));
    const float got = math::fast_exp(x);
    if (exact < std::numeric_limits<float>::min()) {
      EXPECT_LE(std::abs(got - exact), std::ldexp(1.0, -149)) << x;
    } else if (exact > std::numeric_limits<float>::max()) {
      EXPECT_TRUE(got == std::numeric_limits<float>::infinity() ||
                  got == std::numeric_limits<float>::max())
          << x;
    } else {
      const double ulp = std::ldexp(1.0, std::ilogb(exact) - 23);
      worst = std::max(worst, std::abs(got - exact) / ulp);
    }
  }
  EXPECT_LE(worst, 1.0);
  EXPECT_EQ(math::fast_exp(0.0f), 1.0f);
  EXPECT_EQ(math::fast_exp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(math::fast_exp(std::numeric_limits<float>::infinity()),
            std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(math::fast_exp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(math::fast_exp(1.0), std::exp(1.0));  // double: libm's
}

TEST(Gelu, ForwardMatchesFormula) {
  check_gelu_forward<double>(1);
  check_gelu_forward<float>(2);
}

TEST(Gelu, GradientCheck) {
  Buf<double> inp(N * C, "inp"), out(N * C, "out"), dinp(N * C, "dinp"), dout(N * C, "dout");
  fill_random(inp, 10, -4.0, 4.0);
  dinp.fill(nan());
  const std::vector<double> R = random_vector(N * C, 11);
  dout.assign(R);
  const Exec exec;
  gelu_backward<double>(exec, dinp.d, dout.d, inp.d, N * C);
  auto loss = [&]() {
    gelu_forward<double>(exec, out.d, inp.d, N * C);
    return project(out, R);
  };
  check_gradient("gelu dinp", inp, dinp.values(), 8, loss);
}

TEST(Gelu, BackwardInPlaceOverDout) {
  Buf<double> inp(N * C), dout(N * C), dinp(N * C);
  fill_random(inp, 20);
  fill_random(dout, 21);
  const Exec exec;
  gelu_backward<double>(exec, dinp.d, dout.d, inp.d, N * C);
  gelu_backward<double>(exec, dout.d, dout.d, inp.d, N * C);
  EXPECT_EQ(dout.values(), dinp.values());
}

TEST(Gelu, FusedBiasGeluForward) {
  Buf<double> pre(N * C, "pre"), bias(C, "bias"), out(N * C, "out");
  fill_random(pre, 30, -3.0, 3.0);
  fill_random(bias, 31);
  const std::vector<double> pre0 = pre.values();
  bias_gelu_forward<double>(Exec(), out.d, pre.d, bias.d, N, C);
  std::vector<double> ref_pre(N * C), ref_out(N * C);
  for (int n = 0; n < N; ++n) {
    for (int c = 0; c < C; ++c) {
      ref_pre[n * C + c] = pre0[n * C + c] + bias[c];
      ref_out[n * C + c] = reference_gelu(ref_pre[n * C + c]);
    }
  }
  EXPECT_EQ(pre.values(), ref_pre);  // one addition, exact
  expect_close("bias_gelu out", out.values(), ref_out, 8);
}

TEST(Residual, ForwardAndAccumulatingBackward) {
  const int n = N * C;
  Buf<double> a(n, "a"), b(n, "b"), out(n, "out"), da(n, "da"), db(n, "db"), dout(n, "dout");
  fill_random(a, 40);
  fill_random(b, 41);
  fill_random(da, 42);
  fill_random(db, 43);
  fill_random(dout, 44);
  const std::vector<double> da0 = da.values(), db0 = db.values();
  const Exec exec;
  residual_forward<double>(exec, out.d, a.d, b.d, n);
  residual_backward<double>(exec, da.d, db.d, dout.d, n);
  const std::vector<double> o = out.values(), ga = da.values(), gb = db.values();
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(o[i], a[i] + b[i]);
    EXPECT_EQ(ga[i], da0[i] + dout[i]);  // accumulated: the residual-stream exception
    EXPECT_EQ(gb[i], db0[i] + dout[i]);
  }
  // In place (out aliases a) and with one gradient skipped.
  residual_forward<double>(exec, a.d, a.d, b.d, n);
  EXPECT_EQ(a.values(), o);
  residual_backward<double>(exec, da.d, Flat<double, Exec>(), dout.d, n);
  const std::vector<double> ga2 = da.values();
  for (int i = 0; i < n; ++i) EXPECT_EQ(ga2[i], ga[i] + dout[i]);
}

}  // namespace
}  // namespace p2bw::kernels::test
