// Tests of kernels/layernorm.hpp: forward (out, mean, rstd) against a plain-loop reference in
// double and in float, finite-difference gradients of input, weight and bias in double, and the
// contract (input gradient assigned, parameter gradients accumulated); with bf16 storage, forward
// and backward bit for bit against the float-storage emulation; the fused residual + LayerNorm
// bit for bit against residual_forward then layernorm_forward.
#include "kernels/layernorm.hpp"

#include <cstring>

#include "kernels/residual.hpp"

#include "bf16_storage.hpp"
#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

constexpr int N = 10, C = 8;  // N = B*T with B = 2, T = 5

struct Reference {
  std::vector<double> out, mean, rstd;
};

Reference reference_layernorm(const std::vector<double>& x, const std::vector<double>& w,
                              const std::vector<double>& b, int n_rows, int c_) {
  Reference r{std::vector<double>(x.size()), std::vector<double>(n_rows),
              std::vector<double>(n_rows)};
  for (int n = 0; n < n_rows; ++n) {
    double m = 0.0;
    for (int c = 0; c < c_; ++c) m += x[n * c_ + c];
    m /= c_;
    double v = 0.0;
    for (int c = 0; c < c_; ++c) v += (x[n * c_ + c] - m) * (x[n * c_ + c] - m);
    v /= c_;
    const double s = 1.0 / std::sqrt(v + 1e-5);
    for (int c = 0; c < c_; ++c) r.out[n * c_ + c] = (x[n * c_ + c] - m) * s * w[c] + b[c];
    r.mean[n] = m;
    r.rstd[n] = s;
  }
  return r;
}

template <class Real>
void check_forward(unsigned seed) {
  Buf<Real> inp(N * C, "inp"), weight(C, "weight"), bias(C, "bias"), out(N * C, "out");
  Buf<Real> mean(N, "mean"), rstd(N, "rstd");
  fill_random(inp, seed, -2.0, 3.0);
  fill_random(weight, seed + 1);
  fill_random(bias, seed + 2);
  layernorm_forward<Real>(Exec(), out.d, mean.d, rstd.d, inp.d, weight.d, bias.d, N, C);
  const Reference r =
      reference_layernorm(inp.as_double(), weight.as_double(), bias.as_double(), N, C);
  expect_close("layernorm out", out.values(), r.out, 2 * C);
  expect_close("layernorm mean", mean.values(), r.mean, C);
  expect_close("layernorm rstd", rstd.values(), r.rstd, 2 * C);
}

TEST(LayerNorm, ForwardMatchesReferenceDouble) {
  check_forward<double>(1);
}
TEST(LayerNorm, ForwardMatchesReferenceFloat) {
  check_forward<float>(2);
}

TEST(LayerNorm, GradientCheck) {
  Buf<double> inp(N * C, "inp"), weight(C, "weight"), bias(C, "bias"), out(N * C, "out");
  Buf<double> mean(N, "mean"), rstd(N, "rstd");
  Buf<double> dinp(N * C, "dinp"), dweight(C, "dweight"), dbias(C, "dbias"), dout(N * C, "dout");
  fill_random(inp, 10, -2.0, 3.0);
  fill_random(weight, 11);
  fill_random(bias, 12);
  fill_random(dweight, 13);
  fill_random(dbias, 14);
  dinp.fill(nan());  // assigned: whatever is there must not matter
  const std::vector<double> R = random_vector(N * C, 15);
  dout.assign(R);
  const std::vector<double> dweight0 = dweight.values(), dbias0 = dbias.values();
  const Exec exec;
  layernorm_forward<double>(exec, out.d, mean.d, rstd.d, inp.d, weight.d, bias.d, N, C);
  layernorm_backward<double>(exec, dinp.d, dweight.d, dbias.d, dout.d, inp.d, mean.d, rstd.d,
                             weight.d, N, C);
  auto loss = [&]() {
    layernorm_forward<double>(exec, out.d, mean.d, rstd.d, inp.d, weight.d, bias.d, N, C);
    return project(out, R);
  };
  const double n_red = N + C;
  check_gradient("layernorm dinp", inp, dinp.values(), n_red, loss);
  check_gradient("layernorm dweight", weight, accumulated(dweight, dweight0), n_red, loss);
  check_gradient("layernorm dbias", bias, accumulated(dbias, dbias0), n_red, loss);
}

