// GEMM dispatch: one row-major interface, C = alpha * op(A) * op(B) + beta * C + bias, and its
// strided-batched variant. A and B are stored as Store, C and the optional bias (one value per
// column of C, added to every row) as Out (kernels/storage.hpp): both Real by default; under bf16
// storage A and B are bf16 and C is bf16 (activations and their gradients) or Real (accumulated
// weight gradients). Every backend computes in Real: bf16 operands are widened exactly, C is read
// widened (beta != 0), the bias is added in Real to alpha op(A) op(B) + beta C, and only then is
// the result narrowed to Out. So on the host a GEMM with bf16 storage gives the bits of the same
// GEMM with Store = Out = Real on the same (bf16-exact) values followed by rounding to bf16.
// The backend is chosen at compile time from the execution space and the types: cuBLASLt for
// Kokkos::Cuda (the bias as its epilogue), CBLAS (OpenBLAS) for host spaces when linked
// (P2BW_HAVE_CBLAS, optional in CUDA builds), a native Kokkos kernel otherwise (and for type
// combinations the library does not take). The native kernel is public so tests can compare.
// As in BLAS, beta == 0 means C is not read (NaN in C does not propagate).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#ifdef P2BW_HAVE_CBLAS
#include <cblas.h>
#endif

#include "kernels/bf16_pack.hpp"
#include "kernels/storage.hpp"
#include "kernels/types.hpp"  // first: Kokkos defines KOKKOS_ENABLE_CUDA

#ifdef KOKKOS_ENABLE_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>
#ifdef P2BW_CUDNN
#include "kernels/cudnn_attention.hpp"
#endif

#include <array>
#include <cstdint>
#include <functional>
#include <unordered_map>
#endif

namespace p2bw::kernels {

// cuBLASLt's workspace per CUDA stream, and what its View allocates: 256 bytes more, so that the
// workspace can start on a 256-byte boundary (a View's data follows a 128-byte header).
constexpr std::size_t kCublasLtWorkspaceBytes = std::size_t(32) << 20;  // 32 MiB
constexpr std::size_t kCublasLtWorkspaceAlignment = 256;
constexpr std::size_t kCublasLtWorkspaceAllocation =
    kCublasLtWorkspaceBytes + kCublasLtWorkspaceAlignment;

enum class Trans { N, T };  // op(X) = X or X^T

namespace detail {
inline std::atomic<bool>& tf32_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}
}  // namespace detail

// TF32 tensor-core math for float GEMMs under cuBLASLt (CUBLAS_COMPUTE_32F_FAST_TF32; no effect
// on other backends, on bf16 operands or on double).
// Off by default; read at every call, so it can be switched between steps.
inline void set_tf32(bool on) {
  detail::tf32_flag().store(on);
}
inline bool tf32_enabled() {
  return detail::tf32_flag().load();
}

// A GELU in a GEMM's epilogue (cuBLASLt's GELU_AUX_BIAS and DGELU; gemm_bias_gelu, gemm_dgelu):
// forward, C = gelu(X) with the pre-activation X = alpha op(A) op(B) + bias stored in `pre`;
// backward, C = gelu'(pre) alpha op(A) op(B).
enum class GeluEpilogue { none, forward, backward };

namespace detail {
// On unless the environment says P2BW_GELU_EPILOGUE=off.
inline std::atomic<bool>& gelu_epilogue_flag() {
  static std::atomic<bool> flag{[] {
    const char* v = std::getenv("P2BW_GELU_EPILOGUE");
    return v == nullptr || std::string(v) != "off";
  }()};
  return flag;
}
inline std::atomic<long>& gelu_epilogue_count() {
  static std::atomic<long> count{0};
  return count;
}
}  // namespace detail

