// Converting float buffers to bf16 storage and back (StoreView's narrow_into and widen_into, the
// host attention's float copies): round to nearest even, and exact widening. In 128-bit packs of
// the bf16 side on GPUs (kernels/packed.hpp).
#pragma once

#include "kernels/bf16.hpp"
#include "kernels/packed.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

namespace detail {
struct PackBf16 {
  bf16* out;        // (n)
  const float* in;  // (n)
  template <int K>
  KOKKOS_INLINE_FUNCTION void at(index_t first) const {
    Pack<bf16, K> y;
    constexpr int KF = K < 4 ? K : 4;  // floats in a 16-byte pack
    for (int h = 0; h < K; h += KF) {
      const Pack<float, KF> x = load_pack<KF>(in + first + h);
      for (int k = 0; k < KF; ++k) y.v[h + k] = bf16(x.v[k]);
    }
    store_pack<K>(out + first, y);
  }
};

struct UnpackBf16 {
  float* out;      // (n)
  const bf16* in;  // (n)
  template <int K>
  KOKKOS_INLINE_FUNCTION void at(index_t first) const {
    const Pack<bf16, K> x = load_pack<K>(in + first);
    constexpr int KF = K < 4 ? K : 4;  // floats in a 16-byte pack
    for (int h = 0; h < K; h += KF) {
      Pack<float, KF> y;
      for (int k = 0; k < KF; ++k) y.v[k] = static_cast<float>(x.v[h + k]);
      store_pack<KF>(out + first + h, y);
    }
  }
};
}  // namespace detail

// out(i) = bf16(in(i)) (nearest even) for i < n. Queued on exec.
template <class Exec>
void pack_bf16(const Exec& exec, Flat<bf16, Exec> out,  // (n)
               ConstFlat<float, Exec> in, index_t n) {  // (n)
  detail::require_size(out, n, "pack_bf16", "out");
  detail::require_size(in, n, "pack_bf16", "in");
  const detail::PackBf16 body{out.data(), in.data()};
  for_each_packed<pack_width<bf16>()>(exec, "p2bw::pack_bf16", n,
                                      detail::use_packs<Exec>(body.out, body.in), body);
}

// out(i) = float(in(i)) for i < n: exact (the bits shifted up by 16). Queued on exec.
template <class Exec>
void unpack_bf16(const Exec& exec, Flat<float, Exec> out,  // (n)
                 ConstFlat<bf16, Exec> in, index_t n) {    // (n)
  detail::require_size(out, n, "unpack_bf16", "out");
  detail::require_size(in, n, "unpack_bf16", "in");
  const detail::UnpackBf16 body{out.data(), in.data()};
  for_each_packed<pack_width<bf16>()>(exec, "p2bw::unpack_bf16", n,
                                      detail::use_packs<Exec>(body.out, body.in), body);
}

}  // namespace p2bw::kernels
