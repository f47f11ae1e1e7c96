// Tests of kernels/gemm.hpp: the dispatched GEMM (CBLAS on host spaces) and the native Kokkos
// kernel against naive loops, for all four transpose combinations, the strided-batched variant,
// partial tiles, k = 0, BLAS's beta = 0 semantics (C not read) and the shape checks; bf16
// storage (bf16 operands, bf16 or float C, the bias epilogue) against float storage followed by
// rounding, bit for bit on the host, and that the CBLAS path's widening buffers are not
// reallocated in steady state; on a CUDA build, cuBLASLt (float, TF32, bf16, with and without
// the bias epilogue) against the native kernel, and its algorithm cache.
#include "kernels/gemm.hpp"

#include <cstring>

#include "../allocation_counter.hpp"
#include "bf16_storage.hpp"
#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

enum class Path { dispatch, native };

struct GemmCase {
  Trans ta, tb;
  int batch, m, n, k;
  double alpha, beta;
};

std::string describe(const GemmCase& g) {
  return std::string(g.ta == Trans::N ? "N" : "T") + (g.tb == Trans::N ? "N" : "T") +
         " batch=" + std::to_string(g.batch) + " m=" + std::to_string(g.m) +
         " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k) +
         " beta=" + std::to_string(g.beta);
}

// Runs one case on one path; batch == 1 goes through the 2-D entry point.
template <class T>
std::vector<T> run(const GemmCase& g, Path path, const Buf<T>& A, const Buf<T>& B,
                   const std::vector<T>& c0) {
  const int ar = g.ta == Trans::N ? g.m : g.k, ac = g.ta == Trans::N ? g.k : g.m;
  const int br = g.tb == Trans::N ? g.k : g.n, bc = g.tb == Trans::N ? g.n : g.k;
  Buf<T> C(static_cast<std::size_t>(g.batch) * g.m * g.n, "C");
  C.assign(c0);
  const Exec exec;
  const T alpha = static_cast<T>(g.alpha), beta = static_cast<T>(g.beta);
  if (g.batch == 1) {
    const ConstMatrix<T, Exec> a(A.d.data(), ar, ac);  // (ar, ac)
    const ConstMatrix<T, Exec> b(B.d.data(), br, bc);  // (br, bc)
    const Matrix<T, Exec> c(C.d.data(), g.m, g.n);     // (m, n)
    if (path == Path::dispatch) {
      gemm<T>(exec, g.ta, g.tb, alpha, a, b, beta, c);
    } else {
      gemm_native<T>(exec, g.ta, g.tb, alpha, a, b, beta, c);
    }
  } else {
    const ConstMatrixBatch<T, Exec> a(A.d.data(), g.batch, ar, ac);  // (batch, ar, ac)
    const ConstMatrixBatch<T, Exec> b(B.d.data(), g.batch, br, bc);  // (batch, br, bc)
    const MatrixBatch<T, Exec> c(C.d.data(), g.batch, g.m, g.n);     // (batch, m, n)
    if (path == Path::dispatch) {
      gemm_batched<T>(exec, g.ta, g.tb, alpha, a, b, beta, c);
    } else {
      gemm_native_batched<T>(exec, g.ta, g.tb, alpha, a, b, beta, c);
    }
  }
  return C.values();
}

// The exact dot product of row i of op(A[b]) and column j of op(B[b]) (in long double) and the sum
// of its terms' magnitudes, against which a float GEMM's rounding is measured. Host values.
struct Dot {
  long double sum = 0.0L;
  double magnitude = 0.0;
};
template <class Case, class T>
Dot exact_dot(const Case& g, const Buf<T>& A, const Buf<T>& B, int b, int i, int j) {
  const int ar = g.ta == Trans::N ? g.m : g.k, ac = g.ta == Trans::N ? g.k : g.m;
  const int br = g.tb == Trans::N ? g.k : g.n, bc = g.tb == Trans::N ? g.n : g.k;
  Dot dot;
  for (int kk = 0; kk < g.k; ++kk) {
    const double a = g.ta == Trans::N ? A[(b * ar + i) * ac + kk] : A[(b * ar + kk) * ac + i];
    const double bb = g.tb == Trans::N ? B[(b * br + kk) * bc + j] : B[(b * br + j) * bc + kk];
    dot.sum += static_cast<long double>(a) * bb;
    dot.magnitude += std::abs(a * bb);
  }
  return dot;
}