// Whether gemm_bias_gelu and gemm_dgelu may fuse the GELU into cuBLASLt's epilogue (default on;
// P2BW_GELU_EPILOGUE=off or set_gelu_epilogue(false): the GEMM and kernels/gelu.hpp instead).
inline void set_gelu_epilogue(bool on) {
  detail::gelu_epilogue_flag().store(on);
}
inline bool gelu_epilogue_enabled() {
  return detail::gelu_epilogue_flag().load();
}
// GEMMs that ran with a GELU epilogue in this process (for the tests).
inline long gelu_epilogue_gemms() {
  return detail::gelu_epilogue_count().load();
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
  std::int64_t bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::int64_t sum = 0;
    for (const View& v : views_) sum += static_cast<std::int64_t>(v.extent(0) * sizeof(Real));
    return sum;
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
    static_assert(std::is_same<Real, float>::value && is_bf16_storage<Store>(),
                  "the only widening is bf16 to float");
    Real* dst = HostGemmBuffers<Real>::instance().get(slot, n);
    const auto count = static_cast<index_t>(n);
    unpack_bf16(exec, Flat<float, Exec>(dst, n), ConstFlat<bf16, Exec>(src, n), count);
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
// cuBLASLt: every GEMM on Kokkos::Cuda whose types it takes (float or bf16 operands computing in
// float into float or bf16; double throughout), batched or not. One handle for the process, one
// workspace per CUDA stream (a workspace must not be shared by GEMMs that may run at once), and
// the algorithm for each problem (shape, leading dimensions, batch strides, types, compute type,
// epilogue, pointer alignments) chosen by cublasLtMatmulAlgoGetHeuristic at its first call and
// kept: a steady-state training step queries no heuristic and allocates nothing (the descriptors
// live on the stack, in cuBLASLt's opaque structs).
// Determinism: cuBLASLt gives the same bits for the same algorithm, problem and workspace on the
// same GPU model and library version. The heuristic is asked only for algorithms that accumulate
// each dot product in one sequence (CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK =
// CUBLASLT_REDUCTION_SCHEME_NONE): no split-K, whose partial sums are added in place through the
// output (ordered by counters in the workspace) or in a second pass. Each result's
// CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME is checked again, and the first result that passes is
// kept for good, so a problem always runs the same algorithm.

#ifdef KOKKOS_ENABLE_CUDA

#define P2BW_CUBLAS_CHECK(call)                                                                \
  do {                                                                                         \
    const cublasStatus_t p2bw_status_ = (call);                                                \
    if (p2bw_status_ != CUBLAS_STATUS_SUCCESS) {                                               \
      throw std::runtime_error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                               #call + " failed: " + cublasLtGetStatusString(p2bw_status_));   \
    }                                                                                          \
  } while (0)

template <class T>
struct CudaDataType;
template <>
struct CudaDataType<float> {
  static constexpr cudaDataType_t value = CUDA_R_32F;
};
template <>
struct CudaDataType<double> {
  static constexpr cudaDataType_t value = CUDA_R_64F;
};
template <>
struct CudaDataType<bf16> {
  static constexpr cudaDataType_t value = CUDA_R_16BF;
};

// The type combinations cublasLtMatmul takes (its table of supported types): A, B float or bf16
// computing in float (C float, or bf16 with bf16 operands), or double throughout.
template <class Real, class Store, class Out>
constexpr bool cublaslt_types() {
  if constexpr (std::is_same<Real, double>::value) {
    return std::is_same<Store, double>::value && std::is_same<Out, double>::value;
  } else if constexpr (std::is_same<Real, float>::value) {
    return (std::is_same<Store, float>::value && std::is_same<Out, float>::value) ||
           (is_bf16_storage<Store>() &&
            (std::is_same<Out, float>::value || is_bf16_storage<Out>()));
  } else {
    return false;
  }
}

// The alignment of a pointer in bytes as the algorithm choice sees it: the largest power of two up
// to 16 dividing it. cuBLASLt's kernels load at most 16 bytes at a time (Hopper's TMA needs 16),
// and capping here keeps the choice layout-free: a tensor is 64-byte aligned in one stage's flat
// buffer and 256-byte aligned in the single-rank reference's, and with uncapped alignments in the
// key and the heuristic's preferences the two could get different algorithms, so different bits.
inline std::uint32_t pointer_alignment(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t alignment = 16;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

// An address whose alignment is exactly `alignment` (a power of two up to 16), never dereferenced:
// what the heuristic sees in place of a bias or aux pointer (see gemm_cublaslt_batched).
inline const void* aligned_address(std::uint32_t alignment) {
  return reinterpret_cast<const void*>(std::uintptr_t(1) << 30 | std::uintptr_t(alignment));
}

// Everything the algorithm choice depends on (the TF32 flag is in `compute`).
struct LtKey {
  long long batch, m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c;
  int trans_a, trans_b, ab_type, c_type, compute, epilogue;
  std::uint32_t align_a, align_b, align_c, align_bias, align_aux;

  std::array<long long, 21> fields() const {
    return {batch,    m,        n,        k,       lda,     ldb,        ldc,
            stride_a, stride_b, stride_c, trans_a, trans_b, ab_type,    c_type,
            compute,  epilogue, align_a,  align_b, align_c, align_bias, align_aux};
  }
  bool operator==(const LtKey& other) const { return fields() == other.fields(); }
};

struct LtKeyHash {
  std::size_t operator()(const LtKey& key) const noexcept {
    std::size_t h = 0;
    for (const long long v : key.fields()) h = h * 1000003u ^ std::hash<long long>()(v);
    return h;
  }
};

// The algorithm kept for a problem, and whether it applies the key's epilogue. A bias epilogue
// not applied runs without one, gemm_epilogue adding the bias after it; a GELU epilogue not
// applied runs nothing, its caller composing the GEMM and GELU (see gemm_cublaslt_batched).
struct LtChoice {
  cublasLtMatmulAlgo_t algo;
  bool fused;
};

// The process's cuBLASLt handle, the per-stream workspaces and the cached algorithms; the
// caller holds mutex() while it uses them (through its cublasLtMatmul call). The workspaces are
// Kokkos Views, so Kokkos' allocation hooks (the tests' counter, memory tools) see them; they
// are freed by release_gemm_resources() or by Kokkos::finalize (a hook registered at the first).
class CublasLt {
 public:
  static CublasLt& instance() {
    static CublasLt lt;
    return lt;
  }
  std::mutex& mutex() { return mutex_; }
  cublasLtHandle_t handle() {
    if (handle_ == nullptr) P2BW_CUBLAS_CHECK(cublasLtCreate(&handle_));
    return handle_;
  }
  void* workspace(cudaStream_t stream) {
    const auto it = workspaces_.find(stream);
    if (it != workspaces_.end()) return it->second.aligned();
    if (!hook_) {
      Kokkos::push_finalize_hook([] { instance().release(); });
      hook_ = true;
    }
    const Workspace w{Kokkos::View<unsigned char*, Kokkos::CudaSpace>(
        Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::cublaslt_workspace"),
        kCublasLtWorkspaceAllocation)};
    return workspaces_.emplace(stream, w).first->second.aligned();
  }
  const LtChoice* find(const LtKey& key) const {
    const auto it = algos_.find(key);
    return it == algos_.end() ? nullptr : &it->second;
  }
  const LtChoice* keep(const LtKey& key, const LtChoice& choice) {
    ++heuristic_queries();
    return &algos_.emplace(key, choice).first->second;
  }
  // Problems whose algorithm the heuristic chose (one per cache miss).
  static std::atomic<long>& heuristic_queries() {
    static std::atomic<long> count{0};
    return count;
  }
  std::int64_t workspace_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<std::int64_t>(workspaces_.size() * kCublasLtWorkspaceAllocation);
  }
  // Never throws: it also runs on error paths and from Kokkos::finalize's hooks, where a device
  // in an error state makes the fence throw; the memory is then dropped as it is.
  void release() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    try {
      if (!workspaces_.empty()) Kokkos::fence("p2bw: the GEMMs using cuBLASLt's workspaces");
    } catch (...) {
    }
    workspaces_.clear();
    algos_.clear();
    if (handle_ != nullptr) cublasLtDestroy(handle_);
    handle_ = nullptr;
  }

 private:
  // kCublasLtWorkspaceBytes from the first 256-byte boundary of the View's data.
  struct Workspace {
    Kokkos::View<unsigned char*, Kokkos::CudaSpace> bytes;
    void* aligned() const {
      const auto address = reinterpret_cast<std::uintptr_t>(bytes.data());
      const std::uintptr_t a = kCublasLtWorkspaceAlignment;
      return bytes.data() + ((a - address % a) % a);
    }
  };
  std::mutex mutex_;
  bool hook_ = false;
  cublasLtHandle_t handle_ = nullptr;
  std::unordered_map<cudaStream_t, Workspace> workspaces_;
  std::unordered_map<LtKey, LtChoice, LtKeyHash> algos_;
};

