// GEMM dispatch: one row-major interface, C = alpha * op(A) * op(B) + beta * C + bias, and its
// strided-batched variant. A and B are stored as Store, C and the optional bias (one value per
// column of C, added to every row) as Out (kernels/storage.hpp): both Real by default; under bf16
// storage A and B are bf16 and C is bf16 (activations and their gradients) or Real (accumulated
// weight gradients). Every backend computes in Real: bf16 operands are widened exactly, C is read
// widened (beta != 0), the bias is added in Real to alpha op(A) op(B) + beta C, and only then is
// the result narrowed to Out. So on the host a GEMM with bf16 storage gives the bits of the same
// GEMM with Store = Out = Real on the same (bf16-exact) values followed by rounding to bf16.
// The backend is chosen at compile time from the execution space and the types: cuBLAS for
// Kokkos::Cuda, CBLAS (OpenBLAS) for host spaces when linked (P2BW_HAVE_CBLAS, optional in CUDA
// builds), a native Kokkos kernel otherwise (and for type combinations the library does not
// take). The native kernel is public so tests can compare.
// As in BLAS, beta == 0 means C is not read (NaN in C does not propagate).
#pragma once

#include <atomic>
#include <mutex>

#ifdef P2BW_HAVE_CBLAS
#include <cblas.h>
#endif

#include "kernels/storage.hpp"
#include "kernels/types.hpp"  // first: Kokkos defines KOKKOS_ENABLE_CUDA

#ifdef KOKKOS_ENABLE_CUDA
#include <cublas_v2.h>

#include <unordered_map>
#endif

namespace p2bw::kernels {

enum class Trans { N, T };  // op(X) = X or X^T

namespace detail {
inline std::atomic<bool>& tf32_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}
}  // namespace detail

// TF32 tensor-core math for float GEMMs under cuBLAS (no effect on other backends or on double).
// Off by default; read at every call, so it can be switched between steps.
inline void set_tf32(bool on) {
  detail::tf32_flag().store(on);
}
inline bool tf32_enabled() {
  return detail::tf32_flag().load();
}

namespace detail {

struct GemmShape {
  int batch, m, n, k;
};

// Checks op(A) (m, k) * op(B) (k, n) = C (m, n) given the stored (rows, cols) of each operand.
inline GemmShape gemm_shape(Trans ta, Trans tb, std::size_t a_rows, std::size_t a_cols,
                            std::size_t b_rows, std::size_t b_cols, std::size_t c_rows,
                            std::size_t c_cols, std::size_t batch, const char* who) {
  const std::size_t am = ta == Trans::N ? a_rows : a_cols;
  const std::size_t ak = ta == Trans::N ? a_cols : a_rows;
  const std::size_t bk = tb == Trans::N ? b_rows : b_cols;
  const std::size_t bn = tb == Trans::N ? b_cols : b_rows;
  require(am == c_rows && bn == c_cols && ak == bk, who,
          "shape mismatch: op(A) is " + std::to_string(am) + "x" + std::to_string(ak) +
              ", op(B) is " + std::to_string(bk) + "x" + std::to_string(bn) + ", C is " +
              std::to_string(c_rows) + "x" + std::to_string(c_cols));
  return {static_cast<int>(batch), static_cast<int>(c_rows), static_cast<int>(c_cols),
          static_cast<int>(ak)};
}

// The shape of a batched GEMM; a non-empty bias must hold n values.
template <class VA, class VB, class VC, class VBias>
GemmShape batched_shape(Trans ta, Trans tb, const VA& A, const VB& B, const VC& C,
                        const VBias& bias, const char* who) {
  require(A.extent(0) == C.extent(0) && B.extent(0) == C.extent(0), who,
          "batch counts of A, B and C differ");
  const GemmShape s = gemm_shape(ta, tb, A.extent(1), A.extent(2), B.extent(1), B.extent(2),
                                 C.extent(1), C.extent(2), C.extent(0), who);
  if (bias.extent(0) > 0) require_size(bias, s.n, who, "bias");
  return s;
}

// A 2-D operand as a batch of one; the 2-D View must be contiguous.
template <class T, class Exec>
MatrixBatch<T, Exec> as_batch(const Matrix<T, Exec>& M, const char* who) {
  require(M.span_is_contiguous(), who, "2-D operands must be contiguous row-major");
  return MatrixBatch<T, Exec>(M.data(), 1, M.extent(0), M.extent(1));
}

template <class Real>
struct is_blas_scalar : std::integral_constant<bool, std::is_same<Real, float>::value ||
                                                         std::is_same<Real, double>::value> {};

// Leading dimension of a row-major operand (BLAS requires at least 1).
template <class V>
int leading_dim(const V& M) {
  const std::size_t ld = M.stride_1();
  return static_cast<int>(ld > 0 ? ld : 1);
}

// The epilogue of the backends that compute into a Real buffer: c = narrow<Out>(acc + bias),
// rows rows of n contiguous values; acc may be c itself (Out = Real). One team per row, no
// division per element. With Out = Real this is the bias kernel matmul_forward ran before the
// bias moved into the GEMM: the same additions, so the same bits.
template <class Real, class Out, class Exec>
void gemm_epilogue(const Exec& exec, ConstFlat<Real, Exec> acc,  // (rows, n)
                   Flat<Out, Exec> c,                            // (rows, n)
                   ConstFlat<Out, Exec> bias,                    // (n) or empty
                   int rows, int n) {
  const bool has_bias = bias.extent(0) > 0;
  Kokkos::parallel_for(
      "p2bw::gemm_epilogue", Kokkos::TeamPolicy<Exec>(exec, rows, Kokkos::AUTO),
      KOKKOS_LAMBDA(const Team<Exec>& team) {
        const index_t row = static_cast<index_t>(team.league_rank()) * n;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](const int j) {
          Real v = acc(row + j);
          if (has_bias) v += static_cast<Real>(widen(bias(j)));
          c(row + j) = narrow<Out>(v);
        });
      });
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Native Kokkos kernel: one team per 16x16 tile of C, operand tiles staged in team scratch,
// widened to Real as they are staged. Every element of C is accumulated in k order by one
// thread, so the result is deterministic; the bias is added and the result narrowed as it is
// written.