template <class T>
void check_case(const GemmCase& g, unsigned seed) {
  SCOPED_TRACE(describe(g));
  const int ar = g.ta == Trans::N ? g.m : g.k, ac = g.ta == Trans::N ? g.k : g.m;
  const int br = g.tb == Trans::N ? g.k : g.n, bc = g.tb == Trans::N ? g.n : g.k;
  Buf<T> A(static_cast<std::size_t>(g.batch) * ar * ac, "A");  // (batch, ar, ac)
  Buf<T> B(static_cast<std::size_t>(g.batch) * br * bc, "B");  // (batch, br, bc)
  fill_random(A, seed);
  fill_random(B, seed + 1);
  std::vector<T> c0(static_cast<std::size_t>(g.batch) * g.m * g.n);  // (batch, m, n)
  {
    const std::vector<double> r = random_vector(c0.size(), seed + 2);
    for (std::size_t i = 0; i < c0.size(); ++i) {
      // beta == 0: C must not be read, so NaN in it must not reach the result.
      c0[i] = g.beta == 0.0 ? std::numeric_limits<T>::quiet_NaN() : static_cast<T>(r[i]);
    }
  }
  // Naive reference in long double, and the magnitude |alpha| sum |a b| + |beta c| per element.
  std::vector<double> ref(c0.size()), scale(c0.size());
  for (int b = 0; b < g.batch; ++b) {
    for (int i = 0; i < g.m; ++i) {
      for (int j = 0; j < g.n; ++j) {
        const Dot dot = exact_dot(g, A, B, b, i, j);
        const long double sum = dot.sum;
        const double mag = dot.magnitude;
        const std::size_t idx = (static_cast<std::size_t>(b) * g.m + i) * g.n + j;
        const double c = g.beta == 0.0 ? 0.0 : static_cast<double>(c0[idx]);
        ref[idx] = static_cast<double>(g.alpha * sum + g.beta * c);
        scale[idx] = std::abs(g.alpha) * mag + std::abs(g.beta * c);
      }
    }
  }
  const std::vector<T> dispatch = run<T>(g, Path::dispatch, A, B, c0);
  const std::vector<T> native = run<T>(g, Path::native, A, B, c0);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    // k products and k additions, plus alpha and beta: rounding bounded by ~ (k + 2) eps scale.
    const double tol = 2.0 * (g.k + 2) * eps<T>() * std::max(scale[i], eps<T>());
    EXPECT_NEAR(static_cast<double>(dispatch[i]), ref[i], tol) << "dispatch, element " << i;
    EXPECT_NEAR(static_cast<double>(native[i]), ref[i], tol) << "native, element " << i;
    EXPECT_NEAR(static_cast<double>(native[i]), static_cast<double>(dispatch[i]), 2.0 * tol)
        << "native vs dispatch, element " << i;
  }
}

template <class T>
void check_all_transposes(int batch, double beta, unsigned seed) {
  for (Trans ta : {Trans::N, Trans::T}) {
    for (Trans tb : {Trans::N, Trans::T}) {
      // Sizes that are not multiples of the native kernel's 16x16 tiles, k spanning 3 k-tiles.
      check_case<T>({ta, tb, batch, 37, 23, 40, 0.75, beta}, seed++);
      check_case<T>({ta, tb, batch, 1, 17, 5, -1.5, beta}, seed++);
    }
  }
}

TEST(Gemm, BackendOnHostIsCblasWhenLinked) {
#ifdef P2BW_HAVE_CBLAS
  const char* host = "cblas";
#else
  const char* host = "native";  // a CUDA build without CBLAS (P2BW_CBLAS=OFF)
#endif
  EXPECT_STREQ((gemm_backend_name<double, Kokkos::DefaultHostExecutionSpace>()), host);
  EXPECT_STREQ((gemm_backend_name<float, Kokkos::DefaultHostExecutionSpace>()), host);
  std::printf("  gemm backend on the default execution space: %s\n",
              gemm_backend_name<float, Exec>());
}