// A row-major (rows, cols) operand with leading dimension ld, read column-major: (cols, rows).
template <class T>
void lt_layout(cublasLtMatrixLayout_t layout, std::size_t rows, std::size_t cols, int ld, int batch,
               long long stride) {
  P2BW_CUBLAS_CHECK(cublasLtMatrixLayoutInit(layout, CudaDataType<T>::value,
                                             static_cast<std::uint64_t>(cols),
                                             static_cast<std::uint64_t>(rows), ld));
  if (batch > 1) {
    const std::int32_t count = batch;
    const std::int64_t offset = stride;
    P2BW_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                       &count, sizeof count));
    P2BW_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
        layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &offset, sizeof offset));
  }
}

// The first heuristic result without a split-K reduction (see above) into *algo; false if there
// is none. `optional`: the epilogue can be done without (a GELU), so any refusal of the
// heuristic's means "none" rather than an error.
inline bool lt_heuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                         cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                         cublasLtMatrixLayout_t lc, const LtKey& key, bool optional,
                         cublasLtMatmulAlgo_t* algo) {
  cublasLtMatmulPreferenceOpaque_t pref_storage;
  const cublasLtMatmulPreference_t pref = &pref_storage;
  P2BW_CUBLAS_CHECK(cublasLtMatmulPreferenceInit(pref));
  const std::uint64_t workspace = kCublasLtWorkspaceBytes;
  const std::uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE;
  P2BW_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace));
  P2BW_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof schemes));
  // Lt's A is our B and Lt's B our A (the operands are swapped); C is also D.
  P2BW_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align_b, sizeof key.align_b));
  P2BW_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align_a, sizeof key.align_a));
  P2BW_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align_c, sizeof key.align_c));
  P2BW_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align_c, sizeof key.align_c));
  constexpr int kRequested = 8;
  cublasLtMatmulHeuristicResult_t results[kRequested] = {};
  int returned = 0;
  // NOT_SUPPORTED: no algorithm fits this problem (e.g. the bias epilogue with these alignments),
  // which the caller answers by retrying without the epilogue.
  const cublasStatus_t heuristic = cublasLtMatmulAlgoGetHeuristic(
      handle, desc, la, lb, lc, lc, pref, kRequested, results, &returned);
  if (heuristic == CUBLAS_STATUS_NOT_SUPPORTED) return false;
  if (optional && heuristic != CUBLAS_STATUS_SUCCESS) return false;
  P2BW_CUBLAS_CHECK(heuristic);
  for (int i = 0; i < returned; ++i) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
    if (results[i].workspaceSize > kCublasLtWorkspaceBytes) continue;
    std::uint32_t scheme = 0;
    std::size_t written = 0;
    P2BW_CUBLAS_CHECK(cublasLtMatmulAlgoConfigGetAttribute(
        &results[i].algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, sizeof scheme, &written));
    if (scheme != CUBLASLT_REDUCTION_SCHEME_NONE) continue;
    *algo = results[i].algo;
    return true;
  }
  return false;
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major buffer read
// column-major is its transpose: so swap the operands, keep the transpose flags, swap m and n.
// The bias (one value per column of row-major C, a row of column-major C^T) is cuBLASLt's
// CUBLASLT_EPILOGUE_BIAS, in Out's type, added in float before the result is narrowed. Where the
// heuristic offers no algorithm with that epilogue (cuBLASLt filters by the bias pointer's
// alignment, and not every type combination has it) and C is Real, the GEMM runs without an
// epilogue and gemm_epilogue adds the bias to the Real result, which is the same order of
// operations; with a bf16 C that would round twice, so it is an error.
// `gelu` (one matrix, beta = 0 backward) adds cuBLASLt's GELU to the epilogue with `aux`, C's
// shape and leading dimension: forward GELU_AUX_BIAS (or GELU_AUX without a bias) writes the
// pre-activation to aux and its GELU to C; backward DGELU multiplies the product by the GELU's
// derivative at aux. cuBLASLt's GELU is the tanh approximation, as kernels/gelu.hpp, computed in
// float from the unrounded pre-activation. Where no algorithm has that epilogue (or aux's leading
// dimension is not a multiple of 8, as cuBLASLt requires) nothing runs and the answer is false:
// the caller composes the GEMM and kernels/gelu.hpp. Otherwise the answer is true.
template <class Real, class Store, class Out>
bool gemm_cublaslt_batched(const Kokkos::Cuda& exec, Trans ta, Trans tb, Real alpha,
                           const ConstMatrixBatch<Store, Kokkos::Cuda>& A,
                           const ConstMatrixBatch<Store, Kokkos::Cuda>& B, Real beta,
                           const MatrixBatch<Out, Kokkos::Cuda>& C,
                           const ConstFlat<Out, Kokkos::Cuda>& bias,
                           GeluEpilogue gelu = GeluEpilogue::none, const void* aux = nullptr) {
  const GemmShape s = batched_shape(ta, tb, A, B, C, bias, "gemm");
  const bool with_gelu = gelu != GeluEpilogue::none;
  if (with_gelu) {
    require(s.batch == 1 && aux != nullptr, "gemm", "a GELU epilogue takes one matrix and aux");
    require(gelu == GeluEpilogue::forward || (beta == Real(0) && bias.extent(0) == 0), "gemm",
            "the GELU's backward epilogue takes beta = 0 and no bias");
    if (leading_dim(C) % 8 != 0) return false;
  }
  if (s.batch == 0 || s.m == 0 || s.n == 0) return !with_gelu;
  if (s.k == 0) {  // C = beta C + bias: nothing to multiply, and cuBLASLt's layouts need k >= 1
    if (with_gelu) return false;
    gemm_native_batched<Real, Store, Out>(exec, ta, tb, alpha, A, B, beta, C, bias);
    return true;
  }
  constexpr bool is_double = std::is_same<Real, double>::value;
  const bool tf32 = std::is_same<Store, float>::value && tf32_enabled();
  const cublasComputeType_t compute = is_double ? CUBLAS_COMPUTE_64F
                                      : tf32    ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                : CUBLAS_COMPUTE_32F;
  const bool has_bias = bias.extent(0) > 0;
  const cublasLtEpilogue_t epilogue =
      gelu == GeluEpilogue::forward
          ? (has_bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
      : gelu == GeluEpilogue::backward ? CUBLASLT_EPILOGUE_DGELU
      : has_bias                       ? CUBLASLT_EPILOGUE_BIAS
                                       : CUBLASLT_EPILOGUE_DEFAULT;
  cublasLtMatmulDescOpaque_t desc_storage;
  const cublasLtMatmulDesc_t desc = &desc_storage;
  P2BW_CUBLAS_CHECK(cublasLtMatmulDescInit(desc, compute, CudaDataType<Real>::value));
  const std::int32_t op_a = tb == Trans::N ? CUBLAS_OP_N : CUBLAS_OP_T;  // Lt's A: our B
  const std::int32_t op_b = ta == Trans::N ? CUBLAS_OP_N : CUBLAS_OP_T;  // Lt's B: our A
  const std::uint32_t epilogue_attr = epilogue;
  P2BW_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
  P2BW_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
  P2BW_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                   &epilogue_attr, sizeof epilogue_attr));
  if (has_bias) {
    const std::int32_t bias_type = CudaDataType<Out>::value;
    P2BW_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                     &bias_type, sizeof bias_type));
  }
  if (with_gelu) {  // aux: C's type (cuBLASLt's default), layout and leading dimension
    const std::int64_t aux_ld = leading_dim(C);
    P2BW_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                                     &aux_ld, sizeof aux_ld));
  }
  // The bias and aux pointers: the heuristic reads their alignment from their values, so it gets
  // addresses with exactly the key's (capped) alignments, and the GEMM the real ones.
  const auto set_pointers = [&](const void* bias_pointer, const void* aux_pointer) {
    if (has_bias) {
      P2BW_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &bias_pointer, sizeof bias_pointer));
    }
    if (with_gelu) {
      P2BW_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
          desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux_pointer, sizeof aux_pointer));
    }
  };
  const long long sa = static_cast<long long>(A.stride_0());
  const long long sb = static_cast<long long>(B.stride_0());
  const long long sc = static_cast<long long>(C.stride_0());
  cublasLtMatrixLayoutOpaque_t la_storage, lb_storage, lc_storage;
  const cublasLtMatrixLayout_t la = &la_storage, lb = &lb_storage, lc = &lc_storage;
  lt_layout<Store>(la, B.extent(1), B.extent(2), leading_dim(B), s.batch, sb);
  lt_layout<Store>(lb, A.extent(1), A.extent(2), leading_dim(A), s.batch, sa);
  lt_layout<Out>(lc, C.extent(1), C.extent(2), leading_dim(C), s.batch, sc);
  // A batch starts at data + b * stride: its alignment is that of the base and of the stride.
  const auto alignment = [&](const void* p, long long stride, std::size_t bytes) {
    const std::uint32_t base = pointer_alignment(p);
    if (s.batch == 1) return base;
    const std::uint32_t step = pointer_alignment(
        reinterpret_cast<const void*>(static_cast<std::uintptr_t>(stride) * bytes));
    return base < step ? base : step;
  };
  const LtKey key{s.batch,
                  s.m,
                  s.n,
                  s.k,
                  leading_dim(A),
                  leading_dim(B),
                  leading_dim(C),
                  s.batch > 1 ? sa : 0,
                  s.batch > 1 ? sb : 0,
                  s.batch > 1 ? sc : 0,
                  op_b,
                  op_a,
                  static_cast<int>(CudaDataType<Store>::value),
                  static_cast<int>(CudaDataType<Out>::value),
                  static_cast<int>(compute),
                  static_cast<int>(epilogue),
                  alignment(A.data(), sa, sizeof(Store)),
                  alignment(B.data(), sb, sizeof(Store)),
                  alignment(C.data(), sc, sizeof(Out)),
                  has_bias ? pointer_alignment(bias.data()) : 0u,
                  with_gelu ? pointer_alignment(aux) : 0u};
  CublasLt& lt = CublasLt::instance();
  std::lock_guard<std::mutex> lock(lt.mutex());
  const cublasLtHandle_t handle = lt.handle();
  void* const workspace = lt.workspace(exec.cuda_stream());
  const LtChoice* choice = lt.find(key);
  const std::uint32_t no_epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  if (choice == nullptr) {
    set_pointers(aligned_address(key.align_bias), aligned_address(key.align_aux));
    LtChoice found{};
    found.fused = true;
    if (!lt_heuristic(handle, desc, la, lb, lc, key, with_gelu, &found.algo)) {
      found.fused = false;
      const bool retry = !with_gelu && has_bias && std::is_same<Out, Real>::value;
      if (retry) {
        P2BW_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                         &no_epilogue, sizeof no_epilogue));
      }
      if (!with_gelu &&
          (!retry || !lt_heuristic(handle, desc, la, lb, lc, key, false, &found.algo))) {
        throw std::runtime_error(
            std::string(__FILE__) + ":" + std::to_string(__LINE__) +
            ": cublasLtMatmulAlgoGetHeuristic offers no algorithm without split-K reduction for "
            "m=" +
            std::to_string(s.m) + " n=" + std::to_string(s.n) + " k=" + std::to_string(s.k) +
            " batch=" + std::to_string(s.batch) + (has_bias ? " with the bias epilogue" : ""));
      }
    }
    choice = lt.keep(key, found);
  } else if (!with_gelu && has_bias && !choice->fused) {
    P2BW_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                     &no_epilogue, sizeof no_epilogue));
  }
  if (with_gelu && !choice->fused) return false;
  set_pointers(bias.data(), aux);
  P2BW_CUBLAS_CHECK(cublasLtMatmul(handle, desc, &alpha, B.data(), la, A.data(), lb, &beta,
                                   C.data(), lc, C.data(), lc, &choice->algo, workspace,
                                   kCublasLtWorkspaceBytes, exec.cuda_stream()));
  if (with_gelu) ++gelu_epilogue_count();
  if constexpr (std::is_same<Out, Real>::value) {
    if (has_bias && !choice->fused) {
      gemm_epilogue<Real, Real>(exec, ConstFlat<Real, Kokkos::Cuda>(C.data(), C.span()),
                                Flat<Real, Kokkos::Cuda>(C.data(), C.span()), bias, s.batch * s.m,
                                s.n);
    }
  }
  return true;
}

