// Tests of kernels/matmul.hpp: forward against plain loops (with and without bias, double and
// float), finite-difference gradients of input, weight and bias in double, the contract, and
// that the bias gradient is reproducible bit for bit.
#include "kernels/matmul.hpp"

#include <cstring>

#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

constexpr int N = 10, C = 8, OC = 12;  // N = B*T with B = 2, T = 5

std::vector<double> reference_matmul(const std::vector<double>& x, const std::vector<double>& w,
                                     const std::vector<double>* bias) {
  std::vector<double> out(N * OC);
  for (int n = 0; n < N; ++n) {
    for (int o = 0; o < OC; ++o) {
      double sum = bias ? (*bias)[o] : 0.0;
      for (int c = 0; c < C; ++c) sum += x[n * C + c] * w[o * C + c];
      out[n * OC + o] = sum;
    }
  }
  return out;
}

template <class Real>
void check_forward(bool with_bias, unsigned seed) {
  Buf<Real> inp(N * C, "inp"), weight(OC * C, "weight"), bias(OC, "bias"), out(N * OC, "out");
  fill_random(inp, seed);
  fill_random(weight, seed + 1);
  fill_random(bias, seed + 2);
  const ConstFlat<Real, Exec> no_bias;  // empty: no bias
  matmul_forward<Real>(Exec(), out.d, inp.d, weight.d,
                       with_bias ? ConstFlat<Real, Exec>(bias.d) : no_bias, N, C, OC);
  const std::vector<double> b = bias.as_double();
  const std::vector<double> ref =
      reference_matmul(inp.as_double(), weight.as_double(), with_bias ? &b : nullptr);
  expect_close(with_bias ? "matmul out (bias)" : "matmul out (no bias)", out.values(), ref, C + 1);
}

TEST(Matmul, ForwardMatchesReference) {
  check_forward<double>(true, 1);
  check_forward<double>(false, 2);
  check_forward<float>(true, 3);
  check_forward<float>(false, 4);
}

void gradient_check(bool with_bias, unsigned seed) {
  Buf<double> inp(N * C, "inp"), weight(OC * C, "weight"), bias(OC, "bias"), out(N * OC, "out");
  Buf<double> dinp(N * C, "dinp"), dweight(OC * C, "dweight"), dbias(OC, "dbias"),
      dout(N * OC, "dout");
  fill_random(inp, seed);
  fill_random(weight, seed + 1);
  fill_random(bias, seed + 2);
  fill_random(dweight, seed + 3);
  fill_random(dbias, seed + 4);
  dinp.fill(nan());
  const std::vector<double> R = random_vector(N * OC, seed + 5);
  dout.assign(R);
  const std::vector<double> dweight0 = dweight.values(), dbias0 = dbias.values();
  const Exec exec;
  const ConstFlat<double, Exec> b =
      with_bias ? ConstFlat<double, Exec>(bias.d) : ConstFlat<double, Exec>();
  const Flat<double, Exec> db = with_bias ? Flat<double, Exec>(dbias.d) : Flat<double, Exec>();
  matmul_backward<double>(exec, dinp.d, dweight.d, db, dout.d, inp.d, weight.d, N, C, OC);
  auto loss = [&]() {
    matmul_forward<double>(exec, out.d, inp.d, weight.d, b, N, C, OC);
    return project(out, R);
  };
  const double n_red = N + C;
  const std::string tag = with_bias ? " (bias)" : " (no bias)";
  check_gradient("matmul dinp" + tag, inp, dinp.values(), n_red, loss);
  check_gradient("matmul dweight" + tag, weight, accumulated(dweight, dweight0), n_red, loss);
  if (with_bias) {
    check_gradient("matmul dbias", bias, accumulated(dbias, dbias0), n_red, loss);
  } else {
    const std::vector<double> untouched = dbias.values();
    for (int o = 0; o < OC; ++o) EXPECT_EQ(untouched[o], dbias0[o]);
  }
}

TEST(Matmul, GradientCheckWithBias) {
  gradient_check(true, 10);
}
TEST(Matmul, GradientCheckWithoutBias) {
  gradient_check(false, 20);
}

TEST(Matmul, BiasGradientIsReproducible) {
  // More rows than column_sum_add's 64 row chunks, a column count that is not a multiple of 32.
  const int n = 1000, c = 8, oc = 45;
  Buf<float> inp(n * c), weight(oc * c), dinp(n * c), dweight(oc * c), dbias(oc), dout(n * oc);
  fill_random(inp, 30);
  fill_random(weight, 31);
  fill_random(dout, 32);
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 2; ++run) {
    dbias.fill(0.0f);
    dweight.fill(0.0f);
    matmul_backward<float>(Exec(), dinp.d, dweight.d, dbias.d, dout.d, inp.d, weight.d, n, c, oc);
    runs.push_back(dbias.values());
  }
  EXPECT_EQ(0, std::memcmp(runs[0].data(), runs[1].data(), oc * sizeof(float)));
  for (int o = 0; o < oc; ++o) {
    double sum = 0.0, mag = 0.0;
    for (int r = 0; r < n; ++r) {
      sum += dout[r * oc + o];
      mag += std::abs(dout[r * oc + o]);
    }
    // Sequential chunks of ceil(n / 64) rows, then 64 chunk sums: (n / 64 + 64) additions deep.
    EXPECT_NEAR(runs[0][o], sum, (n / 64.0 + 65.0) * eps<float>() * mag);
  }
}

}  // namespace
}  // namespace p2bw::kernels::test