TEST(Gemm, AllTransposesDouble) {
  check_all_transposes<double>(1, 0.5, 100);
  check_all_transposes<double>(1, 0.0, 200);
}

TEST(Gemm, AllTransposesFloat) {
  check_all_transposes<float>(1, 0.5, 300);
  check_all_transposes<float>(1, 0.0, 400);
}

TEST(Gemm, StridedBatched) {
  check_all_transposes<double>(3, 0.5, 500);
  check_all_transposes<double>(3, 0.0, 600);
  check_all_transposes<float>(3, -0.25, 700);
}

TEST(Gemm, EmptyInnerDimensionScalesC) {
  check_case<double>({Trans::N, Trans::N, 1, 5, 4, 0, 1.0, 0.5}, 800);
  check_case<double>({Trans::T, Trans::N, 2, 5, 4, 0, 1.0, 0.0}, 801);
}

TEST(Gemm, ShapeMismatchThrows) {
  Buf<double> a(6), b(6), c(4);
  const Exec exec;
  const ConstMatrix<double, Exec> A(a.d.data(), 2, 3);  // (2, 3)
  const ConstMatrix<double, Exec> B(b.d.data(), 2, 3);  // (2, 3): N,N needs (3, n)
  const Matrix<double, Exec> C(c.d.data(), 2, 2);       // (2, 2)
  EXPECT_THROW(gemm<double>(exec, Trans::N, Trans::N, 1.0, A, B, 0.0, C), std::invalid_argument);
  EXPECT_THROW(gemm_native<double>(exec, Trans::N, Trans::N, 1.0, A, B, 0.0, C),
               std::invalid_argument);
  EXPECT_NO_THROW(gemm<double>(exec, Trans::N, Trans::T, 1.0, A, B, 0.0, C));
}

TEST(Gemm, NativeIsDeterministic) {
  const GemmCase g{Trans::T, Trans::N, 2, 37, 23, 40, 1.0, 0.0};
  const int ar = g.k, ac = g.m, br = g.k, bc = g.n;
  Buf<float> A(static_cast<std::size_t>(g.batch) * ar * ac),
      B(static_cast<std::size_t>(g.batch) * br * bc);
  fill_random(A, 900);
  fill_random(B, 901);
  const std::vector<float> c0(static_cast<std::size_t>(g.batch) * g.m * g.n, 0.0f);
  const std::vector<float> first = run<float>(g, Path::native, A, B, c0);
  const std::vector<float> second = run<float>(g, Path::native, A, B, c0);
  EXPECT_EQ(0, std::memcmp(first.data(), second.data(), first.size() * sizeof(float)));
}

// ---------------------------------------------------------------------------------------------
// bf16 storage: A and B bf16, C bf16 (activations) or float (weight gradients), the bias in C's
// type, against the same GEMM in float storage on the same bf16-exact values.

struct StoreCase {
  Trans ta, tb;
  int batch, m, n, k;
  float alpha, beta;
  bool bias;
};

std::string describe(const StoreCase& g) {
  return describe(GemmCase{g.ta, g.tb, g.batch, g.m, g.n, g.k, g.alpha, g.beta}) +
         (g.bias ? " bias" : " no bias");
}