#endif  // KOKKOS_ENABLE_CUDA

}  // namespace detail

// Frees what the backends cache: the CBLAS path's widening buffers; cuBLASLt's handle, workspaces
// and chosen algorithms; cuDNN attention's graphs, workspace and handle. Call after the last GEMM
// and before Kokkos::finalize (the host buffers are also freed by finalize).
inline void release_gemm_resources() {
#ifdef P2BW_CUDNN
  release_cudnn_attention();  // cuDNN's attention graphs, workspace and handle
#endif
#ifdef P2BW_HAVE_CBLAS
  detail::HostGemmBuffers<float>::instance().release();
  detail::HostGemmBuffers<double>::instance().release();
#endif
#ifdef KOKKOS_ENABLE_CUDA
  detail::CublasLt::instance().release();
#endif
}

// The bytes the GEMM and attention backends hold in this process now, outside the model's Views:
// the CBLAS path's widened operands (host bf16 GEMMs), cuBLASLt's workspaces (one per stream
// that ran a GEMM) and cuDNN attention's workspace. Memory accounting adds them to the model's
// workspace.
inline std::int64_t library_workspace_bytes() {
  std::int64_t sum = 0;
#ifdef P2BW_HAVE_CBLAS
  sum += detail::HostGemmBuffers<float>::instance().bytes() +
         detail::HostGemmBuffers<double>::instance().bytes();
#endif
#ifdef KOKKOS_ENABLE_CUDA
  sum += detail::CublasLt::instance().workspace_bytes();
#endif
#ifdef P2BW_CUDNN
  sum += cudnn_attention_workspace_bytes();
#endif
  return sum;
}