template <class Real, class Store = Real, class Out = Store, class Exec>
void gemm_native_batched(const Exec& exec, Trans ta, Trans tb, Real alpha,
                         ConstMatrixBatch<Store, Exec> A,      // (batch, m, k) or (batch, k, m)
                         ConstMatrixBatch<Store, Exec> B,      // (batch, k, n) or (batch, n, k)
                         Real beta, MatrixBatch<Out, Exec> C,  // (batch, m, n)
                         ConstFlat<Out, Exec> bias = ConstFlat<Out, Exec>()) {  // (n) or empty
  const detail::GemmShape s = detail::batched_shape(ta, tb, A, B, C, bias, "gemm_native");
  if (s.batch == 0 || s.m == 0 || s.n == 0) return;
  constexpr int TS = 16;
  const int m = s.m, n = s.n, k = s.k;
  const int tiles_m = (m + TS - 1) / TS, tiles_n = (n + TS - 1) / TS;
  const bool a_t = ta == Trans::T, b_t = tb == Trans::T;
  const bool has_bias = bias.extent(0) > 0;
  const std::size_t tile_bytes = TeamScratch<Real, Exec>::shmem_size(TS * TS);
  const auto policy = Kokkos::TeamPolicy<Exec>(exec, s.batch * tiles_m * tiles_n, Kokkos::AUTO)
                          .set_scratch_size(0, Kokkos::PerTeam(3 * tile_bytes));
  Kokkos::parallel_for(
      "p2bw::gemm_native", policy, KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const int tiles = tiles_m * tiles_n;
        const int bi = team.league_rank() / tiles;
        const int tile = team.league_rank() % tiles;
        const int i0 = (tile / tiles_n) * TS, j0 = (tile % tiles_n) * TS;
        TeamScratch<Real, Exec> As(team.team_scratch(0), TS * TS);   // (TS, TS) op(A) tile
        TeamScratch<Real, Exec> Bs(team.team_scratch(0), TS * TS);   // (TS, TS) op(B) tile
        TeamScratch<Real, Exec> Acc(team.team_scratch(0), TS * TS);  // (TS, TS) C tile sums
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, TS * TS),
                             [&](const int e) { Acc(e) = Real(0); });
        for (int k0 = 0; k0 < k; k0 += TS) {
          const int kt = k - k0 < TS ? k - k0 : TS;
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, TS * TS), [&](const int e) {
            const int r = e / TS, q = e % TS;
            const int i = i0 + r, ka = k0 + q;  // As(r, q) = op(A)(i, ka)
            As(e) = (i < m && q < kt) ? static_cast<Real>(widen(a_t ? A(bi, ka, i) : A(bi, i, ka)))
                                      : Real(0);
            const int kb = k0 + r, j = j0 + q;  // Bs(r, q) = op(B)(kb, j)
            Bs(e) = (r < kt && j < n) ? static_cast<Real>(widen(b_t ? B(bi, j, kb) : B(bi, kb, j)))
                                      : Real(0);
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, TS * TS), [&](const int e) {
            const int r = e / TS, q = e % TS;
            Real sum = Acc(e);
            for (int kk = 0; kk < kt; ++kk) sum += As(r * TS + kk) * Bs(kk * TS + q);
            Acc(e) = sum;
          });
          team.team_barrier();
        }
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, TS * TS), [&](const int e) {
          const int i = i0 + e / TS, j = j0 + e % TS;
          if (i < m && j < n) {
            Real v = beta == Real(0)
                         ? alpha * Acc(e)
                         : alpha * Acc(e) + beta * static_cast<Real>(widen(C(bi, i, j)));
            if (has_bias) v += static_cast<Real>(widen(bias(j)));
            C(bi, i, j) = narrow<Out>(v);
          }
        });
      });
}

