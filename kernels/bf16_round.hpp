// The bf16 emulation's rounding: values that GPU mixed precision would store in bf16 are rounded
// to the nearest bf16 (ties to even, kernels/bf16.hpp, bit for bit as __float2bfloat16_rn) and
// kept in float storage. So a bf16 run computes with bf16's numbers (arithmetic and GEMM
// accumulation stay fp32, as on the GPU) without bf16's memory saving: real bf16 storage comes
// with the GPU kernels (issue 18).
#pragma once

#include "kernels/bf16.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

// f rounded to the nearest bf16 value, as a float (exact: every bf16 is a float). NaN stays NaN
// (the canonical quiet NaN), ±inf stays ±inf.
KOKKOS_INLINE_FUNCTION float round_to_bf16(float f) {
  return static_cast<float>(bf16(f));
}

// x(i) = round_to_bf16(x(i)) for every i, in place.
template <class Exec>
void round_to_bf16_in_place(const Exec& exec, Flat<float, Exec> x) {  // (n)
  const index_t n = static_cast<index_t>(x.extent(0));
  Kokkos::parallel_for(
      "p2bw::round_to_bf16", Kokkos::RangePolicy<Exec>(exec, 0, n),
      KOKKOS_LAMBDA(const index_t i) { x(i) = round_to_bf16(x(i)); });
}

}  // namespace p2bw::kernels
