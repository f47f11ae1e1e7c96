// GELU activation, tanh approximation (GPT-2 / llm.c): gelu(x) = x/2 (1 + tanh(s (x + 0.044715
// x^3))) with s = sqrt(2/pi), computed as x sigmoid(2 s (x + 0.044715 x^3)) (the same function).
// Elementwise forward and backward (the MLP's first linear layer adds its bias in the GEMM's
// epilogue, kernels/matmul.hpp; GELU reads the stored pre-activation).
// Activations, their gradients and the bias are Store (kernels/storage.hpp): each kernel reads
// them with widen(), computes in Real and rounds only what it stores.
#pragma once

#include "kernels/packed.hpp"
#include "kernels/storage.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

namespace detail {
constexpr double kGeluScale = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kGeluCube = 0.044715;

// With g = sigmoid(2u) = 1 / (1 + exp(-2u)), 1 + tanh(u) = 2g and 1 - tanh(u)^2 = 4g(1 - g): one
// exp per element instead of a tanh (libm's tanhf is several times slower than expf on the host,
// and it made GELU a quarter of a block's time), with no cancellation in 1 + tanh(u) for
// negative u and exact limits (exp overflowing to inf gives g = 0). The exp is math::fast_exp,
// inline on the host, so GELU's loops vectorise (for Real = float, in multi-versioned host loops).
template <class Real>
KOKKOS_INLINE_FUNCTION Real gelu_sigmoid(Real x) {
  const Real u = Real(kGeluScale) * (x + Real(kGeluCube) * x * x * x);
  return Real(1) / (Real(1) + math::fast_exp(Real(-2) * u));
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

// Host loops of the kernels below for Real = float (Store float or bf16) over elements (or rows)
// [begin, end), multi-versioned (P2BW_HOST_CLONES); callers split their range into chunks over a
// host RangePolicy.
constexpr index_t kGeluHostChunk = 16384;  // elements per host iteration

template <class Store>
P2BW_HOST_CLONES inline void gelu_forward_host(Store* out, const Store* inp, index_t begin,
                                               index_t end) {
  for (index_t i = begin; i < end; ++i) out[i] = narrow<Store>(gelu(widen(inp[i])));
}

// dinp may be dout (in place).
template <class Store>
P2BW_HOST_CLONES inline void gelu_backward_host(Store* dinp, const Store* dout, const Store* inp,
                                                index_t begin, index_t end) {
  for (index_t i = begin; i < end; ++i)
    dinp[i] = narrow<Store>(gelu_grad(widen(inp[i])) * widen(dout[i]));
}

template <class Real, class Store, class Exec>
constexpr bool gelu_on_host() {
  return std::is_same<Real, float>::value &&
         (std::is_same<Store, float>::value || is_bf16_storage<Store>()) && is_host_space<Exec>();
}

// The portable kernels (any execution space and scalar), as packed bodies (kernels/packed.hpp);
// the public entry points below choose between them and the host loops with `if constexpr`, as
// gemm.hpp and attention.hpp do.
template <class Real, class Store>
struct GeluForward {
  Store* out;        // (n)
  const Store* inp;  // (n)
  template <int K>
  KOKKOS_INLINE_FUNCTION void at(index_t first) const {
    const Pack<Store, K> x = load_pack<K>(inp + first);
    Pack<Store, K> y;
    for (int k = 0; k < K; ++k) y.v[k] = narrow<Store>(gelu(static_cast<Real>(widen(x.v[k]))));
    store_pack<K>(out + first, y);
  }
};

template <class Real, class Store>
struct GeluBackward {
  Store* dinp;        // (n), may be dout
  const Store* dout;  // (n)
  const Store* inp;   // (n)
  template <int K>
  KOKKOS_INLINE_FUNCTION void at(index_t first) const {
    const Pack<Store, K> x = load_pack<K>(inp + first);
    const Pack<Store, K> dy = load_pack<K>(dout + first);
    Pack<Store, K> dx;
    for (int k = 0; k < K; ++k) {
      const Real xk = widen(x.v[k]), dyk = widen(dy.v[k]);
      dx.v[k] = narrow<Store>(gelu_grad(xk) * dyk);
    }
    store_pack<K>(dinp + first, dx);
  }
};

}  // namespace detail

template <class Real, class Store = Real, class Exec>
void gelu_forward(const Exec& exec, Flat<Store, Exec> out,  // (n)
                  ConstFlat<Store, Exec> inp,               // (n)
                  index_t n) {
  detail::require_size(out, n, "gelu_forward", "out");
  detail::require_size(inp, n, "gelu_forward", "inp");
  if constexpr (detail::gelu_on_host<Real, Store, Exec>()) {
    Store* o = out.data();
    const Store* x = inp.data();
    detail::host_chunks(
        exec, "p2bw::gelu_forward", n, detail::kGeluHostChunk,
        [=](index_t begin, index_t end) { detail::gelu_forward_host(o, x, begin, end); });
  } else {
    const detail::GeluForward<Real, Store> body{out.data(), inp.data()};
    for_each_packed<pack_width<Store>()>(exec, "p2bw::gelu_forward", n,
                                         detail::use_packs<Exec>(body.out, body.inp), body);
  }
}

// dinp = gelu'(inp) * dout (assigned; dinp may alias dout).
template <class Real, class Store = Real, class Exec>
void gelu_backward(const Exec& exec, Flat<Store, Exec> dinp,  // (n), assigned
                   ConstFlat<Store, Exec> dout,               // (n)
                   ConstFlat<Store, Exec> inp,                // (n)
                   index_t n) {
  detail::require_size(dinp, n, "gelu_backward", "dinp");
  detail::require_size(dout, n, "gelu_backward", "dout");
  detail::require_size(inp, n, "gelu_backward", "inp");
  if constexpr (detail::gelu_on_host<Real, Store, Exec>()) {
    Store* d = dinp.data();
    const Store* dy = dout.data();
    const Store* x = inp.data();
    detail::host_chunks(
        exec, "p2bw::gelu_backward", n, detail::kGeluHostChunk,
        [=](index_t begin, index_t end) { detail::gelu_backward_host(d, dy, x, begin, end); });
  } else {
    const detail::GeluBackward<Real, Store> body{dinp.data(), dout.data(), inp.data()};
    for_each_packed<pack_width<Store>()>(exec, "p2bw::gelu_backward", n,
                                         detail::use_packs<Exec>(body.dinp, body.dout, body.inp),
                                         body);
  }
}

}  // namespace p2bw::kernels
