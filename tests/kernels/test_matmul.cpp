// Tests of kernels/matmul.hpp: forward against plain loops (with and without bias, double and
// float), finite-difference gradients of input, weight and bias in double, the contract, and
// that the bias gradient is reproducible bit for bit; bf16 storage (forward and backward) against
// float storage followed by rounding, bit for bit on the host.
#include "kernels/matmul.hpp"

#include <cstring>

#include "bf16_storage.hpp"
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

// bf16 storage: out, inp, weight, bias, dinp and dout bf16; dweight and dbias (accumulated onto
// nonzero values) and the column-sum workspace float. Against the float-storage run on the same
// bf16-exact values, its bf16 outputs rounded. N, C, OC are not multiples of 4, 8 or 16.
void check_bf16_storage(bool with_bias, unsigned seed) {
  const int n = 13, c = 19, oc = 37;
  Buf<float> inp(n * c, "inp"), weight(oc * c, "weight"), bias(oc, "bias"), dout(n * oc, "dout");
  fill_random_bf16_exact(inp, seed);
  fill_random_bf16_exact(weight, seed + 1);
  fill_random_bf16_exact(bias, seed + 2);
  fill_random_bf16_exact(dout, seed + 3);
  Buf<float> dweight0(oc * c, "dweight0"), dbias0(oc, "dbias0");
  fill_random(dweight0, seed + 4);  // accumulated onto: any float values
  fill_random(dbias0, seed + 5);
  const Buf<bf16> inp16 = to_bf16(inp), weight16 = to_bf16(weight), bias16 = to_bf16(bias),
                  dout16 = to_bf16(dout);
  Buf<float> out(n * oc, "out"), dinp(n * c, "dinp");
  Buf<bf16> out16(n * oc, "out bf16"), dinp16(n * c, "dinp bf16");
  dinp.fill(static_cast<float>(nan()));  // assigned: what was there must not matter
  dinp16.fill(bf16(static_cast<float>(nan())));
  const Buf<float> dweight = copy_of(dweight0), dbias = copy_of(dbias0);
  const Buf<float> dweight_b = copy_of(dweight0), dbias_b = copy_of(dbias0);
  Buf<float> colsum(column_sum_workspace(oc), "colsum");
  const Exec exec;
  const ConstFlat<float, Exec> b =
      with_bias ? ConstFlat<float, Exec>(bias.d) : ConstFlat<float, Exec>();
  const ConstFlat<bf16, Exec> b16 =
      with_bias ? ConstFlat<bf16, Exec>(bias16.d) : ConstFlat<bf16, Exec>();
  const Flat<float, Exec> db = with_bias ? Flat<float, Exec>(dbias.d) : Flat<float, Exec>();
  const Flat<float, Exec> db_b = with_bias ? Flat<float, Exec>(dbias_b.d) : Flat<float, Exec>();
  matmul_forward<float>(exec, out.d, inp.d, weight.d, b, n, c, oc);
  matmul_forward<float, bf16>(exec, out16.d, inp16.d, weight16.d, b16, n, c, oc);
  matmul_backward<float>(exec, dinp.d, dweight.d, db, dout.d, inp.d, weight.d, n, c, oc, colsum.d);
  matmul_backward<float, bf16>(exec, dinp16.d, dweight_b.d, db_b, dout16.d, inp16.d, weight16.d, n,
                               c, oc, colsum.d);
  Kokkos::fence();
  // Per-element bounds of two float GEMMs (store_compare.hpp) for the device comparison.
  std::vector<double> gap_out(n * oc), gap_dinp(n * c), gap_dweight(oc * c);
  for (int r = 0; r < n; ++r) {
    for (int o = 0; o < oc; ++o) {
      double mag = with_bias ? std::abs(bias[o]) : 0.0;
      for (int k = 0; k < c; ++k) mag += std::abs(inp[r * c + k] * weight[o * c + k]);
      gap_out[r * oc + o] = float_gemm_gap(c, mag);
    }
    for (int k = 0; k < c; ++k) {
      double mag = 0.0;
      for (int o = 0; o < oc; ++o) mag += std::abs(dout[r * oc + o] * weight[o * c + k]);
      gap_dinp[r * c + k] = float_gemm_gap(oc, mag);
    }
  }
  for (int o = 0; o < oc; ++o) {
    for (int k = 0; k < c; ++k) {
      double mag = std::abs(dweight0[o * c + k]);
      for (int r = 0; r < n; ++r) mag += std::abs(dout[r * oc + o] * inp[r * c + k]);
      gap_dweight[o * c + k] = float_gemm_gap(n, mag);
    }
  }
  const std::string tag = with_bias ? " (bias)" : " (no bias)";
  expect_bf16_storage_matches("matmul out" + tag, out16, out, gap_out);
  expect_bf16_storage_matches("matmul dinp" + tag, dinp16, dinp, gap_dinp);
  expect_real_matches("matmul dweight" + tag, dweight_b, dweight, gap_dweight);
  // The same values through the same deterministic column sum: bitwise on every device.
  expect_same_float_bits("matmul dbias" + tag, dbias_b, dbias);
  if (!with_bias) expect_same_float_bits("matmul dbias untouched", dbias_b, dbias0);
  // The float run's stored outputs are mostly not bf16 values, so skipped rounding would fail.
  EXPECT_GT(not_bf16_exact(out), out.size() / 2) << tag;
  EXPECT_GT(not_bf16_exact(dinp), dinp.size() / 2) << tag;
  // dweight and dbias did accumulate (onto nonzero values).
  EXPECT_GT(not_bf16_exact(dweight), 0u) << tag;
  dweight.to_host();
  dweight0.to_host();
  std::size_t changed = 0;
  for (std::size_t i = 0; i < dweight.size(); ++i) changed += dweight[i] != dweight0[i];
  EXPECT_GT(changed, dweight.size() / 2) << tag;
}

TEST(MatmulBf16Storage, WithBiasMatchesFloatStorageRounded) {
  check_bf16_storage(true, 40);
}
TEST(MatmulBf16Storage, WithoutBiasMatchesFloatStorageRounded) {
  check_bf16_storage(false, 50);
}

}  // namespace
}  // namespace p2bw::kernels::test