// C = alpha op(A) op(B) + beta C (+ bias) on one path, Store = S, Out = O; batch == 1 goes
// through the 2-D entry points.
template <class S, class O>
void run_store(const StoreCase& g, Path path, const Buf<S>& A, const Buf<S>& B, const Buf<O>& C,
               const Buf<O>& bias) {
  const int ar = g.ta == Trans::N ? g.m : g.k, ac = g.ta == Trans::N ? g.k : g.m;
  const int br = g.tb == Trans::N ? g.k : g.n, bc = g.tb == Trans::N ? g.n : g.k;
  const Exec exec;
  const ConstFlat<O, Exec> b = g.bias ? ConstFlat<O, Exec>(bias.d) : ConstFlat<O, Exec>();
  if (g.batch == 1) {
    const ConstMatrix<S, Exec> a_m(A.d.data(), ar, ac);  // (ar, ac)
    const ConstMatrix<S, Exec> b_m(B.d.data(), br, bc);  // (br, bc)
    const Matrix<O, Exec> c_m(C.d.data(), g.m, g.n);     // (m, n)
    if (path == Path::dispatch) {
      gemm<float, S, O>(exec, g.ta, g.tb, g.alpha, a_m, b_m, g.beta, c_m, b);
    } else {
      gemm_native<float, S, O>(exec, g.ta, g.tb, g.alpha, a_m, b_m, g.beta, c_m, b);
    }
  } else {
    const ConstMatrixBatch<S, Exec> a_m(A.d.data(), g.batch, ar, ac);  // (batch, ar, ac)
    const ConstMatrixBatch<S, Exec> b_m(B.d.data(), g.batch, br, bc);  // (batch, br, bc)
    const MatrixBatch<O, Exec> c_m(C.d.data(), g.batch, g.m, g.n);     // (batch, m, n)
    if (path == Path::dispatch) {
      gemm_batched<float, S, O>(exec, g.ta, g.tb, g.alpha, a_m, b_m, g.beta, c_m, b);
    } else {
      gemm_native_batched<float, S, O>(exec, g.ta, g.tb, g.alpha, a_m, b_m, g.beta, c_m, b);
    }
  }
  Kokkos::fence();
}

void check_bf16_storage(const StoreCase& g, Path path, unsigned seed) {
  SCOPED_TRACE(describe(g) + (path == Path::dispatch ? " (dispatch)" : " (native)"));
  const int ar = g.ta == Trans::N ? g.m : g.k, ac = g.ta == Trans::N ? g.k : g.m;
  const int br = g.tb == Trans::N ? g.k : g.n, bc = g.tb == Trans::N ? g.n : g.k;
  const std::size_t nc = static_cast<std::size_t>(g.batch) * g.m * g.n;
  Buf<float> A(static_cast<std::size_t>(g.batch) * ar * ac, "A");  // (batch, ar, ac)
  Buf<float> B(static_cast<std::size_t>(g.batch) * br * bc, "B");  // (batch, br, bc)
  Buf<float> bias(g.n, "bias");                                    // (n)
  Buf<float> c0(nc, "C0");                                         // (batch, m, n)
  fill_random_bf16_exact(A, seed);
  fill_random_bf16_exact(B, seed + 1);
  fill_random_bf16_exact(bias, seed + 2);
  if (g.beta == 0.0f) {
    c0.fill(std::numeric_limits<float>::quiet_NaN());  // C is not read: NaN must not propagate
  } else {
    fill_random_bf16_exact(c0, seed + 3);
  }
  const Buf<float> c_float = copy_of(c0, "C float"), c_real = copy_of(c0, "C real");
  const Buf<bf16> c_bf16 = to_bf16(c0, "C bf16");
  const Buf<bf16> A16 = to_bf16(A, "A bf16"), B16 = to_bf16(B, "B bf16");
  const Buf<bf16> bias16 = to_bf16(bias, "bias bf16");
  run_store<float, float>(g, path, A, B, c_float, bias);  // the emulation's GEMM
  run_store<bf16, bf16>(g, path, A16, B16, c_bf16, bias16);
  run_store<bf16, float>(g, path, A16, B16, c_real, bias);
  // Per-element bound of two float GEMMs for the device comparison.
  std::vector<double> gap(nc);
  for (int b = 0; b < g.batch; ++b) {
    for (int i = 0; i < g.m; ++i) {
      for (int j = 0; j < g.n; ++j) {
        const double mag = exact_dot(g, A, B, b, i, j).magnitude;
        const std::size_t idx = (static_cast<std::size_t>(b) * g.m + i) * g.n + j;
        const double c = g.beta == 0.0f ? 0.0 : std::abs(g.beta * c0[idx]);
        gap[idx] =
            float_gemm_gap(g.k, std::abs(g.alpha) * mag + c + (g.bias ? std::abs(bias[j]) : 0.0));
      }
    }
  }
  expect_bf16_storage_matches("C (bf16 C)", c_bf16, c_float, gap);
  expect_real_matches("C (float C, bf16 operands)", c_real, c_float, gap);
  // Sums of products of bf16 values are mostly not bf16 values: the rounding is exercised.
  EXPECT_GT(not_bf16_exact(c_float), nc / 2);
}

