// SGD with momentum on flat buffers (PyTorch semantics, dampening 0, no Nesterov): coupled
// weight decay added to the gradient inside the DecayRanges, a gradient scale (for clipping), and
// the result written to w_out, which may be w_in itself (in place) or another weight version.
#pragma once

#include <type_traits>

#include "kernels/decay_ranges.hpp"
#include "kernels/prediction.hpp"
#include "kernels/reduce.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

// For i < n = w_in.extent(0): g = grad[i] * grad_scale + wd_i w_in[i]; with momentum, buf =
// momentum buf + g and g = buf (buf starts at 0, which equals PyTorch's first step buf = g); w_out
// = w_in - lr g. momentum_buf may be empty when momentum == 0. With a prediction, also
// prediction.out = w_out + gamma (w_out - w_in) (kernels/prediction.hpp).
template <class Real, class Store = Real, class Exec>
void sgd_update(const Exec& exec, Flat<Real, Exec> w_out,  // (n), may be w_in
                ConstFlat<Real, Exec> w_in,                // (n)
                ConstFlat<Real, Exec> grad,                // (n)
                Flat<float, Exec> momentum_buf,            // (n) or empty when momentum == 0
                const DecayRanges<Exec>& decay,            // elements with weight decay
                double lr, double momentum, double weight_decay, double grad_scale,
                const Prediction<Real, Exec, Store>& prediction = {}) {
  const index_t n = static_cast<index_t>(w_in.extent(0));
  detail::require_size(w_out, n, "sgd_update", "w_out");
  detail::require_size(w_in, n, "sgd_update", "w_in");
  detail::require_size(grad, n, "sgd_update", "grad");
  const bool use_momentum = momentum != 0.0;
  if (use_momentum) detail::require_size(momentum_buf, n, "sgd_update", "momentum_buf");
  using Acc = std::common_type_t<Real, float>;
  const Acc rate = static_cast<Acc>(lr), mu = static_cast<Acc>(momentum);
  const Acc wd = static_cast<Acc>(weight_decay), scale = static_cast<Acc>(grad_scale);
  const DecayRanges<Exec> ranges = decay;
  const detail::Predict<Real, Exec, Store> predict(prediction, n, "sgd_update");
  for_each_decay(
      exec, "p2bw::sgd_update", n, ranges, KOKKOS_LAMBDA(const index_t i, const bool decays) {
        const Acc w = static_cast<Acc>(w_in(i));
        Acc g = static_cast<Acc>(grad(i)) * scale;
        if (decays) g += wd * w;
        if (use_momentum) {
          g = mu * static_cast<Acc>(momentum_buf(i)) + g;
          momentum_buf(i) = static_cast<float>(g);
        }
        const Real next = static_cast<Real>(w - rate * g);
        w_out(i) = next;
        predict(i, w, next);
      });
}

}  // namespace p2bw::kernels
