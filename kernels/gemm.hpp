// GEMM dispatch: one row-major interface, C = alpha * op(A) * op(B) + beta * C, and its
// strided-batched variant. The backend is chosen at compile time from the execution space:
// cuBLAS for Kokkos::Cuda, CBLAS (OpenBLAS) for host spaces when linked (P2BW_HAVE_CBLAS, optional
// in CUDA builds), a native Kokkos kernel otherwise
// (and for scalar types BLAS does not know). The native kernel is public so tests can compare.
// As in BLAS, beta == 0 means C is not read (NaN in C does not propagate).
#pragma once

#include <atomic>

#ifdef P2BW_HAVE_CBLAS
#include <cblas.h>
#endif

#include "kernels/types.hpp"  // first: Kokkos defines KOKKOS_ENABLE_CUDA

#ifdef KOKKOS_ENABLE_CUDA
#include <cublas_v2.h>

#include <mutex>
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

template <class Real, class Exec>
GemmShape batched_shape(Trans ta, Trans tb, const ConstMatrixBatch<Real, Exec>& A,
                        const ConstMatrixBatch<Real, Exec>& B, const MatrixBatch<Real, Exec>& C,
                        const char* who) {
  require(A.extent(0) == C.extent(0) && B.extent(0) == C.extent(0), who,
          "batch counts of A, B and C differ");
  return gemm_shape(ta, tb, A.extent(1), A.extent(2), B.extent(1), B.extent(2), C.extent(1),
                    C.extent(2), C.extent(0), who);
}

// A 2-D operand as a batch of one; the 2-D View must be contiguous.
template <class Real, class Exec>
MatrixBatch<Real, Exec> as_batch(const Matrix<Real, Exec>& M, const char* who) {
  require(M.span_is_contiguous(), who, "2-D operands must be contiguous row-major");
  return MatrixBatch<Real, Exec>(M.data(), 1, M.extent(0), M.extent(1));
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

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Native Kokkos kernel: one team per 16x16 tile of C, operand tiles staged in team scratch.
// Every element of C is accumulated in k order by one thread, so the result is deterministic.

template <class Real, class Exec>
void gemm_native_batched(const Exec& exec, Trans ta, Trans tb, Real alpha,
                         ConstMatrixBatch<Real, Exec> A,          // (batch, m, k) or (batch, k, m)
                         ConstMatrixBatch<Real, Exec> B,          // (batch, k, n) or (batch, n, k)
                         Real beta, MatrixBatch<Real, Exec> C) {  // (batch, m, n)
  const detail::GemmShape s = detail::batched_shape<Real, Exec>(ta, tb, A, B, C, "gemm_native");
  if (s.batch == 0 || s.m == 0 || s.n == 0) return;
  constexpr int TS = 16;
  const int m = s.m, n = s.n, k = s.k;
  const int tiles_m = (m + TS - 1) / TS, tiles_n = (n + TS - 1) / TS;
  const bool a_t = ta == Trans::T, b_t = tb == Trans::T;
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
            As(e) = (i < m && q < kt) ? (a_t ? A(bi, ka, i) : A(bi, i, ka)) : Real(0);
            const int kb = k0 + r, j = j0 + q;  // Bs(r, q) = op(B)(kb, j)
            Bs(e) = (r < kt && j < n) ? (b_t ? B(bi, j, kb) : B(bi, kb, j)) : Real(0);
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
            C(bi, i, j) = beta == Real(0) ? alpha * Acc(e) : alpha * Acc(e) + beta * C(bi, i, j);
          }
        });
      });
}

template <class Real, class Exec>
void gemm_native(const Exec& exec, Trans ta, Trans tb, Real alpha,
                 ConstMatrix<Real, Exec> A,          // (m, k) or (k, m)
                 ConstMatrix<Real, Exec> B,          // (k, n) or (n, k)
                 Real beta, Matrix<Real, Exec> C) {  // (m, n)
  gemm_native_batched<Real>(exec, ta, tb, alpha,
                            detail::as_batch<const Real, Exec>(A, "gemm_native"),
                            detail::as_batch<const Real, Exec>(B, "gemm_native"), beta,
                            detail::as_batch<Real, Exec>(C, "gemm_native"));
}

// ---------------------------------------------------------------------------------------------
// Host BLAS (CBLAS, row-major). Only for host memory spaces and float / double.

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

