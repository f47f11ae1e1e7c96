// Linear layer (llm.c "matmul"): out = inp * weight^T + bias with weight stored (OC, C) like
// PyTorch. Rows are the B*T positions (N = B*T). The GEMMs go through kernels/gemm.hpp, the
// forward's bias as the GEMM's epilogue; the bias gradient is a deterministic column sum. The MLP's
// first layer and its GELU are matmul_gelu_forward, and the second layer's backward through that
// GELU matmul_backward_gelu: one GEMM with a GELU epilogue each under cuBLASLt with bf16 storage,
// the GEMM and kernels/gelu.hpp elsewhere.
// Storage (kernels/storage.hpp): activations, their gradients, the weight and the bias are Store;
// the accumulated parameter gradients dweight and dbias and the column-sum workspace are Real.
#pragma once

#include "kernels/gelu.hpp"
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
  gemm<Real, Store, Store>(
      exec, Trans::N, Trans::T, Real(1), ConstMatrix<Store, Exec>(inp.data(), N, C),
      ConstMatrix<Store, Exec>(weight.data(), OC, C), Real(0),
      Matrix<Store, Exec>(out.data(), N, OC),
      bias.extent(0) > 0 ? ConstFlat<Store, Exec>(bias.data(), OC) : ConstFlat<Store, Exec>());
}

// pre = inp * weight^T + bias, stored, and out = gelu(pre) (the MLP's first layer). Under
// cuBLASLt with bf16 storage one GEMM with the GELU_AUX_BIAS epilogue, whose GELU reads the
// unrounded pre-activation (llm.c's fusion); elsewhere (and with P2BW_GELU_EPILOGUE=off)
// matmul_forward and gelu_forward, whose GELU reads the stored one (PyTorch's bf16 autocast: a
// bf16 Linear, then GELU on its bf16 output).
template <class Real, class Store = Real, class Exec>
void matmul_gelu_forward(const Exec& exec, Flat<Store, Exec> out,  // (N, OC) gelu(pre)
                         Flat<Store, Exec> pre,                    // (N, OC)
                         ConstFlat<Store, Exec> inp,               // (N, C)
                         ConstFlat<Store, Exec> weight,            // (OC, C)
                         ConstFlat<Store, Exec> bias,              // (OC) or empty
                         int N, int C, int OC) {
  const index_t NOC = static_cast<index_t>(N) * OC;
  detail::require_size(out, NOC, "matmul_gelu_forward", "out");
  detail::require_size(pre, NOC, "matmul_gelu_forward", "pre");
  detail::require_size(inp, static_cast<index_t>(N) * C, "matmul_gelu_forward", "inp");
  detail::require_size(weight, static_cast<index_t>(OC) * C, "matmul_gelu_forward", "weight");
  if (bias.extent(0) > 0) detail::require_size(bias, OC, "matmul_gelu_forward", "bias");
  const ConstFlat<Store, Exec> b =
      bias.extent(0) > 0 ? ConstFlat<Store, Exec>(bias.data(), OC) : ConstFlat<Store, Exec>();
  if (gemm_bias_gelu<Real, Store>(exec, Trans::N, Trans::T,
                                  ConstMatrix<Store, Exec>(inp.data(), N, C),
                                  ConstMatrix<Store, Exec>(weight.data(), OC, C),
                                  Matrix<Store, Exec>(out.data(), N, OC), b, pre))
    return;
  matmul_forward<Real, Store>(exec, pre, inp, weight, bias, N, C, OC);
  gelu_forward<Real, Store>(exec, out, ConstFlat<Store, Exec>(pre.data(), NOC), NOC);
}

