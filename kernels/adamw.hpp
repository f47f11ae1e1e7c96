// AdamW update on flat buffers (PyTorch / llm.c semantics): fp32 moments, bias correction,
// decoupled weight decay only inside the DecayRanges, and a gradient scale (for clipping). The
// result is written to w_out, which may be w_in itself (in place) or another weight version.
// Also brings global_norm_squared (kernels/reduce.hpp) for the clipping factor.
#pragma once

#include <cmath>
#include <type_traits>

#include "kernels/decay_ranges.hpp"
#include "kernels/prediction.hpp"
#include "kernels/reduce.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

// For i < n = w_in.extent(0), with g = grad[i] * grad_scale and step t >= 1 (the update's 1-based
// count):
//   m = beta1 m + (1 - beta1) g,  v = beta2 v + (1 - beta2) g^2
//   w_out = w_in - lr (m / (1 - beta1^t) / (sqrt(v / (1 - beta2^t)) + eps) + wd_i w_in)
// with wd_i = weight_decay inside the decay ranges, else 0. Arithmetic in float for float
// weights (double for double); m and v are stored in float. With a prediction, also
// prediction.out = w_out + gamma (w_out - w_in) (kernels/prediction.hpp).
template <class Real, class Store = Real, class Exec>
void adamw_update(const Exec& exec, Flat<Real, Exec> w_out,  // (n), may be w_in
                  ConstFlat<Real, Exec> w_in,                // (n)
                  ConstFlat<Real, Exec> grad,                // (n)
                  Flat<float, Exec> m,                       // (n), first moment
                  Flat<float, Exec> v,                       // (n), second moment
                  const DecayRanges<Exec>& decay,            // elements with weight decay
                  double lr, double beta1, double beta2, double eps, double weight_decay,
                  std::int64_t step, double grad_scale,
                  const Prediction<Real, Exec, Store>& prediction = {}) {
  const index_t n = static_cast<index_t>(w_in.extent(0));
  detail::require(step >= 1, "adamw_update", "step counts from 1");
  detail::require_size(w_out, n, "adamw_update", "w_out");
  detail::require_size(w_in, n, "adamw_update", "w_in");
  detail::require_size(grad, n, "adamw_update", "grad");
  detail::require_size(m, n, "adamw_update", "m");
  detail::require_size(v, n, "adamw_update", "v");
  using Acc = std::common_type_t<Real, float>;
  const Acc rate = static_cast<Acc>(lr), epsilon = static_cast<Acc>(eps);
  const Acc wd = static_cast<Acc>(weight_decay), scale = static_cast<Acc>(grad_scale);
  const Acc b1 = static_cast<Acc>(beta1), b2 = static_cast<Acc>(beta2);
  const Acc one_minus_b1 = static_cast<Acc>(1.0 - beta1);
  const Acc one_minus_b2 = static_cast<Acc>(1.0 - beta2);
  const double t = static_cast<double>(step);
  const Acc correction1 = static_cast<Acc>(1.0 - std::pow(beta1, t));
  const Acc correction2 = static_cast<Acc>(1.0 - std::pow(beta2, t));
  const DecayRanges<Exec> ranges = decay;
  const detail::Predict<Real, Exec, Store> predict(prediction, n, "adamw_update");
  for_each_decay(
      exec, "p2bw::adamw_update", n, ranges, KOKKOS_LAMBDA(const index_t i, const bool decays) {
        const Acc g = static_cast<Acc>(grad(i)) * scale;
        const Acc mi = b1 * static_cast<Acc>(m(i)) + one_minus_b1 * g;
        const Acc vi = b2 * static_cast<Acc>(v(i)) + one_minus_b2 * g * g;
        m(i) = static_cast<float>(mi);
        v(i) = static_cast<float>(vi);
        const Acc m_hat = mi / correction1;
        const Acc v_hat = vi / correction2;
        const Acc w = static_cast<Acc>(w_in(i));
        const Acc decay_i = decays ? wd : Acc(0);
        const Real next =
            static_cast<Real>(w - rate * (m_hat / (math::sqrt(v_hat) + epsilon) + decay_i * w));
        w_out(i) = next;
        predict(i, w, next);
      });
}

}  // namespace p2bw::kernels