template <class Real, class Store = Real, class Out = Store, class Exec>
void gemm_native(const Exec& exec, Trans ta, Trans tb, Real alpha,
                 ConstMatrix<Store, Exec> A,                            // (m, k) or (k, m)
                 ConstMatrix<Store, Exec> B,                            // (k, n) or (n, k)
                 Real beta, Matrix<Out, Exec> C,                        // (m, n)
                 ConstFlat<Out, Exec> bias = ConstFlat<Out, Exec>()) {  // (n) or empty
  gemm_native_batched<Real, Store, Out>(exec, ta, tb, alpha,
                                        detail::as_batch<const Store, Exec>(A, "gemm_native"),
                                        detail::as_batch<const Store, Exec>(B, "gemm_native"), beta,
                                        detail::as_batch<Out, Exec>(C, "gemm_native"), bias);
}

// ---------------------------------------------------------------------------------------------
// Host BLAS (CBLAS, row-major). Only for host memory spaces and Real = float / double; bf16
// operands (Real = float) are widened into float buffers first, and a bf16 C is computed in a
// float buffer and narrowed by the epilogue.

namespace detail {
#ifdef P2BW_HAVE_CBLAS

inline void cblas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha,
                       const float* A, int lda, const float* B, int ldb, float beta, float* C,
                       int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void cblas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha,
                       const double* A, int lda, const double* B, int ldb, double beta, double* C,
                       int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

// The Real buffers the CBLAS path widens A, B and C into, shared by every call (one GEMM at a
// time holds them, under the mutex). Grow-only: a buffer is reallocated only when a GEMM needs
// more than it holds, so after the first training step (every shape seen) a GEMM allocates
// nothing. They are Kokkos Views, so the tests' allocation counter sees them. Freed by
// release_gemm_resources(), or by Kokkos::finalize (a hook registered at the first allocation).
template <class Real>
class HostGemmBuffers {
 public:
  static HostGemmBuffers& instance() {
    static HostGemmBuffers buffers;
    return buffers;
  }
  std::mutex& mutex() { return mutex_; }
  // Buffer `slot` (0: A, 1: B, 2: C) with at least n elements; the caller holds mutex().
  Real* get(int slot, std::size_t n) {
    View& v = views_[slot];
    if (v.extent(0) < n) {
      if (!hook_) {
        Kokkos::push_finalize_hook([] { instance().release(); });
        hook_ = true;
      }
      v = View();  // free the old buffer before allocating the larger one
      v = View(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::gemm_widened"), n);
    }
    return v.data();
  }
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (View& v : views_) v = View();
  }

