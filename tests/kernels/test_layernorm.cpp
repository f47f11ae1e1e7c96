// Tests of kernels/layernorm.hpp: forward (out, mean, rstd) against a plain-loop reference in
// double and in float, finite-difference gradients of input, weight and bias in double, and the
// contract (input gradient assigned, parameter gradients accumulated).
#include "kernels/layernorm.hpp"

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

}  // namespace
}  // namespace p2bw::kernels::test