// A linear layer as matmul_forward and matmul_backward (kernels/matmul.hpp) run it on N rows:
// weight (out, in).
struct LinearShape {
  std::int64_t in, out;
};

// What training a model with these linear layers on N rows adds of them on `library`, as
// predicted: cuBLASLt's workspace for the one stream a rank computes on; CBLAS with bf16 storage,
// three float buffers, each as large as the largest span it widens (A: the inputs forward, the
// output gradients backward; B: the weights, and the inputs for dweight; C: the outputs forward,
// the input gradients backward). cuDNN's workspace (bf16 attention on CUDA) depends on the graphs
// cuDNN builds: measured only (unpredicted_library_workspace_bytes).
inline std::int64_t predicted_library_workspace_bytes(GemmLibrary library, bool bf16_storage,
                                                      std::int64_t N,
                                                      const std::vector<LinearShape>& linears) {
  if (linears.empty()) return 0;  // no GEMM
  if (library == GemmLibrary::cublaslt)
    return static_cast<std::int64_t>(kCublasLtWorkspaceAllocation);
  if (library != GemmLibrary::cblas || !bf16_storage) return 0;  // nothing widened
  std::int64_t a = 0, b = 0, c = 0;
  for (const LinearShape& l : linears) {
    a = std::max({a, N * l.in, N * l.out});
    b = std::max({b, l.out * l.in, N * l.in});
    c = std::max({c, N * l.out, N * l.in});
  }
  return static_cast<std::int64_t>(sizeof(float)) * (a + b + c);
}

