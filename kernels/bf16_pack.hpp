// Converting float buffers to bf16 storage and back (StoreView's narrow_into and widen_into, the
// host attention's float copies): round to nearest even, and exact widening.
#pragma once

#include "kernels/bf16.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

// out(i) = bf16(in(i)) (nearest even) for i < n. Queued on exec.
template <class Exec>
void pack_bf16(const Exec& exec, Flat<bf16, Exec> out,  // (n)
               ConstFlat<float, Exec> in, index_t n) {  // (n)
  detail::require_size(out, n, "pack_bf16", "out");
  detail::require_size(in, n, "pack_bf16", "in");
  Kokkos::parallel_for(
      "p2bw::pack_bf16", Kokkos::RangePolicy<Exec>(exec, 0, n),
      KOKKOS_LAMBDA(const index_t i) { out(i) = bf16(in(i)); });
}

// out(i) = float(in(i)) for i < n: exact (the bits shifted up by 16). Queued on exec.
template <class Exec>
void unpack_bf16(const Exec& exec, Flat<float, Exec> out,  // (n)
                 ConstFlat<bf16, Exec> in, index_t n) {    // (n)
  detail::require_size(out, n, "unpack_bf16", "out");
  detail::require_size(in, n, "unpack_bf16", "in");
  Kokkos::parallel_for(
      "p2bw::unpack_bf16", Kokkos::RangePolicy<Exec>(exec, 0, n),
      KOKKOS_LAMBDA(const index_t i) { out(i) = static_cast<float>(in(i)); });
}

}  // namespace p2bw::kernels