 private:
  using View = Kokkos::View<Real*, Kokkos::HostSpace>;
  std::mutex mutex_;
  View views_[3];
  bool hook_ = false;
};

// src (n values of Store) as Real: src itself when Store = Real, else widened into `slot`.
template <class Real, class Store, class Exec>
const Real* widen_operand(const Exec& exec, const Store* src, std::size_t n, int slot) {
  if constexpr (std::is_same<Store, Real>::value) {
    return src;
  } else {
    Real* dst = HostGemmBuffers<Real>::instance().get(slot, n);
    Kokkos::parallel_for("p2bw::gemm_widen",
                         Kokkos::RangePolicy<Exec>(exec, 0, static_cast<index_t>(n)),
                         [=](const index_t i) { dst[i] = static_cast<Real>(widen(src[i])); });
    return dst;
  }
}

template <class Real, class Store, class Out, class Exec>
void gemm_cblas_batched(const Exec& exec, Trans ta, Trans tb, Real alpha,
                        const ConstMatrixBatch<Store, Exec>& A,
                        const ConstMatrixBatch<Store, Exec>& B, Real beta,
                        const MatrixBatch<Out, Exec>& C, const ConstFlat<Out, Exec>& bias) {
  static_assert(std::is_same<typename Exec::memory_space, Kokkos::HostSpace>::value,
                "CBLAS needs host memory");
  const GemmShape s = batched_shape(ta, tb, A, B, C, bias, "gemm");
  if (s.batch == 0 || s.m == 0 || s.n == 0) return;
  constexpr bool out_real = std::is_same<Out, Real>::value;
  constexpr bool widens = !std::is_same<Store, Real>::value || !out_real;
  std::unique_lock<std::mutex> lock(HostGemmBuffers<Real>::instance().mutex(), std::defer_lock);
  if (widens) lock.lock();
  // The widened copies keep the operands' layout (the whole span), so BLAS sees the same shapes,
  // leading dimensions and values as with Store = Out = Real.
  const Real* a = widen_operand<Real>(exec, A.data(), A.span(), 0);
  const Real* b = widen_operand<Real>(exec, B.data(), B.span(), 1);
  Real* c = nullptr;
  if constexpr (out_real) {
    c = C.data();
  } else {
    c = HostGemmBuffers<Real>::instance().get(2, C.span());
    if (beta != Real(0)) widen_operand<Real>(exec, C.data(), C.span(), 2);  // beta == 0: not read
  }
  exec.fence();  // BLAS runs outside Kokkos: earlier kernels on this instance must be done
  const CBLAS_TRANSPOSE cta = ta == Trans::N ? CblasNoTrans : CblasTrans;
  const CBLAS_TRANSPOSE ctb = tb == Trans::N ? CblasNoTrans : CblasTrans;
  for (int i = 0; i < s.batch; ++i) {
    cblas_gemm(cta, ctb, s.m, s.n, s.k, alpha, a + i * A.stride_0(), leading_dim(A),
               b + i * B.stride_0(), leading_dim(B), beta, c + i * C.stride_0(), leading_dim(C));
  }
  if (!out_real || bias.extent(0) > 0) {
    gemm_epilogue<Real, Out>(exec, ConstFlat<Real, Exec>(c, C.span()),
                             Flat<Out, Exec>(C.data(), C.span()), bias, s.batch * s.m, s.n);
  }
  if (widens) exec.fence();  // the next GEMM reuses the buffers
}
#endif  // P2BW_HAVE_CBLAS

// ---------------------------------------------------------------------------------------------
// cuBLAS: one handle per CUDA stream, created on first use and bound to that stream.

#ifdef KOKKOS_ENABLE_CUDA

#define P2BW_CUBLAS_CHECK(call)                                                                \
  do {                                                                                         \
    const cublasStatus_t p2bw_status_ = (call);                                                \
    if (p2bw_status_ != CUBLAS_STATUS_SUCCESS) {                                               \
      throw std::runtime_error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                               #call + " failed: " + cublasGetStatusString(p2bw_status_));     \
    }                                                                                          \
  } while (0)

class CublasHandles {
 public:
  static cublasHandle_t get(cudaStream_t stream) {
    CublasHandles& self = instance();
    std::lock_guard<std::mutex> lock(self.mutex_);
    const auto it = self.handles_.find(stream);
    if (it != self.handles_.end()) return it->second;
    cublasHandle_t handle = nullptr;
    P2BW_CUBLAS_CHECK(cublasCreate(&handle));
    P2BW_CUBLAS_CHECK(cublasSetStream(handle, stream));
    self.handles_.emplace(stream, handle);
    return handle;
  }
  static void release_all() {
    CublasHandles& self = instance();
    std::lock_guard<std::mutex> lock(self.mutex_);
    for (auto& entry : self.handles_) cublasDestroy(entry.second);
    self.handles_.clear();
  }