template <class Real, class Exec>
void gemm_cblas_batched(const Exec& exec, Trans ta, Trans tb, Real alpha,
                        const ConstMatrixBatch<Real, Exec>& A,
                        const ConstMatrixBatch<Real, Exec>& B, Real beta,
                        const MatrixBatch<Real, Exec>& C) {
  static_assert(std::is_same<typename Exec::memory_space, Kokkos::HostSpace>::value,
                "CBLAS needs host memory");
  const GemmShape s = batched_shape<Real, Exec>(ta, tb, A, B, C, "gemm");
  if (s.batch == 0 || s.m == 0 || s.n == 0) return;
  exec.fence();  // BLAS runs outside Kokkos: earlier kernels on this instance must be done
  const CBLAS_TRANSPOSE cta = ta == Trans::N ? CblasNoTrans : CblasTrans;
  const CBLAS_TRANSPOSE ctb = tb == Trans::N ? CblasNoTrans : CblasTrans;
  for (int b = 0; b < s.batch; ++b) {
    cblas_gemm(cta, ctb, s.m, s.n, s.k, alpha, A.data() + b * A.stride_0(), leading_dim(A),
               B.data() + b * B.stride_0(), leading_dim(B), beta, C.data() + b * C.stride_0(),
               leading_dim(C));
  }
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
                         const MatrixBatch<Real, Kokkos::Cuda>& C) {
  const GemmShape s = batched_shape<Real, Kokkos::Cuda>(ta, tb, A, B, C, "gemm");
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
}

#endif  // KOKKOS_ENABLE_CUDA

}  // namespace detail

// Destroys cached vendor handles (cuBLAS); call after the last GEMM and before Kokkos::finalize.
inline void release_gemm_handles() {
#ifdef KOKKOS_ENABLE_CUDA
  detail::CublasHandles::release_all();
#endif
}

// ---------------------------------------------------------------------------------------------
// Public entry points.

namespace detail {
enum class GemmBackend { native, cblas, cublas };
template <class Real, class Exec>
constexpr GemmBackend gemm_backend() {
#ifdef KOKKOS_ENABLE_CUDA
  if (std::is_same<Exec, Kokkos::Cuda>::value && is_blas_scalar<Real>::value) {
    return GemmBackend::cublas;
  }
#endif
#ifdef P2BW_HAVE_CBLAS
  if (std::is_same<typename Exec::memory_space, Kokkos::HostSpace>::value &&
      is_blas_scalar<Real>::value) {
    return GemmBackend::cblas;
  }
#endif
  return GemmBackend::native;
}
}  // namespace detail

// The backend gemm() uses for scalar T on execution space Exec: "cublas", "cblas" or "native".
template <class Real, class Exec>
constexpr const char* gemm_backend_name() {
  return detail::gemm_backend<Real, Exec>() == detail::GemmBackend::cublas  ? "cublas"
         : detail::gemm_backend<Real, Exec>() == detail::GemmBackend::cblas ? "cblas"
                                                                            : "native";
}

// C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b] for every b (matrices contiguous per batch).
template <class Real, class Exec>
void gemm_batched(const Exec& exec, Trans ta, Trans tb, Real alpha,
                  ConstMatrixBatch<Real, Exec> A,          // (batch, m, k) or (batch, k, m)
                  ConstMatrixBatch<Real, Exec> B,          // (batch, k, n) or (batch, n, k)
                  Real beta, MatrixBatch<Real, Exec> C) {  // (batch, m, n)
  constexpr detail::GemmBackend backend = detail::gemm_backend<Real, Exec>();
  if constexpr (backend == detail::GemmBackend::cublas) {
#ifdef KOKKOS_ENABLE_CUDA
    detail::gemm_cublas_batched<Real>(exec, ta, tb, alpha, A, B, beta, C);
#endif
  } else if constexpr (backend == detail::GemmBackend::cblas) {
#ifdef P2BW_HAVE_CBLAS
    detail::gemm_cblas_batched<Real, Exec>(exec, ta, tb, alpha, A, B, beta, C);
#endif
  } else {
    gemm_native_batched<Real>(exec, ta, tb, alpha, A, B, beta, C);
  }
}

// C = alpha * op(A) * op(B) + beta * C, all row-major.
template <class Real, class Exec>
void gemm(const Exec& exec, Trans ta, Trans tb, Real alpha,
          ConstMatrix<Real, Exec> A,          // (m, k) or (k, m)
          ConstMatrix<Real, Exec> B,          // (k, n) or (n, k)
          Real beta, Matrix<Real, Exec> C) {  // (m, n)
  gemm_batched<Real>(exec, ta, tb, alpha, detail::as_batch<const Real, Exec>(A, "gemm"),
                     detail::as_batch<const Real, Exec>(B, "gemm"), beta,
                     detail::as_batch<Real, Exec>(C, "gemm"));
}

}  // namespace p2bw::kernels
