// Tests of kernels/encoder.hpp: forward against the definition, finite-difference gradients of
// wte and wpe (with repeated tokens), the accumulate contract, and bitwise determinism of the
// scatter-add into dwte (equal to the sequential loop over positions); with bf16 storage, forward
// and backward bit for bit against the float-storage emulation.
#include "kernels/encoder.hpp"

#include <cstring>

#include "bf16_storage.hpp"
#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

constexpr int B = 2, T = 5, C = 8, Vp = 16, maxT = 7;

Buf<int> make_tokens(const std::vector<int>& ids) {
  Buf<int> tokens(ids.size(), "tokens");
  for (std::size_t i = 0; i < ids.size(); ++i) tokens[i] = ids[i];
  tokens.to_device();
  return tokens;
}

// Repeated ids, the first and the last vocabulary row.
const std::vector<int> kTokens = {3, 7, 3, 0, 15, 7, 7, 2, 3, 11};  // (B, T)

TEST(Encoder, ForwardMatchesDefinition) {
  const Buf<int> tokens = make_tokens(kTokens);
  Buf<double> wte(Vp * C, "wte"), wpe(maxT * C, "wpe"), out(B * T * C, "out");
  fill_random(wte, 1);
  fill_random(wpe, 2);
  encoder_forward<double>(Exec(), out.d, tokens.d, wte.d, wpe.d, B, T, C);
  std::vector<double> ref(B * T * C);
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      for (int c = 0; c < C; ++c) {
        ref[(b * T + t) * C + c] = wte[kTokens[b * T + t] * C + c] + wpe[t * C + c];
      }
    }
  }
  const std::vector<double> got = out.values();
  for (std::size_t i = 0; i < ref.size(); ++i) EXPECT_EQ(got[i], ref[i]) << i;  // one addition
}

TEST(Encoder, GradientCheck) {
  const Buf<int> tokens = make_tokens(kTokens);
  Buf<double> wte(Vp * C, "wte"), wpe(maxT * C, "wpe"), out(B * T * C, "out");
  Buf<double> dwte(Vp * C, "dwte"), dwpe(maxT * C, "dwpe"), dout(B * T * C, "dout");
  fill_random(wte, 3);
  fill_random(wpe, 4);
  fill_random(dwte, 5);  // backward must add to what is there
  fill_random(dwpe, 6);
  const std::vector<double> R = random_vector(B * T * C, 7);
  dout.assign(R);
  const std::vector<double> dwte0 = dwte.values(), dwpe0 = dwpe.values();
  const Exec exec;
  encoder_backward<double>(exec, dwte.d, dwpe.d, dout.d, tokens.d, B, T, C);
  auto loss = [&]() {
    encoder_forward<double>(exec, out.d, tokens.d, wte.d, wpe.d, B, T, C);
    return project(out, R);
  };
  const double n_red = B * T;  // a row of dwte sums at most B*T positions
  check_gradient("encoder dwte", wte, accumulated(dwte, dwte0), n_red, loss);
  check_gradient("encoder dwpe", wpe, accumulated(dwpe, dwpe0), n_red, loss);
}

// Sequential reference: positions in order, dwte[tok] += dout[p]; dwpe[t] += dout[b, t] over b.
void sequential_backward(std::vector<double>& dwte, std::vector<double>& dwpe,
                         const std::vector<double>& dout, const std::vector<int>& tokens, int b_,
                         int t_, int c_) {
  for (int p = 0; p < b_ * t_; ++p) {
    for (int c = 0; c < c_; ++c) dwte[tokens[p] * c_ + c] += dout[p * c_ + c];
  }
  for (int i = 0; i < t_ * c_; ++i) {
    double sum = dwpe[i];
    for (int b = 0; b < b_; ++b) sum += dout[b * t_ * c_ + i];
    dwpe[i] = sum;
  }
}