void check_bf16_storage_all(Path path, unsigned seed) {
  for (Trans ta : {Trans::N, Trans::T}) {
    for (Trans tb : {Trans::N, Trans::T}) {
      for (bool bias : {false, true}) {
        // m, n, k not multiples of 4, 8 or 16; k spanning three of the native kernel's k-tiles.
        check_bf16_storage({ta, tb, 1, 37, 23, 41, 0.75f, 0.0f, bias}, path, seed++);
        check_bf16_storage({ta, tb, 1, 5, 13, 7, -1.5f, 0.5f, bias}, path, seed++);
        check_bf16_storage({ta, tb, 3, 9, 19, 21, 1.0f, -0.25f, bias}, path, seed++);
      }
    }
  }
}

TEST(GemmBf16Storage, DispatchMatchesFloatStorageRounded) {
  std::printf("  backend for bf16 operands: %s (bf16 C), %s (float C)\n",
              gemm_backend_name<float, Exec, bf16, bf16>(),
              gemm_backend_name<float, Exec, bf16, float>());
  check_bf16_storage_all(Path::dispatch, 1000);
}

TEST(GemmBf16Storage, NativeMatchesFloatStorageRounded) {
  check_bf16_storage_all(Path::native, 2000);
}

TEST(GemmBf16Storage, BackendsOnHost) {
#ifdef P2BW_HAVE_CBLAS
  const char* host = "cblas";  // bf16 operands and results widened around sgemm
#else
  const char* host = "native";
#endif
  using Host = Kokkos::DefaultHostExecutionSpace;
  EXPECT_STREQ((gemm_backend_name<float, Host, bf16, bf16>()), host);
  EXPECT_STREQ((gemm_backend_name<float, Host, bf16, float>()), host);
  // CBLAS widens bf16 to float only: double compute with bf16 storage stays native.
  EXPECT_STREQ((gemm_backend_name<double, Host, bf16, bf16>()), "native");
}

// The CBLAS path widens bf16 into grow-only buffers: once a shape has run, the same or a
// smaller one allocates nothing; a larger one grows them (and that is seen).
TEST(GemmBf16Storage, WideningBuffersAreReusedInSteadyState) {
  if (std::string(gemm_backend_name<float, Exec, bf16, bf16>()) != "cblas") {
    GTEST_SKIP() << "bf16 GEMMs on this execution space use "
                 << gemm_backend_name<float, Exec, bf16, bf16>()
                 << ", which widens in registers or scratch (no buffers)";
  }
  const StoreCase big{Trans::N, Trans::T, 1, 40, 30, 20, 1.0f, 0.0f, true};
  const StoreCase small{Trans::N, Trans::N, 1, 10, 12, 14, 1.0f, 1.0f, false};
  const StoreCase bigger{Trans::N, Trans::T, 1, 80, 30, 20, 1.0f, 0.0f, true};
  Buf<bf16> A(80 * 20), B(30 * 20), C(80 * 30), bias(30);
  run_store<bf16, bf16>(big, Path::dispatch, A, B, C, bias);  // first use: buffers grow
  {
    const p2bw::testing::AllocationCounter counter;
    run_store<bf16, bf16>(big, Path::dispatch, A, B, C, bias);
    run_store<bf16, bf16>(small, Path::dispatch, A, B, C, bias);
    EXPECT_TRUE(counter.allocations().empty()) << counter.summary();
  }
  {
    const p2bw::testing::AllocationCounter counter;
    run_store<bf16, bf16>(bigger, Path::dispatch, A, B, C, bias);
    EXPECT_FALSE(counter.allocations().empty()) << "a larger GEMM must grow the buffers";
    for (const std::string& label : counter.allocations()) EXPECT_EQ(label, "p2bw::gemm_widened");
  }
  release_gemm_resources();  // frees them; the next GEMM allocates again
  {
    const p2bw::testing::AllocationCounter counter;
    run_store<bf16, bf16>(small, Path::dispatch, A, B, C, bias);
    EXPECT_FALSE(counter.allocations().empty());
  }
}

// ---------------------------------------------------------------------------------------------
// cuBLASLt (Kokkos::Cuda): the dispatched GEMM against the native kernel, and the algorithm
// cache. Skipped where the default execution space's GEMM is not cuBLASLt (host builds).

