// Comparisons of a bf16-storage run with the float-storage run for the GEMM-based kernels
// (kernels/gemm.hpp, kernels/matmul.hpp): bit for bit on the host, where both runs hand the same
// float values to the same BLAS call (kernels/storage.hpp's rule); within a bound derived per
// element on a device, where a vendor library may run the float and the bf16 GEMM with different
// algorithms (tile shapes, summation orders, fused multiply-adds).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "kernels/bf16.hpp"
#include "test_util.hpp"

namespace p2bw::kernels::test {

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

// How many values bf16 cannot hold: a float run with none could not tell a bf16-storage kernel
// that skipped its rounding from one that rounds.
inline std::size_t count_not_bf16_exact(const Buf<float>& b) {
  b.to_host();
  std::size_t count = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (static_cast<float>(bf16(b[i])) != b[i]) ++count;
  }
  return count;
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
