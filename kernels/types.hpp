// View typedefs, small device math wrappers (math::fast_exp among them), argument checks and the
// host-loop helpers (multi-versioning, host_chunks) shared by every kernel in kernels/.
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
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace p2bw::kernels {

using index_t = std::int64_t;  // flat element index (B*T*Vp and parameter counts exceed 2^31)

// What a build's GEMMs run on (gemm() chooses at compile time; memory predictions take it as a
// value, so the planner can predict for a cluster's devices rather than for this build).
enum class GemmLibrary { cublaslt, cblas, native };
constexpr GemmLibrary kBuildGemmLibrary =
#if defined(KOKKOS_ENABLE_CUDA)
    GemmLibrary::cublaslt;
#elif defined(P2BW_HAVE_CBLAS)
    GemmLibrary::cblas;
#else
    GemmLibrary::native;
#endif

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

// exp for the elementwise layers and the softmaxes: libm's (or the device's) exp, except for
// float on the host, where it is the polynomial below, inline and branch-free so that loops over
// it vectorise (glibc's expf is a scalar call). Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2,
// Cephes' degree-7 polynomial for exp(r) (within 1 ulp of exp over the float range), times 2^n
// as two normal powers of two: results overflow to +inf above ln(FLT_MAX) and underflow
// gradually (denormals, then 0) below ln(FLT_MIN); NaN stays NaN; exp(0) = 1 exactly.
template <class T>
KOKKOS_INLINE_FUNCTION T fast_exp(T x) {
  return exp(x);
}
KOKKOS_INLINE_FUNCTION float fast_exp(float x) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__) || defined(__SYCL_DEVICE_ONLY__)
  return exp(x);
#else
  // Clamped to where 2^n still overflows (n = 128 with exp(r) > 1) or underflows to 0 (n = -150):
  // no select after the polynomial, which GCC would not vectorise. NaN passes through.
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 89.0f ? 89.0f : xc;
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds
  const float n = (xc * 1.44269504088896341f + kShift) - kShift;
  float r = xc - n * 0.693359375f;  // ln2 in two parts (Cody-Waite)
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  // 2^n = 2^a 2^b with a = n >> 1, b = n - a: both normal for -150 <= n <= 128.
  const int e = static_cast<int>(n);
  const std::uint32_t bits_a = static_cast<std::uint32_t>((e >> 1) + 127) << 23;
  const std::uint32_t bits_b = static_cast<std::uint32_t>(e - (e >> 1) + 127) << 23;
  float pa, pb;
  std::memcpy(&pa, &bits_a, sizeof pa);
  std::memcpy(&pb, &bits_b, sizeof pb);
  return y * pa * pb;
#endif
}
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

// Host loops marked P2BW_HOST_CLONES are compiled twice, for AVX2 and for the baseline x86-64
// ISA, and the loader picks the one the CPU runs (GCC's function multi-versioning). AVX2 without
// FMA: the same IEEE operations on wider vectors, so both give the same bits.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && defined(__x86_64__) && \
    defined(__linux__)
#define P2BW_HOST_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define P2BW_HOST_CLONES
#endif

// Runs body(begin, end) over [0, n) in chunks of `chunk`, on a host execution space.
template <class Exec, class Body>
void host_chunks(const Exec& exec, const char* name, index_t n, index_t chunk, const Body& body) {
  Kokkos::parallel_for(name, Kokkos::RangePolicy<Exec>(exec, 0, (n + chunk - 1) / chunk),
                       [=](const index_t k) {
                         const index_t begin = k * chunk;
                         body(begin, n - begin < chunk ? n : begin + chunk);
                       });
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
