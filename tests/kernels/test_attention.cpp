// Tests of kernels/attention.hpp: forward (output and probabilities) against a naive per-head
// loop implementation, causal and bidirectional, in double and float; finite-difference gradient
// of qkv in double for both maskings; the contract and the workspace checks.
#include "kernels/attention.hpp"

#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

struct Dims {
  int B, T, C, NH;
};

constexpr Dims kSmall{2, 5, 8, 2};

struct Reference {
  std::vector<double> out;  // (B, T, C)
  std::vector<double> att;  // (B, NH, T, T)
};

Reference reference_attention(const std::vector<double>& qkv, const Dims& d, bool causal) {
  const int hs = d.C / d.NH, C3 = 3 * d.C;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  Reference r{std::vector<double>(static_cast<std::size_t>(d.B) * d.T * d.C, 0.0),
              std::vector<double>(static_cast<std::size_t>(d.B) * d.NH * d.T * d.T, 0.0)};
  for (int b = 0; b < d.B; ++b) {
    for (int h = 0; h < d.NH; ++h) {
      for (int t = 0; t < d.T; ++t) {
        const int allowed = causal ? t + 1 : d.T;
        std::vector<double> s(allowed);
        double maxv = -1e300;
        for (int t2 = 0; t2 < allowed; ++t2) {
          double dot = 0.0;
          for (int i = 0; i < hs; ++i) {
            dot +=
                qkv[(b * d.T + t) * C3 + h * hs + i] * qkv[(b * d.T + t2) * C3 + d.C + h * hs + i];
          }
          s[t2] = dot * scale;
          maxv = std::max(maxv, s[t2]);
        }
        double sum = 0.0;
        for (int t2 = 0; t2 < allowed; ++t2) sum += std::exp(s[t2] - maxv);
        double* att = &r.att[((static_cast<std::size_t>(b) * d.NH + h) * d.T + t) * d.T];
        for (int t2 = 0; t2 < allowed; ++t2) att[t2] = std::exp(s[t2] - maxv) / sum;
        for (int i = 0; i < hs; ++i) {
          double y = 0.0;
          for (int t2 = 0; t2 < allowed; ++t2) {
            y += att[t2] * qkv[(b * d.T + t2) * C3 + 2 * d.C + h * hs + i];
          }
          r.out[(b * d.T + t) * d.C + h * hs + i] = y;
        }
      }
    }
  }
  return r;
}

template <class Real>
void check_forward(const Dims& d, bool causal, unsigned seed) {
  SCOPED_TRACE(causal ? "causal" : "bidirectional");
  const std::size_t BTC = static_cast<std::size_t>(d.B) * d.T * d.C;
  Buf<Real> qkv(3 * BTC, "qkv"), out(BTC, "out");
  Buf<Real> att(static_cast<std::size_t>(d.B) * d.NH * d.T * d.T, "att");
  Buf<Real> ws(attention_forward_workspace(d.B, d.T, d.C, d.NH), "workspace");
  fill_random(qkv, seed, -2.0, 2.0);
  attention_forward<Real>(Exec(), out.d, att.d, qkv.d, ws.d, d.B, d.T, d.C, d.NH, causal);
  const Reference r = reference_attention(qkv.as_double(), d, causal);
  const double n_red = 4.0 * (d.T + d.C / d.NH);
  expect_close("attention out", out.values(), r.out, n_red);
  const std::vector<Real> got_att = att.values();
  expect_close("attention probabilities", got_att, r.att, n_red);
  if (causal) {
    for (int row = 0; row < d.B * d.NH * d.T; ++row) {
      for (int t2 = row % d.T + 1; t2 < d.T; ++t2) {
        EXPECT_EQ(got_att[static_cast<std::size_t>(row) * d.T + t2], Real(0)) << "masked entry";
      }
    }
  }
}

TEST(Attention, ForwardMatchesReference) {
  for (bool causal : {true, false}) {
    check_forward<double>(kSmall, causal, 1);
    check_forward<float>(kSmall, causal, 2);
    // T and head size beyond one 16x16 GEMM tile.
    check_forward<double>({2, 21, 48, 2}, causal, 3);
    check_forward<float>({1, 33, 64, 4}, causal, 4);
  }
}

void gradient_check(bool causal, unsigned seed) {
  const Dims d = kSmall;
  const std::size_t BTC = static_cast<std::size_t>(d.B) * d.T * d.C;
  Buf<double> qkv(3 * BTC, "qkv"), out(BTC, "out"), dqkv(3 * BTC, "dqkv"), dout(BTC, "dout");
  Buf<double> att(static_cast<std::size_t>(d.B) * d.NH * d.T * d.T, "att");
  Buf<double> ws_f(attention_forward_workspace(d.B, d.T, d.C, d.NH), "ws_f");
  Buf<double> ws_b(attention_backward_workspace(d.B, d.T, d.C, d.NH), "ws_b");
  fill_random(qkv, seed, -2.0, 2.0);
  dqkv.fill(nan());
  ws_b.fill(nan());  // scratch: its contents must not matter
  const std::vector<double> R = random_vector(BTC, seed + 1);
  dout.assign(R);
  const Exec exec;
  attention_forward<double>(exec, out.d, att.d, qkv.d, ws_f.d, d.B, d.T, d.C, d.NH, causal);
  attention_backward<double>(exec, dqkv.d, dout.d, qkv.d, att.d, ws_b.d, d.B, d.T, d.C, d.NH);
  auto loss = [&]() {
    attention_forward<double>(exec, out.d, att.d, qkv.d, ws_f.d, d.B, d.T, d.C, d.NH, causal);
    return project(out, R);
  };
  check_gradient(causal ? "attention dqkv (causal)" : "attention dqkv (bidirectional)", qkv,
                 dqkv.values(), 4.0 * (d.T + d.C / d.NH), loss);
}

TEST(Attention, GradientCheckCausal) {
  gradient_check(true, 10);
}
TEST(Attention, GradientCheckBidirectional) {
  gradient_check(false, 20);
}

TEST(Attention, ArgumentChecks) {
  const Dims d = kSmall;
  const std::size_t BTC = static_cast<std::size_t>(d.B) * d.T * d.C;
  Buf<double> qkv(3 * BTC), out(BTC), att(static_cast<std::size_t>(d.B) * d.NH * d.T * d.T);
  Buf<double> ws(attention_forward_workspace(d.B, d.T, d.C, d.NH) - 1);
  EXPECT_THROW(
      attention_forward<double>(Exec(), out.d, att.d, qkv.d, ws.d, d.B, d.T, d.C, d.NH, true),
      std::invalid_argument);
  Buf<double> ws_ok(attention_forward_workspace(d.B, d.T, d.C, 3));
  EXPECT_THROW(
      attention_forward<double>(Exec(), out.d, att.d, qkv.d, ws_ok.d, d.B, d.T, d.C, 3, true),
      std::invalid_argument);  // 3 heads do not divide C = 8
}

}  // namespace
}  // namespace p2bw::kernels::test