template <class Real>
void check_bitwise(unsigned seed) {
  // Many repeats of few ids: the case where unordered atomics would change the result.
  const int b_ = 4, t_ = 64, c_ = 24, vp = 16;
  std::vector<int> ids(b_ * t_);
  std::mt19937 gen(seed);
  for (int& id : ids) id = static_cast<int>(gen() % 5) * 3;
  const Buf<int> tokens = make_tokens(ids);
  Buf<Real> dout(b_ * t_ * c_, "dout"), dwte(vp * c_, "dwte"), dwpe(t_ * c_, "dwpe");
  fill_random(dout, seed + 1);
  std::vector<std::vector<Real>> runs;
  for (int run = 0; run < 3; ++run) {
    fill_random(dwte, seed + 2);
    fill_random(dwpe, seed + 3);
    encoder_backward<Real>(Exec(), dwte.d, dwpe.d, dout.d, tokens.d, b_, t_, c_);
    std::vector<Real> result = dwte.values();
    const std::vector<Real> pe = dwpe.values();
    result.insert(result.end(), pe.begin(), pe.end());
    runs.push_back(result);
  }
  for (int run = 1; run < 3; ++run) {
    EXPECT_EQ(0, std::memcmp(runs[0].data(), runs[run].data(), runs[0].size() * sizeof(Real)));
  }
  if (std::is_same<Real, double>::value) {
    fill_random(dwte, seed + 2);
    fill_random(dwpe, seed + 3);
    std::vector<double> wte_ref(dwte.size()), wpe_ref(dwpe.size()), dout_ref(dout.size());
    for (std::size_t i = 0; i < wte_ref.size(); ++i) wte_ref[i] = dwte[i];
    for (std::size_t i = 0; i < wpe_ref.size(); ++i) wpe_ref[i] = dwpe[i];
    for (std::size_t i = 0; i < dout_ref.size(); ++i) dout_ref[i] = dout[i];
    sequential_backward(wte_ref, wpe_ref, dout_ref, ids, b_, t_, c_);
    wte_ref.insert(wte_ref.end(), wpe_ref.begin(), wpe_ref.end());
    for (std::size_t i = 0; i < wte_ref.size(); ++i) {
      EXPECT_EQ(static_cast<double>(runs[0][i]), wte_ref[i]) << "element " << i;
    }
  }
}

TEST(Encoder, BackwardIsBitwiseReproducible) {
  check_bitwise<float>(10);
  check_bitwise<double>(20);
}

TEST(Encoder, ShortBuffersThrow) {
  const Buf<int> tokens = make_tokens(kTokens);
  Buf<double> wte(Vp * C), wpe(maxT * C), out(B * T * C - 1);
  EXPECT_THROW(encoder_forward<double>(Exec(), out.d, tokens.d, wte.d, wpe.d, B, T, C),
               std::invalid_argument);
}