 private:
  static CublasHandles& instance() {
    static CublasHandles handles;
    return handles;
  }
  std::mutex mutex_;
  std::unordered_map<cudaStream_t, cublasHandle_t> handles_;
};

inline cublasStatus_t cublas_gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                  int m, int n, int k, const float* alpha, const float* A, int lda,
                                  long long sa, const float* B, int ldb, long long sb,
                                  const float* beta, float* C, int ldc, long long sc, int batch) {
  if (batch == 1) return cublasSgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  return cublasSgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc,
                                   sc, batch);
}
inline cublasStatus_t cublas_gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                  int m, int n, int k, const double* alpha, const double* A,
                                  int lda, long long sa, const double* B, int ldb, long long sb,
                                  const double* beta, double* C, int ldc, long long sc, int batch) {
  if (batch == 1) return cublasDgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  return cublasDgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc,
                                   sc, batch);
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major buffer read
// column-major is its transpose: so swap the operands, keep the transpose flags, swap m and n.
template <class Real>
void gemm_cublas_batched(const Kokkos::Cuda& exec, Trans ta, Trans tb, Real alpha,
                         const ConstMatrixBatch<Real, Kokkos::Cuda>& A,
                         const ConstMatrixBatch<Real, Kokkos::Cuda>& B, Real beta,
                         const MatrixBatch<Real, Kokkos::Cuda>& C,
                         const ConstFlat<Real, Kokkos::Cuda>& bias) {
  const GemmShape s = batched_shape(ta, tb, A, B, C, bias, "gemm");
  if (s.batch == 0 || s.m == 0 || s.n == 0) return;
  cublasHandle_t handle = CublasHandles::get(exec.cuda_stream());
  const bool tf32 = std::is_same<Real, float>::value && tf32_enabled();
  P2BW_CUBLAS_CHECK(
      cublasSetMathMode(handle, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  const cublasOperation_t opa = ta == Trans::N ? CUBLAS_OP_N : CUBLAS_OP_T;
  const cublasOperation_t opb = tb == Trans::N ? CUBLAS_OP_N : CUBLAS_OP_T;
  P2BW_CUBLAS_CHECK(cublas_gemm(handle, opb, opa, s.n, s.m, s.k, &alpha, B.data(), leading_dim(B),
                                static_cast<long long>(B.stride_0()), A.data(), leading_dim(A),
                                static_cast<long long>(A.stride_0()), &beta, C.data(),
                                leading_dim(C), static_cast<long long>(C.stride_0()), s.batch));
  if (bias.extent(0) > 0) {
    gemm_epilogue<Real, Real>(exec, ConstFlat<Real, Kokkos::Cuda>(C.data(), C.span()),
                              Flat<Real, Kokkos::Cuda>(C.data(), C.span()), bias, s.batch * s.m,
                              s.n);
  }
}

#endif  // KOKKOS_ENABLE_CUDA

}  // namespace detail

// Frees what the backends cache: the CBLAS path's widening buffers and the cuBLAS handles. Call
// after the last GEMM and before Kokkos::finalize (the buffers are also freed by finalize).
inline void release_gemm_resources() {
#ifdef P2BW_HAVE_CBLAS
  detail::HostGemmBuffers<float>::instance().release();
  detail::HostGemmBuffers<double>::instance().release();
#endif
#ifdef KOKKOS_ENABLE_CUDA
  detail::CublasHandles::release_all();
#endif
}

// ---------------------------------------------------------------------------------------------
// Public entry points.

namespace detail {
enum class GemmBackend { native, cblas, cublas };

// Whether CBLAS can run a GEMM computing in Real on Store operands into an Out C: Real is float
// or double, and Store and Out are Real or (Real = float) bf16, which the CBLAS path widens.
template <class Real, class Store, class Out>
constexpr bool cblas_types() {
  constexpr bool bf16_ok = std::is_same<Real, float>::value;
  return is_blas_scalar<Real>::value &&
         (std::is_same<Store, Real>::value || (bf16_ok && is_bf16_storage<Store>())) &&
         (std::is_same<Out, Real>::value || (bf16_ok && is_bf16_storage<Out>()));
}

// Exec second, as in gemm_backend_name (attention.hpp asks gemm_backend<Real, Exec>()).
template <class Real, class Exec, class Store = Real, class Out = Store>
constexpr GemmBackend gemm_backend() {
#ifdef KOKKOS_ENABLE_CUDA
  if (std::is_same<Exec, Kokkos::Cuda>::value && is_blas_scalar<Real>::value &&
      std::is_same<Store, Real>::value && std::is_same<Out, Real>::value) {
    return GemmBackend::cublas;
  }
#endif
#ifdef P2BW_HAVE_CBLAS
  if (std::is_same<typename Exec::memory_space, Kokkos::HostSpace>::value &&
      cblas_types<Real, Store, Out>()) {
    return GemmBackend::cblas;
  }
#endif
  return GemmBackend::native;
}
}  // namespace detail

// The backend gemm() uses on execution space Exec for Real compute on Store operands into an
// Out C: "cublas", "cblas" or "native". (Exec comes second: it is never deduced here, and
// gemm_backend_name<float, Exec>() names the Store = Out = Real case.)
template <class Real, class Exec, class Store = Real, class Out = Store>
constexpr const char* gemm_backend_name() {
  constexpr detail::GemmBackend backend = detail::gemm_backend<Real, Exec, Store, Out>();
  return backend == detail::GemmBackend::cublas  ? "cublas"
         : backend == detail::GemmBackend::cblas ? "cblas"
                                                 : "native";
}

// C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b] + bias for every b (matrices contiguous per
// batch; the bias, when not empty, is added to every row of every C[b]).
template <class Real, class Store = Real, class Out = Store, class Exec>
void gemm_batched(const Exec& exec, Trans ta, Trans tb, Real alpha,
                  ConstMatrixBatch<Store, Exec> A,      // (batch, m, k) or (batch, k, m)
                  ConstMatrixBatch<Store, Exec> B,      // (batch, k, n) or (batch, n, k)
                  Real beta, MatrixBatch<Out, Exec> C,  // (batch, m, n)
                  ConstFlat<Out, Exec> bias = ConstFlat<Out, Exec>()) {  // (n) or empty
  constexpr detail::GemmBackend backend = detail::gemm_backend<Real, Exec, Store, Out>();
  if constexpr (backend == detail::GemmBackend::cublas) {
#ifdef KOKKOS_ENABLE_CUDA
    detail::gemm_cublas_batched<Real>(exec, ta, tb, alpha, A, B, beta, C, bias);
#endif
  } else if constexpr (backend == detail::GemmBackend::cblas) {
#ifdef P2BW_HAVE_CBLAS
    detail::gemm_cblas_batched<Real, Store, Out, Exec>(exec, ta, tb, alpha, A, B, beta, C, bias);
#endif
  } else {
    gemm_native_batched<Real, Store, Out>(exec, ta, tb, alpha, A, B, beta, C, bias);
  }
}

// C = alpha * op(A) * op(B) + beta * C + bias, all row-major; the bias, when not empty, is added
// to every row of C.
template <class Real, class Store = Real, class Out = Store, class Exec>
void gemm(const Exec& exec, Trans ta, Trans tb, Real alpha,
          ConstMatrix<Store, Exec> A,                            // (m, k) or (k, m)
          ConstMatrix<Store, Exec> B,                            // (k, n) or (n, k)
          Real beta, Matrix<Out, Exec> C,                        // (m, n)
          ConstFlat<Out, Exec> bias = ConstFlat<Out, Exec>()) {  // (n) or empty
  gemm_batched<Real, Store, Out>(exec, ta, tb, alpha,
                                 detail::as_batch<const Store, Exec>(A, "gemm"),
                                 detail::as_batch<const Store, Exec>(B, "gemm"), beta,
                                 detail::as_batch<Out, Exec>(C, "gemm"), bias);
}

}  // namespace p2bw::kernels
