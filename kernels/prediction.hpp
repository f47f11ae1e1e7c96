// The weight prediction that the optimizer kernels (AdamW, SGD) can write beside their update:
// with w = W(t) read and w' = W(t+1) written, out = w' + gamma (w' - w), a linear extrapolation
// of the next weights (SpecTrain, PipeMare) on which 2bw runs its stale batch instead of W(t+1)
// (docs/convergence.md). `out` may alias the gradient (each gradient is read before `out` is
// written), never the weights. Under bf16 `out` is the compute copy, a bf16 buffer (Store = bf16,
// kernels/storage.hpp): the value written is rounded to the nearest bf16, so the update writes
// the master and the compute copy in one pass; gamma = 0 then writes bf16(w').
#pragma once

#include "kernels/storage.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

template <class Real, class Exec, class Store = Real>
struct Prediction {
  Flat<Store, Exec> out;  // (n), or empty: no prediction
  double gamma = 0.0;
};

namespace detail {

// The checks and the lambda's copy of a prediction for an update of n elements.
template <class Real, class Exec, class Store>
struct Predict {
  Flat<Store, Exec> out;
  double gamma;
  bool on;

  Predict(const Prediction<Real, Exec, Store>& p, index_t n, const char* kernel)
      : out(p.out), gamma(p.gamma), on(p.out.data() != nullptr) {
    if (on) require_size(out, n, kernel, "prediction");
  }
  // Writes element i's prediction from the weight read (before) and the weight written (after).
  template <class Acc>
  KOKKOS_INLINE_FUNCTION void operator()(index_t i, Acc before, Real after) const {
    if (on) {
      const Acc next = static_cast<Acc>(after);
      const Real value = static_cast<Real>(next + static_cast<Acc>(gamma) * (next - before));
      out(i) = narrow<Store>(value);
    }
  }
};

}  // namespace detail
}  // namespace p2bw::kernels
