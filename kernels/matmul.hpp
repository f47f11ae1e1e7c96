// Linear layer (llm.c "matmul"): out = inp * weight^T + bias with weight stored (OC, C) like
// PyTorch. Rows are the B*T positions (N = B*T). The GEMMs go through kernels/gemm.hpp, the
// forward's bias as the GEMM's epilogue; the bias gradient is a deterministic column sum.
// Storage (kernels/storage.hpp): activations, their gradients, the weight and the bias are Store;
// the accumulated parameter gradients dweight and dbias and the column-sum workspace are Real.
#pragma once

#include "kernels/gemm.hpp"
#include "kernels/reduce.hpp"
#include "kernels/storage.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

// An empty bias View (extent 0) means "no bias" (the tied LM head has none). The bias is added in
// Real to the GEMM's Real result before it is narrowed to Store.
template <class Real, class Store = Real, class Exec>
void matmul_forward(const Exec& exec, Flat<Store, Exec> out,  // (N, OC)
                    ConstFlat<Store, Exec> inp,               // (N, C)
                    ConstFlat<Store, Exec> weight,            // (OC, C)
                    ConstFlat<Store, Exec> bias,              // (OC) or empty
                    int N, int C, int OC) {
  detail::require_size(out, static_cast<index_t>(N) * OC, "matmul_forward", "out");
  detail::require_size(inp, static_cast<index_t>(N) * C, "matmul_forward", "inp");
  detail::require_size(weight, static_cast<index_t>(OC) * C, "matmul_forward", "weight");
  if (bias.extent(0) > 0) detail::require_size(bias, OC, "matmul_forward", "bias");
  // The fc layer's GELU stays a separate kernel reading the stored pre-activation
  // (kernels/gelu.hpp): cuBLASLt's GELU epilogue takes the unrounded one, another semantics.
  gemm<Real, Store, Store>(
      exec, Trans::N, Trans::T, Real(1), ConstMatrix<Store, Exec>(inp.data(), N, C),
      ConstMatrix<Store, Exec>(weight.data(), OC, C), Real(0),
      Matrix<Store, Exec>(out.data(), N, OC),
      bias.extent(0) > 0 ? ConstFlat<Store, Exec>(bias.data(), OC) : ConstFlat<Store, Exec>());
}

// dinp = dout * weight (assigned); dweight += dout^T * inp; dbias += sum over rows of dout
// (skipped when dbias is empty). `colsum` (column_sum_workspace(OC), kept by the caller) lets the
// bias gradient's column sum spread over a device (see column_sum_add; same result without).
template <class Real, class Store = Real, class Exec>
void matmul_backward(const Exec& exec, Flat<Store, Exec> dinp,  // (N, C), assigned
                     Flat<Real, Exec> dweight,                  // (OC, C), accumulated
                     Flat<Real, Exec> dbias,                    // (OC) or empty, accumulated
                     ConstFlat<Store, Exec> dout,               // (N, OC)
                     ConstFlat<Store, Exec> inp,                // (N, C)
                     ConstFlat<Store, Exec> weight,             // (OC, C)
                     int N, int C, int OC,
                     Flat<Real, Exec> colsum = Flat<Real, Exec>()) {  // (kRowChunks, OC) or empty
  const index_t NC = static_cast<index_t>(N) * C;
  detail::require_size(dinp, NC, "matmul_backward", "dinp");
  detail::require_size(dweight, static_cast<index_t>(OC) * C, "matmul_backward", "dweight");
  detail::require_size(dout, static_cast<index_t>(N) * OC, "matmul_backward", "dout");
  detail::require_size(inp, NC, "matmul_backward", "inp");
  detail::require_size(weight, static_cast<index_t>(OC) * C, "matmul_backward", "weight");
  const ConstMatrix<Store, Exec> dout_m(dout.data(), N, OC);  // (N, OC)
  gemm<Real, Store, Store>(exec, Trans::N, Trans::N, Real(1), dout_m,
                           ConstMatrix<Store, Exec>(weight.data(), OC, C), Real(0),
                           Matrix<Store, Exec>(dinp.data(), N, C));
  gemm<Real, Store, Real>(exec, Trans::T, Trans::N, Real(1), dout_m,
                          ConstMatrix<Store, Exec>(inp.data(), N, C), Real(1),
                          Matrix<Real, Exec>(dweight.data(), OC, C));
  if (dbias.extent(0) == 0) return;
  detail::require_size(dbias, OC, "matmul_backward", "dbias");
  column_sum_add<Real>(
      exec, dbias, N, OC,
      KOKKOS_LAMBDA(const int n, const int o) {
        return static_cast<Real>(widen(dout(static_cast<index_t>(n) * OC + o)));
      },
      colsum);
}

}  // namespace p2bw::kernels
