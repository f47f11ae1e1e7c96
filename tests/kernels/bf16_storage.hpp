// Helpers of the bf16-storage tests of the elementwise, LayerNorm, encoder and classifier kernels,
// on top of test_util.hpp's comparison with the float-storage emulation: special values written
// bf16-exact, and the check that a float-storage run's output needs rounding at all (without
// it, a kernel that rounded wrongly, or at the wrong point, could still match the emulation).
#pragma once

#include <cmath>
#include <string>

#include "test_util.hpp"

namespace p2bw::kernels::test {

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

}  // namespace p2bw::kernels::test
