// Helpers of the kernels' bf16-storage tests (kernels/storage.hpp's rule: a kernel run with
// Store = bf16 gives the bits of the same kernel run with Store = float on the same bf16-exact
// inputs, its stored outputs then rounded to bf16): bf16-exact inputs, special values, the
// bit-for-bit comparison with the float-storage emulation, the check that the float run's output
// needs rounding at all (without it a kernel that skipped or misplaced its rounding could still
// match), and for the GEMM-based kernels the bound used on a device, where a vendor library may
// run the float and the bf16 GEMM with different algorithms.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/bf16.hpp"
#include "test_util.hpp"

namespace p2bw::kernels::test {

// bf16 storage. A kernel run with Store = bf16 must give the bits of the same kernel run with
// Store = float on the same bf16-exact inputs, its stored outputs then rounded to bf16
// (kernels/storage.hpp). The helpers below build those inputs and make that comparison.

// Uniform values in [lo, hi) from a fixed seed, each rounded to the nearest bf16 (so the float
// buffer and its bf16 copy hold the same numbers).
inline void fill_random_bf16_exact(const Buf<float>& b, unsigned seed, double lo = -1.0,
                                   double hi = 1.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  for (std::size_t i = 0; i < b.size(); ++i)
    b[i] = static_cast<float>(bf16(static_cast<float>(dist(gen))));
  b.to_device();
}

// The bf16 copy of a float buffer (exact when the floats are bf16-exact).
inline Buf<bf16> to_bf16(const Buf<float>& f, const std::string& label = "bf16") {
  f.to_host();
  Buf<bf16> b(f.size(), label);
  for (std::size_t i = 0; i < f.size(); ++i) b[i] = bf16(f[i]);
  b.to_device();
  return b;
}

// Expects got (bf16 storage) to hold bf16(emulated[i]) bit for bit: the float-storage run's
// output rounded to nearest even, as the emulation's rounding points store it. NaNs compare as
// the canonical quiet NaN, which is what the rounding writes.
inline void expect_bf16_bits(const std::string& what, const Buf<bf16>& got,
                             const Buf<float>& emulated) {
  ASSERT_EQ(got.size(), emulated.size()) << what;
  got.to_host();
  emulated.to_host();
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const std::uint16_t want = bf16(emulated[i]).bits;
    if (got[i].bits == want) continue;
    if (++mismatches <= 5)
      ADD_FAILURE() << what << "[" << i << "]: bf16 storage 0x" << std::hex << got[i].bits
                    << ", emulation 0x" << want << std::dec << " (" << emulated[i] << ")";
  }
  EXPECT_EQ(mismatches, 0u) << what << ": elements whose bits differ from the emulation";
}

// Expects two float buffers (statistics, parameter gradients: Real in both runs) to be bitwise
// equal.
inline void expect_same_float_bits(const std::string& what, const Buf<float>& got,
                                   const Buf<float>& want) {
  ASSERT_EQ(got.size(), want.size()) << what;
  got.to_host();
  want.to_host();
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    std::uint32_t a, b;
    std::memcpy(&a, &got[i], sizeof a);
    std::memcpy(&b, &want[i], sizeof b);
    if (a == b) continue;
    if (++mismatches <= 5)
      ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " against " << want[i];
  }
  EXPECT_EQ(mismatches, 0u) << what << ": elements whose bits differ";
}

// The canonical bf16 NaN, what narrow<bf16>() writes for every NaN: output buffers are filled
// with it so that an element a kernel should assign but does not is seen.
inline bf16 bf16_nan() {
  return bf16::from_bits(0x7fffu);
}

// b[i] = value rounded to bf16, on the host side only (the caller copies to the device): a
// special value (inf, NaN, the largest bf16) among bf16-exact inputs.
inline void set_bf16_exact(const Buf<float>& b, std::size_t i, float value) {
  b[i] = static_cast<float>(bf16(value));
}

// Elements of a float-storage run's output that no bf16 holds exactly (NaN not counted).
inline std::size_t not_bf16_exact(const Buf<float>& emulated) {
  emulated.to_host();
  std::size_t count = 0;
  for (std::size_t i = 0; i < emulated.size(); ++i) {
    const float x = emulated[i];
    if (!std::isnan(x) && static_cast<float>(bf16(x)) != x) ++count;
  }
  return count;
}

// Expects at least a quarter of a float-storage run's output elements to need rounding to bf16
// (a sum of two bf16 values often is one).
inline void expect_needs_rounding(const std::string& what, const Buf<float>& emulated) {
  const std::size_t count = not_bf16_exact(emulated);
  EXPECT_GE(4 * count, emulated.size())
      << what << ": only " << count << " of " << emulated.size()
      << " float-storage outputs are not bf16 values, so the comparison proves little";
}

// The bound on the difference of two float GEMMs of the same exact values: each is within
// (k + 2) eps(float) scale of the exact result (k products and additions, alpha, beta and the
// bias), scale = |alpha| sum |a b| + |beta c| + |bias|; so they differ by at most twice that.
inline double float_gemm_gap(int k, double scale) {
  return 2.0 * (k + 2) * eps<float>() * scale;
}

// got (bf16 storage) against the float-storage run `emulated`. On the host: got holds
// bf16(emulated) bit for bit. On a device: the bf16 run's unrounded value x is within gap[i] of
// emulated[i] = y, and rounding x to bf16 moves it by at most half an ulp, 2^-8 |x| <=
// 2^-8 (|y| + gap): so |got - y| <= 2^-8 (|y| + gap) + gap.
inline void expect_bf16_storage_matches(const std::string& what, const Buf<bf16>& got,
                                        const Buf<float>& emulated,
                                        const std::vector<double>& gap) {
  if (kHostKernels) {
    expect_bf16_bits(what, got, emulated);
    return;
  }
  ASSERT_EQ(got.size(), emulated.size()) << what;
  ASSERT_EQ(gap.size(), emulated.size()) << what;
  got.to_host();
  emulated.to_host();
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double y = emulated[i];
    const double tol = std::ldexp(std::abs(y) + gap[i], -8) + gap[i];
    EXPECT_LE(std::abs(static_cast<double>(static_cast<float>(got[i])) - y), tol)
        << what << "[" << i << "]";
  }
}

// A Real output (weight gradient, float C from bf16 operands) of both runs: bitwise equal on the
// host, within gap[i] on a device.
inline void expect_real_matches(const std::string& what, const Buf<float>& got,
                                const Buf<float>& want, const std::vector<double>& gap) {
  if (kHostKernels) {
    expect_same_float_bits(what, got, want);
    return;
  }
  ASSERT_EQ(got.size(), want.size()) << what;
  ASSERT_EQ(gap.size(), want.size()) << what;
  got.to_host();
  want.to_host();
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_LE(std::abs(static_cast<double>(got[i]) - want[i]), gap[i]) << what << "[" << i << "]";
  }
}

// A copy of a float buffer (the float-storage run's own inputs and outputs).
inline Buf<float> copy_of(const Buf<float>& f, const std::string& label = "copy") {
  f.to_host();
  Buf<float> c(f.size(), label);
  for (std::size_t i = 0; i < f.size(); ++i) c[i] = f[i];
  c.to_device();
  return c;
}

}  // namespace p2bw::kernels::test