bool skip_unless_cublaslt() {
  return std::string(gemm_backend_name<float, Exec>()) != "cublaslt";
}
#define P2BW_SKIP_UNLESS_CUBLASLT()                                                          \
  if (skip_unless_cublaslt())                                                                \
  GTEST_SKIP() << "gemm on " << Exec::name() << " uses " << gemm_backend_name<float, Exec>() \
               << ", not cuBLASLt (these run on the GPU of a CUDA build)"

// Restores TF32 off when a test ends (it is process-wide).
struct Tf32Scope {
  explicit Tf32Scope(bool on) { set_tf32(on); }
  ~Tf32Scope() { set_tf32(false); }
};

enum class LtMode { float32, tf32, bf16_out_bf16, bf16_out_float };

const char* name(LtMode mode) {
  switch (mode) {
    case LtMode::float32:
      return "float";
    case LtMode::tf32:
      return "tf32";
    case LtMode::bf16_out_bf16:
      return "bf16 -> bf16";
    case LtMode::bf16_out_float:
      return "bf16 -> float";
  }
  return "?";
}

// One case through gemm (cuBLASLt) and gemm_native_batched, the native run computing in float
// into float C on the same values. Bound per element, scale = |alpha| sum |a b| + |beta c| +
// |bias| and gap = float_gemm_gap(k, scale) (two float GEMMs): float: gap. TF32: cuBLASLt rounds
// each float operand to TF32's 10 explicit mantissa bits (relative error <= 2^-10 even if it
// truncates), so a product is off by <= (2 2^-10 + 2^-20) |a b| < 1.01 * 2^-9 |a b|: that times
// |alpha| sum |a b|, plus gap. bf16 operands: exact in float (bf16 x bf16 products too), so
// gap; a bf16 C adds its rounding, half an ulp: 2^-8 (|y| + gap).
void check_cublaslt(const StoreCase& g, LtMode mode, unsigned seed) {
  SCOPED_TRACE(describe(g) + " " + name(mode));
  const int ar = g.ta == Trans::N ? g.m : g.k, ac = g.ta == Trans::N ? g.k : g.m;
  const int br = g.tb == Trans::N ? g.k : g.n, bc = g.tb == Trans::N ? g.n : g.k;
  const std::size_t nc = static_cast<std::size_t>(g.batch) * g.m * g.n;
  const bool bf16_operands = mode == LtMode::bf16_out_bf16 || mode == LtMode::bf16_out_float;
  Buf<float> A(static_cast<std::size_t>(g.batch) * ar * ac, "A");  // (batch, ar, ac)
  Buf<float> B(static_cast<std::size_t>(g.batch) * br * bc, "B");  // (batch, br, bc)
  Buf<float> bias(g.n, "bias"), c0(nc, "C0");                      // (n), (batch, m, n)
  if (bf16_operands) {
    fill_random_bf16_exact(A, seed);
    fill_random_bf16_exact(B, seed + 1);
  } else {
    fill_random(A, seed);
    fill_random(B, seed + 1);
  }
  fill_random_bf16_exact(bias, seed + 2);  // bf16-exact: the same bias in every mode
  fill_random_bf16_exact(c0, seed + 3);
  const Buf<float> ref = copy_of(c0, "native C");
  run_store<float, float>(g, Path::native, A, B, ref, bias);
  Buf<float> got(nc, "cuBLASLt C");
  const Tf32Scope tf32(mode == LtMode::tf32);
  if (mode == LtMode::bf16_out_bf16) {
    const Buf<bf16> A16 = to_bf16(A), B16 = to_bf16(B), bias16 = to_bf16(bias);
    const Buf<bf16> C16 = to_bf16(c0);
    run_store<bf16, bf16>(g, Path::dispatch, A16, B16, C16, bias16);
    C16.to_host();
    for (std::size_t i = 0; i < nc; ++i) got[i] = static_cast<float>(C16[i]);
  } else if (mode == LtMode::bf16_out_float) {
    const Buf<bf16> A16 = to_bf16(A), B16 = to_bf16(B);
    const Buf<float> C = copy_of(c0);
    run_store<bf16, float>(g, Path::dispatch, A16, B16, C, bias);
    C.to_host();
    for (std::size_t i = 0; i < nc; ++i) got[i] = C[i];
  } else {
    const Buf<float> C = copy_of(c0);
    run_store<float, float>(g, Path::dispatch, A, B, C, bias);
    C.to_host();
    for (std::size_t i = 0; i < nc; ++i) got[i] = C[i];
  }
  ref.to_host();
  for (int b = 0; b < g.batch; ++b) {
    for (int i = 0; i < g.m; ++i) {
      for (int j = 0; j < g.n; ++j) {
        const double mag = exact_dot(g, A, B, b, i, j).magnitude;
        const std::size_t idx = (static_cast<std::size_t>(b) * g.m + i) * g.n + j;
        const double products = std::abs(g.alpha) * mag;
        const double gap = float_gemm_gap(
            g.k, products + std::abs(g.beta * c0[idx]) + (g.bias ? std::abs(bias[j]) : 0.0));
        double tol = gap;
        if (mode == LtMode::tf32) tol += 1.01 * std::ldexp(products, -9);
        if (mode == LtMode::bf16_out_bf16) tol += std::ldexp(std::abs(ref[idx]) + gap, -8);
        EXPECT_LE(std::abs(static_cast<double>(got[idx]) - ref[idx]), tol) << "element " << idx;
      }
    }
  }
}

