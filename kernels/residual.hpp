// Residual connection: out = a + b, and its backward. Exception to the layer contract: the
// residual stream's gradients are ACCUMULATED (da += dout, db += dout), as in llm.c, because the
// stream's gradient is the sum of the skip path and the branch.
// Everything here is an activation or an activation gradient: Store (kernels/storage.hpp); the
// sums are computed in Real and rounded once, when stored. Both run in 128-bit packs on GPUs
// (kernels/packed.hpp).
#pragma once

#include "kernels/packed.hpp"
#include "kernels/storage.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

namespace detail {
template <class Real, class Store>
struct ResidualForward {
  Store* out;      // (n), may be a or b
  const Store* a;  // (n)
  const Store* b;  // (n)
  template <int K>
  KOKKOS_INLINE_FUNCTION void at(index_t first) const {
    const Pack<Store, K> x = load_pack<K>(a + first), y = load_pack<K>(b + first);
    Pack<Store, K> z;
    for (int k = 0; k < K; ++k) {
      const Real xk = widen(x.v[k]), yk = widen(y.v[k]);
      z.v[k] = narrow<Store>(xk + yk);
    }
    store_pack<K>(out + first, z);
  }
};

// g[first, first + K) += d (in Real, rounded when stored).
template <class Real, class Store, int K>
KOKKOS_INLINE_FUNCTION void accumulate_pack(Store* g, index_t first, const Pack<Store, K>& d) {
  Pack<Store, K> sum = load_pack<K>(g + first);
  for (int k = 0; k < K; ++k) {
    const Real x = widen(sum.v[k]), dk = widen(d.v[k]);
    sum.v[k] = narrow<Store>(x + dk);
  }
  store_pack<K>(g + first, sum);
}

template <class Real, class Store>
struct ResidualBackward {
  Store* da;          // (n) or null (skipped), accumulated
  Store* db;          // (n) or null (skipped), accumulated
  const Store* dout;  // (n)
  template <int K>
  KOKKOS_INLINE_FUNCTION void at(index_t first) const {
    const Pack<Store, K> d = load_pack<K>(dout + first);
    if (da != nullptr) accumulate_pack<Real, Store, K>(da, first, d);
    if (db != nullptr) accumulate_pack<Real, Store, K>(db, first, d);
  }
};
}  // namespace detail

// out may alias a or b.
template <class Real, class Store = Real, class Exec>
void residual_forward(const Exec& exec, Flat<Store, Exec> out,  // (n)
                      ConstFlat<Store, Exec> a,                 // (n)
                      ConstFlat<Store, Exec> b,                 // (n)
                      index_t n) {
  detail::require_size(out, n, "residual_forward", "out");
  detail::require_size(a, n, "residual_forward", "a");
  detail::require_size(b, n, "residual_forward", "b");
  const detail::ResidualForward<Real, Store> body{out.data(), a.data(), b.data()};
  for_each_packed<pack_width<Store>()>(exec, "p2bw::residual_forward", n,
                                       detail::use_packs<Exec>(body.out, body.a, body.b), body);
}

// da += dout and db += dout (accumulated, see above; in Real, the sum rounded when stored).
// Either of da and db may be empty (skipped).
template <class Real, class Store = Real, class Exec>
void residual_backward(const Exec& exec, Flat<Store, Exec> da,  // (n) or empty, accumulated
                       Flat<Store, Exec> db,                    // (n) or empty, accumulated
                       ConstFlat<Store, Exec> dout,             // (n)
                       index_t n) {
  const bool has_a = da.extent(0) > 0, has_b = db.extent(0) > 0;
  if (has_a) detail::require_size(da, n, "residual_backward", "da");
  if (has_b) detail::require_size(db, n, "residual_backward", "db");
  detail::require_size(dout, n, "residual_backward", "dout");
  const detail::ResidualBackward<Real, Store> body{has_a ? da.data() : nullptr,
                                                   has_b ? db.data() : nullptr, dout.data()};
  for_each_packed<pack_width<Store>()>(exec, "p2bw::residual_backward", n,
                                       detail::use_packs<Exec>(body.da, body.db, body.dout), body);
}

}  // namespace p2bw::kernels