// bf16 storage (kernels/storage.hpp): with Store = bf16 the forward's output is the Store = float
// run's rounded, and the Real parameter gradients of backward (both overloads) are bitwise those
// of the Store = float run on the same bf16-exact dout.
TEST(Encoder, Bf16StorageMatchesEmulation) {
  const Buf<int> tokens = make_tokens(kTokens);
  Buf<float> wte(Vp * C, "wte"), wpe(maxT * C, "wpe"), out(B * T * C, "out");
  fill_random_bf16_exact(wte, 40);
  fill_random_bf16_exact(wpe, 41);
  const Buf<bf16> wte16 = to_bf16(wte, "wte16"), wpe16 = to_bf16(wpe, "wpe16");
  Buf<bf16> out16(B * T * C, "out16");
  out.fill(std::numeric_limits<float>::quiet_NaN());
  out16.fill(bf16_nan());
  const Exec exec;
  encoder_forward<float>(exec, out.d, tokens.d, wte.d, wpe.d, B, T, C);
  encoder_forward<float, bf16>(exec, out16.d, tokens.d, wte16.d, wpe16.d, B, T, C);
  expect_bf16_bits("encoder out", out16, out);
  expect_needs_rounding("encoder out", out);

  Buf<float> dout(B * T * C, "dout"), dwte(Vp * C, "dwte"), dwpe(maxT * C, "dwpe");
  fill_random_bf16_exact(dout, 42);
  const Buf<bf16> dout16 = to_bf16(dout, "dout16");
  fill_random(dwte, 43);  // accumulated into: any float values, the same in both runs
  fill_random(dwpe, 44);
  Buf<float> dwte16(Vp * C, "dwte16"), dwpe16(maxT * C, "dwpe16");
  dwte16.assign(dwte.values());
  dwpe16.assign(dwpe.values());
  encoder_backward<float>(exec, dwte.d, dwpe.d, dout.d, tokens.d, B, T, C);
  encoder_backward<float, bf16>(exec, dwte16.d, dwpe16.d, dout16.d, tokens.d, B, T, C);
  expect_same_float_bits("encoder dwte", dwte16, dwte);
  expect_same_float_bits("encoder dwpe", dwpe16, dwpe);
  // The model's overload, with buckets kept: a second accumulation onto the same values.
  EncoderBuckets<Exec> buckets(B * T);
  EncoderBucketer<Exec>(B * T).build(exec, tokens.values().data(), B * T, buckets);
  encoder_backward<float>(exec, dwte.d, dwpe.d, dout.d, buckets, B, T, C);
  encoder_backward<float, bf16>(exec, dwte16.d, dwpe16.d, dout16.d, buckets, B, T, C);
  expect_same_float_bits("encoder dwte, kept buckets", dwte16, dwte);
  expect_same_float_bits("encoder dwpe, kept buckets", dwpe16, dwpe);
}

// A bucketer and buckets reused for other tokens (as a model's load does every microbatch): the
// second build, with fewer distinct tokens than the first, gives the buckets of its own tokens
// (sorted by token, positions ascending) and the gradients of a fresh build.
TEST(Encoder, BucketsRebuiltForOtherTokens) {
  constexpr int B = 2, T = 5, C = 3, Vp = 9;
  const std::vector<int> first = {8, 7, 6, 5, 4, 3, 2, 1, 0, 8};
  const std::vector<int> second = {4, 1, 4, 4, 1, 0, 1, 4, 0, 4};
  const Exec exec;
  EncoderBucketer<Exec> bucketer(B * T);
  EncoderBuckets<Exec> buckets(B * T);
  bucketer.build(exec, first.data(), B * T, buckets);
  EXPECT_EQ(buckets.count, 9);
  bucketer.build(exec, second.data(), B * T, buckets);
  ASSERT_EQ(buckets.count, 3);
  auto host = [](const auto& view, int n) {
    auto mirror = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
    return std::vector<int>(mirror.data(), mirror.data() + n);
  };
  EXPECT_EQ(host(buckets.token, 3), (std::vector<int>{0, 1, 4}));
  EXPECT_EQ(host(buckets.begin, 4), (std::vector<int>{0, 2, 5, 10}));
  EXPECT_EQ(host(buckets.positions, B * T), (std::vector<int>{5, 8, 1, 4, 6, 0, 2, 3, 7, 9}));

  Buf<int> tokens(B * T, "tokens");
  tokens.assign(second);
  Buf<float> dout(B * T * C, "dout"), dwte(Vp * C, "dwte"), dwpe(T * C, "dwpe");
  fill_random(dout, 50);
  dwte.fill(0.0f);
  dwpe.fill(0.0f);
  Buf<float> fresh_dwte(Vp * C, "fresh_dwte"), fresh_dwpe(T * C, "fresh_dwpe");
  fresh_dwte.fill(0.0f);
  fresh_dwpe.fill(0.0f);
  encoder_backward<float>(exec, dwte.d, dwpe.d, dout.d, buckets, B, T, C);
  encoder_backward<float>(exec, fresh_dwte.d, fresh_dwpe.d, dout.d, tokens.d, B, T, C);
  EXPECT_EQ(dwte.values(), fresh_dwte.values());
  EXPECT_EQ(dwpe.values(), fresh_dwpe.values());
}

}  // namespace
}  // namespace p2bw::kernels::test
