// 128-bit packed elementwise loops: a GPU thread loads, computes and stores 16 bytes of each
// buffer at a time (8 bf16, 4 float or 2 double values), as llm.c's Packed128, so that every
// access of a warp is one full 128-bit transaction instead of a 16- or 32-bit one.
//
// An elementwise kernel writes its per-element work once, as a body with
//   template <int K> KOKKOS_INLINE_FUNCTION void at(index_t first) const;
// that handles elements [first, first + K) (first a multiple of K when K > 1), reading and writing
// through load_pack<K> and store_pack<K>. for_each_packed runs the body either packed (at<W> over
// the packs, at<1> over the tail of n % W elements, in the same launch) or element by element
// (at<1> over all n). Both give the same bits: the body computes every element the same way.
//
// Packs are taken where they pay and are safe (use_packs): on GPUs only, and only when every buffer
// starts on a 16-byte boundary. On hosts the element loop runs, because it was faster there: the
// packed loop measured 1.3-1.6x slower for the residual forward and backward in float and bf16
// (64k elements, GCC 12 -O2, 2-core Xeon VM, 2026-12-02), where GCC vectorises the element loop
// itself. The kernel tests force packs on the host (for_each_packed with packed = true) so that the
// packed path is tested bit for bit in CI too.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/types.hpp"

namespace p2bw::kernels {

// K values of T, aligned to their size (16 bytes at the pack width).
template <class T, int K>
struct alignas(sizeof(T) * K) Pack {
  T v[K];
};

// Values of T in 16 bytes.
template <class T>
constexpr int pack_width() {
  static_assert(16 % sizeof(T) == 0, "a pack holds a whole number of values");
  return static_cast<int>(16 / sizeof(T));
}

// The K values at p (p aligned to the pack's size when K > 1 on a device; any p on the host).
template <int K, class T>
KOKKOS_INLINE_FUNCTION Pack<std::remove_const_t<T>, K> load_pack(T* p) {
  using P = Pack<std::remove_const_t<T>, K>;
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__) || defined(__SYCL_DEVICE_ONLY__)
  return *reinterpret_cast<const P*>(p);
#else
  P pack;
  std::memcpy(static_cast<void*>(&pack), static_cast<const void*>(p), sizeof(P));
  return pack;
#endif
}

template <int K, class T>
KOKKOS_INLINE_FUNCTION void store_pack(T* p, const Pack<T, K>& pack) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__) || defined(__SYCL_DEVICE_ONLY__)
  *reinterpret_cast<Pack<T, K>*>(p) = pack;
#else
  std::memcpy(static_cast<void*>(p), static_cast<const void*>(&pack), sizeof(pack));
#endif
}

namespace detail {

// Whether packed loops pay on Exec: on devices (memory the host cannot read), not on hosts.
template <class Exec>
constexpr bool packs_pay() {
  return !Kokkos::SpaceAccessibility<Exec, Kokkos::HostSpace>::accessible;
}

// Whether every pointer is on a 16-byte boundary (a null pointer, a skipped buffer, counts as on).
template <class... T>
bool on_16_bytes(T*... ptrs) {
  return ((reinterpret_cast<std::uintptr_t>(ptrs) % 16 == 0) && ...);
}

// Whether an elementwise kernel over these buffers takes packs on Exec.
template <class Exec, class... T>
bool use_packs(T*... ptrs) {
  return packs_pay<Exec>() && on_16_bytes(ptrs...);
}

// Index p < packs: pack p (elements [p W, p W + W)); p >= packs: one element of the tail.
template <class Body, int W>
struct PackedLoop {
  Body body;
  index_t packs;
  KOKKOS_INLINE_FUNCTION void operator()(const index_t p) const {
    if (p < packs) {
      body.template at<W>(p * W);
    } else {
      body.template at<1>(packs * W + (p - packs));
    }
  }
};

template <class Body>
struct ElementLoop {
  Body body;
  KOKKOS_INLINE_FUNCTION void operator()(const index_t i) const { body.template at<1>(i); }
};

}  // namespace detail

// Runs body over elements [0, n) on exec, in packs of W when packed (see above). Queued on exec.
template <int W, class Exec, class Body>
void for_each_packed(const Exec& exec, const char* name, index_t n, bool packed, const Body& body) {
  if (packed) {
    const index_t packs = n / W;
    Kokkos::parallel_for(name, Kokkos::RangePolicy<Exec>(exec, 0, packs + n % W),
                         detail::PackedLoop<Body, W>{body, packs});
  } else {
    Kokkos::parallel_for(name, Kokkos::RangePolicy<Exec>(exec, 0, n),
                         detail::ElementLoop<Body>{body});
  }
}

}  // namespace p2bw::kernels
