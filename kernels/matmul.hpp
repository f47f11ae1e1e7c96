// Linear layer (llm.c "matmul"): out = inp * weight^T + bias with weight stored (OC, C) like
// PyTorch. Rows are the B*T positions (N = B*T). The GEMMs go through kernels/gemm.hpp; the bias
// gradient is a deterministic column sum.
#pragma once

#include "kernels/gemm.hpp"
#include "kernels/reduce.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

// An empty bias View (extent 0) means "no bias" (the tied LM head has none).
template <class Real, class Exec>
void matmul_forward(const Exec& exec, Flat<Real, Exec> out,  // (N, OC)
                    ConstFlat<Real, Exec> inp,               // (N, C)
                    ConstFlat<Real, Exec> weight,            // (OC, C)
                    ConstFlat<Real, Exec> bias,              // (OC) or empty
                    int N, int C, int OC) {
  const index_t NOC = static_cast<index_t>(N) * OC;
  detail::require_size(out, NOC, "matmul_forward", "out");
  detail::require_size(inp, static_cast<index_t>(N) * C, "matmul_forward", "inp");
  detail::require_size(weight, static_cast<index_t>(OC) * C, "matmul_forward", "weight");
  const bool has_bias = bias.extent(0) > 0;
  if (has_bias) detail::require_size(bias, OC, "matmul_forward", "bias");
  gemm<Real>(exec, Trans::N, Trans::T, Real(1), ConstMatrix<Real, Exec>(inp.data(), N, C),
             ConstMatrix<Real, Exec>(weight.data(), OC, C), Real(0),
             Matrix<Real, Exec>(out.data(), N, OC));
  if (!has_bias) return;
  // One team per row, no division per element.
  Kokkos::parallel_for(
      "p2bw::matmul_forward_bias", Kokkos::TeamPolicy<Exec>(exec, N, Kokkos::AUTO),
      KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const index_t row = static_cast<index_t>(team.league_rank()) * OC;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, OC),
                             [&](const int o) { out(row + o) += bias(o); });
      });
}

// dinp = dout * weight (assigned); dweight += dout^T * inp; dbias += sum over rows of dout
// (skipped when dbias is empty). `colsum` (column_sum_workspace(OC), kept by the caller) lets the
// bias gradient's column sum spread over a device (see column_sum_add; same result without).
template <class Real, class Exec>
void matmul_backward(const Exec& exec, Flat<Real, Exec> dinp,  // (N, C), assigned
                     Flat<Real, Exec> dweight,                 // (OC, C), accumulated
                     Flat<Real, Exec> dbias,                   // (OC) or empty, accumulated
                     ConstFlat<Real, Exec> dout,               // (N, OC)
                     ConstFlat<Real, Exec> inp,                // (N, C)
                     ConstFlat<Real, Exec> weight,             // (OC, C)
                     int N, int C, int OC,
                     Flat<Real, Exec> colsum = Flat<Real, Exec>()) {  // (kRowChunks, OC) or empty
  const index_t NC = static_cast<index_t>(N) * C;
  detail::require_size(dinp, NC, "matmul_backward", "dinp");
  detail::require_size(dweight, static_cast<index_t>(OC) * C, "matmul_backward", "dweight");
  detail::require_size(dout, static_cast<index_t>(N) * OC, "matmul_backward", "dout");
  detail::require_size(inp, NC, "matmul_backward", "inp");
  detail::require_size(weight, static_cast<index_t>(OC) * C, "matmul_backward", "weight");
  const ConstMatrix<Real, Exec> dout_m(dout.data(), N, OC);  // (N, OC)
  gemm<Real>(exec, Trans::N, Trans::N, Real(1), dout_m,
             ConstMatrix<Real, Exec>(weight.data(), OC, C), Real(0),
             Matrix<Real, Exec>(dinp.data(), N, C));
  gemm<Real>(exec, Trans::T, Trans::N, Real(1), dout_m, ConstMatrix<Real, Exec>(inp.data(), N, C),
             Real(1), Matrix<Real, Exec>(dweight.data(), OC, C));
  if (dbias.extent(0) == 0) return;
  detail::require_size(dbias, OC, "matmul_backward", "dbias");
  column_sum_add<Real>(
      exec, dbias, N, OC,
      KOKKOS_LAMBDA(const int n, const int o) { return dout(static_cast<index_t>(n) * OC + o); },
      colsum);
}

}  // namespace p2bw::kernels