// Of library_workspace_bytes, what no prediction covers: cuDNN's workspace.
inline std::int64_t unpredicted_library_workspace_bytes() {
#ifdef P2BW_CUDNN
  return cudnn_attention_workspace_bytes();
#else
  return 0;
#endif
}

// How many problems cuBLASLt's heuristic has chosen an algorithm for (each once, at its first
// call; 0 without CUDA). For the tests of the algorithm cache.
inline long gemm_heuristic_queries() {
#ifdef KOKKOS_ENABLE_CUDA
  return detail::CublasLt::heuristic_queries().load();
#else
  return 0;
#endif
}

// ---------------------------------------------------------------------------------------------
// Public entry points.

namespace detail {
enum class GemmBackend { native, cblas, cublaslt };

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
  if (std::is_same<Exec, Kokkos::Cuda>::value && cublaslt_types<Real, Store, Out>()) {
    return GemmBackend::cublaslt;
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
// Out C: "cublaslt", "cblas" or "native". (Exec comes second: it is never deduced here, and
// gemm_backend_name<float, Exec>() names the Store = Out = Real case.)
template <class Real, class Exec, class Store = Real, class Out = Store>
constexpr const char* gemm_backend_name() {
  constexpr detail::GemmBackend backend = detail::gemm_backend<Real, Exec, Store, Out>();
  return backend == detail::GemmBackend::cublaslt ? "cublaslt"
         : backend == detail::GemmBackend::cblas  ? "cblas"
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
  if constexpr (backend == detail::GemmBackend::cublaslt) {
#ifdef KOKKOS_ENABLE_CUDA
    detail::gemm_cublaslt_batched<Real, Store, Out>(exec, ta, tb, alpha, A, B, beta, C, bias);
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

namespace detail {
// One GEMM with a GELU epilogue where cuBLASLt computes it on bf16 storage and the epilogue is
// enabled; false otherwise, having run nothing.
template <class Real, class Store, class Exec>
bool gemm_gelu(const Exec& exec, GeluEpilogue gelu, Trans ta, Trans tb, ConstMatrix<Store, Exec> A,
               ConstMatrix<Store, Exec> B, Matrix<Store, Exec> C, ConstFlat<Store, Exec> bias,
               const Store* pre) {
  // bf16 storage only, whose rounding (2^-9) dwarfs the epilogue's GELU approximation (its tanh
  // may be the hardware's tanh.approx, about 2^-11 relative); fp32 and TF32 keep gelu.hpp's
  // float GELU, double (the finite-difference tests) too.
  if constexpr (gemm_backend<Real, Exec, Store, Store>() == GemmBackend::cublaslt &&
                std::is_same<Real, float>::value && is_bf16_storage<Store>()) {
#ifdef KOKKOS_ENABLE_CUDA
    if (!gelu_epilogue_enabled()) return false;
    return gemm_cublaslt_batched<Real, Store, Store>(
        exec, ta, tb, Real(1), as_batch<const Store, Exec>(A, "gemm"),
        as_batch<const Store, Exec>(B, "gemm"), Real(0), as_batch<Store, Exec>(C, "gemm"), bias,
        gelu, pre);
#endif
  } else {
    (void)exec, (void)gelu, (void)ta, (void)tb, (void)A, (void)B, (void)C, (void)bias, (void)pre;
  }
  return false;
}
}  // namespace detail

// pre = op(A) op(B) + bias and C = gelu(pre) in one cuBLASLt call (GELU_AUX_BIAS; C and pre
// contiguous, (m, n)). False where it cannot (another backend, not bf16 storage, no such
// algorithm, the epilogue switched off), having run nothing: the caller then runs gemm() and
// gelu_forward.
template <class Real, class Store = Real, class Exec>
bool gemm_bias_gelu(const Exec& exec, Trans ta, Trans tb, ConstMatrix<Store, Exec> A,
                    ConstMatrix<Store, Exec> B, Matrix<Store, Exec> C, ConstFlat<Store, Exec> bias,
                    Flat<Store, Exec> pre) {  // pre: (m n)
  detail::require_size(pre, static_cast<index_t>(C.extent(0) * C.extent(1)), "gemm_bias_gelu",
                       "pre");
  return detail::gemm_gelu<Real, Store, Exec>(exec, GeluEpilogue::forward, ta, tb, A, B, C, bias,
                                              pre.data());
}

// C = gelu'(pre) op(A) op(B) in one cuBLASLt call (DGELU), elementwise; false as gemm_bias_gelu,
// the caller then runs gemm() and gelu_backward.
template <class Real, class Store = Real, class Exec>
bool gemm_dgelu(const Exec& exec, Trans ta, Trans tb, ConstMatrix<Store, Exec> A,
                ConstMatrix<Store, Exec> B, Matrix<Store, Exec> C,
                ConstFlat<Store, Exec> pre) {  // pre: (m n)
  detail::require_size(pre, static_cast<index_t>(C.extent(0) * C.extent(1)), "gemm_dgelu", "pre");
  return detail::gemm_gelu<Real, Store, Exec>(exec, GeluEpilogue::backward, ta, tb, A, B, C,
                                              ConstFlat<Store, Exec>(), pre.data());
}

}  // namespace p2bw::kernels
