// Tests of kernels/gelu.hpp and kernels/residual.hpp, and of math::fast_exp (kernels/types.hpp)
// that GELU and the softmaxes use: GELU forward against the formula, its
// finite-difference gradient in double, the fused bias + GELU forward, and the residual
// forward/backward with the residual stream's accumulate semantics; with bf16 storage, each of
// them bit for bit against the float-storage emulation (kernels/storage.hpp).
#include "kernels/gelu.hpp"
#include "kernels/residual.hpp"

#include "bf16_storage.hpp"
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

// bf16 storage (kernels/storage.hpp): every kernel here run with Store = bf16 gives the bits of
// its Store = float run on the same bf16-exact inputs, rounded. Sizes are not multiples of any
// vector width; the inputs include the special values.
constexpr int kStoreN = 7, kStoreC = 37, kStoreSize = kStoreN * kStoreC;

// bf16-exact values in [lo, hi) with NaN, ±inf, ±0, the largest bf16 and a subnormal at the start.
Buf<float> bf16_exact_with_specials(unsigned seed, double lo, double hi) {
  Buf<float> b(kStoreSize, "inp");
  fill_random_bf16_exact(b, seed, lo, hi);
  const float inf = std::numeric_limits<float>::infinity();
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(),      inf, -inf, 0.0f, -0.0f,
                            static_cast<float>(bf16::from_bits(0x7f7fu)),   // the largest bf16
                            static_cast<float>(bf16::from_bits(0x0001u))};  // the smallest
  for (std::size_t i = 0; i < sizeof specials / sizeof specials[0]; ++i)
    set_bf16_exact(b, i, specials[i]);
  b.to_device();
  return b;
}

TEST(Gelu, Bf16StorageForwardMatchesEmulation) {
  const Buf<float> inp = bf16_exact_with_specials(50, -6.0, 6.0);
  const Buf<bf16> inp16 = to_bf16(inp, "inp16");
  Buf<float> out(kStoreSize, "out");
  Buf<bf16> out16(kStoreSize, "out16");
  out.fill(std::numeric_limits<float>::quiet_NaN());
  out16.fill(bf16_nan());
  const Exec exec;
  gelu_forward<float>(exec, out.d, inp.d, kStoreSize);
  gelu_forward<float, bf16>(exec, out16.d, inp16.d, kStoreSize);
  expect_bf16_bits("gelu out", out16, out);
  expect_needs_rounding("gelu out", out);
  out16.to_host();
  EXPECT_EQ(out16[1].bits, bf16(std::numeric_limits<float>::infinity()).bits);  // gelu(inf)
}

TEST(Gelu, Bf16StorageBackwardInPlaceMatchesEmulation) {
  // The model's call: the gradient of the GELU output overwritten by that of its input.
  const Buf<float> inp = bf16_exact_with_specials(51, -6.0, 6.0);
  const Buf<float> dout = bf16_exact_with_specials(52, -2.0, 2.0);
  const Buf<bf16> inp16 = to_bf16(inp, "inp16"), d16 = to_bf16(dout, "d16");
  const Buf<bf16> dout16 = to_bf16(dout, "dout16");
  Buf<float> d(kStoreSize, "d");
  d.assign(dout.values());
  Buf<bf16> dinp16(kStoreSize, "dinp16");
  dinp16.fill(bf16_nan());
  const Exec exec;
  gelu_backward<float>(exec, d.d, d.d, inp.d, kStoreSize);
  gelu_backward<float, bf16>(exec, d16.d, d16.d, inp16.d, kStoreSize);
  gelu_backward<float, bf16>(exec, dinp16.d, dout16.d, inp16.d, kStoreSize);  // out of place
  expect_bf16_bits("gelu dinp in place", d16, d);
  expect_bf16_bits("gelu dinp", dinp16, d);
  expect_needs_rounding("gelu dinp", d);
}

TEST(Residual, Bf16StorageForwardAndBackwardMatchEmulation) {
  // Forward in place over b, as the model adds a branch to the stream (out = x + out).
  const Buf<float> a = bf16_exact_with_specials(55, -1.0, 1.0);
  Buf<float> b(kStoreSize, "b");
  fill_random_bf16_exact(b, 56);
  // The largest bf16 plus half its ulp (2^119): a float, and a tie that bf16 rounds to +inf.
  set_bf16_exact(b, 5, std::ldexp(1.0f, 119));
  set_bf16_exact(b, 1, -std::numeric_limits<float>::infinity());  // inf - inf: NaN
  b.to_device();
  const Buf<bf16> a16 = to_bf16(a, "a16"), b16 = to_bf16(b, "b16");
  const Exec exec;
  residual_forward<float>(exec, b.d, a.d, b.d, kStoreSize);
  residual_forward<float, bf16>(exec, b16.d, a16.d, b16.d, kStoreSize);
  expect_bf16_bits("residual out", b16, b);
  expect_needs_rounding("residual out", b);
  b.to_host();
  b16.to_host();
  EXPECT_TRUE(std::isfinite(b[5]));
  EXPECT_EQ(b16[5].bits, bf16(std::numeric_limits<float>::infinity()).bits);
  EXPECT_EQ(b16[1].bits, bf16_nan().bits);

  // Backward: da and db accumulate dout, rounded once per sum.
  Buf<float> da(kStoreSize, "da"), db(kStoreSize, "db"), dout(kStoreSize, "dout");
  fill_random_bf16_exact(da, 57);
  fill_random_bf16_exact(db, 58);
  fill_random_bf16_exact(dout, 59);
  const Buf<bf16> da16 = to_bf16(da, "da16"), db16 = to_bf16(db, "db16");
  const Buf<bf16> dout16 = to_bf16(dout, "dout16");
  residual_backward<float>(exec, da.d, db.d, dout.d, kStoreSize);
  residual_backward<float, bf16>(exec, da16.d, db16.d, dout16.d, kStoreSize);
  expect_bf16_bits("residual da", da16, da);
  expect_bf16_bits("residual db", db16, db);
  expect_needs_rounding("residual da", da);
  // With db skipped: da accumulates again from its rounded value, as the emulation's store did.
  for (int i = 0; i < kStoreSize; ++i) da[i] = static_cast<float>(bf16(da[i]));
  da.to_device();
  residual_backward<float>(exec, da.d, Flat<float, Exec>(), dout.d, kStoreSize);
  residual_backward<float, bf16>(exec, da16.d, Flat<bf16, Exec>(), dout16.d, kStoreSize);
  expect_bf16_bits("residual da, db skipped", da16, da);
}

}  // namespace
}  // namespace p2bw::kernels::test