// bf16 storage (kernels/storage.hpp): forward and backward with Store = bf16 give the bits of the
// Store = float run on the same bf16-exact inputs, the stored outputs (out, dinp) rounded, the
// Real ones (mean, rstd, dweight, dbias) equal. C = 21: whole lanes of the host loops and a tail;
// C = 5: the tail alone; with and without the column-sum workspace.
void check_bf16_storage(int n_rows, int c_, bool workspace, unsigned seed) {
  const int nc = n_rows * c_;
  Buf<float> inp(nc, "inp"), weight(c_, "weight"), bias(c_, "bias"), dout(nc, "dout");
  fill_random_bf16_exact(inp, seed, -2.0, 3.0);
  fill_random_bf16_exact(weight, seed + 1, 0.5, 1.5);
  fill_random_bf16_exact(bias, seed + 2);
  fill_random_bf16_exact(dout, seed + 3);
  const Buf<bf16> inp16 = to_bf16(inp, "inp16"), weight16 = to_bf16(weight, "weight16");
  const Buf<bf16> bias16 = to_bf16(bias, "bias16"), dout16 = to_bf16(dout, "dout16");
  Buf<float> out(nc, "out"), mean(n_rows, "mean"), rstd(n_rows, "rstd");
  Buf<float> mean16(n_rows, "mean16"), rstd16(n_rows, "rstd16");
  Buf<bf16> out16(nc, "out16");
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  out.fill(qnan);
  out16.fill(bf16_nan());
  const Exec exec;
  layernorm_forward<float>(exec, out.d, mean.d, rstd.d, inp.d, weight.d, bias.d, n_rows, c_);
  layernorm_forward<float, bf16>(exec, out16.d, mean16.d, rstd16.d, inp16.d, weight16.d, bias16.d,
                                 n_rows, c_);
  expect_bf16_bits("layernorm out", out16, out);
  expect_needs_rounding("layernorm out", out);
  expect_same_float_bits("layernorm mean", mean16, mean);
  expect_same_float_bits("layernorm rstd", rstd16, rstd);

  // Backward: dinp assigned (NaN before), the parameter gradients accumulated onto the same
  // (not bf16-exact) values in both runs.
  Buf<float> dinp(nc, "dinp"), dweight(c_, "dweight"), dbias(c_, "dbias");
  Buf<float> dweight16(c_, "dweight16"), dbias16(c_, "dbias16");
  Buf<bf16> dinp16(nc, "dinp16");
  fill_random(dweight, seed + 4);
  fill_random(dbias, seed + 5);
  dweight16.assign(dweight.values());
  dbias16.assign(dbias.values());
  dinp.fill(qnan);
  dinp16.fill(bf16_nan());
  Buf<float> colsum(workspace ? column_sum_workspace(c_) : 0, "colsum");
  layernorm_backward<float>(exec, dinp.d, dweight.d, dbias.d, dout.d, inp.d, mean.d, rstd.d,
                            weight.d, n_rows, c_, colsum.d);
  layernorm_backward<float, bf16>(exec, dinp16.d, dweight16.d, dbias16.d, dout16.d, inp16.d,
                                  mean16.d, rstd16.d, weight16.d, n_rows, c_, colsum.d);
  expect_bf16_bits("layernorm dinp", dinp16, dinp);
  expect_needs_rounding("layernorm dinp", dinp);
  expect_same_float_bits("layernorm dweight", dweight16, dweight);
  expect_same_float_bits("layernorm dbias", dbias16, dbias);
}

