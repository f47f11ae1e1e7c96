// Storage and compute types of the kernels. Every kernel computes in Real (float, or double in
// the finite-difference tests) and keeps activations, activation gradients and the weights used
// in compute in a storage type Store: Real itself, or bf16 under mixed precision
// (model.precision: bf16). Parameter gradients, the optimizer's state and per-row statistics
// (LayerNorm's mean and rstd, the softmaxes' log-sum-exp) stay in Real.
//
// A kernel reads a stored value with widen() and writes one with narrow<Store>(), which for bf16
// rounds to nearest even (kernels/bf16.hpp, bit for bit as CUDA's __float2bfloat16_rn). Kernels
// round only when they store, never in between, so a kernel run with Store = bf16 gives the bits
// of the same kernel run with Store = float on the same (bf16-exact) inputs followed by rounding
// its stored outputs (round_to_bf16): the reference the kernel tests hold every kernel to.
//
// Template convention: template <class Real, class Store = Real, class Exec>, so that
//   kernels::layernorm_forward<float>(exec, ...)        computes and stores in float, and
//   kernels::layernorm_forward<float, bf16>(exec, ...)  computes in float and stores bf16.
#pragma once

#include <type_traits>

#include "kernels/bf16.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

// A stored value as a compute value (exact).
KOKKOS_INLINE_FUNCTION float widen(float x) {
  return x;
}
KOKKOS_INLINE_FUNCTION double widen(double x) {
  return x;
}
KOKKOS_INLINE_FUNCTION float widen(bf16 x) {
  return static_cast<float>(x);
}

// A compute value as Store: a plain conversion for float and double, round to nearest even for
// bf16.
template <class Store, class Real>
KOKKOS_INLINE_FUNCTION Store narrow(Real x) {
  if constexpr (std::is_same<Store, bf16>::value) {
    return bf16(static_cast<float>(x));
  } else {
    return static_cast<Store>(x);
  }
}

// Whether Store is a 16-bit storage type (so a kernel cannot hand its buffers to float BLAS).
template <class Store>
constexpr bool is_bf16_storage() {
  return std::is_same<std::remove_const_t<Store>, bf16>::value;
}

}  // namespace p2bw::kernels
