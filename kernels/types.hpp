// View typedefs, small device math wrappers and argument checks shared by every kernel in kernels/.
//
// Convention: every kernel takes FLAT, contiguous, unmanaged 1-D Views plus explicit dimensions,
// as llm.c takes pointers plus B, T, C. A parameter tensor is a slice of one flat buffer
// (Kokkos::subview(flat, range) or Flat<T, Exec>(ptr, n)); the logical shape is documented by a
// shape comment at every declaration. Only the GEMM interface takes 2-D / 3-D row-major Views.
// All View parameters are non-deduced, so any View convertible to the typedef (managed or not,
// Device<> or memory space, non-const to const) can be passed; the scalar type is therefore the
// one explicit template argument and the execution space is deduced from the instance:
//   kernels::layernorm_forward<float>(exec, out, mean, rstd, inp, weight, bias, N, C);
#pragma once

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace p2bw::kernels {

using index_t = std::int64_t;  // flat element index (B*T*Vp and parameter counts exceed 2^31)

namespace detail {
template <class V>
struct NonDeduced {
  using type = V;
};
}  // namespace detail

// Mutable flat buffer in the memory space of execution space Exec.
template <class T, class Exec>
using Flat =
    typename detail::NonDeduced<Kokkos::View<T*, Kokkos::LayoutRight, typename Exec::memory_space,
                                             Kokkos::MemoryUnmanaged>>::type;
// Read-only flat buffer.
template <class T, class Exec>
using ConstFlat = Flat<const T, Exec>;

// Row-major matrix (rows, cols) for the GEMM interface.
template <class T, class Exec>
using Matrix =
    typename detail::NonDeduced<Kokkos::View<T**, Kokkos::LayoutRight, typename Exec::memory_space,
                                             Kokkos::MemoryUnmanaged>>::type;
template <class T, class Exec>
using ConstMatrix = Matrix<const T, Exec>;

// Batch of row-major matrices (batch, rows, cols), contiguous: the batch stride is rows * cols.
template <class T, class Exec>
using MatrixBatch =
    typename detail::NonDeduced<Kokkos::View<T***, Kokkos::LayoutRight, typename Exec::memory_space,
                                             Kokkos::MemoryUnmanaged>>::type;
template <class T, class Exec>
using ConstMatrixBatch = MatrixBatch<const T, Exec>;

// Per-team scratch array.
template <class T, class Exec>
using TeamScratch = Kokkos::View<T*, typename Exec::scratch_memory_space, Kokkos::MemoryUnmanaged>;

// Device-callable math that compiles with Kokkos 3.4 (Kokkos::Experimental::) and >= 3.7
// (Kokkos::).
namespace math {
#if KOKKOS_VERSION >= 30700
#define P2BW_KOKKOS_MATH Kokkos
#else
#define P2BW_KOKKOS_MATH Kokkos::Experimental
#endif
template <class T>
KOKKOS_INLINE_FUNCTION T sqrt(T x) {
  return P2BW_KOKKOS_MATH::sqrt(x);
}
template <class T>
KOKKOS_INLINE_FUNCTION T exp(T x) {
  return P2BW_KOKKOS_MATH::exp(x);
}
template <class T>
KOKKOS_INLINE_FUNCTION T log(T x) {
  return P2BW_KOKKOS_MATH::log(x);
}
template <class T>
KOKKOS_INLINE_FUNCTION T tanh(T x) {
  return P2BW_KOKKOS_MATH::tanh(x);
}
#undef P2BW_KOKKOS_MATH
template <class T>
KOKKOS_INLINE_FUNCTION T max(T a, T b) {
  return a > b ? a : b;
}
// The most negative finite value, the identity of a max reduction.
template <class T>
KOKKOS_INLINE_FUNCTION constexpr T lowest() {
  return Kokkos::reduction_identity<T>::max();
}
}  // namespace math

namespace detail {

// Host-side argument check: a violated precondition is a programming error in the caller.
inline void require(bool ok, const char* kernel, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("p2bw::kernels::") + kernel + ": " + what);
}

// A buffer must hold at least `needed` elements (larger buffers are allowed; only the prefix is
// touched).
template <class V>
void require_size(const V& v, index_t needed, const char* kernel, const char* name) {
  if (static_cast<index_t>(v.extent(0)) < needed) {
    require(false, kernel,
            std::string(name) + " holds " + std::to_string(v.extent(0)) + " elements, needs " +
                std::to_string(needed));
  }
}

template <class Exec>
using Team = typename Kokkos::TeamPolicy<Exec>::member_type;

// Whether Exec computes in host memory (the host-only paths: CBLAS, the loops below).
template <class Exec>
constexpr bool is_host_space() {
  return std::is_same<typename Exec::memory_space, Kokkos::HostSpace>::value;
}

// Vector length for kernels that use ThreadVectorRange: a warp on CUDA, 1 elsewhere (the
// results of every kernel here are independent of it).
template <class Exec>
int vector_length() {
  const int max = Kokkos::TeamPolicy<Exec>::vector_length_max();
  int vl = 1;
#ifdef KOKKOS_ENABLE_CUDA
  if (std::is_same<Exec, Kokkos::Cuda>::value) vl = 32;
#endif
  return vl < max ? vl : max;
}

}  // namespace detail
}  // namespace p2bw::kernels
