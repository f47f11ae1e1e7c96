// Tests of kernels/matmul.hpp: forward against plain loops (with and without bias, double and
// float), finite-difference gradients of input, weight and bias in double, the contract, and
// that the bias gradient is reproducible bit for bit; bf16 storage (forward and backward) against
// float storage followed by rounding, bit for bit on the host; the MLP's GELU layers
// (matmul_gelu_forward, matmul_backward_gelu) by finite differences, and against the GEMM and
// GELU kernels: the same bits where they compose them, within rounding where cuBLASLt's GELU
// epilogue runs.
#include "kernels/matmul.hpp"

#include <cmath>
#include <cstring>

#include "bf16_storage.hpp"
#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

constexpr int N = 10, C = 8, OC = 12;  // N = B*T with B = 2, T = 5

std::vector<double> reference_matmul_sized(const std::vector<double>& x,
                                           const std::vector<double>& w,
                                           const std::vector<double>* bias, int rows, int in,
                                           int out_width) {
  std::vector<double> out(static_cast<std::size_t>(rows) * out_width);
  for (int n = 0; n < rows; ++n) {
    for (int o = 0; o < out_width; ++o) {
      double sum = bias ? (*bias)[o] : 0.0;
      for (int c = 0; c < in; ++c) sum += x[n * in + c] * w[o * in + c];
      out[static_cast<std::size_t>(n) * out_width + o] = sum;
    }
  }
  return out;
}