TEST(LayerNorm, Bf16StorageMatchesEmulation) {
  check_bf16_storage(7, 21, true, 40);
  check_bf16_storage(9, 5, false, 50);
}

// Whether two buffers hold the same bits.
template <class T>
bool same_bits(const Buf<T>& x, const Buf<T>& y) {
  const std::vector<T> a = x.values(), b = y.values();
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// residual_layernorm_forward gives the bits of residual_forward then layernorm_forward, out of
// place and with res aliasing b (the model's res2 = x + res2), on the host loops (float, bf16)
// and on the portable kernels (double).
template <class Real, class Store>
void check_fused_residual_layernorm(int n_rows, int c_, unsigned seed) {
  const int nc = n_rows * c_;
  Buf<float> af(nc, "a"), bf(nc, "b"), wf(c_, "weight"), biasf(c_, "bias");
  fill_random_bf16_exact(af, seed, -2.0, 3.0);
  fill_random_bf16_exact(bf, seed + 1, -1.0, 1.0);
  fill_random_bf16_exact(wf, seed + 2, 0.5, 1.5);
  fill_random_bf16_exact(biasf, seed + 3);
  const auto as_store = [](const Buf<float>& f, const std::string& label) {
    Buf<Store> out(f.size(), label);
    const std::vector<float> v = f.values();
    for (std::size_t i = 0; i < v.size(); ++i) out.h(i) = Store(v[i]);
    Kokkos::deep_copy(out.d, out.h);
    return out;
  };
  const Buf<Store> a = as_store(af, "a"), w = as_store(wf, "w"), bias = as_store(biasf, "bias");
  Buf<Store> b = as_store(bf, "b"), b_alias = as_store(bf, "b_alias");
  Buf<Store> res(nc, "res"), out(nc, "out"), res2(nc, "res2"), out2(nc, "out2"), out3(nc, "out3");
  Buf<Real> mean(n_rows, "mean"), rstd(n_rows, "rstd"), mean2(n_rows, "mean2"),
      rstd2(n_rows, "rstd2"), mean3(n_rows, "mean3"), rstd3(n_rows, "rstd3");
  const Exec exec;
  residual_forward<Real, Store>(exec, res.d, a.d, b.d, nc);
  layernorm_forward<Real, Store>(exec, out.d, mean.d, rstd.d, res.d, w.d, bias.d, n_rows, c_);
  residual_layernorm_forward<Real, Store>(exec, res2.d, out2.d, mean2.d, rstd2.d, a.d, b.d, w.d,
                                          bias.d, n_rows, c_);
  residual_layernorm_forward<Real, Store>(exec, b_alias.d, out3.d, mean3.d, rstd3.d, a.d, b_alias.d,
                                          w.d, bias.d, n_rows, c_);
  EXPECT_TRUE(same_bits(res2, res)) << "res";
  EXPECT_TRUE(same_bits(out2, out)) << "out";
  EXPECT_TRUE(same_bits(mean2, mean)) << "mean";
  EXPECT_TRUE(same_bits(rstd2, rstd)) << "rstd";
  EXPECT_TRUE(same_bits(b_alias, res)) << "res in place over b";
  EXPECT_TRUE(same_bits(out3, out)) << "out with res in place over b";
  EXPECT_TRUE(same_bits(mean3, mean) && same_bits(rstd3, rstd)) << "statistics, in place";
}

TEST(LayerNorm, FusedResidualLayerNormIsTheTwoKernelsBitForBit) {
  check_fused_residual_layernorm<float, float>(7, 21, 60);
  check_fused_residual_layernorm<float, bf16>(7, 21, 61);
  check_fused_residual_layernorm<float, bf16>(9, 5, 62);
  check_fused_residual_layernorm<double, double>(7, 21, 63);
}

}  // namespace
}  // namespace p2bw::kernels::test
