// Residual connection: out = a + b, and its backward. Exception to the layer contract: the
// residual stream's gradients are ACCUMULATED (da += dout, db += dout), as in llm.c, because the
// stream's gradient is the sum of the skip path and the branch.
// Everything here is an activation or an activation gradient: Store (kernels/storage.hpp); the
// sums are computed in Real and rounded once, when stored.
#pragma once

#include "kernels/storage.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

// out may alias a or b.
template <class Real, class Store = Real, class Exec>
void residual_forward(const Exec& exec, Flat<Store, Exec> out,  // (n)
                      ConstFlat<Store, Exec> a,                 // (n)
                      ConstFlat<Store, Exec> b,                 // (n)
                      index_t n) {
  detail::require_size(out, n, "residual_forward", "out");
  detail::require_size(a, n, "residual_forward", "a");
  detail::require_size(b, n, "residual_forward", "b");
  Kokkos::parallel_for(
      "p2bw::residual_forward", Kokkos::RangePolicy<Exec>(exec, 0, n),
      KOKKOS_LAMBDA(const index_t i) {
        const Real x = widen(a(i)), y = widen(b(i));
        out(i) = narrow<Store>(x + y);
      });
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
  Kokkos::parallel_for(
      "p2bw::residual_backward", Kokkos::RangePolicy<Exec>(exec, 0, n),
      KOKKOS_LAMBDA(const index_t i) {
        const Real d = widen(dout(i));
        if (has_a) {
          const Real x = widen(da(i));
          da(i) = narrow<Store>(x + d);
        }
        if (has_b) {
          const Real y = widen(db(i));
          db(i) = narrow<Store>(y + d);
        }
      });
}

}  // namespace p2bw::kernels