TEST(GemmCublasLt, MatchesNative) {
  P2BW_SKIP_UNLESS_CUBLASLT();
  unsigned seed = 3000;
  for (LtMode mode :
       {LtMode::float32, LtMode::tf32, LtMode::bf16_out_bf16, LtMode::bf16_out_float}) {
    for (Trans ta : {Trans::N, Trans::T}) {
      for (Trans tb : {Trans::N, Trans::T}) {
        for (bool bias : {false, true}) {
          check_cublaslt({ta, tb, 1, 37, 23, 41, 0.75f, 0.0f, bias}, mode, seed++);
          check_cublaslt({ta, tb, 1, 128, 96, 64, 1.0f, 0.5f, bias}, mode, seed++);
          check_cublaslt({ta, tb, 3, 9, 19, 21, -1.0f, 1.0f, bias}, mode, seed++);
        }
      }
    }
  }
}

// The first call of a problem asks the heuristic, the next ones reuse its answer; the TF32 flag
// and the bias epilogue are part of the problem.
TEST(GemmCublasLt, AlgorithmIsCachedPerProblem) {
  P2BW_SKIP_UNLESS_CUBLASLT();
  const StoreCase plain{Trans::N, Trans::T, 1, 29, 31, 33, 1.0f, 0.0f, false};
  StoreCase with_bias = plain;
  with_bias.bias = true;
  Buf<float> A(29 * 33), B(31 * 33), C(29 * 31), bias(31);
  fill_random(A, 4000);
  fill_random(B, 4001);
  fill_random(bias, 4002);
  const long q0 = gemm_heuristic_queries();
  run_store<float, float>(plain, Path::dispatch, A, B, C, bias);
  EXPECT_EQ(gemm_heuristic_queries(), q0 + 1) << "a new problem asks the heuristic once";
  run_store<float, float>(plain, Path::dispatch, A, B, C, bias);
  run_store<float, float>(plain, Path::dispatch, A, B, C, bias);
  EXPECT_EQ(gemm_heuristic_queries(), q0 + 1) << "the same problem reuses the algorithm";
  {
    const Tf32Scope tf32(true);
    run_store<float, float>(plain, Path::dispatch, A, B, C, bias);
    run_store<float, float>(plain, Path::dispatch, A, B, C, bias);
    EXPECT_EQ(gemm_heuristic_queries(), q0 + 2) << "TF32 is another compute type";
  }
  run_store<float, float>(with_bias, Path::dispatch, A, B, C, bias);
  run_store<float, float>(with_bias, Path::dispatch, A, B, C, bias);
  EXPECT_EQ(gemm_heuristic_queries(), q0 + 3) << "the bias epilogue is another problem";
  run_store<float, float>(plain, Path::dispatch, A, B, C, bias);
  EXPECT_EQ(gemm_heuristic_queries(), q0 + 3);
}

}  // namespace
}  // namespace p2bw::kernels::test
