// Residual connection: out = a + b, and its backward. Exception to the layer contract: the
// residual stream's gradients are ACCUMULATED (da += dout, db += dout), as in llm.c, because the
// stream's gradient is the sum of the skip path and the branch.
#pragma once

#include "kernels/types.hpp"

namespace p2bw::kernels {

// out may alias a or b.
template <class Real, class Exec>
void residual_forward(const Exec& exec, Flat<Real, Exec> out,  // (n)
                      ConstFlat<Real, Exec> a,                 // (n)
                      ConstFlat<Real, Exec> b,                 // (n)
                      index_t n) {
  detail::require_size(out, n, "residual_forward", "out");
  detail::require_size(a, n, "residual_forward", "a");
  detail::require_size(b, n, "residual_forward", "b");
  Kokkos::parallel_for(
      "p2bw::residual_forward", Kokkos::RangePolicy<Exec>(exec, 0, n),
      KOKKOS_LAMBDA(const index_t i) { out(i) = a(i) + b(i); });
}

// da += dout and db += dout (accumulated, see above). Either of da and db may be empty (skipped).
template <class Real, class Exec>
void residual_backward(const Exec& exec, Flat<Real, Exec> da,  // (n) or empty, accumulated
                       Flat<Real, Exec> db,                    // (n) or empty, accumulated
                       ConstFlat<Real, Exec> dout,             // (n)
                       index_t n) {
  const bool has_a = da.extent(0) > 0, has_b = db.extent(0) > 0;
  if (has_a) detail::require_size(da, n, "residual_backward", "da");
  if (has_b) detail::require_size(db, n, "residual_backward", "db");
  detail::require_size(dout, n, "residual_backward", "dout");
  Kokkos::parallel_for(
      "p2bw::residual_backward", Kokkos::RangePolicy<Exec>(exec, 0, n),
      KOKKOS_LAMBDA(const index_t i) {
        const Real d = dout(i);
        if (has_a) da(i) += d;
        if (has_b) db(i) += d;
      });
}

}  // namespace p2bw::kernels