std::vector<double> reference_matmul(const std::vector<double>& x, const std::vector<double>& w,
                                     const std::vector<double>* bias) {
  return reference_matmul_sized(x, w, bias, N, C, OC);
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

// The MLP in double: pre = x W1^T + b1, h = gelu(pre), y = h W2^T + b2, through
// matmul_gelu_forward and matmul_forward; backward through matmul_backward_gelu (into d pre) and
// matmul_backward. Finite differences of x, W1, b1 and W2, and pre against plain loops.
TEST(MatmulGelu, GradientCheckThroughTheMlp) {
  constexpr int n = 6, c = 8, h = 16;  // rows, width, hidden width
  Buf<double> x(n * c, "x"), w1(h * c, "w1"), b1(h, "b1"), w2(c * h, "w2"), b2(c, "b2");
  Buf<double> pre(n * h, "pre"), hid(n * h, "gelu"), y(n * c, "y");
  Buf<double> dx(n * c, "dx"), dw1(h * c, "dw1"), db1(h, "db1"), dw2(c * h, "dw2"), db2(c, "db2");
  Buf<double> dpre(n * h, "dpre"), dy(n * c, "dy");
  fill_random(x, 60, -2.0, 2.0);  // pre-activations over GELU's curved part
  fill_random(w1, 61);
  fill_random(b1, 62);
  fill_random(w2, 63);
  fill_random(b2, 64);
  for (Buf<double>* g : {&dw1, &db1, &dw2, &db2}) g->fill(0.0);
  const std::vector<double> R = random_vector(n * c, 65);
  dy.assign(R);
  const Exec exec;
  auto forward = [&] {
    matmul_gelu_forward<double>(exec, hid.d, pre.d, x.d, w1.d, b1.d, n, c, h);
    matmul_forward<double>(exec, y.d, hid.d, w2.d, b2.d, n, h, c);
  };
  forward();
  const std::vector<double> b = b1.as_double();
  expect_close("mlp pre", pre.values(),
               reference_matmul_sized(x.as_double(), w1.as_double(), &b, n, c, h), c + 1);
  matmul_backward_gelu<double>(exec, dpre.d, dw2.d, db2.d, dy.d, hid.d, w2.d, pre.d, n, h, c);
  matmul_backward<double>(exec, dx.d, dw1.d, db1.d, dpre.d, x.d, w1.d, n, c, h);
  auto loss = [&] {
    forward();
    return project(y, R);
  };
  const double n_red = c + h;
  check_gradient("mlp dx", x, dx.values(), n_red, loss);
  check_gradient("mlp dw1", w1, dw1.values(), n_red, loss);
  check_gradient("mlp db1", b1, db1.values(), n_red, loss);
  check_gradient("mlp dw2", w2, dw2.values(), n_red, loss);
}

// matmul_gelu_forward and matmul_backward_gelu against matmul_forward + gelu_forward and
// matmul_backward + gelu_backward (in place), at widths cuBLASLt's GELU epilogue takes (leading
// dimensions multiples of 8). With the epilogue switched off, the same kernels: the same bits on
// every device. With it on: the same bits where nothing fuses (hosts, float storage); under
// cuBLASLt with bf16 storage two fused GEMMs (forward and backward), within the bound of two GEMMs
// 2 (k + 16) eps scale, plus bf16's 2^-7 (scale + |value|) (the fused GELU reads the unrounded
// pre-activation and rounds once, the kernels round the GEMM's result first), plus the epilogue's
// tanh approximation (up to about 2^-11): 2^-10 |pre| on GELU, 2^-10 (1 + |x| (1 + 0.134 x^2))
// times the product's scale on its derivative. The largest error / tolerance is printed.
// A float or bf16 buffer's values in double.
template <class T>
std::vector<double> widened(const Buf<T>& b) {
  b.to_host();
  std::vector<double> out(b.size());
  for (std::size_t i = 0; i < b.size(); ++i) out[i] = static_cast<float>(b[i]);
  return out;
}

template <class Store>
void check_gelu_layers_against_kernels(unsigned seed) {
  constexpr int n = 64, c = 32, h = 128;
  const bool bf16_storage = !std::is_same<Store, float>::value;
  Buf<float> xf(n * c, "x"), w1f(h * c, "w1"), b1f(h, "b1"), w2f(c * h, "w2"), dyf(n * c, "dy");
  for (Buf<float>* f : {&xf, &w1f, &b1f, &w2f, &dyf}) fill_random_bf16_exact(*f, seed++);
  auto store = [](const Buf<float>& f) {
    f.to_host();
    Buf<Store> s(f.size(), "store");
    for (std::size_t i = 0; i < f.size(); ++i) s[i] = Store(f[i]);
    s.to_device();
    return s;
  };
  const Buf<Store> x = store(xf), w1 = store(w1f), b1 = store(b1f), w2 = store(w2f),
                   dy = store(dyf);
  struct Run {
    Buf<Store> pre, hid, dpre;
    Buf<float> dw2, db2;
    Run() : pre(n * h, "pre"), hid(n * h, "gelu"), dpre(n * h, "dpre"), dw2(c * h), db2(c) {}
  };
  const Exec exec;
  Run kernels_run, off, on;
  kernels_run.dw2.fill(0.0f);
  kernels_run.db2.fill(0.0f);
  matmul_forward<float, Store>(exec, kernels_run.pre.d, x.d, w1.d, b1.d, n, c, h);
  gelu_forward<float, Store>(exec, kernels_run.hid.d, kernels_run.pre.d, n * h);
  matmul_backward<float, Store>(exec, kernels_run.dpre.d, kernels_run.dw2.d, kernels_run.db2.d,
                                dy.d, kernels_run.hid.d, w2.d, n, h, c);
  gelu_backward<float, Store>(exec, kernels_run.dpre.d, kernels_run.dpre.d, kernels_run.pre.d,
                              n * h);
  const long fused_before = gelu_epilogue_gemms();
  for (Run* run : {&off, &on}) {
    set_gelu_epilogue(run == &on);
    run->dw2.fill(0.0f);
    run->db2.fill(0.0f);
    matmul_gelu_forward<float, Store>(exec, run->hid.d, run->pre.d, x.d, w1.d, b1.d, n, c, h);
    matmul_backward_gelu<float, Store>(exec, run->dpre.d, run->dw2.d, run->db2.d, dy.d, run->hid.d,
                                       w2.d, run->pre.d, n, h, c);
  }
  set_gelu_epilogue(true);
  Kokkos::fence();
  const long fused = gelu_epilogue_gemms() - fused_before;
  auto same_bits = [](const std::string& what, const auto& got, const auto& want) {
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(got[0]))) << what;
  };
  same_bits("gelu epilogue off: pre", off.pre.values(), kernels_run.pre.values());
  same_bits("gelu epilogue off: gelu", off.hid.values(), kernels_run.hid.values());
  same_bits("gelu epilogue off: dpre", off.dpre.values(), kernels_run.dpre.values());
  same_bits("gelu epilogue off: dw2", off.dw2.values(), kernels_run.dw2.values());
  same_bits("gelu epilogue off: db2", off.db2.values(), kernels_run.db2.values());
  const bool fuses =
      bf16_storage && std::string(gemm_backend_name<float, Exec, Store>()) == "cublaslt";
  std::printf("  gelu epilogue (%s storage, %s): %ld fused GEMMs\n",
              bf16_storage ? "bf16" : "float", gemm_backend_name<float, Exec, Store>(), fused);
  if (!fuses) {
    EXPECT_EQ(fused, 0);
    same_bits("gelu epilogue on, nothing fused: gelu", on.hid.values(), kernels_run.hid.values());
    same_bits("gelu epilogue on, nothing fused: dpre", on.dpre.values(), kernels_run.dpre.values());
    return;
  }
  EXPECT_EQ(fused, 2) << "cuBLASLt offered no algorithm with the GELU epilogues";
  // Per element: the magnitude of its GEMM (sum |a b| + |bias|), and the values in double.
  const std::vector<double> X = xf.as_double(), W1 = w1f.as_double(), B1 = b1f.as_double(),
                            W2 = w2f.as_double(), DY = dyf.as_double();
  const std::vector<double> pre_want = widened(kernels_run.pre),
                            hid_want = widened(kernels_run.hid),
                            dpre_want = widened(kernels_run.dpre);
  const std::vector<double> pre_got = widened(on.pre), hid_got = widened(on.hid),
                            dpre_got = widened(on.dpre);
  int bad = 0;
  double worst = 0.0;  // the largest error / tolerance
  for (int r = 0; r < n; ++r) {
    for (int j = 0; j < h; ++j) {
      double fc = std::abs(B1[j]), proj = 0.0;
      for (int k = 0; k < c; ++k) fc += std::abs(X[r * c + k] * W1[j * c + k]);
      for (int k = 0; k < c; ++k) proj += std::abs(DY[r * c + k] * W2[k * h + j]);
      const std::size_t i = static_cast<std::size_t>(r) * h + j;
      const auto tol = [&](int k, double scale, double value) {
        return 2.0 * (k + 16) * eps<float>() * scale + std::ldexp(scale + std::abs(value), -7);
      };
      const double x = std::abs(pre_want[i]);
      const double pre_tol = tol(c, fc, pre_want[i]);
      const double hid_tol = pre_tol + std::ldexp(x, -10);
      const double dpre_tol = tol(c, 1.2 * proj, dpre_want[i]) +  // |gelu'| <= 1.13
                              std::ldexp(1.0 + x * (1.0 + 0.134 * x * x), -10) * proj;
      const double ratio = std::max({std::abs(pre_got[i] - pre_want[i]) / pre_tol,
                                     std::abs(hid_got[i] - hid_want[i]) / hid_tol,
                                     std::abs(dpre_got[i] - dpre_want[i]) / dpre_tol});
      worst = std::max(worst, ratio);
      if (ratio > 1.0) {
        if (++bad <= 5)
          ADD_FAILURE() << "[" << r << ", " << j << "] pre " << pre_got[i] << " / " << pre_want[i]
                        << ", gelu " << hid_got[i] << " / " << hid_want[i] << ", dpre "
                        << dpre_got[i] << " / " << dpre_want[i] << " (fused / kernels)";
      }
    }
  }
  std::printf("  fused against the kernels: largest error / tolerance %.3f\n", worst);
  EXPECT_EQ(bad, 0);
}

TEST(MatmulGelu, FloatMatchesTheGemmAndGeluKernels) {
  check_gelu_layers_against_kernels<float>(70);
}
TEST(MatmulGelu, Bf16StorageMatchesTheGemmAndGeluKernels) {
  check_gelu_layers_against_kernels<bf16>(80);
}

}  // namespace
}  // namespace p2bw::kernels::test