namespace detail {
// matmul_backward, and with a non-empty gelu_pre dinp = gelu'(gelu_pre) (dout * weight).
template <class Real, class Store, class Exec>
void matmul_backward(const Exec& exec, Flat<Store, Exec> dinp, Flat<Real, Exec> dweight,
                     Flat<Real, Exec> dbias, ConstFlat<Store, Exec> dout,
                     ConstFlat<Store, Exec> inp, ConstFlat<Store, Exec> weight, int N, int C,
                     int OC, Flat<Real, Exec> colsum, ConstFlat<Store, Exec> gelu_pre,
                     const char* who) {
  const index_t NC = static_cast<index_t>(N) * C;
  require_size(dinp, NC, who, "dinp");
  require_size(dweight, static_cast<index_t>(OC) * C, who, "dweight");
  require_size(dout, static_cast<index_t>(N) * OC, who, "dout");
  require_size(inp, NC, who, "inp");
  require_size(weight, static_cast<index_t>(OC) * C, who, "weight");
  const ConstMatrix<Store, Exec> dout_m(dout.data(), N, OC);  // (N, OC)
  const ConstMatrix<Store, Exec> weight_m(weight.data(), OC, C);
  const Matrix<Store, Exec> dinp_m(dinp.data(), N, C);
  if (gelu_pre.extent(0) == 0) {
    gemm<Real, Store, Store>(exec, Trans::N, Trans::N, Real(1), dout_m, weight_m, Real(0), dinp_m);
  } else {
    require_size(gelu_pre, NC, who, "gelu_pre");
    const ConstFlat<Store, Exec> pre(gelu_pre.data(), NC);
    if (!gemm_dgelu<Real, Store>(exec, Trans::N, Trans::N, dout_m, weight_m, dinp_m, pre)) {
      gemm<Real, Store, Store>(exec, Trans::N, Trans::N, Real(1), dout_m, weight_m, Real(0),
                               dinp_m);
      gelu_backward<Real, Store>(exec, Flat<Store, Exec>(dinp.data(), NC),
                                 ConstFlat<Store, Exec>(dinp.data(), NC), pre, NC);
    }
  }
  gemm<Real, Store, Real>(exec, Trans::T, Trans::N, Real(1), dout_m,
                          ConstMatrix<Store, Exec>(inp.data(), N, C), Real(1),
                          Matrix<Real, Exec>(dweight.data(), OC, C));
  if (dbias.extent(0) == 0) return;
  require_size(dbias, OC, who, "dbias");
  column_sum_add<Real>(
      exec, dbias, N, OC,
      KOKKOS_LAMBDA(const int n, const int o) {
        return static_cast<Real>(widen(dout(static_cast<index_t>(n) * OC + o)));
      },
      colsum);
}
}  // namespace detail

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
  detail::matmul_backward<Real, Store, Exec>(exec, dinp, dweight, dbias, dout, inp, weight, N, C,
                                             OC, colsum, ConstFlat<Store, Exec>(),
                                             "matmul_backward");
}

// matmul_backward of a layer whose input is inp = gelu(pre) (the MLP's second layer), carried
// through the GELU: dinp = gelu'(pre) (dout * weight), the gradient of pre. Under cuBLASLt with
// bf16 storage one GEMM with the DGELU epilogue; elsewhere the GEMM and gelu_backward.
template <class Real, class Store = Real, class Exec>
void matmul_backward_gelu(const Exec& exec, Flat<Store, Exec> dinp,  // (N, C) of pre, assigned
                          Flat<Real, Exec> dweight,                  // (OC, C), accumulated
                          Flat<Real, Exec> dbias,                    // (OC) or empty, accumulated
                          ConstFlat<Store, Exec> dout,               // (N, OC)
                          ConstFlat<Store, Exec> inp,                // (N, C) gelu(pre)
                          ConstFlat<Store, Exec> weight,             // (OC, C)
                          ConstFlat<Store, Exec> pre,                // (N, C)
                          int N, int C, int OC,
                          Flat<Real, Exec> colsum = Flat<Real, Exec>()) {  // (kRowChunks, OC)
  detail::require(pre.extent(0) > 0, "matmul_backward_gelu", "pre is empty");
  detail::matmul_backward<Real, Store, Exec>(exec, dinp, dweight, dbias, dout, inp, weight, N, C,
                                             OC, colsum, pre, "matmul_backward_gelu");
}

}  // namespace p2bw::kernels
