// Packing float buffers into bf16 storage and back: the 16-bit wire of bf16 runs' stage-boundary
// messages (comm/transport.hpp, Wire::bf16). Those floats are bf16-exact already (the rounding
// points of kernels/bf16_round.hpp), so packing rounds nothing and unpacking gives back the same
// bits; the packing kernel counts the values it had to round, so that a missing rounding point
// shows as an error instead of a silent change.
#pragma once

#include "kernels/bf16.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

// Whether bf16(f) is f (its low 16 bits are zero). NaNs count as exact: every NaN packs to the
// canonical quiet NaN 0x7FFF, which is what round_to_bf16 writes, and stays a NaN.
KOKKOS_INLINE_FUNCTION bool is_bf16_exact(float f) {
  const std::uint32_t x = float_bits(f);
  return (x & 0xffffu) == 0u || (x & 0x7fffffffu) > 0x7f800000u;
}

// out(i) = bf16(in(i)) (nearest even) for i < n. Returns how many in(i) were not bf16-exact (so
// were rounded); it waits for the kernel (the count is a reduction to the host).
template <class Exec>
index_t pack_bf16(const Exec& exec, Flat<bf16, Exec> out,  // (n)
                  ConstFlat<float, Exec> in, index_t n) {  // (n)
  detail::require_size(out, n, "pack_bf16", "out");
  detail::require_size(in, n, "pack_bf16", "in");
  index_t rounded = 0;
  Kokkos::parallel_reduce(
      "p2bw::pack_bf16", Kokkos::RangePolicy<Exec>(exec, 0, n),
      KOKKOS_LAMBDA(const index_t i, index_t& count) {
        const float x = in(i);
        out(i) = bf16(x);
        if (!is_bf16_exact(x)) ++count;
      },
      rounded);
  return rounded;
}

// The same without the count: queued on exec, not waited for (NCCL's stream order).
template <class Exec>
void pack_bf16_async(const Exec& exec, Flat<bf16, Exec> out,  // (n)
                     ConstFlat<float, Exec> in, index_t n) {  // (n)
  detail::require_size(out, n, "pack_bf16_async", "out");
  detail::require_size(in, n, "pack_bf16_async", "in");
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
