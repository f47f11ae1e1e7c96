// GELU activation, tanh approximation (GPT-2 / llm.c): gelu(x) = x/2 (1 + tanh(s (x + 0.044715
// x^3))) with s = sqrt(2/pi), computed as x sigmoid(2 s (x + 0.044715 x^3)) (the same function).
// Elementwise forward and backward, plus a fused bias + GELU forward that finishes the MLP's first
// linear layer (matmul_forward without bias, then bias_gelu_forward).
#pragma once

#include "kernels/types.hpp"

namespace p2bw::kernels {

namespace detail {
constexpr double kGeluScale = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kGeluCube = 0.044715;

// With g = sigmoid(2u) = 1 / (1 + exp(-2u)), 1 + tanh(u) = 2g and 1 - tanh(u)^2 = 4g(1 - g): one
// exp per element instead of a tanh (libm's tanhf is several times slower than expf on the host,
// and it made GELU a quarter of a block's time), with no cancellation in 1 + tanh(u) for
// negative u and exact limits (exp overflowing to inf gives g = 0).
template <class Real>
KOKKOS_INLINE_FUNCTION Real gelu_sigmoid(Real x) {
  const Real u = Real(kGeluScale) * (x + Real(kGeluCube) * x * x * x);
  return Real(1) / (Real(1) + math::exp(Real(-2) * u));
}

template <class Real>
KOKKOS_INLINE_FUNCTION Real gelu(Real x) {
  return x * gelu_sigmoid(x);
}

// d gelu / dx = g + 2 x g (1 - g) du/dx.
template <class Real>
KOKKOS_INLINE_FUNCTION Real gelu_grad(Real x) {
  const Real g = gelu_sigmoid(x);
  const Real du = Real(kGeluScale) * (Real(1) + Real(3 * kGeluCube) * x * x);
  return g + Real(2) * x * g * (Real(1) - g) * du;
}
}  // namespace detail

template <class Real, class Exec>
void gelu_forward(const Exec& exec, Flat<Real, Exec> out,  // (n)
                  ConstFlat<Real, Exec> inp,               // (n)
                  index_t n) {
  detail::require_size(out, n, "gelu_forward", "out");
  detail::require_size(inp, n, "gelu_forward", "inp");
  Kokkos::parallel_for(
      "p2bw::gelu_forward", Kokkos::RangePolicy<Exec>(exec, 0, n),
      KOKKOS_LAMBDA(const index_t i) { out(i) = detail::gelu(inp(i)); });
}

// dinp = gelu'(inp) * dout (assigned; dinp may alias dout).
template <class Real, class Exec>
void gelu_backward(const Exec& exec, Flat<Real, Exec> dinp,  // (n), assigned
                   ConstFlat<Real, Exec> dout,               // (n)
                   ConstFlat<Real, Exec> inp,                // (n)
                   index_t n) {
  detail::require_size(dinp, n, "gelu_backward", "dinp");
  detail::require_size(dout, n, "gelu_backward", "dout");
  detail::require_size(inp, n, "gelu_backward", "inp");
  Kokkos::parallel_for(
      "p2bw::gelu_backward", Kokkos::RangePolicy<Exec>(exec, 0, n),
      KOKKOS_LAMBDA(const index_t i) { dinp(i) = detail::gelu_grad(inp(i)) * dout(i); });
}

// Fused: pre += bias (in place: pre becomes the pre-activation kept for gelu_backward), then
// out = gelu(pre). The gradient of the bias is taken by matmul_backward from gelu_backward's dinp.
template <class Real, class Exec>
void bias_gelu_forward(const Exec& exec, Flat<Real, Exec> out,  // (N, C)
                       Flat<Real, Exec> pre,        // (N, C), in: inp * W^T, out: + bias
                       ConstFlat<Real, Exec> bias,  // (C)
                       int N, int C) {
  const index_t NC = static_cast<index_t>(N) * C;
  detail::require_size(out, NC, "bias_gelu_forward", "out");
  detail::require_size(pre, NC, "bias_gelu_forward", "pre");
  detail::require_size(bias, C, "bias_gelu_forward", "bias");
  Kokkos::parallel_for(
      "p2bw::bias_gelu_forward", Kokkos::RangePolicy<Exec>(exec, 0, NC),
      KOKKOS_LAMBDA(const index_t i) {
        const Real x = pre(i) + bias(i % C);
        pre(i) = x;
        out(i) = detail::gelu(x);
      });
}

}  // namespace p2bw::kernels
